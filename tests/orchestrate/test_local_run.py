"""`raw2gold run`'s flags as the DAG run's params (the runs themselves: tests/e2e)."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.sdk.definitions.param import ParamValidationError

from raw2gold.cli import parser
from raw2gold.config.loader import load_pipeline
from raw2gold.lake import make_run_id
from raw2gold.orchestrate.dag_factory import build_dag
from raw2gold.orchestrate.local_run import first_error, run_conf


def test_run_flags_become_params_the_dag_accepts(shop_pipeline: Path) -> None:
    """--sources and --no-ingest become the params a manual run takes (`sources`, `ingest`),
    and the DAG's own validation accepts them; the two flags exclude each other."""
    params = build_dag(load_pipeline(shop_pipeline)).params
    run_id = make_run_id()

    def conf(*flags: str) -> dict:
        args = parser().parse_args(["run", str(shop_pipeline), *flags])
        made = run_conf(run_id, args.full_refresh, args.sources, not args.no_ingest)
        for name, value in made.items():
            assert params.get_param(name).resolve(value) == value
        return made

    assert conf() == {"run_id": run_id, "full_refresh": False, "sources": [], "ingest": True}
    assert conf("--sources", "faker")["sources"] == ["faker"]
    assert conf("--no-ingest", "--full-refresh") == {
        "run_id": run_id,
        "full_refresh": True,
        "sources": [],
        "ingest": False,
    }
    with pytest.raises(ParamValidationError):
        params.get_param("sources").resolve(["nosuch"])
    with pytest.raises(SystemExit):
        parser().parse_args(["run", str(shop_pipeline), "--sources", "faker", "--no-ingest"])


def test_a_failed_run_ends_with_the_tasks_raw2gold_error_alone() -> None:
    """The line `raw2gold run` ends a failed run with: the error a task logged, as Airflow 3.3
    wrote it in a real run's log (two runs publishing one table), without the logger and source
    location appended to it nor a second 'raw2gold:' prefix."""
    logged = (
        "2026-12-03T14:56:07.663573Z [info     ] raw2gold: gold daily_category_revenue: another "
        "run (20261203T145427Z-62fa0419) published the table after this run built it, so this "
        "run published nothing to it (its build may be older than what is published); run again "
        "to build from the newest data "
        "[airflow.task.operators.raw2gold.orchestrate.operators.SparkStageOperator] "
        "loc=runners.py:79"
    )
    assert first_error(["Traceback (most recent call last):", logged]) == (
        "gold daily_category_revenue: another run (20261203T145427Z-62fa0419) published the "
        "table after this run built it, so this run published nothing to it (its build may be "
        "older than what is published); run again to build from the newest data"
    )
    assert first_error(["AirflowException: boom"]) == "AirflowException: boom"


def test_the_run_names_its_logs_folder_where_raw2gold_home_puts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`raw2gold run` said "full log in .raw2gold/logs/" whatever RAW2GOLD_HOME was."""
    from raw2gold.orchestrate.local_run import logs_folder, shown_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAW2GOLD_HOME", raising=False)
    assert shown_folder(logs_folder()) == ".raw2gold/logs/"
    monkeypatch.setenv("RAW2GOLD_HOME", str(tmp_path / "elsewhere"))
    assert shown_folder(logs_folder()) == "elsewhere/logs/"
    monkeypatch.setenv("RAW2GOLD_HOME", "/var/lib/raw2gold")
    assert shown_folder(logs_folder()) == "/var/lib/raw2gold/logs/"


def test_two_commands_migrating_one_new_airflow_home_at_once_both_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shop_pipeline: Path
) -> None:
    """Two `raw2gold run`s started together on a new RAW2GOLD_HOME both ran `airflow db
    migrate` on its new SQLite DB, and one failed (three of three tries of two migrates at once);
    the second now waits for the first and finds the DB ready. `raw2gold airflow up` migrates
    under the same lock."""
    from concurrent.futures import ThreadPoolExecutor

    from raw2gold.orchestrate.local_run import airflow_env, migrate_airflow_db

    monkeypatch.setenv("RAW2GOLD_HOME", str(tmp_path / "home"))
    env = airflow_env(shop_pipeline, None)
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(migrate_airflow_db, env, unless_ready=True) for _ in range(2)]
        for run in runs:
            run.result()
    home = Path(env["AIRFLOW_HOME"])
    assert (home / ".raw2gold-db-ready").exists()
    assert (home / "airflow.db").stat().st_size > 0


def test_a_failed_migrate_says_what_the_database_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shop_pipeline: Path
) -> None:
    """A migrate that fails ends in the database's own error, not the last lines of SQLAlchemy's
    trace (before: " | ] | (Background on this error at: https://sqlalche.me/e/21/e3q8)")."""
    from raw2gold.orchestrate.local_run import AirflowError, airflow_env, migrate_airflow_db

    monkeypatch.setenv("RAW2GOLD_HOME", str(tmp_path / "home"))
    env = airflow_env(shop_pipeline, None)
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{tmp_path}/no/such/folder/airflow.db"
    with pytest.raises(AirflowError) as failed:
        migrate_airflow_db(env)
    message = str(failed.value)
    assert message.startswith(f"airflow db migrate failed in {env['AIRFLOW_HOME']}: ")
    assert "unable to open database file" in message
    assert "\n" not in message
    assert not (Path(env["AIRFLOW_HOME"]) / ".raw2gold-db-ready").exists()
