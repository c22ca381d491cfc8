"""`raw2gold airflow up --db-url postgresql://…`: the local Airflow on a real PostgreSQL.

Runs after test_local_airflow.py has stopped the session's SQLite Airflow, so only one Airflow
runs at a time.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg2
import pytest

from raw2gold.cli import main
from raw2gold.orchestrate import local_airflow
from raw2gold.orchestrate.local_airflow import AirflowClient
from tests.fixtures.airflow import PARAMS_DAG, write_test_dags
from tests.fixtures.servers import PostgresServer, free_port


def test_up_on_postgresql_runs_dags_and_never_shows_the_password(
    postgres_server: PostgresServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home, dags, out = tmp_path / "home", tmp_path / "dags", tmp_path / "out"
    out.mkdir()
    write_test_dags(dags, out)
    monkeypatch.setenv(local_airflow.DB_URL_ENV, postgres_server.url())
    state = local_airflow.up(
        pipelines=(), port=free_port(), dags_folder=dags, parallelism=2, home=home
    )
    try:
        assert state.db.startswith("postgresql+psycopg2://raw2gold:***@127.0.0.1:")
        client = AirflowClient(state.url, state.username, state.password())
        try:
            client.wait_for_dag(PARAMS_DAG)
            client.unpause(PARAMS_DAG)
            run = client.trigger(PARAMS_DAG, {"who": "postgres", "n": 1, "sources": []})
            deadline = time.monotonic() + 150
            finished = client.dag_run(PARAMS_DAG, run["dag_run_id"])
            while finished["state"] not in {"success", "failed"} and time.monotonic() < deadline:
                time.sleep(1.0)
                finished = client.dag_run(PARAMS_DAG, run["dag_run_id"])
            assert finished["state"] == "success", finished
        finally:
            client.close()

        # The run is recorded in PostgreSQL, not in a SQLite file.
        with (
            psycopg2.connect(
                host="127.0.0.1",
                port=postgres_server.port,
                user=postgres_server.user,
                password=postgres_server.password,
                dbname=postgres_server.database,
            ) as conn,
            conn.cursor() as cursor,
        ):
            cursor.execute(
                "SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s",
                (PARAMS_DAG, run["dag_run_id"]),
            )
            assert cursor.fetchone() == ("success",)
        assert not (home / "airflow" / "airflow.db").exists()

        monkeypatch.setenv("RAW2GOLD_HOME", str(home))
        capsys.readouterr()
        assert main(["airflow", "status"]) == 0
        shown = capsys.readouterr()
        assert "postgresql+psycopg2://raw2gold:***@" in shown.out
        assert postgres_server.password not in shown.out + shown.err
        for log in local_airflow.run_dir(home).glob("*.log"):
            assert postgres_server.password not in log.read_text(errors="replace"), log.name
    finally:
        local_airflow.stop(state, timeout=30)
