"""The task catalogue: templates byte-identical to the authors', layouts and constraints."""
from __future__ import annotations

import pytest

from unifiedreward.prompts import TASKS, FieldError, MediaError, UnknownTaskError, get_task

ALL_TASKS = (
    "image_gen.pair_rank", "image_gen.pair_score", "image_gen.point_score", "image_gen.point_score_acs",
    "image_gen.point_score_wordwise", "image_und.pair_rank", "image_und.point_score", "video_gen.pair_rank",
    "video_gen.pair_score", "video_gen.point_score", "video_gen.point_score_aps", "video_und.pair_rank",
    "video_und.point_score",
)
FREE_REASONING = {"image_und.pair_rank", "image_und.point_score", "video_und.pair_rank"}
SAMPLE_FIELDS = {
    "caption": "a red {cat} on a mat, 100% \"fluffy\"",
    "question": "What is {shown}?",
    "answer1": "A cat.",
    "answer2": "A {dog}.",
    "response": "A cat on a mat.\nSecond line.",
}


def test_the_catalogue_is_complete(reference_tasks):
    assert set(TASKS) == set(ALL_TASKS) == set(reference_tasks)


@pytest.mark.parametrize("name", ALL_TASKS)
def test_template_and_render_are_byte_identical_to_reference(name, reference_tasks):
    ref = reference_tasks[name]
    task = get_task(name)
    assert task.template == ref["template"]
    assert task.fields == tuple(ref["fields"])
    assert task.source == ref["source"]
    fields = {f: SAMPLE_FIELDS[f] for f in ref["fields"]}
    assert task.render(**fields) == ref["template"].format(**fields)


@pytest.mark.parametrize("name", ALL_TASKS)
def test_media_layout_matches_the_reference(name, reference_tasks):
    task, media = get_task(name), reference_tasks[name]["media"]
    assert media.startswith(f"{task.media.count} {task.media.kind}")
    if task.media.kind == "video":
        assert task.media.frames in (8, 16)
        if "8 frames" in media:
            assert task.media.frames == 8


@pytest.mark.parametrize("name", ALL_TASKS)
def test_constraints_free_reasoning_and_budget(name):
    task = get_task(name)
    assert task.free_reasoning == (name in FREE_REASONING)
    assert (task.structured_outputs is None) == task.free_reasoning
    constraint = task.verdict_constraint
    assert set(constraint) <= {"choice", "regex"} and len(constraint) == 1
    assert task.max_tokens > 0


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(UnknownTaskError) as info:
        get_task("image_gen.pair_rnak")
    assert "image_gen.pair_rank" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_render_rejects_missing_unknown_and_non_string_fields():
    task = get_task("image_und.pair_rank")
    with pytest.raises(FieldError, match=r"missing \['answer2'\]"):
        task.render(question="q", answer1="a")
    with pytest.raises(FieldError, match="unexpected"):
        task.render(question="q", answer1="a", answer2="b", caption="c")
    with pytest.raises(FieldError, match="string"):
        task.render(question="q", answer1="a", answer2=3)


def test_messages_put_media_first_then_text():
    task = get_task("image_gen.pair_rank")
    messages = task.messages(["data:image/jpeg;base64,AAA", "https://x/y.png"], caption="a cat")
    assert len(messages) == 1 and messages[0]["role"] == "user"
    content = messages[0]["content"]
    assert [p["type"] for p in content] == ["image_url", "image_url", "text"]
    assert content[0]["image_url"]["url"] == "data:image/jpeg;base64,AAA"
    assert content[2]["text"] == task.render(caption="a cat")


def test_video_messages_as_frames_or_urls():
    task = get_task("video_gen.pair_rank")
    frames = [[f"data:image/jpeg;base64,V{v}F{f}" for f in range(8)] for v in (1, 2)]
    content = task.messages(frames, caption="c")[0]["content"]
    assert [p["type"] for p in content] == ["image_url"] * 16 + ["text"]
    assert content[0]["image_url"]["url"].endswith("V1F0") and content[8]["image_url"]["url"].endswith("V2F0")
    content = task.messages(["https://x/1.mp4", "https://x/2.mp4"], caption="c")[0]["content"]
    assert [p["type"] for p in content] == ["video_url", "video_url", "text"]


def test_messages_check_the_media_count():
    task = get_task("image_gen.pair_rank")
    with pytest.raises(MediaError, match="takes 2 image"):
        task.messages(["data:image/jpeg;base64,AAA"], caption="x")
    with pytest.raises(MediaError):
        task.messages("data:image/jpeg;base64,AAA", caption="x")
    with pytest.raises(MediaError, match="takes 1 video"):
        get_task("video_und.point_score").messages([], question="q", response="r")
    with pytest.raises(MediaError, match="at least one frame"):
        get_task("video_und.point_score").messages([[]], question="q", response="r")
