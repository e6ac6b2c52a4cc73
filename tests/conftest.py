"""Shared fixtures. The end-to-end tests talk over HTTP to the real vLLM server on the tiny checkpoint,
started once per test session, and early: it boots while the unit tests run. A second replica is started
the same way only when a collected test asks for it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.process import ServerDiedError, ServerProcess

REFERENCE = Path(__file__).parent / "data" / "unifiedreward-tasks.json"
SERVER_FIXTURES = ("live_server", "second_server")
_servers: dict[str, ServerProcess] = {}


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
            _servers[name] = ServerProcess(["--model", "tiny"], log_path=log_path).start()


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
def second_server() -> ServerProcess:
    """A second replica, for the several-endpoint tests (one test stops it)."""
    return _ready("second_server")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for name in sorted(_servers_wanted(item)):
            if name in _servers:
                report.sections.append((f"vLLM {name} log (last lines)", _servers[name].log_tail(80)))
