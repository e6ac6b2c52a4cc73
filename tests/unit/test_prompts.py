"""The task catalogue: templates byte-identical to the authors', layouts, constraints and parsers."""
from __future__ import annotations

import math
import re

import pytest

from prompts import (TASKS, FieldError, MediaError, RankVerdict, ScoreVerdict, UnknownTaskError, VerdictError,
                     get_task)

SAMPLE_FIELDS = {
    "caption": "a red {cat} on a mat, 100% \"fluffy\"",
    "question": "What is shown?",
    "answer1": "A cat.",
    "answer2": "A {dog}.",
    "response": "A cat on a mat.",
}


def test_registry_is_not_empty_and_names_match_reference(reference_tasks):
    assert {"image_gen.pair_rank", "image_gen.point_score_acs"} <= set(TASKS)
    assert set(TASKS) <= set(reference_tasks)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_template_and_render_are_byte_identical_to_reference(name, reference_tasks):
    ref = reference_tasks[name]
    task = get_task(name)
    assert task.template == ref["template"]
    assert task.fields == tuple(ref["fields"])
    fields = {f: SAMPLE_FIELDS[f] for f in ref["fields"]}
    assert task.render(**fields) == ref["template"].format(**fields)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_has_source_and_budget(name):
    task = get_task(name)
    assert task.source.startswith("CodeGoat24/UnifiedReward (MIT)")
    assert task.max_tokens > 0


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(UnknownTaskError) as info:
        get_task("image_gen.pair_rnak")
    assert "image_gen.pair_rank" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_render_rejects_missing_unknown_and_non_string_fields():
    task = get_task("image_gen.pair_rank")
    with pytest.raises(FieldError, match="missing"):
        task.render()
    with pytest.raises(FieldError, match="unexpected"):
        task.render(caption="x", question="y")
    with pytest.raises(FieldError, match="string"):
        task.render(caption=3)


def test_messages_put_media_first_then_text():
    task = get_task("image_gen.pair_rank")
    messages = task.messages(["data:image/jpeg;base64,AAA", "https://x/y.png"], caption="a cat")
    assert len(messages) == 1 and messages[0]["role"] == "user"
    content = messages[0]["content"]
    assert [p["type"] for p in content] == ["image_url", "image_url", "text"]
    assert content[0]["image_url"]["url"] == "data:image/jpeg;base64,AAA"
    assert content[2]["text"] == task.render(caption="a cat")


def test_messages_check_the_media_count():
    task = get_task("image_gen.pair_rank")
    with pytest.raises(MediaError, match="takes 2 image"):
        task.messages(["data:image/jpeg;base64,AAA"], caption="x")
    with pytest.raises(MediaError):
        task.messages("data:image/jpeg;base64,AAA", caption="x")


# --- pair_rank (choice format) -------------------------------------------------------------------

@pytest.mark.parametrize("text, winner, reward", [
    ("Image 1 is better.", 1, 1.0),
    ("Image 2 is better.", 2, 0.0),
    ("Both images are equally good.", None, 0.5),
    ("**Image 2 is better.**", 2, 0.0),
    ("image 1 IS better", 1, 1.0),
    ("Looking at both... Image 2 is better. On reflection, Image 1 is better.", 1, 1.0),
    ("Image 1 is better at colour, but overall Image 2 is better.", 2, 0.0),
    ("Conclusion:\n\n*Image   1 is\nbetter.*", 1, 1.0),
])
def test_pair_rank_parses(text, winner, reward):
    verdict = get_task("image_gen.pair_rank").parse(text)
    assert isinstance(verdict, RankVerdict)
    assert (verdict.winner, verdict.reward) == (winner, reward)
    assert verdict.to_dict() == {"task": "image_gen.pair_rank", "reward": reward, "winner": winner}


@pytest.mark.parametrize("text", ["", "Image 3 is better.", "I cannot decide.", "Image 1 and Image 2"])
def test_pair_rank_rejects_non_verdicts(text):
    with pytest.raises(VerdictError, match="no verdict"):
        get_task("image_gen.pair_rank").parse(text)


def test_pair_rank_example_output(reference_tasks):
    example = reference_tasks["image_gen.pair_rank"]["example_output"]
    assert get_task("image_gen.pair_rank").parse(example).winner == 1


def test_pair_rank_constraint_is_the_three_phrases():
    assert get_task("image_gen.pair_rank").structured_outputs == {
        "choice": ["Image 1 is better.", "Image 2 is better.", "Both images are equally good."]}


# --- point_score_acs (axis_scores format) -------------------------------------------------------

ACS = "image_gen.point_score_acs"


def test_acs_example_output_parses_to_its_numbers(reference_tasks):
    verdict = get_task(ACS).parse(reference_tasks[ACS]["example_output"])
    assert isinstance(verdict, ScoreVerdict)
    assert verdict.scores == {"alignment": 2.694700002670288, "coherence": 2.371500015258789,
                              "style": 2.802500009536743}
    expected = sum((v - 1) / 4 for v in verdict.scores.values()) / 3
    assert verdict.reward == pytest.approx(expected)
    assert set(verdict.to_dict()) == {"task", "reward", "scores"}


@pytest.mark.parametrize("text, scores", [
    ("**Alignment Score (1-5):** 4\n**Coherence Score (1-5):** 3.5\n**Style Score (1-5):** 5",
     {"alignment": 4.0, "coherence": 3.5, "style": 5.0}),
    ("alignment score (1-5): 1\ncoherence score (1-5): 1.0\nstyle score (1-5):2",
     {"alignment": 1.0, "coherence": 1.0, "style": 2.0}),
    ("Alignment Score (1-5): 2\nCoherence Score (1-5): 3\nStyle Score (1-5): 3\n"
     "Revised: Alignment Score (1-5): 4", {"alignment": 4.0, "coherence": 3.0, "style": 3.0}),
])
def test_acs_variations(text, scores):
    assert get_task(ACS).parse(text).scores == scores


@pytest.mark.parametrize("text, reason", [
    ("Alignment Score (1-5): nan\nCoherence Score (1-5): 3\nStyle Score (1-5): 3", "finite"),
    ("Alignment Score (1-5): inf\nCoherence Score (1-5): 3\nStyle Score (1-5): 3", "finite"),
    ("Alignment Score (1-5): 6\nCoherence Score (1-5): 3\nStyle Score (1-5): 3", "outside the range"),
    ("Alignment Score (1-5): 0.5\nCoherence Score (1-5): 3\nStyle Score (1-5): 3", "outside the range"),
    ("Alignment Score (1-5): -2\nCoherence Score (1-5): 3\nStyle Score (1-5): 3", "outside the range"),
    ("Alignment Score (1-5): 3\nStyle Score (1-5): 3", "missing 'Coherence Score"),
    ("", "missing"),
    ("Alignment Score (1-5): 3.\nCoherence Score (1-5): X\nStyle Score (1-5): 3", "missing 'Coherence"),
])
def test_acs_rejects_bad_values(text, reason):
    with pytest.raises(VerdictError, match=re.escape(reason)):
        get_task(ACS).parse(text)


def test_acs_constraint_regex_accepts_the_format_and_only_in_range_values():
    pattern = get_task(ACS).structured_outputs["regex"]
    regex = re.compile(pattern.replace(r"\n", "\n"))
    ok = "Alignment Score (1-5): 2.6947\nCoherence Score (1-5): 5\nStyle Score (1-5): 1.0"
    assert regex.fullmatch(ok)
    assert get_task(ACS).parse(ok).scores["coherence"] == 5.0
    for bad in ("5.5", "0.9", "6", "nan"):
        assert not regex.fullmatch(ok.replace("5\n", bad + "\n"))
    # Every string the grammar allows parses (spot-check the extremes).
    for value in ("1", "1.0000", "4.9999", "5.0000"):
        text = "\n".join(f"{a} Score (1-5): {value}" for a in ("Alignment", "Coherence", "Style"))
        assert regex.fullmatch(text)
        assert math.isclose(get_task(ACS).parse(text).scores["style"], float(value))
