"""Datasets in, results out, for jobs that run for hours: rows read lazily from JSONL, CSV, Parquet or a
Hugging Face `datasets` folder (`save_to_disk`); results written the moment they are final, to JSONL
(a line each, flushed) or Parquet (a folder of part files, one per row group, each complete on disk).

pyarrow is imported only for Parquet and `datasets` folders (the `data` extra); JSONL and CSV need nothing.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ._types import FIELD_NAMES, Result
from .errors import BadInputError

MEDIA_KEYS = ("images", "videos", "media")
ITEM_KEYS = ("id", "task", *MEDIA_KEYS, *FIELD_NAMES, "affinity")
# The line a JSONL output has for each input item (other keys follow).
OUTPUT_KEYS = ("id", "verdict", "error", "text", "usage", "latency_s")
ARROW_BATCH = 256


@dataclass(frozen=True)
class Row:
    """One input row: its 0-based position, its 1-based line (or row) number, and the item as a mapping,
    or the reason it is not one."""

    position: int
    line: int
    data: dict[str, Any] | None
    error: str | None = None

    @property
    def id(self) -> Any:
        """The row's id, or its line number when it has none."""
        if self.data is not None and self.data.get("id") is not None:
            return self.data["id"]
        return self.line


def id_key(value: Any) -> str:
    """Ids compare as text: 7 and "7" are the same id (an output file may hold either)."""
    return value if isinstance(value, str) else json.dumps(value)


def parse_mapping(specs: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """--map caption=prompt --map images=image_0,image_1 -> {"caption": ("prompt",), "images": (...)}."""
    mapping: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        target, sep, sources = spec.partition("=")
        target, names = target.strip(), tuple(s.strip() for s in sources.split(",") if s.strip())
        if not sep or not names:
            raise BadInputError(f"--map {spec!r}: write it as item_key=column[,column...]")
        if target not in ITEM_KEYS:
            raise BadInputError(f"--map {spec!r}: {target!r} is not an item key; one of {', '.join(ITEM_KEYS)}")
        mapping[target] = names
    return mapping


class Source:
    """Rows of a dataset file or folder, read lazily; the format is chosen by the path."""

    def __init__(self, path: Path, *, mapping: Mapping[str, tuple[str, ...]] | None = None,
                 default_task: str | None = None) -> None:
        self.path = Path(path)
        self.mapping = dict(mapping or {})
        self.default_task = default_task
        if not self.path.exists():
            raise BadInputError(f"input not found: {self.path}")
        self.format = _input_format(self.path)
        self._base = self.path if self.path.is_dir() else self.path.parent

    def rows(self) -> Iterator[Row]:
        records = {"jsonl": self._jsonl, "csv": self._csv, "parquet": self._arrow, "datasets": self._arrow}
        for position, (line, data, error) in enumerate(records[self.format]()):
            if data is not None:
                try:
                    data = self._item(data)
                except BadInputError as exc:
                    data, error = None, str(exc)
            yield Row(position, line, data, f"line {line}: {error}" if error else None)

    # -- readers: (line number, raw record or None, error) -----------------------------------------

    def _jsonl(self) -> Iterator[tuple[int, dict | None, str | None]]:
        with open(self.path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield number, None, f"invalid JSON: {exc}"
                    continue
                if not isinstance(data, dict):
                    yield number, None, f"an item must be an object, not {type(data).__name__}"
                    continue
                yield number, data, None

    def _csv(self) -> Iterator[tuple[int, dict | None, str | None]]:
        with open(self.path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            for record in reader:
                yield reader.line_num, {k: v for k, v in record.items() if k is not None and v != ""}, None

    def _arrow(self) -> Iterator[tuple[int, dict | None, str | None]]:
        number = 0
        for batch in _arrow_batches(self.path, self.format):
            for record in batch.to_pylist():
                number += 1
                yield number, record, None

    # -- a record as an item mapping ----------------------------------------------------------------

    def _item(self, record: dict[str, Any]) -> dict[str, Any]:
        item = dict(record)
        for target, sources in self.mapping.items():
            missing = [s for s in sources if s not in record]
            if missing:
                raise BadInputError(f"no column {', '.join(map(repr, missing))} (from --map {target}=...)")
            values = [record[s] for s in sources]
            item[target] = values if len(values) > 1 or target in MEDIA_KEYS else values[0]
        if item.get("task") is None and self.default_task:
            item["task"] = self.default_task
        for key in MEDIA_KEYS:
            if item.get(key) is not None:
                item[key] = [self._medium(m) for m in _as_list(item[key])]
        return {k: v for k, v in item.items() if k in ITEM_KEYS or k == "fields"}

    def _medium(self, value: Any) -> Any:
        """A path, URL, raw bytes, or the {"bytes", "path"} struct that Parquet and `datasets.Image` write."""
        if isinstance(value, Mapping) and ("bytes" in value or "path" in value):
            value = value.get("bytes") or value.get("path")
            if value is None:
                raise BadInputError("a media struct with neither bytes nor path")
        if isinstance(value, str) and not value.startswith(("http://", "https://", "data:")):
            path = Path(value)
            if not path.is_absolute() and not path.exists() and (self._base / path).exists():
                return str(self._base / path)  # relative to the dataset, not to where the job runs
        return value


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str) and value.lstrip().startswith("["):  # a JSON list in a CSV cell
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise BadInputError(f"media list is not valid JSON: {value[:80]!r}") from None
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _input_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_dict.json").exists():
            splits = sorted(p.name for p in path.iterdir() if p.is_dir())
            raise BadInputError(f"{path} is a DatasetDict: give one split's folder ({', '.join(splits)})")
        if (path / "state.json").exists():
            return "datasets"
        if any(path.glob("*.parquet")):
            return "parquet"
        raise BadInputError(f"{path}: a folder must be a `datasets` save_to_disk folder or hold *.parquet files")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix == ".parquet":
        return "parquet"
    raise BadInputError(f"{path}: unknown input format {suffix!r} (.jsonl, .csv, .parquet, or a folder)")


def _pyarrow():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise BadInputError("Parquet and `datasets` folders need pyarrow: pip install 'unifiedreward-serve[data]'") \
            from None
    return pyarrow


def _arrow_batches(path: Path, fmt: str):
    """Record batches of a Parquet file or folder, or of a `datasets` folder's Arrow files, in order. Image
    columns stay {"bytes", "path"} structs: nothing is decoded here."""
    pa = _pyarrow()
    if fmt == "parquet":
        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        for file in files:
            yield from pa.parquet.ParquetFile(file).iter_batches(batch_size=ARROW_BATCH)
        return
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    for entry in state.get("_data_files", []):
        with pa.memory_map(str(path / entry["filename"])) as source:
            for batch in pa.ipc.open_stream(source):
                for offset in range(0, batch.num_rows, ARROW_BATCH):
                    yield batch.slice(offset, ARROW_BATCH)


# -- outputs -----------------------------------------------------------------------------------------

def output_record(result: Result) -> dict[str, Any]:
    """A result as one output line: OUTPUT_KEYS first, then the rest of Result.to_dict()."""
    full = result.to_dict()
    return {**{k: full[k] for k in OUTPUT_KEYS}, **{k: v for k, v in full.items() if k not in OUTPUT_KEYS}}


class Sink:
    """Where results go, each as soon as it is final. `done()` reads what an earlier run wrote."""

    path: Path

    def write(self, result: Result) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def done(self) -> dict[str, bool]:
        """id key -> whether that id's result is a success, for every result on disk."""
        raise NotImplementedError

    def drop(self, keys: set[str]) -> None:
        """Remove the results of these ids (failed ones a resumed job scores again)."""
        raise NotImplementedError

    def exists(self) -> bool:
        raise NotImplementedError

    def clear(self) -> None:
        """Remove every result on disk (--overwrite)."""
        raise NotImplementedError


def open_sink(path: Path | None) -> Sink:
    """By extension: .parquet -> ParquetSink (a folder of parts), None -> standard output, else JsonlSink."""
    if path is None:
        return StdoutSink()
    return ParquetSink(Path(path)) if Path(path).suffix.lower() == ".parquet" else JsonlSink(Path(path))


class StdoutSink(Sink):
    """JSONL lines on standard output, flushed one by one (for pipes); nothing to resume from."""

    path = Path("-")

    def write(self, result: Result) -> None:
        sys.stdout.write(json.dumps(output_record(result), ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def close(self) -> None:
        sys.stdout.flush()

    def done(self) -> dict[str, bool]:
        return {}

    def drop(self, keys: set[str]) -> None:
        return None

    def exists(self) -> bool:
        return False

    def clear(self) -> None:
        return None


class JsonlSink(Sink):
    """One line per result, written and flushed at once: a process killed at any moment leaves every
    finished line on disk (a torn last line is cut off when the job resumes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = None

    def exists(self) -> bool:
        return self.path.exists() and self.path.stat().st_size > 0

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def write(self, result: Result) -> None:
        if self._file is None:
            self._repair()
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(output_record(result), ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _repair(self) -> None:
        """Cut a torn last line (the process died while writing it) so the next line starts clean."""
        if not self.exists():
            return
        with open(self.path, "rb+") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 1))
            if handle.read(1) == b"\n":
                return
            data = self.path.read_bytes()
            handle.truncate(data.rfind(b"\n") + 1)

    def _records(self) -> Iterator[dict[str, Any]]:
        with open(self.path, encoding="utf-8") as lines:
            for line in lines:
                if not line.endswith("\n"):
                    break  # torn by a crash: not a result
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and "id" in record:
                    yield record

    def done(self) -> dict[str, bool]:
        if not self.exists():
            return {}
        return {id_key(r["id"]): r.get("error") is None for r in self._records()}

    def drop(self, keys: set[str]) -> None:
        if not keys or not self.exists():
            return
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "w", encoding="utf-8") as out:
            for record in self._records():
                if id_key(record["id"]) not in keys:
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(temporary, self.path)


PARQUET_COLUMNS = ("id", "task", "reward", "reward_kind", "verdict", "error", "error_type", "text",
                   "prompt_tokens", "completion_tokens", "latency_s", "endpoint", "attempts", "backoff_s",
                   "swapped", "agreement")


@dataclass
class ParquetSink(Sink):
    """A folder of Parquet part files (readable as one table by pyarrow, pandas, `datasets`, DuckDB).
    Results are buffered into row groups of `rows_per_part` (or `flush_s` seconds' worth) and each group is
    written as a complete file (temporary name, then renamed): a crash loses at most the current group."""

    path: Path
    rows_per_part: int = 256
    flush_s: float = 10.0
    _rows: list[dict[str, Any]] = field(default_factory=list)
    _first_at: float = 0.0
    _run: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6])
    _parts: int = 0

    def exists(self) -> bool:
        return self.path.is_dir() and any(self.path.glob("*.parquet"))

    def clear(self) -> None:
        for file in self.path.glob("*.parquet"):
            file.unlink()

    def write(self, result: Result) -> None:
        if not self._rows:
            self._first_at = time.monotonic()
        self._rows.append(_parquet_row(result))
        if len(self._rows) >= self.rows_per_part or time.monotonic() - self._first_at >= self.flush_s:
            self._flush()

    def close(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        pa = _pyarrow()
        self.path.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(self._rows, schema=_parquet_schema(pa))
        self._write(table, f"part-{self._run}-{self._parts:05d}.parquet")
        self._parts += 1
        self._rows = []

    def _write(self, table, name: str) -> None:
        pa = _pyarrow()
        temporary = self.path / f".{name}.tmp"
        pa.parquet.write_table(table, temporary)
        os.replace(temporary, self.path / name)

    def _table(self):
        pa = _pyarrow()
        files = sorted(self.path.glob("*.parquet"))
        return pa.concat_tables([pa.parquet.read_table(f, schema=_parquet_schema(pa)) for f in files]), files

    def done(self) -> dict[str, bool]:
        if not self.exists():
            return {}
        table, _ = self._table()
        return {key: error is None for key, error in zip(table["id"].to_pylist(), table["error"].to_pylist(),
                                                         strict=True)}

    def drop(self, keys: set[str]) -> None:
        """Remove the rows of `keys` file by file, each file replaced by its filtered copy in one rename (or
        deleted when nothing is left): a crash at any moment leaves every row once, at worst some of the
        rows to drop still there (the next resume drops them)."""
        if not keys or not self.exists():
            return
        pa = _pyarrow()
        for file in sorted(self.path.glob("*.parquet")):
            table = pa.parquet.read_table(file, schema=_parquet_schema(pa))
            keep = [k not in keys for k in table["id"].to_pylist()]
            if all(keep):
                continue
            if not any(keep):
                file.unlink()
                continue
            self._write(table.filter(pa.array(keep)), file.name)


def _parquet_schema(pa):
    string, real, integer = pa.string(), pa.float64(), pa.int64()
    types = {"reward": real, "latency_s": real, "backoff_s": real, "prompt_tokens": integer,
             "completion_tokens": integer, "attempts": integer, "agreement": pa.bool_()}
    return pa.schema([(name, types.get(name, string)) for name in PARQUET_COLUMNS])


def _parquet_row(result: Result) -> dict[str, Any]:
    """Flat columns; nested parts (verdict, the swapped order) as JSON text; the id as text."""
    record = result.to_dict()
    usage = record.pop("usage") or {}
    row = {k: record.get(k) for k in PARQUET_COLUMNS}
    row.update(id=id_key(result.id), prompt_tokens=usage.get("prompt_tokens"),
               completion_tokens=usage.get("completion_tokens"))
    for nested in ("verdict", "swapped"):
        row[nested] = json.dumps(record[nested], ensure_ascii=False) if record.get(nested) is not None else None
    return row
