"""Dataset jobs without a server: readers for every input format (mapping, media structs, bad rows), the
sinks (torn lines, Parquet parts), and the job plan (unique ids, resume, overwrite, shards). The job
runner end to end, killed and resumed, runs against the real server in tests/e2e/test_jobs_live.py."""
from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import httpx
import pytest
from PIL import Image

from unifiedreward.clients import AsyncRewardClient, BadInputError, Result
from unifiedreward.clients.dataset_io import JsonlSink, ParquetSink, Source, open_sink, parse_mapping
from unifiedreward.clients.jobs import Shard, plan_job, run_job
from unifiedreward.prompts import RankVerdict

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402
from tests.helpers import chat_reply


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, format="PNG")
    return buffer.getvalue()


def ok(id_, reward=1.0) -> Result:
    return Result("image_gen.pair_rank", RankVerdict("image_gen.pair_rank", reward, 1), text="Image 1 is better.",
                  id=id_)


def failed(id_) -> Result:
    return Result.failure(BadInputError("image file not found: x.png"), task="image_gen.pair_rank", id=id_)


def test_jsonl_rows_keep_bad_lines_in_place_and_number_them(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": 1, "task": "t", "images": ["a"]}\n\n{oops\n{"task": "t", "caption": "c"}\n[1]\n')
    rows = list(Source(path).rows())
    assert [(r.position, r.line, r.id) for r in rows] == [(0, 1, 1), (1, 3, 3), (2, 4, 4), (3, 5, 5)]
    assert rows[0].data == {"id": 1, "task": "t", "images": ["a"]}
    assert "line 3: invalid JSON" in rows[1].error and rows[1].data is None
    assert rows[2].data == {"task": "t", "caption": "c"}
    assert "line 5: an item must be an object" in rows[3].error


def test_csv_with_mapped_columns_and_paths_relative_to_the_dataset(tmp_path, monkeypatch):
    (tmp_path / "imgs").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "imgs" / name).write_bytes(png((1, 2, 3)))
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uid", "prompt", "left", "right", "images"])
        writer.writerow(["p1", "a red cat", "imgs/a.png", "imgs/b.png", ""])
        writer.writerow(["p2", "a dog", "", "", '["imgs/a.png", "https://example.com/x.png"]'])
    monkeypatch.chdir(tmp_path.parent)  # the paths are relative to the CSV, not to where the job runs
    source = Source(path, mapping=parse_mapping(["id=uid", "caption=prompt"]), default_task="image_gen.pair_rank")
    first, second = source.rows()
    assert first.id == "p1" and first.data["caption"] == "a red cat" and first.data["task"] == "image_gen.pair_rank"
    assert "images" not in first.data
    assert second.data["images"] == [str(tmp_path / "imgs" / "a.png"), "https://example.com/x.png"]
    mapped = Source(path, mapping=parse_mapping(["images=left,right"]))
    assert next(mapped.rows()).data["images"] == [str(tmp_path / "imgs" / n) for n in ("a.png", "b.png")]


def test_parquet_image_structs_become_bytes_or_paths(tmp_path):
    a, b = png((255, 0, 0)), png((0, 0, 255))
    table = pa.table({"id": [10, 11], "prompt": ["x", "y"],
                      "chosen": [{"bytes": a, "path": None}, {"bytes": None, "path": "/data/b.png"}],
                      "rejected": [{"bytes": b, "path": "b.png"}, {"bytes": b, "path": None}]})
    pq.write_table(table, tmp_path / "prefs.parquet")
    source = Source(tmp_path / "prefs.parquet", default_task="image_gen.pair_rank",
                    mapping=parse_mapping(["caption=prompt", "images=chosen,rejected"]))
    rows = list(source.rows())
    assert [r.id for r in rows] == [10, 11]
    assert rows[0].data["images"] == [a, b] and rows[1].data["images"] == ["/data/b.png", b]
    missing = Source(tmp_path / "prefs.parquet", mapping=parse_mapping(["images=chosen,nope"]))
    assert "no column 'nope'" in next(missing.rows()).error


def test_a_datasets_save_to_disk_folder_is_read_without_decoding(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    ds = datasets.Dataset.from_dict({"caption": ["r", "g", "b"], "image": images},
                                    features=datasets.Features({"caption": datasets.Value("string"),
                                                                "image": datasets.Image()}))
    ds.save_to_disk(tmp_path / "ds")
    datasets.DatasetDict({"train": ds}).save_to_disk(tmp_path / "dd")
    rows = list(Source(tmp_path / "ds", mapping=parse_mapping(["images=image"]),
                       default_task="image_gen.point_score_acs").rows())
    assert [r.id for r in rows] == [1, 2, 3] and [r.data["caption"] for r in rows] == ["r", "g", "b"]
    decoded = Image.open(io.BytesIO(rows[2].data["images"][0]))
    assert decoded.getpixel((0, 0)) == (0, 0, 255)
    with pytest.raises(BadInputError, match="DatasetDict.*train"):
        Source(tmp_path / "dd")


def test_mapping_and_format_errors_are_named():
    with pytest.raises(BadInputError, match="not an item key"):
        parse_mapping(["picture=img"])
    with pytest.raises(BadInputError, match="item_key=column"):
        parse_mapping(["caption"])
    with pytest.raises(BadInputError, match="unknown input format"):
        Source(Path(__file__))


def test_a_torn_last_line_is_cut_before_appending(tmp_path):
    path = tmp_path / "out.jsonl"
    sink = JsonlSink(path)
    sink.write(ok("a"))
    sink.close()
    with open(path, "a") as handle:
        handle.write('{"id": "b", "verdict": {"task"')  # the process died mid-line
    assert JsonlSink(path).done() == {"a": True}
    sink = JsonlSink(path)
    sink.write(failed("c"))
    sink.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["a", "c"]
    assert JsonlSink(path).done() == {"a": True, "c": False}
    JsonlSink(path).drop({"c"})
    assert JsonlSink(path).done() == {"a": True}


def test_parquet_output_is_complete_files_of_row_groups(tmp_path):
    sink = ParquetSink(tmp_path / "out.parquet", rows_per_part=3)
    for i in range(7):
        sink.write(ok(i, reward=i / 10) if i != 4 else failed(i))
    parts = sorted((tmp_path / "out.parquet").glob("*.parquet"))
    assert len(parts) == 2  # 6 rows on disk as two complete files; the 7th waits in memory
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 6
    sink.close()
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.num_rows == 7 and table["id"].to_pylist() == [str(i) for i in range(7)]
    assert table["reward"].to_pylist()[4] is None and "not found" in table["error"].to_pylist()[4]
    assert json.loads(table["verdict"].to_pylist()[1])["winner"] == 1
    done = ParquetSink(tmp_path / "out.parquet").done()
    assert done == {str(i): i != 4 for i in range(7)}
    ParquetSink(tmp_path / "out.parquet").drop({"4"})
    assert set(ParquetSink(tmp_path / "out.parquet").done()) == {str(i) for i in range(7)} - {"4"}


def test_parquet_drop_is_atomic_per_file(tmp_path, monkeypatch):
    """A crash in the middle of dropping failed rows (before a resume re-scores them) leaves every row once:
    each part file is replaced by its filtered copy in one rename, never rewritten next to the old ones."""
    folder = tmp_path / "out.parquet"
    sink = ParquetSink(folder, rows_per_part=3)
    for i in range(9):
        sink.write(failed(i) if i in (1, 4, 6, 7, 8) else ok(i))
    sink.close()
    original = ParquetSink._write
    calls = []

    def crash_on_second(self, table, name):
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies while replacing the second file
        original(self, table, name)

    monkeypatch.setattr(ParquetSink, "_write", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        ParquetSink(folder).drop({"1", "4", "6", "7", "8"})
    ids = pq.read_table(folder)["id"].to_pylist()
    assert sorted(ids) == sorted(set(ids))  # no row twice
    assert set(ids) == {str(i) for i in range(9)} - {"1"}  # the first file is done, the rest untouched
    assert not list(folder.glob(".*.tmp"))  # no torn temporary file counts as a part
    monkeypatch.setattr(ParquetSink, "_write", original)
    ParquetSink(folder).drop({"4", "6", "7", "8"})  # the resume drops the rest
    assert sorted(pq.read_table(folder)["id"].to_pylist()) == ["0", "2", "3", "5"]
    assert len(list(folder.glob("*.parquet"))) == 2  # the third file held only failed rows: deleted


def write_items(path: Path, n: int, bad: set[int] = frozenset(), duplicate: int | None = None) -> None:
    lines = []
    for i in range(n):
        if i in bad:
            lines.append("{not json")
            continue
        item_id = f"item-{duplicate if i == duplicate + 1 else i}" if duplicate is not None else f"item-{i}"
        lines.append(json.dumps({"id": item_id, "task": "image_gen.pair_rank",
                                 "images": ["data:image/png;base64,AA==", "data:image/png;base64,AB=="],
                                 "caption": f"c{i}"}))
    path.write_text("\n".join(lines) + "\n")


def test_duplicate_ids_are_refused_before_anything_is_sent(tmp_path):
    write_items(tmp_path / "items.jsonl", 10, duplicate=3)
    with pytest.raises(BadInputError, match="'item-3' appears twice"):
        plan_job(Source(tmp_path / "items.jsonl"), open_sink(tmp_path / "out.jsonl"), shard=Shard(), resume=False,
                 retry_failed=True, overwrite=False)
    assert not (tmp_path / "out.jsonl").exists()


def test_an_existing_output_is_never_clobbered_without_overwrite(tmp_path):
    write_items(tmp_path / "items.jsonl", 4)
    sink = JsonlSink(tmp_path / "out.jsonl")
    sink.write(ok("item-0"))
    sink.close()
    with pytest.raises(BadInputError, match="--resume.*--overwrite"):
        plan_job(Source(tmp_path / "items.jsonl"), JsonlSink(tmp_path / "out.jsonl"), shard=Shard(), resume=False,
                 retry_failed=True, overwrite=False)
    plan, skip = plan_job(Source(tmp_path / "items.jsonl"), JsonlSink(tmp_path / "out.jsonl"), shard=Shard(),
                          resume=False, retry_failed=True, overwrite=True)
    assert (plan.todo, skip) == (4, set()) and not (tmp_path / "out.jsonl").exists()


def test_shards_split_the_input_exactly():
    shards = [Shard.parse(f"{i}/3") for i in range(3)]
    assert all(sum(p in s for s in shards) == 1 for p in range(100))
    for bad in ("3/3", "1", "a/b", "0/0"):
        with pytest.raises(BadInputError):
            Shard.parse(bad)


CHAT = {"id": "c", "object": "chat.completion", "created": 0, "model": "UnifiedReward",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Image 2 is better."},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def run(source: Source, output: Path, transport: httpx.MockTransport, **options):
    async def job():
        async with AsyncRewardClient("http://stub/v1", transport=transport, max_retries=0) as client:
            return await run_job(client, source, open_sink(output), **options)
    return asyncio.run(job())


@pytest.mark.parametrize("output", ["out.jsonl", "out.parquet"])
def test_resume_scores_what_is_missing_and_what_failed(tmp_path, output):
    """First run: the server fails every 4th request. Resume: the failures are scored again and replaced,
    nothing is scored twice, the bad line keeps its error; the output holds each id exactly once."""
    write_items(tmp_path / "items.jsonl", 20, bad={7})
    calls = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content)["messages"][0]["content"][-1]["text"].rsplit("[", 1)[1][:-1])
        if len(calls) % 4 == 0:
            return httpx.Response(400, json={"error": {"message": "refused"}})
        return chat_reply(request, CHAT)

    first = run(Source(tmp_path / "items.jsonl"), tmp_path / output, httpx.MockTransport(flaky))
    assert first.written == 20 and first.failed["InputRejectedError"] == 4 and first.failed["BadInputError"] == 1
    assert first.exit_code == 1
    before = len(calls)

    second = run(Source(tmp_path / "items.jsonl"), tmp_path / output,
                 httpx.MockTransport(lambda r: chat_reply(r, CHAT)), resume=True)
    assert (second.plan.done, second.plan.retried, second.plan.todo) == (15, 5, 5)
    assert second.written == 5 and len(calls) == before  # the stub of the second run is another one
    done = open_sink(tmp_path / output).done()
    assert len(done) == 20 and [k for k, good in done.items() if not good] == ["8"]  # line 8: the bad line

    third = run(Source(tmp_path / "items.jsonl"), tmp_path / output,
                httpx.MockTransport(lambda r: chat_reply(r, CHAT)), resume=True, retry_failed=False)
    assert third.plan.todo == 0 and third.written == 0
