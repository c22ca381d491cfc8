"""Sources synced by an Airbyte server: trigger, wait, cancel, and register the destination's
files as raw runs. No Airbyte server runs here: the ``airbyte_api`` fixture replaces it at its
HTTP boundary, and a local folder replaces the S3 destination's bucket."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from raw2gold.config import PipelineConfig, load_pipeline
from raw2gold.ingest.airbyte_server import destination_store, register_destination_files
from raw2gold.lake.layout import Lake
from tests.fixtures.airbyte_api import FakeAirbyteServer, write_destination_files
from tests.fixtures.airflow import dags_test_home
from tests.ingest.conftest import read_raw

CONN_ID = "r2g_airbyte"
CONNECTION = "7d1e0c9a-0000-4000-8000-00000000c0de"
RUN_1, RUN_2 = "20260301T000000Z-aaaaaaaa", "20260302T000000Z-bbbbbbbb"
DATE = "2026-03-01"
CUSTOMERS = [
    {"id": 1, "name": "Ada", "score": 9.5, "active": True, "address": {"city": "London"}},
    {"id": 2, "name": "Grace", "score": 7.0, "active": False, "address": {"city": "NYC"}},
    {"id": 3, "name": "Linus", "score": None, "active": True, "address": None},
]

DAG_FILE = '''
"""Test DAGs running AirbyteServerSyncOperator (airflow dag file)."""
import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from raw2gold.orchestrate.airbyte_operators import AirbyteServerSyncOperator

PIPELINE = os.environ.get("R2G_PIPELINE", "/nonexistent/pipeline.yaml")
common = dict(
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    default_args={"retries": 0},
    params={"run_id": None, "sources": []},
)
with DAG("r2g_airbyte_deferrable", **common):
    AirbyteServerSyncOperator(
        task_id="crm", pipeline_path=PIPELINE, source="crm", deferrable=True, wait_seconds=0.5
    )
with DAG("r2g_airbyte_poll", **common):
    AirbyteServerSyncOperator(
        task_id="crm", pipeline_path=PIPELINE, source="crm", deferrable=False, wait_seconds=0.5
    )
with DAG("r2g_airbyte_timeout", **common):
    AirbyteServerSyncOperator(
        task_id="crm", pipeline_path=PIPELINE, source="crm", deferrable=False, wait_seconds=0.5,
        execution_timeout=timedelta(seconds=4),
    )
'''


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory) -> dict[str, str]:
    """AIRFLOW_HOME in tmp with the test DAGs; the metadata DB migrated once per module."""
    return dags_test_home(
        tmp_path_factory.mktemp("airflow-home"), {"r2g_airbyte_dags.py": DAG_FILE}
    )


def make_config(tmp_path: Path, fmt: str = "parquet", pattern: str = "{stream}/") -> PipelineConfig:
    path = tmp_path / "pipeline.yaml"
    source = {
        "airbyte": {
            "connection_id": CONNECTION,
            "conn_id": CONN_ID,
            "destination_uri": "./bucket/crm",
            "path_pattern": pattern,
            "format": fmt,
        },
        "streams": [{"name": "customers", "primary_key": ["id"]}],
    }
    path.write_text(
        yaml.safe_dump({"name": "t", "lake": {"uri": "./lake"}, "sources": {"crm": source}})
    )
    return load_pipeline(path)


def dags_test(
    env: dict[str, str], dag_id: str, config: PipelineConfig, api: FakeAirbyteServer, run_id: str
) -> subprocess.CompletedProcess[str]:
    run_env = {
        **env,
        "R2G_PIPELINE": str(config.path),
        f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(api.airflow_connection()),
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow",
            "dags",
            "test",
            dag_id,
            "-c",
            json.dumps({"run_id": run_id}),
        ],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def bucket(config: PipelineConfig) -> Path:
    return config.base_dir / "bucket" / "crm"


def raw_files(config: PipelineConfig) -> list[str]:
    return Lake(config.lake).list_files("raw/crm", ".parquet")


def test_successful_sync_becomes_a_raw_run_and_later_runs_take_only_new_files(
    airflow_env, airbyte_api, tmp_path
) -> None:
    """Replaces the Airbyte server at its HTTP boundary; the operator runs deferred under
    `airflow dags test` (the trigger runs inline), then registers the destination's files."""
    config = make_config(tmp_path)
    written: list[Path] = []

    def land(job_id: int) -> None:
        changes = {1: [{"field": "name", "change": "NULLED", "reason": "SOURCE_FIELD_SIZE_LIMIT"}]}
        written.append(
            write_destination_files(bucket(config), "customers", CUSTOMERS, changes=changes)
        )

    airbyte_api.connection(CONNECTION, running_polls=2, on_success=land)
    result = dags_test(airflow_env, "r2g_airbyte_deferrable", config, airbyte_api, RUN_1)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Pausing task as DEFERRED" in output, output[-3000:]  # the trigger ran inline

    # The requests the provider made, in the Airbyte API's shape.
    (token,) = airbyte_api.received("POST", "/applications/token")
    assert token.body["grant_type"] == "client_credentials"
    (job,) = airbyte_api.received("POST", "/jobs")
    assert job.body == {"connectionId": CONNECTION, "jobType": "sync"}
    assert job.authorization == "Bearer t0k3n"
    assert len(airbyte_api.received("GET", "/jobs/101")) >= 3
    assert not airbyte_api.received("DELETE")

    # A committed raw run in the raw layout, listing the destination object it came from.
    lake = Lake(config.lake)
    manifest = lake.read_json(Lake.raw_manifest("crm", RUN_1))
    stream = manifest["streams"]["customers"]
    run_dir = Lake.raw_run_dir("crm", "customers", datetime.now(UTC).date().isoformat(), RUN_1)
    assert stream["files"] == [f"{run_dir}/part-00000.parquet"]
    assert stream["records"] == 3 and stream["quarantined"] == 0
    assert [o["uri"] for o in stream["destination_objects"]] == [str(written[0])]
    assert manifest["airbyte"]["job_id"] == 101
    assert manifest["airbyte"]["registered_objects"] == [str(written[0])]
    assert manifest["state"] is None

    schema = pq.read_schema(lake.path(stream["files"][0]))
    assert schema.names == [
        "id", "name", "score", "active", "address",
        "_airbyte_raw_id", "_airbyte_extracted_at", "_airbyte_meta", "_airbyte_extra",
        "_raw2gold_run_id",
    ]  # fmt: skip
    assert str(schema.field("address").type) == "string"  # an object: JSON text
    rows = sorted(read_raw(config, stream["files"]), key=lambda r: r["id"])
    landed = pq.read_table(written[0]).to_pylist()
    assert [r["_airbyte_raw_id"] for r in rows] == [r["_airbyte_raw_id"] for r in landed]
    assert [r["_airbyte_extracted_at"] for r in rows] == [
        r["_airbyte_extracted_at"] for r in landed
    ]
    assert [(r["id"], r["name"], r["score"], r["active"]) for r in rows] == [
        (1, "Ada", 9.5, True),
        (2, "Grace", 7.0, False),
        (3, "Linus", None, True),
    ]
    assert json.loads(rows[0]["address"]) == {"city": "London"} and rows[2]["address"] is None
    assert json.loads(rows[0]["_airbyte_meta"]) == {"sync_id": 1, "changes": []}
    assert json.loads(rows[1]["_airbyte_meta"])["changes"][0]["change"] == "NULLED"
    assert {r["_raw2gold_run_id"] for r in rows} == {RUN_1}

    # A second sync: only the new file is registered.
    written.append(
        write_destination_files(bucket(config), "customers", [{"id": 4, "name": "Barbara"}])
    )
    second = register_destination_files(config, "crm", RUN_2, DATE, job_id=102)
    new = second["streams"]["customers"]
    assert [o["uri"] for o in new["destination_objects"]] == [str(written[1])]
    assert new["skipped_registered_objects"] == 1 and new["records"] == 1
    assert [r["id"] for r in read_raw(config, new["files"])] == [4]

    # The same run ids again: the committed manifests come back, nothing is copied again.
    files_before = raw_files(config)
    assert register_destination_files(config, "crm", RUN_2, DATE, job_id=103) == second
    assert register_destination_files(config, "crm", RUN_1, DATE) == manifest
    assert raw_files(config) == files_before


def test_failed_job_fails_the_task_with_one_line_and_commits_nothing(
    airflow_env, airbyte_api, tmp_path
) -> None:
    """Replaces the Airbyte server at its HTTP boundary: the job ends 'failed'."""
    config = make_config(tmp_path)
    airbyte_api.connection(CONNECTION, outcome="failed", running_polls=1)
    result = dags_test(airflow_env, "r2g_airbyte_poll", config, airbyte_api, RUN_1)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    line = f"Airbyte job 101 of connection {CONNECTION} ended with status failed"
    assert line in output, output[-3000:]
    assert not Lake(config.lake).exists(Lake.raw_manifest("crm", RUN_1))
    assert raw_files(config) == []


def test_execution_timeout_cancels_the_airbyte_job(airflow_env, airbyte_api, tmp_path) -> None:
    """Replaces the Airbyte server at its HTTP boundary: the job never ends, the task's
    execution_timeout fires in Airflow's task runner, whose on_kill sends DELETE /jobs/{id}."""
    config = make_config(tmp_path)
    airbyte_api.connection(CONNECTION, outcome="hang")
    result = dags_test(airflow_env, "r2g_airbyte_timeout", config, airbyte_api, RUN_1)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    cancels = airbyte_api.received("DELETE", "/jobs/101")
    assert len(cancels) == 1, output[-3000:]
    assert cancels[0].authorization == "Bearer t0k3n"
    assert "AirflowTaskTimeout" in output or "Timeout" in output
    assert not Lake(config.lake).exists(Lake.raw_manifest("crm", RUN_1))


def fake_context(run_id: str) -> dict[str, Any]:
    dag_run = SimpleNamespace(run_id="manual__x", run_after=datetime.now(UTC))
    return {"dag_run": dag_run, "params": {"run_id": run_id, "sources": []}}


def test_operator_timeout_argument_cancels_the_job(airbyte_api, tmp_path, monkeypatch) -> None:
    """Replaces the Airbyte server at its HTTP boundary: the operator's own ``timeout`` (seconds,
    as the provider's operator takes it) cancels the job and fails with one line."""
    from airflow.sdk.exceptions import AirflowException

    from raw2gold.orchestrate.airbyte_operators import AirbyteServerSyncOperator

    config = make_config(tmp_path)
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(airbyte_api.airflow_connection())
    )
    airbyte_api.connection(CONNECTION, outcome="hang", first_status="queued")
    operator = AirbyteServerSyncOperator(
        task_id="crm",
        pipeline_path=str(config.path),
        source="crm",
        deferrable=False,
        wait_seconds=0.2,
        timeout=1.0,
    )
    with pytest.raises(AirflowException) as failure:
        operator.execute(fake_context(RUN_1))
    assert str(failure.value) == (
        f"Airbyte job 101 of connection {CONNECTION} ended with status running: "
        "cancelled after 1.0s"
    )
    assert len(airbyte_api.received("DELETE", "/jobs/101")) == 1
    operator.on_kill()  # the job is over: nothing more to cancel
    assert len(airbyte_api.received("DELETE")) == 1


def test_jsonl_destination_with_a_name_prefix(tmp_path) -> None:
    """Replaces the S3 destination's bucket with a local folder: unflattened JSONL
    (``_airbyte_data``), a ``path_pattern`` ending in a file-name prefix, hidden temp files."""
    config = make_config(tmp_path, fmt="jsonl", pattern="{stream}/2")
    records = [{"id": 1, "tags": ["a"], "amount": 1}, {"id": 2, "amount": 2.5, "note": "x"}]
    landed = write_destination_files(bucket(config), "customers", records, "jsonl")
    (landed.parent / ".in-progress.jsonl").write_text("{}\n")
    (landed.parent / "other_0.jsonl").write_text("{}\n")  # not matching the prefix
    manifest = register_destination_files(config, "crm", RUN_1, DATE)
    stream = manifest["streams"]["customers"]
    assert [o["uri"] for o in stream["destination_objects"]] == [str(landed)]
    assert stream["columns"] == {
        "id": "integer",
        "tags": "json",
        "amount": "number",
        "note": "string",
    }
    rows = read_raw(config, stream["files"])
    source_ids = [orjson.loads(line)["_airbyte_raw_id"] for line in landed.read_text().splitlines()]
    assert [r["_airbyte_raw_id"] for r in rows] == source_ids
    assert [(r["id"], r["tags"], r["amount"], r["note"]) for r in rows] == [
        (1, '["a"]', 1.0, None),
        (2, None, 2.5, "x"),
    ]
    # Nothing new: an empty run that registers nothing.
    again = register_destination_files(config, "crm", RUN_2, DATE)
    assert again["streams"]["customers"]["records"] == 0
    assert again["airbyte"]["registered_objects"] == []


def test_s3_destination_is_read_with_the_lake_credentials(tmp_path, monkeypatch) -> None:
    """No S3 server needed: an s3:// destination_uri gets a pyarrow S3 file system built from the
    lake's S3 settings (endpoint, path style, ${ENV} keys)."""
    monkeypatch.setenv("R2G_TEST_KEY", "AKIA-TEST")
    monkeypatch.setenv("R2G_TEST_SECRET", "s3cr3t")
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "lake": {
                    "uri": "s3://lake-bucket/lake",
                    "s3": {
                        "endpoint": "http://127.0.0.1:9",
                        "path_style": True,
                        "access_key": "${R2G_TEST_KEY}",
                        "secret_key": "${R2G_TEST_SECRET}",
                    },
                },
                "sources": {
                    "crm": {
                        "airbyte": {"connection_id": CONNECTION, "destination_uri": "s3://dest/ab"},
                        "streams": [{"name": "customers"}],
                    }
                },
            }
        )
    )
    config = load_pipeline(path)
    store = destination_store(config, "crm")
    assert store.scheme == "s3" and store.root == "dest/ab"
    assert store.credentials is not None and store.credentials.access_key == "AKIA-TEST"
    assert store.credentials.endpoint == "http://127.0.0.1:9"
    assert isinstance(store.fs, pafs.S3FileSystem)
    assert "s3cr3t" not in repr(store.credentials)


def test_dag_factory_uses_the_airbyte_operator_for_airbyte_sources(tmp_path) -> None:
    """No server involved: the DAG's ingest task of an ``airbyte:`` source is the sync operator."""
    from raw2gold.orchestrate.airbyte_operators import AirbyteServerSyncOperator
    from raw2gold.orchestrate.dag_factory import build_dag

    config = make_config(tmp_path)
    task = build_dag(config).get_task("ingest.crm")
    assert isinstance(task, AirbyteServerSyncOperator)
    assert task.execution_timeout is not None


def test_csv_destination_files(tmp_path) -> None:
    """Replaces the S3 destination's bucket with a local folder: CSV as Airbyte writes it without
    flattening (``_airbyte_data`` JSON text, ``_airbyte_meta`` JSON text, epoch-ms extracted_at)."""
    config = make_config(tmp_path, fmt="csv")
    folder = bucket(config) / "customers"
    folder.mkdir(parents=True)
    header = "_airbyte_raw_id,_airbyte_extracted_at,_airbyte_meta,_airbyte_generation_id,"
    lines = [
        header + "_airbyte_data",
        'r-1,1767225600000,"{""sync_id"":7,""changes"":[]}",0,"{""id"":1,""name"":""Ada""}"',
        'r-2,1767225600000,"{""sync_id"":7,""changes"":[]}",0,"{""id"":2,""name"":null}"',
    ]
    (folder / "2026_01_01_1767225600000_0.csv").write_text("\n".join(lines) + "\n")
    manifest = register_destination_files(config, "crm", RUN_1, DATE)
    rows = read_raw(config, manifest["streams"]["customers"]["files"])
    assert [(r["_airbyte_raw_id"], r["id"], r["name"]) for r in rows] == [
        ("r-1", 1, "Ada"),
        ("r-2", 2, None),
    ]
    assert rows[0]["_airbyte_extracted_at"] == datetime(2026, 1, 1, tzinfo=UTC)
    assert json.loads(rows[0]["_airbyte_meta"]) == {"sync_id": 7, "changes": []}


def test_text_destination_files_are_streamed_across_read_chunks(tmp_path, monkeypatch) -> None:
    """JSONL (gzip, CRLF line ends, non-ASCII text) and CSV (a quoted value spanning lines)
    are read a chunk at a time, not whole; with a 7-byte chunk every line and multi-byte
    character straddles a boundary, and the rows land exactly as written."""
    import gzip

    from raw2gold.ingest import airbyte_server

    monkeypatch.setattr(airbyte_server, "READ_CHUNK", 7)
    records = [
        {"id": i, "name": f"Zoë-{i} 東京", "note": "a\nb" if i == 2 else None} for i in (1, 2)
    ]
    config = make_config(tmp_path, fmt="jsonl")
    folder = bucket(config) / "customers"
    folder.mkdir(parents=True)
    lines = [
        orjson.dumps(
            {"_airbyte_raw_id": f"r-{r['id']}", "_airbyte_extracted_at": 0, "_airbyte_data": r}
        )
        for r in records
    ]
    (folder / "part_0.jsonl.gz").write_bytes(gzip.compress(b"\r\n".join(lines) + b"\r\n"))
    manifest = register_destination_files(config, "crm", RUN_1, DATE)
    rows = read_raw(config, manifest["streams"]["customers"]["files"])
    assert [(r["id"], r["name"], r["note"]) for r in rows] == [
        (1, "Zoë-1 東京", None),
        (2, "Zoë-2 東京", "a\nb"),
    ]

    (tmp_path / "csv").mkdir()
    config = make_config(tmp_path / "csv", fmt="csv")
    folder = bucket(config) / "customers"
    folder.mkdir(parents=True)
    text = (
        "_airbyte_raw_id,_airbyte_extracted_at,id,name,note\r\n"
        "r-1,0,1,Zoë-1 東京,\r\n"
        'r-2,0,2,Zoë-2 東京,"a\r\nb, ""c"""\r\n'
    )
    (folder / "part_0.csv").write_bytes(text.encode())
    manifest = register_destination_files(config, "crm", RUN_1, DATE)
    rows = read_raw(config, manifest["streams"]["customers"]["files"])
    assert [(r["_airbyte_raw_id"], r["id"], r["name"], r["note"]) for r in rows] == [
        ("r-1", "1", "Zoë-1 東京", ""),  # flattened CSV: text, typed later in processed
        ("r-2", "2", "Zoë-2 東京", 'a\r\nb, "c"'),
    ]
