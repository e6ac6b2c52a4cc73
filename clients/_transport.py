"""One request on the wire, streamed or plain, and the one rule that classifies how it failed.

Every failure of an attempt, whichever layer raised it (openai's status and connection errors, httpx
transport errors escaping a stream, an error event inside a stream, a stream that ended unfinished, a 200
answer vLLM aborted), becomes a RequestFailedError stating whether it is retryable, whether it says the
endpoint is unwell, and how long the server asked to wait.
"""
from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from typing import Any, Callable, Mapping

import httpx
import openai

from ._constants import RETRY_BACKOFF_BASE_S, RETRY_BACKOFF_MAX_S, RETRYABLE_STATUS, UNFINISHED_REASONS
from ._types import Completion
from .errors import AuthenticationError, InputRejectedError, RequestFailedError

# What one attempt may raise that is a failure of the request rather than a bug of ours. httpx errors
# reach us directly where an openai version does not wrap those raised while a stream is read.
ATTEMPT_ERRORS = (openai.OpenAIError, httpx.RequestError)


def backoff_s(attempt: int) -> float:
    """Jittered exponential backoff before retry number `attempt` (1-based)."""
    return min(RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_BASE_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def retry_after_s(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds a 429/503 asked to wait: `retry-after-ms`, `retry-after` in seconds or as an HTTP date."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) / scale
        except ValueError:
            if name == "retry-after-ms":
                continue
            try:
                date = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError):
                continue
            value = date.timestamp() - (time.time() if now is None else now)
        if math.isfinite(value):
            return max(0.0, value)
    return None


def classify(exc: BaseException, *, stall_timeout: float | None = None, timeout: float | None = None
             ) -> RequestFailedError:
    """The one rule, for streamed and plain requests alike: 4xx naming the input are final; transport
    failures (connect, read, reset, protocol, timeout, a stalled answer), 408/409/429, every 5xx and errors
    inside a stream are retried, and all but 408/409 mark the endpoint."""
    if isinstance(exc, TimeoutError):  # the attempt's own bound (asyncio.timeout in the client)
        return RequestFailedError(f"the answer took longer than timeout={timeout:g} s", None, True, endpoint_down=True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retry_after = retry_after_s(exc.response.headers) if status in (429, 503) else None
        if status in RETRYABLE_STATUS or status >= 500:
            return RequestFailedError(f"server answered {status}: {exc.message}", status, True,
                                      endpoint_down=status == 429 or status >= 500, retry_after=retry_after)
        kind = AuthenticationError if status in (401, 403) else InputRejectedError
        return kind(f"server answered {status}: {exc.message}", status, False)
    if isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException)):
        inner = exc.__cause__ or exc
        if isinstance(inner, httpx.ConnectTimeout):
            return RequestFailedError(f"request timed out connecting: {_describe(exc)}", None, True,
                                      endpoint_down=True)
        if stall_timeout is not None and isinstance(inner, (httpx.ReadTimeout, httpx.WriteTimeout)):
            return RequestFailedError(f"the answer stalled: no bytes for stall_timeout={stall_timeout:g} s "
                                      f"({_describe(exc)})", None, True, endpoint_down=True)
        return RequestFailedError(f"request timed out waiting for the answer: {_describe(exc)}", None, True,
                                  endpoint_down=True)
    if isinstance(exc, (openai.APIConnectionError, httpx.RequestError)):
        return RequestFailedError(f"connection failed: {_describe(exc)}", None, True, endpoint_down=True)
    if isinstance(exc, openai.APIError):  # an error event inside a stream (the server failed after 200)
        code = exc.body.get("code") if isinstance(exc.body, Mapping) else None
        return RequestFailedError(f"the server reported an error inside the stream: {exc.message}",
                                  code if isinstance(code, int) else None, True, endpoint_down=True)
    return RequestFailedError(f"request failed: {_describe(exc)}")


def unfinished(completion: Completion) -> RequestFailedError | None:
    """A 200 answer that carries no finished output: vLLM aborted it (a replica shutting down) or failed in
    the engine, or a stream ended before its finish reason. Its text is no verdict: retried elsewhere."""
    if completion.finish_reason is not None and completion.finish_reason not in UNFINISHED_REASONS:
        return None
    how = (f"finish_reason={completion.finish_reason!r}" if completion.finish_reason
           else "the stream ended without a finish reason")
    return RequestFailedError(f"the server ended the request early ({how}, {len(completion.text)} characters)",
                              None, True, endpoint_down=True)


def _describe(exc: BaseException) -> str:
    """The innermost useful message: openai's 'Connection error.' hides httpx's reason in __cause__."""
    cause = exc.__cause__
    inner = f" ({type(cause).__name__}: {cause})" if cause is not None and str(cause) else ""
    return f"{type(exc).__name__}: {exc}{inner}" if str(exc) else f"{type(exc).__name__}{inner}"


def usage_of(response: Any) -> dict[str, int]:
    if getattr(response, "usage", None) is None:
        return {}
    return {"prompt_tokens": response.usage.prompt_tokens, "completion_tokens": response.usage.completion_tokens}


async def read_plain(api: openai.AsyncOpenAI, request: dict[str, Any], endpoint: str) -> Completion:
    started = time.perf_counter()
    response = await api.chat.completions.create(**request)
    choice = response.choices[0]
    return Completion(text=choice.message.content or "", finish_reason=choice.finish_reason,
                      usage=usage_of(response), logprobs=choice.logprobs.content if choice.logprobs else None,
                      latency_s=time.perf_counter() - started, endpoint=endpoint)


async def read_stream(api: openai.AsyncOpenAI, request: dict[str, Any], endpoint: str,
                      first_token: asyncio.Event | None = None,
                      on_first_token: Callable[[], None] | None = None,
                      stream_interval: int | None = None) -> Completion:
    """A streamed chat completion, gathered: text, finish reason, usage, logprobs, time to first token
    (`on_first_token` is called, then `first_token` set, when it arrives), the longest silence. The response
    is closed on every path (an error, a cancellation), so no connection is left half read.
    `stream_interval`: vLLM sends a chunk every that many tokens (the first at once), less CPU per answer."""
    started = time.perf_counter()
    parts: list[str] = []
    logprobs: list[Any] = []
    finish, usage, ttft = None, {}, None
    if stream_interval is not None:
        request = {**request, "extra_body": {**(request.get("extra_body") or {}), "stream_interval": stream_interval}}
    stream = await api.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
    last = time.perf_counter()
    gap = last - started  # the request until the head: the server's preprocessing and queue
    async with stream:
        async for chunk in stream:
            now = time.perf_counter()
            gap, last = max(gap, now - last), now
            if chunk.usage is not None:
                usage = usage_of(chunk)
            for choice in chunk.choices:
                if choice.delta.content:
                    if ttft is None:
                        ttft = time.perf_counter() - started
                        if on_first_token is not None:
                            on_first_token()
                        if first_token is not None:
                            first_token.set()
                    parts.append(choice.delta.content)
                if choice.logprobs is not None and choice.logprobs.content:
                    logprobs.extend(choice.logprobs.content)
                if choice.finish_reason:
                    finish = choice.finish_reason
    return Completion(text="".join(parts), finish_reason=finish, usage=usage, logprobs=logprobs or None,
                      latency_s=time.perf_counter() - started, endpoint=endpoint, ttft_s=ttft, max_gap_s=gap)
