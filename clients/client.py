"""The synchronous twin of AsyncRewardClient: same constructor, same method names, same results.

It owns one event loop on a private daemon thread and runs the async core there, so it also works where a
loop is already running (Jupyter) and keeps one pooled connection set across calls.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, AsyncIterable, Coroutine, Iterable, Iterator, Mapping, Sequence, TypeVar

from unifiedreward.prompts import Task

from ._async import AsyncRewardClient, ItemLike, Progress
from ._constants import DEFAULT_CONCURRENCY
from ._stream import StopFlag
from ._types import Completion, Logprobs, Result
from ._uuids import SentMedia
from .groups import GroupResult

T = TypeVar("T")
# After Ctrl-C, how long the cancelled requests get to wind down before the interrupt propagates.
INTERRUPT_GRACE_S = 5.0


class RewardClient:
    """Score items with UnifiedReward served by vLLM (blocking calls).

    >>> with RewardClient("http://127.0.0.1:8000/v1") as client:
    ...     result = client.score("image_gen.pair_rank", ["a.png", "b.png"], caption="a red cat")
    ...     result.reward          # 1.0, 0.0 or 0.5; raises the item's error if it failed
    """

    def __init__(self, base_url: str | Sequence[str] = "http://127.0.0.1:8000/v1", **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="RewardClient-loop", daemon=True)
        self._thread.start()
        try:
            self._async = self._run(self._make(base_url, options))
        except BaseException:
            self._stop_loop()  # a bad option must not leave a loop thread behind
            raise

    @staticmethod
    async def _make(base_url: str | Sequence[str], options: dict[str, Any]) -> AsyncRewardClient:
        return AsyncRewardClient(base_url, **options)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run on the client's loop and wait. Ctrl-C (KeyboardInterrupt) while waiting cancels the call:
        its requests are cancelled and their connections released before the interrupt propagates, so a
        later close() never shuts the HTTP pool under a request still running."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            self._settle(INTERRUPT_GRACE_S)
            raise

    def _settle(self, timeout: float) -> None:
        """Wait (at most `timeout` s) until every task on the loop has finished, cancelled ones included."""
        async def others_done() -> None:
            current = asyncio.current_task()
            pending = [t for t in asyncio.all_tasks() if t is not current]
            if pending:
                await asyncio.wait(pending, timeout=timeout)

        with contextlib.suppress(BaseException):
            asyncio.run_coroutine_threadsafe(others_done(), self._loop).result(timeout + 1)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    @property
    def model(self) -> str:
        return self._async.model

    @property
    def stall_timeout(self) -> float | None:
        """Seconds without a byte of an answer before it is abandoned as stalled (None: not watched)."""
        return self._async.stall_timeout

    @property
    def media(self) -> SentMedia:
        """The images each endpoint has answered for (sent again by uuid alone), with the counts `slimmed`
        (images sent by uuid alone) and `misses` (of which sent again with their data)."""
        return self._async.media

    def score(self, task: str | Task, media: Sequence[Any], *, constraint: str = "auto", logprobs: Logprobs = False,
              debias: bool = False, max_tokens: int | None = None, extra_body: Mapping[str, Any] | None = None,
              decode: str = "decisive", **fields: str) -> Result:
        """See AsyncRewardClient.score."""
        return self._run(self._async.score(task, media, constraint=constraint, logprobs=logprobs, debias=debias,
                                           max_tokens=max_tokens, extra_body=extra_body, decode=decode, **fields))

    def score_batch(self, items: Iterable[ItemLike] | AsyncIterable[ItemLike], *, concurrency: int = DEFAULT_CONCURRENCY,
                    deadline_s: float | None = None, constraint: str = "auto", logprobs: Logprobs = False,
                    debias: bool = False, max_tokens: int | None = None, extra_body: Mapping[str, Any] | None = None,
                    progress: Progress = False, decode: str = "decisive") -> list[Result]:
        """See AsyncRewardClient.score_batch."""
        return self._run(self._async.score_batch(
            items, concurrency=concurrency, deadline_s=deadline_s, constraint=constraint, logprobs=logprobs,
            debias=debias, max_tokens=max_tokens, extra_body=extra_body, progress=progress, decode=decode))

    def score_iter(self, items: Iterable[ItemLike] | AsyncIterable[ItemLike], *,
                   concurrency: int = DEFAULT_CONCURRENCY, ordered: bool = False, deadline_s: float | None = None,
                   stop: StopFlag | None = None, constraint: str = "auto", logprobs: Logprobs = False,
                   debias: bool = False, max_tokens: int | None = None,
                   extra_body: Mapping[str, Any] | None = None, decode: str = "decisive") -> Iterator[Result]:
        """See AsyncRewardClient.score_stream: Results as they are final, items pulled lazily. Leaving the
        loop early (break, an exception, Ctrl-C) cancels the requests in flight.

            with open("out.jsonl", "a") as out:
                for result in client.score_iter(items_from_a_huge_file(), concurrency=64):
                    out.write(json.dumps(result.to_dict()) + "\n")
        """
        stream = self._async.score_stream(items, concurrency=concurrency, ordered=ordered, deadline_s=deadline_s,
                                          stop=stop, constraint=constraint, logprobs=logprobs, debias=debias,
                                          max_tokens=max_tokens, extra_body=extra_body, decode=decode)
        try:
            while True:
                try:
                    result = self._run(anext(stream))
                except StopAsyncIteration:
                    return
                yield result
        finally:
            if not self._loop.is_closed():
                self._run(stream.aclose())

    def rank_group(self, task: str | Task, media: Sequence[Any], *, pairs: int | None = None, debias: bool = False,
                   logprobs: Logprobs = False, concurrency: int = DEFAULT_CONCURRENCY, decode: str = "decisive",
                   affinity: Any = None, **fields: str) -> GroupResult:
        """See AsyncRewardClient.rank_group."""
        return self._run(self._async.rank_group(task, media, pairs=pairs, debias=debias, logprobs=logprobs,
                                                concurrency=concurrency, decode=decode, affinity=affinity, **fields))

    def complete(self, request: dict[str, Any], *, stream: bool = False, affinity: Any = None) -> Completion:
        """See AsyncRewardClient.complete: one raw chat request through the same transport."""
        return self._run(self._async.complete(request, stream=stream, affinity=affinity))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self._async.aclose())
            self._run(_drain())
        finally:
            self._stop_loop()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _drain(timeout_s: float = 1.0) -> None:
    """What closing left scheduled on the client's loop, finished before the loop stops: the aclose() of
    async generators of streamed answers (httpx's byte iterators under openai's SSE reader, which Python's
    finalizer hook hands to the loop when a stream is read to its end), and the async generators still open.
    Stopped under them, the loop prints "Task was destroyed but it is pending!" at exit."""
    await asyncio.get_running_loop().shutdown_asyncgens()
    pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    if pending:
        await asyncio.wait(pending, timeout=timeout_s)
