"""Synthetic media for the tests."""
from __future__ import annotations

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
