"""The runner against a scripted connector: protocol edge cases, failures, kill, secrets."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from raw2gold.ingest import (
    ConnectorError,
    ConnectorProcess,
    check_source,
    discover_source,
    ingest_source,
    prepare_source,
)
from raw2gold.ingest.raw_writer import column_kind
from raw2gold.lake.layout import Lake
from tests.ingest.conftest import FAKE_COMMAND, MakePipeline, fake_source, read_raw

DAY = "2026-11-26"


def test_column_kinds_from_json_schema() -> None:
    assert column_kind({"type": "integer"}) == "integer"
    assert column_kind({"type": ["null", "number"]}) == "number"
    assert column_kind({"type": "number", "airbyte_type": "integer"}) == "integer"
    assert column_kind({"type": ["boolean", "null"]}) == "boolean"
    assert column_kind({"type": "string", "format": "date-time"}) == "string"
    assert column_kind({"type": "object", "properties": {}}) == "json"
    assert column_kind({"type": "array"}) == "json"
    assert column_kind({"type": ["integer", "string"]}) == "json"
    assert column_kind({"anyOf": [{"type": "string"}]}) == "json"
    assert column_kind({}) == "json"


def test_lands_types_nulls_extra_casts_quarantine_and_invalid_lines(
    make_pipeline: MakePipeline,
) -> None:
    config = make_pipeline({"fake": fake_source({"mode": "garbage", "records": 3})})
    lake = Lake(config.lake)
    manifest = ingest_source(config, "fake", "run1", DAY, command=FAKE_COMMAND)

    stream = manifest["streams"]["items"]
    assert stream["records"] == 6  # 3 good + missing keys + extra key/cast + meta
    assert stream["quarantined"] == 1
    assert stream["files"] == [
        f"{Lake.raw_run_dir('fake', 'items', DAY, 'run1')}/part-00000.parquet"
    ]
    assert stream["extra_columns"] == ["surprise"]
    assert stream["columns"]["tags"] == "json" and stream["columns"]["either"] == "json"

    rows = {row["id"]: row for row in read_raw(config, stream["files"])}
    assert sorted(rows) == [1, 2, 3, 4, 6, 7]
    assert rows[1]["name"] == "item 1" and rows[1]["price"] == 1.5 and rows[1]["active"] is False
    assert json.loads(rows[2]["tags"]) == ["a", "2"]
    assert json.loads(rows[1]["either"]) == 1 and json.loads(rows[2]["either"]) == "s2"
    assert rows[1]["ts"] == "2026-01-01T00:00:00Z"  # date-time stays the source's string
    assert rows[4]["name"] is None and rows[4]["tags"] is None and rows[4]["price"] is None
    assert json.loads(rows[6]["_airbyte_extra"]) == {"surprise": {"x": 1}}
    assert rows[6]["price"] == 7.25
    assert json.loads(rows[6]["_airbyte_meta"])["changes"] == [
        {"field": "price", "change": "CAST", "reason": "string to number"}
    ]
    assert json.loads(rows[7]["_airbyte_meta"]) == {"changes": [{"field": "n"}]}
    assert json.loads(rows[1]["_airbyte_meta"]) == {"changes": []}
    assert rows[1]["_airbyte_extra"] is None
    assert rows[1]["_raw2gold_run_id"] == "run1"
    assert rows[1]["_airbyte_extracted_at"].timestamp() == pytest.approx(1_795_000_000.123)
    assert len({row["_airbyte_raw_id"] for row in rows.values()}) == 6

    schema = pq.read_schema(lake.path(stream["files"][0]))
    assert str(schema.field("id").type) == "int64"
    assert str(schema.field("price").type) == "double"
    assert str(schema.field("active").type) == "bool"
    assert str(schema.field("_airbyte_extracted_at").type) == "timestamp[us, tz=UTC]"

    (bad,) = read_raw(config, stream["quarantine_files"])
    assert "_quarantine/" in stream["quarantine_files"][0]
    assert bad["reason"] == "column 'id': expected integer, got str (\"abc\")"
    assert orjson.loads(bad["raw_line"])["record"]["data"]["name"] == "bad id"

    invalid = manifest["invalid_lines"]
    assert invalid["count"] == 2
    lines = sorted(row["raw_line"] for row in read_raw(config, invalid["files"]))
    assert lines == ['["a json line that is not a message"]', "this is not json"]

    assert manifest["state"][0]["stream"]["stream_state"] == {"seq": 7}
    assert manifest["connector_exit_code"] == 0
    assert manifest["log_summary"]["last_warnings"] == ["WARN: careful"]
    assert manifest["log_summary"]["stderr_tail"] == ["a warning on stderr"]
    assert lake.read_json(Lake.source_state_file("fake")) == manifest["state"]
    assert lake.committed_raw_runs("fake")[0]["run_id"] == "run1"


def test_incremental_state_and_idempotent_rerun(
    make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    calls = tmp_path / "calls.txt"
    source = fake_source({"records": 4, "calls_file": str(calls)}, sync_mode="incremental")
    source["streams"][0]["cursor_field"] = ["seq"]
    config = make_pipeline({"fake": source})

    first = ingest_source(config, "fake", "r1", DAY, command=FAKE_COMMAND)
    again = ingest_source(config, "fake", "r1", DAY, command=FAKE_COMMAND)
    assert again == first
    assert calls.read_text().split() == ["discover", "read"]  # the re-run ran nothing

    second = ingest_source(config, "fake", "r2", DAY, command=FAKE_COMMAND)
    assert second["state_in"] is True
    ids = [row["id"] for row in read_raw(config, second["streams"]["items"]["files"])]
    assert sorted(ids) == [5, 6, 7, 8]
    assert second["state"][0]["stream"]["stream_state"] == {"seq": 8}

    full = ingest_source(config, "fake", "r3", DAY, full_refresh=True, command=FAKE_COMMAND)
    assert full["state_in"] is False
    assert full["streams"]["items"]["records"] == 4
    assert full["state"][0]["stream"]["stream_state"] == {"seq": 4}
    assert [m["run_id"] for m in Lake(config.lake).committed_raw_runs("fake")] == ["r1", "r2", "r3"]


def test_small_batches_roll_files(make_pipeline: MakePipeline) -> None:
    config = make_pipeline({"fake": fake_source({"records": 25})})
    manifest = ingest_source(
        config, "fake", "r1", DAY, command=FAKE_COMMAND, batch_rows=10, rows_per_file=20
    )
    files = manifest["streams"]["items"]["files"]
    assert [f.rsplit("/", 1)[1] for f in files] == ["part-00000.parquet", "part-00001.parquet"]
    lake = Lake(config.lake)
    assert [pq.ParquetFile(lake.path(f)).num_row_groups for f in files] == [2, 1]
    assert sorted(r["id"] for r in read_raw(config, files)) == list(range(1, 26))


def test_zero_records_give_an_empty_file_list(make_pipeline: MakePipeline) -> None:
    config = make_pipeline({"fake": fake_source({"records": 0})})
    manifest = ingest_source(config, "fake", "r1", DAY, command=FAKE_COMMAND)
    assert manifest["streams"]["items"]["files"] == []
    assert manifest["streams"]["items"]["records"] == 0
    assert manifest["streams"]["items"]["schema"]["properties"]["id"] == {"type": "integer"}


def test_failed_run_commits_nothing_and_keeps_state(make_pipeline: MakePipeline) -> None:
    ok = fake_source({"records": 3}, sync_mode="incremental", cursor_field=["seq"])
    config = make_pipeline({"fake": ok})
    lake = Lake(config.lake)
    first = ingest_source(config, "fake", "r1", DAY, command=FAKE_COMMAND)
    state_file = lake.read_json(Lake.source_state_file("fake"))

    failing = fake_source({"records": 3, "mode": "fail"}, sync_mode="incremental")
    failing["streams"][0]["cursor_field"] = ["seq"]
    config = make_pipeline({"fake": failing})
    with pytest.raises(ConnectorError) as caught:
        ingest_source(config, "fake", "r2", DAY, command=FAKE_COMMAND)
    message = str(caught.value)
    assert "\n" not in message
    assert "read failed (exit code 1): Upstream API said no: quota exceeded (hint:" in message
    assert caught.value.stderr_tail == ["Traceback: something broke"]
    assert not caught.value.final  # failure_type system_error: Airflow retries the task

    assert not lake.exists(Lake.raw_manifest("fake", "r2"))
    assert not lake.exists(Lake.raw_run_dir("fake", "items", DAY, "r2"))
    assert [m["run_id"] for m in lake.committed_raw_runs("fake")] == ["r1"]
    assert lake.source_state_messages("fake") == first["state"]
    assert lake.read_json(Lake.source_state_file("fake")) == state_file


def test_crash_without_trace_quotes_the_last_stderr_line(make_pipeline: MakePipeline) -> None:
    config = make_pipeline({"fake": fake_source({"mode": "crash"})})
    with pytest.raises(
        ConnectorError, match=r"exit code 3\): RuntimeError: segfault-ish \(hint"
    ) as caught:
        ingest_source(config, "fake", "r1", DAY, command=FAKE_COMMAND)
    assert not caught.value.final
    assert Lake(config.lake).list_files("raw/fake") == []


def _gone(pid: int, wait_seconds: float = 5.0) -> bool:
    """True when the process has exited (a zombie not yet reaped by init counts as exited)."""
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (ProcessLookupError, FileNotFoundError):
            return True
        if status == "Z":
            return True
        time.sleep(0.05)
    return False


def test_terminate_kills_the_process_group(make_pipeline: MakePipeline) -> None:
    config = make_pipeline({"fake": fake_source({"mode": "hang", "records": 2})})
    started: list[ConnectorProcess] = []
    logs: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            ingest_source(
                config,
                "fake",
                "r1",
                DAY,
                log=logs.append,
                command=FAKE_COMMAND,
                on_start=started.append,
            )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 30
    while not any("child pid" in line for line in logs) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(re.search(r"child pid (\d+)", " ".join(logs)).group(1))  # type: ignore[union-attr]
    started[0].terminate(grace_seconds=5)
    thread.join(30)
    assert not thread.is_alive()
    assert isinstance(errors[0], ConnectorError) and "terminated" in str(errors[0])
    assert _gone(child)  # the connector's own child was killed too
    lake = Lake(config.lake)
    assert not lake.exists(Lake.raw_manifest("fake", "r1"))
    assert lake.list_files("raw/fake") == []


def test_secrets_are_masked_and_config_is_private(
    make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_API_KEY", "sk-very-secret-1234")
    config = make_pipeline({"fake": fake_source({"api_key": "${FAKE_API_KEY}", "records": 1})})
    logs: list[str] = []
    ingest_source(config, "fake", "r1", DAY, log=logs.append, command=FAKE_COMMAND)
    text = "\n".join(logs)
    assert "sk-very-secret" not in text
    assert "api_key=****" in text
    found = re.search(r"config file (\S+) mode (\S+)", text)
    assert found is not None
    assert found.group(2) == "0o600"
    assert not Path(found.group(1)).exists()  # deleted after the run


def test_check_and_discover(make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_pipeline({"fake": fake_source({}), "bad": fake_source({"mode": "fail"})})
    assert check_source(config, "fake", command=FAKE_COMMAND) == (True, "connection succeeded")
    assert check_source(config, "bad", command=FAKE_COMMAND) == (False, "bad key")
    (stream,) = discover_source(config, "fake", command=FAKE_COMMAND)
    assert stream["name"] == "items"
    assert stream["supported_sync_modes"] == ["full_refresh", "incremental"]
    assert stream["default_cursor_field"] == ["seq"]
    assert stream["source_defined_primary_key"] == [["id"]]

    missing = make_pipeline({"fake": fake_source({"key": "${RAW2GOLD_NOT_SET}"})})
    monkeypatch.delenv("RAW2GOLD_NOT_SET", raising=False)
    ok, message = check_source(missing, "fake", command=FAKE_COMMAND)
    assert not ok and "RAW2GOLD_NOT_SET" in message


def test_unknown_stream_is_a_one_line_error(make_pipeline: MakePipeline) -> None:
    config = make_pipeline({"fake": {**fake_source({}), "streams": [{"name": "nope"}]}})
    with pytest.raises(
        ConnectorError, match="stream 'nope' is not in the connector's catalog.*items"
    ) as caught:
        ingest_source(config, "fake", "r1", DAY, command=FAKE_COMMAND)
    assert caught.value.final  # the pipeline asks for what the catalog lacks: not retried


def test_manifest_source_gets_the_manifest_injected(
    make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    (tmp_path / "manifest.yaml").write_text("version: 6.0.0\ntype: DeclarativeSource\n")
    source = fake_source({"x": 1})
    source["connector"] = {
        "package": "airbyte-cdk",
        "version": "7.39.1",
        "manifest": "manifest.yaml",
    }
    config = make_pipeline({"lowcode": source})
    assert config.sources["lowcode"].connector.command == "source-declarative-manifest"  # type: ignore[union-attr]
    prepared = prepare_source(config, "lowcode", command=FAKE_COMMAND)
    assert prepared.config == {
        "x": 1,
        "__injected_declarative_manifest": {"version": "6.0.0", "type": "DeclarativeSource"},
    }
