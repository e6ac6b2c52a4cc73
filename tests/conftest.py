"""Shared fixtures. The end-to-end tests talk over HTTP to the real vLLM server on the tiny checkpoint,
started once per test session (and early, so that it boots while the unit tests run)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.process import ServerDiedError, ServerProcess

REFERENCE = Path(__file__).parent / "data" / "unifiedreward-tasks.json"
_server: ServerProcess | None = None


@pytest.fixture(scope="session")
def reference_tasks() -> dict[str, dict]:
    return {t["task"]: t for t in json.loads(REFERENCE.read_text(encoding="utf-8"))}


def _wants_server(item: pytest.Item) -> bool:
    return "live_server" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the server as soon as we know a test needs it; the fixture only waits for it."""
    global _server
    for item in items:
        if _wants_server(item):
            item.add_marker(pytest.mark.e2e)
    if any(_wants_server(i) for i in items) and _server is None and not config.option.collectonly:
        log_dir = Path(config.rootpath) / ".cache" / "test-logs"
        log_path = log_dir / "vllm-server.log"
        log_path.unlink(missing_ok=True)
        _server = ServerProcess(["--model", "tiny"], log_path=log_path).start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _server is not None:
        _server.stop()


@pytest.fixture(scope="session")
def live_server() -> ServerProcess:
    assert _server is not None, "the server is started at collection time"
    try:
        return _server.wait_ready()
    except ServerDiedError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _server is not None and _wants_server(item):
        report.sections.append(("vLLM server log (last lines)", _server.log_tail(80)))
