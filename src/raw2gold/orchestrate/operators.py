"""Airflow operators for the pipeline's stages.

They import nothing heavy at module level (no Spark, no pyarrow), so DAG files parse fast; the
work happens in ``execute``. External work (a connector subprocess, a Spark job) is stopped by
``on_kill``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import deque
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
        streams = manifest.get("streams", {})
        rows = {name: s.get("records", 0) for name, s in streams.items()}
        bad = {name: s.get("quarantined", 0) for name, s in streams.items() if s.get("quarantined")}
        self.log.info("raw run %s of %s: %s records per stream", run_id, self.source, rows)
        if bad:
            self.log.warning("quarantined records per stream: %s", bad)
        return {"run_id": run_id, "source": self.source, "records": rows, "quarantined": bad}

    def on_kill(self) -> None:
        """Stop the connector: its whole process group, so no child survives the task."""
        from raw2gold.ingest import terminate_all

        stopped = terminate_all()
        self.log.info("stopped %d connector process(es)", stopped)


class SparkStageOperator(BaseOperator):
    """Run one Spark stage (transform, check, publish) as `python -m raw2gold.transform.job`.

    The stage runs in its own process (one JVM per stage, not per model); the operator streams
    its output into the task log and kills its process group on timeout or kill.
    """

    template_fields = ("pipeline_path",)
    ui_color = "#fdf2e8"

    def __init__(self, *, pipeline_path: str, stage: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline_path = pipeline_path
        self.stage = stage
        self._process: subprocess.Popen[str] | None = None

    def command(self, run_id: str, full_refresh: bool) -> list[str]:
        cmd = [sys.executable, "-m", "raw2gold.transform.job", "--pipeline", self.pipeline_path]
        cmd += ["--stage", self.stage, "--run-id", run_id]
        return cmd + (["--full-refresh"] if full_refresh else [])

    def execute(self, context: Any) -> dict[str, Any]:
        params = context.get("params") or {}
        run_id, _ = run_ids(context)
        cmd = self.command(run_id, bool(params.get("full_refresh")))
        env = {**os.environ, "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1")}
        self.log.info("running: %s", " ".join(cmd))
        self._process = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        summary: dict[str, Any] = {}
        tail: deque[str] = deque(maxlen=40)
        assert self._process.stdout is not None
        for line in self._process.stdout:
            line = line.rstrip("\n")
            if line.startswith(SUMMARY_PREFIX):
                summary = json.loads(line[len(SUMMARY_PREFIX) :])
                continue
            tail.append(line)
            self.log.info("%s", line)
        code = self._process.wait()
        self._process = None
        if code != 0:
            errors = [line for line in tail if line.startswith("raw2gold:")]
            message = errors[-1] if errors else (tail[-1] if tail else "no output")
            raise AirflowException(f"Spark stage {self.stage} failed (exit {code}): {message}")
        return summary

    def on_kill(self) -> None:
        """Stop the Spark job: SIGTERM its process group, SIGKILL after 10 s."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


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
