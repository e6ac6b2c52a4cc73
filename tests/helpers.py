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
    from serving.vllm_serve import parse

    args = list(args)
    if args[:1] == ["--model"]:
        args = args[1:]  # `vllm serve MODEL`: the model is positional
    parsed = parse(["serve", *args])
    if parsed.model_tag is not None:  # what ServeSubcommand.cmd does first
        parsed.model = parsed.model_tag
    return parsed
