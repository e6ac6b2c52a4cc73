"""The async core: every network path of the client lives here; the sync RewardClient is a thin twin."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import sys
import time
from typing import Any, AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence, Sized

import httpx
import openai

from unifiedreward.prompts import Task

from ._constants import (AFFINITY_HEADER, AFFINITY_LOAD_FACTOR, AFFINITY_MIN_LOAD, API_KEY_ENV,
                         DATA_PARALLEL_RANK_HEADER, DEFAULT_API_KEY, DEFAULT_BASE_URL, DEFAULT_CONCURRENCY,
                         DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_IMAGE_FORMAT, DEFAULT_JPEG_QUALITY, DEFAULT_MAX_RETRIES,
                         DEFAULT_MODEL, DEFAULT_STALL_TIMEOUT_S, DEFAULT_TIMEOUT_S, ENCODE_AHEAD, MAX_CONNECTIONS,
                         MAX_PIXELS, MIN_PIXELS, RETRY_BACKOFF_MAX_S, STREAM_INTERVAL_TOKENS)
from ._endpoints import Endpoint, EndpointPool, affinity_token
from ._requests import (VIDEO_MODES, EncodeOptions, build_request, decides_early, encode_media, encode_one, resolve_task,
                        swap_pair)
from ._stream import StopFlag, stream_results
from ._transport import ATTEMPT_ERRORS, backoff_s, classify, read_plain, read_stream, unfinished
from ._types import Completion, Item, Logprobs, Result, orders_agree, to_result
from ._uuids import SentMedia, is_cache_miss, sent_with_data
from .media import is_url
from .errors import BadInputError, DeadlineExceededError, RewardError
from .groups import (GroupResult, all_pairs, bradley_terry, cache_friendly_waves, components, games_played,
                     win_rates)

ItemLike = Item | Mapping[str, Any] | Result
Progress = bool | Callable[[Result], None]


class _NotStarted(Exception):
    """The stream was stopped before this item's request was sent."""


class AsyncRewardClient:
    """Score items with UnifiedReward served by vLLM, from asyncio code.

    One or more base URLs (balanced by least outstanding requests, failing ones skipped and probed back),
    one pooled HTTP connection set, bounded concurrency, retries only on failures that may pass.

        async with AsyncRewardClient(["http://a:8000/v1", "http://b:8000/v1"]) as client:
            results = await client.score_batch(items, concurrency=64)

    `timeout`: seconds per attempt (the whole answer); `connect_timeout`: seconds to open a connection,
    so an unreachable replica costs seconds, not the whole timeout; `stall_timeout`: seconds without a byte of
    the answer after which it is abandoned as stalled (a hung engine, a half-dead proxy), the endpoint marked and
    the request retried elsewhere. Every answer is then read as a stream, so that silence is seen (None: plain
    answers read plain, and a silent one costs the whole `timeout`).

    Affinity: requests with the same key go to the same endpoint (rendezvous hashing over the endpoints that
    are up, with a load bound: `affinity_load_factor` x the mean in flight, never below `affinity_min_load`),
    and carry it in the `X-UnifiedReward-Affinity` header, which the nginx front (unifiedreward.serving.frontend) hashes on.
    rank_group gives a group's pairs one key, debias the two orders of a pair one key, `Item(affinity=...)` a
    caller's own (all items of one prompt). `affinity=False`: every request least-outstanding, no header.
    `data_parallel_size`: the data-parallel size of the vLLM server behind each URL (`-dp N`; /metrics shows
    one `engine` label per rank): a keyed request is then pinned to one rank with `X-data-parallel-rank`. Images are resized to `max_pixels`
    (the server's cap: more would be thrown away); max_pixels=None sends them at their own size, for the
    `authors` serving profile (no cap). video_mode="frames" (default) sends a video as image frames, the
    layout the model was trained on; "url" sends the file for the server to sample, off that layout.
    media_uuids=True: every inline image carries the hash of its data as vLLM's media uuid, and an image an
    endpoint has answered for is sent to it by that uuid alone (clients/_uuids.py; a group's candidates, debias'
    second order, a batch that repeats an image); False sends every image whole, without uuid (a server that
    does not take media uuids). `transport`: an httpx transport to use instead of the network (tests script
    the wire with httpx.MockTransport).
    """

    def __init__(self, base_url: str | Sequence[str] = DEFAULT_BASE_URL, *, api_key: str | None = None,
                 model: str = DEFAULT_MODEL, timeout: float = DEFAULT_TIMEOUT_S,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S, max_retries: int = DEFAULT_MAX_RETRIES,
                 image_format: str = DEFAULT_IMAGE_FORMAT, jpeg_quality: int = DEFAULT_JPEG_QUALITY,
                 min_pixels: int = MIN_PIXELS, max_pixels: int | None = MAX_PIXELS, video_mode: str = "frames",
                 media_uuids: bool = True, stall_timeout: float | None = DEFAULT_STALL_TIMEOUT_S,
                 affinity: bool = True, affinity_load_factor: float = AFFINITY_LOAD_FACTOR,
                 affinity_min_load: int = AFFINITY_MIN_LOAD, data_parallel_size: int = 1,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("give at least one base URL")
        for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout), ("stall_timeout", stall_timeout)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be a number of seconds above 0, not {value!r}")
        if isinstance(data_parallel_size, bool) or not isinstance(data_parallel_size, int) or data_parallel_size < 1:
            raise ValueError(f"data_parallel_size must be an integer of at least 1, not {data_parallel_size!r}")
        if video_mode not in VIDEO_MODES:
            raise ValueError(f"video_mode must be one of {VIDEO_MODES}")
        if max_retries < 0:
            raise ValueError("max_retries must be at least 0")
        api_key = api_key or os.environ.get(API_KEY_ENV) or DEFAULT_API_KEY
        self.model = model
        self.max_retries = max_retries
        self._stall_timeout = None if stall_timeout is None else min(stall_timeout, timeout)
        self.affinity = affinity
        self.data_parallel_size = data_parallel_size
        self._attempt_timeout = timeout
        self.encode_options = EncodeOptions(image_format, jpeg_quality, min_pixels, max_pixels, video_mode, media_uuids)
        # The same Timeout object for the HTTP client and for openai: openai applies its own `timeout` to
        # every request, so a bare number there would override the connect limit. With a stall timeout, httpx's
        # read and write limits (per network read or write) are the stall detector, and the attempt as a whole
        # is bounded by `timeout` (asyncio.timeout in _attempt).
        connect = min(connect_timeout, timeout)
        self.timeout = (httpx.Timeout(timeout, connect=connect) if self._stall_timeout is None else
                        httpx.Timeout(timeout, connect=connect, read=self._stall_timeout, write=self._stall_timeout))
        self._http = httpx.AsyncClient(
            timeout=self.timeout, transport=transport,
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS))
        endpoints = [Endpoint(url, openai.AsyncOpenAI(base_url=url, api_key=api_key, timeout=self.timeout,
                                                      max_retries=0, http_client=self._http),
                              ranks=data_parallel_size)
                     for url in urls]
        self.pool = EndpointPool(endpoints, self._http, load_factor=affinity_load_factor, min_load=affinity_min_load)
        # Per endpoint, the images it has answered for: sent again by uuid alone (clients/_uuids.py).
        self.media = SentMedia()

    @property
    def stall_timeout(self) -> float | None:
        """Seconds without a byte of an answer before it is abandoned as stalled (None: not watched)."""
        return self._stall_timeout

    # -- one request, with retries across endpoints -------------------------------------------------

    async def complete(self, request: dict[str, Any], *, stream: bool = False,
                       first_token: asyncio.Event | None = None, affinity: Any = None) -> Completion:
        """Send one chat request (keyword arguments of `chat.completions.create`, e.g. from build_request)
        with retries across endpoints. The transport under everything else; the benchmarks use it directly.
        stream=True measures the time to the first token and sets `first_token` when it arrives (the
        prompt's prefix is in vLLM's cache from then on). `affinity`: a key (any value; its str() counts)
        that sends the request where the other requests with that key go. Raises RequestFailedError.

        Streamed and plain requests follow one rule (`_transport.classify`): transport failures, 408/409/
        429, 5xx, errors inside a stream and unfinished answers are retried, on another endpoint when one
        is up; the endpoint that failed is skipped for a cool-down (at least its Retry-After). The wait
        between attempts is a jittered backoff, raised to the server's Retry-After (capped at
        RETRY_BACKOFF_MAX_S) when no other endpoint can take the retry."""
        waited = 0.0
        token = affinity_token(affinity) if affinity is not None and self.affinity else None
        tried: list[str] = []
        for attempt in range(1, self.max_retries + 2):
            async with self.pool.lease(token) as (endpoint, rank):
                tried.append(endpoint.base_url)
                sent_at = time.monotonic()
                headers = {} if token is None else {AFFINITY_HEADER: token}
                if rank is not None:
                    headers[DATA_PARALLEL_RANK_HEADER] = str(rank)
                try:
                    completion = await self._attempt(endpoint, request, stream, first_token, headers)
                except (*ATTEMPT_ERRORS, TimeoutError) as exc:
                    failure, cause = classify(exc, stall_timeout=self._stall_timeout,
                                              timeout=self._attempt_timeout), exc
                else:
                    failure, cause = unfinished(completion), None
                    if failure is None:
                        self.pool.mark_ok(endpoint, sent_at)
                        return dataclasses.replace(completion, attempts=attempt, backoff_s=waited)
                if failure.endpoint_down:
                    self.pool.mark_failed(endpoint, failure.retry_after)
                if not failure.retryable or attempt > self.max_retries:
                    raise failure.after(attempt, waited, tuple(tried)) from cause
                delay = backoff_s(attempt)
                if failure.retry_after is not None and not self.pool.others_up(endpoint):
                    delay = max(delay, min(failure.retry_after, RETRY_BACKOFF_MAX_S))
            await asyncio.sleep(delay)
            waited += delay
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _attempt(self, endpoint: Endpoint, request: dict[str, Any], stream: bool,
                       first_token: asyncio.Event | None, headers: Mapping[str, str]) -> Completion:
        """One attempt on one endpoint: images it has answered for go by their uuid alone (clients/_uuids.py);
        if the API process that takes it lacks one of them, the same request goes again with the data. With a
        stall timeout every answer is read as a stream (a chunk every STREAM_INTERVAL_TOKENS tokens), within
        `timeout` in all."""
        sending, slimmed = self.media.slim(request, endpoint.base_url)
        with_data = sent_with_data(request)

        def answered() -> None:  # the server has processed the images: its cache holds them from now on
            self.media.remember(endpoint.base_url, with_data)

        async def send(body: dict[str, Any]) -> Completion:
            if headers:
                body = {**body, "extra_headers": {**(body.get("extra_headers") or {}), **headers}}
            if self._stall_timeout is not None:
                async with asyncio.timeout(self._attempt_timeout):
                    return await read_stream(endpoint.api, body, endpoint.base_url, first_token, answered,
                                             stream_interval=STREAM_INTERVAL_TOKENS)
            if stream:
                return await read_stream(endpoint.api, body, endpoint.base_url, first_token, answered)
            completion = await read_plain(endpoint.api, body, endpoint.base_url)
            answered()
            return completion

        try:
            return await send(sending)
        except openai.BadRequestError as exc:
            if not slimmed or not is_cache_miss(exc):
                raise
            self.media.forget(endpoint.base_url, slimmed)
            self.media.misses += len(slimmed)
            return await send(request)

    async def _score_item(self, item: Item, *, constraint: str, logprobs: Logprobs, max_tokens: int | None,
                          extra_body: Mapping[str, Any] | None = None, decode: str = "decisive",
                          gate: asyncio.Semaphore | None = None,
                          first_token: asyncio.Event | None = None, stop: StopFlag | None = None) -> Result:
        """One item, one order. Raises RewardError; the callers turn it into a Result. The media are
        encoded before taking a place at `gate` (the in-flight limit): while requests are in flight, the
        next items get ready, so the server is never left waiting for the client to encode."""
        task = resolve_task(item.task)
        if _all_urls(item.media):  # nothing to decode or encode: no thread hop
            encoded = encode_media(task, item.media, self.encode_options)
        else:
            encoded = await asyncio.to_thread(encode_media, task, item.media, self.encode_options)
        request = build_request(task, encoded, item.fields, model=self.model, constraint=constraint,
                                logprobs=logprobs, max_tokens=max_tokens, extra_body=extra_body, decode=decode)
        async with gate or contextlib.nullcontext():
            if stop is not None and stop.is_set():
                raise _NotStarted
            completion = await self.complete(request, stream=first_token is not None, first_token=first_token,
                                             affinity=item.affinity)
        return to_result(task, completion, id=item.id, logprobs=logprobs,
                         decisive=decides_early(task, constraint, decode, extra_body))

    async def _score_safely(self, item: Item, *, debias: bool, **options: Any) -> Result:
        """Never raises: a failure becomes a Result with `error`, so one bad item cannot sink a batch."""
        try:
            if not debias:
                return await self._score_item(item, **options)
            first, second = await self._both_orders(item, **options)
            return dataclasses.replace(first, swapped=second, agreement=orders_agree(first.verdict, second.verdict))
        except _NotStarted:
            raise
        except RewardError as exc:
            return Result.failure(exc, task=item.task_name, id=item.id)
        except Exception as exc:  # a bug or an unforeseen input: still this item's failure alone
            return Result.failure(RewardError(f"{type(exc).__name__}: {exc}"), task=item.task_name, id=item.id)

    async def _both_orders(self, item: Item, *, first_token: asyncio.Event | None = None,
                           **options: Any) -> tuple[Result, Result]:
        """debias: the item, then the same pair in the other order. The media are encoded once, and the second
        order is sent once the first has its first token, so that the server has its images by then and takes
        them by uuid alone (its image processing and decoding skipped: clients/_uuids.py)."""
        task = resolve_task(item.task)
        if not _all_urls(item.media):
            item = dataclasses.replace(item, media=await asyncio.to_thread(encode_media, task, item.media,
                                                                           self.encode_options))
        if item.affinity is None:  # both orders to one endpoint: the second finds the images the first sent
            item = dataclasses.replace(item, affinity=f"pair-{secrets.token_hex(8)}")
        swapped = swap_pair(task, item)
        started = _Events(*(e for e in (first_token,) if e is not None))

        async def first() -> Result:
            try:
                return await self._score_item(item, first_token=started, **options)
            finally:
                started.set()  # also when it failed: the second order must not wait forever

        async def second() -> Result:
            await started.wait()
            return await self._score_item(swapped, **options)

        tasks = [asyncio.ensure_future(first()), asyncio.ensure_future(second())]
        try:
            one, other = await asyncio.gather(*tasks)
        finally:
            for task_ in tasks:  # the first order failed: the second is not left running
                task_.cancel()
        return one, other

    # -- public API ---------------------------------------------------------------------------------

    async def score(self, task: str | Task, media: Sequence[Any], *, constraint: str = "auto",
                    logprobs: Logprobs = False, debias: bool = False, max_tokens: int | None = None,
                    extra_body: Mapping[str, Any] | None = None, decode: str = "decisive", **fields: str) -> Result:
        """Score one item. Never raises for the item's own failure: see `Result.error` (or `.reward`,
        which raises it). media: images (paths, bytes, PIL images, HWC uint8 arrays, URLs); for video tasks
        per video a file, bytes, a URL or a list of frames. constraint: "auto" | "verdict" | "none".
        logprobs: True: soft scores (p_first, expected_score) drive the reward where the answer's logprobs
        give one, and `Result.reward_kind` says "soft" or "hard"; "require": soft or the item fails with
        SoftScoreUnavailableError. debias: pair tasks in both orders. decode: "decisive" (default) stops a
        constrained choice or one-digit final score at the token that decides it, where the verdict and soft
        score are then exactly the full answer's (`Result.text` is then "Image 1", not "Image 1 is better.");
        "full" decodes the whole answer."""
        return await self._score_safely(Item(task, media, fields), debias=debias, constraint=constraint,
                                        logprobs=logprobs, max_tokens=max_tokens, extra_body=extra_body,
                                        decode=decode)

    async def score_stream(self, items: Iterable[ItemLike] | AsyncIterable[ItemLike], *,
                           concurrency: int = DEFAULT_CONCURRENCY, ordered: bool = False,
                           deadline_s: float | None = None, stop: StopFlag | None = None, constraint: str = "auto",
                           logprobs: Logprobs = False, debias: bool = False, max_tokens: int | None = None,
                           extra_body: Mapping[str, Any] | None = None, decode: str = "decisive"
                           ) -> AsyncIterator[Result]:
        """Score items as a stream: a Result per item as soon as it is final (`ordered=True`: in input order,
        through a small reorder buffer). Items are pulled lazily from any iterable or async iterable (a
        generator over a 10^6-line file), at most `concurrency x (1 + ENCODE_AHEAD)` alive at once, so
        memory does not grow with the input. `stop` (a threading or asyncio Event): once set, nothing new
        is sent, the requests in flight finish and the stream ends; items pulled but never sent are left
        out. Leaving the loop early (break, an exception, aclose) cancels the requests in flight.

            async for result in client.score_stream(read_items("items.jsonl"), concurrency=64):
                out.write(json.dumps(result.to_dict()) + "\n")
        """
        stream = self._stream(items, concurrency=concurrency, ordered=ordered, deadline_s=deadline_s, stop=stop,
                              constraint=constraint, logprobs=logprobs, debias=debias, max_tokens=max_tokens,
                              extra_body=extra_body, decode=decode)
        async with contextlib.aclosing(stream):
            async for _, result in stream:
                yield result

    async def score_batch(self, items: Iterable[ItemLike] | AsyncIterable[ItemLike], *,
                          concurrency: int = DEFAULT_CONCURRENCY, deadline_s: float | None = None,
                          constraint: str = "auto", logprobs: Logprobs = False, debias: bool = False,
                          max_tokens: int | None = None, extra_body: Mapping[str, Any] | None = None,
                          progress: Progress = False, decode: str = "decisive") -> list[Result]:
        """Score many items with at most `concurrency` in flight; results in input order, one per item.
        `deadline_s`: after that many seconds, unfinished items fail with DeadlineExceededError.
        (A collector over score_stream: for inputs larger than memory, use score_stream.)"""
        report = _progress_reporter(progress, len(items) if isinstance(items, Sized) else None)
        results: dict[int, Result] = {}
        stream = self._stream(items, concurrency=concurrency, ordered=False, deadline_s=deadline_s, stop=None,
                              constraint=constraint, logprobs=logprobs, debias=debias, max_tokens=max_tokens,
                              extra_body=extra_body, decode=decode)
        try:
            async with contextlib.aclosing(stream):
                async for index, result in stream:
                    results[index] = result
                    report(result)
        finally:
            report(None)
        return [results[i] for i in range(len(results))]

    def _stream(self, items: Iterable[ItemLike] | AsyncIterable[ItemLike], *, concurrency: int, ordered: bool,
                deadline_s: float | None, stop: StopFlag | None, **options: Any) -> AsyncIterator[tuple[int, Result]]:
        """(input index, Result) pairs: the one engine under score_stream and score_batch."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        # At most `concurrency` requests in flight, and as many more items encoded ahead of them (memory
        # stays bounded; encoding overlaps the server's work instead of stalling it).
        gate = asyncio.Semaphore(concurrency)

        async def score(item: Item) -> Result | None:
            try:
                if deadline is None:
                    return await self._score_safely(item, gate=gate, stop=stop, **options)
                remaining = deadline - time.monotonic()
                try:
                    if remaining <= 0:
                        raise TimeoutError
                    return await asyncio.wait_for(self._score_safely(item, gate=gate, stop=stop, **options),
                                                  remaining)
                except TimeoutError:
                    return Result.failure(DeadlineExceededError(
                        f"the batch deadline of {deadline_s:g} s passed before this item was scored"),
                        task=item.task_name, id=item.id)
            except _NotStarted:
                return None

        return stream_results(items, score, window=concurrency * (1 + ENCODE_AHEAD), ordered=ordered, stop=stop)

    async def rank_group(self, task: str | Task, media: Sequence[Any], *, pairs: int | None = None,
                         debias: bool = False, logprobs: Logprobs = False, concurrency: int = DEFAULT_CONCURRENCY,
                         decode: str = "decisive", affinity: Any = None, **fields: str) -> GroupResult:
        """Rank a group of candidates (e.g. one prompt's GRPO samples) with a pairwise task: all pairs, or a
        budget of `pairs`. Per item: win rate (a tie counts half to each) and Bradley-Terry strength. Each
        candidate is encoded once, and one pair per leading candidate goes first so that the others find
        its image in vLLM's prefix cache. All pairs carry one affinity key (`affinity`, else one drawn for
        the call), so with several endpoints they meet on the replica that holds the group's images."""
        spec = resolve_task(task)
        if spec.pairwise != "media":
            raise BadInputError(f"{spec.name}: rank_group needs a task comparing two media "
                                f"(image_gen.pair_rank, image_gen.pair_score, video_gen.*pair*)")
        n = len(media)
        if n < 2:
            raise BadInputError(f"rank_group needs at least 2 candidates, got {n}")
        key = affinity if affinity is not None else f"group-{secrets.token_hex(8)}"
        errors: dict[int, RewardError] = {}

        async def encode(i: int, candidate: Any) -> Any:
            try:
                return await asyncio.to_thread(encode_one, spec.media.kind, spec.media.frames, candidate,
                                               self.encode_options)
            except RewardError as exc:
                errors[i] = exc
                return None

        # Each candidate encoded once (not once per pair), all of them in parallel worker threads.
        encoded = await asyncio.gather(*(encode(i, m) for i, m in enumerate(media)))
        chosen = all_pairs(n, pairs)
        semaphore = asyncio.Semaphore(concurrency)
        results: dict[tuple[int, int], Result] = {}
        # One pair per leading candidate goes first, streamed; the other pairs led by the same candidate
        # wait until its first token, when vLLM has that candidate's image prefix in its cache, and until the
        # first primer showing their second candidate has its first token: both images then go by uuid alone.
        primers, _ = cache_friendly_waves(chosen)
        prefilled = {i: asyncio.Event() for i, _ in primers}
        shown_by: dict[int, int] = {}  # candidate -> the leading candidate of the first primer showing it
        for i, j in primers:
            shown_by.setdefault(i, i)
            shown_by.setdefault(j, i)

        async def compare(i: int, j: int) -> None:
            primer = (i, j) in primers
            try:
                if not primer:
                    await prefilled[i].wait()
                    if j in shown_by:
                        await prefilled[shown_by[j]].wait()
                if encoded[i] is None or encoded[j] is None:
                    bad = errors.get(i) or errors.get(j)
                    results[(i, j)] = Result.failure(bad, task=spec.name, id=(i, j))
                    return
                async with semaphore:
                    results[(i, j)] = await self._score_safely(
                        Item(spec, [encoded[i], encoded[j]], fields, id=(i, j), affinity=key), debias=debias,
                        constraint="auto", logprobs=logprobs, max_tokens=None, decode=decode,
                        first_token=prefilled[i] if primer else None)
            finally:
                if primer:
                    prefilled[i].set()  # also when the primer failed: the others must not wait forever

        await asyncio.gather(*(compare(i, j) for i, j in chosen))
        outcomes = {pair: r.reward for pair, r in results.items() if r.ok}
        return GroupResult(task=spec.name, win_rates=win_rates(n, outcomes), strengths=bradley_terry(n, outcomes),
                           games=games_played(n, outcomes),
                           pairs=[results[p] for p in chosen], errors=sum(not r.ok for r in results.values()),
                           components=components(n, outcomes))

    async def aclose(self) -> None:
        await self.pool.aclose()
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncRewardClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Events(asyncio.Event):
    """An event that also sets others when set (a request's first token, told to several waiters)."""

    def __init__(self, *others: asyncio.Event) -> None:
        super().__init__()
        self._others = others

    def set(self) -> None:
        super().set()
        for other in self._others:
            other.set()


def _all_urls(media: Any) -> bool:
    """URLs (data:, http(s):) and ready content parts only, videos as frame lists included: nothing to decode."""
    if isinstance(media, Mapping):
        return True
    if isinstance(media, (str, bytes)) or not isinstance(media, Sequence):
        return is_url(media)
    return all(_all_urls(m) if isinstance(m, (list, tuple, Mapping)) else is_url(m) for m in media)


def _progress_reporter(progress: Progress, total: int | None) -> Callable[[Result | None], None]:
    """progress=True: a tqdm bar on stderr (ok/failed counts, rate, ETA); a callable: called with each Result."""
    if callable(progress):
        return lambda result: result is not None and progress(result)
    if not progress:
        return lambda result: None
    bar = ProgressBar(total)
    return lambda result: bar.close() if result is None else bar.add(result)


class ProgressBar:
    """A tqdm bar over results: items/s, ETA when the total is known, and ok / failed counts."""

    def __init__(self, total: int | None, *, initial: int = 0, description: str | None = None) -> None:
        from tqdm import tqdm

        self.ok = self.failed = 0
        self._bar = tqdm(total=total, initial=initial, unit="item", desc=description, file=sys.stderr,
                         dynamic_ncols=True, smoothing=0.05)

    def add(self, result: Result) -> None:
        if result.ok:
            self.ok += 1
        else:
            self.failed += 1
        self._bar.set_postfix(ok=self.ok, failed=self.failed, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()
