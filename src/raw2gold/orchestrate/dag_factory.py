"""Build one Airflow DAG per pipeline config.

One task group per layer, one task per table: ``ingest.<source>`` (in parallel, into raw) ->
``processed.<table>`` (after its source; the table and its checks) -> ``gold.build.<model>``
(after exactly the tables the model refers to) -> ``gold.check.<model>`` -> ``gold.publish``
(every model, once all checks passed) -> ``done`` (summary, notifications).

In local mode ``spark.start`` (alongside ingest) starts one Spark Connect server for the run and
every Spark task is a client of it, so a task costs a session, not a JVM start; ``spark.stop``
stops it after the last Spark task, whatever their outcome (see raw2gold.transform.connect).
In cluster and ssh mode each task is its own Spark application.
Nothing heavy happens here: reading the YAML and building operators takes milliseconds, so DAG
files parse fast. Users add sources and models by editing config, never this code.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, Param, TaskGroup

from raw2gold.config import ConfigError, PipelineConfig, load_valid_pipelines, pipeline_files
from raw2gold.config.loader import REF_IN_SQL, gold_order, model_refs
from raw2gold.orchestrate.airbyte_operators import AirbyteServerSyncOperator
from raw2gold.orchestrate.notify import failure_callbacks, overdue_alert, retry_callbacks
from raw2gold.orchestrate.operators import (
    IngestSourceOperator,
    RunSummaryOperator,
    SparkServerOperator,
    SparkStageOperator,
)

PIPELINES_ENV = "RAW2GOLD_PIPELINES"
log = logging.getLogger(__name__)
RUN_ID_PATTERN = r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$"


def gold_asset_uri(config: PipelineConfig, table: str) -> str:
    """The Asset URI of a gold table: s3://... or file:///..., without touching credentials."""
    uri = config.lake.uri.replace("s3a://", "s3://").rstrip("/")
    if "://" not in uri:
        uri = f"file://{uri}"
    return f"{uri}/gold/{table}"


def _model_doc(config: PipelineConfig, model: str) -> str:
    refs = model_refs(config, model)
    return f"gold.{model} ({config.gold[model].format}) from {', '.join(refs) or 'no tables'}"


def _checked_against(config: PipelineConfig, model: str) -> set[str]:
    """Other gold models a model's checks read (relationships `to`, ref() in sql checks)."""
    tables = set()
    for check in config.gold[model].checks:
        if check.to:
            tables.add(check.to.split(".")[0])
        tables.update(REF_IN_SQL.findall(check.sql or ""))
    return {t for t in tables if t in config.gold and t != model}


def build_dag(config: PipelineConfig) -> DAG:
    """The DAG of one pipeline."""
    orchestration = config.orchestration
    pipeline_path = str(config.path)
    default_args: dict[str, Any] = {
        "owner": "raw2gold",
        "retries": orchestration.retries,
        "retry_delay": timedelta(seconds=orchestration.retry_delay_seconds),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(seconds=orchestration.max_retry_delay_seconds),
        "on_failure_callback": failure_callbacks(config.name, config.notifications),
        "on_retry_callback": retry_callbacks(config.name, config.notifications),
    }
    start = pendulum.parse(orchestration.start_date, tz=orchestration.timezone)
    assert isinstance(start, datetime), "orchestration.start_date must be a date or datetime"
    ingest_timeout = timedelta(minutes=orchestration.ingest_timeout_minutes)
    spark_timeout = timedelta(minutes=orchestration.transform_timeout_minutes)
    overdue = overdue_alert(
        config.name, config.notifications, orchestration.expected_duration_minutes
    )
    with DAG(
        dag_id=config.dag_id,
        deadline=overdue,
        description=config.description or f"raw2gold pipeline {config.name}",
        schedule=orchestration.schedule,
        start_date=start,
        catchup=orchestration.catchup,
        is_paused_upon_creation=True,  # a new pipeline runs when triggered or unpaused
        max_active_runs=1,
        default_args=default_args,
        tags=["raw2gold", config.name, *orchestration.tags],
        params={
            "full_refresh": Param(False, type="boolean", description="rebuild from all raw runs"),
            "sources": Param(
                [],
                type="array",
                items={"type": "string", "enum": sorted(config.sources)},
                description="ingest only these sources (empty: all)",
            ),
            "ingest": Param(
                True,
                type="boolean",
                description="false: land nothing; transform what raw already holds",
            ),
            "run_id": Param(
                None,
                type=["null", "string"],
                pattern=RUN_ID_PATTERN,
                description="raw2gold run id (default: derived from Airflow's run id)",
            ),
        },
        doc_md=f"raw2gold pipeline **{config.name}** from `{pipeline_path}`.",
    ) as dag:
        ingest_tasks: dict[str, Any] = {}
        with TaskGroup("ingest", tooltip="Airbyte connectors into raw/"):
            for source in sorted(config.sources):
                if config.sources[source].airbyte is not None:
                    # Synced by an Airbyte server: trigger, wait, register its files into raw.
                    ingest_tasks[source] = AirbyteServerSyncOperator(
                        task_id=source,
                        pipeline_path=pipeline_path,
                        source=source,
                        execution_timeout=ingest_timeout,
                    )
                    continue
                ingest_tasks[source] = IngestSourceOperator(
                    task_id=source,
                    pipeline_path=pipeline_path,
                    source=source,
                    execution_timeout=ingest_timeout,
                    pool=os.environ.get("RAW2GOLD_CONNECTOR_POOL", "default_pool"),
                )

        def spark_task(task_id: str, stage: str, **kwargs: Any) -> SparkStageOperator:
            return SparkStageOperator(
                task_id=task_id,
                pipeline_path=pipeline_path,
                stage=stage,
                execution_timeout=spark_timeout,
                **kwargs,
            )

        server_start = server_stop = None
        if config.spark.mode == "local" and (config.processed or config.gold):
            steps = len(config.processed) + 2 * len(config.gold) + 1 + bool(config.maintenance)
            with TaskGroup("spark", tooltip="one Spark Connect server for the run's Spark tasks"):
                server_start = SparkServerOperator(
                    task_id="start",
                    pipeline_path=pipeline_path,
                    action="start",
                    ttl_seconds=int(spark_timeout.total_seconds()) * steps,
                    execution_timeout=timedelta(minutes=10),
                )
                server_stop = SparkServerOperator(
                    task_id="stop",
                    pipeline_path=pipeline_path,
                    action="stop",
                    ttl_seconds=0,
                    trigger_rule="all_done",
                    execution_timeout=timedelta(minutes=5),
                )

        with TaskGroup("processed", tooltip="raw -> processed: typed, deduplicated, MERGEd"):
            processed = {
                table: spark_task(
                    table,
                    "processed",
                    tables=[table],
                    trigger_rule="none_failed",  # a source left out by params.sources is skipped
                    doc_md=f"processed.{table} from raw {model.source}, and its checks",
                )
                for table, model in config.processed.items()
            }
        builds: dict[str, Any] = {}
        checks: dict[str, Any] = {}
        publish = None
        if config.gold:  # a pipeline may have processed tables only (gold models come later)
            with TaskGroup("gold", tooltip="processed -> gold: build, check, publish atomically"):
                with TaskGroup("build", tooltip="each model, after the tables it refers to"):
                    builds = {
                        m: spark_task(m, "gold", tables=[m], doc_md=_model_doc(config, m))
                        for m in gold_order(config)
                    }
                with TaskGroup("check", tooltip="each model's checks, on gold as it would publish"):
                    checks = {m: spark_task(m, "check", tables=[m]) for m in builds}
                # Named by their URI (Airflow's default): an asset's name and URI must each be
                # unique among active assets, so a name per pipeline and table kept the first
                # lake's asset active and the DAG's assets on any other lake (raw2gold run
                # --lake, a moved lake) inactive, which fails the publish task at its start.
                assets = [Asset(uri=gold_asset_uri(config, t)) for t in config.gold]
                publish = spark_task("publish", "publish", outlets=assets)
        maintain = None
        if config.maintenance is not None:
            maintain = spark_task(
                "maintain",
                "maintain",
                doc_md="OPTIMIZE and VACUUM the Delta tables (pipeline.yaml maintenance)",
            )
        done = RunSummaryOperator(
            task_id="done", pipeline_path=pipeline_path, execution_timeout=timedelta(minutes=5)
        )

        for table, task in processed.items():
            ingest_tasks[config.processed[table].source.split(".")[0]] >> task
            if server_start is not None:
                server_start >> task
        for model, task in builds.items():
            refs = model_refs(config, model)
            upstream = [processed[r] if r in processed else builds[r] for r in refs]
            (upstream or list(processed.values())) >> task
            task >> checks[model]
            for table in _checked_against(config, model):
                builds[table] >> checks[model]
            checks[model] >> publish
        ends = [publish] if publish else list(processed.values()) or list(ingest_tasks.values())
        if maintain is not None:
            ends >> maintain
            ends = [maintain]
        ends >> done
        if server_stop is not None:
            [*processed.values(), *builds.values(), *checks.values(), *ends] >> server_stop
    return dag


def pipeline_paths(default: str | None = None) -> list[Path]:
    """Pipeline files named by RAW2GOLD_PIPELINES (paths or globs, os.pathsep-separated)."""
    spec = os.environ.get(PIPELINES_ENV) or default or ""
    return [path.resolve() for path in pipeline_files(spec)]


def load_dags(default: str | None = None) -> dict[str, DAG]:
    """{dag_id: DAG} for every valid configured pipeline.

    An invalid pipeline (or a second one of a name another took) gets no DAG and its problems
    are logged; the DAG file never raises for it, since Airflow drops every DAG of a file whose
    import fails. :func:`raise_config_problems`, in a DAG file of its own, shows the problems
    as that file's import error.
    """
    configs, problems = load_valid_pipelines(pipeline_paths(default))
    for problem in problems:
        log.error("raw2gold: pipeline left out of the DAGs: %s", problem)
    dags: dict[str, DAG] = {}
    for config in configs:
        dag = build_dag(config)
        dags[dag.dag_id] = dag
    return dags


def raise_config_problems(default: str | None = None) -> None:
    """Raise :class:`ConfigError` with every configured pipeline's problems, if any (the DAG
    file ``raw2gold_pipeline_problems.py``: Airflow shows them as its import error)."""
    _, problems = load_valid_pipelines(pipeline_paths(default))
    if problems:
        raise ConfigError(problems)
