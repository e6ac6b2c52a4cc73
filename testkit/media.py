"""Synthetic images that compress like real ones: smooth gradients and shapes with a little noise (pure
noise would be incompressible and overstate the bytes a client sends)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def synthetic_image(seed: int, size: int = 1024) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    colors = rng.uniform(0, 255, size=(3, 3))
    base = np.stack([c[0] + (c[1] - c[0]) * x + (c[2] - c[0]) * y for c in colors], axis=-1)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 9))):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 16, size // 3, 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + w, y0 + h), fill=fill)
    noisy = np.asarray(image, dtype=np.int16) + rng.integers(-6, 7, size=(size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
