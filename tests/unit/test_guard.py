"""The request guard (serving/guard.py) on its own: each check, the ASGI flow, the limits' sources."""
from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from unifiedreward.serving.guard import Limits, Refused, RequestGuard, check_request
from testkit.bad_requests import cases, chat, data_url, default_png, good_request, image_part

ARGS = SimpleNamespace(limit_mm_per_prompt={"image": 16, "video": {"count": 2}}, allowed_media_domains=["cdn.example.org"],
                       api_key=["sk-test"])
LIMITS = Limits.from_env(ARGS)
JSON = {b"content-type": b"application/json"}
LOCAL_URL = "http://127.0.0.1:9/secret.png"


def test_limits_come_from_vllms_arguments_and_the_environment(monkeypatch):
    monkeypatch.setenv("UNIFIEDREWARD_MAX_TOKENS", "77")
    limits = Limits.from_env(ARGS)
    assert dict(limits.media_limits) == {"image": 16, "video": 2}
    assert limits.allowed_domains == {"cdn.example.org"} and limits.max_tokens == 77
    assert limits.authorized({b"authorization": b"Bearer sk-test"})
    assert not limits.authorized({b"authorization": b"Bearer sk-wrong"}) and not limits.authorized({})


@pytest.mark.parametrize("case", [c for c in cases(LOCAL_URL, default_png()) if c.layer == "guard"],
                         ids=lambda c: c.name)
def test_every_bad_request_is_refused_with_a_message_naming_the_problem(case):
    inner = Recorder()
    status, answer = call(RequestGuard(inner), case.build(), {**JSON, b"authorization": b"Bearer sk-test"})
    error = json.loads(answer)["error"]
    assert status in case.status and error["code"] == status
    assert case.problem.lower() in error["message"].lower()
    assert inner.bodies == []  # vLLM never saw it


def test_good_request_and_allowed_domain_pass():
    png = default_png()
    check_request(good_request(png), JSON, LIMITS)
    check_request(json.dumps(chat(image_part("https://cdn.example.org/a.png"))).encode(), JSON, LIMITS)
    check_request(json.dumps(chat(*[image_part(data_url(png))] * 16)).encode(), JSON, LIMITS)


def test_media_urls_are_refused_when_no_domain_is_allowed():
    limits = Limits.from_env(SimpleNamespace(limit_mm_per_prompt={}, allowed_media_domains=[], api_key=None))
    with pytest.raises(Refused, match="allowed domains: none"):
        check_request(json.dumps(chat(image_part("https://cdn.example.org/a.png"))).encode(), JSON, limits)


class Recorder:
    """The inner ASGI app: records the body it received and answers 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send) -> None:
        message = await receive()
        self.bodies.append(message.get("body", b""))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def call(guard: RequestGuard, body: bytes, headers: dict[bytes, bytes], path: str = "/v1/chat/completions",
         chunk: int = 1 << 16) -> tuple[int, bytes]:
    chunks = [body[i:i + chunk] for i in range(0, len(body), chunk)] or [b""]
    sent: list[dict] = []

    async def receive():
        data = chunks.pop(0)
        return {"type": "http.request", "body": data, "more_body": bool(chunks)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": list(headers.items()),
             "app": SimpleNamespace(state=SimpleNamespace(args=ARGS))}
    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_asgi_flow_replays_the_body_refuses_early_and_leaves_auth_to_vllm(monkeypatch):
    monkeypatch.setenv("UNIFIEDREWARD_MAX_BODY_BYTES", "1000000")
    inner = Recorder()
    guard = RequestGuard(inner)
    auth = {**JSON, b"authorization": b"Bearer sk-test"}
    body = good_request(default_png())
    assert call(guard, body, auth) == (200, b"ok") and inner.bodies == [body]
    # Too big, without a content-length: refused while streaming, the inner app never called.
    status, answer = call(guard, b" " * 2_000_000, auth)
    assert status == 413 and b"limit of 1,000,000 bytes" in answer and len(inner.bodies) == 1
    # Too big by its declared length: refused before reading.
    status, _ = call(guard, b"{}", {**auth, b"content-length": b"9999999"})
    assert status == 413
    # No key on a /v1 path: passed through untouched (vLLM's AuthenticationMiddleware answers 401) ...
    assert call(guard, b"not json", JSON)[0] == 200 and inner.bodies[-1] == b"not json"
    # ... and refused here on the paths vLLM's authentication does not cover.
    status, answer = call(guard, body, JSON, path="/invocations")
    assert status == 401 and b"API key" in answer
    assert json.loads(call(guard, b"{", auth)[1])["error"]["code"] == 400


def test_untyped_parts_are_checked_and_other_routes_are_closed():
    untyped = {"model": "UnifiedReward", "messages": [{"role": "user", "content": [
        {"image_url": {"url": "http://169.254.169.254/latest/meta-data"}}]}]}
    with pytest.raises(Refused, match="does not fetch media URLs from 169.254.169.254"):
        check_request(json.dumps(untyped).encode(), JSON, LIMITS)
    auth = {**JSON, b"authorization": b"Bearer sk-test"}
    anthropic_shaped = {"model": "UnifiedReward", "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "http://127.0.0.1:9/x.png"}}]}]}
    status, answer = call(RequestGuard(Recorder()), json.dumps(anthropic_shaped).encode(), auth, path="/v1/messages")
    assert status == 404 and b"not served by this endpoint" in answer
