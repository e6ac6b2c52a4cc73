"""One GRPO group's rewards the way Pref-GRPO computes them: each candidate's win rate over all pairs of the
group (a tie counts half), judged pairwise by UnifiedReward.

    from unifiedreward.clients.integrations.groups import win_rate_rewards
    rewards = win_rate_rewards(group_images, caption, base_url="http://reward:8000/v1")   # one per image

Through `rank_group`: each candidate encoded once, the pairs ordered for vLLM's prefix cache, all pairs
(or a budget `pairs=` that still gives every candidate games), `debias=True` for both orders. A candidate
whose games all failed has no win rate: its error is raised (default), or its reward is NaN / None
(on_error="nan" / "none") with the failure logged. Never Pref-GRPO's 0.5.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from ._common import check_on_error, endpoints, images_of, log, shared_client


def win_rate_rewards(images: Any, caption: str, *, base_url: str | Sequence[str] | None = None,
                     task: str = "image_gen.pair_rank", pairs: int | None = None, debias: bool = False,
                     on_error: str = "raise", concurrency: int = 64, **client_options: Any) -> list[float | None]:
    """Win rates in input order. images: paths, PIL images, arrays or tensors (a list, or an N-image batch)."""
    check_on_error(on_error)
    client = shared_client(endpoints(base_url), **client_options)
    group = client.rank_group(task, images_of(images), pairs=pairs, debias=debias, concurrency=concurrency,
                              caption=caption)
    rewards: list[float | None] = []
    for index, rate in enumerate(group.win_rates):
        if rate is not None:
            rewards.append(rate)
            continue
        failures = [p for p in group.pairs if index in p.id and not p.ok]
        if on_error == "raise":
            failures[0].raise_for_error()
        log.warning("win_rate_rewards: candidate %d has no finished game (%s); its reward is %s", index,
                    failures[0].error if failures else "no pair compared it", "NaN" if on_error == "nan" else "None")
        rewards.append(math.nan if on_error == "nan" else None)
    return rewards
