"""CPU build of vLLM only: run each EngineCore process on the cores its model worker is bound to.

vLLM's CPU build binds the worker's OpenMP threads to all cores but the reserved ones (`reserved_cpus` in its
log; on 2 cores: the worker gets core 0) and leaves the others to the API server and the clients. Its
EngineCore process is not bound. It schedules between model steps (async scheduling is off on CPU) and,
while the worker computes, spin-waits for its answer (`sched_yield` on vLLM's shared-memory queue for up to
a second after each read). On a 2-core machine that spin took about half of the core meant for the API server
and the clients: measured on the tiny server's hot path, 50-59 ms of EngineCore CPU per pair, 3-7 ms once it
shares the worker's core (its waiting then yields to the worker, which it waits for anyway), and the
reference client's throughput rose 10-20 %. The noise it added to client-side timings is what
`benchmarks.compare` measures (benchmarks/README.md).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

import psutil  # a dependency of vLLM: present wherever a server runs

log = logging.getLogger("unifiedreward.serving")

ENGINE_NAME, WORKER_NAME = "VLLM::EngineCore", "VLLM::Worker"


def named(process: Any, name: str) -> bool:
    """Whether `process` is the vLLM process titled `name` (False once it has ended)."""
    try:
        argv = process.cmdline()  # vLLM sets its process titles as argv[0] ("VLLM::Worker", ...)
        return process.name().startswith(name[:15]) or bool(argv) and argv[0].startswith(name)
    except Exception:  # psutil.Error: the process ended while we looked
        return False


def _threads_affinity(process: Any) -> set[int]:
    """The union of the CPUs its threads may run on (OpenMP binds threads one by one)."""
    cpus: set[int] = set()
    for thread in process.threads():
        cpus |= os.sched_getaffinity(thread.id)
    return cpus


def _bind_threads(process: Any, cpus: set[int]) -> int:
    """Bind every thread of `process` to `cpus` (threads they start later inherit it); the threads bound."""
    count = 0
    for thread in process.threads():
        try:
            os.sched_setaffinity(thread.id, cpus)
            count += 1
        except OSError:  # the thread ended meanwhile
            continue
    return count


def worker_cpus(root_pid: int) -> set[int]:
    """The CPUs the model workers under `root_pid` (a server's API process) are bound to; empty if none."""
    try:
        workers = [p for p in psutil.Process(root_pid).children(recursive=True) if named(p, WORKER_NAME)]
        return set().union(*(os.sched_getaffinity(w.pid) for w in workers))
    except (psutil.Error, OSError):
        return set()


def keep_off(cpus: set[int]) -> set[int] | None:
    """Bind every thread of this process (and so the threads it starts later) to the CPUs it may use other
    than `cpus`: a client measured beside a CPU server then never takes the engine's cores. None (nothing
    changed) when `cpus` is empty or would leave no CPU."""
    free = os.sched_getaffinity(0) - cpus
    if not cpus or not free:
        return None
    _bind_threads(psutil.Process(), free)
    return free


def placements(root_pid: int) -> list[tuple[Any, set[int]]]:
    """(EngineCore process, its workers' CPUs) for each EngineCore under `root_pid` whose workers are bound
    to fewer CPUs than the EngineCore may use; empty while the workers have not bound themselves yet."""
    out = []
    try:
        descendants = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return []
    for engine in (p for p in descendants if named(p, ENGINE_NAME)):
        try:
            bound = worker_cpus(engine.pid)  # empty until its workers exist
            if bound and bound < _threads_affinity(engine):
                out.append((engine, bound))
        except (psutil.Error, OSError):
            continue
    return out


def pin(engine: Any, cpus: set[int]) -> int:
    """Bind every thread of an EngineCore process to its workers' `cpus`; the threads bound."""
    return _bind_threads(engine, cpus)


def pin_engines_when_bound(root_pid: int, *, timeout_s: float = 900.0, poll_s: float = 1.0,
                           alive: Callable[[], bool] = lambda: True) -> threading.Thread:
    """Watch the server started as `root_pid` in a daemon thread: once its workers have bound themselves
    (during engine start-up), bind each EngineCore to its workers' CPUs, once, and log it."""
    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while alive() and time.monotonic() < deadline:
            for engine, cpus in placements(root_pid):  # a pinned engine is no longer listed
                threads = pin(engine, cpus)
                log.info("CPU build: EngineCore (pid %s, %s threads) bound to its worker's CPUs %s, so that its "
                         "spin-wait stays off the cores left to the API server and clients",
                         engine.pid, threads, sorted(cpus))
                deadline = min(deadline, time.monotonic() + 60)  # the other data-parallel engines start alongside
            time.sleep(poll_s)

    thread = threading.Thread(target=watch, name="pin-engine-core", daemon=True)
    thread.start()
    return thread
