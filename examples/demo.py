"""The main job, end to end on the tiny checkpoint: start the real vLLM server, score one item per task
through the client, print the verdicts, stop the server.

    make demo        (or: python examples/demo.py after `make setup`)

The tiny checkpoint has random weights: its verdicts are well-formed (constrained decoding) but
meaningless. Serve the real model (`make serve`) and point the client at it for real rewards.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

from unifiedreward.clients import RewardClient
from unifiedreward.prompts import TASKS
from unifiedreward.serving.process import ServerProcess

CAPTION = "a red circle above a blue square on a white background"
FIELDS = {
    "caption": CAPTION,
    "question": "Which shape is on top?",
    "answer1": "A red circle is above the blue square.",
    "answer2": "A blue square is above the red circle.",
    "response": "The red circle is on top.",
}


def synthetic_image(good: bool, size: int = 768) -> Image.Image:
    """A picture that matches the caption (good) or gets it wrong."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    top, bottom = ("red", "blue") if good else ("blue", "red")
    draw.ellipse((size * 0.3, size * 0.05, size * 0.7, size * 0.45), fill=top)
    draw.rectangle((size * 0.3, size * 0.55, size * 0.7, size * 0.95), fill=bottom)
    return image


def synthetic_video(good: bool, frames: int) -> list[Image.Image]:
    """A video as frames: the picture, drifting a little from frame to frame."""
    base = synthetic_image(good, size=384)
    return [base.rotate(3 * i, fillcolor="white") for i in range(frames)]


def media_for(task) -> list:
    if task.media.kind == "image":
        return [synthetic_image(True), synthetic_image(False)][: task.media.count]
    return [synthetic_video(good, task.media.frames) for good in (True, False)][: task.media.count]


def shorten(text: str, limit: int = 240) -> str:
    return text if len(text) <= limit else text[: limit - 5] + " ..."


def main() -> int:
    cache = Path(os.environ.get("UNIFIEDREWARD_CACHE", ".cache"))
    print("demo: starting the vLLM server on the tiny checkpoint (about 2 minutes on 2 CPU cores)...", flush=True)
    started = time.perf_counter()
    with ServerProcess(["--model", "tiny"], log_path=cache / "demo-server.log") as server:
        print(f"demo: server ready at {server.base_url} after {time.perf_counter() - started:.0f} s "
              f"(log: {server.log_path})", flush=True)
        failures = 0
        with RewardClient(server.base_url) as client:
            for name, task in TASKS.items():
                fields = {f: FIELDS[f] for f in task.fields}
                # Free-reasoning tasks would ramble on random weights: ask for the verdict only.
                constraint = "verdict" if task.free_reasoning else "auto"
                result = client.score(name, media_for(task), constraint=constraint, logprobs=True, **fields)
                if not result.ok:  # under its constraint every task parses, random weights or not
                    failures += 1
                    print(f"\n{name}: ERROR {result.error_type}: {result.error}")
                    continue
                print(f"\n{name}  ({result.latency_s * 1000:.0f} ms, {result.usage['prompt_tokens']} prompt tokens)")
                print(f"  model said: {shorten(repr(result.text))}")
                print(f"  verdict:    {shorten(json.dumps(result.verdict.to_dict()))}")
                print(f"  reward:     {result.reward:.4f} ({result.reward_kind})")
    print("\ndemo: server stopped. Random weights: the verdicts are well-formed (constrained decoding), not meaningful.")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
