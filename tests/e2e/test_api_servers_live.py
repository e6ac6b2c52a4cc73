"""Several API servers through the project's launcher (vLLM's `serve` subcommand): the live tiny servers of the
default and the `shared` profiles run 2 each (tests/conftest.py). Both processes are in the server's tree, both
answer (each connection is traced to the process that accepted it), the key and the request guard hold in each,
and /metrics adds up both processes' requests."""
from __future__ import annotations

import collections
import concurrent.futures
import http.client
import json

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.processes import ServerProcesses
from unifiedreward.prompts import get_task
from testkit.bad_requests import chat, data_url, default_png, image_part, png_bytes
from tests.helpers import metric_total, picture

API_SERVERS = 2


def _processes(server) -> ServerProcesses:
    found = ServerProcesses.find(server.port)
    assert found is not None, f"no process listens on port {server.port}"
    return found


def _owner(processes: list[psutil.Process], server_port: int, client_port: int) -> str | None:
    """The API-server process holding the server side of the connection from `client_port`."""
    for process in processes:
        for conn in process.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == server_port and conn.raddr and conn.raddr.port == client_port:
                return process.cmdline()[0]
    return None


def _send(server, body: dict, key: str | None = None) -> tuple[int, dict, str | None]:
    """One request on a connection of its own: (status, answer, the API-server process that took it)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
    try:
        conn.connect()
        client_port = conn.sock.getsockname()[1]
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
        response = conn.getresponse()
        answer = json.loads(response.read() or b"{}")
        # The connection is kept alive: the process that accepted it still holds it.
        return response.status, answer, _owner(_processes(server).api_servers(), server.port, client_port)
    finally:
        conn.close()


def _good(seed: int) -> dict:
    task = get_task("image_gen.pair_rank")
    parts = [image_part(data_url(png_bytes(picture(seed + k, size=128)))) for k in range(2)]
    return {"model": "UnifiedReward", "max_tokens": task.max_tokens,
            "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": task.render(caption="x")}]}],
            "structured_outputs": task.structured_outputs}


def test_the_default_profile_runs_two_api_servers_and_both_answer(live_server):
    tree = _processes(live_server)
    titles = sorted(p.cmdline()[0] for p in tree.api_servers())
    assert titles == [f"VLLM::APIServer_{i}" for i in range(API_SERVERS)], titles
    command = tree.root.cmdline()
    assert command[1:4] == ["-m", "unifiedreward.serving.vllm_serve", "serve"], command[:5]  # vLLM's serve subcommand
    # Eight connections at a time: the processes share one listening socket, and the kernel may hand a run of
    # one-at-a-time connections to the same idle process; with several open at once both must take some.
    answered = collections.Counter()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for status, body, owner in pool.map(lambda seed: _send(live_server, _good(500 + seed)), range(0, 64, 2)):
            assert status == 200 and body["choices"][0]["message"]["content"], body
            answered[owner] += 1
    assert set(answered) == set(titles), f"requests per API server: {dict(answered)}"


def test_the_shared_profiles_key_and_guard_hold_in_every_api_server(shared_server, api_key):
    """Many requests with a wrong key or a refused image: every one refused, whichever process takes it."""
    tree = _processes(shared_server)
    assert len(tree.api_servers()) == API_SERVERS
    truncated = data_url(png_bytes(picture(3, size=64))[:-40])
    refused = collections.defaultdict(collections.Counter)
    for k in range(32):
        if k % 2:
            status, body, owner = _send(shared_server, chat(image_part(data_url(default_png()))), key="sk-wrong")
            refused[owner][status] += 1
        else:
            status, body, owner = _send(shared_server, chat(image_part(truncated)), key=api_key)
            assert "messages[0].content[0]" in body["error"]["message"], body  # the guard names the item
            refused[owner][status] += 1
    assert set(refused) == {p.cmdline()[0] for p in tree.api_servers()}, dict(refused)
    assert sum(refused.values(), collections.Counter()) == {401: 16, 400: 16}
    status, body, _ = _send(shared_server, _good(900), key=api_key)  # and a good request still passes
    assert status == 200, body


def test_metrics_add_up_both_api_servers(live_server):
    """vLLM's multiprocess Prometheus mode: request counters sum over the processes, the engine's gauges and
    prefix-cache counters are there once, the histograms too."""
    before = requests.get(live_server.url + "/metrics", timeout=10).text
    owners = collections.Counter(_send(live_server, _good(2000 + 2 * k))[2] for k in range(16))
    assert len(owners) == API_SERVERS, owners
    after = requests.get(live_server.url + "/metrics", timeout=10).text
    done = (metric_total(after, "vllm:request_success_total", finished_reason="stop")
            - metric_total(before, "vllm:request_success_total", finished_reason="stop"))
    assert done == 16, f"{done:g} successes counted for 16 requests over {dict(owners)}"
    families = {f.name for f in text_string_to_metric_families(after)}
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
                 "vllm:prefix_cache_queries", "vllm:prefix_cache_hits", "vllm:generation_tokens",
                 "vllm:e2e_request_latency_seconds", "vllm:time_to_first_token_seconds", "vllm:request_success"):
        assert name in families, f"{name} missing from /metrics with {API_SERVERS} API servers"
    assert (metric_total(after, "vllm:prefix_cache_queries_total") > metric_total(before, "vllm:prefix_cache_queries_total"))
