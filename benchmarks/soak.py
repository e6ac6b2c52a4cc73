"""Soak run: a steady request rate with a share of bad requests against two replicas, for minutes.

    python -m benchmarks.soak --duration 600 --rate 3 --bad-fraction 0.05      (make soak)
    python -m benchmarks.soak --base-url http://lb:8080/v1 --api-key ...        (a running endpoint)

Without --base-url it starts two tiny replicas in the `shared` profile and the nginx front address
(serving/frontend.py) and sends everything through the front. Good requests are real scoring calls through
the project's client; bad ones are the refused-input catalogue (testkit/bad_requests.py) sent through
the same transport. Reports throughput, latency p50/p99, errors by kind (expected refusals apart from
failures of good requests) and the replicas' memory (PSS) at start and end; writes results/soak.{json,png}.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Sequence

import psutil
from tqdm import tqdm

from unifiedreward.clients import AsyncRewardClient, RewardError, build_request, encode_media
from unifiedreward.prompts import get_task
from unifiedreward.serving.frontend import FrontProxy
from unifiedreward.serving.process import ServerProcess, free_port
from testkit.bad_requests import cases, default_png
from testkit.media import synthetic_image

from .stats import summary

TASK = "image_gen.pair_rank"
CAPTION = "a red circle above a blue square"


def tree_pss_mb(root: int) -> float | None:
    """Proportional set size of a process and all its descendants (launcher, API server, engine core,
    workers), in MB: shared pages counted once across them, unlike RSS. None when none can be read."""
    try:
        parent = psutil.Process(root)
        tree = [parent, *parent.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for process in tree:
        try:
            total += process.memory_full_info().pss
        except psutil.Error:  # exited since the listing, or not ours to read
            continue
    return total / 2**20 if total else None


def bad_bodies() -> list[tuple[str, dict[str, Any]]]:
    """The refused-input catalogue as request dicts (the oversized body and unknown model left out: the
    first would dominate the bytes sent, the second is a plain 404)."""
    listener = "http://127.0.0.1:9/never-fetched.png"
    out = []
    for case in cases(listener, default_png()):
        if case.name in ("oversized body", "unknown model", "malformed JSON"):
            continue
        out.append((case.name, json.loads(case.build())))
    return out


async def run(args: argparse.Namespace, base_url: str, memory: Callable[[], dict[str, float | None]]) -> dict[str, Any]:
    rng = random.Random(args.seed)
    task = get_task(TASK)
    bad = bad_bodies()
    total = int(args.duration * args.rate)
    samples: list[dict[str, Any]] = []
    memory_samples: list[tuple[float, dict[str, float | None]]] = []
    async with AsyncRewardClient(base_url, api_key=args.api_key, max_retries=2) as client:
        options = client.encode_options
        # Warm-up, not measured: each replica's first requests compile and allocate.
        warm = [build_request(task, encode_media(task, [synthetic_image(10**9 + k, args.image_size)] * 2, options),
                              {"caption": CAPTION}, model=client.model) for k in range(args.warmup)]
        await asyncio.gather(*(client.complete(r) for r in warm))

        async def one(i: int, scheduled: float) -> None:
            started = time.perf_counter()
            if rng.random() < args.bad_fraction:
                kind, body = rng.choice(bad)
                try:
                    await client.complete(body)
                    outcome = "accepted (should have been refused)"
                except RewardError as exc:
                    outcome = f"{type(exc).__name__} {getattr(exc, 'status_code', '')}".strip()
                samples.append({"i": i, "t": scheduled, "bad": kind, "outcome": outcome,
                                "latency_s": time.perf_counter() - started})
                return
            images = [synthetic_image(args.seed * 1_000_003 + i * 2 + k, args.image_size) for k in range(2)]
            request = build_request(task, encode_media(task, images, options), {"caption": CAPTION},
                                    model=client.model)
            try:
                completion = await client.complete(request)
                task.parse(completion.text)
                outcome = "ok"
            except RewardError as exc:
                outcome = f"{type(exc).__name__} {getattr(exc, 'status_code', '') or ''}".strip()
            except ValueError:
                outcome = "ok (unparseable verdict)"  # random weights: the server answered correctly
            samples.append({"i": i, "t": scheduled, "bad": None, "outcome": outcome,
                            "latency_s": time.perf_counter() - started})

        start = time.perf_counter()
        memory_samples.append((0.0, memory()))
        next_memory = args.memory_every
        tasks = []
        with tqdm(total=total, desc=f"soak {args.rate}/s", unit="req") as bar:
            for i in range(total):
                scheduled = i / args.rate
                delay = start + scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if scheduled >= next_memory:
                    memory_samples.append((scheduled, memory()))
                    next_memory += args.memory_every
                t = asyncio.create_task(one(i, scheduled))
                t.add_done_callback(lambda _t: bar.update())
                tasks.append(t)
            await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
        memory_samples.append((wall, memory()))
    return report(args, samples, wall, memory_samples)


def report(args: argparse.Namespace, samples: list[dict[str, Any]], wall: float,
           memory_samples: list[tuple[float, dict[str, float | None]]]) -> dict[str, Any]:
    good = [s for s in samples if s["bad"] is None]
    bad = [s for s in samples if s["bad"] is not None]
    answered = [s for s in good if s["outcome"].startswith("ok")]
    by_kind: dict[str, dict[str, int]] = {}
    for s in bad:
        by_kind.setdefault(s["bad"], {}).setdefault(s["outcome"], 0)
        by_kind[s["bad"]][s["outcome"]] += 1
    good_failures: dict[str, int] = {}
    for s in good:
        if not s["outcome"].startswith("ok"):
            good_failures[s["outcome"]] = good_failures.get(s["outcome"], 0) + 1
    return {
        "duration_s": args.duration, "rate_per_s": args.rate, "bad_fraction": args.bad_fraction, "wall_s": wall,
        "requests": len(samples), "good": len(good), "bad": len(bad),
        "good_answered": len(answered), "good_failed": good_failures,
        "throughput_per_s": len(answered) / wall if wall else 0.0,
        "latency_s": summary([s["latency_s"] for s in answered]),
        "refusal_latency_s": summary([s["latency_s"] for s in bad]),
        "bad_outcomes": by_kind,
        "bad_not_refused": sum(s["outcome"].startswith("accepted") for s in bad),
        "memory_mb": [{"t": t, **m} for t, m in memory_samples],
        "samples": [{k: s[k] for k in ("t", "latency_s", "outcome", "bad")} for s in samples],
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    good = [s for s in result["samples"] if s["bad"] is None]
    ax1.scatter([s["t"] for s in good], [s["latency_s"] for s in good], s=4, label="good requests")
    bad = [s for s in result["samples"] if s["bad"] is not None]
    ax1.scatter([s["t"] for s in bad], [s["latency_s"] for s in bad], s=8, marker="x", color="tab:red",
                label="bad requests (refused)")
    ax1.set_ylabel("latency (s)")
    ax1.set_yscale("log")
    ax1.legend(loc="upper left")
    ax1.set_title(f"soak: {result['rate_per_s']}/s for {result['duration_s']:.0f} s, "
                  f"{result['bad_fraction']:.0%} bad; p99 {result['latency_s']['p99']:.2f} s")
    for name in [k for k in result["memory_mb"][0] if k != "t"]:
        points = [(m["t"], m[name]) for m in result["memory_mb"] if m.get(name) is not None]
        if points:
            ax2.plot(*zip(*points), marker="o", label=f"{name} PSS")
    ax2.set_ylabel("memory (MB)")
    ax2.set_xlabel("time since start (s)")
    ax2.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_summary(result: dict[str, Any]) -> None:
    lat = result["latency_s"]
    print(f"soak: {result['requests']} requests in {result['wall_s']:.0f} s: {result['good_answered']}/{result['good']} "
          f"good answered ({result['throughput_per_s']:.2f}/s), p50 {lat['p50']:.2f} s, p99 {lat['p99']:.2f} s; "
          f"good failed: {result['good_failed'] or 'none'}")
    print(f"soak: {result['bad']} bad requests, not refused: {result['bad_not_refused']}")
    for kind, outcomes in sorted(result["bad_outcomes"].items()):
        print(f"  {kind:32s} {outcomes}")
    first, last = result["memory_mb"][0], result["memory_mb"][-1]
    for name in [k for k in first if k != "t"]:
        if first[name] is not None:
            print(f"soak: {name} memory {first[name]:.0f} MB at start, {last[name]:.0f} MB at end")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of steady load (default 600)")
    parser.add_argument("--rate", type=float, default=3.0, help="requests per second (default 3)")
    parser.add_argument("--bad-fraction", type=float, default=0.05, help="share of bad requests (default 0.05)")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--memory-every", type=float, default=30.0, help="seconds between memory samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=8, help="unmeasured requests before the clock starts")
    parser.add_argument("--base-url", help="a running endpoint (else two tiny replicas + nginx are started)")
    parser.add_argument("--api-key", default=None, help="API key (default: $UNIFIEDREWARD_API_KEY)")
    parser.add_argument("--out", type=Path, default=Path("results/soak.json"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with ExitStack() as stack:
        if args.base_url:
            base_url = args.base_url
            memory = dict
        else:
            args.api_key = args.api_key or "sk-soak-" + secrets.token_urlsafe(12)
            log_dir = args.out.parent / "soak-logs"
            env = {"UNIFIEDREWARD_API_KEY": args.api_key, "VLLM_CPU_KVCACHE_SPACE": "2"}
            # vLLM's CPU build binds every engine's threads to core 0 by default: two replicas on one core
            # starve each other (an engine stalled 60 s in a trial run). One core each instead.
            cores = os.cpu_count() or 1
            replicas = [ServerProcess(["--model", "tiny", "--profile", "shared"],
                                      env={**env, "VLLM_CPU_OMP_THREADS_BIND": str(n % cores)},
                                      log_path=log_dir / f"replica-{n + 1}.log") for n in range(2)]
            for replica in replicas:
                stack.callback(replica.stop)
                replica.start()
            print("soak: starting two tiny replicas (shared profile) ...", flush=True)
            for replica in replicas:
                replica.wait_ready()
            (log_dir / "nginx" / "access.log").unlink(missing_ok=True)
            front = stack.enter_context(FrontProxy([f"{r.host}:{r.port}" for r in replicas], port=free_port(),
                                                   prefix=log_dir / "nginx"))
            base_url = front.url + "/v1"
            memory = lambda: {f"replica {n}": tree_pss_mb(r.proc.pid) for n, r in enumerate(replicas, 1)}  # noqa: E731
        result = asyncio.run(run(args, base_url, memory))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    plot(result, args.out.with_suffix(".png"))
    print_summary(result)
    print(f"soak: wrote {args.out} and {args.out.with_suffix('.png')}")
    bad_good = sum(result["good_failed"].values())
    return 1 if result["bad_not_refused"] or bad_good else 0


if __name__ == "__main__":
    sys.exit(main())
