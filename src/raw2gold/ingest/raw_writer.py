"""Land Airbyte RECORD messages as Parquet in the raw layer, in bounded batches.

Columns of a raw file, from the stream's JSON schema in the catalog:

- one column per schema property: ``integer`` -> int64, ``number`` -> float64, ``boolean`` ->
  bool, ``string`` -> string (also with a ``format`` such as date-time: raw keeps the source's
  values, typing is the processed layer's job); ``object``, ``array``, a property without a type
  and a union of several non-null types -> JSON text (string). ``"null"`` in a type union only
  means nullable. Every column is nullable; a key missing from a record is null.
- ``_airbyte_raw_id`` (uuid4 string), ``_airbyte_extracted_at`` (timestamp[us, UTC], from the
  record's ``emitted_at``), ``_airbyte_meta`` (JSON text: ``{"changes": [...]}``, the changes the
  connector reported), ``_raw2gold_run_id`` (string).
- ``_airbyte_extra`` (JSON text object, null when none): keys of a record that the schema does
  not declare. Nothing a connector sends is lost, and the file schema stays fixed for the run.

A string holding a number in a number/integer column (``"10001.5"``: source-file types a CSV
from its first 10 000 rows, and pandas turns a later chunk with one bad value into strings) is
cast, and the cast is listed in ``_airbyte_meta.changes`` (``{"field", "change": "CAST",
"reason"}``); an integral float is accepted for an integer. A record with a value that does not
fit its column otherwise (``"abc"`` for an integer, an object for a string) is not written to the
raw file and does not stop the run: it goes, with the reason and the original stdout line, to
``<run dir>/_quarantine/part-NNNNN.parquet`` (columns ``_airbyte_raw_id``, ``reason``,
``raw_line``). Folders starting with ``_`` are hidden from Spark and DuckDB directory reads.

Rows are buffered per stream and flushed every ``batch_rows`` as one row group; a file is rolled
after ``rows_per_file`` rows, so memory stays flat whatever the stream's size. A stream without
records writes no file: its file list in the manifest is empty.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from raw2gold.lake.layout import Lake

INTEGER, NUMBER, BOOLEAN, STRING, JSON = "integer", "number", "boolean", "string", "json"
ARROW_TYPES: dict[str, pa.DataType] = {
    INTEGER: pa.int64(),
    NUMBER: pa.float64(),
    BOOLEAN: pa.bool_(),
    STRING: pa.string(),
    JSON: pa.string(),
}
META_COLUMNS = [
    pa.field("_airbyte_raw_id", pa.string(), nullable=False),
    pa.field("_airbyte_extracted_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("_airbyte_meta", pa.string(), nullable=False),
    pa.field("_airbyte_extra", pa.string()),
    pa.field("_raw2gold_run_id", pa.string(), nullable=False),
]
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("_airbyte_raw_id", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("raw_line", pa.string()),
    ]
)
EMPTY_META = '{"changes":[]}'
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DEFAULT_BATCH_ROWS = 10_000
DEFAULT_ROWS_PER_FILE = 1_000_000


def column_kind(prop: Any) -> str:
    """The raw column kind of one JSON-schema property (see the module docstring)."""
    if not isinstance(prop, dict):
        return JSON
    declared = prop.get("type")
    types = [declared] if isinstance(declared, str) else list(declared or [])
    types = [t for t in types if t != "null"]
    if len(types) != 1:
        return JSON
    kind = types[0]
    if kind == "number" and prop.get("airbyte_type") == "integer":
        return INTEGER
    if kind in (INTEGER, NUMBER, BOOLEAN, STRING):
        return str(kind)
    return JSON


def columns_from_json_schema(json_schema: dict[str, Any]) -> dict[str, str]:
    """Column name -> kind, in the schema's property order (metadata names are skipped)."""
    properties = json_schema.get("properties") or {}
    reserved = {f.name for f in META_COLUMNS}
    return {name: column_kind(prop) for name, prop in properties.items() if name not in reserved}


def arrow_schema(columns: dict[str, str]) -> pa.Schema:
    """The Arrow schema of a raw file: the data columns, then the metadata columns."""
    data = [pa.field(name, ARROW_TYPES[kind]) for name, kind in columns.items()]
    return pa.schema([*data, *META_COLUMNS])


class Violation(ValueError):
    """A value does not fit its declared type."""


def _to_int(value: Any) -> int:
    if type(value) is int:
        if INT64_MIN <= value <= INT64_MAX:
            return value
        raise Violation("integer out of int64 range")
    if type(value) is float and value.is_integer():
        return int(value)
    raise Violation(f"expected integer, got {type(value).__name__}")


def _to_float(value: Any) -> float:
    if type(value) in (int, float):
        return float(value)
    raise Violation(f"expected number, got {type(value).__name__}")


def _to_bool(value: Any) -> bool:
    if type(value) is bool:
        return bool(value)
    raise Violation(f"expected boolean, got {type(value).__name__}")


def _to_str(value: Any) -> str:
    if type(value) is str:
        return str(value)
    raise Violation(f"expected string, got {type(value).__name__}")


def _to_json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _cast_string(kind: str, value: Any) -> int | float:
    """A numeric string for a number/integer column, cast; anything else is a Violation."""
    if type(value) is str and kind in (INTEGER, NUMBER):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            if kind == NUMBER:
                return number
            if number.is_integer():
                return _to_int(int(text) if text.lstrip("+-").isdigit() else number)
    raise Violation(f"expected {kind}, got {type(value).__name__}")


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    INTEGER: _to_int,
    NUMBER: _to_float,
    BOOLEAN: _to_bool,
    STRING: _to_str,
    JSON: _to_json,
}


def _preview(value: Any) -> str:
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= 60 else text[:57] + "..."


class _PartWriter:
    """Numbered Parquet files in one folder of the lake, rolled after ``rows_per_file`` rows."""

    def __init__(self, lake: Lake, folder: str, schema: pa.Schema, rows_per_file: int):
        self.lake = lake
        self.folder = folder
        self.schema = schema
        self.rows_per_file = rows_per_file
        self.files: list[str] = []
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_file = 0

    def write(self, table: pa.Table) -> None:
        if self._writer is None or self._rows_in_file >= self.rows_per_file:
            self._close_file()
            relative = f"{self.folder}/part-{len(self.files):05d}.parquet"
            self.lake.fs.create_dir(self.lake.path(self.folder), recursive=True)
            self._writer = pq.ParquetWriter(
                self.lake.path(relative), self.schema, filesystem=self.lake.fs, compression="zstd"
            )
            self.files.append(relative)
            self._rows_in_file = 0
        self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self._rows_in_file += table.num_rows
        self.rows += table.num_rows

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> None:
        self._close_file()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._close_file()
        self._writer = None


class QuarantineWriter:
    """Rows that could not be landed: id, reason and the connector's original line."""

    def __init__(self, lake: Lake, folder: str, batch_rows: int = DEFAULT_BATCH_ROWS):
        self.batch_rows = batch_rows
        self._parts = _PartWriter(lake, folder, QUARANTINE_SCHEMA, DEFAULT_ROWS_PER_FILE)
        self._ids: list[str] = []
        self._reasons: list[str] = []
        self._lines: list[str] = []

    @property
    def count(self) -> int:
        return self._parts.rows + len(self._ids)

    @property
    def files(self) -> list[str]:
        return list(self._parts.files)

    def add(self, raw_id: str, reason: str, line: bytes) -> None:
        self._ids.append(raw_id)
        self._reasons.append(reason)
        self._lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
        if len(self._ids) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if not self._ids:
            return
        table = pa.table([self._ids, self._reasons, self._lines], schema=QUARANTINE_SCHEMA)
        self._parts.write(table)
        self._ids, self._reasons, self._lines = [], [], []

    def close(self) -> list[str]:
        self.flush()
        self._parts.close()
        return self.files

    def abort(self) -> None:
        self._parts.abort()


@dataclass
class StreamResult:
    """What one stream landed in a run."""

    files: list[str]
    records: int
    quarantined: int
    quarantine_files: list[str]
    extra_columns: list[str] = field(default_factory=list)


class StreamWriter:
    """Buffers one stream's records and writes them as Parquet row groups."""

    def __init__(
        self,
        lake: Lake,
        run_dir: str,
        json_schema: dict[str, Any],
        run_id: str,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    ):
        self.lake = lake
        self.run_dir = run_dir
        self.run_id = run_id
        self.batch_rows = batch_rows
        self.columns = columns_from_json_schema(json_schema)
        self.schema = arrow_schema(self.columns)
        self._names = list(self.columns)
        self._known = set(self._names)
        self._converters = [(name, kind, CONVERTERS[kind]) for name, kind in self.columns.items()]
        self._parts = _PartWriter(lake, run_dir, self.schema, rows_per_file)
        self.quarantine = QuarantineWriter(lake, f"{run_dir}/_quarantine", batch_rows)
        self._extra_names: set[str] = set()
        self._reset()

    def _reset(self) -> None:
        self._data: list[list[Any]] = [[] for _ in self._names]
        self._raw_ids: list[str] = []
        self._extracted: list[int] = []
        self._meta: list[str] = []
        self._extra: list[str | None] = []

    def add(self, record: dict[str, Any], line: bytes) -> None:
        """Add one RECORD body (``message["record"]``); quarantine it if a value does not fit."""
        raw_id = str(uuid.uuid4())
        data = record.get("data")
        if not isinstance(data, dict):
            self.quarantine.add(raw_id, "record data is not a JSON object", line)
            return
        values: list[Any] = []
        casts: list[dict[str, str]] = []
        for name, kind, convert in self._converters:
            value = data.get(name)
            if value is None:
                values.append(None)
                continue
            try:
                values.append(convert(value))
            except Violation as exc:
                try:
                    values.append(_cast_string(kind, value))
                except Violation:
                    reason = f"column {name!r}: {exc} ({_preview(value)})"
                    self.quarantine.add(raw_id, reason, line)
                    return
                casts.append({"field": name, "change": "CAST", "reason": f"string to {kind}"})
        extra: str | None = None
        if not data.keys() <= self._known:
            unknown = {k: v for k, v in data.items() if k not in self._known}
            self._extra_names.update(unknown)
            extra = orjson.dumps(unknown).decode()
        emitted_at = record.get("emitted_at")
        if not isinstance(emitted_at, int | float) or isinstance(emitted_at, bool):
            emitted_at = time.time() * 1000
        meta = record.get("meta")
        changes = meta.get("changes") if isinstance(meta, dict) else None
        if casts:
            changes = [*(changes if isinstance(changes, list) else []), *casts]
        for column, value in zip(self._data, values, strict=True):
            column.append(value)
        self._raw_ids.append(raw_id)
        self._extracted.append(int(round(emitted_at * 1000)))
        self._meta.append(orjson.dumps({"changes": changes}).decode() if changes else EMPTY_META)
        self._extra.append(extra)
        if len(self._raw_ids) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one row group."""
        if not self._raw_ids:
            return
        arrays = [
            pa.array(values, type=self.schema.field(i).type) for i, values in enumerate(self._data)
        ]
        arrays += [
            pa.array(self._raw_ids, pa.string()),
            pa.array(self._extracted, pa.timestamp("us", tz="UTC")),
            pa.array(self._meta, pa.string()),
            pa.array(self._extra, pa.string()),
            pa.array([self.run_id] * len(self._raw_ids), pa.string()),
        ]
        self._parts.write(pa.Table.from_arrays(arrays, schema=self.schema))
        self._reset()

    def close(self) -> StreamResult:
        """Flush and close; return the files written (lake-relative) and the counts."""
        self.flush()
        self._parts.close()
        quarantine_files = self.quarantine.close()
        return StreamResult(
            files=list(self._parts.files),
            records=self._parts.rows,
            quarantined=self.quarantine.count,
            quarantine_files=quarantine_files,
            extra_columns=sorted(self._extra_names),
        )

    def abort(self) -> None:
        """Close without caring for errors; the caller deletes the folder."""
        self._parts.abort()
        self.quarantine.abort()
