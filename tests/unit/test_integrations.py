"""The framework adapters without a server: what each framework hands over becomes the right images and
text, a failure is never a number, and the endpoint is found as the framework gives it. The adapters
against the live server, called as each framework calls them: tests/e2e/test_integrations_live.py."""
from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from unifiedreward.clients import BadInputError
from unifiedreward.clients.integrations import flow_grpo, groups, trl, verl_omni
from unifiedreward.clients.integrations._common import _per_loop, endpoints, images_of, loop_client, text_of, video_frames_of
from tests.helpers import chat_reply

torch = pytest.importorskip("torch")

ACS = "Alignment Score (1-5): 4\nCoherence Score (1-5): 3\nStyle Score (1-5): 2"


def chat(text: str) -> dict:
    return {"id": "c", "object": "chat.completion", "created": 0, "model": "UnifiedReward",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def transport(answer=lambda body: ACS, seen: list | None = None) -> httpx.MockTransport:
    """Answers with `answer(request body)`; a body whose caption holds "refuse" gets a 400."""
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200)  # /health
        body = json.loads(request.content)
        if seen is not None:
            seen.append(body)
        if "refuse" in body["messages"][0]["content"][-1]["text"]:
            return httpx.Response(400, json={"error": {"message": "refused by the test"}})
        if body.get("stream"):  # rank_group streams its first wave
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "UnifiedReward",
                     "choices": [{"index": 0, "delta": {"content": answer(body)}, "finish_reason": "stop"}]}
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
        return chat_reply(request, chat(answer(body)))
    return httpx.MockTransport(handler)


def test_framework_images_become_hwc_uint8():
    nchw = torch.rand(3, 3, 40, 30)
    batch = images_of(nchw)
    assert [b.shape for b in batch] == [(40, 30, 3)] * 3 and batch[0].dtype == np.uint8
    assert batch[1][5, 7, 2] == round(float(nchw[1, 2, 5, 7]) * 255)
    assert images_of(torch.rand(2, 3, 16, 16, dtype=torch.bfloat16))[0].shape == (16, 16, 3)
    nhwc = (np.random.default_rng(0).random((2, 16, 24, 3)) * 255).astype(np.uint8)
    assert (images_of(nhwc)[1] == nhwc[1]).all()
    chw_uint8 = torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8)
    assert (images_of(chw_uint8)[0] == chw_uint8[0].permute(1, 2, 0).numpy()).all()
    pil = Image.new("RGB", (8, 8))
    assert images_of([pil, "a.png"]) == [pil, "a.png"]
    with pytest.raises(BadInputError, match="NaN"):
        images_of(torch.full((1, 3, 4, 4), float("nan")))
    with pytest.raises(BadInputError, match="channels"):
        images_of(torch.rand(1, 5, 4, 4))
    with pytest.raises(BadInputError, match="4 dimensions"):
        images_of(torch.rand(3, 4, 4))


def test_a_video_tensor_gives_the_task_frame_count_evenly():
    video = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 3, 4, 4).contiguous()
    frames = video_frames_of(video, 16)
    assert len(frames) == 16 and frames[0].shape == (4, 4, 3)
    assert [int(f[0, 0, 0]) for f in (frames[0], frames[-1])] == [0, 19]


def test_prompts_and_completions_as_text():
    assert text_of("plain") == "plain"
    prompt = [{"role": "system", "content": "be brief"},
              {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    assert text_of(prompt, role="user") == "What is shown?"
    assert text_of([{"role": "assistant", "content": "Two circles."}], role="assistant") == "Two circles."
    with pytest.raises(BadInputError, match="no user message"):
        text_of([{"role": "assistant", "content": "x"}], role="user")


def test_endpoints_as_frameworks_give_them(monkeypatch):
    assert endpoints(None, "10.0.0.5:8000") == ["http://10.0.0.5:8000/v1"]
    assert endpoints("http://a/v1") == ["http://a/v1"]
    monkeypatch.setenv("UNIFIEDREWARD_BASE_URL", "http://a:8000/v1, http://b:8000/v1")
    assert endpoints() == ["http://a:8000/v1", "http://b:8000/v1"]


def test_a_loop_client_is_closed_when_its_asyncio_run_ends():
    """A trainer that runs `asyncio.run(reward(...))` every step: each step's loop gets its own client, and
    that client's connections are closed when the loop ends, not left to the garbage collector."""
    async def step():
        client = loop_client(["http://127.0.0.1:9/v1"])
        assert loop_client(["http://127.0.0.1:9/v1"]) is client  # one per loop and configuration
        await asyncio.sleep(0)
        assert not client._http.is_closed
        loops.append(asyncio.get_running_loop())
        return client

    loops = []
    first = asyncio.run(step())
    assert first._http.is_closed
    second = asyncio.run(step())
    assert second is not first and second._http.is_closed
    assert not any(loop in _per_loop for loop in loops)  # and the ended loops are forgotten


def test_flow_grpo_scores_info_and_failures():
    seen: list = []
    score = flow_grpo.unifiedreward_score("cuda:0", base_url="http://stub/v1", transport=transport(seen=seen))
    scores, info = score(torch.rand(2, 3, 32, 32), ["a red cat", "a dog"], [{}, {}])
    assert scores == [pytest.approx(0.5), pytest.approx(0.5)]  # mean of (4, 3, 2) -> (3 - 1) / 4
    assert info["alignment"] == [4.0, 4.0] and info["failed"] == [False, False]
    assert sorted(b["messages"][0]["content"][-1]["text"].rsplit("[", 1)[1] for b in seen) == ["a dog]", "a red cat]"]
    with pytest.raises(BadInputError, match="2 images but 1 prompts"):
        score(torch.rand(2, 3, 32, 32), ["only one"], None)
    with pytest.raises(Exception, match="refused by the test"):
        score(torch.rand(2, 3, 32, 32), ["fine", "refuse this"], None)
    lenient = flow_grpo.unifiedreward_score(base_url="http://stub/v1", on_error="nan", transport=transport())
    scores, info = lenient(torch.rand(2, 3, 32, 32), ["fine", "refuse this"], None)
    assert scores[0] == pytest.approx(0.5) and math.isnan(scores[1])
    assert info["failed"] == [False, True] and "refused" in info["error"][1] and math.isnan(info["style"][1])


def test_verl_omni_caption_lookup_and_result():
    seen: list = []
    options = dict(transport=transport(seen=seen))

    async def main():
        image = torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)
        first = await verl_omni.compute_score("ds", image, "ground truth", {"prompt": "from prompt"},
                                              reward_router_address="stub:8000", **options)
        await verl_omni.compute_score("ds", image, "ground truth", {"raw_prompt": [{"role": "user",
                                                                                   "content": "from raw"}]},
                                      reward_router_address="stub:8000", **options)
        await verl_omni.compute_score("ds", image, "from ground truth", None, reward_router_address="stub:8000",
                                      model_name="CodeGoat24/UnifiedReward-2.0-qwen3vl-2b", **options)
        failed = await verl_omni.compute_score("ds", image, "refuse", {}, reward_router_address="stub:8000",
                                               on_error="nan", **options)
        return first, failed

    first, failed = asyncio.run(main())
    assert first == {"score": 0.5, "raw_score": 3.0, "alignment": 4.0, "coherence": 3.0, "style": 2.0,
                     "response": ACS}
    captions = [b["messages"][0]["content"][-1]["text"].rsplit("[", 1)[1][:-1] for b in seen]
    assert captions == ["from prompt", "from raw", "from ground truth", "refuse"]
    assert [b["model"] for b in seen[2:3]] == ["CodeGoat24/UnifiedReward-2.0-qwen3vl-2b"]
    assert math.isnan(failed["score"]) and "refused" in failed["error"]


def test_trl_reward_is_none_for_a_failed_row_and_counted():
    judge = trl.reward_func("http://stub/v1", task="image_und.point_score", constraint="verdict",
                            transport=transport(lambda body: "Final Score: 80"))
    metrics: dict = {}
    image = Image.new("RGB", (16, 16))

    async def main():
        return await judge(prompts=[[{"role": "user", "content": "What is shown?"}], "refuse"],
                           completions=[[{"role": "assistant", "content": "A square."}], "x"],
                           image=[image, [image]], log_metric=metrics.__setitem__, trainer_state=None)

    assert asyncio.run(main()) == [0.8, None]
    assert judge.__name__ == "unifiedreward_image_und_point_score" and metrics == {"unifiedreward/failed": 1.0}
    strict = trl.reward_func("http://stub/v1", on_error="raise", transport=transport(lambda body: "Final Score: 80"))
    with pytest.raises(Exception, match="refused"):
        asyncio.run(strict(prompts=["refuse"], completions=["x"], image=[image]))
    with pytest.raises(BadInputError, match="image_key"):
        asyncio.run(strict(prompts=["q"], completions=["x"], photo=[image]))


def test_win_rate_rewards_never_score_an_unjudged_candidate(tmp_path):
    good = [Image.new("RGB", (32, 32), (40 * i, 0, 0)) for i in range(3)]
    missing = str(tmp_path / "missing.png")
    stub = transport(lambda body: "Image 1 is better.")
    assert groups.win_rate_rewards(good, "c", base_url="http://stub/v1", transport=stub) == [1.0, 0.5, 0.0]
    with pytest.raises(BadInputError, match="not found"):
        groups.win_rate_rewards([*good, missing], "c", base_url="http://stub/v1", transport=stub)
    rewards = groups.win_rate_rewards([*good, missing], "c", base_url="http://stub/v1", on_error="none",
                                      transport=stub)
    assert rewards == [1.0, 0.5, 0.0, None]


def test_the_adapters_import_nothing_heavy():
    code = ("import sys; import unifiedreward.clients.integrations.flow_grpo, unifiedreward.clients.integrations.verl_omni, "
            "unifiedreward.clients.integrations.trl, unifiedreward.clients.integrations.groups; "
            "print(sorted(m for m in ('torch', 'trl', 'transformers', 'vllm') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
