"""Benchmark figures come from the server's answers, never from a default standing in for a missing one."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from benchmarks.load import _report
from benchmarks.reference_client import RETRIES, ReferenceClient


class Answers(BaseHTTPRequestHandler):
    """A chat-completions answer with or without its usage block (the client's transport is what is tested)."""
    usage: dict | None = None
    drops = 0  # requests still to be dropped: the connection closed without an answer

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if Answers.drops:
            Answers.drops -= 1
            self.close_connection = True
            return
        answer = {"choices": [{"message": {"role": "assistant", "content": "Image 1 is better"}}]}
        if self.usage is not None:
            answer["usage"] = self.usage
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    Answers.usage, Answers.drops = None, 0


@pytest.fixture
def pair(tmp_path: Path) -> list[Path]:
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for path in paths:
        Image.new("RGB", (8, 8)).save(path)
    return paths


def base_url(httpd: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}/v1"


def test_the_reference_client_reports_the_servers_prompt_tokens(server, pair):
    Answers.usage = {"prompt_tokens": 123, "completion_tokens": 4, "total_tokens": 127}
    sample = ReferenceClient(base_url(server)).send(pair, "which?", 8, {})
    assert sample["ok"] and sample["prompt_tokens"] == 123


def test_an_answer_without_usage_is_a_failed_sample_not_zero_tokens(server, pair):
    sample = ReferenceClient(base_url(server)).send(pair, "which?", 8, {})
    assert not sample["ok"] and "prompt_tokens" in sample["error"]
    assert "prompt_tokens" not in sample


def test_load_report_has_no_token_mean_where_an_answer_lacked_usage():
    reported = {"ok": True, "pair": True, "latency_s": 1.0, "prompt_tokens": 600, "completion_tokens": 5}
    silent = {"ok": True, "pair": True, "latency_s": 1.0}
    assert _report({}, [reported, reported], 1.0)["prompt_tokens_mean"] == 600
    report = _report({}, [reported, silent], 1.0)
    assert report["prompt_tokens_mean"] is None and report["completion_tokens_mean"] is None


def test_the_reference_client_retries_a_dropped_request_as_the_authors_do_and_counts_it(server, pair):
    Answers.usage, Answers.drops = {"prompt_tokens": 7}, 2
    sample = ReferenceClient(base_url(server)).send(pair, "which?", 8, {})
    assert sample["ok"] and sample["retries"] == 2 and sample["prompt_tokens"] == 7


def test_the_reference_client_gives_up_after_its_retries(server, pair):
    Answers.usage, Answers.drops = {"prompt_tokens": 7}, RETRIES + 1
    sample = ReferenceClient(base_url(server)).send(pair, "which?", 8, {})
    assert not sample["ok"] and f"after {RETRIES} retries" in sample["error"]


def test_a_kept_reference_client_keeps_its_threads_sessions_across_runs(server, pair, monkeypatch):
    """compare's open loop alternates the clients in segments: a pool (and sessions) made anew per segment
    would time the reference's cold start each time, not the long run its authors' script makes."""
    import benchmarks.reference_client as module
    made = []

    class Counted(module.requests.Session):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    monkeypatch.setattr(module.requests, "Session", Counted)
    Answers.usage = {"prompt_tokens": 7}
    jobs = [(pair, "which?")] * 8
    with ReferenceClient(base_url(server), threads=2) as kept:
        for _ in range(3):
            _, samples = kept.run(jobs, 8, {})
            assert all(s["ok"] for s in samples)
    assert len(made) <= 2  # one session per thread of the one pool
    ReferenceClient(base_url(server), threads=2).run(jobs, 8, {})
    ReferenceClient(base_url(server), threads=2).run(jobs, 8, {})
    assert len(made) >= 4  # unkept: each run its own pool, its own sessions


def test_segmented_open_loop_alternates_the_clients_abba_and_pools_their_latencies():
    from benchmarks import compare

    calls: list[tuple[str, list[int], list[float]]] = []

    class Server:
        def reset(self) -> None:
            pass

        def cpu_seconds(self) -> None:
            return None

    class Ways:
        def _run(self, way: str, part: list[int], at: list[float]) -> dict:
            calls.append((way, part, at))
            latencies = [float(p) if way == "ours" else 2.0 * p for p in part]
            return {"latencies_s": latencies, "p99_s": max(latencies)}

        def reference(self, target, part, at, kept=None):
            return self._run("reference", part, at)

        def ours(self, target, part, at, kept=None):
            return self._run("ours", part, at)

    pairs = list(range(1, 9))
    arrivals = [0.5 * k + 1 for k in range(8)]
    merged = compare.segmented(Server(), Ways(), pairs, arrivals, 4, kept=None, first="reference")
    assert [c[0] for c in calls] == ["reference", "ours", "ours", "reference"] * 2
    assert [c[1] for c in calls[:4]] == [[1, 2], [1, 2], [3, 4], [3, 4]]
    assert all(c[2][0] == 0.0 for c in calls)  # each part's first request arrives at its start
    assert calls[2][2] == [0.0, 0.5]
    assert sorted(merged["ours"]["latencies_s"]) == [float(p) for p in pairs]
    assert merged["reference"]["p99_s"] == compare.percentile([2.0 * p for p in pairs], 99)
    assert merged["ours"]["segments"] == 4
