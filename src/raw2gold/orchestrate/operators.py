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
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

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


def skip_unless_ingesting(context: Any, source: str) -> None:
    """Skip the ingest task of ``source`` when the run's params leave it out: ``ingest`` false
    (transform what raw already holds) or a ``sources`` list without it."""
    params = context.get("params") or {}
    if params.get("ingest") is False:
        raise AirflowSkipException("params.ingest is false: this run lands nothing")
    selected = params.get("sources") or []
    if selected and source not in selected:
        raise AirflowSkipException(f"source {source} not selected in params.sources")


def task_failure(error: BaseException) -> AirflowException:
    """The Airflow exception a task raises for a raw2gold error: AirflowFailException (no
    retries) when the error is final, i.e. the same try would fail the same way (a failed
    check, a model's mistake, a table another run published over), else AirflowException."""
    from raw2gold.errors import is_final

    if is_final(error):
        return AirflowFailException(f"{error} (not retried: a retry would fail the same way)")
    return AirflowException(str(error))


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
        from raw2gold.errors import Raw2GoldError
        from raw2gold.ingest import ingest_source

        skip_unless_ingesting(context, self.source)
        params = context.get("params") or {}
        config = load_pipeline(self.pipeline_path)
        run_id, ingest_date = run_ids(context)
        try:
            manifest = ingest_source(
                config,
                self.source,
                run_id=run_id,
                ingest_date=ingest_date,
                full_refresh=bool(params.get("full_refresh")),
                log=self.log.info,
            )
        except Raw2GoldError as exc:
            if exc.final:  # the connector refused its config: no retry changes that
                raise task_failure(exc) from exc
            raise
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

    def __init__(
        self, *, pipeline_path: str, stage: str, tables: list[str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.pipeline_path = pipeline_path
        self.stage = stage
        self.tables = tables
        self._runner: Any = None
        self._remote: str | None = None

    def command(self, run_id: str, full_refresh: bool) -> list[str]:
        """The local-mode command line."""
        from raw2gold.transform.runners import job_args

        args = job_args(self.pipeline_path, self.stage, run_id, full_refresh, self.tables)
        return [sys.executable, "-m", "raw2gold.transform.job", *args]

    def _remote_env(self, config: Any, run_id: str) -> dict[str, str]:
        """The run's Spark Connect server for the local job, in a session of this task's own."""
        import uuid

        from raw2gold.lake import Lake
        from raw2gold.transform.connect import REMOTE_ENV, usable_server

        if config is None or config.spark.mode != "local":
            return {}
        server = usable_server(Lake(config.lake), run_id)
        if server is None:
            self.log.info("no Spark Connect server for run %s here: the job starts a JVM", run_id)
            return {}
        self._remote = f"{server['url']}/;session_id={uuid.uuid4()}"
        self.log.info("the job runs on the run's Spark Connect server %s", server["url"])
        return {REMOTE_ENV: self._remote}

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
        config = self._config()
        self._runner = make_runner(
            config,
            self.pipeline_path,
            self.stage,
            self.log,
            command=self.command,
            tables=self.tables,
            env=self._remote_env(config, run_id),
        )
        try:
            summary: dict[str, Any] = self._runner.run(run_id, bool(params.get("full_refresh")))
        except StageRunError as exc:
            raise task_failure(exc) from None
        return summary

    def on_kill(self) -> None:
        """Stop the Spark job: local process group, cluster application or remote process.

        On the run's Spark Connect server, the job's session is interrupted too, so its
        queries stop on the server (which other tasks share and which stays up).
        """
        if self._runner is not None:
            self._runner.kill()
        if self._remote:
            from raw2gold.transform.connect import interrupt_session

            interrupt_session(self._remote, self.log.info)


class SparkServerOperator(BaseOperator):
    """Start (``action="start"``) or stop the run's Spark Connect server (local mode).

    See :mod:`raw2gold.transform.connect`. Stopping runs whatever happened upstream.
    """

    template_fields = ("pipeline_path",)
    ui_color = "#fdf2e8"

    def __init__(self, *, pipeline_path: str, action: str, ttl_seconds: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.pipeline_path = pipeline_path
        self.action = action
        self.ttl_seconds = ttl_seconds
        self._run_id: str | None = None

    def execute(self, context: Any) -> dict[str, Any] | None:
        from raw2gold.config import load_pipeline
        from raw2gold.transform.connect import start_server, stop_server

        config = load_pipeline(self.pipeline_path)
        self._run_id, _ = run_ids(context)
        if self.action == "start":
            return start_server(config, self._run_id, self.ttl_seconds, self.log.info)
        stop_server(config, self._run_id, self.log.info)
        return None

    def on_kill(self) -> None:
        """A start that is killed stops the server it may have started."""
        if self.action == "start" and self._run_id:
            from raw2gold.config import load_pipeline
            from raw2gold.transform.connect import stop_server

            stop_server(load_pipeline(self.pipeline_path), self._run_id, self.log.info)


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
