"""TRL: a real GRPOTrainer step with UnifiedReward judging the policy's answers about images. The policy
here is a tiny random Qwen3 text model built on the spot (CPU, seconds); use your VLM in practice.

    python examples/trl_grpo.py
"""
from __future__ import annotations

import torch
import transformers
from _endpoint import reward_endpoint
from datasets import Dataset
from PIL import Image, ImageDraw
from trl import GRPOConfig, GRPOTrainer

from unifiedreward.clients.integrations.trl import reward_func
from unifiedreward.serving.tiny import ensure_checkpoint


def picture(i: int) -> Image.Image:
    image = Image.new("RGB", (256, 256), "white")
    ImageDraw.Draw(image).ellipse((40 + 10 * i, 40, 160, 160), fill=("red", "blue", "green", "black")[i % 4])
    return image


tokenizer = transformers.AutoTokenizer.from_pretrained(ensure_checkpoint())
policy = transformers.AutoModelForCausalLM.from_config(transformers.Qwen3Config(
    vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
    num_key_value_heads=1, head_dim=32))
# A text policy: the images live in a column not named image/images (those switch TRL to multimodal training).
dataset = Dataset.from_dict({"prompt": [f"What is in picture {i}?" for i in range(4)],
                             "picture": [picture(i) for i in range(4)]})

with reward_endpoint() as base_url:
    # constraint="verdict": the tiny server's random weights would ramble; a trained model needs no constraint.
    judge = reward_func(base_url, task="image_und.point_score", image_key="picture", constraint="verdict")
    config = GRPOConfig(output_dir="results/trl-example", per_device_train_batch_size=4, num_generations=4,
                        max_completion_length=16, max_steps=2, logging_steps=1, use_cpu=True, report_to=[],
                        save_strategy="no", bf16=False)
    trainer = GRPOTrainer(model=policy, processing_class=tokenizer, reward_funcs=[judge], args=config,
                          train_dataset=dataset)
    torch.manual_seed(0)
    trainer.train()
    for entry in trainer.state.log_history:
        if f"rewards/{judge.__name__}/mean" in entry:
            print(f"step {entry.get('step')}: reward mean {entry[f'rewards/{judge.__name__}/mean']:.3f}")
