"""The serving defaults turn into flags that vLLM's own argument parser accepts, with the intended values."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from serving.config import ServeConfig, split_flags
from serving.launcher import resolve_config
from tests.helpers import vllm_parse


@pytest.fixture(scope="module")
def parsed():
    return vllm_parse(ServeConfig.load().vllm_args())


def test_defaults_parse_with_vllms_parser(parsed):
    assert parsed.model == "CodeGoat24/UnifiedReward-2.0-qwen3vl-2b"
    assert parsed.served_model_name == ["UnifiedReward", "CodeGoat24/UnifiedReward-2.0-qwen3vl-2b"]
    assert parsed.dtype == "bfloat16"
    assert parsed.enable_prefix_caching is True
    assert parsed.max_model_len == 8192
    assert parsed.host == "127.0.0.1" and parsed.port == 8000


def test_multimodal_limits_and_pixel_cap(parsed):
    limit = parsed.limit_mm_per_prompt
    assert limit["image"] == 16 and limit["video"] == 2
    size = parsed.mm_processor_kwargs["images_kwargs"]["size"]
    assert size["longest_edge"] == 262144  # 512 x 512 (the Qwen2.5-VL 7B recipe's cap: see defaults.toml)
    assert "max_pixels" not in json.dumps(parsed.mm_processor_kwargs)  # ignored by Qwen3-VL's processors


def test_greedy_generation_defaults(parsed):
    """Greedy by default, and the checkpoint's own sampling settings neutralised: a request asking for
    sampling gets plain sampling, not the checkpoint's top_p / top_k / repetition penalty."""
    from vllm import SamplingParams

    override = parsed.override_generation_config
    assert override["temperature"] == 0.0 and override["max_new_tokens"] > 0
    assert (override["top_p"], override["top_k"], override["repetition_penalty"]) == (1.0, 0, 1.0)
    neutral = SamplingParams()
    assert (neutral.top_p, neutral.top_k, neutral.repetition_penalty) == (1.0, 0, 1.0)


def test_gpu_defaults_start_several_api_servers_and_the_cpu_build_one(parsed):
    """The front end's CPU per pair (benchmarks.compare, `frontend`) sets the GPU count; on the CPU build
    the engine shares the cores, and one process measures as well as two."""
    assert parsed.api_server_count == 4
    cpu = vllm_parse(ServeConfig.load(platform="cpu").vllm_args())
    assert cpu.api_server_count == 1
    assert ServeConfig.load(platform="cpu").vllm["max_model_len"] == ServeConfig.load().vllm["max_model_len"]
    with pytest.raises(ValueError, match="platform"):
        ServeConfig.load(platform="tpu")


def test_authors_profile_serves_as_their_script():
    """vllm_server.sh: no pixel cap, 32 images, prefix caching, the same served name."""
    parsed = vllm_parse(ServeConfig.load(profiles=["authors"]).vllm_args())
    assert parsed.mm_processor_kwargs in ({}, None)
    assert parsed.limit_mm_per_prompt["image"] == 32 and parsed.enable_prefix_caching is True
    assert parsed.served_model_name[0] == "UnifiedReward" and parsed.max_model_len == 32768


def test_engine_args_accept_the_config(parsed):
    from vllm.engine.arg_utils import AsyncEngineArgs

    engine_args = AsyncEngineArgs.from_cli_args(parsed)
    assert engine_args.served_model_name == ["UnifiedReward", "CodeGoat24/UnifiedReward-2.0-qwen3vl-2b"]
    assert engine_args.enable_prefix_caching is True


def test_overrides_replace_defaults_once():
    _, config = resolve_config(["--model", "m", "--port", "9001", "--max-model-len", "4096",
                                "--no-enable-prefix-caching", "--api-key", "a", "b"])
    args = config.vllm_args()
    assert args.count("--max-model-len") == 1 and "4096" in args
    assert "--enable-prefix-caching" not in args
    parsed = vllm_parse(args)
    assert parsed.model == "m" and parsed.port == 9001 and parsed.max_model_len == 4096
    assert parsed.enable_prefix_caching is False
    assert parsed.api_key == ["a", "b"]


def test_split_flags_rejects_a_stray_value():
    with pytest.raises(ValueError, match="must start with a --flag"):
        split_flags(["4096", "--max-model-len"])


def test_dry_run_prints_the_vllm_command():
    out = subprocess.run([sys.executable, "-m", "serving", "--dry-run", "--port", "8123"],
                         capture_output=True, text=True, check=True).stdout
    assert "-m vllm.entrypoints.openai.api_server" in out
    assert "--served-model-name UnifiedReward" in out and "--port 8123" in out


def test_launcher_exits_nonzero_with_a_clear_message_when_the_server_dies(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "serving", "--model", str(tmp_path / "no-such-model"),
                           "--port", "8124"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "the vLLM server exited with code" in proc.stderr
    assert "no-such-model" in proc.stderr  # the quoted end of the server's log names the cause


# -- profiles and the API key ------------------------------------------------------------------------------

from serving.launcher import MissingApiKeyError, masked, server_environment  # noqa: E402


def test_shared_profile_merges_over_the_defaults_and_parses():
    config = ServeConfig.load(profiles=["shared"])
    parsed = vllm_parse(config.vllm_args())
    assert config.require_api_key and parsed.host == "0.0.0.0"
    assert parsed.middleware == ["serving.guard.RequestGuard"]
    assert parsed.enable_log_requests is False and parsed.max_log_len == 0
    assert parsed.allowed_local_media_path in ("", None) and not parsed.allowed_media_domains
    assert parsed.limit_mm_per_prompt["image"] == 16  # the defaults are still there
    assert parsed.mm_processor_cache_gb == 1  # bounded memory (README, soak run)
    assert config.env["VLLM_MEDIA_URL_ALLOW_REDIRECTS"] == "0" and "UNIFIEDREWARD_MAX_BODY_BYTES" in config.env


def test_make_style_profile_list_and_unknown_profile():
    _, config = resolve_config(["--profile", "shared,data-parallel", "--host", "127.0.0.1"])
    assert config.profiles == ("shared", "data-parallel") and config.host == "127.0.0.1"
    with pytest.raises(SystemExit):
        resolve_config(["--profile", "sharde"])


def test_api_key_is_required_read_from_env_or_file_and_never_on_the_command_line(tmp_path):
    config = ServeConfig.load(profiles=["shared"])
    with pytest.raises(MissingApiKeyError, match="UNIFIEDREWARD_API_KEY"):
        server_environment(config, environ={})
    assert server_environment(config, environ={"UNIFIEDREWARD_API_KEY": " sk-1\n"})["VLLM_API_KEY"] == "sk-1"
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    env = server_environment(config, environ={"UNIFIEDREWARD_API_KEY_FILE": str(key_file)})
    assert env["VLLM_API_KEY"] == "sk-from-file"
    assert "sk-from-file" not in " ".join(config.command())
    with pytest.raises(MissingApiKeyError, match="empty"):
        key_file.write_text("\n")
        server_environment(config, key_file=key_file, environ={})
    # The default profile needs none.
    assert "VLLM_API_KEY" not in server_environment(ServeConfig.load(), environ={})


def test_logged_command_masks_a_key_given_as_a_flag():
    shown = masked(["python", "-m", "x", "--api-key", "sk-secret", "--port", "1", "--api-key=sk-two"])
    assert "sk-secret" not in shown and "sk-two" not in shown and "--port 1" in shown
