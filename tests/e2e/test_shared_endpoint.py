"""The `shared` profile on the live tiny server: API key, refused inputs, nothing fetched, nothing logged.

Each bad request must get a 4xx whose message names the problem; /health stays 200 and a good request
right after each one still succeeds. The server is started once per session (tests/conftest.py).
"""
from __future__ import annotations

import http.server
import json
import threading

import httpx
import pytest

from unifiedreward.clients import AuthenticationError, InputRejectedError, Item, RewardClient
from testkit.bad_requests import PROMPT, cases, default_png, good_request
from tests.helpers import picture


class Listener(http.server.ThreadingHTTPServer):
    """A local HTTP server that records every request it gets: the server must never contact it."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        listener = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                listener.hits.append(self.path)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/internal/metadata.png"


@pytest.fixture(scope="module")
def listener():
    server = Listener()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def api(shared_server, api_key):
    """Raw HTTP to the shared server, with the key."""
    with httpx.Client(base_url=shared_server.url, timeout=120,
                      headers={"authorization": f"Bearer {api_key}", "content-type": "application/json"}) as c:
        yield c


GOOD_PNG = default_png()


@pytest.fixture(scope="module")
def bad_requests(listener):
    """The catalogue, its forgery case pointing at the live listener."""
    return {case.name: case for case in cases(listener.url, GOOD_PNG)}


@pytest.mark.parametrize("name", [case.name for case in cases("http://unused.invalid/x.png", GOOD_PNG)])
def test_bad_request_gets_a_4xx_naming_the_problem_and_the_server_stays_up(name, bad_requests, api, listener):
    built = bad_requests[name]
    response = api.post(built.path, content=built.build())
    assert response.status_code in built.status, response.text[:300]
    error = response.json()["error"]
    assert built.problem.lower() in error["message"].lower(), error
    assert api.get("/health").status_code == 200
    good = api.post("/v1/chat/completions", content=good_request(GOOD_PNG))
    assert good.status_code == 200, good.text[:300]
    assert good.json()["choices"][0]["message"]["content"] is not None
    assert listener.hits == []  # never contacted, by this case or any before it


def test_api_key_is_required(shared_server, api_key):
    body = good_request(GOOD_PNG)
    with httpx.Client(base_url=shared_server.url, timeout=60) as c:
        assert c.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"}).status_code == 401
        wrong = {"authorization": "Bearer sk-wrong", "content-type": "application/json"}
        assert c.post("/v1/chat/completions", content=body, headers=wrong).status_code == 401
        assert c.get("/v1/models").status_code == 401
        # vLLM's authentication covers /v1 only; the guard refuses unauthenticated bodies on the other routes.
        assert c.post("/invocations", content=body, headers={"content-type": "application/json"}).status_code == 401
        assert c.post("/tokenize", json={"model": "UnifiedReward", "prompt": "hi"}).status_code == 401
        # Probes and Prometheus need no key.
        assert c.get("/health").status_code == 200 and c.get("/metrics").status_code == 200


def test_routes_a_reward_client_does_not_use_are_closed(api):
    response = api.post("/v1/messages", json={"model": "UnifiedReward", "max_tokens": 4, "messages": [
        {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "http://127.0.0.1:1/x"}}]}]})
    assert response.status_code == 404 and "not served by this endpoint" in response.json()["error"]["message"]


def test_the_model_path_is_a_served_name_too(shared_server, api_key):
    """verl-omni sends the model path as "model": the shared profile answers it (the default profile too:
    tests/e2e/test_integrations_live.py)."""
    with RewardClient(shared_server.base_url, api_key=api_key, model="CodeGoat24/UnifiedReward-2.0-qwen3vl-2b") as client:
        result = client.score("image_gen.pair_rank", [picture(1), picture(2)], caption="a red circle")
    assert result.ok, result.error


def test_the_client_with_the_key_scores_and_bad_items_fail_alone(shared_server, api_key):
    good = [Item("image_gen.pair_rank", [picture(i), picture(i + 1)], {"caption": "a red circle"}) for i in range(4)]
    bomb = Item("image_gen.pair_rank", [picture(9), picture(9, size=5000)], {"caption": "a red circle"})
    with RewardClient(shared_server.base_url, api_key=api_key, max_pixels=5000 * 5000) as client:
        results = client.score_batch([*good[:2], bomb, *good[2:]])
    assert [r.ok for r in results] == [True, True, False, True, True]
    with pytest.raises(InputRejectedError, match="pixels is above this server's bound"):
        results[2].raise_for_error()
    with RewardClient(shared_server.base_url, api_key="sk-wrong", max_retries=0) as client:
        refused = client.score("image_gen.pair_rank", [picture(1), picture(2)], caption="a red circle")
    with pytest.raises(AuthenticationError) as error:
        refused.raise_for_error()
    assert error.value.status_code == 401


def test_no_request_content_and_no_key_in_the_log(shared_server, api_key, api):
    marker = "secret-prompt-marker-7d1f"
    body = json.loads(good_request(GOOD_PNG))
    body["messages"][0]["content"][-1]["text"] = marker
    assert api.post("/v1/chat/completions", json=body).status_code == 200
    body["messages"][0]["content"].insert(0, {"type": "image_url", "image_url": {"url": "file:///" + marker}})
    assert api.post("/v1/chat/completions", json=body).status_code == 400
    log = shared_server.log_path.read_text(errors="replace")
    assert "POST /v1/chat/completions" in log  # the access log is there ...
    assert marker not in log and PROMPT not in log and api_key not in log  # ... the contents and the key are not
    assert "iVBORw0KGgo" not in log  # no image data either (the start of every PNG in base64)
