"""Airflow operators for the pipeline's stages.

They import nothing heavy at module level (no Spark, no pyarrow), so DAG files parse fast; the
work happens in ``execute``. External work (a connector subprocess, a Spark job) is stopped by
``on_kill``.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowSkipException

SUMMARY_PREFIX = "RAW2GOLD_SUMMARY "


def run_ids(context: Any) -> tuple[str, str]:
    """(raw2gold run id, ingest date) of the current DAG run.

    Manual runs have no logical date, so the run is keyed on Airflow's run_id and run_after;
    a ``run_id`` param (as `raw2gold run` passes) wins.
    """
    from raw2gold.lake.layout import make_run_id

    dag_run = context["dag_run"]
    run_after = getattr(dag_run, "run_after", None) or datetime.now(UTC)
    params = context.get("params") or {}
    run_id = params.get("run_id") or make_run_id(dag_run.run_id, run_after)
    return run_id, run_after.astimezone(UTC).date().isoformat()


def raw_run_result(log: Any, manifest: dict[str, Any], run_id: str, source: str) -> dict[str, Any]:
    """Log what a raw run landed (records and quarantined records per stream) and return it."""
    streams = manifest.get("streams", {})
    rows = {name: s.get("records", 0) for name, s in streams.items()}
    bad = {name: s.get("quarantined", 0) for name, s in streams.items() if s.get("quarantined")}
    log.info("raw run %s of %s: %s records per stream", run_id, source, rows)
    if bad:
        log.warning("quarantined records per stream: %s", bad)
    return {"run_id": run_id, "source": source, "records": rows, "quarantined": bad}


class IngestSourceOperator(BaseOperator):
    """Run one source's Airbyte connector into the raw layer (embedded connector path)."""

    template_fields = ("pipeline_path",)
    ui_color = "#e8f4fd"

    def __init__(self, *, pipeline_path: str, source: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline_path = pipeline_path
        self.source = source

    def execute(self, context: Any) -> dict[str, Any]:
        from raw2gold.config import load_pipeline
        from raw2gold.ingest import ingest_source

        params = context.get("params") or {}
        selected = params.get("sources") or []
        if selected and self.source not in selected:
            raise AirflowSkipException(f"source {self.source} not selected in params.sources")
        config = load_pipeline(self.pipeline_path)
        run_id, ingest_date = run_ids(context)
        manifest = ingest_source(
            config,
            self.source,
            run_id=run_id,
            ingest_date=ingest_date,
            full_refresh=bool(params.get("full_refresh")),
            log=self.log.info,
        )
        return raw_run_result(self.log, manifest, run_id, self.source)

    def on_kill(self) -> None:
        """Stop the connector: its whole process group, so no child survives the task."""
        from raw2gold.ingest import terminate_all

        stopped = terminate_all()
        self.log.info("stopped %d connector process(es)", stopped)


class SparkStageOperator(BaseOperator):
    """Run one Spark stage (transform, check, publish) where ``spark.mode`` says.

    local: ``python -m raw2gold.transform.job`` as a child process (see :meth:`command`);
    cluster: spark-submit through the Airflow Spark provider; ssh: the job on a remote host
    through the Airflow SSH provider (see :mod:`raw2gold.transform.runners`). The output streams
    into the task log; timeout or kill stops the job wherever it runs.
    """

    template_fields = ("pipeline_path",)
    ui_color = "#fdf2e8"

    def __init__(self, *, pipeline_path: str, stage: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline_path = pipeline_path
        self.stage = stage
        self._runner: Any = None

    def command(self, run_id: str, full_refresh: bool) -> list[str]:
        """The local-mode command line."""
        cmd = [sys.executable, "-m", "raw2gold.transform.job", "--pipeline", self.pipeline_path]
        cmd += ["--stage", self.stage, "--run-id", run_id]
        return cmd + (["--full-refresh"] if full_refresh else [])

    def _config(self) -> Any:
        """The pipeline config, or None when it cannot be read (the local job then reports why)."""
        from raw2gold.config import load_pipeline

        try:
            return load_pipeline(self.pipeline_path)
        except Exception as exc:
            self.log.warning("could not read %s (%s): running locally", self.pipeline_path, exc)
            return None

    def execute(self, context: Any) -> dict[str, Any]:
        from raw2gold.transform.runners import StageRunError, make_runner

        params = context.get("params") or {}
        run_id, _ = run_ids(context)
        self._runner = make_runner(
            self._config(), self.pipeline_path, self.stage, self.log, command=self.command
        )
        try:
            summary: dict[str, Any] = self._runner.run(run_id, bool(params.get("full_refresh")))
        except StageRunError as exc:
            raise AirflowException(str(exc)) from None
        return summary

    def on_kill(self) -> None:
        """Stop the Spark job: local process group, cluster application or remote process."""
        if self._runner is not None:
            self._runner.kill()


class RunSummaryOperator(BaseOperator):
    """Close the run: collect the stages' summaries from the lake, log them, and notify
    (quality warnings always, the success summary when notifications.on_success is set)."""

    template_fields = ("pipeline_path",)

    def __init__(self, *, pipeline_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline_path = pipeline_path

    def execute(self, context: Any) -> dict[str, Any]:
        from raw2gold.config import load_pipeline
        from raw2gold.orchestrate.notify import run_notifications, send
        from raw2gold.orchestrate.summary import run_summary

        run_id, _ = run_ids(context)
        summary = run_summary(self.pipeline_path, run_id)
        self.log.info("run summary: %s", json.dumps(summary, default=str))
        config = load_pipeline(self.pipeline_path)
        for message in run_notifications(config.name, config.notifications, summary, run_id):
            delivered = send(config.notifications, message)
            self.log.info("notification %s: %s", message.event, delivered)
        return summary
