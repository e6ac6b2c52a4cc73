"""flow_grpo: UnifiedReward as a reward function in flow_grpo's shape, called from 8 threads as its trainer
calls its rewards (`scripts/train_sd3.py`: a ThreadPoolExecutor) with N x C x H x W float images in [0, 1].

    python examples/flow_grpo_reward.py

In flow_grpo itself: add to flow_grpo/rewards.py
    from unifiedreward.clients.integrations.flow_grpo import unifiedreward_score
and name it in the config's reward dict (multi_score builds each reward with `name(device)`).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from _endpoint import reward_endpoint

from unifiedreward.clients.integrations.flow_grpo import unifiedreward_score

PROMPTS = ["a red circle above a blue square", "a cat wearing a hat", "two apples on a table", "a sailing boat"]

with reward_endpoint() as base_url:
    score_fn = unifiedreward_score("cuda", base_url=base_url, on_error="nan")   # device: unused, the model is remote
    batches = [torch.rand(len(PROMPTS), 3, 512, 512) for _ in range(8)]     # what a diffusion pipeline returns
    with ThreadPoolExecutor(max_workers=8) as pool:
        outputs = list(pool.map(lambda images: score_fn(images, PROMPTS, [{}] * len(PROMPTS)), batches))
    for k, (scores, info) in enumerate(outputs):
        print(f"batch {k}: scores {[round(s, 3) for s in scores]}  alignment {info['alignment']}  "
              f"failed {info['failed']}")
