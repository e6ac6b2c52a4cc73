"""A performance check for the day a GPU is lent: the real Qwen3-VL-2B architecture with random BF16 weights
(built from its published configuration: no weights, no network, no vLLM), timing what one
`image_gen.pair_rank` request costs the GPU: the vision encoder on two 512 x 512 images, the prefill of the
~700-token prompt, and the decode steps of the ~7-token answer, at batch sizes 1 to 64.

    python -m benchmarks.gpu_forward                       # on a GPU: the real 2B architecture
    python -m benchmarks.gpu_forward --config tiny         # anywhere: the tiny checkpoint's sizes (a smoke test)

Prints, per batch size, the milliseconds of each stage, the achieved TFLOP/s (FLOPs counted from the
architecture: 2 x parameters x tokens, plus attention) and the pairs/s that bound implies, next to the
performance model in benchmarks/README.md (~240 pairs/s at the roofline, 80-120 expected). Writes JSON.
The language model runs on the vision embeddings' positions without DeepStack's injection (a few adds),
with 1-D positions (M-RoPE's cost is the same).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

# The published Qwen3-VL-2B configuration (Qwen/Qwen3-VL-2B-Instruct config.json), the architecture of
# UnifiedReward-2.0-qwen3vl-2b.
REAL = {
    "text": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                 rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                  "mrope_interleaved": True}, tie_word_embeddings=True),
    "vision": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, patch_size=16,
                   spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=2048, num_position_embeddings=2304,
                   deepstack_visual_indexes=[5, 11, 17]),
}
IMAGE_SIDE = 512  # the pixel cap: 1,024 patches, 256 merged tokens per image
TEXT_TOKENS = 180  # the pair_rank instruction and chat template around the two images
ANSWER_TOKENS = 7  # "Image 1 is better." under the choice constraint
MODEL_PAIRS_PER_S = {"roofline": 240, "expected_low": 80, "expected_high": 120}


def configs(name: str) -> dict[str, dict[str, Any]]:
    if name == "real":
        return REAL
    from unifiedreward.serving.tiny import TEXT, VISION

    return {"text": dict(TEXT), "vision": dict(VISION)}


def flops(cfg: dict[str, dict[str, Any]], batch: int, context: int, new_tokens: int) -> dict[str, float]:
    """Dense FLOPs of the three stages: 2 x parameters x tokens, plus attention's two matmuls."""
    v, t = cfg["vision"], cfg["text"]
    patches = (IMAGE_SIDE // v["patch_size"]) ** 2
    vision_params = v["depth"] * (4 * v["hidden_size"] ** 2 + 2 * v["hidden_size"] * v["intermediate_size"])
    vision = 2 * batch * (2 * vision_params * patches + v["depth"] * 4 * patches ** 2 * v["hidden_size"])
    layer = (t["hidden_size"] * t["head_dim"] * (2 * t["num_attention_heads"] + 2 * t["num_key_value_heads"])
             + 3 * t["hidden_size"] * t["intermediate_size"])
    layers = t["num_hidden_layers"] * layer
    head = t["vocab_size"] * t["hidden_size"]  # the LM head, for the last position only
    attention = t["num_hidden_layers"] * 4 * t["num_attention_heads"] * t["head_dim"]
    prefill = batch * (2 * layers * context + 2 * head + attention * context ** 2 / 2)  # causal: half the matrix
    decode = batch * sum(2 * (layers + head) + attention * (context + k) for k in range(new_tokens))
    return {"vision": vision, "prefill": prefill, "decode": decode}


def build(cfg: dict[str, dict[str, Any]], device: str, dtype):
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    torch.manual_seed(0)
    config = Qwen3VLConfig(text_config=cfg["text"], vision_config=cfg["vision"],
                           tie_word_embeddings=cfg["text"].get("tie_word_embeddings", True))
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration(config).to(dtype).eval()
    return model


def time_batch(model, cfg: dict[str, dict[str, Any]], batch: int, device: str, dtype, repeats: int) -> dict[str, float]:
    import torch

    v = cfg["vision"]
    side = IMAGE_SIDE // v["patch_size"]
    patch_dim = 3 * v["temporal_patch_size"] * v["patch_size"] ** 2
    pixels = torch.randn(2 * batch * side * side, patch_dim, device=device, dtype=dtype)
    grid = torch.tensor([[1, side, side]] * (2 * batch), device=device)
    merged = side * side // v["spatial_merge_size"] ** 2
    context = 2 * merged + TEXT_TOKENS
    text = torch.randn(batch, TEXT_TOKENS, cfg["text"]["hidden_size"], device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    language = model.model.language_model
    head = model.lm_head

    def run() -> dict[str, float]:
        sync()
        t0 = time.perf_counter()
        vision = model.model.visual(pixels, grid_thw=grid)
        embeds = vision[0] if isinstance(vision, tuple) else vision.pooler_output if hasattr(vision, "pooler_output") else vision
        sync()
        t1 = time.perf_counter()
        images = embeds.reshape(batch, 2 * merged, -1)
        out = language(inputs_embeds=torch.cat([images, text], dim=1), use_cache=True)
        head(out.last_hidden_state[:, -1:])
        sync()
        t2 = time.perf_counter()
        past = out.past_key_values
        token = torch.randn(batch, 1, cfg["text"]["hidden_size"], device=device, dtype=dtype)
        for _ in range(ANSWER_TOKENS):
            step = language(inputs_embeds=token, past_key_values=past, use_cache=True)
            past = step.past_key_values
            head(step.last_hidden_state)
        sync()
        t3 = time.perf_counter()
        return {"vision_s": t1 - t0, "prefill_s": t2 - t1, "decode_s": t3 - t2}

    with torch.inference_mode():
        run()  # warm-up
        runs = [run() for _ in range(repeats)]
    best = {k: min(r[k] for r in runs) for k in runs[0]}
    f = flops(cfg, batch, context, ANSWER_TOKENS)
    total = sum(best.values())
    return {"batch": batch, "context_tokens": context, **{k.replace("_s", "_ms"): v * 1000 for k, v in best.items()},
            "vision_tflops": f["vision"] / best["vision_s"] / 1e12, "prefill_tflops": f["prefill"] / best["prefill_s"] / 1e12,
            "decode_tflops": f["decode"] / best["decode_s"] / 1e12, "pairs_per_s": batch / total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_forward", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=("real", "tiny"), default="real")
    parser.add_argument("--batches", type=int, nargs="*", default=None, help="default: 1 2 4 8 16 32 64 (tiny: 1 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--out", type=Path, default=Path("results/gpu_forward.json"))
    args = parser.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.config == "real" and device == "cpu":
        print("gpu_forward: no GPU here; the real 2B architecture is for a GPU (use --config tiny for a smoke run)",
              file=sys.stderr)
        return 2
    dtype = torch.bfloat16
    cfg = configs(args.config)
    batches = args.batches or ([1, 2, 4, 8, 16, 32, 64] if args.config == "real" else [1, 2])
    model = build(cfg, device, dtype)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(f"gpu_forward: {args.config} Qwen3-VL on {name}, BF16, image_gen.pair_rank: 2 x {IMAGE_SIDE}^2 images, "
          f"{ANSWER_TOKENS} answer tokens", file=sys.stderr)
    rows = []
    for batch in batches:
        row = time_batch(model, cfg, batch, device, dtype, args.repeats)
        rows.append(row)
        print(f"batch {batch:3d}: vision {row['vision_ms']:8.1f} ms ({row['vision_tflops']:6.1f} TFLOP/s)  "
              f"prefill {row['prefill_ms']:8.1f} ms ({row['prefill_tflops']:6.1f})  decode {row['decode_ms']:8.1f} ms "
              f"({row['decode_tflops']:6.2f})  -> {row['pairs_per_s']:7.1f} pairs/s", file=sys.stderr)
    best = max(rows, key=lambda r: r["pairs_per_s"])
    print(f"gpu_forward: best {best['pairs_per_s']:.1f} pairs/s at batch {best['batch']} (the model's estimate: "
          f"{MODEL_PAIRS_PER_S['expected_low']}-{MODEL_PAIRS_PER_S['expected_high']} expected, "
          f"{MODEL_PAIRS_PER_S['roofline']} roofline, for the real model on an H100)", file=sys.stderr)
    result = {"config": args.config, "device": name, "dtype": "bfloat16", "image_side": IMAGE_SIDE,
              "answer_tokens": ANSWER_TOKENS, "rows": rows, "best_pairs_per_s": best["pairs_per_s"],
              "model_pairs_per_s": MODEL_PAIRS_PER_S, "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
