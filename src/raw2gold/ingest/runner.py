"""Run an embedded Airbyte source into the raw layer: discover, read, land Parquet, commit.

A run is committed by its manifest (``raw/<source>/_runs/<run_id>.json``), written last; readers
see only runs with a manifest. A failed run (connector error, exception, kill) writes no manifest,
removes its partial files (best effort) and leaves the committed state unchanged. Running the
same ``run_id`` again returns the existing manifest without reading anything.

Incremental streams get the state of the newest committed run (``--state``) unless
``full_refresh``; full-refresh streams always start from scratch. The manifest's ``state`` is
the list of the last STATE message per stream (states of streams that sent none this run are
carried over), ready to be passed back as ``--state``.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from raw2gold.config.loader import ENV_PATTERN, resolve_env_tree
from raw2gold.config.models import (
    SECRET_KEY_PARTS,
    ConnectorSpec,
    PipelineConfig,
    SourceConfig,
    StreamConfig,
)
from raw2gold.ingest.connectors import install_connector, load_manifest
from raw2gold.ingest.protocol import ConnectorError, ConnectorProcess, LogFn, Message, one_line
from raw2gold.ingest.raw_writer import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_ROWS_PER_FILE,
    QuarantineWriter,
    StreamWriter,
)
from raw2gold.lake.layout import Lake

logger = logging.getLogger("raw2gold.ingest")

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
PIPELINE_DIR = "${PIPELINE_DIR}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class PreparedSource:
    """A source ready to run: the command, the resolved config and the values to mask."""

    name: str
    source: SourceConfig
    spec: ConnectorSpec
    argv: list[str]
    config: dict[str, Any]
    secrets: list[str]

    @property
    def label(self) -> str:
        return f"source {self.name!r} ({self.spec.package}=={self.spec.version})"

    def process(self, verb: str, log: LogFn | None = None, **kwargs: Any) -> ConnectorProcess:
        """A connector process for ``verb`` with this source's config."""
        config = None if verb == "spec" else self.config
        return ConnectorProcess(
            self.argv, verb, config=config, log=log, secrets=self.secrets, name=self.label, **kwargs
        )


def _substitute_pipeline_dir(value: Any, base_dir: str) -> Any:
    if isinstance(value, str):
        return value.replace(PIPELINE_DIR, base_dir)
    if isinstance(value, dict):
        return {k: _substitute_pipeline_dir(v, base_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_pipeline_dir(v, base_dir) for v in value]
    return value


def _secret_values(template: Any, resolved: Any, key: str = "") -> list[str]:
    """Values that came from ${VAR} references or sit under secret-looking keys."""
    found: list[str] = []
    if isinstance(template, dict) and isinstance(resolved, dict):
        for k, v in template.items():
            found += _secret_values(v, resolved.get(k), str(k))
    elif isinstance(template, list) and isinstance(resolved, list):
        for t, r in zip(template, resolved, strict=False):
            found += _secret_values(t, r, key)
    elif isinstance(template, str) and isinstance(resolved, str):
        refs = [m.group(1) for m in ENV_PATTERN.finditer(template) if m.group(1) != "PIPELINE_DIR"]
        if refs or any(part in key.lower() for part in SECRET_KEY_PARTS):
            found.append(resolved)
    return found


def prepare_source(
    config: PipelineConfig, source_name: str, command: list[str] | None = None
) -> PreparedSource:
    """Resolve the source's config (``${VAR}``, ``${PIPELINE_DIR}``) and install its connector.

    ``command`` replaces the installed connector's executable (tests, custom images).
    """
    if source_name not in config.sources:
        known = ", ".join(sorted(config.sources))
        raise KeyError(f"source {source_name!r} is not in the pipeline (known: {known})")
    source = config.sources[source_name]
    if source.connector is None:
        raise ValueError(
            f"source {source_name!r} runs on an Airbyte server (airbyte:), not as an embedded "
            "connector; it is ingested by the Airbyte server sync task"
        )
    spec = source.connector
    template = _substitute_pipeline_dir(source.config, str(config.base_dir))
    resolved: dict[str, Any] = resolve_env_tree(template)
    manifest = load_manifest(spec, config.base_dir)
    if manifest is not None:
        resolved["__injected_declarative_manifest"] = manifest
    secrets = _secret_values(template, resolved)
    argv = list(command) if command else install_connector(spec).argv()
    return PreparedSource(source_name, source, spec, argv, resolved, secrets)


# ---- spec / check / discover ------------------------------------------------------------------
def _discover(prepared: PreparedSource, log: LogFn | None) -> list[dict[str, Any]]:
    with prepared.process("discover", log) as proc:
        messages = proc.collect()
    proc.raise_for_failure()
    for message in messages:
        if message["type"] == "CATALOG":
            streams: list[dict[str, Any]] = (message.get("catalog") or {}).get("streams") or []
            return streams
    raise ConnectorError(
        "no CATALOG message in the output",
        connector=prepared.label,
        verb="discover",
        exit_code=proc.exit_code,
        hint="is this an Airbyte source connector?",
    )


def spec_source(
    config: PipelineConfig, source_name: str, *, command: list[str] | None = None
) -> dict[str, Any]:
    """The connector's spec (``connectionSpecification`` and friends)."""
    prepared = prepare_source(config, source_name, command)
    with prepared.process("spec") as proc:
        messages = proc.collect()
    proc.raise_for_failure()
    for message in messages:
        if message["type"] == "SPEC":
            spec: dict[str, Any] = message.get("spec") or {}
            return spec
    raise ConnectorError("no SPEC message in the output", connector=prepared.label, verb="spec")


def check_source(
    config: PipelineConfig, source_name: str, *, command: list[str] | None = None
) -> tuple[bool, str]:
    """Run the connector's ``check``: ``(True, message)`` when it can connect, else the reason."""
    try:
        prepared = prepare_source(config, source_name, command)
        with prepared.process("check") as proc:
            messages = proc.collect()
        proc.raise_for_failure()
    except Exception as exc:  # install, config and connector failures are all "not ok"
        return False, one_line(str(exc))
    for message in messages:
        if message["type"] == "CONNECTION_STATUS":
            status = message.get("connectionStatus") or {}
            text = proc.mask(one_line(str(status.get("message") or "")))
            if status.get("status") == "SUCCEEDED":
                return True, text or "connection succeeded"
            return False, text or "connection failed"
    return False, f"{prepared.label} check sent no CONNECTION_STATUS"


def discover_source(
    config: PipelineConfig, source_name: str, *, command: list[str] | None = None
) -> list[dict[str, Any]]:
    """The streams the connector offers: name, sync modes, cursor, primary key, JSON schema."""
    prepared = prepare_source(config, source_name, command)
    return [
        {
            "name": stream.get("name"),
            "namespace": stream.get("namespace"),
            "supported_sync_modes": stream.get("supported_sync_modes") or ["full_refresh"],
            "source_defined_cursor": bool(stream.get("source_defined_cursor")),
            "default_cursor_field": stream.get("default_cursor_field") or [],
            "source_defined_primary_key": stream.get("source_defined_primary_key") or [],
            "json_schema": stream.get("json_schema") or {},
        }
        for stream in _discover(prepared, None)
    ]


# ---- catalog and state ------------------------------------------------------------------------
def configured_catalog(
    label: str, streams: list[StreamConfig], catalog: list[dict[str, Any]]
) -> dict[str, Any]:
    """The ConfiguredAirbyteCatalog for the configured streams (destination mode append)."""
    offered = {stream.get("name"): stream for stream in catalog}
    configured = []
    for wanted in streams:
        stream = offered.get(wanted.name)
        if stream is None:
            raise ConnectorError(
                f"stream {wanted.name!r} is not in the connector's catalog",
                connector=label,
                verb="discover",
                final=True,
                hint=f"streams offered: {', '.join(sorted(map(str, offered))) or 'none'}",
            )
        modes = stream.get("supported_sync_modes") or ["full_refresh"]
        if wanted.sync_mode not in modes:
            raise ConnectorError(
                f"stream {wanted.name!r} does not support sync_mode {wanted.sync_mode}",
                connector=label,
                verb="discover",
                final=True,
                hint=f"supported: {', '.join(modes)}",
            )
        primary_key = [[key] for key in wanted.primary_key] or (
            stream.get("source_defined_primary_key") or []
        )
        configured.append(
            {
                "stream": stream,
                "sync_mode": wanted.sync_mode,
                "cursor_field": wanted.cursor_field or stream.get("default_cursor_field") or [],
                "primary_key": primary_key,
                "destination_sync_mode": "append",
            }
        )
    return {"streams": configured}


def _state_key(state: dict[str, Any]) -> tuple[str, ...]:
    kind = str(state.get("type") or "LEGACY")
    if kind == "STREAM":
        descriptor = (state.get("stream") or {}).get("stream_descriptor") or {}
        return (kind, str(descriptor.get("namespace") or ""), str(descriptor.get("name")))
    return (kind,)


class StateTracker:
    """Keeps the last STATE message per stream (or the last GLOBAL/LEGACY one)."""

    def __init__(self, prior: list[dict[str, Any]] | None):
        self.states: dict[tuple[str, ...], dict[str, Any]] = {}
        for state in prior or []:
            if isinstance(state, dict):
                self.states[_state_key(state)] = state
        self.received = 0

    def add(self, state: dict[str, Any]) -> None:
        self.received += 1
        key = _state_key(state)
        if key[0] != "STREAM":  # a GLOBAL or LEGACY state replaces everything
            self.states = {}
        else:
            self.states = {k: v for k, v in self.states.items() if k[0] == "STREAM"}
        self.states[key] = state

    def messages(self) -> list[dict[str, Any]] | None:
        return list(self.states.values()) or None


def _input_state(
    prior: list[dict[str, Any]] | None, streams: list[StreamConfig]
) -> list[dict[str, Any]] | None:
    """The prior state to pass to ``--state``: per-stream states of incremental streams only."""
    if not prior:
        return None
    incremental = {s.name for s in streams if s.sync_mode == "incremental"}
    kept = [
        state
        for state in prior
        if _state_key(state)[0] != "STREAM" or _state_key(state)[2] in incremental
    ]
    return kept or None


# ---- read -------------------------------------------------------------------------------------
def _check_ids(run_id: str, ingest_date: str) -> None:
    if not SAFE_ID.match(run_id):
        raise ValueError(f"run_id {run_id!r} is not path-safe (letters, digits, . _ -)")
    if not DATE.match(ingest_date):
        raise ValueError(f"ingest_date {ingest_date!r} is not YYYY-MM-DD")


def invalid_lines_dir(source: str, ingest_date: str, run_id: str) -> str:
    """Where a run keeps the stdout lines that were not Airbyte messages."""
    return f"raw/{source}/_invalid/ingest_date={ingest_date}/run_id={run_id}"


def _remove_run_files(lake: Lake, source: SourceConfig, name: str, date: str, run_id: str) -> None:
    folders = [Lake.raw_run_dir(name, s.name, date, run_id) for s in source.streams]
    for folder in [*folders, invalid_lines_dir(name, date, run_id)]:
        try:
            lake.delete_dir(folder)
        except Exception as exc:  # best effort: the run is not committed anyway
            logger.warning("could not remove %s: %s", folder, exc)


def ingest_source(
    config: PipelineConfig,
    source_name: str,
    run_id: str,
    ingest_date: str,
    full_refresh: bool = False,
    log: Callable[[str], None] | None = None,
    *,
    command: list[str] | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    on_start: Callable[[ConnectorProcess], None] | None = None,
) -> dict[str, Any]:
    """Read a source's configured streams into raw Parquet and commit the run; return the manifest.

    ``command`` replaces the installed connector (tests); ``on_start`` receives the running
    :class:`ConnectorProcess` (so an Airflow ``on_kill`` can ``terminate()`` it).
    """
    _check_ids(run_id, ingest_date)
    lake = Lake(config.lake)
    manifest_path = Lake.raw_manifest(source_name, run_id)
    if lake.exists(manifest_path):
        existing: dict[str, Any] = lake.read_json(manifest_path)
        logger.info("run %s of %s is already committed; not running again", run_id, source_name)
        return existing

    started_at = _now()
    prepared = prepare_source(config, source_name, command)
    source, spec = prepared.source, prepared.spec
    say = log or (lambda text: None)
    say(f"{prepared.label}: discover")
    catalog = configured_catalog(prepared.label, source.streams, _discover(prepared, log))
    prior = None if full_refresh else lake.source_state_messages(source_name)
    state_in = _input_state(prior, source.streams)
    tracker = StateTracker(None if full_refresh else prior)

    # Files left by an attempt of this run that was killed before committing.
    _remove_run_files(lake, source, source_name, ingest_date, run_id)
    writers = {
        entry["stream"]["name"]: StreamWriter(
            lake,
            Lake.raw_run_dir(source_name, entry["stream"]["name"], ingest_date, run_id),
            entry["stream"].get("json_schema") or {},
            run_id,
            batch_rows=batch_rows,
            rows_per_file=rows_per_file,
        )
        for entry in catalog["streams"]
    }
    invalid = QuarantineWriter(lake, invalid_lines_dir(source_name, ingest_date, run_id))
    unexpected: Counter[str] = Counter()
    timeout = config.orchestration.ingest_timeout_minutes * 60
    say(f"{prepared.label}: read{' with state' if state_in else ''}")
    try:
        with prepared.process(
            "read", log, catalog=catalog, state=state_in, timeout_seconds=timeout
        ) as proc:
            if on_start is not None:
                on_start(proc)
            for message, line in proc.messages():
                if message is None:
                    invalid.add(str(uuid.uuid4()), "not an Airbyte protocol message", line)
                    continue
                kind = message["type"]
                if kind == "RECORD":
                    record: Message = message.get("record") or {}
                    writer = writers.get(str(record.get("stream")))
                    if writer is None:
                        unexpected[str(record.get("stream"))] += 1
                    else:
                        writer.add(record, line)
                elif kind == "STATE" and isinstance(message.get("state"), dict):
                    tracker.add(message["state"])
        proc.raise_for_failure()
        results = {name: writer.close() for name, writer in writers.items()}
        invalid_files = invalid.close()
        manifest: dict[str, Any] = {
            "run_id": run_id,
            "source": source_name,
            "connector": {"package": spec.package, "version": spec.version},
            "ingest_date": ingest_date,
            "started_at": started_at,
            "finished_at": _now(),
            "full_refresh": full_refresh,
            "state_in": state_in is not None,
            "streams": {},
            # A full refresh without STATE messages commits [] so that older state is not revived.
            "state": tracker.messages() or ([] if full_refresh else None),
            "connector_exit_code": proc.exit_code,
            "invalid_lines": {"count": invalid.count, "files": invalid_files},
            "log_summary": {
                "levels": dict(proc.log_counts),
                "last_warnings": list(proc.log_tail),
                "state_messages": tracker.received,
                "records_of_unconfigured_streams": dict(unexpected),
                "stderr_tail": list(proc.stderr_tail)[-5:],
            },
        }
        for entry in catalog["streams"]:
            name = entry["stream"]["name"]
            result = results[name]
            manifest["streams"][name] = {
                "files": result.files,
                "records": result.records,
                "quarantined": result.quarantined,
                "quarantine_files": result.quarantine_files,
                "schema": entry["stream"].get("json_schema") or {},
                "columns": writers[name].columns,
                "extra_columns": result.extra_columns,
                "sync_mode": entry["sync_mode"],
                "cursor_field": entry["cursor_field"],
                "primary_key": entry["primary_key"],
            }
        lake.write_json(manifest_path, manifest)  # the commit
    except BaseException:
        for writer in writers.values():
            writer.abort()
        invalid.abort()
        _remove_run_files(lake, source, source_name, ingest_date, run_id)
        raise
    try:
        lake.write_json(Lake.source_state_file(source_name), manifest["state"])
    except Exception as exc:  # a convenience copy: the manifest is the source of truth
        logger.warning("could not write the state copy of %s: %s", source_name, exc)
    counts = ", ".join(f"{n}={s['records']}" for n, s in manifest["streams"].items())
    say(f"{prepared.label}: committed run {run_id} ({counts})")
    return manifest
