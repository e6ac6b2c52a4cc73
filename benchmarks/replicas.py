"""Routing that follows the image: GRPO groups over two replicas, through the client's endpoint list and through the
nginx front (unifiedreward.serving.frontend), with affinity keys on and off, against the same work on one replica; a replica that
stalls mid-answer; and the longest silence of healthy answers under load (what stall_timeout must exceed).

  routes   K groups of 8 (`rank_group`, image_gen.pair_rank, all 28 pairs), sent together as a trainer's step does,
           in five ways: one replica alone (the reference), the endpoint list with affinity off (least outstanding,
           today's behaviour) and on (rendezvous with a load bound), the nginx front without the affinity header
           (least connections) and with it (`hash ... consistent`). Per way: prefix-cache hit tokens summed over
           the replicas and their fraction of one replica's (`fraction_of_one_replica_saving`), computed prompt
           tokens, processor-cache hits, engine CPU per pair (read from the OS), wall per group, each replica's
           share of the pairs, and how many groups stayed on one replica. Every run sends images no run sent.
  stall    a 5-candidate group through [a proxy in front of replica A that forwards the first 300 bytes of every
           third answer and then nothing, replica B]: wall clean against wall with the stalls, every pair once.
  dp       (--data-parallel) one tiny server with vLLM data parallelism (2 engines): the same groups with the
           client told the size (each group's key pinned to a rank with X-data-parallel-rank) and not (vLLM's
           balancer, by queue length): prefix-cache hits per engine, read from /metrics' `engine` labels.
  gaps     the longest silence of each healthy answer (request to head, between chunks) at 64 and 256 requests
           in flight on one replica (hot-path and long answers mixed): the measurement behind the default.

    python -m benchmarks.replicas [--quick] [--groups K] [--base-url A --base-url B --api-key KEY]
                                  [--sections routes stall gaps dp] [--dp-base-url URL]          (make bench)

Without --base-url it starts two tiny replicas, each on its own core (and, for dp, after they stop, one tiny server
with --data-parallel-size 2). Writes results/replicas.json.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import httpx

from unifiedreward.clients import AsyncRewardClient, build_request, encode_media
from unifiedreward.clients._constants import DEFAULT_STALL_TIMEOUT_S
from unifiedreward.clients._endpoints import affinity_token, bounded_rendezvous
from unifiedreward.clients._requests import EncodeOptions
from unifiedreward.prompts import get_task
from unifiedreward.serving.frontend import FrontProxy, find_nginx, keyed_answers
from unifiedreward.serving.process import free_port
from testkit.faults import FaultProxy, every
from testkit.media import synthetic_image

from .compare import machine
from .metrics import per_engine, scrape
from .processes import ServerProcesses

TASK = "image_gen.pair_rank"
CAPTION = "a red fox in the snow"
WAYS = ("one_replica", "list_off", "list_on", "front_off", "front_on")
SECTIONS = ("routes", "stall", "gaps", "dp")
SIZES = {
    "full": dict(groups=16, group=8, image=512, repeats=2, stall_group=5, gaps=(64, 256), gap_requests=(256, 512)),
    "quick": dict(groups=2, group=4, image=512, repeats=1, stall_group=3, gaps=(8,), gap_requests=(16,)),
}
TARGETS = {  # issue 22's targets
    "routes.list_on.fraction_of_one_replica_saving": (">=", 0.95),
    "routes.front_on.fraction_of_one_replica_saving": (">=", 0.95),
    "routes.list_on.min_replica_share": (">=", 0.35),
    "routes.list_on.max_replica_share": ("<=", 0.65),
    "routes.front_on.min_replica_share": (">=", 0.35),
    "routes.front_on.max_replica_share": ("<=", 0.65),
    "stall.within_target": ("==", True),
}


class Replica:
    """One replica: its URL, its processes (engine CPU from the OS), its counters."""

    def __init__(self, url: str, api_key: str | None) -> None:
        self.url = url.rstrip("/").removesuffix("/v1")
        self.api_key = api_key
        port = httpx.URL(self.url).port
        self.processes = ServerProcesses.find(port) if port else None

    @property
    def host_port(self) -> str:
        return self.url.removeprefix("http://").removeprefix("https://")

    def counters(self) -> dict[str, float]:
        figures = scrape(self.url, self.api_key)
        cpu = self.processes.cpu_seconds() if self.processes else None
        figures["engine_cpu_s"] = cpu["engine"] if cpu else float("nan")
        return figures


class Images:
    """Distinct synthetic images, never the same twice in one run of the benchmark."""

    def __init__(self, size: int, seed: int = 7_000_000) -> None:
        self.size, self.next = size, seed

    def take(self, count: int) -> list:
        out = [synthetic_image(self.next + i, self.size) for i in range(count)]
        self.next += count
        return out


def _delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after[name] - before[name]


async def _step(urls: list[str], groups: list[list], api_key: str | None, affinity: bool) -> tuple[list, list[float], float]:
    """All groups at once, as a GRPO step sends them: (GroupResults, wall per group, wall of the step)."""
    async with AsyncRewardClient(urls, api_key=api_key, affinity=affinity, max_retries=4) as client:
        async def one(media: list) -> tuple[Any, float]:
            started = time.perf_counter()
            result = await client.rank_group(TASK, media, caption=CAPTION)
            return result, time.perf_counter() - started

        started = time.perf_counter()
        done = await asyncio.gather(*(one(g) for g in groups))
        return [r for r, _ in done], [w for _, w in done], time.perf_counter() - started


def run_way(way: str, replicas: list[Replica], front: FrontProxy | None, groups: list[list],
            api_key: str | None) -> dict[str, Any]:
    if way == "one_replica":
        urls, affinity = [replicas[0].url + "/v1"], True
    elif way.startswith("list"):
        urls, affinity = [r.url + "/v1" for r in replicas], way.endswith("_on")
    else:
        assert front is not None
        urls, affinity = [front.url + "/v1"], way.endswith("_on")
    log_start = len(keyed_answers(front.access_log)) if front is not None and front.access_log.exists() else 0
    before = [r.counters() for r in replicas]
    results, walls, step_wall = asyncio.run(_step(urls, groups, api_key, affinity))
    after = [r.counters() for r in replicas]
    pairs = sum(len(r.pairs) for r in results)
    errors = sum(r.errors for r in results)
    served = [_delta(b, a, "request_success_total") for b, a in zip(before, after)]
    figures: dict[str, Any] = {
        "pairs": pairs, "errors": errors,
        "prefix_hit_tokens": sum(_delta(b, a, "prefix_cache_hits_total") for b, a in zip(before, after)),
        "prompt_tokens": sum(_delta(b, a, "prefix_cache_queries_total") for b, a in zip(before, after)),
        "processor_cache_hits": sum(_delta(b, a, "mm_cache_hits_total") for b, a in zip(before, after)),
        "processor_cache_queries": sum(_delta(b, a, "mm_cache_queries_total") for b, a in zip(before, after)),
        "engine_cpu_ms_per_pair": 1000 * sum(_delta(b, a, "engine_cpu_s") for b, a in zip(before, after)) / pairs,
        "wall_per_group_s": {"p50": statistics.median(walls), "max": max(walls)},
        "step_wall_s": step_wall,
        "replica_pairs": served,
    }
    figures["computed_prompt_tokens"] = figures["prompt_tokens"] - figures["prefix_hit_tokens"]
    total = sum(served)
    figures["replica_shares"] = [s / total if total else None for s in served]
    if way.startswith("list"):
        homes = [len({p.endpoint for p in r.pairs}) for r in results]
        figures["groups_on_one_replica"] = sum(h == 1 for h in homes)
    elif way == "front_on" and front is not None:
        per_key: dict[str, set[str]] = collections.defaultdict(set)
        for replica, status, key in keyed_answers(front.access_log)[log_start:]:
            if key is not None and status == "200":
                per_key[key].add(replica)
        figures["groups_on_one_replica"] = sum(len(v) == 1 for v in per_key.values())
    return figures


def measure_routes(replicas: list[Replica], front: FrontProxy, images: Images, size: dict[str, Any], api_key: str | None,
                   log: Callable[[str], None]) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
    for repeat in range(size["repeats"]):
        order = WAYS if repeat % 2 == 0 else (WAYS[0], *reversed(WAYS[1:]))
        for way in order:
            groups = [images.take(size["group"]) for _ in range(size["groups"])]
            figures = run_way(way, replicas, front, groups, api_key)
            runs[way].append(figures)
            log(f"routes repeat {repeat + 1} {way}: {figures['pairs']} pairs, hits {figures['prefix_hit_tokens']:.0f}, "
                f"shares {[round(s, 2) if s is not None else None for s in figures['replica_shares']]}, "
                f"step {figures['step_wall_s']:.1f} s")
    out: dict[str, Any] = {}
    for way in WAYS:
        fractions = [run["prefix_hit_tokens"] / one["prefix_hit_tokens"] if one["prefix_hit_tokens"] else None
                     for run, one in zip(runs[way], runs["one_replica"])]
        shares = [s for run in runs[way] for s in run["replica_shares"] if s is not None]
        summary = {key: statistics.median(run[key] for run in runs[way]) for key in
                   ("prefix_hit_tokens", "prompt_tokens", "computed_prompt_tokens", "processor_cache_hits",
                    "engine_cpu_ms_per_pair", "step_wall_s")}
        summary.update({
            "fraction_of_one_replica_saving": statistics.median(f for f in fractions if f is not None)
            if any(f is not None for f in fractions) else None,
            "fractions_per_repeat": fractions,
            "wall_per_group_p50_s": statistics.median(run["wall_per_group_s"]["p50"] for run in runs[way]),
            "wall_per_group_max_s": max(run["wall_per_group_s"]["max"] for run in runs[way]),
            "replica_shares_per_repeat": [run["replica_shares"] for run in runs[way]],
            "errors": sum(run["errors"] for run in runs[way]),
            "pairs": sum(run["pairs"] for run in runs[way]),
        })
        if way != "one_replica":
            summary["min_replica_share"] = min(shares) if shares else None
            summary["max_replica_share"] = max(shares) if shares else None
        if any("groups_on_one_replica" in run for run in runs[way]):
            summary["groups_on_one_replica"] = sum(run.get("groups_on_one_replica", 0) for run in runs[way])
            summary["groups"] = size["groups"] * len(runs[way])
        summary["runs"] = runs[way]
        out[way] = summary
    return out


def measure_stall(replicas: list[Replica], images: Images, size: dict[str, Any], api_key: str | None,
                  stall_timeout: float, log: Callable[[str], None]) -> dict[str, Any]:
    """One group through [a proxy in front of replica A, replica B]: clean, then with every third answer through
    the proxy stalled after its first 300 bytes."""
    a, b = replicas

    def group_through(plan) -> tuple[float, Any, dict[str, int]]:
        with FaultProxy(a.url, plan, stall_after_bytes=300) as proxy:
            async def main():
                urls = [proxy.v1(), b.url + "/v1"]
                async with AsyncRewardClient(urls, api_key=api_key, max_retries=4,
                                             stall_timeout=stall_timeout) as client:
                    started = time.perf_counter()
                    result = await client.rank_group(TASK, images.take(size["stall_group"]), caption=CAPTION,
                                                     affinity=key_homed_on(urls, 0))
                    return time.perf_counter() - started, result
            wall, result = asyncio.run(main())
        return wall, result, dict(proxy.counts)

    clean_wall, clean, _ = group_through(lambda n: None)
    stalled_wall, stalled, counts = group_through(every(3, ["stall_mid_answer"]))
    pairs = len(stalled.pairs)
    figures = {
        "candidates": size["stall_group"], "pairs": pairs, "stall_timeout_s": stall_timeout,
        "clean_wall_s": clean_wall, "stalled_wall_s": stalled_wall,
        "stalls": counts.get("stall_mid_answer", 0),
        "every_pair_scored_once": stalled.errors == 0 and len({p.id for p in stalled.pairs}) == pairs,
        "retried_pairs": sum(p.attempts > 1 for p in stalled.pairs),
        "clean_errors": clean.errors,
        "target_s": 2 * clean_wall + 2 * stall_timeout,
    }
    figures["within_target"] = figures["every_pair_scored_once"] and stalled_wall <= figures["target_s"]
    log(f"stall: clean {clean_wall:.1f} s, with {figures['stalls']} stall(s) {stalled_wall:.1f} s "
        f"(target {figures['target_s']:.1f} s)")
    return figures


def key_homed_on(urls: list[str], index: int) -> str:
    """An affinity key whose endpoint is urls[index] (the worst case: the whole group starts on the stalling one)."""
    return next(f"key-{k}" for k in range(10_000)
                if bounded_rendezvous(affinity_token(f"key-{k}"), urls, [0] * len(urls)) == index)


def measure_data_parallel(url: str, images: Images, size: dict[str, Any], api_key: str | None,
                          log: Callable[[str], None]) -> dict[str, Any]:
    """Groups on one data-parallel server, with and without the client pinning each key to a rank."""
    out: dict[str, Any] = {}
    base = url.rstrip("/").removesuffix("/v1")
    engines = sorted(per_engine(base, api_key))
    out["engines"] = len(engines)
    for repeat in range(size["repeats"]):
        for way, dp_size in (("balanced", 1), ("pinned", len(engines))):
            groups = [images.take(size["group"]) for _ in range(size["groups"])]
            before = per_engine(base, api_key)

            async def main():
                async with AsyncRewardClient(base + "/v1", api_key=api_key, data_parallel_size=dp_size) as client:
                    return await asyncio.gather(*(client.rank_group(TASK, g, caption=CAPTION) for g in groups))

            results = asyncio.run(main())
            after = per_engine(base, api_key)
            hits = {e: after[e]["prefix_cache_hits_total"] - before[e]["prefix_cache_hits_total"] for e in engines}
            served = {e: after[e]["request_success_total"] - before[e]["request_success_total"] for e in engines}
            run = {"prefix_hit_tokens": sum(hits.values()), "hits_per_engine": hits, "pairs_per_engine": served,
                   "errors": sum(r.errors for r in results), "pairs": sum(len(r.pairs) for r in results)}
            out.setdefault(way, []).append(run)
            log(f"data parallel repeat {repeat + 1} {way}: hits {run['prefix_hit_tokens']:.0f}, pairs per engine "
                f"{served}")
    for way in ("balanced", "pinned"):
        out[f"{way}_prefix_hit_tokens"] = statistics.median(r["prefix_hit_tokens"] for r in out[way])
    out["pinned_vs_balanced"] = (out["pinned_prefix_hit_tokens"] / out["balanced_prefix_hit_tokens"]
                                 if out["balanced_prefix_hit_tokens"] else None)
    return out


def measure_gaps(replica: Replica, images: Images, size: dict[str, Any], api_key: str | None,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """The longest silence of each healthy answer at a given number in flight (one in four a long answer)."""
    hot, long = get_task(TASK), get_task("image_gen.pair_score")
    options = EncodeOptions("JPEG", 95, 65536, 262144, "frames", True)
    out: dict[str, Any] = {}
    for in_flight, count in zip(size["gaps"], size["gap_requests"]):
        requests = []
        for i in range(count):
            task = long if i % 4 == 0 else hot
            media = encode_media(task, images.take(2), options)
            extra = dict(constraint="none", decode="full") if task is long else {}
            requests.append(build_request(task, media, {"caption": CAPTION}, model="UnifiedReward", **extra))

        async def main():
            async with AsyncRewardClient(replica.url + "/v1", api_key=api_key, max_retries=0,
                                         stall_timeout=600, timeout=600) as client:
                gate = asyncio.Semaphore(in_flight)

                async def one(request):
                    async with gate:
                        return await client.complete(request)
                return await asyncio.gather(*(one(r) for r in requests))

        completions = asyncio.run(main())
        gaps = sorted(c.max_gap_s for c in completions)
        out[str(in_flight)] = {"requests": count, "gap_p50_s": statistics.median(gaps),
                               "gap_p99_s": gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))], "gap_max_s": gaps[-1],
                               "latency_max_s": max(c.latency_s for c in completions)}
        log(f"gaps at {in_flight} in flight: max silence {gaps[-1]:.2f} s (p50 {statistics.median(gaps):.2f} s)")
    return out


def check_targets(result: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, (op, target) in TARGETS.items():
        value: Any = result
        if key.split(".")[0] not in result:
            continue  # a section not measured in this run
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        met = None if value is None else {">=": value >= target if op == ">=" else None,
                                          "<=": value <= target if op == "<=" else None,
                                          "==": value == target if op == "==" else None}[op]
        out[key] = {"value": value, "target": f"{op} {target}", "met": bool(met)}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replicas", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", action="append", dest="base_urls", metavar="URL",
                        help="two replicas already running on this machine (default: start two tiny ones)")
    parser.add_argument("--api-key", default=os.environ.get("UNIFIEDREWARD_API_KEY"))
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes")
    parser.add_argument("--groups", type=int, help="groups per step (default 16; --quick 2)")
    parser.add_argument("--stall-timeout", type=float, default=DEFAULT_STALL_TIMEOUT_S,
                        help=f"the client's stall timeout in the stall run (default {DEFAULT_STALL_TIMEOUT_S:g})")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="what to measure (default: all; dp starts one tiny server with --data-parallel-size 2 "
                             "after the two replicas stop)")
    parser.add_argument("--dp-base-url", help="a data-parallel server already running, for the dp section")
    parser.add_argument("--out", type=Path, default=Path("results/replicas.json"))
    args = parser.parse_args(argv)
    size = dict(SIZES["quick" if args.quick else "full"])
    if args.groups:
        size["groups"] = args.groups
    if args.base_urls and len(args.base_urls) != 2:
        parser.error("give --base-url twice (two replicas) or not at all")
    sections = set(args.sections)
    replicas_needed = bool(sections & {"routes", "stall", "gaps"})
    find_nginx()
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"replicas [{time.perf_counter() - started:6.0f} s]: {message}", file=sys.stderr, flush=True)

    command = " ".join(["python -m benchmarks.replicas", *(argv if argv is not None else sys.argv[1:])])
    result: dict[str, Any] = {"machine": machine(), "config": {"command": command, "date": time.strftime("%Y-%m-%d"),
                                                                "sizes": size, "task": TASK}}
    processes = []
    try:
        if args.base_urls or not replicas_needed:
            urls = args.base_urls or []
        else:
            from unifiedreward.serving.process import ServerProcess

            cores = os.cpu_count() or 1
            for k in range(2):
                process = ServerProcess(["--model", "tiny"], env={"VLLM_CPU_OMP_THREADS_BIND": str(k % cores),
                                                                  "VLLM_CPU_KVCACHE_SPACE": "2"},
                                        log_path=args.out.parent / f"replicas-server-{k}.log")
                processes.append(process.start())
            log("starting two tiny replicas, each on its own core")
            for process in processes:
                process.wait_ready()
            urls = [p.base_url for p in processes]
        replicas = [Replica(u, args.api_key) for u in urls]
        images = Images(size["image"])
        if "routes" in sections:
            with tempfile.TemporaryDirectory() as prefix, \
                    FrontProxy([r.host_port for r in replicas], port=free_port(), prefix=prefix) as front:
                result["routes"] = measure_routes(replicas, front, images, size, args.api_key, log)
        if "stall" in sections:
            result["stall"] = measure_stall(replicas, images, size, args.api_key, args.stall_timeout, log)
        if "gaps" in sections:
            result["gaps"] = measure_gaps(replicas[0], images, size, args.api_key, log)
        if "dp" in sections:
            for process in processes:  # the replicas make room for the data-parallel server's engines
                process.stop()
            dp_url = args.dp_base_url
            if dp_url is None:
                from unifiedreward.serving.process import ServerProcess

                log("starting a tiny server with --data-parallel-size 2")
                dp = ServerProcess(["--model", "tiny", "--data-parallel-size", "2"],
                                   env={"VLLM_CPU_KVCACHE_SPACE": "2"}, log_path=args.out.parent / "replicas-dp.log")
                processes.append(dp.start())
                dp.wait_ready()
                dp_url = dp.base_url
            result["data_parallel"] = measure_data_parallel(dp_url, images, size, args.api_key, log)
    finally:
        for process in processes:
            process.stop()
    result["targets"] = check_targets(result)
    result["config"]["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for way in WAYS if "routes" in result else ():
        w = result["routes"][way]
        frac = w["fraction_of_one_replica_saving"]
        print(f"{way:12s} saving {'n/a' if frac is None else f'{frac:.2f}'} of one replica's, computed prompt tokens "
              f"{w['computed_prompt_tokens']:.0f}, engine {w['engine_cpu_ms_per_pair']:.1f} ms/pair, "
              f"group p50 {w['wall_per_group_p50_s']:.1f} s, shares {w['replica_shares_per_repeat']}")
    for key, target in result["targets"].items():
        print(f"{key:52s} {target['value']!s:>10.10}  target {target['target']:8s} "
              f"{'met' if target['met'] else 'MISSED'}")
    print(f"replicas: wrote {args.out} in {result['config']['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
