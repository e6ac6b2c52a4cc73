"""Every one of the 13 tasks through the live server (videos as frames), parsed into typed verdicts."""
from __future__ import annotations

import math

import openai
import pytest

from unifiedreward.clients import UnparseableVerdictError
from unifiedreward.clients import EncodeOptions, build_request, encode_media
from unifiedreward.prompts import TASKS, FinalScoreVerdict, RankVerdict, Task, VerdictError, get_task
from tests.helpers import frames, picture

FIELDS = {"caption": "a red ball rolls across a green table", "question": "What moves in the scene?",
          "answer1": "A red ball rolls to the right.", "answer2": "Nothing moves.",
          "response": "A red ball rolls across the table."}


def media_for(task: Task, seed: int = 0) -> list:
    if task.media.kind == "image":
        return [picture(seed + i, size=256) for i in range(task.media.count)]
    return [frames(seed + v, task.media.frames) for v in range(task.media.count)]


def fields_for(task: Task) -> dict[str, str]:
    return {f: FIELDS[f] for f in task.fields}


@pytest.mark.parametrize("name", [n for n, t in TASKS.items() if not t.free_reasoning])
@pytest.mark.parametrize("seed", [0, 7])
def test_constrained_task_parses(client, name, seed):
    """Under its constraint every task's answer parses, random weights or not: the pair-score constraint
    admits only complementary pairs, so even the sum check cannot fail."""
    task = get_task(name)
    result = client.score(task, media_for(task, seed), **fields_for(task))
    result.raise_for_error()
    verdict = result.verdict
    assert verdict.task == name and 0.0 <= verdict.reward <= 1.0 and math.isfinite(verdict.reward)
    assert result.usage["completion_tokens"] <= task.max_tokens
    if task.media.kind == "video":  # every frame reached the model: at least 64 vision tokens each
        assert result.usage["prompt_tokens"] > task.media.count * task.media.frames * 64


@pytest.mark.parametrize("name", [n for n, t in TASKS.items() if t.free_reasoning])
def test_free_reasoning_task_parses_under_the_verdict_constraint(client, name):
    task = get_task(name)
    result = client.score(task, media_for(task), constraint="verdict", **fields_for(task))
    result.raise_for_error()
    assert result.verdict.task == name and 0.0 <= result.verdict.reward <= 1.0
    assert result.text in (task.decisive_stops or task.verdict_constraint.get("choice", [result.text]))


@pytest.mark.parametrize("name", [n for n, t in TASKS.items() if t.free_reasoning])
@pytest.mark.parametrize("max_tokens", [8, 512])
def test_free_reasoning_task_unconstrained_says_why_it_has_no_verdict(client, name, max_tokens):
    """Unconstrained, the random-weight model rambles. The client's outcome is checked against the answer
    it reports: cut at max_tokens -> the 'cut' error, never a verdict read from a cut answer; finished ->
    exactly what the parser says of that text, verdict or error."""
    task = get_task(name)
    result = client.score(task, media_for(task), max_tokens=max_tokens, **fields_for(task))
    assert result.text and result.usage["completion_tokens"] <= max_tokens
    if result.error and "cut at max_tokens" in result.error:
        assert result.error_type == "UnparseableVerdictError"
        assert result.usage["completion_tokens"] == max_tokens
        return
    try:
        expected = task.parse(result.text)
    except VerdictError as exc:
        assert result.error_type == "UnparseableVerdictError" and result.error == str(exc)
        assert isinstance(result.exception, UnparseableVerdictError) and result.exception.text == result.text
    else:
        assert result.ok and result.verdict == expected


@pytest.mark.parametrize("name, constraint", [
    ("image_gen.pair_rank", "auto"), ("video_gen.pair_rank", "auto"),
    ("image_und.pair_rank", "verdict"), ("video_und.pair_rank", "verdict"),
])
def test_p_first_is_a_probability_consistent_with_the_greedy_choice(client, name, constraint):
    task = get_task(name)
    for seed in range(3):
        result = client.score(task, media_for(task, seed * 10), constraint=constraint, logprobs=True,
                              **fields_for(task))
        result.raise_for_error()
        verdict = result.verdict
        assert isinstance(verdict, RankVerdict)
        assert verdict.p_first is not None and 0.0 <= verdict.p_first <= 1.0
        assert verdict.reward == verdict.p_first
        if len(task.verdict_constraint["choice"]) == 2:  # no tie: greedy picks the likelier answer
            assert (verdict.p_first >= 0.5) == (verdict.winner == 1)


@pytest.mark.parametrize("name", ["video_und.point_score", "image_gen.point_score"])
def test_expected_score_matches_the_score_tokens_distribution(live_server, name):
    """Checked against the raw response: the greedy digit is the likeliest, the expectation is in range."""
    task = get_task(name)
    api = openai.OpenAI(base_url=live_server.base_url, api_key="EMPTY")
    urls = encode_media(task, media_for(task), EncodeOptions("JPEG", 95, 65536, 262144))
    request = build_request(task, urls, fields_for(task), model="UnifiedReward", logprobs=True)
    choice = api.chat.completions.create(**request).choices[0]
    verdict = task.parse(choice.message.content, choice.logprobs.content)
    assert isinstance(verdict, FinalScoreVerdict) and verdict.expected_score is not None
    lo, hi = task.output.lo, task.output.hi
    assert lo <= verdict.expected_score <= hi
    digit = next(t for t in reversed(choice.logprobs.content) if t.token.isdigit())
    alternatives = {int(a.token): math.exp(a.logprob) for a in digit.top_logprobs
                    if a.token.isdigit() and lo <= int(a.token) <= hi}
    assert max(alternatives, key=alternatives.get) == int(verdict.final_score)
    total = sum(alternatives.values())
    assert verdict.expected_score == pytest.approx(sum(d * p for d, p in alternatives.items()) / total)
