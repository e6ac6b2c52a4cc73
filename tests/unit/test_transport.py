"""The client's one transport rule, scripted on the wire (httpx.MockTransport through the constructor's
`transport=` seam): streamed and plain requests retry the same failures, mark the endpoint, honour
Retry-After and the connect timeout. The fault-injection batch against the real server is in tests/e2e."""
from __future__ import annotations

import asyncio
import email.utils
import json
import time
from typing import AsyncIterator, Callable

import httpx
import pytest

from unifiedreward.clients import AsyncRewardClient, InputRejectedError, RequestFailedError
from unifiedreward.clients._constants import RETRY_BACKOFF_MAX_S
from unifiedreward.clients._transport import retry_after_s
from testkit.faults import unreachable_listener
from tests.helpers import chat_reply

REQUEST = {"model": "UnifiedReward", "messages": [{"role": "user", "content": "x"}], "max_tokens": 8}


def chat_response(text: str = "Image 1 is better.", finish_reason: str = "stop") -> dict:
    """The shape of a vLLM chat completion (recorded from the live server, values trimmed)."""
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "UnifiedReward",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason, "logprobs": None}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}


def sse_chunk(content: str | None = None, finish_reason: str | None = None) -> bytes:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "UnifiedReward",
             "choices": [{"index": 0, "delta": {"content": content} if content else {},
                          "finish_reason": finish_reason, "logprobs": None}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class Body(httpx.AsyncByteStream):
    """A response body delivered in parts; an exception among the parts is raised when reached (a
    connection reset part-way through an answer)."""

    def __init__(self, *parts: bytes | Exception) -> None:
        self.parts = parts

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            if isinstance(part, Exception):
                raise part
            yield part


GOOD_STREAM = (sse_chunk("Image 1"), sse_chunk(" is better."), sse_chunk(finish_reason="stop"), b"data: [DONE]\n\n")


def stream_response(*parts: bytes | Exception) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Body(*parts))


def script(*answers: Callable[[httpx.Request], httpx.Response]) -> tuple[httpx.MockTransport, list[str]]:
    """A transport answering chat requests with `answers` in turn (the last repeats); /health is 200.
    Returns it and the list of hosts the chat requests went to."""
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/health"):
            return httpx.Response(200)
        hosts.append(request.url.host)
        return answers[min(len(hosts), len(answers)) - 1](request)

    return httpx.MockTransport(handler), hosts


def by_host(answers: dict[str, Callable[[httpx.Request], httpx.Response]]) -> tuple[httpx.MockTransport, list[str]]:
    """A transport answering chat requests per host; /health is 503 (a failed endpoint stays down).
    Returns it and the list of hosts the chat requests went to."""
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/health"):
            return httpx.Response(503)
        hosts.append(request.url.host)
        return answers[request.url.host](request)

    return httpx.MockTransport(handler), hosts


def run(coroutine):
    return asyncio.run(coroutine)


FAILURES_MID_STREAM = {
    "reset mid-stream": lambda r: stream_response(sse_chunk("Image"), httpx.ReadError("connection reset by peer")),
    "body cut short": lambda r: stream_response(sse_chunk("Image"),
                                                httpx.RemoteProtocolError("incomplete chunked read")),
    "error event in the stream": lambda r: stream_response(
        sse_chunk("Image"), b'data: {"error": {"message": "engine dead", "type": "InternalServerError", '
                            b'"code": 500}}\n\n'),
    "stream ended without a finish reason": lambda r: stream_response(sse_chunk("Image"), b"data: [DONE]\n\n"),
    "aborted by vLLM": lambda r: stream_response(sse_chunk("Im"), sse_chunk(finish_reason="abort"),
                                                 b"data: [DONE]\n\n"),
}


@pytest.mark.parametrize("failure", FAILURES_MID_STREAM)
def test_a_stream_that_fails_part_way_is_retried_on_the_other_endpoint(failure):
    """Item 3 of the issue: every failure while a streamed answer is read goes through the same rule as a
    plain request: retried, on another endpoint, and the failing endpoint is marked."""
    answers = {"bad": FAILURES_MID_STREAM[failure], "good": lambda r: stream_response(*GOOD_STREAM)}
    transport, hosts = by_host(answers)

    async def scenario():
        async with AsyncRewardClient(["http://bad/v1", "http://good/v1"], transport=transport) as client:
            client.pool.endpoints[1].in_flight = 1  # the first pick goes to "bad"
            completion = await client.complete(REQUEST, stream=True)
            client.pool.endpoints[1].in_flight = 0
            bad = client.pool.endpoints[0]
            assert bad.failures == 1 and bad.down_until > time.monotonic()
            return completion

    completion = run(scenario())
    assert hosts == ["bad", "good"]
    assert completion.text == "Image 1 is better." and completion.attempts == 2
    assert completion.endpoint == "http://good/v1" and completion.finish_reason == "stop"


@pytest.mark.parametrize("answer, status", [
    (lambda r: httpx.Response(500, json={"error": {"message": "boom"}}), 500),
    (lambda r: httpx.Response(502, text="bad gateway"), 502),
    (lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused")), None),
    (lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("slow")), None),
])
@pytest.mark.parametrize("stream", [False, True])
def test_plain_and_streamed_requests_retry_the_same_failures(answer, status, stream):
    good = (lambda r: stream_response(*GOOD_STREAM)) if stream else (lambda r: chat_reply(r, chat_response()))
    transport, hosts = script(answer, good)

    async def scenario():
        async with AsyncRewardClient("http://only/v1", transport=transport) as client:
            return await client.complete(REQUEST, stream=stream)

    completion = run(scenario())
    assert completion.text == "Image 1 is better." and completion.attempts == 2 and len(hosts) == 2
    assert completion.backoff_s > 0


@pytest.mark.parametrize("stream", [False, True])
def test_a_4xx_naming_the_input_is_not_retried(stream):
    transport, hosts = script(lambda r: httpx.Response(400, json={"error": {"message": "image is not an image"}}))

    async def scenario():
        async with AsyncRewardClient("http://only/v1", transport=transport) as client:
            await client.complete(REQUEST, stream=stream)

    with pytest.raises(InputRejectedError, match="not an image") as raised:
        run(scenario())
    assert raised.value.attempts == 1 and len(hosts) == 1


def test_retry_after_is_honoured_when_no_other_endpoint_can_take_the_retry():
    """Item 5: a 503 with Retry-After: 1 is retried after at least 1 s (the blind backoff waits 0.125-0.25 s)."""
    transport, hosts = script(lambda r: httpx.Response(503, headers={"Retry-After": "1"}, json={"error": "busy"}),
                              lambda r: chat_reply(r, chat_response()))

    async def scenario():
        async with AsyncRewardClient("http://only/v1", transport=transport) as client:
            started = time.monotonic()
            completion = await client.complete(REQUEST)
            return completion, time.monotonic() - started

    completion, elapsed = run(scenario())
    assert completion.attempts == 2 and 1.0 <= completion.backoff_s <= 1.1 and elapsed >= 1.0


def test_retry_after_sends_the_retry_elsewhere_when_another_endpoint_is_up():
    answers = {"busy": lambda r: httpx.Response(429, headers={"Retry-After": "30"}, json={"error": "slow down"}),
               "free": lambda r: chat_reply(r, chat_response())}
    transport, hosts = by_host(answers)

    async def scenario():
        async with AsyncRewardClient(["http://busy/v1", "http://free/v1"], transport=transport) as client:
            client.pool.endpoints[1].in_flight = 1  # the first pick goes to "busy"
            completion = await client.complete(REQUEST)
            busy = client.pool.endpoints[0]
            # the busy endpoint is left alone for its Retry-After, not just the 1 s cool-down
            assert busy.down_until - time.monotonic() > 25
            return completion

    completion = run(scenario())
    assert hosts == ["busy", "free"] and completion.backoff_s < 1.0


def test_retry_after_forms_and_cap(monkeypatch):
    now = time.time()
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({"retry-after-ms": "250"}) == 0.25
    date = email.utils.formatdate(now + 20, usegmt=True)
    assert 18 <= retry_after_s({"retry-after": date}, now=now) <= 21
    assert retry_after_s({"retry-after": "soon"}) is None and retry_after_s({}) is None
    assert retry_after_s({"retry-after": email.utils.formatdate(now - 60, usegmt=True)}, now=now) == 0.0

    transport, _ = script(lambda r: httpx.Response(503, headers={"Retry-After": "3600"}, json={}),
                          lambda r: chat_reply(r, chat_response()))

    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)

    async def scenario():
        async with AsyncRewardClient("http://only/v1", transport=transport) as client:
            await client.complete(REQUEST)

    run(scenario())
    assert sleeps == [RETRY_BACKOFF_MAX_S]  # an hour asked, capped at the backoff maximum


def test_the_connect_timeout_is_honoured():
    """Item 4: a replica whose accept queue is full (connect never completes). openai applied its own
    `timeout` to every request, so the attempt waited the whole read timeout (121 s measured)."""
    with unreachable_listener() as url:
        async def scenario():
            async with AsyncRewardClient(url + "/v1", timeout=30, connect_timeout=1, max_retries=0) as client:
                started = time.monotonic()
                with pytest.raises(RequestFailedError, match="timed out connecting") as raised:
                    await client.complete(REQUEST)
                return time.monotonic() - started, raised.value

        elapsed, error = run(scenario())
    assert elapsed < 5, f"waited {elapsed:.1f} s: the 30 s timeout applied, not connect_timeout=1"
    assert error.retryable and error.attempts == 1 and error.endpoint_down


def test_the_default_connect_and_stall_timeouts_reach_every_request():
    """Every answer is read as a stream, with httpx's per-read limit set to the stall timeout; stall_timeout=None
    reads plain answers plain with the whole timeout as the read limit (the old behaviour)."""
    seen: list[tuple[dict, bool]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.extensions["timeout"], json.loads(request.content).get("stream", False)))
        return chat_reply(request, chat_response())

    async def scenario(**options):
        seen.clear()
        async with AsyncRewardClient("http://only/v1", transport=httpx.MockTransport(handler), **options) as client:
            first = await client.complete(REQUEST)
            await client.complete(REQUEST, stream=False)
        return first

    first = run(scenario())
    assert first.text == "Image 1 is better." and first.max_gap_s is not None
    assert len(seen) == 2 and all(t["connect"] == 10.0 and t["read"] == t["write"] == 30.0 and streamed
                                  for t, streamed in seen)
    run(scenario(stall_timeout=None))
    assert len(seen) == 2 and all(t["connect"] == 10.0 and t["read"] == 120.0 and not streamed for t, streamed in seen)
