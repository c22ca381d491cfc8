"""The run's Spark Connect server: one JVM for every per-model task of a run (local mode).

A real server from the pyspark installation on 127.0.0.1; each stage runs as the DAG runs it,
``python -m raw2gold.transform.job --tables <one table>`` with the server's URL in its
environment, so no task starts a JVM of its own. Stopped by PID at the end.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from raw2gold.config.loader import gold_order, load_pipeline
from raw2gold.lake.layout import Lake
from raw2gold.transform.connect import (
    REMOTE_ENV,
    server_record,
    shared_record,
    start_server,
    stop_server,
    usable_server,
)
from raw2gold.transform.job import stage_record
from tests.fixtures.servers import wait_until
from tests.fixtures.spark import process_alive
from tests.transform.rawdata import categories, shop_records, write_raw_run
from tests.transform.reference import assert_gold_matches_reference

T0 = datetime(2026, 1, 8, 6, tzinfo=UTC)


def _job(pipeline: Path, lake: Path, env: dict[str, str], stage: str, table: str | None) -> str:
    cmd = [sys.executable, "-m", "raw2gold.transform.job", "--pipeline", str(pipeline)]
    cmd += ["--lake", str(lake), "--stage", stage, "--run-id", "run1"]
    cmd += ["--tables", table] if table else []
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


def test_per_model_tasks_share_one_server(tmp_path: Path, shop_pipeline: Path) -> None:
    lake_dir = tmp_path / "lake"
    config = load_pipeline(shop_pipeline, str(lake_dir))
    lake = Lake(config.lake)
    write_raw_run(lake, "faker", "r1", shop_records(), T0)
    write_raw_run(lake, "catalog_csv", "c1", {"make_categories": categories()}, T0)

    record = start_server(config, "run1", ttl_seconds=900)
    pid = record["pid"]
    try:
        assert record["url"].startswith("sc://127.0.0.1:")
        assert usable_server(lake, "run1") == record
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        assert cmdline[:3] == ["timeout", "--kill-after=30", "900s"]  # no orphan past the run
        # Settings (credentials on S3 lakes) travel in a 0600 properties file, not on the line.
        assert "--properties-file" in cmdline
        assert not any(part.startswith(("spark.jars", "spark.hadoop")) for part in cmdline)

        env = {**os.environ, REMOTE_ENV: record["url"]}
        logs = [_job(shop_pipeline, lake_dir, env, "processed", t) for t in config.processed]
        logs += [_job(shop_pipeline, lake_dir, env, "gold", m) for m in gold_order(config)]
        logs += [_job(shop_pipeline, lake_dir, env, "check", m) for m in config.gold]
        logs.append(_job(shop_pipeline, lake_dir, env, "publish", None))
        assert all("connecting to the run's Spark Connect server" in log for log in logs)
        assert not any("starting Spark local" in log for log in logs)  # no JVM per task

        assert_gold_matches_reference(config)
        # One record per task, merged per stage for the summary and for publish.
        gold = stage_record(lake, "run1", "gold")
        assert gold is not None and set(gold["gold"]) == set(config.gold)
        assert gold["parts"] == [[m] for m in sorted(config.gold)]
        checks = stage_record(lake, "run1", "check")
        assert checks is not None and checks["status"] == "succeeded"
        assert {c["table"] for c in checks["checks"]} == set(config.gold)
    finally:
        assert stop_server(config, "run1")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert lake.read_record(server_record("run1"))["stopped_at"]  # type: ignore[index]
    assert usable_server(lake, "run1") is None
    assert not stop_server(config, "run1")  # stopping twice is harmless


def test_publish_waits_for_every_models_checks(tmp_path: Path, shop_pipeline: Path) -> None:
    """Publishing refuses while a model's per-model check task has not passed."""
    from raw2gold.publish.publisher import PublishError, publish

    config = load_pipeline(shop_pipeline, str(tmp_path / "lake"))
    lake = Lake(config.lake)
    lake.write_json(
        lake.run_record("r", "check.top_products"),
        {"status": "succeeded", "tables": ["top_products"], "checks": []},
    )
    with pytest.raises(PublishError, match="customer_lifetime_value, daily_category_revenue"):
        publish(None, config, "r")  # type: ignore[arg-type]


LONG_QUERY = """
import os, sys
from pyspark.sql import SparkSession
session = SparkSession.builder.remote(sys.argv[1]).create()
try:
    session.range(10**12).where("id % 1000003 = 17").count()  # hours of work
    print("finished")
except Exception as exc:
    print("stopped:", exc)
sys.stdout.flush()
os._exit(0)
"""


def test_a_killed_tasks_queries_stop_on_the_shared_server(
    tmp_path: Path, shop_pipeline: Path
) -> None:
    """What SparkStageOperator.on_kill does on the server: interrupt the task's own session.

    The task's job is a client process with a long query; the server stays up for the others.
    """
    import uuid

    from pyspark.sql import SparkSession

    from raw2gold.transform.connect import connect_mode_contained, interrupt_session

    config = load_pipeline(shop_pipeline, str(tmp_path / "lake"))
    record = start_server(config, "run-kill", ttl_seconds=600)
    try:
        session_id = str(uuid.uuid4())
        url = f"{record['url']}/;session_id={session_id}"
        job = subprocess.Popen(
            [sys.executable, "-c", LONG_QUERY, url], stdout=subprocess.PIPE, text=True
        )
        # Interrupt once the query's tasks are submitted: an operation interrupted while the
        # server still plans it (seen on a loaded machine) submits its job anyway, which then
        # holds the server's cores (docs/spark-execution.md, kill).
        submitted = re.compile(f'Submitting .* tasks from .*session_id: "{session_id}"')
        log_text = Path(record["log"]).read_text
        wait_until(lambda: submitted.search(log_text(errors="replace")), 120, "the query's job")
        time.sleep(1)
        assert job.poll() is None
        said: list[str] = []
        interrupt_session(url, said.append)
        out, _ = job.communicate(timeout=60)
        assert said == ["interrupted 1 Spark operation(s) on the server"]
        assert out.startswith("stopped:") and "finished" not in out
        with connect_mode_contained():  # later tests start classic Spark in children
            other = SparkSession.builder.remote(record["url"]).create()
            assert other.range(3).count() == 3
            other.stop()  # before the server: a client of a stopped server retries minutes
        assert "SPARK_CONNECT_MODE_ENABLED" not in os.environ
    finally:
        stop_server(config, "run-kill")


def test_a_shared_server_outlives_its_runs(
    tmp_path: Path, shop_pipeline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``spark.server: shared``: run after run reuses one server (warm JVM); a run lets go of it
    at its end; changed settings or an age past ``server_hours`` replace it; the CLI stops it."""
    from raw2gold.cli import main as cli

    monkeypatch.setenv("RAW2GOLD_HOME", str(tmp_path / "home"))  # the servers' logs
    base = load_pipeline(shop_pipeline, str(tmp_path / "lake"))
    config = base.model_copy(update={"spark": base.spark.model_copy(update={"server": "shared"})})
    lake = Lake(config.lake)
    said: list[str] = []
    pids: set[int] = set()
    # A record left from before a reboot, its PID now another process's: never stopped.
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    pids.add(stranger.pid)
    lake.write_json(
        shared_record(config.name),
        {"url": "sc://127.0.0.1:1", "pid": stranger.pid, "started_epoch": time.time()},
    )
    try:
        first = start_server(config, "run1", ttl_seconds=600, say=said.append)
        pids.add(first["pid"])
        assert stranger.poll() is None and not any("replacing" in line for line in said)
        cmdline = Path(f"/proc/{first['pid']}/cmdline").read_bytes().decode().split("\0")
        assert cmdline[:3] == ["timeout", "--kill-after=30", f"{24 * 3600 + 600}s"]
        assert not stop_server(config, "run1", said.append)  # the run lets go; it stays up
        assert "stays up for the next run" in said[-1] and process_alive(first["pid"])
        assert usable_server(lake, "run1") is None  # a finished run's tasks no longer use it

        second = start_server(config, "run2", ttl_seconds=600, say=said.append)
        assert (second["pid"], second["url"]) == (first["pid"], first["url"])
        assert said[-1].startswith("reusing the shared Spark Connect server")
        assert usable_server(lake, "run2") == second

        tuned = {**config.spark.conf, "spark.sql.shuffle.partitions": "3"}
        changed = config.model_copy(
            update={"spark": config.spark.model_copy(update={"conf": tuned})}
        )
        third = start_server(changed, "run3", ttl_seconds=600, say=said.append)
        pids.add(third["pid"])
        assert third["pid"] != first["pid"] and not process_alive(first["pid"])
        assert any("Spark settings changed" in line for line in said)
        assert third["log"] == first["log"]  # one file per server: the first one's is kept
        assert "SparkConnectServer" in Path(f"{first['log']}.1").read_text()

        aged = changed.model_copy(
            update={"spark": changed.spark.model_copy(update={"server_hours": 1 / 3600})}
        )
        time.sleep(1.5)
        fourth = start_server(aged, "run4", ttl_seconds=600, say=said.append)
        pids.add(fourth["pid"])
        assert fourth["pid"] != third["pid"] and not process_alive(third["pid"])
        assert any("older than spark.server_hours" in line for line in said)

        pipeline = ["-p", str(shop_pipeline), "--lake", str(tmp_path / "lake")]
        assert cli(["spark-server", "status", *pipeline]) == 0
        assert cli(["spark-server", "stop", *pipeline]) == 0
        assert not process_alive(fourth["pid"])
        assert cli(["spark-server", "status", *pipeline]) == 1
    finally:
        for pid in pids:  # whatever the test left running
            if process_alive(pid):
                os.killpg(pid, signal.SIGKILL)


def test_airflow_down_stops_the_shared_servers_it_served(
    tmp_path: Path, shared_server_shop: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`raw2gold airflow down` also stops the shared server of each pipeline the local Airflow
    served. Its Airflow here is only the state `up` records, with no process left: stopping
    Airflow's own processes is tested in tests/orchestrate/test_local_airflow.py."""
    from raw2gold.cli import main as cli
    from raw2gold.orchestrate import local_airflow

    config = load_pipeline(shared_server_shop)
    record = start_server(config, "run1", ttl_seconds=600)
    home = tmp_path / "home"
    local_airflow.AirflowState(
        port=1,
        url="http://127.0.0.1:1",
        airflow_home=str(home / "airflow"),
        dags_folder=str(home / "dags"),
        pipelines=str(shared_server_shop.parent / "*.yaml"),
        db="sqlite",
        instance="test",
    ).save(local_airflow.state_file(home))
    monkeypatch.setenv("RAW2GOLD_HOME", str(home))
    assert cli(["airflow", "down"]) == 0
    assert not process_alive(record["pid"])
