"""Verdicts read at the deciding token, on the live tiny server (real engine, real Qwen tokenizer, 2 API servers):
over 200 pairs with logprobs, decode="decisive" gives the p_first and the winner decode="full" gives, with at
most 3 completion tokens per pair on average."""
from __future__ import annotations

import statistics

from unifiedreward.clients import Item, RewardClient
from tests.helpers import picture

PAIRS = 200


def test_decisive_verdicts_equal_the_full_ones_over_200_pairs(live_server, report_figure):
    images = [picture(40_000 + k, size=128) for k in range(PAIRS + 1)]
    items = [Item("image_gen.pair_rank", [images[k], images[k + 1]], {"caption": "a red cat"}, id=k)
             for k in range(PAIRS)]
    with RewardClient(live_server.base_url) as client:
        full = client.score_batch(items, concurrency=16, logprobs=True, decode="full")
        early = client.score_batch(items, concurrency=16, logprobs=True)  # the default: decisive
    assert all(r.ok for r in full + early), [r.error for r in full + early if not r.ok][:3]
    assert all(r.reward_kind == "soft" for r in full + early)
    for a, b in zip(full, early):
        assert b.text in ("Image 1", "Image 2", "Both"), b.text  # stopped at the deciding token
        assert a.text.startswith(b.text) and a.verdict.winner == b.verdict.winner
        assert abs(a.verdict.p_first - b.verdict.p_first) <= 1e-4, (a.verdict, b.verdict)
    tokens = statistics.mean(r.usage["completion_tokens"] for r in early)
    full_tokens = statistics.mean(r.usage["completion_tokens"] for r in full)
    assert tokens <= 3.0, f"{tokens:.2f} completion tokens per pair"
    worst = max(abs(a.verdict.p_first - b.verdict.p_first) for a, b in zip(full, early))
    report_figure(f"decisive: {PAIRS} pairs, {tokens:.2f} completion tokens per pair (full: {full_tokens:.2f}), "
                  f"max |p_first difference| {worst:.2g}, same winner {PAIRS}/{PAIRS}")
