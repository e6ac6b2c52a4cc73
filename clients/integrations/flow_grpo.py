"""flow_grpo (and its forks): a reward factory in the shape of `flow_grpo/rewards.py`.

    from unifiedreward.clients.integrations.flow_grpo import unifiedreward_score
    score_fn = unifiedreward_score(device, base_url="http://reward:8000/v1")
    scores, info = score_fn(images, prompts, metadata)      # images: N x C x H x W float in [0, 1]

flow_grpo calls its reward functions from a ThreadPoolExecutor: the function is thread-safe (one shared
client with its own event loop and connection pool). `scores` is a list of floats, one per image; `info`
holds the per-axis scores, the reward kind, and a `failed` mask with the errors. A failed item raises its
error (default) or, with on_error="nan", is NaN in `scores` and True in `info["failed"]`: never the 0.0
flow_grpo's own UnifiedReward scorer puts in its place.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from unifiedreward.prompts import get_task

from .._types import Item, Result
from ..errors import BadInputError
from ._common import axis_scores, check_on_error, endpoints, failed_value, images_of, shared_client

ScoreFn = Callable[..., tuple[list[float], dict[str, Any]]]


def unifiedreward_score(device: Any = None, *, base_url: str | Sequence[str] | None = None,
                        task: str = "image_gen.point_score_acs", on_error: str = "raise", concurrency: int = 64,
                        constraint: str = "auto", logprobs: bool = False, **client_options: Any) -> ScoreFn:
    """A flow_grpo reward function scoring each image against its prompt with a pointwise image task.
    `device` is accepted for the factory's signature and unused: the model runs on the server.
    client_options: RewardClient options (api_key, timeout, max_retries, max_pixels, ...)."""
    check_on_error(on_error, ("raise", "nan"))
    spec = get_task(task)
    if spec.media.kind != "image" or spec.media.count != 1 or "caption" not in spec.fields:
        raise ValueError(f"{task}: flow_grpo scores one image against its prompt: use a pointwise image task "
                         f"(image_gen.point_score_acs, image_gen.point_score)")
    client = shared_client(endpoints(base_url), **client_options)

    def unifiedreward(images: Any, prompts: Sequence[str], metadata: Any = None) -> tuple[list[float], dict[str, Any]]:
        batch = images_of(images)
        if len(batch) != len(prompts):
            raise BadInputError(f"{len(batch)} images but {len(prompts)} prompts")
        items = [Item(spec, [image], {"caption": prompt}, id=i) for i, (image, prompt) in enumerate(zip(batch, prompts))]
        results = client.score_batch(items, concurrency=concurrency, constraint=constraint, logprobs=logprobs)
        return scores_and_info(results, on_error, f"unifiedreward {task}")

    unifiedreward.__name__ = f"unifiedreward_{task.replace('.', '_')}"
    return unifiedreward


def scores_and_info(results: Sequence[Result], on_error: str, where: str) -> tuple[list[float | None], dict[str, Any]]:
    """Rewards in order, and per-item details: each axis's score (NaN where the item failed)."""
    scores: list[float | None] = []
    info: dict[str, Any] = {"failed": [], "error": [], "reward_kind": []}
    axes: dict[str, list[float]] = {}
    for index, result in enumerate(results):
        if result.ok:
            scores.append(result.reward)
            for axis, value in axis_scores(result).items():
                axes.setdefault(axis, [math.nan] * len(results))[index] = value
        else:
            scores.append(failed_value(result, on_error, where))
        info["failed"].append(not result.ok)
        info["error"].append(result.error)
        info["reward_kind"].append(result.reward_kind)
    info.update(axes)
    return scores, info
