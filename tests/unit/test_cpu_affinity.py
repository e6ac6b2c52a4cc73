"""unifiedreward.serving.cpu_affinity on a real process tree named as vLLM's CPU build names its processes."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

psutil = pytest.importorskip("psutil")
from unifiedreward.serving.cpu_affinity import keep_off, pin, placements, worker_cpus  # noqa: E402

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to bind one")


@pytest.fixture
def server_tree():
    """root (the launcher's child) -> "VLLM::EngineCore" -> "VLLM::Worker", like `python -m unifiedreward.serving` on CPU."""
    script = "exec -a VLLM::EngineCore bash -c 'bash -c \"exec -a VLLM::Worker sleep 60\" & wait'"
    root = subprocess.Popen(["bash", "-c", f"{script} & wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            names = [" ".join(p.cmdline()) for p in psutil.Process(root.pid).children(recursive=True)]
            if any(n.startswith("VLLM::Worker") for n in names):
                break
            time.sleep(0.05)
        yield root.pid
    finally:
        os.killpg(root.pid, signal.SIGKILL)
        root.wait()


def _process(root: int, prefix: str):
    return next(p for p in psutil.Process(root).children(recursive=True) if " ".join(p.cmdline()).startswith(prefix))


def test_engine_follows_its_bound_worker(server_tree):
    engine, worker = _process(server_tree, "VLLM::EngineCore"), _process(server_tree, "VLLM::Worker")
    assert placements(server_tree) == []  # the worker has not bound itself yet: nothing to do
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(worker.pid, {core})  # what vLLM's CPU worker does at start-up
    found = placements(server_tree)
    assert [(p.pid, cpus) for p, cpus in found] == [(engine.pid, {core})]
    assert pin(engine, {core}) == len(engine.threads())
    assert os.sched_getaffinity(engine.pid) == {core}
    assert placements(server_tree) == []  # bound once: not listed again
    assert os.sched_getaffinity(worker.pid) == {core}  # the worker is left as it bound itself


def test_no_server_no_placement():
    assert placements(2**22 + 12345) == []  # no such process: nothing, no error


def test_worker_cpus_is_what_the_workers_bound(server_tree):
    worker = _process(server_tree, "VLLM::Worker")
    core = max(os.sched_getaffinity(0))
    os.sched_setaffinity(worker.pid, {core})
    assert worker_cpus(server_tree) == {core}
    assert worker_cpus(2**22 + 12345) == set()


def test_keep_off_binds_every_thread_of_this_process_to_the_other_cpus():
    import threading

    allowed = os.sched_getaffinity(0)
    engine = {min(allowed)}
    started = threading.Event()
    done = threading.Event()
    seen: list[set[int]] = []

    def existing_thread() -> None:  # started before the call: bound too
        started.set()
        done.wait(5)
        seen.append(os.sched_getaffinity(0))

    thread = threading.Thread(target=existing_thread)
    thread.start()
    started.wait(5)
    try:
        assert keep_off(set()) is None and keep_off(allowed) is None  # nothing to keep off, or nothing left
        assert os.sched_getaffinity(0) == allowed
        assert keep_off(engine) == allowed - engine
        assert os.sched_getaffinity(0) == allowed - engine
        done.set()
        thread.join(5)
        assert seen == [allowed - engine]
    finally:
        done.set()
        for task in psutil.Process().threads():
            try:
                os.sched_setaffinity(task.id, allowed)
            except OSError:
                pass
