"""The serving defaults turn into flags that vLLM's own argument parser accepts, with the intended values."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from unifiedreward.serving.config import ServeConfig, split_flags
from unifiedreward.serving.launcher import resolve_config
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


def test_api_servers_follow_the_gpus_and_the_cpu_build_runs_one(parsed):
    """--api-server-count = api_servers_per_gpu x the GPUs of this node's engines (defaults.toml, [frontend]),
    read from the final flags by vLLM's own parser (aliases included); an explicit count is kept as given."""
    per_gpu = ServeConfig.load().api_servers_per_gpu
    assert per_gpu and parsed.api_server_count == per_gpu
    cpu = vllm_parse(ServeConfig.load(platform="cpu").vllm_args())
    assert cpu.api_server_count == 1
    assert ServeConfig.load(platform="cpu").vllm["max_model_len"] == ServeConfig.load().vllm["max_model_len"]

    def count(*argv: str, profiles: tuple[str, ...] = ()) -> int | None:
        config = ServeConfig.load(profiles=profiles).override(extra_args=list(argv))
        return vllm_parse(config.vllm_args()).api_server_count

    assert count("--data-parallel-size", "4") == 4 * per_gpu
    assert count("-dp", "2", "-tp", "2") == 4 * per_gpu
    assert count(profiles=("shared", "data-parallel")) == 8 * per_gpu  # the profile's 8 GPUs
    assert count("--data-parallel-size", "2", profiles=("shared", "data-parallel")) == 2 * per_gpu
    assert count("--data-parallel-size", "4", "--data-parallel-size-local", "2") == 2 * per_gpu  # this node's
    assert count("-dp", "2", "--api-server-count", "3") == 3  # given: kept
    assert "--api-server-count" not in ServeConfig.load().override(
        extra_args=["--headless", "-dp", "2"]).vllm_args()  # a headless node runs no API server
    with pytest.raises(ValueError, match="platform"):
        ServeConfig.load(platform="tpu")


def test_a_bad_frontend_table_is_refused(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text("[frontend]\napi_servers_per_gpu = 0\n")
    with pytest.raises(ValueError, match="api_servers_per_gpu"):
        ServeConfig.load().with_profile(str(bad))
    bad.write_text("[frontend]\napi_servers = 2\n")
    with pytest.raises(ValueError, match="unknown \\[frontend\\] keys"):
        ServeConfig.load().with_profile(str(bad))


def test_the_launchers_command_is_vllm_serve(tmp_path):
    """`python -m unifiedreward.serving.vllm_serve --api-servers-per-gpu N serve MODEL ...`: vLLM's serve subcommand, the model
    positional; the count is left to the server process (the launcher never imports vLLM), unless given."""
    config = ServeConfig.load()
    command = config.command(python="py")
    assert command[:7] == ["py", "-m", "unifiedreward.serving.vllm_serve", "--api-servers-per-gpu", str(config.api_servers_per_gpu),
                           "serve", "CodeGoat24/UnifiedReward-2.0-qwen3vl-2b"]
    assert "--model" not in command and "--api-server-count" not in command
    given = config.override(extra_args=["--api-server-count", "3"]).command(python="py")
    assert given[3] == "serve" and given[-2:] == ["--api-server-count", "3"]


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
    done = subprocess.run([sys.executable, "-m", "unifiedreward.serving", "--dry-run", "--port", "8123", "-dp", "2"],
                          capture_output=True, text=True, check=True)
    out = done.stdout
    assert "--api-server-count resolves to" in done.stderr  # what the server will start, read by vLLM's parser
    assert "-m unifiedreward.serving.vllm_serve --api-servers-per-gpu" in out and " serve CodeGoat24/UnifiedReward-2.0-qwen3vl-2b " in out
    assert "--served-model-name UnifiedReward" in out and "--port 8123" in out


def test_launcher_exits_nonzero_with_a_clear_message_when_the_server_dies(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "unifiedreward.serving", "--model", str(tmp_path / "no-such-model"),
                           "--port", "8124"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "the vLLM server exited with code" in proc.stderr
    assert "no-such-model" in proc.stderr  # the quoted end of the server's log names the cause


# -- profiles and the API key ------------------------------------------------------------------------------

from unifiedreward.serving.launcher import MissingApiKeyError, masked, server_environment  # noqa: E402


def test_shared_profile_merges_over_the_defaults_and_parses():
    config = ServeConfig.load(profiles=["shared"])
    parsed = vllm_parse(config.vllm_args())
    assert config.require_api_key and parsed.host == "0.0.0.0"
    assert parsed.middleware == ["unifiedreward.serving.guard.RequestGuard"]
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


@pytest.mark.parametrize("profiles", ["", "shared", "shared,data-parallel"])
def test_the_gpu_command_line_is_one_vllms_serve_parser_accepts(profiles):
    """What `make serve` runs on a GPU machine, printed here (--platform gpu --dry-run), then parsed by the
    `serve` subcommand's own parser and validation, as the server process will."""
    import shlex

    from unifiedreward.serving.vllm_serve import parse

    argv = [sys.executable, "-m", "unifiedreward.serving", "--dry-run", "--platform", "gpu", *(["--profile", profiles] if profiles else [])]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, env={**os.environ, "UNIFIEDREWARD_API_KEY": "k"})
    command = shlex.split(done.stdout.strip().splitlines()[-1])
    per_gpu = ServeConfig.load(platform="gpu").api_servers_per_gpu
    assert command[1:5] == ["-m", "unifiedreward.serving.vllm_serve", "--api-servers-per-gpu", str(per_gpu)] and command[5] == "serve"
    parsed = parse(command[5:])
    assert parsed.model_tag == "CodeGoat24/UnifiedReward-2.0-qwen3vl-2b" and parsed.dtype == "bfloat16"
    gpus = 8 if "data-parallel" in profiles else 1
    assert f"--api-server-count resolves to {per_gpu * gpus} " in done.stderr
    if "shared" in profiles:
        assert parsed.middleware == ["unifiedreward.serving.guard.RequestGuard"]
