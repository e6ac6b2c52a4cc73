"""Seconds-long smoke runs of both benchmark scripts against the live server: they run end to end and
write their JSON and plots. (Speed is never asserted here: `make bench` measures it.)"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from unifiedreward.prompts import get_task


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
    """Both passes run, every figure has its repeats, the ratios are the ratios of the figures reported."""
    out, plot = tmp_path / "compare.json", tmp_path / "compare.png"
    proc = run("benchmarks.compare", "--quick", "--base-url", live_server.base_url, "--out", str(out),
               "--plot", str(plot), "--data-dir", str(tmp_path / "data"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for name in ("hot_path", "long_answer"):
        w = result[name]
        medians = w["ratio_of_medians"]
        assert medians["throughput_ratio"] == pytest.approx(w["ours_pairs_per_s"] / w["reference_pairs_per_s"])
        assert medians["p99_ratio"] == pytest.approx(w["ours_p99_s"] / w["reference_p99_s"])
        for ratio in ("throughput_ratio", "fraction_of_ceiling", "p99_ratio"):  # medians of side-by-side runs
            per_repeat = w["per_repeat"][ratio]
            assert len(per_repeat) == 3 and w[ratio] == pytest.approx(statistics.median(per_repeat))
        for way in ("reference", "ours", "ceiling"):
            figures = w["closed_loop"][way]
            assert figures["runs"] == 3
            low, high = figures["min_max"]["pairs_per_s"]
            assert low <= figures["pairs_per_s"] <= high
        first = result["passes"][0][name]  # both passes offer the first pass's rate
        assert first["open_loop_rate"] == pytest.approx(0.8 * first["reference_pairs_per_s"])
        assert w["open_loop_rate"] == first["open_loop_rate"]
        assert w["open_loop"]["ours"]["requests"] == 3 * 4  # p99 over the pooled open-loop runs
        assert w["open_loop"]["ours"]["segments"] == w["open_loop"]["reference"]["segments"] == 2  # alternating
    assert len(result["hot_path"]["curve"]) == 1 and not result["passes"][0]["hot_path"]["curve"]  # the plot's pass
    assert result["reference_client_vs_ours"]["throughput_ratio"] == result["long_answer"]["throughput_ratio"]
    classic = result["classic_vs_served"]
    assert classic["ratio"] == pytest.approx(classic["served_pairs_per_s"] / classic["classic_pairs_per_s"])
    group = result["group"]
    assert group["wall_ratio"] == pytest.approx(statistics.median(group["wall_ratios"]))
    assert group["wall_ratio_of_medians"] == pytest.approx(group["theirs_wall_s"] / group["ours_wall_s"])
    assert group["groups_per_repeat"] == 2  # a repeat scores groups in a row, as a GRPO step does
    assert group["ours_computed_tokens"] < group["ours_queried_tokens"]  # the prefix cache served a part
    assert result["group_cache"]["fraction_of_ideal"] == group["fraction_of_ideal"]
    frontend = result["frontend"]
    assert frontend["ours_api_cpu_ms_per_pair"] > 0 and frontend["reference_api_cpu_ms_per_pair"] > 0
    assert frontend["ours_engine_cpu_ms_per_pair"] > 0
    assert len(result["passes"]) == 2 and result["consistency"]["max_relative_difference"] >= 0
    assert set(result["consistency"]["relative_differences"]) >= {"hot_path.throughput_ratio", "group.wall_ratio"}
    assert "skipped" in result["stack"]  # the authors' stack needs its own server: make bench runs it
    assert result["machine"]["cores"] >= 1 and result["machine"]["packages"]
    assert set(result["targets"]) >= {"consistency.max_relative_difference", "hot_path.fraction_of_ceiling",
                                      "group.wall_ratio"}
    assert plot.stat().st_size > 10_000


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


def test_gpu_forward_smoke(tmp_path):
    """The GPU performance check runs anywhere on the tiny checkpoint's sizes (no server, no weights)."""
    out = tmp_path / "gpu_forward.json"
    proc = run("benchmarks.gpu_forward", "--config", "tiny", "--batches", "1", "2", "--repeats", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [row["batch"] for row in result["rows"]] == [1, 2]
    for row in result["rows"]:
        total_s = (row["vision_ms"] + row["prefill_ms"] + row["decode_ms"]) / 1000
        assert row["pairs_per_s"] == pytest.approx(row["batch"] / total_s)
        assert row["context_tokens"] == 2 * 256 + 180  # two 512^2 images at 256 tokens each, and the text
    assert result["best_pairs_per_s"] == max(row["pairs_per_s"] for row in result["rows"])


def test_tail_probe_smoke(live_server, tmp_path):
    """Per setting, the spread of the paired runs' p99 ratios, and the reference's phases per request."""
    out = tmp_path / "tail_probe.json"
    proc = run("benchmarks.tail_probe", "--quick", "--base-url", live_server.base_url, "--out", str(out),
               "--data-dir", str(tmp_path / "data"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["rate"] == pytest.approx(0.8 * result["saturated_pairs_per_s"])
    assert [(s["arrivals"], s["requests"]) for s in result["settings"]] == [("poisson", 4), ("even", 4)]
    for setting in result["settings"]:
        ratios = [r["p99_ratio"] for r in setting["runs"]]
        assert len(ratios) == 2 and setting["p99_ratio"]["median"] == pytest.approx(statistics.median(ratios))
        for r in setting["runs"]:
            assert r["p99_ratio"] == pytest.approx(r["ours_p99_s"] / r["reference_p99_s"])
            assert r["reference_slow"]["encode_max_s"] >= r["reference_slow"]["encode_p50_s"] > 0


def test_frontend_smoke(live_server, tmp_path):
    """benchmarks.frontend against the live server (2 API servers): every key the issue names, CPU read from
    both API-server processes, the deciding-token check, and a profile with entries."""
    out = tmp_path / "frontend.json"
    proc = run("benchmarks.frontend", "--quick", "--base-url", live_server.base_url, "--out", str(out),
               "--data-dir", str(tmp_path / "data"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("hot_path.ours_api_cpu_ms_per_pair", "hot_path.reference_api_cpu_ms_per_pair",
                "group.ours_api_cpu_ms_per_pair", "group.peers_api_cpu_ms_per_pair",
                "decisive.completion_tokens_per_pair"):
        section, name = key.split(".")
        assert isinstance(result[section][name], (int, float)), key
    assert result["hot_path"]["ours"]["api_cpu_ms_per_pair"] == result["hot_path"]["ours_api_cpu_ms_per_pair"]
    assert result["per_api_servers"]["2"]["api_servers"] == 2  # the live server's two processes were read
    decided = result["decisive"]
    assert decided["same_winner"] == decided["pairs"] and decided["completion_tokens_per_pair"] <= 3
    assert result["group"]["ours"]["images_by_uuid_only"] > 0 and result["group"]["ours_no_uuid"]["images_by_uuid_only"] == 0
    profile = result["profile"]
    assert profile.get("samples", 0) > 0 and profile["inclusive"], profile
    assert result["machine"]["cores"] >= 1 and result["versions"] and "benchmarks.frontend" in result["config"]["command"]
    assert set(result["targets"]) >= {"hot_path.ours_api_cpu_ms_per_pair", "group.ours_api_cpu_ms_per_pair"}


def test_replicas_smoke(shared_server, second_server, api_key, tmp_path):
    """benchmarks.replicas on the session's two shared-profile replicas: every way runs, the figures are the
    ratios of the counters reported, and the stall run scores every pair once."""
    out = tmp_path / "replicas.json"
    proc = run("benchmarks.replicas", "--quick", "--base-url", shared_server.base_url, "--base-url",
               second_server.base_url, "--api-key", api_key, "--stall-timeout", "2", "--sections", "routes", "stall", "gaps",
               "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    routes = result["routes"]
    assert set(routes) == {"one_replica", "list_off", "list_on", "front_off", "front_on"}
    one = routes["one_replica"]
    assert one["prefix_hit_tokens"] > 0 and one["errors"] == 0
    for way, figures in routes.items():
        assert figures["errors"] == 0 and figures["pairs"] == 2 * 6
        run_ = figures["runs"][0]
        assert figures["fraction_of_one_replica_saving"] == pytest.approx(
            run_["prefix_hit_tokens"] / one["runs"][0]["prefix_hit_tokens"])
        assert sum(run_["replica_pairs"]) == 12 and sum(run_["replica_shares"]) == pytest.approx(1.0)
        assert run_["computed_prompt_tokens"] == run_["prompt_tokens"] - run_["prefix_hit_tokens"]
    assert routes["list_on"]["groups_on_one_replica"] == 2  # two groups, each kept whole
    stall = result["stall"]
    assert stall["every_pair_scored_once"] and stall["stalls"] >= 1 and stall["pairs"] == 3
    assert result["gaps"]["8"]["gap_max_s"] > 0
    assert set(result["targets"]) >= {"routes.list_on.fraction_of_one_replica_saving", "stall.within_target"}
