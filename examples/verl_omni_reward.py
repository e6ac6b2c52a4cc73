"""verl-omni: UnifiedReward's scorer as verl-omni calls it (`compute_score_unified_reward`), with a C x H x W
uint8 image, a T x C x H x W video, the router address as `host:port` and the model path as model name.

    python examples/verl_omni_reward.py

In verl-omni: point the reward config's custom function at
`unifiedreward.clients.integrations.verl_omni.compute_score` (path: the installed module's file, name: compute_score).
"""
from __future__ import annotations

import asyncio

import torch
from _endpoint import reward_endpoint

from unifiedreward.clients.integrations.verl_omni import compute_score


async def main(address: str) -> None:
    image = torch.randint(0, 256, (3, 512, 512), dtype=torch.uint8)
    video = torch.randint(0, 256, (24, 3, 256, 256), dtype=torch.uint8)
    for name, media in (("image", image), ("video", video)):
        result = await compute_score("demo", media, "a red circle above a blue square",
                                     extra_info={"prompt": "a red circle above a blue square"},
                                     reward_router_address=address, model_name="CodeGoat24/UnifiedReward-2.0-qwen3vl-2b")
        print(name, {k: v for k, v in result.items() if k != "response"})


with reward_endpoint() as base_url:
    asyncio.run(main(base_url.removeprefix("http://").removesuffix("/v1")))
