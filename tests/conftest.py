"""Shared fixtures. The end-to-end tests talk over HTTP to the real vLLM server on the tiny checkpoint,
started once per test session, and early: it boots while the unit tests run. The other servers (the
`shared` profile and a second replica in that profile) are started the same way, only when a collected
test asks. Three servers is what the machine's memory holds (~6 GB each), so the two replica-kill tests
share the second replica: a killed replica is started again right after the test that killed it."""
from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path

import pytest

from unifiedreward.serving.process import ServerDiedError, ServerProcess

REFERENCE = Path(__file__).parent / "data" / "unifiedreward-tasks.json"
# A fresh key per session: the shared-profile tests also check that it never reaches a log.
API_KEY = "sk-test-" + secrets.token_urlsafe(16)
# The tiny model needs little KV cache; 1 GiB per server keeps three of them inside the machine's memory.
_SMALL = {"VLLM_CPU_KVCACHE_SPACE": "1"}
# The default and shared servers run 2 API-server processes each (vLLM's `serve` through the launcher), so that
# every end-to-end test also goes through the multi-process front end a GPU deployment runs; the second replica
# keeps the CPU build's default of one. Each API process holds its own processor cache: 1 GiB each bounds them.
_TWO_API = ["--api-server-count", "2", "--mm-processor-cache-gb", "1"]
_SHARED = ["--model", "tiny", "--profile", "shared"]
_KEY = {"UNIFIEDREWARD_API_KEY": API_KEY}
# The shared server runs with tenants (their keys replace the single key there): the session's key is the
# `trainer` tenant's (interactive), so every shared-profile test sends as a training job; `bulk` floods in the
# priority test; `capped` has a cap of 4 (2 per API server) for the 429 test (requests over a cap are held
# 1 s here, 10 s by default, before the 429). The second replica keeps the
# single key, as a server without a tenants file runs.
TENANT_KEYS = {"trainer": API_KEY, "bulk": "sk-bulk-" + secrets.token_urlsafe(16),
               "capped": "sk-capped-" + secrets.token_urlsafe(16)}
_TENANTS_FILE = Path(tempfile.mkdtemp(prefix="unifiedreward-tenants-")) / "tenants.toml"
_TENANTS_FILE.write_text("".join(
    f'[tenants.{name}]\nkey = "{key}"\nclass = "{tenant_class}"\nmax_in_flight = {cap}\n\n'
    for name, key, tenant_class, cap in (("trainer", TENANT_KEYS["trainer"], "interactive", 1024),
                                         ("bulk", TENANT_KEYS["bulk"], "bulk", 256),
                                         ("capped", TENANT_KEYS["capped"], "bulk", 4))))
# vLLM's CPU build binds each engine to core 0 unless told otherwise; two engines on one core can starve
# each other for a minute. The replica-kill tests pair live+second and shared+second: shared gets core 1.
_CORES = os.cpu_count() or 1
SERVERS: dict[str, tuple[list[str], dict[str, str]]] = {
    # Dev mode: the benchmark smoke test resets the server's caches between timed runs (loopback only).
    "live_server": (["--model", "tiny", *_TWO_API],
                    {**_SMALL, "VLLM_CPU_OMP_THREADS_BIND": "0", "VLLM_SERVER_DEV_MODE": "1"}),
    "shared_server": ([*_SHARED, *_TWO_API, "--tenants", str(_TENANTS_FILE)],
                      {**_SMALL, "VLLM_CPU_OMP_THREADS_BIND": str(1 % _CORES), "UNIFIEDREWARD_TENANT_HOLD_S": "1"}),
    "second_server": (_SHARED, {**_SMALL, **_KEY, "VLLM_CPU_OMP_THREADS_BIND": "0"}),
}
SERVER_FIXTURES = tuple(SERVERS)
_servers: dict[str, ServerProcess] = {}


# Figures a test measures (the fault-injection batch's wall times, retries ...), printed at the end of the run.
_FIGURES: list[str] = []


@pytest.fixture(scope="session")
def report_figure():
    """Call with a line of figures: it is printed in the run's summary (also when output is captured)."""
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _FIGURES:
        terminalreporter.section("figures measured by the tests")
        for line in _FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def reference_tasks() -> dict[str, dict]:
    return {t["task"]: t for t in json.loads(REFERENCE.read_text(encoding="utf-8"))}


def _servers_wanted(item: pytest.Item) -> set[str]:
    return set(getattr(item, "fixturenames", ())) & set(SERVER_FIXTURES)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the servers as soon as we know a test needs them; the fixtures only wait for them."""
    wanted: set[str] = set()
    for item in items:
        if _servers_wanted(item):
            item.add_marker(pytest.mark.e2e)
            wanted |= _servers_wanted(item)
    if config.option.collectonly:
        return
    log_dir = Path(config.rootpath) / ".cache" / "test-logs"
    for name in SERVER_FIXTURES:
        if name in wanted and name not in _servers:
            log_path = log_dir / f"vllm-{name}.log"
            log_path.unlink(missing_ok=True)
            args, env = SERVERS[name]
            _servers[name] = ServerProcess(args, env=env, log_path=log_path).start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for server in _servers.values():
        server.stop()


def _ready(name: str) -> ServerProcess:
    server = _servers.get(name)
    assert server is not None, f"{name} is started at collection time"
    try:
        return server.wait_ready()
    except ServerDiedError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def live_server() -> ServerProcess:
    return _ready("live_server")


@pytest.fixture(scope="session")
def api_key() -> str:
    return API_KEY


@pytest.fixture(scope="session")
def tenant_keys() -> dict[str, str]:
    """The shared server's tenants' keys by name (trainer: the session's key)."""
    return dict(TENANT_KEYS)


@pytest.fixture(scope="session")
def shared_server() -> ServerProcess:
    """The `shared` profile (API key, request guard, limits): stays up for the whole session."""
    return _ready("shared_server")


@pytest.fixture
def second_server() -> ServerProcess:
    """A second replica (`shared` profile) for the replica-kill tests. A test may kill it: it is started
    again at once, and the next test that asks for it waits until it is ready."""
    server = _servers.get("second_server")
    if server is not None and server.proc is not None and server.proc.poll() is not None:
        server.start()
    yield _ready("second_server")
    if server is not None and server.proc is not None and server.proc.poll() is not None:
        server.start()  # boots while the other tests run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for name in sorted(_servers_wanted(item)):
            if name in _servers:
                report.sections.append((f"vLLM {name} log (last lines)", _servers[name].log_tail(80)))
