"""Why an open-loop p99 ratio moves from run to run: the hot path's open loop, repeated per run length and
arrival process, with the per-run p99 ratio (ours / reference) and where the reference's slow requests spent
their time (waiting for a thread, reading and encoding their images, the HTTP call).

`benchmarks.compare` reports the p99 ratio as the median of its paired runs; this probe measures how widely a
single run's ratio spreads, so that the number of runs is chosen from data. Both clients get the same
arrival times in a repeat (Poisson, or evenly spaced at the same rate); the rate is 0.8 of the reference's
closed-loop throughput measured first, as in `benchmarks.compare`.

    python -m benchmarks.tail_probe [--requests 96 192 384] [--arrivals poisson even] [--repeats 4]
                                    [--base-url URL] [--quick]

Writes results/tail_probe.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .compare import HOT_TASK, OPEN_LOAD, REFERENCE_THREADS, Inputs, Target, Workload, arrivals_at
from .reference_client import ReferenceClient
from .stats import percentile

SLOW = 3.0  # a reference request is "slow" above this multiple of its run's median latency


def arrivals(kind: str, rate: float, count: int, seed: int) -> list[float]:
    """Poisson arrivals (compare's), or evenly spaced ones at the same rate."""
    if kind == "poisson":
        return arrivals_at(rate, count, seed)
    return [(k + 1) / rate for k in range(count)]


def reference_run(target: Target, workload: Workload, pairs: list[list[Path]], at: Sequence[float]
                  ) -> list[dict[str, Any]]:
    target.reset()
    client = ReferenceClient(target.base_url, threads=REFERENCE_THREADS)
    _, samples = client.run([(p, workload.prompt) for p in pairs], workload.max_tokens, workload.extra, at)
    failed = [s for s in samples if not s["ok"]]
    if failed:
        raise RuntimeError(f"reference client: {len(failed)} requests failed ({failed[0]['error']})")
    return samples


def slow_phases(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """For the reference's slow requests: how many, and which phase took most of each one's time."""
    median = statistics.median(s["latency_s"] for s in samples)
    slow = [s for s in samples if s["latency_s"] > SLOW * median]
    dominant = {"queued": 0, "encode": 0, "http": 0}
    for s in slow:
        dominant[max(s["phases_s"], key=s["phases_s"].get)] += 1
    return {"slow": len(slow), "slowest_s": max(s["latency_s"] for s in samples), "dominant_phase": dominant,
            "encode_p50_s": statistics.median(s["phases_s"]["encode"] for s in samples),
            "encode_max_s": max(s["phases_s"]["encode"] for s in samples)}


def spread(values: Sequence[float]) -> dict[str, float]:
    mean = statistics.mean(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "cv": statistics.pstdev(values) / mean if mean else float("nan")}


def probe(target: Target, inputs: Inputs, lengths: Sequence[int], kinds: Sequence[str], repeats: int,
          log: Any, closed_pairs: int = 64) -> dict[str, Any]:
    workload = Workload(HOT_TASK, None)
    pairs = inputs.pairs("hot")
    warm = pairs[:closed_pairs]
    log(f"warm-up and the reference's closed-loop throughput (3 runs of {closed_pairs} pairs)")
    workload.reference(target, warm), workload.ours(target, warm)
    saturated = statistics.median(workload.reference(target, warm)["pairs_per_s"] for _ in range(3))
    rate = OPEN_LOAD * saturated
    settings = []
    for kind in kinds:
        for length in lengths:
            runs = []
            for repeat in range(repeats):
                log(f"{kind} arrivals, {length} requests at {rate:.2f} pairs/s, repeat {repeat + 1}/{repeats}")
                at = arrivals(kind, rate, length, seed=repeat)
                theirs = reference_run(target, workload, pairs[:length], at)
                target.reset()
                ours = workload.ours(target, pairs[:length], at)
                reference_p99 = percentile([s["latency_s"] for s in theirs], 99)
                runs.append({"reference_p99_s": reference_p99, "ours_p99_s": ours["p99_s"],
                             "p99_ratio": ours["p99_s"] / reference_p99, "reference_slow": slow_phases(theirs)})
            settings.append({"arrivals": kind, "requests": length, "seconds_per_run": length / rate,
                             "p99_ratio": spread([r["p99_ratio"] for r in runs]),
                             "reference_p99_s": spread([r["reference_p99_s"] for r in runs]),
                             "ours_p99_s": spread([r["ours_p99_s"] for r in runs]), "runs": runs})
    return {"task": HOT_TASK, "open_load": OPEN_LOAD, "saturated_pairs_per_s": saturated, "rate": rate,
            "slow_above_x_median": SLOW, "settings": settings}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tail_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, nargs="+", default=[96, 192, 384], help="open-loop run lengths")
    parser.add_argument("--arrivals", nargs="+", choices=("poisson", "even"), default=["poisson", "even"])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--base-url", help="an already running tiny server, with VLLM_SERVER_DEV_MODE=1")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run: tiny sizes")
    parser.add_argument("--out", type=Path, default=Path("results/tail_probe.json"))
    parser.add_argument("--data-dir", type=Path, default=Path("results/bench-data"))
    args = parser.parse_args(argv)
    closed_pairs = 64
    if args.quick:
        args.requests, args.repeats, closed_pairs = [4], 2, 4
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"tail_probe [{time.perf_counter() - started:6.0f} s]: {message}", file=sys.stderr, flush=True)

    from unifiedreward.serving.process import ServerProcess

    inputs = Inputs(args.data_dir, 512 if args.quick else 1024, {"hot": 2 * max(closed_pairs, *args.requests)})
    log(f"preparing inputs (before any clock): {args.data_dir}")
    inputs.prepare()
    server = None if args.base_url else ServerProcess(["--model", "tiny"], env={"VLLM_SERVER_DEV_MODE": "1"},
                                                      log_path=args.out.parent / "tail-probe-server.log")
    try:
        if server is not None:
            log("starting the vLLM server on the tiny checkpoint (defaults)")
            server.start().wait_ready()
        target = Target(args.base_url or server.base_url)
        target.keep_clients_off_engine(log)
        result = probe(target, inputs, args.requests, args.arrivals,
                       args.repeats, log, closed_pairs)
    finally:
        if server is not None:
            server.stop()
    result["command"] = " ".join(["python -m benchmarks.tail_probe", *(argv if argv is not None else sys.argv[1:])])
    result["date"] = time.strftime("%Y-%m-%d")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"hot path open loop at {result['rate']:.2f} pairs/s ({OPEN_LOAD:g} x {result['saturated_pairs_per_s']:.2f})")
    print(f"{'arrivals':8s} {'requests':>8s} {'s/run':>6s}  p99 ratio per run (ours / reference)"
          f"{'':14s} reference's slow requests: dominant phase")
    for s in result["settings"]:
        ratios = " ".join(f"{r['p99_ratio']:.2f}" for r in s["runs"])
        dominant: dict[str, int] = {}
        for r in s["runs"]:
            for phase, count in r["reference_slow"]["dominant_phase"].items():
                dominant[phase] = dominant.get(phase, 0) + count
        print(f"{s['arrivals']:8s} {s['requests']:8d} {s['seconds_per_run']:6.0f}  {ratios:34s} "
              f"cv {s['p99_ratio']['cv']:.2f}   {dominant}")
    print(f"tail_probe: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
