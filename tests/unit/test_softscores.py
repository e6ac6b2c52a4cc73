"""Soft scores from logprobs: hand-computed cases and responses recorded from the real server."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from unifiedreward.prompts import get_task

RECORDED = json.loads((Path(__file__).parents[1] / "data" / "recorded" / "tiny-logprobs.json").read_text())


def entry(token: str, alternatives: dict[str, float]) -> dict:
    """One `logprobs.content` item, as the OpenAI API returns it."""
    return {"token": token, "logprob": math.log(alternatives[token]),
            "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in alternatives.items()]}


def test_p_first_walks_the_decision_tokens():
    # P(Image)=0.6 then P(1)=0.75: P(1 wins)=0.45, P(2 wins)=0.15, P(tie)=0.4 -> p_first = 0.45 + 0.2.
    logprobs = [entry("Image", {"Image": 0.6, "Both": 0.4}), entry(" ", {" ": 1.0}),
                entry("1", {"1": 0.75, "2": 0.25}), entry(" is better.", {" is better.": 1.0})]
    verdict = get_task("image_gen.pair_rank").parse("Image 1 is better.", logprobs)
    assert verdict.winner == 1
    assert verdict.p_first == pytest.approx(0.65)
    assert verdict.reward == verdict.p_first
    assert verdict.to_dict()["p_first"] == pytest.approx(0.65)
    assert verdict.reward_kind == "soft" and verdict.hard_reward == 1.0
    assert verdict.to_dict()["reward_kind"] == "soft" and verdict.to_dict()["hard_reward"] == 1.0


def test_p_first_ignores_alternatives_outside_the_choices_and_renormalises():
    logprobs = [entry("Image", {"Image": 0.5, "The": 0.3, "Both": 0.2}), entry(" ", {" ": 1.0}),
                entry("2", {"2": 0.9, "1": 0.1}), entry(" is better.", {" is better.": 1.0})]
    verdict = get_task("image_gen.pair_rank").parse("Image 2 is better.", logprobs)
    # Among consistent first tokens: Image 5/7, Both 2/7. P(1 wins) = 5/7 * 0.1, P(tie) = 2/7.
    assert verdict.p_first == pytest.approx(5 / 7 * 0.1 + 0.5 * 2 / 7)


def test_p_first_in_free_text_uses_the_last_decision():
    text = "Answer 1 is fluent. Overall, Answer 2 is better"
    tokens = ["Answer", " ", "1", " is fluent.", " Overall,", " Answer", " ", "2", " is better"]
    logprobs = [entry(t, {t: 1.0}) for t in tokens]
    logprobs[7] = entry("2", {"2": 0.8, "1": 0.2})
    verdict = get_task("image_und.pair_rank").parse(text, logprobs)
    assert verdict.winner == 2 and verdict.p_first == pytest.approx(0.2)


def test_expected_score_of_a_digit():
    logprobs = [entry(t, {t: 1.0}) for t in ("Final", " Score", ":", " ")]
    logprobs.append(entry("4", {"4": 0.5, "5": 0.3, "3": 0.2}))
    verdict = get_task("video_und.point_score").parse("Final Score: 4", logprobs)
    assert verdict.final_score == 4.0
    assert verdict.expected_score == pytest.approx(4.1)
    assert verdict.reward == pytest.approx((4.1 - 1) / 4)
    assert verdict.reward_kind == "soft" and verdict.hard_reward == pytest.approx(0.75)


def test_soft_scores_are_absent_when_tokens_do_not_spell_the_text():
    logprobs = [entry("Image 2 is better.", {"Image 2 is better.": 1.0})]
    verdict = get_task("image_gen.pair_rank").parse("Image 1 is better.", logprobs)
    assert verdict.p_first is None and verdict.reward == 1.0
    assert "p_first" not in verdict.to_dict()
    assert verdict.reward_kind == "hard" and verdict.to_dict()["reward_kind"] == "hard"


@pytest.mark.parametrize("name, text, tokens", [
    # markdown around the verdict: the parser reads the plain phrase, the logprobs' offsets no longer hold
    ("image_gen.pair_rank", "**Image 1 is better.**", ["**", "Image", " ", "1", " is better.", "**"]),
    ("video_und.point_score", "**Final Score:** 4", ["**", "Final", " Score", ":**", " ", "4"]),
    # the score token split differently ("4" inside a longer token): no single digit to read
    ("video_und.point_score", "Final Score: 4", ["Final", " Score", ":", " 4"]),
])
def test_a_soft_score_that_cannot_be_read_says_the_reward_is_hard(name, text, tokens):
    """With logprobs, a verdict whose tokens cannot be aligned falls back to the hard reward, and says so
    (it used to be the same 0/1 number with nothing to tell it from a probability)."""
    verdict = get_task(name).parse(text, [entry(t, {t: 0.9, "x": 0.1}) for t in tokens])
    assert verdict.reward_kind == "hard" and verdict.reward == verdict.hard_reward
    assert verdict.to_dict()["reward_kind"] == "hard"


def test_no_expected_score_for_multi_digit_ranges():
    logprobs = [entry(t, {t: 1.0}) for t in ("Final", " Score", ":", " ", "8", "5")]
    verdict = get_task("image_und.point_score").parse("Final Score: 85", logprobs)
    assert verdict.expected_score is None and verdict.reward == pytest.approx(0.85)
    assert verdict.reward_kind == "hard" and not get_task("image_und.point_score").soft_scores


@pytest.mark.parametrize("response", RECORDED["responses"], ids=lambda r: r["task"])
def test_recorded_responses_give_probabilities_consistent_with_the_greedy_choice(response):
    task = get_task(response["task"])
    verdict = task.parse(response["text"], response["logprobs"])
    if hasattr(verdict, "p_first"):
        assert verdict.p_first is not None and 0.0 <= verdict.p_first <= 1.0
        if verdict.winner is not None and len(task.verdict_constraint["choice"]) == 2:
            assert (verdict.p_first >= 0.5) == (verdict.winner == 1)
    else:
        assert verdict.expected_score is not None
        assert 1.0 <= verdict.expected_score <= 5.0
    assert 0.0 <= verdict.reward <= 1.0
