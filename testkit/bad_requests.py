"""The bad requests a shared endpoint must refuse, each built as a raw HTTP body.

Each case names the problem the 4xx message must mention and the layer that refuses it. Used by the
shared-endpoint tests (tests/e2e/test_shared_endpoint.py, tests/unit/test_guard.py) and by the soak run
(benchmarks/soak.py), so it lives in testkit, which both import.
"""
from __future__ import annotations

import base64
import functools
import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Callable

from PIL import Image

from .media import synthetic_image

PROMPT = "Is this a good picture? Answer yes or no."


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@functools.cache  # ~0.4 s to compress; every caller of cases() needs the same bytes
def bomb_png(width: int = 12000, height: int = 12000) -> bytes:
    """A valid PNG of width x height black pixels that compresses to ~100 KB: cheap to send, dear to decode."""
    row = b"\x00" + b"\x00" * width  # filter byte + one grey byte per pixel
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def chat(*parts: dict, model: str = "UnifiedReward", **extra) -> dict:
    content = [*parts, {"type": "text", "text": PROMPT}]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


@dataclass
class BadRequest:
    name: str
    build: Callable[[], bytes]  # the raw body
    problem: str  # a phrase the error message must contain (case-insensitive)
    status: tuple[int, ...] = (400,)
    path: str = "/v1/chat/completions"
    headers: dict[str, str] = field(default_factory=dict)
    # Who refuses it in the shared profile: "guard" (serving/guard.py) or "vllm" (vLLM's own checks).
    layer: str = "guard"


def _json(payload: dict) -> Callable[[], bytes]:
    return lambda: json.dumps(payload).encode()


def cases(local_listener_url: str, good_png: bytes) -> list[BadRequest]:
    truncated = good_png[: len(good_png) // 2]
    corrupt_mp4 = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8
    return [
        BadRequest("corrupt base64", _json(chat(image_part("data:image/png;base64,iVBORw0KGgo!!!not*base64")))
                   , "base64"),
        BadRequest("empty data", _json(chat(image_part("data:image/png;base64,"))), "empty"),
        BadRequest("non-image bytes", _json(chat(image_part(data_url(b"%PDF-1.4 this is not an image" * 20)))),
                   "not an image"),
        BadRequest("truncated PNG", _json(chat(image_part(data_url(truncated)))), "PNG"),
        BadRequest("decompression bomb", _json(chat(image_part(data_url(bomb_png())))), "pixels"),
        BadRequest("too many images", _json(chat(*[image_part(data_url(good_png))] * 17)), "at most 16"),
        BadRequest("file URL", _json(chat(image_part("file:///etc/passwd"))), "file"),
        BadRequest("http URL to a local listener", _json(chat(image_part(local_listener_url))), "does not fetch"),
        BadRequest("corrupt mp4", _json(chat({"type": "video_url", "video_url": {"url": data_url(corrupt_mp4, "video/mp4")}})),
                   "video", layer="vllm"),
        BadRequest("unknown model", _json(chat(image_part(data_url(good_png)), model="gpt-7")), "model",
                   status=(404,), layer="vllm"),
        BadRequest("malformed JSON", lambda: b'{"model": "UnifiedReward", "messages": [', "JSON"),
        BadRequest("oversized body", lambda: json.dumps(chat(image_part(data_url(b"\x89PNG" + b"\x00" * (40 << 20))))).encode(),
                   "limit", status=(413,)),
        BadRequest("max_tokens above the cap", _json(chat(image_part(data_url(good_png)), max_tokens=100000)),
                   "max_tokens"),
    ]


def good_request(good_png: bytes) -> bytes:
    return json.dumps(chat(image_part(data_url(good_png)))).encode()


def default_png() -> bytes:
    return png_bytes(synthetic_image(7, 256))
