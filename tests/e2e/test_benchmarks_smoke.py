"""Seconds-long smoke runs of both benchmark scripts against the live server: they run end to end and
write their JSON and plots. (Speed is never asserted here: `make bench` measures it.)"""
from __future__ import annotations

import json
import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600)


def test_load_smoke(live_server, tmp_path):
    out, plot = tmp_path / "load.json", tmp_path / "load.png"
    proc = run("benchmarks.load", "--base-url", live_server.base_url, "--concurrency", "1", "2", "--rate", "4",
               "--requests", "2", "--image-size", "256", "--fixed-output", "--quiet", "--out", str(out),
               "--plot", str(plot))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [r["concurrency"] for r in result["closed_loop"]] == [1, 2] and result["open_loop"][0]["rate"] == 4
    for row in result["closed_loop"] + result["open_loop"]:
        assert row["ok"] == 2 and not row["errors"] and row["req_per_s"] > 0
        assert row["latency_s"]["p99"] >= row["latency_s"]["p50"] > 0 and row["ttft_s"]["p50"] > 0
        assert row["completion_tokens_mean"] == 153  # image_gen.pair_score's typical answer, fixed
    assert plot.stat().st_size > 10_000


def test_compare_smoke(live_server, tmp_path):
    out, plot = tmp_path / "compare.json", tmp_path / "compare.png"
    proc = run("benchmarks.compare", "--quick", "--base-url", live_server.base_url, "--out", str(out),
               "--plot", str(plot), "--data-dir", str(tmp_path / "data"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["classic_vs_served"]["ratio"] > 0
    assert set(result["reference_client_vs_ours"]) >= {"throughput_ratio", "p99_ratio", "fraction_of_ceiling"}
    assert set(result["group_cache"]) >= {"prompt_token_ratio", "fraction_of_ideal", "wall_ratio"}
    assert result["group_cache"]["ours_computed_tokens"] < result["group_cache"]["ours_queried_tokens"]
    assert len(result["targets"]) == 6 and plot.stat().st_size > 10_000
