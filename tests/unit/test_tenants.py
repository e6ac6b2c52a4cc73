"""Tenants in the guard on their own: the file's rules, who a key is, the priority a request gets, the
per-process cap and its 429, the per-tenant figures (tests/e2e/test_tenants_live.py: the same on the server)."""
from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import tempfile
import time
from types import SimpleNamespace

import pytest

from unifiedreward.serving import guard as guard_module
from unifiedreward.serving.guard import (InteractiveSignal, Limits, RequestGuard, TenantMetrics, TenantsError, load_tenants,
                                         with_priority)
from testkit.bad_requests import default_png, good_request

TRAINER_KEY, BULK_KEY = "sk-trainer-" + "t" * 20, "sk-bulk-" + "b" * 20


def tenants_file(tmp_path, text: str):
    path = tmp_path / "tenants.toml"
    path.write_text(text)
    return path


TWO = f"""
[tenants.trainer]
key = "{TRAINER_KEY}"
class = "interactive"
max_in_flight = 64

[tenants.bulk]
key_file = "bulk.key"
class = "bulk"
max_in_flight = 3
"""


@pytest.fixture
def two(tmp_path):
    (tmp_path / "bulk.key").write_text(BULK_KEY + "\n")
    return tenants_file(tmp_path, TWO)


def test_a_tenants_file_is_read_with_keys_inline_or_from_a_file(two):
    trainer, bulk = load_tenants(two)
    assert (trainer.name, trainer.tenant_class, trainer.priority, trainer.max_in_flight) == ("trainer", "interactive", 0, 64)
    assert (bulk.name, bulk.priority) == ("bulk", 10) and trainer.priority < bulk.priority  # lower runs earlier
    assert bulk.per_process_cap(2) == 2 and bulk.per_process_cap(1) == 3 and trainer.per_process_cap(4) == 16
    assert BULK_KEY not in repr(bulk) and TRAINER_KEY not in repr(trainer)


@pytest.mark.parametrize("text, problem", [
    ("", "no [tenants.NAME] tables"),
    ("[tenants.a]\nclass = 'bulk'\nmax_in_flight = 1\n", "exactly one of key or key_file"),
    (f"[tenants.a]\nkey = '{TRAINER_KEY}'\nkey_file = 'x'\nclass = 'bulk'\nmax_in_flight = 1\n", "exactly one of"),
    ("[tenants.a]\nkey = 'short'\nclass = 'bulk'\nmax_in_flight = 1\n", "shorter than 16"),
    (f"[tenants.a]\nkey = '{TRAINER_KEY}'\nclass = 'urgent'\nmax_in_flight = 1\n", "class must be one of"),
    (f"[tenants.a]\nkey = '{TRAINER_KEY}'\nclass = 'bulk'\nmax_in_flight = 0\n", "max_in_flight must be"),
    (f"[tenants.a]\nkey = '{TRAINER_KEY}'\nclass = 'bulk'\nmax_in_flight = 2\nrate = 3\n", "unknown setting(s) rate"),
    (f"[tenants.unknown]\nkey = '{TRAINER_KEY}'\nclass = 'bulk'\nmax_in_flight = 2\n", "name"),
    (f"[tenants.a]\nkey = '{TRAINER_KEY}'\nclass = 'bulk'\nmax_in_flight = 1\n"
     f"[tenants.b]\nkey = '{TRAINER_KEY}'\nclass = 'bulk'\nmax_in_flight = 1\n", "'a' and 'b' have the same key"),
    ("[tenants.a]\nkey_file = 'missing.key'\nclass = 'bulk'\nmax_in_flight = 1\n", "cannot read key_file"),
    ("[tenants", "not valid TOML"),
])
def test_a_bad_tenants_file_is_refused_naming_the_problem_never_the_key(tmp_path, text, problem):
    with pytest.raises(TenantsError) as raised:
        load_tenants(tenants_file(tmp_path, text))
    assert problem in str(raised.value) and TRAINER_KEY not in str(raised.value)


def test_priority_is_the_tenants_whatever_the_caller_sends():
    body = good_request(default_png())
    request = json.loads(body)
    spliced = with_priority(body, request, 10)
    assert json.loads(spliced) == {**request, "priority": 10} and spliced.endswith(body[1:])  # no re-encoding
    raised = with_priority(json.dumps({**request, "priority": -100}).encode(), {**request, "priority": -100}, 10)
    assert json.loads(raised)["priority"] == 10 and raised.count(b'"priority"') == 1
    assert json.loads(with_priority(b"{}", {}, 0)) == {"priority": 0}


class Holding:
    """The inner app: answers like vLLM (a usage in the body), holding each request until released."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.release = asyncio.Event()
        self.now = self.most_at_once = 0

    async def __call__(self, scope, receive, send) -> None:
        message = await receive()
        self.bodies.append(message.get("body", b""))
        self.now += 1
        self.most_at_once = max(self.most_at_once, self.now)
        if scope["method"] == "POST":
            await self.release.wait()
            await asyncio.sleep(0.01)
        self.now -= 1
        answer = json.dumps({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer})


async def one_request(guard: RequestGuard, key: str, body: bytes, method: str = "POST"):
    """One request through the guard as two API servers' vLLM would pass it; (status, headers, body)."""
    args = SimpleNamespace(limit_mm_per_prompt={}, allowed_media_domains=[], api_key=None, api_server_count=2)
    sent, chunks = [], [body]

    async def receive():
        return {"type": "http.request", "body": chunks.pop(0) if chunks else b"", "more_body": False}

    async def send(message):
        sent.append(message)

    headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {key}".encode())]
    scope = {"type": "http", "method": method, "path": "/v1/chat/completions" if method == "POST" else "/v1/models",
             "headers": headers, "app": SimpleNamespace(state=SimpleNamespace(args=args))}
    await guard(scope, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def run_requests(guard: RequestGuard, requests: list[tuple[str, str, bytes]], release_after: float = 0.05):
    """(method, key, body) each, at once; the inner app answers them after `release_after` s."""
    async def main():
        tasks = [asyncio.create_task(one_request(guard, key, body, method)) for method, key, body in requests]
        await asyncio.sleep(release_after)
        guard.app.release.set()
        return await asyncio.gather(*tasks)

    return asyncio.run(main())


@pytest.fixture
def guard(two, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the API servers' shared folder, this test's own
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setenv("UNIFIEDREWARD_TENANTS_FILE", str(two))
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    monkeypatch.setattr(TenantMetrics, "_shared", FakeMetrics())
    return RequestGuard(Holding())


class FakeCounter:
    def __init__(self):
        self.values: dict[tuple, float] = {}

    def labels(self, *labels):
        counter = self

        class Child:
            def inc(self, by=1):
                counter.values[labels] = counter.values.get(labels, 0) + by

            def dec(self, by=1):
                self.inc(-by)

            def set(self, value):
                counter.values[labels] = value

            def observe(self, value):
                self.inc(1)
        return Child()


class FakeMetrics(TenantMetrics):
    """The same accounting as the real one, in dicts (prometheus_client's registry allows one set per process;
    the live test reads the real one from /metrics)."""

    def __init__(self):
        for name in ("requests", "refusals", "answers", "in_flight", "held", "prompt_tokens", "completion_tokens", "latency",
                     "yields", "yield_seconds"):
            setattr(self, name, FakeCounter())


def test_keys_name_tenants_unknown_keys_get_401_and_the_priority_reaches_the_engine(guard):
    body = good_request(default_png())
    answers = run_requests(guard, [("POST", TRAINER_KEY, body), ("POST", BULK_KEY, body),
                                   ("POST", "sk-nobody-" + "x" * 20, body), ("GET", "sk-nobody-" + "x" * 20, b""),
                                   ("GET", TRAINER_KEY, b"")])
    assert [a[0] for a in answers] == [200, 200, 401, 401, 200]
    assert b"names no tenant" in answers[2][2]
    priorities = sorted(json.loads(b)["priority"] for b in guard.app.bodies if b)
    assert priorities == [0, 10]
    metrics = guard.metrics
    assert metrics.requests.values == {("trainer",): 1, ("bulk",): 1}
    assert metrics.refusals.values == {("unknown", "unknown_key"): 2}
    assert metrics.prompt_tokens.values == {("trainer",): 7, ("bulk",): 7}
    assert metrics.completion_tokens.values == {("trainer",): 3, ("bulk",): 3}
    assert all(v == 0 for v in metrics.in_flight.values.values())


def test_over_its_share_a_request_is_held_in_arrival_order_until_a_slot_frees(guard, monkeypatch):
    monkeypatch.setenv("UNIFIEDREWARD_TENANT_HOLD_S", "5")
    body = good_request(default_png())
    answers = run_requests(guard, [("POST", BULK_KEY, body)] * 5, release_after=0.2)
    assert [a[0] for a in answers] == [200] * 5  # held, not refused: the slots came free well within 5 s
    assert guard.app.most_at_once == 2  # bulk's share per API server (max_in_flight 3 over 2), never more
    assert guard.metrics.refusals.values == {}


def test_a_tenant_over_its_share_gets_429_with_retry_after_and_the_others_do_not(guard, caplog, monkeypatch):
    monkeypatch.setenv("UNIFIEDREWARD_TENANT_HOLD_S", "0")  # refused at once instead of held
    monkeypatch.setattr(guard_module, "log", logging.getLogger("test.guard"))  # vLLM's logger does not propagate
    caplog.set_level(logging.INFO, logger="test.guard")
    body = good_request(default_png())
    # bulk: max_in_flight 3 over 2 API servers -> 2 per process; trainer's 64 -> 32.
    answers = run_requests(guard, [("POST", BULK_KEY, body)] * 5 + [("POST", TRAINER_KEY, body)] * 5)
    bulk, trainer = [a[0] for a in answers[:5]], [a[0] for a in answers[5:]]
    assert sorted(bulk) == [200, 200, 429, 429, 429] and trainer == [200] * 5
    refused = next(a for a in answers if a[0] == 429)
    assert refused[1][b"retry-after"] == b"1" and json.loads(refused[2])["error"]["type"] == "RateLimitError"
    assert guard.metrics.refusals.values == {("bulk", "over_cap"): 3}
    assert "tenant bulk (over_cap)" in caplog.text and BULK_KEY not in caplog.text
    # Once answered, the slots are free again.
    assert [a[0] for a in run_requests(guard, [("POST", BULK_KEY, body)] * 2)] == [200, 200]


def test_a_bulk_request_waits_at_the_guard_while_an_interactive_one_is_in_flight(guard):
    """The trainer's request reaches the engine first and the bulk ones only once it has ended, though the bulk
    ones came while it ran: what vLLM's priority cannot do for a request not yet in its queue."""
    body = good_request(default_png())
    order = []
    holding = guard.app

    async def noting(scope, receive, send):
        who = "trainer" if TRAINER_KEY.encode() in dict(scope["headers"])[b"authorization"] else "bulk"
        order.append(("in", who))
        await holding(scope, receive, send)
        order.append(("out", who))

    guard.app = noting

    async def main():
        trainer = asyncio.create_task(one_request(guard, TRAINER_KEY, body))
        await asyncio.sleep(0.05)  # the trainer's request is in the engine (held there until released)
        bulk = [asyncio.create_task(one_request(guard, BULK_KEY, body)) for _ in range(2)]
        await asyncio.sleep(0.1)
        assert order == [("in", "trainer")]  # the bulk ones wait at the guard, not in the engine
        holding.release.set()
        return await trainer, await asyncio.gather(*bulk)

    (trainer_status, _, _), bulk = asyncio.run(main())
    assert trainer_status == 200 and [b[0] for b in bulk] == [200, 200]
    assert order[:2] == [("in", "trainer"), ("out", "trainer")] and {o[1] for o in order[2:]} == {"bulk"}
    assert guard.metrics.yields.values == {("bulk",): 2} and guard.metrics.yield_seconds.values[("bulk",)] > 0


def test_a_bulk_request_waits_at_most_the_yield_bound_then_goes_on(guard, monkeypatch):
    monkeypatch.setenv("UNIFIEDREWARD_TENANT_YIELD_S", "0.2")
    body = good_request(default_png())
    answers = run_requests(guard, [("POST", TRAINER_KEY, body), ("POST", BULK_KEY, body)], release_after=2.0)
    assert [a[0] for a in answers] == [200, 200]
    # The bulk request went on after 0.2 s (it reached the app while the trainer's still ran), not after 2 s.
    assert len(guard.app.bodies) == 2 and guard.metrics.yields.values == {("bulk",): 1}
    assert 0.15 < guard.metrics.yield_seconds.values[("bulk",)] < 1.0


def _interactive_elsewhere(folder: str, started, stop) -> None:
    signal = InteractiveSignal(2, folder=__import__("pathlib").Path(folder))
    signal.begin()
    started.set()
    stop.wait(30)
    signal.end()
    started.clear()
    stop.clear()
    stop.wait(30)


def test_the_interactive_count_is_shared_by_the_api_server_processes_and_a_dead_ones_file_is_ignored(tmp_path):
    """With --api-server-count N each API server is its own process: a bulk request in one yields to an
    interactive request in another, read from the other's shared-memory count."""
    context = multiprocessing.get_context("spawn")
    started, stop = context.Event(), context.Event()
    other = context.Process(target=_interactive_elsewhere, args=(str(tmp_path), started, stop))
    other.start()
    try:
        assert started.wait(60)
        here = InteractiveSignal(2, folder=tmp_path)
        assert here.folder == tmp_path and here.count == 0
        assert here.anywhere()  # the other process's request
        waited = asyncio.run(here.wait_idle(0.1))
        assert 0.1 <= waited < 1.0
        stop.set()
        deadline = time.monotonic() + 10
        while started.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not started.is_set() and not here.anywhere()  # ended there: read at once, no rescan needed
    finally:
        stop.set()
        other.join(30)
    # A file left by a process that is gone (an earlier server whose parent had the same id) counts for nothing.
    dead = context.Process(target=time.sleep, args=(0,))
    dead.start()
    dead.join()
    (tmp_path / str(dead.pid)).write_bytes((5).to_bytes(8, "little"))
    later = InteractiveSignal(2, folder=tmp_path)
    assert not later.anywhere() and not (tmp_path / str(dead.pid)).exists()


def test_the_folder_is_vllms_metrics_folder_when_there_is_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # vLLM's, made for this server, removed after it
    assert guard_module.shared_folder() == tmp_path / "unifiedreward-guard"
    assert InteractiveSignal(2).folder == tmp_path / "unifiedreward-guard"
    assert [f.name for f in (tmp_path / "unifiedreward-guard").iterdir()] == [str(os.getpid())]
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert guard_module.shared_folder() == tmp_path / f"unifiedreward-guard-{os.getppid()}"


def test_with_one_api_server_the_count_stays_in_the_process_and_an_unusable_folder_is_said(tmp_path, caplog,
                                                                                              monkeypatch):
    assert InteractiveSignal(1, folder=tmp_path).folder is None and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(guard_module, "log", logging.getLogger("test.guard"))
    caplog.set_level(logging.WARNING, logger="test.guard")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    signal = InteractiveSignal(2, folder=blocked)
    assert signal.folder is None and "this API server only" in caplog.text
    signal.begin()
    assert signal.anywhere()
    signal.end()
    assert not signal.anywhere()


def test_tenants_and_a_single_key_cannot_both_be_given(two, monkeypatch):
    monkeypatch.setenv("UNIFIEDREWARD_TENANTS_FILE", str(two))
    with pytest.raises(TenantsError, match="only keys"):
        Limits.from_env(SimpleNamespace(api_key=["sk-other-" + "o" * 20]))


def test_without_a_tenants_file_the_single_key_works_as_before(monkeypatch):
    monkeypatch.delenv("UNIFIEDREWARD_TENANTS_FILE", raising=False)
    limits = Limits.from_env(SimpleNamespace(api_key=["sk-test"]))
    assert limits.tenants == () and limits.authorized({b"authorization": b"Bearer sk-test"})
    assert guard_module.RETRY_AFTER_S >= 1


def launcher(*args: str, env: dict[str, str] | None = None):
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items()
             if k not in ("UNIFIEDREWARD_API_KEY", "UNIFIEDREWARD_API_KEY_FILE", "VLLM_API_KEY", "UNIFIEDREWARD_TENANTS_FILE")}
    return subprocess.run([sys.executable, "-m", "unifiedreward.serving", *args], capture_output=True, text=True,
                          timeout=120, env={**clean, **(env or {})})


def test_the_launcher_checks_the_tenants_file_before_anything_starts(two, tmp_path):
    done = launcher("--dry-run", "--profile", "shared", "--tenants", str(two))
    assert done.returncode == 0, done.stderr
    assert "--scheduling-policy priority" in done.stdout and "unifiedreward.serving.guard.RequestGuard" in done.stdout
    assert "trainer (interactive, max_in_flight 64), bulk (bulk, max_in_flight 3)" in done.stderr
    assert "without an API key" not in done.stderr and BULK_KEY not in done.stdout + done.stderr
    from_env = launcher("--dry-run", "--profile", "shared", env={"UNIFIEDREWARD_TENANTS_FILE": str(two)})
    assert from_env.returncode == 0 and "tenants from" in from_env.stderr
    (tmp_path / "bad").mkdir()
    bad = tenants_file(tmp_path / "bad", "[tenants.a]\nkey = 'short'\nclass = 'bulk'\nmax_in_flight = 1\n")
    refused = launcher("--dry-run", "--profile", "shared", "--tenants", str(bad))
    assert refused.returncode == 2 and "[tenants.a]: the key is empty or shorter than 16" in refused.stderr
    both = launcher("--dry-run", "--profile", "shared", "--tenants", str(two), env={"UNIFIEDREWARD_API_KEY": "k" * 20})
    assert both.returncode == 2 and "not both" in both.stderr
    unguarded = launcher("--dry-run", "--tenants", str(two))
    assert unguarded.returncode == 2 and "--profile shared" in unguarded.stderr
    # The real run stops the same way (before vLLM is imported or a checkpoint built).
    run = launcher("--profile", "shared", "--model", str(tmp_path / "no-model"), "--tenants", str(bad))
    assert run.returncode == 2 and "shorter than 16" in run.stderr


def test_the_example_tenants_file_is_a_valid_one(tmp_path):
    from importlib import resources

    example = resources.files("unifiedreward.serving").joinpath("tenants.example.toml").read_text()
    (tmp_path / "keys").mkdir()
    for name in ("grpo-run-17", "dataset-scoring"):
        (tmp_path / "keys" / f"{name}.key").write_text(f"sk-{name}-" + "x" * 24)
    tenants = load_tenants(tenants_file(tmp_path, example))
    assert [(t.name, t.tenant_class) for t in tenants] == [("grpo-run-17", "interactive"), ("dataset-scoring", "bulk")]
