"""The generated DAG: imports cleanly, nothing heavy at parse time, dependencies as configured."""

import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from raw2gold.config import ConfigError, load_pipeline
from raw2gold.config.models import MaintenanceConfig
from raw2gold.orchestrate.dag_factory import (
    build_dag,
    gold_asset_uri,
    load_dags,
    raise_config_problems,
)

PARSE_PROBE = """
import json, sys, time
from airflow.dag_processing.dagbag import DagBag
start = time.perf_counter()
bag = DagBag(sys.argv[1])
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dags": sorted(bag.dags),
    "heavy": sorted(m for m in ("pyspark", "pyarrow", "delta", "duckdb") if m in sys.modules),
}))
"""


def parse_dags_folder(folder: Path, home: Path, **env: str) -> dict:
    """What Airflow's DagBag makes of a DAG folder, in a fresh interpreter: errors, DAG ids and
    the heavy modules the parse imported."""
    env = {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PATH": "", **env}
    out = subprocess.run(
        [sys.executable, "-c", PARSE_PROBE, str(folder)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dagbag_report(repo_root: Path, tmp_path_factory) -> dict:
    return parse_dags_folder(repo_root / "dags", tmp_path_factory.mktemp("airflow"))


def test_dags_folder_imports_without_errors(dagbag_report: dict) -> None:
    assert dagbag_report["errors"] == {}
    assert dagbag_report["dags"] == ["raw2gold_api_demo", "raw2gold_shop"]


def test_nothing_heavy_is_imported_at_parse_time(dagbag_report: dict) -> None:
    assert dagbag_report["heavy"] == []


def test_task_dependencies_follow_the_config(shop_pipeline: Path) -> None:
    config = load_pipeline(shop_pipeline)
    dag = build_dag(config)
    tasks = {t.task_id: t for t in dag.tasks}
    processed = {f"processed.{t}" for t in config.processed}
    builds = {f"gold.build.{m}" for m in config.gold}
    checks = {f"gold.check.{m}" for m in config.gold}
    assert set(tasks) == {
        "ingest.faker",
        "ingest.catalog_csv",
        "spark.start",
        "spark.stop",
        *processed,
        *builds,
        *checks,
        "gold.publish",
        "done",
    }
    assert set(dag.task_group.children) == {"ingest", "spark", "processed", "gold", "done"}
    # Each processed table after its own source's ingest and the run's Spark server.
    assert tasks["ingest.catalog_csv"].downstream_task_ids == {"processed.make_categories"}
    assert tasks["ingest.faker"].downstream_task_ids == processed - {"processed.make_categories"}
    assert tasks["spark.start"].upstream_task_ids == set()
    assert tasks["spark.start"].downstream_task_ids == processed
    # Each model after exactly the tables its SQL / Python refers to.
    assert tasks["gold.build.customer_lifetime_value"].upstream_task_ids == {
        "processed.users",
        "processed.purchases",
        "processed.products",
    }
    assert tasks["gold.build.daily_category_revenue"].upstream_task_ids == {
        "processed.purchases",
        "processed.products",
        "processed.make_categories",
    }
    for model in config.gold:
        assert tasks[f"gold.build.{model}"].downstream_task_ids == {
            f"gold.check.{model}",
            "spark.stop",
        }
        assert tasks[f"gold.check.{model}"].downstream_task_ids == {"gold.publish", "spark.stop"}
    assert tasks["gold.publish"].upstream_task_ids == checks
    assert tasks["gold.publish"].downstream_task_ids == {"done", "spark.stop"}
    # The server stops after every Spark task, whatever their outcome.
    assert tasks["spark.stop"].upstream_task_ids == processed | builds | checks | {"gold.publish"}
    assert tasks["spark.stop"].trigger_rule == "all_done"
    assert tasks["processed.users"].trigger_rule == "none_failed"
    stages = {t: (getattr(v, "stage", None), getattr(v, "tables", None)) for t, v in tasks.items()}
    assert stages["processed.users"] == ("processed", ["users"])
    assert stages["gold.build.top_products"] == ("gold", ["top_products"])
    assert stages["gold.check.top_products"] == ("check", ["top_products"])
    assert stages["gold.publish"] == ("publish", None)
    assert "purchases" in (tasks["gold.build.customer_lifetime_value"].doc_md or "")
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert tasks["ingest.faker"].retries == 2
    for task in tasks.values():  # retries back off exponentially; every task has a timeout
        assert task.retry_delay == timedelta(seconds=30)
        assert task.retry_exponential_backoff and task.max_retry_delay == timedelta(minutes=10)
        assert task.execution_timeout is not None, task.task_id
    assert tasks["ingest.faker"].execution_timeout == timedelta(minutes=60)
    assert tasks["gold.publish"].execution_timeout == timedelta(minutes=120)
    assert dag.is_paused_upon_creation is True
    assert (dag.timetable.expression, str(dag.timetable.timezone)) == ("0 0 * * *", "UTC")
    tz_config = config.model_copy(
        update={
            "orchestration": config.orchestration.model_copy(
                update={"schedule": "30 6 * * 1-5", "timezone": "Europe/Madrid"}
            )
        }
    )
    madrid = build_dag(tz_config)
    assert madrid.timetable.expression == "30 6 * * 1-5"
    assert str(madrid.timetable.timezone) == "Europe/Madrid"  # runs at 6:30 Madrid time
    assert {a.uri for a in tasks["gold.publish"].outlets} == {
        f"file://{config.lake.uri}/gold/{t}" for t in config.gold
    }
    on_s3 = config.model_copy(
        update={"lake": config.lake.model_copy(update={"uri": "s3a://bucket/shop/"})}
    )
    assert gold_asset_uri(on_s3, "top_products") == "s3://bucket/shop/gold/top_products"
    assert set(dag.params.keys()) == {"full_refresh", "sources", "ingest", "run_id"}


def test_pipelines_env_selects_files(shop_pipeline: Path, monkeypatch) -> None:
    monkeypatch.setenv("RAW2GOLD_PIPELINES", str(shop_pipeline.parent / "*.yaml"))
    assert list(load_dags()) == ["raw2gold_shop"]


def test_expected_duration_becomes_a_deadline_alert(shop_pipeline: Path) -> None:
    """With a duration and a channel, the DAG carries a deadline alert (fired by the scheduler:
    see test_local_airflow); without a channel there is nobody to tell, so no alert."""
    from airflow.sdk import DeadlineReference

    config = load_pipeline(shop_pipeline)
    assert build_dag(config).deadline is None
    notifications = config.notifications.model_copy(update={"webhook_conn_id": "ops_hook"})
    orchestration = config.orchestration.model_copy(update={"expected_duration_minutes": 45})
    alerted = config.model_copy(
        update={"notifications": notifications, "orchestration": orchestration}
    )
    deadline = build_dag(alerted).deadline
    alerts = deadline if isinstance(deadline, list) else [deadline]
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert alert.interval.total_seconds() == 45 * 60
    assert alert.callback.path == "raw2gold.orchestrate.notify.run_overdue"
    assert alert.callback.kwargs["notifications"]["webhook_conn_id"] == "ops_hook"
    silent = config.model_copy(update={"orchestration": orchestration})
    assert build_dag(silent).deadline is None


def test_the_dag_maintains_after_publish_when_configured(shop_pipeline: Path) -> None:
    plain = load_pipeline(shop_pipeline)
    assert "maintain" not in build_dag(plain).task_ids
    config = plain.model_copy(update={"maintenance": MaintenanceConfig()})
    dag = build_dag(config)
    maintain = dag.get_task("maintain")
    assert maintain.upstream_task_ids == {"gold.publish"}
    assert "done" in maintain.downstream_task_ids
    assert "spark.stop" in maintain.downstream_task_ids


def test_two_pipelines_of_one_name_are_refused_naming_both(
    shop_pipeline: Path, tmp_path: Path, monkeypatch
) -> None:
    """A copy of the shop under its own name is a second DAG; under the same name it would
    have replaced the first one's DAG without a word: the copy gets no DAG, and the problem
    file names both."""
    copy = tmp_path / "copy"
    shutil.copytree(shop_pipeline.parent, copy, ignore=shutil.ignore_patterns("lake"))
    monkeypatch.setenv("RAW2GOLD_PIPELINES", f"{shop_pipeline}{os.pathsep}{copy}/pipeline.yaml")
    assert list(load_dags()) == ["raw2gold_shop"]
    with pytest.raises(ConfigError) as caught:
        raise_config_problems()
    assert str(caught.value) == (
        f"{copy}/pipeline.yaml:3: name: pipeline 'shop' is also the name of {shop_pipeline}: "
        "Airflow would have one DAG (raw2gold_shop) for both (hint: give one of them another "
        "name)"
    )
    text = (copy / "pipeline.yaml").read_text()
    (copy / "pipeline.yaml").write_text(text.replace("name: shop\n", "name: shop_copy\n", 1))
    assert sorted(load_dags()) == ["raw2gold_shop", "raw2gold_shop_copy"]
    raise_config_problems()  # none left


def test_an_invalid_pipeline_leaves_the_others_dags_and_shows_as_an_import_error(
    repo_root: Path, shop_pipeline: Path, tmp_path: Path
) -> None:
    """Airflow's own DagBag on the repo's DAG folder with the shop and a copy that has a typo:
    the shop keeps its DAG, and the copy's problem is the import error of the problem file.
    Before, the DAG file raised, and Airflow dropped every DAG of it: one typo stopped every
    pipeline's schedule."""
    broken = tmp_path / "broken"
    shutil.copytree(shop_pipeline.parent, broken, ignore=shutil.ignore_patterns("lake"))
    text = (broken / "pipeline.yaml").read_text().replace("name: shop\n", "name: broken\n", 1)
    (broken / "pipeline.yaml").write_text(text.replace("primary_key:", "primary_keys:", 1))
    pipelines = f"{shop_pipeline}{os.pathsep}{broken}/pipeline.yaml"
    report = parse_dags_folder(repo_root / "dags", tmp_path, RAW2GOLD_PIPELINES=pipelines)
    assert report["dags"] == ["raw2gold_shop"]
    [(file, error)] = report["errors"].items()
    assert file.endswith("/dags/raw2gold_pipeline_problems.py")
    assert f"{broken}/pipeline.yaml:" in error and "primary_keys" in error


def test_a_pipeline_without_gold_models_ends_after_processed(shop_pipeline: Path) -> None:
    """Gold models come later for many pipelines: without any, the DAG had a publish task with
    nothing before it, which ran first and failed every run ("no passed check stage")."""
    shop = load_pipeline(shop_pipeline)
    no_gold = shop.model_copy(update={"gold": {}})
    tasks = {t.task_id: t for t in build_dag(no_gold).tasks}
    processed = {f"processed.{t}" for t in shop.processed}
    assert set(tasks) == {"ingest.faker", "ingest.catalog_csv", "spark.start", "spark.stop"} | (
        processed | {"done"}
    )
    assert tasks["done"].upstream_task_ids == processed
    assert tasks["spark.stop"].upstream_task_ids == processed
    maintained = build_dag(no_gold.model_copy(update={"maintenance": MaintenanceConfig()}))
    assert maintained.get_task("maintain").upstream_task_ids == processed
    assert maintained.get_task("done").upstream_task_ids == {"maintain"}
    # ingest only: no Spark at all, the run ends after its sources
    raw_only = build_dag(no_gold.model_copy(update={"processed": {}}))
    assert set(raw_only.task_ids) == {"ingest.faker", "ingest.catalog_csv", "done"}
    assert raw_only.get_task("done").upstream_task_ids == {"ingest.faker", "ingest.catalog_csv"}
