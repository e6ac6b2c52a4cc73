"""Seconds-long smoke runs of both benchmark scripts against the live server: they run end to end and
write their JSON and plots. (Speed is never asserted here: `make bench` measures it.)"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from prompts import get_task


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
        # --fixed-output: every answer as long as the task's typical trained answer (ignore_eos, max_tokens)
        assert row["completion_tokens_mean"] == get_task("image_gen.pair_score").typical_tokens
    assert plot.stat().st_size > 10_000


def test_compare_smoke(live_server, tmp_path):
    out, plot = tmp_path / "compare.json", tmp_path / "compare.png"
    proc = run("benchmarks.compare", "--quick", "--base-url", live_server.base_url, "--out", str(out),
               "--plot", str(plot), "--data-dir", str(tmp_path / "data"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    classic = result["classic_vs_served"]
    assert classic["classic_pairs_per_s"] > 0 and classic["served_pairs_per_s"] > 0
    assert classic["ratio"] == pytest.approx(classic["served_pairs_per_s"] / classic["classic_pairs_per_s"])
    ours = result["reference_client_vs_ours"]
    assert ours["throughput_ratio"] == pytest.approx(ours["ours_pairs_per_s"] / ours["reference_pairs_per_s"])
    assert ours["fraction_of_ceiling"] == pytest.approx(ours["ours_pairs_per_s"] / ours["ceiling_pairs_per_s"])
    assert ours["p99_ratio"] == pytest.approx(ours["ours_p99_s"] / ours["reference_p99_s"])
    assert set(result["reference_client_vs_ours"]) >= {"throughput_ratio", "p99_ratio", "fraction_of_ceiling"}
    assert set(result["group_cache"]) >= {"prompt_token_ratio", "fraction_of_ideal", "wall_ratio"}
    assert result["group_cache"]["ours_computed_tokens"] < result["group_cache"]["ours_queried_tokens"]
    assert len(result["targets"]) == 6 and plot.stat().st_size > 10_000


def test_feed_smoke(tmp_path):
    """The feed benchmark needs no server (its stub answers): a seconds-long run writes its figures."""
    out = tmp_path / "feed.json"
    proc = run("benchmarks.feed", "--pairs", "12", "--repeats", "1", "--distinct", "2", "--rss-items", "20", "40",
               "--kinds", "array_1024", "png_512", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    for kind in ("array_1024", "png_512"):
        figures = result["kinds"][kind]
        assert figures["pairs"] == 12
        assert figures["pairs_per_s"] == pytest.approx(figures["pairs"] / figures["seconds"])
        assert figures["cores_used"] == pytest.approx(figures["cpu_s"] / figures["seconds"])
        assert result["cores_per_h100"][kind]["roofline"] == pytest.approx(240 / figures["pairs_per_s_per_core"], 0.01)
    assert [row["items"] for row in result["rss"]] == [20, 40] and all(row["rss_mb"] > 0 for row in result["rss"])
    assert result["machine"]["cores"] >= 1
