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
