"""The fault proxy (testkit/faults.py) against a small standard-library upstream shaped like the OpenAI server:
each fault must reach an httpx client as the failure the client-side tests rely on, and clean traffic must
pass intact, one upstream connection per request."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import httpx
import pytest

from testkit.faults import FAULTS, FaultProxy, every, unreachable_listener

CHAT = "/v1/chat/completions"
EVENTS = [{"id": "c1", "choices": [{"index": 0, "delta": {"content": f"token {i} " * 8}}]} for i in range(3)]
ANSWER = {"id": "c1", "object": "chat.completion",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 400}}]}


class Upstream(BaseHTTPRequestHandler):
    """Answers like vLLM's server: JSON with Content-Length, or a chunked SSE stream when asked to stream."""
    protocol_version = "HTTP/1.1"
    connections = 0
    events = EVENTS  # what a streamed answer sends, one event per chunk
    pause_s = 0.02  # between events

    def setup(self) -> None:
        type(self).connections += 1
        super().setup()

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._send(200, b'{"status": "ok"}')

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        try:
            if not request.get("stream"):
                self._send(200, json.dumps(ANSWER).encode())
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for event in [*map(json.dumps, self.events), "[DONE]"]:
                data = f"data: {event}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(self.pause_s)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the proxy cut the connection on purpose

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d" % server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(5.0, read=2.0)) as c:
        yield c


def chat(client: httpx.Client, base: str, stream: bool = False) -> httpx.Response:
    return client.post(base + CHAT, json={"model": "m", "messages": [], "stream": stream})


def events(response: httpx.Response, seen: list[dict] | None = None) -> list[dict]:
    """The SSE events of a streamed answer, appended to `seen` as they arrive (so a test sees what came first)."""
    seen = [] if seen is None else seen
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            seen.append(json.loads(line[6:]))
    return seen


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_every_is_a_deterministic_cycle():
    plan = every(3, ["503", "stall"], offset=1)
    assert [plan(n) for n in range(9)] == [None, "503", None, None, "stall", None, None, "503", None]
    assert [every(1, ["cut_short"])(n) for n in range(2)] == ["cut_short", "cut_short"]
    with pytest.raises(ValueError):
        every(2, ["oops"])


def test_clean_requests_arrive_intact_each_on_its_own_upstream_connection(upstream, client):
    Upstream.connections = 0
    with FaultProxy(upstream, lambda n: None) as proxy:
        assert proxy.v1() == proxy.url + "/v1"
        answers = [chat(client, proxy.url) for _ in range(3)]
        with client.stream("POST", proxy.url + CHAT, json={"stream": True}) as streamed:
            assert events(streamed) == EVENTS
        health = client.get(proxy.url + "/health")
    assert all(a.status_code == 200 and a.json() == ANSWER for a in answers)
    assert health.json() == {"status": "ok"}
    assert {a.headers["connection"] for a in [*answers, streamed, health]} == {"close"}
    assert Upstream.connections == 5
    assert proxy.counts == {"connections": 4, "clean": 4, "passthrough": 1}
    assert proxy.log == [(0, "clean", "POST " + CHAT), (1, "clean", "POST " + CHAT), (2, "clean", "POST " + CHAT),
                         (3, "clean", "POST " + CHAT), (-1, "passthrough", "GET /health")]


def test_reset_before_fails_without_any_response_and_never_reaches_the_server(upstream, client):
    Upstream.connections = 0
    with FaultProxy(upstream, every(1, ["reset_before"])) as proxy:
        with pytest.raises(httpx.ReadError):
            chat(client, proxy.url)
    assert Upstream.connections == 0
    assert proxy.counts == {"connections": 1, "reset_before": 1}


@pytest.mark.parametrize("kind, error", [("reset_mid_stream", httpx.ReadError),
                                         ("cut_short", httpx.RemoteProtocolError)])
def test_mid_body_faults_break_a_json_answer_after_its_head(upstream, client, kind, error):
    with FaultProxy(upstream, every(1, [kind])) as proxy:
        with client.stream("POST", proxy.url + CHAT, json={}) as response:
            assert response.status_code == 200
            with pytest.raises(error):
                response.read()
    assert proxy.counts == {"connections": 1, kind: 1}


@pytest.mark.parametrize("kind, error", [("reset_mid_stream", httpx.ReadError),
                                         ("cut_short", httpx.RemoteProtocolError)])
def test_mid_body_faults_break_a_stream_after_its_first_event(upstream, client, kind, error):
    seen: list[dict] = []
    with FaultProxy(upstream, every(1, [kind])) as proxy:
        with client.stream("POST", proxy.url + CHAT, json={"stream": True}) as response:
            assert response.status_code == 200
            with pytest.raises(error):
                events(response, seen)
    assert seen == EVENTS[:1]


def test_stall_never_answers_so_the_client_times_out(upstream):
    Upstream.connections = 0
    with FaultProxy(upstream, every(1, ["stall"])) as proxy, httpx.Client(timeout=httpx.Timeout(5, read=0.3)) as c:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            chat(c, proxy.url)
        assert time.monotonic() - started < 1
    assert Upstream.connections == 0 and proxy.counts["stall"] == 1


def test_stall_s_closes_the_connection_without_an_answer(upstream, client):
    with FaultProxy(upstream, every(1, ["stall"]), stall_s=0.2) as proxy:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            chat(client, proxy.url)


@pytest.mark.parametrize("retry_after, header", [(1.0, "1"), (2, "2"), (0.5, "0.5")])
def test_503_carries_retry_after_and_is_never_forwarded(upstream, client, retry_after, header):
    Upstream.connections = 0
    with FaultProxy(upstream, every(1, ["503"]), retry_after=retry_after) as proxy:
        response = chat(client, proxy.url)
    assert response.status_code == 503 and response.headers["retry-after"] == header
    assert response.headers["connection"] == "close"
    assert response.json()["error"] == {"message": "injected 503", "type": "ServiceUnavailable", "code": 503}
    assert Upstream.connections == 0


def test_the_plan_numbers_only_chat_requests(upstream, client):
    with FaultProxy(upstream, every(2, ["503", "reset_before"])) as proxy:
        results = []
        for _ in range(4):
            assert client.get(proxy.url + "/health").status_code == 200
            try:
                results.append(chat(client, proxy.url).status_code)
            except httpx.ReadError:
                results.append("reset")
    assert results == [503, 200, "reset", 200]
    assert proxy.counts == {"connections": 4, "clean": 2, "503": 1, "reset_before": 1, "passthrough": 4}
    assert [entry[:2] for entry in proxy.log if entry[0] >= 0] == [(0, "503"), (1, "clean"), (2, "reset_before"),
                                                                    (3, "clean")]


def test_streamed_requests_follow_their_own_plan(upstream, client):
    """stream_plan numbers streamed requests apart, so a test can fault the few streamed answers it has."""
    with FaultProxy(upstream, lambda n: None, stream_plan=every(2, ["503"])) as proxy:
        statuses = [chat(client, proxy.url, stream=stream).status_code
                    for stream in (False, True, False, True, True)]
    assert statuses == [200, 503, 200, 200, 503]
    assert proxy.counts["streamed"] == 3 and proxy.counts["streamed_faulted"] == 2
    assert proxy.counts["connections"] == 5 and proxy.counts["503"] == 2


def test_a_broken_plan_fails_the_test_at_stop(upstream, client):
    proxy = FaultProxy(upstream, lambda n: "bogus").start()
    with pytest.raises(httpx.RemoteProtocolError):
        chat(client, proxy.url)
    with pytest.raises(RuntimeError, match="plan failed") as failed:
        proxy.stop()
    assert "bogus" in str(failed.value.__cause__)


def test_a_dead_upstream_resets_the_client(client):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = "127.0.0.1:%d" % closed.getsockname()[1]
    with FaultProxy(dead, lambda n: None) as proxy:
        with pytest.raises(httpx.ReadError):
            chat(client, proxy.url)
    assert proxy.counts["upstream_error"] == 1


def test_stop_closes_open_connections_and_leaks_no_thread_or_socket(upstream):
    threads, fds = set(threading.enumerate()), open_fds()
    proxy = FaultProxy(upstream, every(2, ["stall"], offset=1)).start()
    errors: list[Exception] = []

    def stalled() -> None:
        try:
            with httpx.Client(timeout=5) as c:
                chat(c, proxy.url)
        except httpx.HTTPError as exc:
            errors.append(exc)
    with httpx.Client(timeout=5) as c:
        chat(c, proxy.url)  # a clean one first, so both paths have run
    waiter = threading.Thread(target=stalled)
    waiter.start()
    while proxy.counts["stall"] == 0:
        time.sleep(0.01)
    proxy.stop()
    waiter.join(timeout=2)
    assert not waiter.is_alive() and isinstance(errors[0], httpx.RemoteProtocolError)
    assert set(threading.enumerate()) == threads
    assert open_fds() == fds


def test_unreachable_listener_connects_time_out_instead_of_being_refused():
    fds = open_fds()
    with unreachable_listener() as url:
        address = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            socket.create_connection(address, timeout=1)
        assert 0.9 < time.monotonic() - started < 1.5
        with httpx.Client(timeout=httpx.Timeout(5, connect=1)) as c, pytest.raises(httpx.ConnectTimeout):
            c.get(url + "/health")
    assert open_fds() == fds


@pytest.mark.parametrize("stream", [False, True])
def test_stall_mid_answer_forwards_exactly_the_first_bytes_then_keeps_the_connection_open(upstream, stream):
    """Against a plain socket (no HTTP client in between): the first 300 bytes of the answer arrive, then
    nothing, and the connection is neither closed nor reset while the proxy holds it."""
    with FaultProxy(upstream, every(1, ["stall_mid_answer"]), stall_s=5) as proxy:
        body = json.dumps({"model": "m", "messages": [], "stream": stream}).encode()
        port = int(proxy.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"\r\n%s" % (CHAT.encode(), len(body), body))
            received = b""
            sock.settimeout(1.0)
            with pytest.raises(socket.timeout):
                while chunk := sock.recv(65536):
                    received += chunk
            assert len(received) == 300 and received.startswith(b"HTTP/1.1 200")
            assert b"\r\n\r\n" in received  # the head whole, then part of the body
    assert proxy.counts == {"connections": 1, "stall_mid_answer": 1}


def test_stall_mid_answer_makes_an_httpx_read_time_out_after_the_head(upstream):
    with FaultProxy(upstream, every(1, ["stall_mid_answer"])) as proxy, \
            httpx.Client(timeout=httpx.Timeout(5, read=0.3)) as c:
        with c.stream("POST", proxy.url + CHAT, json={"stream": True}) as response:
            assert response.status_code == 200
            with pytest.raises(httpx.ReadTimeout):
                response.read()


def test_an_answer_shorter_than_the_stall_point_passes_whole(upstream, client):
    with FaultProxy(upstream, every(1, ["stall_mid_answer"]), stall_after_bytes=100_000) as proxy:
        assert chat(client, proxy.url).json() == ANSWER


def test_fault_kinds_are_the_documented_ones():
    assert set(FAULTS) == {"reset_before", "reset_mid_stream", "stall", "503", "cut_short", "stall_mid_answer"}
