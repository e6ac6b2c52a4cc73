"""Side by side, in one run on one machine, on the tiny checkpoint with the same requests and output lengths:

  (a) classic_vs_served: the authors' classic path (transformers generate, one request at a time) against
      this project's served path (vLLM, concurrency 64): ratio of pairs/s;
  (b) reference_client_vs_ours: the authors' request pattern (16 threads, a requests.Session each, JPEG q95
      at full size) against this project's client, same server, same pixel cap: throughput ratio (each at
      its best setting), p99 ratio at one open-loop rate both sustain, and ours as a fraction of the ceiling
      (the same server fed requests encoded before the clock starts);
  (c) group_cache: a group of 8 images, all 28 pairs: all submitted at once through a thread pool (the peers'
      way) against the client's cache-aware order: computed prompt tokens (vLLM's prefix-cache counters),
      the fraction of the ideal saving reached, and wall time.

    python -m benchmarks.compare [--quick] [--base-url URL-of-a-tiny-server]      (make bench)

Writes results/compare.json and results/compare.png.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from clients import (MAX_PIXELS, MIN_PIXELS, AsyncRewardClient, Item, RewardClient, build_request, encode_media,
                     smart_resize)
from prompts import get_task
from testkit.media import synthetic_image

from .classic import classic_generate
from .metrics import computed_prompt_tokens, scrape
from .reference_client import ReferenceClient
from .stats import percentile

TASK = "image_gen.pair_score"
GROUP_TASK = "image_gen.pair_rank"
CAPTION = "a red circle above a blue square on a wooden table"
OUR_CONCURRENCY = 64
REFERENCE_THREADS = 16
SIZES = {  # requests per measurement
    "full": dict(classic=6, served=64, closed=96, open=48, group=8, image=1024),
    "quick": dict(classic=1, served=4, closed=6, open=4, group=4, image=512),
}
TARGETS = {"classic_vs_served.ratio": (">=", 10.0), "reference_client_vs_ours.throughput_ratio": (">=", 2.5),
           "reference_client_vs_ours.fraction_of_ceiling": (">=", 0.7),
           "reference_client_vs_ours.p99_ratio": ("<=", 0.5), "group_cache.fraction_of_ideal": (">=", 0.9),
           "group_cache.wall_ratio": (">", 1.0)}


class Data:
    """Distinct synthetic images on disk (no measurement shares an image with another: no cache luck)."""

    def __init__(self, folder: Path, size: int) -> None:
        self.folder, self.size, self.next_seed = folder, size, 1
        folder.mkdir(parents=True, exist_ok=True)

    def images(self, count: int) -> list[Path]:
        paths = []
        for _ in range(count):
            path = self.folder / f"img-{self.size}-{self.next_seed}.png"
            if not path.exists():
                synthetic_image(self.next_seed, self.size).save(path)
            paths.append(path)
            self.next_seed += 1
        return paths

    def pairs(self, count: int) -> list[list[Path]]:
        flat = self.images(2 * count)
        return [flat[2 * i: 2 * i + 2] for i in range(count)]


def pairs_per_s(samples: Sequence[dict[str, Any]], wall: float) -> float:
    return sum(1 for s in samples if s["ok"]) / wall


async def served_closed_loop(client: AsyncRewardClient, requests: list[dict[str, Any]], concurrency: int) -> float:
    """Pre-built requests through the client's transport at a concurrency: pairs/s."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(request: dict[str, Any]) -> None:
        async with semaphore:
            await client.complete(request)

    started = time.perf_counter()
    await asyncio.gather(*(one(r) for r in requests))
    return len(requests) / (time.perf_counter() - started)


def prebuilt(client: AsyncRewardClient, pairs: list[list[Path]], new_tokens: int) -> list[dict[str, Any]]:
    task = get_task(TASK)
    return [build_request(task, encode_media(task, pair, client.encode_options), {"caption": CAPTION},
                          model=client.model, constraint="none", max_tokens=new_tokens,
                          extra_body={"ignore_eos": True}) for pair in pairs]


def fixed_length_items(pairs: list[list[Path]]) -> list[Item]:
    return [Item(TASK, pair, {"caption": CAPTION}, id=k) for k, pair in enumerate(pairs)]


def answered(result: Any) -> bool:
    """The server answered in full (random weights make the fixed-length text unparseable, by design)."""
    return result.ok or result.error_type == "UnparseableVerdictError"


def measure_classic_vs_served(checkpoint: Path, base_url: str, data: Data, size: dict[str, int],
                              new_tokens: int, start_server) -> dict[str, Any]:
    task = get_task(TASK)
    prompt = task.render(caption=CAPTION)
    jobs = [(pair, prompt) for pair in data.pairs(size["classic"])]
    print(f"compare (a): classic transformers generate, {len(jobs)} requests one at a time", file=sys.stderr)
    wall, _ = classic_generate(checkpoint, jobs, new_tokens, MAX_PIXELS, MIN_PIXELS)
    classic = len(jobs) / wall
    start_server()
    served_pairs = data.pairs(size["served"])
    print(f"compare (a): served path, {len(served_pairs)} requests at concurrency {OUR_CONCURRENCY}", file=sys.stderr)

    async def served_run() -> tuple[float, int]:
        async with AsyncRewardClient(base_url) as client:
            requests = await asyncio.to_thread(prebuilt, client, served_pairs, new_tokens)
            await served_closed_loop(client, requests[:2], 2)  # warm-up, not timed
            return await served_closed_loop(client, requests, OUR_CONCURRENCY), len(requests)

    served, count = asyncio.run(served_run())
    return {"ratio": served / classic, "classic_pairs_per_s": classic, "served_pairs_per_s": served,
            "classic_requests": len(jobs), "served_requests": count, "output_tokens": new_tokens}


def measure_reference_vs_ours(base_url: str, data: Data, size: dict[str, int], new_tokens: int) -> dict[str, Any]:
    task = get_task(TASK)
    prompt = task.render(caption=CAPTION)
    extra = {"ignore_eos": True}
    reference = ReferenceClient(base_url, threads=REFERENCE_THREADS)

    print(f"compare (b): reference client, {size['closed']} requests, {REFERENCE_THREADS} threads", file=sys.stderr)
    wall, samples = reference.run([(pair, prompt) for pair in data.pairs(size["closed"])], new_tokens, extra)
    theirs = pairs_per_s(samples, wall)

    print(f"compare (b): our client, {size['closed']} requests, concurrency {OUR_CONCURRENCY}", file=sys.stderr)
    with RewardClient(base_url) as client:
        started = time.perf_counter()
        results = client.score_batch(fixed_length_items(data.pairs(size["closed"])), concurrency=OUR_CONCURRENCY,
                                     constraint="none", max_tokens=new_tokens, extra_body=extra)
        ours = sum(answered(r) for r in results) / (time.perf_counter() - started)

    print("compare (b): ceiling, requests encoded before the clock", file=sys.stderr)

    async def ceiling_run() -> float:
        async with AsyncRewardClient(base_url) as raw:
            requests = await asyncio.to_thread(prebuilt, raw, data.pairs(size["closed"]), new_tokens)
            return await served_closed_loop(raw, requests, OUR_CONCURRENCY)

    ceiling = asyncio.run(ceiling_run())

    rate = 0.5 * min(ours, theirs)
    rng = random.Random(7)
    arrivals, t = [], 0.0
    for _ in range(size["open"]):
        t += rng.expovariate(rate)
        arrivals.append(t)
    print(f"compare (b): open loop at {rate:.2f} pairs/s, {len(arrivals)} requests each", file=sys.stderr)
    _, their_samples = reference.run([(pair, prompt) for pair in data.pairs(len(arrivals))], new_tokens, extra,
                                     arrivals=arrivals)
    their_p99 = percentile([s["latency_s"] for s in their_samples if s["ok"]], 99)

    async def our_open_loop() -> list[float]:
        async with AsyncRewardClient(base_url) as ours_client:
            started = time.perf_counter()

            async def one(at: float, pair: list[Path]) -> float:
                await asyncio.sleep(max(0.0, started + at - time.perf_counter()))
                result = await ours_client.score(TASK, pair, constraint="none", max_tokens=new_tokens,
                                                 extra_body=extra, caption=CAPTION)
                assert answered(result), result.error
                return time.perf_counter() - (started + at)

            return list(await asyncio.gather(*(one(at, p) for at, p in zip(arrivals, data.pairs(len(arrivals))))))

    our_p99 = percentile(asyncio.run(our_open_loop()), 99)
    return {"throughput_ratio": ours / theirs, "p99_ratio": our_p99 / their_p99, "fraction_of_ceiling": ours / ceiling,
            "ours_pairs_per_s": ours, "reference_pairs_per_s": theirs, "ceiling_pairs_per_s": ceiling,
            "open_loop_rate": rate, "ours_p99_s": our_p99, "reference_p99_s": their_p99,
            "reference_threads": REFERENCE_THREADS, "our_concurrency": OUR_CONCURRENCY, "output_tokens": new_tokens}


def measure_group_cache(base_url: str, server_url: str, data: Data, size: dict[str, int]) -> dict[str, Any]:
    task = get_task(GROUP_TASK)
    n = size["group"]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    prompt = task.render(caption=CAPTION)
    reference = ReferenceClient(base_url)
    extra = {"structured_outputs": task.structured_outputs}

    print(f"compare (c): peers' way, {len(pairs)} pairs of a group of {n} at once", file=sys.stderr)
    theirs_images = data.images(n)
    before = scrape(server_url)
    started = time.perf_counter()
    with ThreadPoolExecutor(len(pairs)) as pool:
        samples = list(pool.map(lambda p: reference.send([theirs_images[p[0]], theirs_images[p[1]]], prompt,
                                                         task.max_tokens, extra), pairs))
    their_wall = time.perf_counter() - started
    their_queried, their_computed = computed_prompt_tokens(before, scrape(server_url))
    assert all(s["ok"] for s in samples), samples

    print("compare (c): the client's cache-aware order", file=sys.stderr)
    before = scrape(server_url)
    with RewardClient(base_url) as client:
        started = time.perf_counter()
        group = client.rank_group(GROUP_TASK, data.images(n), concurrency=len(pairs), caption=CAPTION)
        our_wall = time.perf_counter() - started
    after = scrape(server_url)
    our_queried, our_computed = computed_prompt_tokens(before, after)
    assert group.errors == 0

    # The shared prefix of pairs with the same leading image: the chat header (3 tokens), <vision_start>, the
    # image's tokens, <vision_end>; vLLM caches whole KV blocks of it.
    h, w = smart_resize(size["image"], size["image"])
    prefix = 3 + 1 + (h // 32) * (w // 32) + 1
    block = int(after["block_size"])
    cacheable = (prefix // block) * block
    leaders = len({i for i, _ in pairs})
    ideal_saving = (len(pairs) - leaders) * cacheable
    our_saving = our_queried - our_computed
    return {"prompt_token_ratio": their_computed / our_computed, "fraction_of_ideal": our_saving / ideal_saving,
            "wall_ratio": their_wall / our_wall, "pairs": len(pairs), "group": n,
            "theirs_computed_tokens": their_computed, "theirs_queried_tokens": their_queried,
            "ours_computed_tokens": our_computed, "ours_queried_tokens": our_queried,
            "ideal_saving_tokens": ideal_saving, "ours_saving_tokens": our_saving, "block_size": block,
            "shared_prefix_tokens": prefix, "theirs_wall_s": their_wall, "ours_wall_s": our_wall}


def check_targets(result: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, (op, bound) in TARGETS.items():
        section, name = key.split(".")
        value = result[section][name]
        met = {">=": value >= bound, "<=": value <= bound, ">": value > bound}[op]
        out[key] = {"value": value, "target": f"{op} {bound:g}", "met": bool(met)}
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b, c = result["classic_vs_served"], result["reference_client_vs_ours"], result["group_cache"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].bar(["classic HF\n(1 at a time)", "served vLLM\n(c=64)"], [a["classic_pairs_per_s"], a["served_pairs_per_s"]],
                color=["tab:gray", "tab:blue"])
    axes[0].set(ylabel="pairs/s", title=f"(a) served / classic = {a['ratio']:.1f}x")
    axes[1].bar(["reference\nclient", "our\nclient", "ceiling\n(pre-encoded)"],
                [b["reference_pairs_per_s"], b["ours_pairs_per_s"], b["ceiling_pairs_per_s"]],
                color=["tab:gray", "tab:blue", "tab:green"])
    axes[1].set(ylabel="pairs/s", title=f"(b) {b['throughput_ratio']:.2f}x, p99 {b['p99_ratio']:.2f}x, "
                                        f"{b['fraction_of_ceiling']:.0%} of ceiling")
    axes[2].bar(["peers:\nall at once", "client:\ncache-aware"], [c["theirs_computed_tokens"], c["ours_computed_tokens"]],
                color=["tab:gray", "tab:blue"])
    axes[2].set(ylabel="computed prompt tokens", title=f"(c) {c['fraction_of_ideal']:.0%} of ideal saving, "
                                                        f"wall {c['wall_ratio']:.2f}x")
    fig.suptitle("UnifiedReward serving, tiny checkpoint on this machine (one run)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="an already running server on the tiny checkpoint (default: start one)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run: tiny sizes")
    parser.add_argument("--out", type=Path, default=Path("results/compare.json"))
    parser.add_argument("--plot", type=Path, default=Path("results/compare.png"))
    parser.add_argument("--data-dir", type=Path, default=Path("results/bench-data"))
    args = parser.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    new_tokens = 16 if args.quick else get_task(TASK).typical_tokens

    from serving.process import ServerProcess
    from serving.tiny import ensure_checkpoint

    checkpoint = ensure_checkpoint()
    server = None if args.base_url else ServerProcess(["--model", "tiny"], log_path=args.out.parent / "compare-server.log")
    base_url = args.base_url or server.base_url
    server_url = base_url.rstrip("/").removesuffix("/v1")
    data = Data(args.data_dir, size["image"])
    started = time.perf_counter()

    def start_server() -> None:  # after the classic run, which must not share the cores with a booting server
        if server is not None:
            print("compare: starting the vLLM server on the tiny checkpoint", file=sys.stderr)
            server.start().wait_ready()

    try:
        result: dict[str, Any] = {
            "classic_vs_served": measure_classic_vs_served(checkpoint, base_url, data, size, new_tokens, start_server)}
        result["reference_client_vs_ours"] = measure_reference_vs_ours(base_url, data, size, new_tokens)
        result["group_cache"] = measure_group_cache(base_url, server_url, data, size)
    finally:
        if server is not None:
            server.stop()
    result["targets"] = check_targets(result)
    result["config"] = {"task": TASK, "group_task": GROUP_TASK, "sizes": size, "output_tokens": new_tokens,
                        "quick": args.quick, "seconds": time.perf_counter() - started}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    plot(result, args.plot)
    for key, target in result["targets"].items():
        print(f"{key:48s} {target['value']:8.3f}  target {target['target']:7s} {'met' if target['met'] else 'MISSED'}")
    print(f"compare: wrote {args.out} and {args.plot} in {result['config']['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
