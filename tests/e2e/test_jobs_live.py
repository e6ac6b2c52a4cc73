"""Dataset jobs against the live server, the way they fail in the field: the CLI killed with SIGKILL part
way through, or stopped with SIGTERM, then resumed. Nothing finished is lost, nothing is scored twice, every
bad row keeps its error; JSONL and Parquet alike."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import picture

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

N = 500
CAPTION = "a red circle above a blue square"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    """500 pair items over 16 image files; 5 % bad rows (invalid JSON, a missing file, one image only)."""
    folder = tmp_path_factory.mktemp("dataset")
    images = []
    for i in range(16):
        path = folder / f"img{i}.png"
        picture(300 + i, size=128).save(path)
        images.append(str(path))
    rows, bad = [], {}
    for i in range(N):
        row = {"id": f"item-{i}", "task": "image_gen.pair_rank", "images": [images[i % 16], images[(i * 3 + 1) % 16]],
               "caption": CAPTION}
        if i % 20 == 7:
            kind = ("json", "missing", "count")[(i // 20) % 3]
            bad[row["id"]] = kind
            if kind == "missing":
                row["images"] = [str(folder / "missing.png"), images[0]]
            elif kind == "count":
                row["images"] = images[:1]
        rows.append(row)
    jsonl = folder / "items.jsonl"
    with open(jsonl, "w") as out:
        for i, row in enumerate(rows):
            out.write("{broken json\n" if bad.get(row["id"]) == "json" else json.dumps(row) + "\n")
    parquet = folder / "items.parquet"
    pq.write_table(pa.Table.from_pylist([r for r in rows if bad.get(r["id"]) != "json"]), parquet)
    return {"jsonl": jsonl, "parquet": parquet, "bad": bad, "rows": rows}


def cli(base_url: str, source: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "unifiedreward.clients", "score", "--input", str(source), "--output", str(output),
            "--base-url", base_url, "--concurrency", "16", "--no-progress", *extra]


def count_done(output: Path) -> int:
    if output.suffix == ".parquet":
        files = list(output.glob("*.parquet")) if output.exists() else []
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return output.read_text().count("\n") if output.exists() else 0


def start_and_stop(command: list[str], output: Path, sig: signal.Signals, after: int) -> subprocess.CompletedProcess:
    """Run the job; once `after` results are on disk, send `sig`. Returns the finished process."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while count_done(output) < after:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.05)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def records(output: Path) -> list[dict]:
    if output.suffix == ".parquet":
        return pq.read_table(output).to_pylist()
    return [json.loads(line) for line in output.read_text().splitlines()]


def check_complete(output: Path, bad: dict[str, str], expected_ids: set[str]) -> None:
    """Each expected id exactly once; good rows scored, bad rows failed with their reason."""
    found = records(output)
    ids = [str(r["id"]) for r in found]
    assert len(ids) == len(set(ids)), "an id was written twice"
    assert set(ids) == expected_ids
    by_id = {str(r["id"]): r for r in found}
    for row_id, record in by_id.items():
        kind = bad.get(row_id)
        if kind is None:
            assert record["error"] is None and record["reward"] in (0.0, 0.5, 1.0), record
        else:
            assert {"json": "invalid JSON", "missing": "not found", "count": "takes 2 image"}[kind] in record["error"]


def bad_jsonl_ids(dataset: dict) -> dict[str, str]:
    """Output id -> kind of bad row; a line of invalid JSON has no id: it is known by its line number."""
    return {str(i + 1) if dataset["bad"][row["id"]] == "json" else row["id"]: dataset["bad"][row["id"]]
            for i, row in enumerate(dataset["rows"]) if row["id"] in dataset["bad"]}


def jsonl_ids(dataset: dict) -> set[str]:
    # A line of invalid JSON has no id: it is known by its line number.
    return {str(i + 1) if dataset["bad"].get(row["id"]) == "json" else row["id"]
            for i, row in enumerate(dataset["rows"])}


def test_sigkill_then_resume_loses_nothing_and_repeats_nothing(live_server, dataset, tmp_path):
    output = tmp_path / "out.jsonl"
    command = cli(live_server.base_url, dataset["jsonl"], output)
    killed = start_and_stop(command, output, signal.SIGKILL, after=120)
    assert killed.returncode == -signal.SIGKILL
    on_disk = records(output)
    assert 120 <= len(on_disk) < N
    scored = sum(r["error"] is None for r in on_disk)
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 1, resumed.stderr[-2000:]  # the bad rows failed, as they must
    # what was scored is kept; what failed (the bad rows written so far) is tried again
    assert f"resumed: {scored} already done, {len(on_disk) - scored} failed earlier" in resumed.stderr
    check_complete(output, bad_jsonl_ids(dataset), jsonl_ids(dataset))
    assert count_done(output) == N


def test_sigterm_stops_gracefully_then_resume_completes(live_server, dataset, tmp_path):
    output = tmp_path / "out.jsonl"
    command = cli(live_server.base_url, dataset["jsonl"], output, "--grace", "20")
    stopped = start_and_stop(command, output, signal.SIGTERM, after=100)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert "stopped by SIGTERM" in stopped.stderr and "--resume" in stopped.stderr
    written = count_done(output)
    left = int(stopped.stderr.split("stopped by SIGTERM: ")[1].split(" of ")[0])
    assert written + left == N and left > 0
    bad_ids = bad_jsonl_ids(dataset)
    assert all((r["error"] is None) == (str(r["id"]) not in bad_ids) for r in records(output))
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 1, resumed.stderr[-2000:]
    check_complete(output, bad_jsonl_ids(dataset), jsonl_ids(dataset))


def test_parquet_in_and_out_survive_sigkill(live_server, dataset, tmp_path):
    output = tmp_path / "out.parquet"
    command = cli(live_server.base_url, dataset["parquet"], output)
    killed = start_and_stop(command, output, signal.SIGKILL, after=256)  # at least one row group on disk
    assert killed.returncode == -signal.SIGKILL
    pq.read_table(output)  # every part on disk is a complete file (one being written is a hidden .tmp)
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 1, resumed.stderr[-2000:]
    expected = {r["id"] for r in dataset["rows"] if dataset["bad"].get(r["id"]) != "json"}
    check_complete(output, {k: v for k, v in dataset["bad"].items() if v != "json"}, expected)
    assert not [f for f in os.listdir(output) if not f.endswith(".parquet") and not f.startswith(".")]
