"""The framework adapters against the live server, each called the way its framework calls it: flow_grpo's
function from 8 threads with N x C x H x W float tensors; verl-omni's with C x H x W uint8 tensors, a
T x C x H x W video and the model path as model name; a real TRL GRPOTrainer training step; a GRPO group
with a corrupt image. And the server answering to the model path as well as to "UnifiedReward"."""
from __future__ import annotations

import asyncio
import base64
import io
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest

from unifiedreward.clients.integrations import flow_grpo, groups, trl, verl_omni
from unifiedreward.prompts import get_task
from tests.helpers import frames, picture

torch = pytest.importorskip("torch")
MODEL_PATH = "CodeGoat24/UnifiedReward-2.0-qwen3vl-2b"
CAPTION = "a red circle above a blue square"


def png_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def as_nchw(images) -> "torch.Tensor":
    return torch.stack([torch.from_numpy(np.asarray(i, dtype=np.float32) / 255.0).permute(2, 0, 1) for i in images])


@pytest.mark.parametrize("model", ["UnifiedReward", MODEL_PATH])
def test_the_server_answers_to_both_names(live_server, model):
    api = openai.OpenAI(base_url=live_server.base_url, api_key="EMPTY", max_retries=0)
    assert {"UnifiedReward", MODEL_PATH} <= {m.id for m in api.models.list().data}
    task = get_task("image_gen.pair_rank")
    urls = [png_url(picture(i, 64)) for i in range(2)]
    reply = api.chat.completions.create(model=model, messages=task.messages(urls, caption=CAPTION),
                                        max_tokens=task.max_tokens, extra_body={"structured_outputs": task.structured_outputs})
    assert task.parse(reply.choices[0].message.content).winner in (1, 2, None)


def test_flow_grpo_function_from_8_threads(live_server):
    """flow_grpo calls its reward functions from a ThreadPoolExecutor(max_workers=8) with float NCHW tensors."""
    score = flow_grpo.unifiedreward_score("cpu", base_url=live_server.base_url)
    batches = [(as_nchw([picture(10 * k + i, 128) for i in range(4)]), [f"{CAPTION} {k}-{i}" for i in range(4)])
               for k in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        outputs = list(pool.map(lambda batch: score(batch[0], batch[1], [{}] * 4), batches))
    for scores, info in outputs:
        assert len(scores) == 4 and info["failed"] == [False] * 4
        for index, reward in enumerate(scores):
            axes = [info[a][index] for a in ("alignment", "coherence", "style")]
            assert reward == pytest.approx(sum((a - 1) / 4 for a in axes) / 3)  # the acs verdict's own mapping


def test_verl_omni_scorer_with_images_video_and_the_model_path(live_server):
    address = live_server.base_url.removeprefix("http://").removesuffix("/v1")

    async def main():
        image = torch.from_numpy(np.array(picture(3, 128))).permute(2, 0, 1).contiguous()  # C x H x W uint8
        video = torch.stack([torch.from_numpy(np.array(f)).permute(2, 0, 1) for f in frames(4, 24, 128)])
        return await asyncio.gather(
            verl_omni.compute_score("t2i", image, CAPTION, {"prompt": CAPTION}, reward_router_address=address,
                                    model_name=MODEL_PATH),
            verl_omni.compute_score("t2v", video, "", {"raw_prompt": [{"role": "user", "content": CAPTION}]},
                                    reward_router_address=address, model_name=MODEL_PATH))

    image_result, video_result = asyncio.run(main())
    assert set(image_result) == {"score", "raw_score", "alignment", "coherence", "style", "response"}
    assert image_result["score"] == pytest.approx((image_result["raw_score"] - 1) / 4)
    assert "Alignment Score" in image_result["response"]
    assert set(video_result) == {"score", "raw_score", "alignment", "physics", "style", "response"}
    assert 0.0 <= video_result["score"] <= 1.0


def test_win_rate_rewards_with_a_corrupt_image(live_server, tmp_path):
    paths = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        picture(40 + i, 128).save(path)
        paths.append(path)
    paths[4].write_bytes(paths[4].read_bytes()[:150])  # truncated: cannot be decoded
    with pytest.raises(Exception, match="cannot decode"):
        groups.win_rate_rewards(paths, CAPTION, base_url=live_server.base_url)
    rewards = groups.win_rate_rewards(paths, CAPTION, base_url=live_server.base_url, on_error="none")
    assert rewards[4] is None
    assert all(isinstance(r, float) and 0.0 <= r <= 1.0 for i, r in enumerate(rewards) if i != 4)
    nan = groups.win_rate_rewards(paths, CAPTION, base_url=live_server.base_url, on_error="nan")
    assert math.isnan(nan[4]) and nan[:4] + nan[5:] == rewards[:4] + rewards[5:]


def test_a_real_trl_grpo_trainer_step_rewards_from_the_server(live_server, tmp_path):
    """TRL's own GRPOTrainer, one training step on CPU: a tiny random Qwen3 text policy (built here from a
    config, with the tiny checkpoint's tokenizer) answers questions about images; the reward function
    judges each answer on the live server. The rewards TRL logs are the ones the server gave."""
    datasets = pytest.importorskip("datasets")
    transformers = pytest.importorskip("transformers")
    trl_lib = pytest.importorskip("trl")
    from unifiedreward.serving.tiny import ensure_checkpoint

    tokenizer = transformers.AutoTokenizer.from_pretrained(ensure_checkpoint())
    config = transformers.Qwen3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                                      tie_word_embeddings=True)
    torch.manual_seed(0)
    policy = transformers.AutoModelForCausalLM.from_config(config)
    # The images go in a column not named image/images: those switch TRL to multimodal training.
    dataset = datasets.Dataset.from_dict({"prompt": [f"What is shown in picture {i}?" for i in range(4)],
                                          "picture": [picture(60 + i, 96) for i in range(4)]})
    judge = trl.reward_func(live_server.base_url, task="image_und.point_score", image_key="picture",
                            constraint="verdict", on_error="raise")
    returned: list[list[float]] = []

    async def recorded(**kwargs):
        rewards = await judge(**kwargs)
        returned.append(rewards)
        return rewards

    recorded.__name__ = judge.__name__
    args = trl_lib.GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                              max_completion_length=8, max_steps=1, logging_steps=1, use_cpu=True, report_to=[],
                              save_strategy="no", bf16=False)
    trainer = trl_lib.GRPOTrainer(model=policy, processing_class=tokenizer, reward_funcs=[recorded], args=args,
                                  train_dataset=dataset)
    trainer.train()
    assert returned and all(len(batch) == 4 for batch in returned)
    flat = [r for batch in returned for r in batch]
    assert all(r is not None and 0.0 <= r <= 1.0 for r in flat)  # Final Score (0-100) / 100, from the server
    logged = [entry for entry in trainer.state.log_history if f"rewards/{judge.__name__}/mean" in entry]
    assert logged and logged[0][f"rewards/{judge.__name__}/mean"] == pytest.approx(sum(flat) / len(flat), abs=1e-5)
