"""The Spark stages run where spark.mode says: spark-submit to a standalone master (cluster) and
the job on a remote host over SSH (ssh), both through SparkStageOperator, checked against an
independent computation (pyarrow/deltalake), plus the SSH errors and kills."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from raw2gold.config.loader import load_pipeline
from raw2gold.lake.layout import Lake
from raw2gold.orchestrate.operators import SparkStageOperator
from raw2gold.transform.job import STAGES
from raw2gold.transform.runners import (
    DRIVER,
    SparkSubmitRunner,
    SshRunner,
    StageRunError,
    submit_settings,
    write_properties,
)
from tests.fixtures.cluster import SparkStandalone, SshServer, keygen
from tests.fixtures.servers import wait_until
from tests.transform.rawdata import shop_records, write_raw_run

T1 = datetime(2026, 1, 8, 6, tzinfo=UTC)
SSH_CONN = "r2g_test_ssh"
SMALL = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.databricks.delta.snapshotPartitions": "1",
}


USERS_BY_COUNTRY = """SELECT nationality, COUNT(*) AS users, CAST(SUM(age) AS BIGINT) AS total_age
FROM {{ ref('users') }} GROUP BY nationality
"""


def make_pipeline(folder: Path, spark: dict[str, Any], raw: bool = True) -> Path:
    """A tiny pipeline (raw users -> processed users -> gold users_by_country) whose lake is
    ``folder/lake`` and whose spark section is given, with one raw sync already landed."""
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "users_by_country.sql").write_text(USERS_BY_COUNTRY)
    columns = {
        "id": "bigint",
        "email": "string",
        "age": "int",
        "nationality": "string",
        "updated_at": "timestamp",
    }
    data = {
        "name": "tiny",
        "lake": {"uri": str(folder / "lake")},
        "spark": spark,
        "sources": {
            "faker": {
                "connector": {"package": "airbyte-source-faker", "version": "7.2.1"},
                "streams": [{"name": "users", "primary_key": ["id"]}],
            }
        },
        "processed": {
            "users": {
                "source": "faker.users",
                "primary_key": ["id"],
                "cursor": "updated_at",
                "columns": columns,
                "checks": [{"type": "unique", "columns": ["id"]}],
            }
        },
        "gold": {
            "users_by_country": {
                "sql": "models/users_by_country.sql",
                "format": "delta",
                "checks": [{"type": "not_null", "columns": ["nationality"]}],
            }
        },
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    if raw:
        lake = Lake(load_pipeline(path).lake)
        write_raw_run(lake, "faker", "r1-faker", {"users": shop_records()["users"]}, T1)
    return path


def expected_by_country() -> dict[str, tuple[int, int]]:
    """users_by_country computed in plain Python from the raw records (one version per id)."""
    totals: dict[str, list[int]] = {}
    for user in shop_records()["users"]:
        entry = totals.setdefault(user["nationality"], [0, 0])
        entry[0] += 1
        entry[1] += user["age"]
    return {k: (v[0], v[1]) for k, v in totals.items()}


def context(run_id: str) -> dict[str, Any]:
    dag_run = SimpleNamespace(run_id=f"manual__{run_id}", run_after=T1)
    return {"dag_run": dag_run, "params": {"run_id": run_id}}


def run_stages(path: Path, run_id: str) -> dict[str, dict[str, Any]]:
    summaries = {}
    for stage in STAGES:
        operator = SparkStageOperator(task_id=stage, pipeline_path=str(path), stage=stage)
        summaries[stage] = operator.execute(context(run_id))
    return summaries


def check_results(path: Path, summaries: dict[str, dict[str, Any]]) -> None:
    """Summaries, processed and gold (read with deltalake) against plain-Python numbers."""
    from deltalake import DeltaTable

    assert [summaries[s]["status"] for s in STAGES] == ["succeeded"] * 3
    assert summaries["transform"]["processed"]["users"]["rows"] == 30
    config = load_pipeline(path)
    lake = Path(config.lake.uri)
    users = DeltaTable(str(lake / "processed" / "users")).to_pyarrow_table()
    raw_users = {u["id"]: u for u in shop_records()["users"]}
    assert sorted(users.column("id").to_pylist()) == sorted(raw_users)
    assert {r["id"]: r["email"] for r in users.to_pylist()} == {
        i: u["email"] for i, u in raw_users.items()
    }
    gold = DeltaTable(str(lake / "gold" / "users_by_country")).to_pyarrow_table().to_pylist()
    got = {r["nationality"]: (r["users"], r["total_age"]) for r in gold}
    assert got == expected_by_country()


# ------------------------------------------------------------------------------ cluster mode


def cluster_spark(cluster: SparkStandalone, tmp: Path) -> dict[str, Any]:
    conf = {
        **SMALL,
        "spark.executor.memory": "768m",
        "spark.driver.memory": "1g",
        "spark.cores.max": "1",
        "spark.sql.warehouse.dir": str(tmp / "warehouse"),
    }
    return {"mode": "cluster", "master": cluster.master, "conf": conf}


def test_cluster_mode_runs_the_stages_on_the_standalone_master(
    spark_standalone: SparkStandalone, tmp_path: Path
) -> None:
    path = make_pipeline(tmp_path / "tiny", cluster_spark(spark_standalone, tmp_path))
    summaries = run_stages(path, "cluster1")
    check_results(path, summaries)
    apps = {a["name"]: a for a in spark_standalone.state()["completedapps"]}
    for stage in STAGES:
        app = apps[f"raw2gold-tiny-{stage}-cluster1"]
        assert app["state"] == "FINISHED"
        assert app["cores"] == 1 or app.get("coresgranted", 1) <= 1


def test_cluster_mode_keeps_secrets_off_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_pipeline(
        tmp_path / "s3", {"mode": "cluster", "master": "spark://127.0.0.1:7077"}, raw=False
    )
    config = load_pipeline(path)
    s3 = config.model_copy(
        update={
            "lake": config.lake.model_copy(
                update={
                    "uri": "s3://bucket/lake",
                    "s3": config.lake.s3.model_copy(
                        update={"access_key": "${R2G_K}", "secret_key": "${R2G_S}"}
                    ),
                }
            )
        }
    )
    monkeypatch.setenv("R2G_K", "AKIDTEST")
    monkeypatch.setenv("R2G_S", "sEcReT/with=odd:chars")
    public, secret, packages, _ = submit_settings(s3)
    assert "hadoop-aws" in packages and "delta-spark" in packages
    assert secret["spark.hadoop.fs.s3a.secret.key"] == "sEcReT/with=odd:chars"
    props = Path(write_properties(secret, str(tmp_path)))
    assert props.stat().st_mode & 0o777 == 0o600
    assert "spark.hadoop.fs.s3a.secret.key=sEcReT/with\\=odd\\:chars" in props.read_text()
    # the spark-submit command line the hook would run: settings and jars, no secret
    runner = SparkSubmitRunner(s3, str(path), "transform", logging.getLogger("test"))
    hook = runner.build_hook("r1", False, str(props))
    cmd = hook._build_spark_submit_command(str(DRIVER))
    line = " ".join(cmd)
    assert "sEcReT" not in line and "AKIDTEST" not in line
    assert cmd[cmd.index("--properties-file") + 1] == str(props)
    assert cmd[cmd.index("--packages") + 1] == packages
    assert "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension" in cmd
    assert any(c.startswith("spark.jars.ivySettings=") for c in cmd)
    assert cmd[cmd.index("--master") + 1] == "spark://127.0.0.1:7077"


def test_cluster_mode_kill_stops_the_application(
    spark_standalone: SparkStandalone, tmp_path: Path
) -> None:
    path = make_pipeline(tmp_path / "tiny", cluster_spark(spark_standalone, tmp_path))
    operator = SparkStageOperator(task_id="transform", pipeline_path=str(path), stage="transform")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            operator.execute(context("killme"))
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    name = "raw2gold-tiny-transform-killme"
    wait_until(
        lambda: any(a["name"] == name for a in spark_standalone.state()["activeapps"]),
        120,
        "the application to register",
    )
    operator.on_kill()
    thread.join(60)
    assert not thread.is_alive()
    assert errors and isinstance(errors[0], AirflowException)
    wait_until(
        lambda: not any(a["name"] == name for a in spark_standalone.state()["activeapps"]),
        60,
        "the application to leave the master",
    )
    assert any(a["name"] == name for a in spark_standalone.state()["completedapps"])
    assert operator._runner.hook._submit_sp.poll() is not None


# ---------------------------------------------------------------------------------- ssh mode


def ssh_spark(**extra: Any) -> dict[str, Any]:
    spark = {
        "mode": "ssh",
        "master": "local[1]",
        "ssh_conn_id": SSH_CONN,
        "remote_python": sys.executable,
        "conf": {**SMALL, "spark.driver.memory": "1g"},
    }
    return {**spark, **extra}


def test_ssh_mode_runs_the_stages_on_the_remote_host(
    sshd_server: SshServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{SSH_CONN.upper()}", sshd_server.connection())
    path = make_pipeline(tmp_path / "tiny", ssh_spark())
    summaries = run_stages(path, "ssh1")
    check_results(path, summaries)


def ssh_error(path: Path) -> str:
    """The one line an SSH setup mistake fails the task with; the task is not retried (a wrong
    key or host key, or a missing python, fails every try alike)."""
    operator = SparkStageOperator(task_id="transform", pipeline_path=str(path), stage="transform")
    with pytest.raises(AirflowFailException) as info:
        operator.execute(context("sshfail"))
    message = str(info.value)
    assert "\n" not in message
    assert message.endswith("(not retried: a retry would fail the same way)")
    return message


@pytest.fixture
def ssh_pipeline(tmp_path: Path) -> Path:
    return make_pipeline(tmp_path / "tiny", ssh_spark(), raw=False)


def test_ssh_wrong_key_gives_one_clear_line(
    sshd_server: SshServer, ssh_pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keygen(tmp_path / "stranger", "not-authorized")
    conn = sshd_server.connection(private_key=(tmp_path / "stranger").read_text())
    monkeypatch.setenv(f"AIRFLOW_CONN_{SSH_CONN.upper()}", conn)
    message = ssh_error(ssh_pipeline)
    assert f"SSH key authentication failed for root@127.0.0.1:{sshd_server.port}" in message
    assert "authorized_keys" in message


def test_ssh_unknown_host_key_gives_one_clear_line_with_the_fix(
    sshd_server: SshServer, ssh_pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = " ".join(keygen(tmp_path / "impostor", "other-host").split()[:2])
    monkeypatch.setenv(f"AIRFLOW_CONN_{SSH_CONN.upper()}", sshd_server.connection(host_key=other))
    message = ssh_error(ssh_pipeline)
    assert f"host key of 127.0.0.1:{sshd_server.port} does not match" in message
    assert f"ssh-keyscan -p {sshd_server.port} -t ed25519 127.0.0.1" in message


def test_ssh_host_not_in_known_hosts_names_ssh_keyscan(
    sshd_server: SshServer, ssh_pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/known_hosts
    conn = sshd_server.connection()
    import json

    data = json.loads(conn)
    del data["extra"]["host_key"]
    monkeypatch.setenv(f"AIRFLOW_CONN_{SSH_CONN.upper()}", json.dumps(data))
    message = ssh_error(ssh_pipeline)
    assert f"host key of 127.0.0.1:{sshd_server.port} is not in known_hosts" in message
    assert (
        f"ssh-keyscan -p {sshd_server.port} -t ed25519 127.0.0.1 >> ~/.ssh/known_hosts" in message
    )


def test_ssh_missing_remote_python_gives_one_clear_line(
    sshd_server: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{SSH_CONN.upper()}", sshd_server.connection())
    path = make_pipeline(
        tmp_path / "tiny", ssh_spark(remote_python="/opt/nowhere/bin/python"), False
    )
    message = ssh_error(path)
    assert "remote python '/opt/nowhere/bin/python' was not found on 127.0.0.1" in message
    assert "spark.remote_python" in message


def test_ssh_kill_stops_the_remote_process_group(
    sshd_server: SshServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{SSH_CONN.upper()}", sshd_server.connection())
    path = make_pipeline(tmp_path / "tiny", ssh_spark())
    operator = SparkStageOperator(task_id="transform", pipeline_path=str(path), stage="transform")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            operator.execute(context("sshkill"))
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    runner = wait_until(
        lambda: operator._runner if getattr(operator._runner, "pgid", None) else None,
        60,
        "the remote process group id",
    )
    assert isinstance(runner, SshRunner)
    pgid = runner.pgid
    assert pgid is not None
    # the remote job (same machine here) is running in its own process group
    assert subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True).returncode == 0
    time.sleep(3)  # let the JVM start, so the kill has children to stop
    operator.on_kill()
    thread.join(60)
    assert not thread.is_alive()
    assert errors and isinstance(errors[0], (AirflowException, StageRunError))
    wait_until(
        lambda: subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True).returncode != 0,
        30,
        "the remote process group to end",
    )
