"""Pref-GRPO / MixGRPO: one GRPO group's rewards as win rates over all pairs, judged pairwise.

    python examples/pref_grpo_groups.py
"""
from __future__ import annotations

from _endpoint import reward_endpoint
from PIL import Image, ImageDraw

from unifiedreward.clients.integrations.groups import win_rate_rewards


def candidate(i: int) -> Image.Image:
    image = Image.new("RGB", (512, 512), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((100, 20 + 20 * i, 300, 220 + 20 * i), fill="red")
    draw.rectangle((120, 300, 380, 480), fill="blue")
    return image


with reward_endpoint() as base_url:
    group = [candidate(i) for i in range(6)]          # one prompt's samples
    rewards = win_rate_rewards(group, "a red circle above a blue square", base_url=base_url)
    print("win rates:", [round(r, 3) for r in rewards])
