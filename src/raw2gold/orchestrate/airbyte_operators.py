"""The ingest task of a source synced by an Airbyte server (``airbyte:`` in pipeline.yaml).

Trigger the connection's sync with the Airflow Airbyte provider's hook, wait for it, then register
what its destination wrote as a raw run (:mod:`raw2gold.ingest.airbyte_server`).

Waiting: by default the task polls in the worker every ``wait_seconds`` (works with any executor
and with ``airflow dags test``). ``deferrable=True`` (or ``[operators] default_deferrable``) hands
the wait to the provider's ``AirbyteSyncTrigger``: it frees the worker slot but needs a running
triggerer (``airflow dags test`` runs the trigger inline, Airflow 3.x). The job is cancelled
(``DELETE /jobs/{id}``) when the task is killed or times out: ``execution_timeout`` (the task
runner calls ``on_kill``; deferred, the trigger reports the deadline and the task cancels) and the
operator's own ``timeout`` (seconds) alike. While deferred there is no process to kill, so marking
a deferred task failed by hand does not cancel the job.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from raw2gold.errors import first_line
from raw2gold.orchestrate.operators import raw_run_result, run_ids, skip_unless_ingesting

TRIGGER_POLL_BUFFER = 2  # poll intervals granted to the trigger past execution_timeout
NO_DEADLINE = 7 * 24 * 3600.0


def _default_deferrable() -> bool:
    try:
        from airflow.providers.common.compat.sdk import conf

        return bool(conf.getboolean("operators", "default_deferrable", fallback=False))
    except Exception:  # an old or partial configuration: poll in the worker
        return False


class AirbyteServerSyncOperator(BaseOperator):
    """Sync one ``airbyte:`` source on its Airbyte server, then register its files into raw."""

    template_fields = ("pipeline_path",)
    ui_color = "#6C51FD"

    def __init__(
        self,
        *,
        pipeline_path: str,
        source: str,
        deferrable: bool | None = None,
        wait_seconds: float = 3.0,
        timeout: float | None = None,
        request_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pipeline_path = pipeline_path
        self.source = source
        self.deferrable = _default_deferrable() if deferrable is None else deferrable
        self.wait_seconds = wait_seconds
        self.timeout = timeout
        self.request_timeout = request_timeout
        self.job_id: int | None = None
        self._conn_id: str | None = None

    # ---- helpers ------------------------------------------------------------------------------
    def _load(self, context: Any) -> tuple[Any, Any, str, str]:
        from raw2gold.config import load_pipeline

        config = load_pipeline(self.pipeline_path)
        spec = config.sources[self.source].airbyte
        if spec is None:
            raise AirflowException(f"source {self.source} has no airbyte: section")
        self._conn_id = spec.conn_id
        run_id, ingest_date = run_ids(context)
        return config, spec, run_id, ingest_date

    def _hook(self) -> Any:
        from raw2gold.ingest.airbyte_server import airbyte_hook

        return airbyte_hook(self._conn_id or "airbyte_default", self.request_timeout)

    def _register(self, context: Any, job_id: int | None) -> dict[str, Any]:
        from raw2gold.ingest.airbyte_server import register_destination_files

        config, _, run_id, ingest_date = self._load(context)
        manifest = register_destination_files(
            config, self.source, run_id, ingest_date, job_id, log=self.log.info
        )
        return {
            **raw_run_result(self.log, manifest, run_id, self.source),
            "airbyte_job_id": job_id,
        }

    def _defer(self, job_id: int, end_time: float, deadline: float | None = None) -> None:
        from airflow.providers.airbyte.triggers.airbyte import AirbyteSyncTrigger

        defer_timeout = None
        if self.execution_timeout is not None:
            if deadline is None:
                deadline = time.time() + self.execution_timeout.total_seconds()
            left = max(deadline - time.time(), 0.0)
            defer_timeout = timedelta(seconds=left + TRIGGER_POLL_BUFFER * self.wait_seconds)
        self.defer(
            trigger=AirbyteSyncTrigger(
                job_id=job_id,
                conn_id=self._conn_id or "airbyte_default",
                end_time=end_time,
                poll_interval=self.wait_seconds,
                execution_deadline=deadline,
            ),
            method_name="execute_complete",
            kwargs={"end_time": end_time, "deadline": deadline},
            timeout=defer_timeout,
        )

    # ---- execution ----------------------------------------------------------------------------
    def execute(self, context: Any) -> dict[str, Any]:
        from raw2gold.ingest.airbyte_server import (
            IN_PROGRESS,
            SUCCEEDED,
            AirbyteJobError,
            submit_sync,
            wait_for_sync,
        )
        from raw2gold.lake.layout import Lake

        skip_unless_ingesting(context, self.source)
        config, spec, run_id, _ = self._load(context)
        if Lake(config.lake).exists(Lake.raw_manifest(self.source, run_id)):
            self.log.info("run %s of %s is already committed; no new sync", run_id, self.source)
            return self._register(context, None)
        hook = self._hook()
        self.job_id, status = submit_sync(hook, spec.connection_id)
        self.log.info(
            "Airbyte job %s of connection %s submitted (%s)",
            self.job_id,
            spec.connection_id,
            status,
        )
        end = time.time() + (self.timeout if self.timeout is not None else NO_DEADLINE)
        if self.deferrable and status in IN_PROGRESS:
            self._defer(self.job_id, end)
        try:
            if status != SUCCEEDED:
                wait_for_sync(
                    hook,
                    self.job_id,
                    spec.connection_id,
                    poll_seconds=self.wait_seconds,
                    timeout=self.timeout,
                    log=self.log.info,
                )
        except AirbyteJobError as exc:
            self.job_id = None  # ended (or cancelled already): nothing for on_kill to cancel
            raise AirflowException(str(exc)) from None
        job_id, self.job_id = self.job_id, None
        return self._register(context, job_id)

    def execute_complete(
        self,
        context: Any,
        event: dict[str, Any] | None = None,
        end_time: float | None = None,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """Resume after the trigger: register on success, else cancel (timeout) and fail."""
        from raw2gold.ingest.airbyte_server import IN_PROGRESS, cancel_job, job_status

        event = event or {}
        _, spec, _, _ = self._load(context)
        job_id = int(event.get("job_id") or 0)
        kind = event.get("status")
        if kind == "success":
            return self._register(context, job_id)
        hook = self._hook()
        if kind == "timeout":
            cancel_job(hook, job_id, self.log.info)
            raise AirflowException(
                f"Airbyte job {job_id} of connection {spec.connection_id} cancelled: "
                f"execution_timeout {self.execution_timeout} reached"
            )
        try:
            status = job_status(hook, job_id)
        except Exception:
            status = "unknown"
        # The provider's trigger reports 'queued' as a failure: still in progress, wait again.
        if kind == "error" and status in IN_PROGRESS and end_time and time.time() < end_time:
            self._defer(job_id, end_time, deadline)
        if kind == "error" and status in IN_PROGRESS:
            cancel_job(hook, job_id, self.log.info)
        detail = first_line(event.get("message") or "")[:200] if event else ""
        raise AirflowException(
            f"Airbyte job {job_id} of connection {spec.connection_id} ended with status "
            f"{status}: {detail}"
        )

    def on_kill(self) -> None:
        """Cancel the running Airbyte job (``DELETE /jobs/{id}``)."""
        from raw2gold.ingest.airbyte_server import cancel_job

        job_id = self.job_id
        if job_id is None:
            return
        self.log.info("on_kill: cancelling Airbyte job %s", job_id)
        cancel_job(self._hook(), job_id, self.log.info)
        self.job_id = None
