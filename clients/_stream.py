"""Many items through one scoring coroutine, as a stream: pulled lazily, a bounded number alive at once,
delivered as they finish or in input order, with a graceful stop.

Memory stays flat however long the input: an item is pulled from its iterable only when one of `window`
places is free, and its place is given back when its result is ready (the result holds no media). In
input order, finished results wait in a reorder buffer of at most `reorder` results behind the oldest
unfinished one.
"""
from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Protocol

from ._types import Item, Result
from .errors import BadInputError

# In input order, how many finished results may wait behind the oldest unfinished item, as a multiple of
# the window: enough that one slow item (a retry with backoff) does not stall the pipeline at once.
REORDER_WINDOWS = 4


class StopFlag(Protocol):
    """A threading.Event or an asyncio.Event: once set, no new request starts."""

    def is_set(self) -> bool: ...


Score = Callable[[Item], Awaitable["Result | None"]]  # None: the item was never sent (stopped first)
_END = object()


def prepare(raw: Any, index: int) -> Item | Result:
    """An Item, or a failed Result for an entry that cannot be one (a Result passes: e.g. a bad line)."""
    if isinstance(raw, (Item, Result)):
        return raw
    try:
        return Item.from_mapping(raw)
    except BadInputError as exc:
        return Result.failure(exc, id=raw.get("id") if isinstance(raw, Mapping) else index)


class _Puller:
    """Next item of a sync or async iterable. A sync iterator (a generator reading a file, decoding
    images) is advanced in a thread of its own, so a slow one never blocks the event loop; lists and
    tuples are indexed directly."""

    def __init__(self, items: Iterable[Any] | AsyncIterable[Any]) -> None:
        self._executor: ThreadPoolExecutor | None = None
        if isinstance(items, AsyncIterable):
            self._aiter: AsyncIterator[Any] | None = aiter(items)
            self._iter = None
        else:
            self._aiter = None
            self._iter = iter(items)
            if not isinstance(items, (list, tuple)):
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="RewardClient-pull")

    async def next(self) -> Any:
        if self._aiter is not None:
            return await anext(self._aiter, _END)
        if self._executor is None:
            return next(self._iter, _END)
        return await asyncio.get_running_loop().run_in_executor(self._executor, next, self._iter, _END)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


async def stream_results(items: Iterable[Any] | AsyncIterable[Any], score: Score, *, window: int,
                         ordered: bool = False, stop: StopFlag | None = None) -> AsyncIterator[tuple[int, Result]]:
    """(input index, Result) per item, as they finish or (ordered) in input order. At most `window` items
    are alive at once. Once `stop` is set no item is pulled or sent any more; those already pulled but not
    sent are left out (a caller can resume them), the requests in flight finish, and anything waiting in
    the reorder buffer is delivered at once. Closing the iterator cancels the requests in flight."""
    places = asyncio.Semaphore(window)  # items alive: pulled, not yet scored
    span = asyncio.Semaphore(window * REORDER_WINDOWS if ordered else window)  # pulled, not yet delivered
    finished: asyncio.Queue[tuple[Any, Any]] = asyncio.Queue()
    tasks: set[asyncio.Task] = set()
    puller = _Puller(items)

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    async def run(index: int, raw: Any) -> None:
        try:
            entry = prepare(raw, index)
            del raw
            result = entry if isinstance(entry, Result) else await score(entry)
        finally:
            places.release()
        finished.put_nowait((index, result))

    async def produce() -> None:
        count = 0
        try:
            while True:
                await span.acquire()
                await places.acquire()
                raw = _END if stopped() else await puller.next()
                if raw is _END:
                    places.release()
                    span.release()
                    break
                task = asyncio.create_task(run(count, raw))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                del raw  # the task holds the item now; this frame must not keep it alive
                count += 1
        except Exception as exc:  # the input itself failed (a reader error): the stream raises it
            finished.put_nowait(("error", exc))
        finished.put_nowait(("end", count))

    producer = asyncio.create_task(produce())
    buffered: dict[int, Result | None] = {}
    next_index, delivered, total = 0, 0, None
    try:
        while total is None or delivered < total:
            key, value = await finished.get()
            if key == "error":
                raise value
            if key == "end":
                total = value
                continue
            buffered[key] = value
            if ordered and not stopped():
                ready = []
                while next_index in buffered:
                    ready.append((next_index, buffered.pop(next_index)))
                    next_index += 1
            else:
                ready, buffered = sorted(buffered.items()), {}
            for index, result in ready:
                delivered += 1
                span.release()
                if result is not None:
                    yield index, result
    finally:
        producer.cancel()
        for task in list(tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(producer, *tasks, return_exceptions=True)
        puller.close()
