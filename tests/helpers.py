"""Helpers shared by the tests: synthetic media, and vLLM's own argument parser for checking flags."""
from __future__ import annotations

import argparse
import random

from PIL import Image, ImageDraw


def picture(seed: int, size: int = 512) -> Image.Image:
    """A distinct synthetic picture per seed (distinct images never share a prefix-cache entry)."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(size), rng.randrange(size)
        draw.ellipse((x, y, x + rng.randrange(20, 200), y + rng.randrange(20, 200)),
                     fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


def frames(seed: int, count: int, size: int = 256) -> list[Image.Image]:
    """A 'video' as frames: a shape drifting across a background."""
    rng = random.Random(seed)
    background = tuple(rng.randrange(256) for _ in range(3))
    out = []
    for i in range(count):
        image = Image.new("RGB", (size, size), background)
        x = int(i * (size - 60) / max(count - 1, 1))
        ImageDraw.Draw(image).ellipse((x, size // 3, x + 60, size // 3 + 60), fill="red")
        out.append(image)
    return out


def vllm_parse(args: list[str]) -> argparse.Namespace:
    """Parse server arguments (ServeConfig.vllm_args(): --model first) with vLLM's own `serve` parser and its
    validation, the parser the launcher's command runs through (serving/vllm_serve.py)."""
    from unifiedreward.serving.vllm_serve import parse

    args = list(args)
    if args[:1] == ["--model"]:
        args = args[1:]  # `vllm serve MODEL`: the model is positional
    parsed = parse(["serve", *args])
    if parsed.model_tag is not None:  # what ServeSubcommand.cmd does first
        parsed.model = parsed.model_tag
    return parsed


def chat_reply(request, completion: dict, status: int = 200):
    """A scripted answer (httpx.MockTransport) in the form the request asked for: the chat completion as JSON,
    or, for a streamed request (the client reads every answer as a stream while it watches for stalls), the
    same answer as vLLM's server-sent events: the text and its logprobs, the finish reason, the usage, [DONE]."""
    import json

    import httpx

    body = json.loads(request.content or b"{}")
    if status != 200 or not body.get("stream"):
        return httpx.Response(status, json=completion)
    base = {"id": completion.get("id", "chatcmpl-1"), "object": "chat.completion.chunk", "created": 0,
            "model": completion.get("model", "UnifiedReward")}
    events = []
    for choice in completion["choices"]:
        message = choice.get("message") or {}
        events.append({**base, "choices": [{"index": choice.get("index", 0),
                                            "delta": {"role": "assistant", "content": message.get("content") or ""},
                                            "logprobs": choice.get("logprobs"), "finish_reason": None}]})
        events.append({**base, "choices": [{"index": choice.get("index", 0), "delta": {}, "logprobs": None,
                                            "finish_reason": choice.get("finish_reason")}]})
    if completion.get("usage"):
        events.append({**base, "choices": [], "usage": completion["usage"]})
    text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})


def metric_total(text: str, name: str, **labels: str) -> float:
    """A /metrics sample summed over its label sets (those matching `labels`): API processes, engines, tenants."""
    from benchmarks.metrics import sample_total

    return sample_total(text, name, **labels)
