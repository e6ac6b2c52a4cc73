"""Load test any OpenAI-compatible UnifiedReward endpoint: closed loop at given concurrencies, open loop at
given request rates (Poisson arrivals). Reports requests/s, pairs/s, latency p50/p90/p99, time to first
token and errors; writes JSON and a PNG plot.

    python -m benchmarks.load --base-url http://127.0.0.1:8000/v1 --concurrency 1 8 32 64 --rate 2 8
    make bench-load BASE_URL=...

Requests are built and their images encoded (by the project's client) before the clock starts: the load
test measures the endpoint, not the load generator. Every request has distinct images, so the prefix cache
never makes a level look faster than it is.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from unifiedreward.clients import MAX_PIXELS, AsyncRewardClient, EncodeOptions, build_request, encode_media
from unifiedreward.prompts import get_task
from testkit.media import synthetic_image

from .stats import summary

DEFAULT_TASK = "image_gen.pair_score"


def parse_mix(specs: Sequence[str]) -> list[tuple[str, float]]:
    """['image_gen.pair_score=3', 'image_gen.point_score_acs'] -> [(task, weight)], weights default 1."""
    mix = []
    for spec in specs:
        name, _, weight = spec.partition("=")
        task = get_task(name)
        if task.media.kind != "image":
            raise SystemExit(f"load: {name}: only image tasks are in the load mix for now")
        mix.append((name, float(weight or 1)))
    return mix


def build_requests(mix: list[tuple[str, float]], count: int, *, seed: int, image_size: int, fixed_output: bool,
                   model: str, options: EncodeOptions) -> list[tuple[str, dict[str, Any]]]:
    """`count` (task, request) pairs drawn from the mix, each with its own synthetic images."""
    rng = random.Random(seed)
    names, weights = zip(*mix)
    fields = {"caption": "a red circle above a blue square", "question": "What is shown?",
              "answer1": "Shapes.", "answer2": "Nothing.", "response": "Two shapes."}
    out = []
    for i in range(count):
        task = get_task(rng.choices(names, weights)[0])
        images = [synthetic_image(seed * 100_003 + i * 7 + k, image_size) for k in range(task.media.count)]
        urls = encode_media(task, images, options)
        if fixed_output:  # random weights never stop: fix each task's typical output length instead
            request = build_request(task, urls, {f: fields[f] for f in task.fields}, model=model, constraint="none",
                                    max_tokens=task.typical_tokens, extra_body={"ignore_eos": True})
        else:
            request = build_request(task, urls, {f: fields[f] for f in task.fields}, model=model)
        out.append((task.name, request))
    return out


async def _one(client: AsyncRewardClient, name: str, request: dict[str, Any], fixed_output: bool) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        completion = await client.complete(request, stream=True)
    except Exception as exc:  # counted, never fatal to the run
        return {"ok": False, "error": type(exc).__name__, "latency_s": time.perf_counter() - started}
    parsed = True
    if not fixed_output:
        try:
            get_task(name).parse(completion.text)
        except ValueError:
            parsed = False
    return {"ok": True, "parsed": parsed, "latency_s": time.perf_counter() - started, "ttft_s": completion.ttft_s,
            "pair": get_task(name).pairwise is not None, **completion.usage}


def _report(level: dict[str, Any], samples: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    ok = [s for s in samples if s["ok"]]
    errors: dict[str, int] = {}
    for s in samples:
        if not s["ok"]:
            errors[s["error"]] = errors.get(s["error"], 0) + 1
    return {**level, "requests": len(samples), "ok": len(ok), "errors": errors,
            "unparsed": sum(not s.get("parsed", True) for s in ok), "wall_s": wall,
            "req_per_s": len(ok) / wall if wall else 0.0,
            "pairs_per_s": sum(s["pair"] for s in ok) / wall if wall else 0.0,
            "latency_s": summary([s["latency_s"] for s in ok]),
            "ttft_s": summary([s["ttft_s"] for s in ok if s.get("ttft_s") is not None]),
            "prompt_tokens_mean": _reported_mean(ok, "prompt_tokens"),
            "completion_tokens_mean": _reported_mean(ok, "completion_tokens")}


def _reported_mean(samples: list[dict[str, Any]], key: str) -> float | None:
    """The mean of a usage figure, or None where an answer did not report it (never a 0 in its place)."""
    if not samples or any(s.get(key) is None for s in samples):
        return None
    return sum(s[key] for s in samples) / len(samples)


async def closed_loop(client: AsyncRewardClient, requests: list, concurrency: int, fixed_output: bool,
                      bar: tqdm) -> dict[str, Any]:
    semaphore = asyncio.Semaphore(concurrency)

    async def run(name: str, request: dict[str, Any]) -> dict[str, Any]:
        async with semaphore:
            sample = await _one(client, name, request, fixed_output)
        bar.update(1)
        return sample

    started = time.perf_counter()
    samples = await asyncio.gather(*(run(n, r) for n, r in requests))
    return _report({"concurrency": concurrency}, list(samples), time.perf_counter() - started)


async def open_loop(client: AsyncRewardClient, requests: list, rate: float, fixed_output: bool, bar: tqdm,
                    seed: int = 0) -> dict[str, Any]:
    """Poisson arrivals at `rate` requests/s; latency counts from the scheduled arrival."""
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for _ in requests:
        t += rng.expovariate(rate)
        arrivals.append(t)
    started = time.perf_counter()

    async def run(at: float, name: str, request: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(max(0.0, started + at - time.perf_counter()))
        sample = await _one(client, name, request, fixed_output)
        sample["latency_s"] = time.perf_counter() - (started + at)
        bar.update(1)
        return sample

    samples = await asyncio.gather(*(run(at, n, r) for at, (n, r) in zip(arrivals, requests)))
    return _report({"rate": rate}, list(samples), time.perf_counter() - started)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    closed = result["closed_loop"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    xs = [r["concurrency"] for r in closed]
    axes[0].plot(xs, [r["req_per_s"] for r in closed], "o-", label="requests/s")
    axes[0].plot(xs, [r["pairs_per_s"] for r in closed], "s--", label="pairs/s")
    axes[0].set(xscale="log", xlabel="concurrency (closed loop)", ylabel="throughput", title="Throughput")
    axes[0].legend()
    axes[1].plot(xs, [r["latency_s"]["p99"] for r in closed], "o-", label="closed loop, by concurrency")
    if result["open_loop"]:
        ax2 = axes[1].twiny()
        ax2.plot([r["rate"] for r in result["open_loop"]], [r["latency_s"]["p99"] for r in result["open_loop"]],
                 "^:", color="tab:red", label="open loop, by rate (top axis)")
        ax2.set_xlabel("offered requests/s (open loop)")
        ax2.legend(loc="lower right")
    axes[1].set(xscale="log", xlabel="concurrency", ylabel="p99 latency (s)", title="p99 latency")
    axes[1].legend(loc="upper left")
    fig.suptitle(f"{', '.join(result['config']['tasks'])} on {', '.join(result['config']['base_urls'])}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    mix = parse_mix(args.task or [DEFAULT_TASK])
    client = AsyncRewardClient(args.base_url, api_key=args.api_key, model=args.model, max_retries=0,
                               max_pixels=args.max_pixels)
    levels = [("concurrency", c) for c in args.concurrency] + [("rate", r) for r in args.rate]
    total = args.requests * len(levels)
    result: dict[str, Any] = {"config": {"base_urls": args.base_url, "tasks": [f"{n}={w:g}" for n, w in mix],
                                         "requests_per_level": args.requests, "image_size": args.image_size,
                                         "fixed_output": args.fixed_output, "profile": args.profile,
                                         "client_max_pixels": args.max_pixels},
                              "closed_loop": [], "open_loop": []}
    try:
        print(f"load: encoding {total} requests before the clock starts", file=sys.stderr)
        batches = [await asyncio.to_thread(build_requests, mix, args.requests, seed=k + 1, image_size=args.image_size,
                                           fixed_output=args.fixed_output, model=args.model,
                                           options=client.encode_options) for k in range(len(levels))]
        with tqdm(total=total, unit="req", file=sys.stderr, disable=args.quiet) as bar:
            for (kind, value), requests in zip(levels, batches):
                bar.set_description(f"{kind} {value:g}")
                if kind == "concurrency":
                    result["closed_loop"].append(await closed_loop(client, requests, int(value), args.fixed_output, bar))
                else:
                    result["open_loop"].append(await open_loop(client, requests, value, args.fixed_output, bar))
    finally:
        await client.aclose()
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", action="append", help="repeat for several endpoints")
    parser.add_argument("--serve-tiny", action="store_true",
                        help="start the tiny-checkpoint server for this run (implies --fixed-output)")
    parser.add_argument("--api-key", default=None, help="API key (default: $UNIFIEDREWARD_API_KEY)")
    parser.add_argument("--model", default="UnifiedReward")
    parser.add_argument("--task", action="append", help=f"task[=weight], repeatable (default {DEFAULT_TASK})")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 4, 16, 64])
    parser.add_argument("--rate", type=float, nargs="*", default=[], help="open-loop request rates (Poisson)")
    parser.add_argument("--requests", type=int, default=64, help="requests per level")
    parser.add_argument("--image-size", type=int, default=1024, help="synthetic image side (pixels)")
    parser.add_argument("--fixed-output", action="store_true",
                        help="ignore_eos with each task's typical output length (random-weight checkpoints)")
    parser.add_argument("--out", type=Path, default=Path("results/load.json"))
    parser.add_argument("--plot", type=Path, default=Path("results/load.png"))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--profile", help="with --serve-tiny: a serving profile (e.g. authors: no pixel cap)")
    parser.add_argument("--max-pixels", type=lambda v: None if v.lower() == "none" else int(v), default=MAX_PIXELS,
                        help=f"the client's resize target per image (default {MAX_PIXELS}; none: full size, as "
                             f"the authors' client sends)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.base_url and not args.serve_tiny:
        parser.error("give --base-url (repeatable) or --serve-tiny")
    server = None
    if args.serve_tiny:
        from unifiedreward.serving.process import ServerProcess

        profile = ["--profile", args.profile] if args.profile else []
        server = ServerProcess(["--model", "tiny", *profile], log_path=args.out.parent / "load-server.log")
        print("load: starting the vLLM server on the tiny checkpoint", file=sys.stderr)
        server.start().wait_ready()
        args.base_url = [server.base_url]
        args.fixed_output = True
    try:
        result = asyncio.run(run(args))
    finally:
        if server is not None:
            server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    plot(result, args.plot)
    for row in result["closed_loop"] + result["open_loop"]:
        level = f"c={row['concurrency']}" if "concurrency" in row else f"rate={row['rate']:g}/s"
        print(f"{level:>10}: {row['req_per_s']:7.2f} req/s {row['pairs_per_s']:7.2f} pairs/s  "
              f"p50 {row['latency_s']['p50'] or 0:.3f} s  p99 {row['latency_s']['p99'] or 0:.3f} s  "
              f"ttft p50 {row['ttft_s']['p50'] or 0:.3f} s  errors {sum(row['errors'].values())}")
    print(f"load: wrote {args.out} and {args.plot}")
    return 0 if all(not r["errors"] for r in result["closed_loop"] + result["open_loop"]) else 1


if __name__ == "__main__":
    sys.exit(main())
