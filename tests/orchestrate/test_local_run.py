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
