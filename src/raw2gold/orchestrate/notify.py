"""Failure (and success) notifications: Slack webhook and e-mail through Airflow connections.

A notification that cannot be delivered is logged and never raises, so it cannot fail a task or
hide the error that triggered it.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import BaseNotifier

from raw2gold.config.models import NotificationsConfig

log = logging.getLogger("raw2gold.notify")


def failure_message(pipeline: str, context: dict[str, Any]) -> tuple[str, str]:
    """(subject, body) naming the pipeline, task, run, try number, error and log link."""
    ti = context.get("ti") or context.get("task_instance")
    task_id = getattr(ti, "task_id", "?")
    run_id = getattr(context.get("dag_run"), "run_id", "?")
    try_number = getattr(ti, "try_number", "?")
    error = context.get("exception")
    first_line = str(error).strip().splitlines()[0] if error else "unknown error"
    log_url = getattr(ti, "log_url", "") or ""
    subject = f"[raw2gold] {pipeline}: task {task_id} failed"
    body = (
        f"Pipeline {pipeline}: task {task_id} failed (try {try_number}) in run {run_id}.\n"
        f"Error: {first_line}\n" + (f"Log: {log_url}\n" if log_url else "")
    )
    return subject, body


class PipelineFailureNotifier(BaseNotifier):
    """Send one failure message to every configured channel; delivery errors are only logged."""

    template_fields = ()

    def __init__(self, pipeline: str, settings: NotificationsConfig) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.settings = settings

    def notify(self, context: dict[str, Any]) -> None:
        subject, body = failure_message(self.pipeline, context)
        if self.settings.slack_conn_id:
            try:
                from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

                SlackWebhookHook(slack_webhook_conn_id=self.settings.slack_conn_id).send_text(body)
            except Exception as exc:  # noqa: BLE001 - a failed notification must not mask the error
                log.error("could not deliver the Slack notification: %s", exc)
        if self.settings.email_conn_id and self.settings.email_to:
            try:
                from airflow.providers.smtp.hooks.smtp import SmtpHook

                with SmtpHook(smtp_conn_id=self.settings.email_conn_id) as smtp:
                    smtp.send_email_smtp(
                        to=self.settings.email_to,
                        subject=subject,
                        html_content=f"<pre>{body}</pre>",
                    )
            except Exception as exc:  # noqa: BLE001
                log.error("could not deliver the e-mail notification: %s", exc)


def failure_callbacks(pipeline: str, settings: NotificationsConfig) -> list[BaseNotifier]:
    """Task-level on_failure_callback list for a pipeline (empty when nothing is configured)."""
    if not (settings.slack_conn_id or (settings.email_conn_id and settings.email_to)):
        return []
    return [PipelineFailureNotifier(pipeline, settings)]
