"""Sources synced by an Airbyte server (OSS or Cloud): trigger, wait, cancel, register into raw.

The sync runs on the Airbyte server through the Airflow provider's :class:`AirbyteHook`
(``POST /jobs``, ``GET /jobs/{id}``, ``DELETE /jobs/{id}``). The connection's S3 destination
writes files under ``destination_uri`` + ``path_pattern`` (``{stream}`` and ``{source}`` are
filled in; a local folder works too). :func:`register_destination_files` then turns the files
that no committed run has registered yet into a raw run with the same contract as the embedded
path (:mod:`raw2gold.ingest.runner`):

- the rows are copied into ``raw/<source>/<stream>/ingest_date=…/run_id=…/part-*.parquet``
  (raw is raw2gold's own immutable layer; the destination bucket is not), with the columns of
  :mod:`raw2gold.ingest.raw_writer`. The destination's ``_airbyte_raw_id``,
  ``_airbyte_extracted_at`` and ``_airbyte_meta`` are kept (``_airbyte_meta`` as JSON text);
  JSONL/CSV files written without flattening (one ``_airbyte_data`` object) are expanded.
- the column types come from the files (Parquet: the file schema; JSONL/CSV: the values), since
  the catalog lives on the server.
- the manifest, written last, lists the original destination objects (``airbyte.
  registered_objects`` and per stream ``destination_objects``); the next run skips them. The same
  ``run_id`` again returns the committed manifest. A failure writes no manifest and removes the
  run's partial files. ``state`` is ``None``: Airbyte keeps the connection's state.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raw2gold.config.models import AirbyteServerSpec, LakeConfig, PipelineConfig, SourceConfig
from raw2gold.errors import Raw2GoldError, first_line
from raw2gold.ingest.raw_writer import (
    EMPTY_META,
    INTEGER,
    JSON,
    NUMBER,
    STRING,
    StreamWriter,
    Violation,
    _cast_string,
    _preview,
)
from raw2gold.ingest.runner import _check_ids, _now, _remove_run_files
from raw2gold.lake.layout import Lake

if TYPE_CHECKING:
    from airflow.providers.airbyte.hooks.airbyte import AirbyteHook

logger = logging.getLogger("raw2gold.ingest.airbyte")

IN_PROGRESS = frozenset({"pending", "queued", "running", "incomplete"})
SUCCEEDED = "succeeded"
MAX_POLL_ERRORS = 5
SUFFIXES = {
    "parquet": (".parquet",),
    "jsonl": (".jsonl", ".jsonl.gz", ".json", ".json.gz"),
    "csv": (".csv", ".csv.gz"),
}
# Airbyte's own columns in destination files (Destinations V2 names, then the V1 ones).
AIRBYTE_COLUMNS = {
    "_airbyte_raw_id",
    "_airbyte_extracted_at",
    "_airbyte_meta",
    "_airbyte_generation_id",
    "_airbyte_data",
    "_airbyte_ab_id",
    "_airbyte_emitted_at",
    "_airbyte_loaded_at",
}
LogFn = Callable[[str], None]
READ_CHUNK = 1 << 20  # bytes of a JSONL/CSV destination file read at a time


class AirbyteJobError(Raw2GoldError):
    """An Airbyte job ended without success (one line: job id, connection, status)."""

    def __init__(self, job_id: int, connection_id: str, status: str, detail: str = ""):
        self.job_id, self.connection_id, self.status = job_id, connection_id, status
        text = f"Airbyte job {job_id} of connection {connection_id} ended with status {status}"
        super().__init__(f"{text}: {detail}" if detail else text)


class AirbyteJobTimeout(AirbyteJobError):
    """The job did not finish in time; it was cancelled."""


# ---- the server: trigger, wait, cancel --------------------------------------------------------
def airbyte_hook(conn_id: str, request_timeout: float | None = None) -> AirbyteHook:
    """The provider's hook for an Airflow connection of type airbyte (host = API base URL)."""
    from airflow.providers.airbyte.hooks.airbyte import AirbyteHook

    return AirbyteHook(airbyte_conn_id=conn_id, timeout=request_timeout)


def _status_text(status: Any) -> str:
    return str(getattr(status, "value", status)).lower()


def submit_sync(hook: AirbyteHook, connection_id: str) -> tuple[int, str]:
    """Start a sync of the connection: ``(job id, status)``."""
    job = hook.submit_sync_connection(connection_id=connection_id)
    return int(job.job_id), _status_text(job.status)


def job_status(hook: AirbyteHook, job_id: int) -> str:
    """The job's status in lower case (pending, queued, running, succeeded, failed, ...)."""
    return _status_text(hook.get_job_details(job_id=job_id).status)


def cancel_job(hook: AirbyteHook, job_id: int, log: LogFn | None = None) -> bool:
    """Cancel the job (``DELETE /jobs/{id}``), best effort: False when the server refused."""
    say = log or logger.info
    try:
        hook.cancel_job(job_id=job_id)
    except Exception as exc:
        say(f"could not cancel Airbyte job {job_id}: {first_line(exc)[:200]}")
        return False
    say(f"cancelled Airbyte job {job_id}")
    return True


def wait_for_sync(
    hook: AirbyteHook,
    job_id: int,
    connection_id: str,
    *,
    poll_seconds: float = 3.0,
    timeout: float | None = None,
    log: LogFn | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Poll until the job ends; return ``succeeded`` or raise :class:`AirbyteJobError`.

    ``queued`` counts as in progress (the provider's ``wait_for_job`` raises on it). After
    ``timeout`` seconds the job is cancelled and :class:`AirbyteJobTimeout` raised. A few
    consecutive API errors are retried; more raise.
    """
    say = log or logger.info
    deadline = None if timeout is None else time.monotonic() + timeout
    errors = 0
    last = "unknown"
    while True:
        try:
            status = job_status(hook, job_id)
            errors = 0
        except Exception as exc:
            errors += 1
            if errors >= MAX_POLL_ERRORS:
                raise AirbyteJobError(
                    job_id, connection_id, "unknown", first_line(exc)[:200]
                ) from exc
            status = last
        if status == SUCCEEDED:
            return status
        if status not in IN_PROGRESS and status != "unknown":
            raise AirbyteJobError(job_id, connection_id, status)
        if status != last:
            say(f"Airbyte job {job_id}: {status}")
            last = status
        if deadline is not None and time.monotonic() >= deadline:
            cancel_job(hook, job_id, say)
            raise AirbyteJobTimeout(job_id, connection_id, status, f"cancelled after {timeout}s")
        sleep(
            poll_seconds
            if deadline is None
            else max(0.0, min(poll_seconds, deadline - time.monotonic()))
        )


# ---- the destination --------------------------------------------------------------------------
@dataclass(frozen=True)
class DestinationObject:
    """One file the destination wrote."""

    uri: str
    path: str  # for the store's file system
    size: int
    mtime: str | None


def destination_store(config: PipelineConfig, source_name: str) -> Lake:
    """The destination as a :class:`Lake` (same file system code; S3 uses the lake's settings).

    Default ``destination_uri``: ``<lake>/_landing/airbyte/<source>`` (hidden from raw readers).
    """
    spec = _spec(config, source_name)
    uri = spec.destination_uri
    if uri is None:
        uri = Lake(config.lake).uri(f"_landing/airbyte/{source_name}")
    elif "://" not in uri and not Path(uri).is_absolute():
        uri = str((Path(config.base_dir) / uri).resolve())
    return Lake(LakeConfig(uri=uri, s3=config.lake.s3))


def _spec(config: PipelineConfig, source_name: str) -> AirbyteServerSpec:
    source = config.sources.get(source_name)
    if source is None:
        raise KeyError(f"source {source_name!r} is not in the pipeline")
    if source.airbyte is None:
        raise ValueError(f"source {source_name!r} is an embedded connector, not an airbyte: one")
    return source.airbyte


def list_destination_objects(
    store: Lake, spec: AirbyteServerSpec, source_name: str, stream: str
) -> list[DestinationObject]:
    """The stream's files under ``path_pattern`` (text after the last ``/`` is a name prefix)."""
    pattern = spec.path_pattern.format(stream=stream, source=source_name)
    folder, _, prefix = pattern.rpartition("/")
    base = store.path(folder)
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    found = []
    for info in store.fs.get_file_info(selector):
        name = info.path.rsplit("/", 1)[-1]
        relative = info.path[len(base) :].lstrip("/")
        if (
            info.type != pafs.FileType.File
            or name.startswith((".", "_"))
            or not relative.startswith(prefix)
            or not name.lower().endswith(SUFFIXES[spec.format])
        ):
            continue
        mtime = info.mtime.isoformat() if info.mtime is not None else None
        uri = f"s3://{info.path}" if store.scheme == "s3" else info.path
        found.append(DestinationObject(uri, info.path, int(info.size or 0), mtime))
    return sorted(found, key=lambda o: o.uri)


def registered_objects(lake: Lake, source_name: str) -> set[str]:
    """Destination objects registered by the source's committed runs."""
    done: set[str] = set()
    for manifest in lake.committed_raw_runs(source_name):
        done.update((manifest.get("airbyte") or {}).get("registered_objects") or [])
    return done


# ---- reading destination files ----------------------------------------------------------------
# JSON's own scalar types, and the column kind each gives (one lookup per value)
_SCALAR_KINDS: dict[type, str | None] = {
    type(None): None,
    bool: "boolean",
    int: INTEGER,
    float: NUMBER,
    str: STRING,
}
_NO_CHANGES: dict[str, Any] = {"changes": []}


def _plain(value: Any) -> Any:
    """A JSON-ready value: timestamps and dates as ISO text, decimals as float, bytes base64."""
    if type(value) in _SCALAR_KINDS:  # most values of a JSONL or CSV file: as they are
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def _arrow_kind(kind: pa.DataType) -> str:
    if pa.types.is_integer(kind):
        return INTEGER
    if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return NUMBER
    if pa.types.is_boolean(kind):
        return "boolean"
    if (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_temporal(kind)
        or pa.types.is_binary(kind)
    ):
        return STRING
    return JSON


def _value_kind(value: Any) -> str | None:
    kind = type(value)
    if kind in _SCALAR_KINDS:  # JSON's own types: one lookup
        return _SCALAR_KINDS[kind]
    value = _plain(value)
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return INTEGER
    if isinstance(value, float):
        return NUMBER
    if isinstance(value, str):
        return STRING
    return JSON


def _merge_kind(old: str | None, new: str | None) -> str | None:
    if old is None or old == new:
        return new if old is None else old
    if new is None:
        return old
    if {old, new} == {INTEGER, NUMBER}:
        return NUMBER
    return JSON


def _lines(store: Lake, obj: DestinationObject) -> Iterator[bytes]:
    """The file's lines, without their ``\\n``, read :data:`READ_CHUNK` bytes at a time
    (decompressed when its name says so): memory stays flat however large the file is."""
    with store.fs.open_input_stream(obj.path, compression="detect") as stream:
        rest = b""
        while block := stream.read(READ_CHUNK):
            *lines, rest = (rest + block).split(b"\n")
            yield from lines
        if rest:
            yield rest


def _rows(store: Lake, obj: DestinationObject, fmt: str) -> Iterator[dict[str, Any]]:
    """The file's rows as dicts, as the destination wrote them, streamed."""
    if fmt == "parquet":
        with store.fs.open_input_file(obj.path) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=10_000):
                yield from batch.to_pylist()
    elif fmt == "jsonl":
        for line in _lines(store, obj):
            if line.strip():
                yield orjson.loads(line)
    else:  # a quoted value may span lines: the csv module joins them
        yield from csv.DictReader(line.decode("utf-8") + "\n" for line in _lines(store, obj))


def _data(row: dict[str, Any]) -> dict[str, Any]:
    """The record's own fields: ``_airbyte_data`` (not flattened) or the non-Airbyte columns."""
    nested = row.get("_airbyte_data")
    if isinstance(nested, str):
        nested = orjson.loads(nested) if nested.strip() else {}
    if isinstance(nested, dict):
        return nested
    return {k: v for k, v in row.items() if k not in AIRBYTE_COLUMNS}


def _extracted_us(value: Any) -> int:
    """``_airbyte_extracted_at`` (timestamp, epoch ms, or ISO text) as epoch microseconds."""
    if isinstance(value, dt.datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return int(stamp.timestamp() * 1_000_000)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text) * 1000
        return _extracted_us(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(round(value * 1000))
    return int(time.time() * 1_000_000)


def _meta(value: Any, casts: list[dict[str, str]]) -> str:
    """``_airbyte_meta`` as JSON text with a ``changes`` list (casts made here appended)."""
    if not casts and (value is None or value == _NO_CHANGES or value == EMPTY_META):
        return EMPTY_META  # most rows
    if isinstance(value, str):
        value = orjson.loads(value) if value.strip() else None
    meta = _plain(value) if isinstance(value, dict) else {}
    changes = [*(meta.get("changes") or []), *casts]
    if not changes and set(meta) <= {"changes"}:
        return EMPTY_META
    return orjson.dumps({**meta, "changes": changes}).decode()


def _json_schema(kinds: dict[str, str | None]) -> dict[str, Any]:
    properties = {
        name: {} if kind in (None, JSON) else {"type": ["null", kind]}
        for name, kind in kinds.items()
    }
    return {"type": "object", "properties": properties}


def stream_schema(store: Lake, objects: list[DestinationObject], fmt: str) -> dict[str, Any]:
    """A JSON schema of the records in ``objects``, in first-seen column order."""
    kinds: dict[str, str | None] = {}
    for obj in objects:
        if fmt == "parquet":
            with store.fs.open_input_file(obj.path) as handle:
                schema = pq.read_schema(handle)
            if "_airbyte_data" not in schema.names:
                for field in schema:
                    if field.name not in AIRBYTE_COLUMNS:
                        kinds[field.name] = _merge_kind(
                            kinds.get(field.name), _arrow_kind(field.type)
                        )
                continue
        for row in _rows(store, obj, fmt):
            for name, value in _data(row).items():
                old, new = kinds.get(name), _value_kind(value)
                if new != old or name not in kinds:
                    kinds[name] = _merge_kind(old, new)
    return _json_schema(kinds)


class LandedStreamWriter(StreamWriter):
    """A :class:`StreamWriter` for rows Airbyte already landed: their ids and times are kept."""

    def add_landed(self, row: dict[str, Any], line: Callable[[], bytes]) -> None:
        """Add one destination row; quarantine it when a value does not fit its column."""
        raw_id = str(row.get("_airbyte_raw_id") or row.get("_airbyte_ab_id") or uuid.uuid4())
        data = _data(row)
        values: list[Any] = []
        casts: list[dict[str, str]] = []
        for name, kind, convert in self._converters:
            value = _plain(data.get(name))
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
                    self.quarantine.add(raw_id, reason, line())
                    return
                casts.append({"field": name, "change": "CAST", "reason": f"string to {kind}"})
        extra: str | None = None
        if not data.keys() <= self._known:
            unknown = {k: _plain(v) for k, v in data.items() if k not in self._known}
            self._extra_names.update(unknown)
            extra = orjson.dumps(unknown).decode()
        extracted = row.get("_airbyte_extracted_at", row.get("_airbyte_emitted_at"))
        for column, value in zip(self._data, values, strict=True):
            column.append(value)
        self._raw_ids.append(raw_id)
        self._extracted.append(_extracted_us(extracted))
        self._meta.append(_meta(row.get("_airbyte_meta"), casts))
        self._extra.append(extra)
        if len(self._raw_ids) >= self.batch_rows:
            self.flush()


def _line_of(row: dict[str, Any]) -> Callable[[], bytes]:
    """The row as one JSON line, built only if the row is quarantined."""
    return lambda: orjson.dumps(_plain(row))


# ---- registering a run ------------------------------------------------------------------------
def register_destination_files(
    config: PipelineConfig,
    source_name: str,
    run_id: str,
    ingest_date: str,
    job_id: int | None = None,
    log: LogFn | None = None,
) -> dict[str, Any]:
    """Copy the destination files no committed run has registered into a raw run; commit it.

    Returns the manifest (the existing one when ``run_id`` is already committed).
    """
    _check_ids(run_id, ingest_date)
    spec = _spec(config, source_name)
    source: SourceConfig = config.sources[source_name]
    say = log or logger.info
    lake = Lake(config.lake)
    manifest_path = Lake.raw_manifest(source_name, run_id)
    if lake.exists(manifest_path):
        say(f"run {run_id} of {source_name} is already committed; not registering again")
        existing: dict[str, Any] = lake.read_json(manifest_path)
        return existing
    started_at = _now()
    store = destination_store(config, source_name)
    done = registered_objects(lake, source_name)
    _remove_run_files(lake, source, source_name, ingest_date, run_id)
    writers: dict[str, LandedStreamWriter] = {}
    try:
        streams: dict[str, Any] = {}
        registered: list[str] = []
        for stream in source.streams:
            found = list_destination_objects(store, spec, source_name, stream.name)
            new = [o for o in found if o.uri not in done]
            schema = stream_schema(store, new, spec.format)
            writer = LandedStreamWriter(
                lake,
                Lake.raw_run_dir(source_name, stream.name, ingest_date, run_id),
                schema,
                run_id,
            )
            writers[stream.name] = writer
            for obj in new:
                for row in _rows(store, obj, spec.format):
                    writer.add_landed(row, _line_of(row))
            result = writer.close()
            registered += [o.uri for o in new]
            streams[stream.name] = {
                "files": result.files,
                "records": result.records,
                "quarantined": result.quarantined,
                "quarantine_files": result.quarantine_files,
                "schema": schema,
                "columns": writer.columns,
                "extra_columns": result.extra_columns,
                "sync_mode": stream.sync_mode,
                "cursor_field": stream.cursor_field,
                "primary_key": [[key] for key in stream.primary_key],
                "destination_objects": [
                    {"uri": o.uri, "size": o.size, "mtime": o.mtime} for o in new
                ],
                "skipped_registered_objects": len(found) - len(new),
            }
            say(f"{source_name}.{stream.name}: {len(new)} new file(s), {result.records} rows")
        manifest: dict[str, Any] = {
            "run_id": run_id,
            "source": source_name,
            "connector": {"airbyte_connection_id": spec.connection_id},
            "ingest_date": ingest_date,
            "started_at": started_at,
            "finished_at": _now(),
            "full_refresh": False,
            "state_in": False,
            "streams": streams,
            "state": None,
            "airbyte": {
                "connection_id": spec.connection_id,
                "conn_id": spec.conn_id,
                "job_id": job_id,
                "destination_uri": store.uri(),
                "path_pattern": spec.path_pattern,
                "format": spec.format,
                "registered_objects": sorted(registered),
            },
        }
        lake.write_json(manifest_path, manifest)  # the commit
    except BaseException:
        for writer in writers.values():
            writer.abort()
        _remove_run_files(lake, source, source_name, ingest_date, run_id)
        raise
    counts = ", ".join(f"{n}={s['records']}" for n, s in streams.items())
    say(f"airbyte source {source_name}: committed run {run_id} ({counts})")
    return manifest
