"""Build one Airflow DAG per pipeline config.

One task group per layer: ``ingest`` (one task per source, in parallel, into raw) ->
``processed`` (``processed.build``: every processed table and its checks) -> ``gold``
(``gold.build`` stages every gold model in dependency order, ``gold.check`` runs the gold
quality checks, ``gold.publish`` publishes atomically) -> ``done`` (summary, notifications).
Each Spark task starts one JVM for all the tables of its step, not one per model.
Nothing heavy happens here: reading the YAML and building operators takes milliseconds, so DAG
files parse fast. Users add sources and models by editing config, never this code.
"""

from __future__ import annotations

import glob
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, Param, TaskGroup

from raw2gold.config import PipelineConfig, load_pipeline
from raw2gold.config.loader import gold_order
from raw2gold.orchestrate.airbyte_operators import AirbyteServerSyncOperator
from raw2gold.orchestrate.notify import failure_callbacks, overdue_alert, retry_callbacks
from raw2gold.orchestrate.operators import (
    IngestSourceOperator,
    RunSummaryOperator,
    SparkStageOperator,
)

PIPELINES_ENV = "RAW2GOLD_PIPELINES"
RUN_ID_PATTERN = r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$"


def gold_asset_uri(config: PipelineConfig, table: str) -> str:
    """The Asset URI of a gold table: s3://... or file:///..., without touching credentials."""
    uri = config.lake.uri.replace("s3a://", "s3://").rstrip("/")
    if "://" not in uri:
        uri = f"file://{uri}"
    return f"{uri}/gold/{table}"


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
            "run_id": Param(
                None,
                type=["null", "string"],
                pattern=RUN_ID_PATTERN,
                description="raw2gold run id (default: derived from Airflow's run id)",
            ),
        },
        doc_md=f"raw2gold pipeline **{config.name}** from `{pipeline_path}`.",
    ) as dag:
        with TaskGroup("ingest", tooltip="Airbyte connectors into raw/") as ingest:
            for source in sorted(config.sources):
                if config.sources[source].airbyte is not None:
                    # Synced by an Airbyte server: trigger, wait, register its files into raw.
                    AirbyteServerSyncOperator(
                        task_id=source,
                        pipeline_path=pipeline_path,
                        source=source,
                        execution_timeout=ingest_timeout,
                    )
                    continue
                IngestSourceOperator(
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

        with TaskGroup("processed", tooltip="raw -> processed: typed, deduplicated, MERGEd"):
            processed = spark_task(
                "build",
                "processed",
                trigger_rule="none_failed",
                doc_md="Processed tables: " + ", ".join(config.processed),
            )
        with TaskGroup("gold", tooltip="processed -> gold: build, check, publish atomically"):
            build = spark_task(
                "build",
                "gold",
                doc_md="Gold models in dependency order: " + " -> ".join(gold_order(config)),
            )
            check = spark_task("check", "check")
            assets = [
                Asset(name=f"{config.name}.{t}", uri=gold_asset_uri(config, t)) for t in config.gold
            ]
            publish = spark_task("publish", "publish", outlets=assets)
            build >> check >> publish
        done = RunSummaryOperator(task_id="done", pipeline_path=pipeline_path)
        ingest >> processed >> build
        publish >> done
    return dag


def pipeline_paths(default: str | None = None) -> list[Path]:
    """Pipeline files named by RAW2GOLD_PIPELINES (paths or globs, os.pathsep-separated)."""
    spec = os.environ.get(PIPELINES_ENV) or default or ""
    paths: list[Path] = []
    for pattern in filter(None, spec.split(os.pathsep)):
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        paths.extend(Path(m).resolve() for m in (matches or [pattern]))
    return paths


def load_dags(default: str | None = None) -> dict[str, DAG]:
    """{dag_id: DAG} for every configured pipeline; an invalid config raises with all problems."""
    dags: dict[str, DAG] = {}
    for path in pipeline_paths(default):
        dag = build_dag(load_pipeline(path))
        dags[dag.dag_id] = dag
    return dags
