"""What the front end costs per pair: the CPU of vLLM's API-server processes, read from the OS, for each way of
sending the RL workloads, with 1 and 2 API servers; the tokens decoded per verdict; what media uuids and the
deciding-token stop save; and a sampling profile of the API server that names its top costs.

On a GPU the engine is fast and the bound moves to the API server (HTTP and JSON, base64, image decoding, the
image processor, the chat template, tokenising, detokenising): Python code that is the same here as beside a GPU,
so its CPU milliseconds per pair carry over, where this machine's pairs/s do not.

  hot_path     image_gen.pair_rank with its constraint, 1024^2 PNG inputs: our client (decisive decode and media
               uuids, the defaults), our client with decode="full", the same requests built before the clock
               (`prebuilt`: what the server alone costs), the authors' request pattern (16 threads, full-size JPEG).
  long_answer  image_gen.pair_score, 153 output tokens (the authors' example answer): ours and the reference.
  group        GRPO groups of 8, all 28 pairs: rank_group (uuids), rank_group without uuids, the peers' thread pool.
  debias       pairs scored in both orders: with uuids (the second order by uuid alone) and without.
  formats      prebuilt hot-path requests with the images as JPEG q95 (the client's default), PNG and BMP.
  decisive     200 pairs with logprobs: decode="decisive" against "full": completion tokens per pair, p_first of
               both, the winners.
  profile      py-spy (GIL samples: the Python work) on the API server while our client sends the hot path.

Every timed run sends images no run sent before (a prepared pool, sliced), after the prefix cache is reset: with
several API servers each has its own processor cache, which no endpoint resets. Figures are medians of repeats.

    python -m benchmarks.frontend [--quick] [--base-url URL] [--api-servers 1 2] [--no-profile]   (make bench)

Writes results/frontend.json.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import httpx
from PIL import Image

from unifiedreward.clients import AsyncRewardClient, Item, RewardClient, build_request, encode_media
from unifiedreward.prompts import get_task

from .compare import CAPTION, REFERENCE_THREADS, Inputs, _own_cpu, machine, repeated
from .processes import ServerProcesses
from .reference_client import ReferenceClient

HOT, LONG = "image_gen.pair_rank", "image_gen.pair_score"
OUR_CONCURRENCY = 64
PROFILE_HZ = 500  # py-spy's samples per second (GIL samples only: ~a third of the API server's CPU time)
SIZES = {
    "full": dict(image=1024, hot=24, long=16, group=8, groups=3, debias=16, formats=24, decisive=200, repeats=3,
                 decisive_concurrency=16, profile_pairs=160),
    "quick": dict(image=256, hot=4, long=2, group=4, groups=1, debias=2, formats=2, decisive=8, repeats=1,
                  decisive_concurrency=4, profile_pairs=4),
}
TARGETS = {  # issue 21's targets, on this machine's figures with one API server
    "hot_path.ours_api_cpu_ms_per_pair": ("<=", 8.0),
    "group.ours_api_cpu_ms_per_pair": ("<=", 4.0),
    "decisive.completion_tokens_per_pair": ("<=", 3.0),
    "decisive.max_p_first_difference": ("<=", 1e-4),
}
WAYS = {"hot_path": ("ours", "ours_full", "prebuilt", "reference"), "long_answer": ("ours", "reference"),
        "group": ("ours", "ours_no_uuid", "peers"), "debias": ("ours", "ours_no_uuid"),
        "formats": ("jpeg", "png", "bmp")}


class Pool:
    """The prepared images, handed out in slices that no earlier run of this server has sent."""

    def __init__(self, inputs: Inputs, name: str) -> None:
        self.images, self.next = inputs.images(name), 0

    def take(self, count: int) -> list[Path]:
        if self.next + count > len(self.images):
            raise RuntimeError(f"frontend: the image pool ran out ({len(self.images)} prepared)")
        out = self.images[self.next: self.next + count]
        self.next += count
        return out

    def pairs(self, count: int) -> list[list[Path]]:
        flat = self.take(2 * count)
        return [flat[2 * i: 2 * i + 2] for i in range(count)]


class Server:
    """The server under test: its URL, its processes (benchmarks/processes.py), the prefix-cache reset."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url.removesuffix("/v1")
        port = httpx.URL(self.url).port
        self.processes = ServerProcesses.find(port) if port else None
        if self.processes is None:
            raise SystemExit(f"frontend: no local process listens on {self.url}: the API server's CPU is read "
                             f"from the OS, so the server must run on this machine")
        self.reset()  # before anything is measured: a server without the dev endpoints is refused at once

    @property
    def api_servers(self) -> int:
        return len(self.processes.api_servers())

    def reset(self) -> None:
        response = httpx.post(self.url + "/reset_prefix_cache", timeout=30)
        if response.status_code == 404:
            raise SystemExit(f"frontend: {self.url}/reset_prefix_cache is not served: start the server with "
                             f"VLLM_SERVER_DEV_MODE=1")
        response.raise_for_status()

    def timed(self, pairs: int, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Reset the prefix cache, run, and add CPU milliseconds per pair of each kind of process."""
        self.reset()
        before, client, started = self.processes.cpu_seconds(), _own_cpu(), time.perf_counter()
        figures = run()
        wall = time.perf_counter() - started
        after = self.processes.cpu_seconds()
        if before is None or after is None:
            raise RuntimeError("frontend: the server's processes ended during a run")
        figures.update({f"{kind}_cpu_ms_per_pair": 1000 * (after[kind] - before[kind]) / pairs
                        for kind in ("api", "engine", "supervisor")})
        figures["client_cpu_ms_per_pair"] = 1000 * (_own_cpu() - client) / pairs
        figures.setdefault("pairs_per_s", pairs / wall)
        figures["pairs"] = pairs
        return figures


def _results_figures(results: Sequence[Any]) -> dict[str, Any]:
    failed = [r for r in results if not r.ok and r.error_type != "UnparseableVerdictError"]
    if failed:  # a figure from answered requests only; an unparsed fixed-length answer is answered
        raise RuntimeError(f"frontend: {len(failed)} requests failed ({failed[0].error_type}: {failed[0].error})")
    return {"completion_tokens_per_pair": statistics.mean(r.usage["completion_tokens"] for r in results),
            "prompt_tokens": statistics.mean(r.usage["prompt_tokens"] for r in results)}


def _flatten(results: Sequence[Any]) -> list[Any]:
    return [x for r in results for x in ([r] + ([r.swapped] if r.swapped is not None else []))]


# -- the ways ------------------------------------------------------------------------------------------------

def ours(server: Server, pairs: list[list[Path]], *, task: str = HOT, output_tokens: int | None = None,
         debias: bool = False, **client_options: Any) -> dict[str, Any]:
    """Our client, as a trainer calls it: score_batch over the pairs (the defaults unless told otherwise)."""
    decode = client_options.pop("decode", "decisive")
    extra = {"ignore_eos": True} if output_tokens else None

    async def send() -> list[Any]:
        async with AsyncRewardClient(server.base_url, **client_options) as client:
            items = [Item(task, pair, {"caption": CAPTION}, id=k) for k, pair in enumerate(pairs)]
            return await client.score_batch(items, concurrency=OUR_CONCURRENCY, decode=decode, debias=debias,
                                            constraint="none" if output_tokens else "auto", max_tokens=output_tokens,
                                            extra_body=extra)

    return _results_figures(_flatten(asyncio.run(send())))


def prebuilt(server: Server, requests: list[dict[str, Any]]) -> dict[str, Any]:
    """Requests encoded before the clock, sent through the same transport: the server's own cost."""
    async def send() -> list[Any]:
        async with AsyncRewardClient(server.base_url) as client:
            gate = asyncio.Semaphore(OUR_CONCURRENCY)

            async def one(request: dict[str, Any]) -> Any:
                async with gate:
                    return await client.complete(request)

            return await asyncio.gather(*(one(r) for r in requests))

    completions = asyncio.run(send())
    return {"completion_tokens_per_pair": statistics.mean(c.usage["completion_tokens"] for c in completions),
            "prompt_tokens": statistics.mean(c.usage["prompt_tokens"] for c in completions)}


def reference(server: Server, pairs: list[list[Path]], *, task: str = HOT, output_tokens: int | None = None
              ) -> dict[str, Any]:
    """The authors' request pattern: 16 threads, each image re-encoded as a full-size JPEG q95 per request."""
    spec = get_task(task)
    extra = {"ignore_eos": True} if output_tokens else {"structured_outputs": spec.structured_outputs}
    wall, samples = ReferenceClient(server.base_url, threads=REFERENCE_THREADS).run(
        [(p, spec.render(caption=CAPTION)) for p in pairs], output_tokens or spec.max_tokens, extra)
    failed = [s for s in samples if not s["ok"]]
    if failed:
        raise RuntimeError(f"frontend: reference client: {len(failed)} requests failed ({failed[0]['error']})")
    return {"pairs_per_s": len(samples) / wall, "prompt_tokens": statistics.mean(s["prompt_tokens"] for s in samples)}


def our_groups(server: Server, groups: list[list[Path]], **client_options: Any) -> dict[str, Any]:
    """rank_group over each group in a row, as a GRPO step scores its prompts' groups."""
    with RewardClient(server.base_url, **client_options) as client:
        results = []
        for images in groups:
            group = client.rank_group(HOT, images, concurrency=64, caption=CAPTION)
            if group.errors:
                raise RuntimeError(f"frontend: rank_group: {group.errors} pairs failed")
            results += group.pairs
        slimmed = client.media.slimmed
    return {**_results_figures(results), "images_by_uuid_only": slimmed}


def peers_groups(server: Server, groups: list[list[Path]]) -> dict[str, Any]:
    """The peers' way: a 16-thread pool over a group's pairs, each image read and encoded per pair, full size."""
    spec = get_task(HOT)
    client = ReferenceClient(server.base_url)
    prompt, extra = spec.render(caption=CAPTION), {"structured_outputs": spec.structured_outputs}
    samples = []
    for images in groups:
        pairs = [(i, j) for i in range(len(images)) for j in range(i + 1, len(images))]
        with ThreadPoolExecutor(REFERENCE_THREADS) as pool:
            samples += pool.map(lambda p: client.send([images[p[0]], images[p[1]]], prompt, spec.max_tokens, extra),
                                pairs)
    if not all(s["ok"] for s in samples):
        raise RuntimeError(f"frontend: peers' group: {[s for s in samples if not s['ok']][:1]}")
    return {"prompt_tokens": statistics.mean(s["prompt_tokens"] for s in samples)}


def image_url(path: Path, fmt: str) -> str:
    """An image at the server's target size (512^2 here) as a data URL in `fmt`: JPEG q95, PNG (level 1, as the
    client writes it) or BMP (no compression: the fastest to decode, ~5x the bytes of the JPEG)."""
    with Image.open(path) as image:
        image = image.convert("RGB").resize((512, 512), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        options = {"jpeg": {"quality": 95}, "png": {"compress_level": 1}, "bmp": {}}[fmt]
        image.save(buffer, format=fmt.upper(), **options)
    return f"data:image/{fmt};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def format_requests(pairs: list[list[Path]], fmt: str) -> list[dict[str, Any]]:
    task = get_task(HOT)
    return [build_request(task, [image_url(p, fmt) for p in pair], {"caption": CAPTION}, model="UnifiedReward")
            for pair in pairs]


# -- the deciding token ---------------------------------------------------------------------------------------

def decisive(server: Server, pairs: list[list[Path]], concurrency: int) -> dict[str, Any]:
    """The same pairs with logprobs, decoded in full and stopped at the deciding token: tokens and soft scores."""
    async def send(decode: str) -> list[Any]:
        async with AsyncRewardClient(server.base_url) as client:
            items = [Item(HOT, pair, {"caption": CAPTION}, id=k) for k, pair in enumerate(pairs)]
            return await client.score_batch(items, concurrency=concurrency, logprobs=True, decode=decode)

    full, early = asyncio.run(send("full")), asyncio.run(send("decisive"))
    bad = [r for r in full + early if not r.ok]
    if bad:
        raise RuntimeError(f"frontend: decisive: {len(bad)} pairs failed ({bad[0].error})")
    both_soft = [(a.verdict.p_first, b.verdict.p_first) for a, b in zip(full, early)
                 if a.verdict.p_first is not None and b.verdict.p_first is not None]
    return {
        "pairs": len(pairs), "concurrency": concurrency,
        "completion_tokens_per_pair": statistics.mean(r.usage["completion_tokens"] for r in early),
        "full_completion_tokens_per_pair": statistics.mean(r.usage["completion_tokens"] for r in full),
        "soft_pairs": len(both_soft),
        "max_p_first_difference": max((abs(a - b) for a, b in both_soft), default=None),
        "same_winner": sum(a.verdict.winner == b.verdict.winner for a, b in zip(full, early)),
        "decisive_texts": dict(Counter(r.text for r in early).most_common(5)),
    }


# -- the profile ----------------------------------------------------------------------------------------------

def profile(server: Server, pairs: list[list[Path]], log: Callable[[str], None], top: int = 25) -> dict[str, Any]:
    """py-spy on every API-server process while our client sends `pairs`: the share of GIL samples (the Python
    work) in each function, inclusive and self. Native work that releases the GIL (PIL's JPEG decoding, the
    image processor's torch ops) is counted by the OS figures, not here."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        return {"error": f"py-spy is not installed beside {sys.executable} (the bench extra)"}
    outputs, procs = [], []
    folder = Path(tempfile.mkdtemp(prefix="frontend-profile-"))
    for k, process in enumerate(server.processes.api_servers()):
        out = folder / f"api-{k}.txt"
        procs.append(subprocess.Popen([str(spy), "record", "--pid", str(process.pid), "--rate", str(PROFILE_HZ), "--gil",
                                       "--nonblocking", "--format", "raw", "--output", str(out)],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs.append(out)
    time.sleep(1.0)
    try:
        ours(server, pairs)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        messages = [proc.communicate(timeout=60)[0] for proc in procs]
    inclusive, own, total = Counter(), Counter(), 0
    for out in outputs:
        if not out.exists():
            continue
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            n = int(count)
            total += n
            frames = [_frame(f) for f in stack.split(";")]
            for frame in set(frames):
                inclusive[frame] += n
            own[frames[-1]] += n
    if not total:
        return {"error": "py-spy recorded no samples: " + " | ".join(m.strip()[-300:] for m in messages)}
    log(f"profile: {total} GIL samples over {len(outputs)} API-server process(es)")
    skip = ("threading.py", "runpy", "runners.py", "uvloop/", "serving/vllm_serve.py", "vllm/entrypoints/cli/serve.py")
    return {"tool": f"py-spy record --gil --nonblocking --rate {PROFILE_HZ}", "samples": total, "pairs": len(pairs),
            "inclusive": [{"share": round(n / total, 4), "function": f} for f, n in inclusive.most_common()
                          if not any(s in f for s in skip)][:top],
            "self": [{"share": round(n / total, 4), "function": f} for f, n in own.most_common(top)]}


def _frame(frame: str) -> str:
    """'name (path:line)' -> 'path: name' (lines dropped, so a function's samples add up)."""
    name, _, where = frame.partition(" (")
    return f"{where.rsplit(':', 1)[0].rstrip(')')}: {name}" if where else name


# -- one server -------------------------------------------------------------------------------------------------

def measure(server: Server, inputs: Inputs, size: dict[str, Any], log: Callable[[str], None],
            with_profile: bool) -> dict[str, Any]:
    """Every workload on one server; each way's runs interleaved, so a slow moment of the machine hits all."""
    pools = {name: Pool(inputs, name) for name in ("hot", "long", "group", "debias", "formats")}
    repeats, n = size["repeats"], size["hot"]
    long_tokens = get_task(LONG).typical_tokens
    log(f"{server.api_servers} API server(s): warm-up, untimed")
    warm = pools["hot"].pairs(min(n, 8))
    ours(server, warm), reference(server, warm)
    out: dict[str, Any] = {"api_servers": server.api_servers}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {w: {way: [] for way in ways} for w, ways in WAYS.items()}
    options = AsyncRewardClient(server.base_url).encode_options
    hot = get_task(HOT)
    for repeat in range(repeats):
        log(f"{server.api_servers} API server(s): repeat {repeat + 1}/{repeats}")
        for way in WAYS["hot_path"]:
            pairs = pools["hot"].pairs(n)
            if way == "prebuilt":
                requests = [build_request(hot, encode_media(hot, p, options), {"caption": CAPTION},
                                          model="UnifiedReward") for p in pairs]
                runs["hot_path"][way].append(server.timed(n, lambda: prebuilt(server, requests)))
            elif way == "reference":
                runs["hot_path"][way].append(server.timed(n, lambda: reference(server, pairs)))
            else:
                decode = "full" if way == "ours_full" else "decisive"
                runs["hot_path"][way].append(server.timed(n, lambda: ours(server, pairs, decode=decode)))
        for way in WAYS["long_answer"]:
            pairs = pools["long"].pairs(size["long"])
            send = (lambda: ours(server, pairs, task=LONG, output_tokens=long_tokens)) if way == "ours" else \
                (lambda: reference(server, pairs, task=LONG, output_tokens=long_tokens))
            runs["long_answer"][way].append(server.timed(len(pairs), send))
        g = size["group"]
        group_pairs = size["groups"] * g * (g - 1) // 2
        for way in WAYS["group"]:
            flat = pools["group"].take(size["groups"] * g)
            groups = [flat[k * g:(k + 1) * g] for k in range(size["groups"])]
            send = {"ours": lambda: our_groups(server, groups),
                    "ours_no_uuid": lambda: our_groups(server, groups, media_uuids=False),
                    "peers": lambda: peers_groups(server, groups)}[way]
            runs["group"][way].append(server.timed(group_pairs, send))
        for way in WAYS["debias"]:
            pairs = pools["debias"].pairs(size["debias"])
            runs["debias"][way].append(server.timed(len(pairs), lambda: ours(
                server, pairs, debias=True, media_uuids=way == "ours")))
        format_pairs = pools["formats"].pairs(size["formats"])  # one slice for the three: their bytes differ
        for way in WAYS["formats"]:
            requests = format_requests(format_pairs, way)
            runs["formats"][way].append(server.timed(len(requests), lambda: prebuilt(server, requests)))
    for workload, ways in runs.items():
        out[workload] = {way: repeated(r) for way, r in ways.items()}
        for way, figures in list(out[workload].items()):  # the keys the issue names: <way>_api_cpu_ms_per_pair
            out[workload][f"{way}_api_cpu_ms_per_pair"] = figures["api_cpu_ms_per_pair"]
            out[workload][f"{way}_pairs_per_api_process_s"] = 1000 / figures["api_cpu_ms_per_pair"]
    out["formats"]["bytes_per_image"] = {fmt: len(image_url(pools["formats"].images[0], fmt)) for fmt in WAYS["formats"]}
    if with_profile:
        log(f"{server.api_servers} API server(s): profiling the API server while our client sends the hot path")
        out["profile"] = profile(server, pools["hot"].pairs(size["profile_pairs"]), log)
    return out


def check_targets(result: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, (op, bound) in TARGETS.items():
        section, name = key.split(".")
        value = result.get(section, {}).get(name)
        met = value is not None and (value <= bound if op == "<=" else value >= bound)
        out[key] = {"value": value, "target": f"{op} {bound:g}", "met": met}
    decided = result["decisive"]
    out["decisive.same_winner"] = {"value": decided["same_winner"], "target": f"== {decided['pairs']}",
                                   "met": decided["same_winner"] == decided["pairs"]}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.frontend", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="a tiny server already running on this machine with VLLM_SERVER_DEV_MODE=1 "
                                           "(default: start one per --api-servers count)")
    parser.add_argument("--api-servers", type=int, nargs="+", default=[1, 2], help="API-server counts to measure")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes")
    parser.add_argument("--no-profile", dest="with_profile", action="store_false")
    parser.add_argument("--out", type=Path, default=Path("results/frontend.json"))
    parser.add_argument("--data-dir", type=Path, default=Path("results/bench-data"))
    args = parser.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"frontend [{time.perf_counter() - started:6.0f} s]: {message}", file=sys.stderr, flush=True)

    r, g = size["repeats"], size["group"]
    warm = 2 * min(size["hot"], 8)
    counts = {"hot": warm + 2 * size["hot"] * r * len(WAYS["hot_path"]) + 2 * size["profile_pairs"],
              "long": 2 * size["long"] * r * len(WAYS["long_answer"]),
              "group": size["groups"] * g * r * len(WAYS["group"]),
              "debias": 2 * size["debias"] * r * len(WAYS["debias"]),
              "formats": 2 * size["formats"] * r}
    inputs = Inputs(args.data_dir, size["image"], {f"frontend-{k}": v for k, v in counts.items()})
    log(f"preparing {sum(counts.values())} images (before any clock): {inputs.folder}")
    prepare_s = inputs.prepare()
    inputs_by_name = FrontendImages(inputs)
    command = " ".join(["python -m benchmarks.frontend", *(argv if argv is not None else sys.argv[1:])])
    result: dict[str, Any] = {"machine": machine(), "config": {"command": command, "date": time.strftime("%Y-%m-%d"),
                                                                "sizes": size, "prepare_s": prepare_s,
                                                                "our_concurrency": OUR_CONCURRENCY,
                                                                "reference_threads": REFERENCE_THREADS}}
    result["versions"] = result["machine"]["packages"]
    per_count: dict[str, Any] = {}
    if args.base_url:
        server = Server(args.base_url)
        per_count[str(server.api_servers)] = measure(server, inputs_by_name, size, log, args.with_profile)
        result["decisive"] = decisive(server, inputs_by_name.pairs_for_decisive(size["decisive"]),
                                      size["decisive_concurrency"])
    else:
        from unifiedreward.serving.process import ServerProcess

        for k, count in enumerate(args.api_servers):
            process = ServerProcess(["--model", "tiny", "--api-server-count", str(count)],
                                    env={"VLLM_SERVER_DEV_MODE": "1"},
                                    log_path=args.out.parent / f"frontend-server-{count}.log")
            log(f"starting the tiny server with {count} API server(s)")
            try:
                process.start().wait_ready()
                server = Server(process.base_url)
                if server.api_servers != count:
                    raise RuntimeError(f"frontend: asked for {count} API servers, the server runs {server.api_servers}")
                per_count[str(count)] = measure(server, inputs_by_name, size, log, args.with_profile and k == 0)
                if k == 0:
                    log(f"decisive: {size['decisive']} pairs with logprobs, full then decisive")
                    result["decisive"] = decisive(server, inputs_by_name.pairs_for_decisive(size["decisive"]),
                                                  size["decisive_concurrency"])
            finally:
                process.stop()
    base = per_count[min(per_count, key=int)]
    for workload in WAYS:
        result[workload] = base[workload]
    result["profile"] = base.get("profile", {"skipped": "--no-profile"})
    result["per_api_servers"] = per_count
    result["targets"] = check_targets(result)
    result["config"]["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for count, figures in per_count.items():
        print(f"{count} API server(s): API CPU ms per pair: " + ", ".join(
            f"{w}.{way} {figures[w][way]['api_cpu_ms_per_pair']:.1f}" for w in ("hot_path", "group", "debias")
            for way in WAYS[w]))
    for key, target in result["targets"].items():
        value = "n/a" if target["value"] is None else f"{target['value']:.4g}"
        print(f"{key:40s} {value:>10}  target {target['target']:8s} {'met' if target['met'] else 'MISSED'}")
    print(f"frontend: wrote {args.out} in {result['config']['seconds']:.0f} s")
    return 0


class FrontendImages:
    """The frontend's image pools under their own names in the shared bench-data folder."""

    def __init__(self, inputs: Inputs) -> None:
        self._inputs = inputs

    def images(self, name: str) -> list[Path]:
        return self._inputs.images(f"frontend-{name}")

    def pairs_for_decisive(self, count: int) -> list[list[Path]]:
        """Pairs for the deciding-token check: the hot path's images, cycled (a cache hit changes no token)."""
        flat = self._inputs.images("frontend-hot")
        return [[flat[(2 * i) % len(flat)], flat[(2 * i + 1) % len(flat)]] for i in range(count)]


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
