"""One parser per output format, fed the reference's examples, realistic variations and malformed text."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from unifiedreward.prompts import (FinalScoreVerdict, PairScoreVerdict, RankVerdict, ScoreVerdict, TASKS, VerdictError,
                     get_task)


def parse(name: str, text: str):
    return get_task(name).parse(text)


# --- every example output in the reference parses to its numbers --------------------------------

REFERENCE = json.loads((Path(__file__).parents[1] / "data" / "unifiedreward-tasks.json").read_text())
WITH_EXAMPLES = sorted(t["task"] for t in REFERENCE if t["example_output"] is not None)


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"(?<![\w(-])\d+\.\d+|(?<=: )\d+(?=\n|$)", text)]


def test_the_reference_has_examples_for_five_tasks():
    assert len(WITH_EXAMPLES) == 5 and set(WITH_EXAMPLES) <= set(TASKS)


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_reference_example_parses_to_its_numbers(name, reference_tasks):
    example = reference_tasks[name]["example_output"]
    verdict = parse(name, example)
    if isinstance(verdict, RankVerdict):
        assert verdict.winner == 1  # 'Image 1 is better.'
        return
    if isinstance(verdict, PairScoreVerdict):
        got = [x for pair in verdict.scores.values() for x in pair]
    else:
        got = list(verdict.scores.values())
    assert got == numbers(example)
    assert 0.0 <= verdict.reward <= 1.0


# --- choice (pair_rank) ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, text, winner, reward", [
    ("image_gen.pair_rank", "Image 1 is better.", 1, 1.0),
    ("image_gen.pair_rank", "Image 2 is better.", 2, 0.0),
    ("image_gen.pair_rank", "Both images are equally good.", None, 0.5),
    ("image_gen.pair_rank", "**Image 2 is better.**", 2, 0.0),
    ("image_gen.pair_rank", "image 1 IS better", 1, 1.0),
    ("image_gen.pair_rank", "Image 2 is better. On reflection, Image 1 is better.", 1, 1.0),
    ("image_gen.pair_rank", "Conclusion:\n\n*Image   1 is\nbetter.*", 1, 1.0),
    ("video_gen.pair_rank", "Video 2 is better,", 2, 0.0),
    ("video_gen.pair_rank", "After comparing them: both videos are equally good.", None, 0.5),
    ("image_und.pair_rank", "Answer 1 is more accurate in colour... Therefore, Answer 2 is better.", 2, 0.0),
    ("image_und.pair_rank", "### Decision\n**Answer 1 is better**", 1, 1.0),
    ("video_und.pair_rank", "1. Accuracy: Answer 2 is better here.\n...\nOverall Judgment: Answer 1 is better "
                            "than Answer 2.", 1, 1.0),
])
def test_choice_parses(name, text, winner, reward):
    verdict = parse(name, text)
    assert isinstance(verdict, RankVerdict)
    assert (verdict.winner, verdict.reward) == (winner, reward)
    assert verdict.to_dict() == {"task": name, "reward": reward, "reward_kind": "hard", "winner": winner}


@pytest.mark.parametrize("name, text", [
    ("image_gen.pair_rank", ""),
    ("image_gen.pair_rank", "Image 3 is better."),
    ("image_gen.pair_rank", "Answer 1 is better."),
    ("video_gen.pair_rank", "Image 1 is better."),
    ("image_und.pair_rank", "Both answers are equally good."),  # the prompt allows no tie
    ("video_und.pair_rank", "I cannot decide between them."),
])
def test_choice_rejects_non_verdicts(name, text):
    with pytest.raises(VerdictError, match="no verdict"):
        parse(name, text)


def test_choice_constraints_are_the_phrases():
    assert get_task("image_gen.pair_rank").structured_outputs == {
        "choice": ["Image 1 is better.", "Image 2 is better.", "Both images are equally good."]}
    assert get_task("video_und.pair_rank").verdict_constraint == {
        "choice": ["Answer 1 is better", "Answer 2 is better"]}


# --- pair_scores -----------------------------------------------------------------------------------

PAIR = "Alignment Score:\n Image 1: {a1}\n Image 2: {a2}\n\nCoherence Score:\n Image 1: 0.3\n Image 2: 0.7" \
       "\n\nStyle Score:\n Image 1: 0.5\n Image 2: 0.5"


def test_pair_score_reward_is_the_first_items_mean_share():
    verdict = parse("image_gen.pair_score", PAIR.format(a1=0.8, a2=0.2))
    assert isinstance(verdict, PairScoreVerdict)
    assert verdict.scores == {"alignment": [0.8, 0.2], "coherence": [0.3, 0.7], "style": [0.5, 0.5]}
    assert verdict.reward == pytest.approx((0.8 + 0.3 + 0.5) / 3)


@pytest.mark.parametrize("text", [
    "**Alignment Score:**\n- Image 1: 0.8\n- Image 2: 0.2\n**Coherence Score:**\n- Image 1: 0.3\n- Image 2: 0.7\n"
    "**Style Score:**\n- Image 1: 0.5\n- Image 2: 0.5",
    "alignment score: image 1: 0.8, image 2: 0.2; coherence score: image 1: 0.3, image 2: 0.7; "
    "style score: image 1: 0.5, image 2: 0.5",
    PAIR.format(a1=0.1, a2=0.9) + "\n\nCorrection:\nAlignment Score:\n Image 1: 0.8\n Image 2: 0.2",
])
def test_pair_score_variations(text):
    assert parse("image_gen.pair_score", text).scores["alignment"] == [0.8, 0.2]


@pytest.mark.parametrize("a1, a2, reason", [
    (0.8, 0.3, "= 1.1, not 1"),
    (0.5, 0.2, "= 0.7, not 1"),
    (1.2, -0.2, "outside the range"),
    ("nan", 0.5, "not a finite number"),
    ("inf", 0.5, "not a finite number"),
])
def test_pair_score_rejects_bad_pairs(a1, a2, reason):
    with pytest.raises(VerdictError, match=re.escape(reason)):
        parse("image_gen.pair_score", PAIR.format(a1=a1, a2=a2))


def test_pair_score_rejects_a_missing_axis_and_the_wrong_item():
    with pytest.raises(VerdictError, match="missing 'Style Score'"):
        parse("image_gen.pair_score", PAIR.format(a1=0.8, a2=0.2).split("\n\nStyle")[0])
    with pytest.raises(VerdictError, match="missing"):
        parse("video_gen.pair_score", PAIR.format(a1=0.8, a2=0.2))


# --- axis_scores (ACS, APS, word-wise) -------------------------------------------------------------

ACS = "image_gen.point_score_acs"


@pytest.mark.parametrize("text, scores", [
    ("**Alignment Score (1-5):** 4\n**Coherence Score (1-5):** 3.5\n**Style Score (1-5):** 5",
     {"alignment": 4.0, "coherence": 3.5, "style": 5.0}),
    ("alignment score (1-5): 1\ncoherence score (1-5): 1.0\nstyle score (1-5):2",
     {"alignment": 1.0, "coherence": 1.0, "style": 2.0}),
    ("Alignment Score (1-5): 2\nCoherence Score (1-5): 3\nStyle Score (1-5): 3\nRevised: Alignment Score (1-5): 4",
     {"alignment": 4.0, "coherence": 3.0, "style": 3.0}),
])
def test_acs_variations(text, scores):
    assert parse(ACS, text).scores == scores


def test_aps_uses_physics():
    verdict = parse("video_gen.point_score_aps", "Alignment Score (1-5): 5\nPhysics Score (1-5): 1\nStyle Score (1-5): 3")
    assert verdict.scores == {"alignment": 5.0, "physics": 1.0, "style": 3.0}
    assert verdict.reward == pytest.approx(0.5)
    with pytest.raises(VerdictError, match="missing 'Physics Score"):
        parse("video_gen.point_score_aps", "Alignment Score (1-5): 5\nCoherence Score (1-5): 1\nStyle Score (1-5): 3")


@pytest.mark.parametrize("text, reason", [
    ("Alignment Score (1-5): nan\nCoherence Score (1-5): 3\nStyle Score (1-5): 3", "finite"),
    ("Alignment Score (1-5): -inf\nCoherence Score (1-5): 3\nStyle Score (1-5): 3", "finite"),
    ("Alignment Score (1-5): 6\nCoherence Score (1-5): 3\nStyle Score (1-5): 3", "outside the range"),
    ("Alignment Score (1-5): 0.5\nCoherence Score (1-5): 3\nStyle Score (1-5): 3", "outside the range"),
    ("Alignment Score (1-5): 3\nStyle Score (1-5): 3", "missing 'Coherence Score"),
    ("", "missing"),
    ("Alignment Score (1-5): 3.\nCoherence Score (1-5): X\nStyle Score (1-5): 3", "missing 'Coherence"),
])
def test_acs_rejects_bad_values(text, reason):
    with pytest.raises(VerdictError, match=re.escape(reason)):
        parse(ACS, text)


WORDWISE = ('---\n\nWord-wise Scores: [["a", 0.1], ["red", 2.5], ["cat", 0], ["[No_mistakes]", 1.7]]\n\n'
            "Alignment Score (1-5): 3\nCoherence Score (1-5): 4\nStyle Score (1-5): 5")


def test_wordwise_gives_word_scores_and_axes():
    verdict = parse("image_gen.point_score_wordwise", WORDWISE)
    assert isinstance(verdict, ScoreVerdict)
    assert verdict.word_scores == [["a", 0.1], ["red", 2.5], ["cat", 0.0], ["[No_mistakes]", 1.7]]
    assert verdict.scores == {"alignment": 3.0, "coherence": 4.0, "style": 5.0}
    assert verdict.to_dict()["word_scores"][1] == ["red", 2.5]
    assert "word_scores" not in parse(ACS, WORDWISE).to_dict()


@pytest.mark.parametrize("text, reason", [
    (WORDWISE.split("\n\nAlign")[0], "missing 'Alignment"),
    (WORDWISE.replace("Word-wise Scores: ", "Scores: "), "missing 'Word-wise Scores"),
    (WORDWISE.replace('["red", 2.5]', '["red", NaN]'), "not finite"),
    (WORDWISE.replace('["red", 2.5]', '["red" 2.5]'), "not a valid list"),
    (WORDWISE.replace('["red", 2.5]', '["red", "high"]'), "is not [\"word\", score]"),
])
def test_wordwise_rejects_malformed(text, reason):
    with pytest.raises(VerdictError, match=re.escape(reason)):
        parse("image_gen.point_score_wordwise", text)


# --- final_score ---------------------------------------------------------------------------------

def test_image_point_score_elements_and_final():
    text = ("red cat (object): 1\nmat (object): 0\n- on (relation): 1\n\nFinal Score: 4")
    verdict = parse("image_gen.point_score", text)
    assert isinstance(verdict, FinalScoreVerdict)
    assert verdict.final_score == 4.0 and verdict.reward == pytest.approx(0.75)
    assert verdict.elements == [{"element": "red cat", "type": "object", "value": 1},
                                {"element": "mat", "type": "object", "value": 0},
                                {"element": "on", "type": "relation", "value": 1}]
    assert set(verdict.to_dict()) == {"task", "reward", "reward_kind", "final_score", "elements"}


def test_image_point_score_rejects_a_non_binary_element():
    with pytest.raises(VerdictError, match="element 'cat'"):
        parse("image_gen.point_score", "cat (object): 2\nFinal Score: 4")


def test_video_point_score_subscores():
    text = ("visual quality: 4\ntemporal consistency: 3\ndynamic degree: 2\ntext-to-video alignment: 1\n"
            "factual consistency: 2\nFinal Score: 7")
    verdict = parse("video_gen.point_score", text)
    assert verdict.scores == {"visual_quality": 4.0, "temporal_consistency": 3.0, "dynamic_degree": 2.0,
                              "text_to_video_alignment": 1.0, "factual_consistency": 2.0}
    assert verdict.final_score == 7.0 and verdict.reward == pytest.approx(6 / 9)
    with pytest.raises(VerdictError, match="missing 'dynamic degree'"):
        parse("video_gen.point_score", text.replace("dynamic degree: 2\n", ""))
    with pytest.raises(VerdictError, match="outside the range"):
        parse("video_gen.point_score", text.replace("visual quality: 4", "visual quality: 5"))
    with pytest.raises(VerdictError, match="not a whole number"):
        parse("video_gen.point_score", text.replace("Final Score: 7", "Final Score: 7.5"))


@pytest.mark.parametrize("name, text, final, reward", [
    ("image_und.point_score", "The response is accurate.\nFinal Score: 85", 85.0, 0.85),
    ("image_und.point_score", "Final Score: 40\nOn second thought...\n**Final Score:** 60", 60.0, 0.60),
    ("video_und.point_score", "Final Score: 3", 3.0, 0.5),
    ("video_und.point_score", "final score: 5", 5.0, 1.0),
])
def test_final_scores(name, text, final, reward):
    verdict = parse(name, text)
    assert (verdict.final_score, verdict.reward) == (final, pytest.approx(reward))
    assert set(verdict.to_dict()) == {"task", "reward", "reward_kind", "final_score"}


@pytest.mark.parametrize("name, text, reason", [
    ("image_und.point_score", "A fine answer.", "no 'Final Score: X'"),
    ("image_und.point_score", "Final Score: 120", "outside the range"),
    ("image_und.point_score", "Final Score: NaN", "not a finite number"),
    ("video_und.point_score", "Final Score: 0", "outside the range"),
    ("image_gen.point_score", "cat (object): 1\nFinal Score: 9", "outside the range"),
])
def test_final_score_rejects(name, text, reason):
    with pytest.raises(VerdictError, match=re.escape(reason)):
        parse(name, text)


# --- the constraints only admit answers that parse -------------------------------------------------

def compile_constraint(name: str) -> re.Pattern[str]:
    pattern = get_task(name).verdict_constraint["regex"]
    return re.compile(pattern.replace(r"\n", "\n"))


@pytest.mark.parametrize("name, text", [
    ("image_gen.point_score_acs", "Alignment Score (1-5): 2.6947\nCoherence Score (1-5): 5\nStyle Score (1-5): 1.0"),
    ("video_gen.point_score_aps", "Alignment Score (1-5): 2.4036\nPhysics Score (1-5): 3.0987\nStyle Score (1-5): 3.3889"),
    # The reference example on the constraint's 0.01 grid (the trained model writes 4 decimals unconstrained).
    ("video_gen.pair_score", "Alignment Score:\n Video 1: 0.47\n Video 2: 0.53\n\nCoherence Score:\n Video 1: "
                             "0.6\n Video 2: 0.40\n\nStyle Score:\n Video 1: 1\n Video 2: 0.0"),
    ("image_gen.point_score", "red cat (object): 1\nmat (object): 0\nFinal Score: 4"),
    ("image_gen.point_score_wordwise", 'Word-wise Scores: [["a", 0.1], ["[No_mistakes]", 1.7]]\n\n'
                                       "Alignment Score (1-5): 3\nCoherence Score (1-5): 4\nStyle Score (1-5): 5"),
    ("video_gen.point_score", "visual quality: 4\ntemporal consistency: 3\ndynamic degree: 2\n"
                              "text-to-video alignment: 1\nfactual consistency: 2\nFinal Score: 10"),
    ("video_und.point_score", "Final Score: 5"),
    ("image_und.point_score", "Final Score: 100"),
])
def test_constraint_accepts_well_formed_answers_that_parse(name, text):
    assert compile_constraint(name).fullmatch(text)
    parse(name, text)


@pytest.mark.parametrize("name, text", [
    ("image_gen.point_score_acs", "Alignment Score (1-5): 5.5\nCoherence Score (1-5): 5\nStyle Score (1-5): 1"),
    ("image_gen.point_score_acs", "Alignment Score (1-5): 0.9\nCoherence Score (1-5): 5\nStyle Score (1-5): 1"),
    ("image_gen.pair_score", "Alignment Score:\n Image 1: 1.5\n Image 2: 0.5\n\nCoherence Score:\n Image 1: 0.5\n"
                             " Image 2: 0.5\n\nStyle Score:\n Image 1: 0.5\n Image 2: 0.5"),
    ("video_gen.point_score", "visual quality: 5\ntemporal consistency: 3\ndynamic degree: 2\n"
                              "text-to-video alignment: 1\nfactual consistency: 2\nFinal Score: 10"),
    ("video_gen.point_score", "visual quality: 4\ntemporal consistency: 3\ndynamic degree: 2\n"
                              "text-to-video alignment: 1\nfactual consistency: 2\nFinal Score: 11"),
    ("video_und.point_score", "Final Score: 6"),
    ("image_gen.point_score", "Final Score: 4"),
])
def test_constraint_rejects_out_of_range_answers(name, text):
    assert not compile_constraint(name).fullmatch(text)


@pytest.mark.parametrize("name", ["image_gen.pair_score", "video_gen.pair_score"])
def test_pair_score_constraint_admits_exactly_the_complementary_pairs(name):
    """Every answer the constraint admits passes the parser's sum check (a grammar over two free numbers
    let the tiny model write 0.6666 + 1); every complementary pair on the 0.01 grid is admitted."""
    task, regex = get_task(name), compile_constraint(name)
    item = task.output.item
    block = "{axis} Score:\n " + item + " 1: {x}\n " + item + " 2: {y}"

    def answer(x: str, y: str) -> str:
        return "\n\n".join(block.format(axis=a, x=x, y=y) for a in task.output.axes)

    for k in range(101):
        for x in {f"{k / 100:.2f}", f"{k / 100:.2f}".rstrip("0").rstrip(".")}:
            y = f"{1 - k / 100:.2f}"
            assert regex.fullmatch(answer(x, y)), (x, y)
            verdict = task.parse(answer(x, y))
            assert verdict.scores["alignment"] == [float(x), float(y)]
    for x, y in [("0.6666", "1"), ("0.5", "0.6"), ("0.3", "0.3"), ("1", "1"), ("0.333", "0.667"), ("0.5", "0.5 ")]:
        assert not regex.fullmatch(answer(x, y)), (x, y)


def test_every_grammar_extreme_parses():
    regex = compile_constraint(ACS)
    for value in ("1", "1.0000", "4.9999", "5.0000"):
        text = "\n".join(f"{a} Score (1-5): {value}" for a in ("Alignment", "Coherence", "Style"))
        assert regex.fullmatch(text)
        assert math.isclose(parse(ACS, text).scores["style"], float(value))


# --- token budgets cover the longest constrained answer --------------------------------------------

@pytest.mark.parametrize("name", sorted(TASKS))
def test_budget_exceeds_the_longest_constrained_answer(name):
    """Under a grammar a model may spend a token per character; the budget needs one more for the stop token."""
    task = get_task(name)
    if not task.free_reasoning:
        assert task.max_tokens > task.output.max_verdict_chars()


@pytest.mark.parametrize("name, longest", [
    ("image_gen.pair_rank", "Both images are equally good."),
    ("image_gen.point_score_acs", "\n".join(f"{a} Score (1-5): 4.9999" for a in ("Alignment", "Coherence", "Style"))),
    ("image_gen.pair_score", "\n\n".join(f"{a} Score:\n Image 1: 1.00\n Image 2: 0.00"
                                         for a in ("Alignment", "Coherence", "Style"))),
    ("image_gen.point_score_wordwise",
     "Word-wise Scores: [" + ", ".join(['["' + "w" * 24 + '", 9.9999]'] * 32) + "]\n\n"
     + "\n".join(f"{a} Score (1-5): 4.9999" for a in ("Alignment", "Coherence", "Style"))),
    ("image_gen.point_score", "\n".join(["e" * 40 + " (" + "t" * 20 + "): 1"] * 10) + "\nFinal Score: 5"),
    ("video_gen.point_score", "\n".join(f"{d}: 4" for d in ("visual quality", "temporal consistency",
                                                            "dynamic degree", "text-to-video alignment",
                                                            "factual consistency")) + "\nFinal Score: 10"),
])
def test_max_verdict_chars_is_the_longest_admitted_answer(name, longest):
    constraint = get_task(name).verdict_constraint
    if "regex" in constraint:
        regex = re.compile(constraint["regex"].replace(r"\n", "\n"))
        assert regex.fullmatch(longest)
        assert not regex.fullmatch(longest + "0")
    assert get_task(name).output.max_verdict_chars() == len(longest)
    get_task(name).parse(longest)
