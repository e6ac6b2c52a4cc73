"""Client feed rate: how many pairs per second one client process prepares and sends, the server out of the
picture. An HTTP stub on loopback answers every request at once (the one place a stub is right: the client
is what is measured); it runs in its own process so that its CPU is not counted as the client's.

    python -m benchmarks.feed [--pairs 600] [--rss-items 1000 10000 100000] [--out results/feed.json]

Reports, per input kind (2 x 1024^2 uint8 arrays in memory, as a trainer has them; 2 x 1024^2 PNG files;
2 x 512^2 PNG files; 2 x 1024^2 JPEG files): pairs/s, the client's CPU cores used, pairs/s per core; the
client's RSS after 1k, 10k and 100k items streamed (flat is the goal); and the client cores one H100 needs
at the performance model's rates (benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import psutil

from unifiedreward.clients import AsyncRewardClient, Item
from testkit.media import synthetic_image

TASK = "image_gen.pair_rank"
CAPTION = "a red circle above a blue square"
CONCURRENCY = 64
# The performance model's rates for one H100 (benchmarks/README.md): realistic utilisation and roofline.
H100_PAIRS_PER_S = {"model_high": 120.0, "roofline": 240.0}
ANSWER = json.dumps({"id": "stub", "object": "chat.completion", "created": 0, "model": "UnifiedReward",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "Image 1 is better."},
                                  "finish_reason": "stop", "logprobs": None}],
                     "usage": {"prompt_tokens": 600, "completion_tokens": 5, "total_tokens": 605}}).encode()
# The same answer streamed, as the client asks for it while it watches for stalls (stall_timeout).
_CHUNK = {"id": "stub", "object": "chat.completion.chunk", "created": 0, "model": "UnifiedReward"}
STREAMED = "".join(f"data: {json.dumps(event)}\n\n" for event in (
    {**_CHUNK, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Image 1"}, "logprobs": None,
                            "finish_reason": None}]},
    {**_CHUNK, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]},
    {**_CHUNK, "choices": [], "usage": {"prompt_tokens": 600, "completion_tokens": 3, "total_tokens": 603}},
)).encode() + b"data: [DONE]\n\n"


# -- the stub: HTTP/1.1 keep-alive, answers as soon as a request's body is in --------------------------

async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head_out = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(ANSWER))
    streamed_out = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n"
                    % len(STREAMED))
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            path = head.split(b" ", 2)[1]
            if path.endswith(b"/health"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            elif b'"stream":true' in body or b'"stream": true' in body:
                writer.write(streamed_out + STREAMED)
            else:
                writer.write(head_out + ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def _stub_main(port: multiprocessing.Value, ready: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    async def main() -> None:
        server = await asyncio.start_server(_serve_connection, "127.0.0.1", 0, limit=1 << 24)
        port.value = server.sockets[0].getsockname()[1]
        ready.set()
        await server.serve_forever()

    asyncio.run(main())


class Stub:
    """The answer-at-once server, in a child process."""

    def __enter__(self) -> "Stub":
        context = multiprocessing.get_context("spawn")
        self._port, self._ready = context.Value("i", 0), context.Event()
        self._process = context.Process(target=_stub_main, args=(self._port, self._ready), daemon=True)
        self._process.start()
        if not self._ready.wait(30):
            raise RuntimeError("the stub server did not start")
        self.base_url = f"http://127.0.0.1:{self._port.value}/v1"
        return self

    def __exit__(self, *exc: object) -> None:
        self._process.terminate()
        self._process.join(10)


# -- inputs, made before any clock ----------------------------------------------------------------------

def prepare_inputs(folder: Path, distinct: int = 16) -> dict[str, list[Any]]:
    """Per input kind, `distinct` images (pairs cycle through them): arrays, PNG and JPEG files."""
    kinds: dict[str, list[Any]] = {"array_1024": [], "png_1024": [], "png_512": [], "jpeg_1024": []}
    for i in range(distinct):
        image = synthetic_image(1000 + i, 1024)
        kinds["array_1024"].append(np.asarray(image))
        for kind, size, fmt in (("png_1024", 1024, "PNG"), ("png_512", 512, "PNG"), ("jpeg_1024", 1024, "JPEG")):
            path = folder / f"{kind}-{i}.{fmt.lower()}"
            (image if size == 1024 else image.resize((size, size))).save(path, format=fmt, quality=95)
            kinds[kind].append(path)
    return kinds


def pairs(media: list[Any], n: int) -> Iterator[Item]:
    k = len(media)
    for i in range(n):
        yield Item(TASK, [media[i % k], media[(i * 7 + 3) % k]], {"caption": CAPTION}, id=i)


# -- measurements -----------------------------------------------------------------------------------------

def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def feed(base_url: str, media: list[Any], n: int, concurrency: int) -> dict[str, float]:
    """n pairs over `media` through score_stream; wall time and the client process's CPU time."""
    async with AsyncRewardClient(base_url, max_retries=0) as client:
        warm = [result async for result in client.score_stream(pairs(media, 4))]  # connections, threads
        assert all(r.ok for r in warm), warm[0].error
        started, cpu = time.perf_counter(), cpu_seconds()
        count = failed = 0
        async for result in client.score_stream(pairs(media, n), concurrency=concurrency):
            count += 1
            failed += not result.ok
        wall, used = time.perf_counter() - started, cpu_seconds() - cpu
    if failed:
        raise RuntimeError(f"{failed} of {count} items failed against the stub")
    return {"pairs": count, "seconds": wall, "pairs_per_s": count / wall, "cpu_s": used,
            "cores_used": used / wall, "pairs_per_s_per_core": count / used}


async def rss_curve(base_url: str, checkpoints: list[int], concurrency: int) -> list[dict[str, float]]:
    """The client's RSS after 1k, 10k, 100k ... items streamed from a generator (256^2 arrays: the size
    of an image does not change what per-item bookkeeping costs, and the run stays minutes long)."""
    media = [np.asarray(synthetic_image(2000 + i, 256)) for i in range(16)]
    process = psutil.Process()
    marks, out = sorted(checkpoints), []
    async with AsyncRewardClient(base_url, max_retries=0) as client:
        count, started = 0, time.perf_counter()
        async for result in client.score_stream(pairs(media, marks[-1]), concurrency=concurrency):
            count += 1
            if not result.ok:
                raise RuntimeError(result.error)
            if count in marks:
                out.append({"items": count, "rss_mb": process.memory_info().rss / 2**20,
                            "seconds": time.perf_counter() - started})
                print(f"feed: rss after {count} items: {out[-1]['rss_mb']:.0f} MB", file=sys.stderr)
    return out


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "numpy": np.__version__, "pillow": __import__("PIL").__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.feed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=600, help="pairs per input kind")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--repeats", type=int, default=3, help="runs per input kind (the median is reported)")
    parser.add_argument("--distinct", type=int, default=16, help="distinct images per input kind")
    parser.add_argument("--rss-items", type=int, nargs="*", default=[1000, 10000, 100000])
    parser.add_argument("--kinds", nargs="*", default=["array_1024", "png_1024", "png_512", "jpeg_1024"])
    parser.add_argument("--out", type=Path, default=Path("results/feed.json"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        print("feed: preparing inputs (before any clock)", file=sys.stderr)
        inputs = prepare_inputs(Path(folder), args.distinct)
        result: dict[str, Any] = {"machine": machine(), "command": " ".join(["python -m benchmarks.feed", *sys.argv[1:]]),
                                  "concurrency": args.concurrency, "date": time.strftime("%Y-%m-%d"), "pairs": args.pairs,
                                  "repeats": args.repeats, "kinds": {}}
        with Stub() as stub:
            for kind in args.kinds:
                runs = [asyncio.run(feed(stub.base_url, inputs[kind], args.pairs, args.concurrency))
                        for _ in range(args.repeats)]
                figures = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                figures["pairs_per_s_min_max"] = [min(r["pairs_per_s"] for r in runs),
                                                  max(r["pairs_per_s"] for r in runs)]
                result["kinds"][kind] = figures
                print(f"feed: {kind:10s} {figures['pairs_per_s']:7.1f} pairs/s (median of {args.repeats}, "
                      f"{figures['pairs_per_s_min_max'][0]:.1f}-{figures['pairs_per_s_min_max'][1]:.1f}), "
                      f"{figures['cores_used']:.2f} cores, {figures['pairs_per_s_per_core']:.1f} pairs/s per core",
                      file=sys.stderr)
            if args.rss_items:
                result["rss"] = asyncio.run(rss_curve(stub.base_url, args.rss_items, args.concurrency))
    per_core = {kind: f["pairs_per_s_per_core"] for kind, f in result["kinds"].items()}
    result["cores_per_h100"] = {kind: {rate: round(pairs_per_s / value, 2) for rate, pairs_per_s in H100_PAIRS_PER_S.items()}
                                for kind, value in per_core.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
