"""The authors' classic path: transformers `generate`, one request at a time, as in their per-task
inference scripts. Same checkpoint, same images, same pixel cap and output length as the served path."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from PIL import Image


def classic_generate(checkpoint: str | Path, jobs: Sequence[tuple[Sequence[Path], str]], new_tokens: int,
                     max_pixels: int, min_pixels: int) -> tuple[float, list[float]]:
    """Wall time of all jobs and each one's latency (model loading excluded)."""
    import torch
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(checkpoint)
    model = Qwen3VLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.bfloat16).eval()
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    latencies = []
    started = time.perf_counter()
    for paths, prompt in jobs:
        t0 = time.perf_counter()
        images = [Image.open(p).convert("RGB") for p in paths]
        messages = [{"role": "user", "content": [*({"type": "image"} for _ in images), {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=[text], images=images, return_tensors="pt", images_kwargs={"size": size})
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        latencies.append(time.perf_counter() - t0)
    return time.perf_counter() - started, latencies
