"""Notifications: Slack (incoming webhook), e-mail (SMTP) and a generic JSON webhook.

Channels are configured per pipeline by Airflow connection ids only (credentials never appear
in pipeline.yaml). Events: task failure after the last retry, a retry (optional), a run's
success summary (optional), quality warnings, and a run still going after its expected duration
(an Airflow deadline alert whose callback is :func:`run_overdue`). A notification that cannot
be delivered is logged and never raises, so it can neither fail a task nor hide the error that
triggered it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow.sdk import BaseNotifier

from raw2gold.config.models import NotificationsConfig
from raw2gold.errors import first_line

log = logging.getLogger("raw2gold.notify")


@dataclass
class Notification:
    """One message, rendered for every channel."""

    pipeline: str
    event: str  # task_failed | task_retry | run_succeeded | quality_warning | run_overdue
    title: str
    text: str
    task_id: str = ""
    run_id: str = ""
    try_number: int | None = None
    error: str = ""
    log_url: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def one_line(error: object) -> str:
    """The first non-empty line of an error, shortened."""
    return first_line(error)[:500] if error else ""


def task_notification(pipeline: str, event: str, context: dict[str, Any]) -> Notification:
    """A failure or retry message naming pipeline, task, run, try number, error and log link."""
    ti = context.get("ti") or context.get("task_instance")
    task_id = str(getattr(ti, "task_id", "?"))
    run_id = str(getattr(context.get("dag_run"), "run_id", "?"))
    try_number = getattr(ti, "try_number", None)
    error = one_line(context.get("exception")) or "unknown error"
    log_url = str(getattr(ti, "log_url", "") or "")
    verb = "failed" if event == "task_failed" else "will be retried"
    title = f"[raw2gold] {pipeline}: task {task_id} {verb}"
    text = (
        f"Pipeline {pipeline}: task {task_id} {verb} (try {try_number}) in run {run_id}.\n"
        f"Error: {error}" + (f"\nLog: {log_url}" if log_url else "")
    )
    return Notification(pipeline, event, title, text, task_id, run_id, try_number, error, log_url)


def send(settings: NotificationsConfig, message: Notification) -> dict[str, bool]:
    """Deliver to every configured channel; return {channel: delivered}. Never raises."""
    delivered: dict[str, bool] = {}
    channels = {
        "slack": (settings.slack_conn_id, _send_slack),
        "email": (settings.email_conn_id if settings.email_to else None, _send_email),
        "webhook": (settings.webhook_conn_id, _send_webhook),
    }
    for channel, (conn_id, sender) in channels.items():
        if not conn_id:
            continue
        try:
            sender(conn_id, settings, message)
            delivered[channel] = True
        except Exception as exc:  # noqa: BLE001 - a failed notification must not mask the error
            delivered[channel] = False
            log.error("could not deliver the %s notification (%s): %s", channel, conn_id, exc)
    return delivered


def _send_slack(conn_id: str, settings: NotificationsConfig, message: Notification) -> None:
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    SlackWebhookHook(slack_webhook_conn_id=conn_id, timeout=10).send_text(message.text)


def _send_email(conn_id: str, settings: NotificationsConfig, message: Notification) -> None:
    from html import escape

    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with SmtpHook(smtp_conn_id=conn_id) as smtp:
        smtp.send_email_smtp(
            to=settings.email_to,
            subject=message.title,
            html_content=f"<pre>{escape(message.text)}</pre>",
        )


def _send_webhook(conn_id: str, settings: NotificationsConfig, message: Notification) -> None:
    """POST the message as JSON (Teams/Discord/PagerDuty-style receivers, or any HTTP endpoint).

    The connection's host is the URL (or host + schema + port + extra `endpoint`); an optional
    password is sent as a bearer token.
    """
    import httpx
    from airflow.sdk import Connection

    conn = Connection.get(conn_id)
    host = conn.host or ""
    if "://" in host:
        url = host
    else:
        port = f":{conn.port}" if conn.port else ""
        url = f"{conn.schema or 'https'}://{host}{port}"
    endpoint = conn.extra_dejson.get("endpoint", "")
    if endpoint:
        url = url.rstrip("/") + "/" + endpoint.lstrip("/")
    headers = {"Authorization": f"Bearer {conn.password}"} if conn.password else {}
    payload = {**asdict(message), "text": message.text, "source": "raw2gold"}
    response = httpx.post(
        url,
        content=json.dumps(payload, default=str),
        headers={"Content-Type": "application/json", **headers},
        timeout=10,
    )
    response.raise_for_status()


class PipelineNotifier(BaseNotifier):
    """Task callback sending a failure or retry notification to the pipeline's channels."""

    template_fields = ()

    def __init__(self, pipeline: str, settings: NotificationsConfig, event: str) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.settings = settings
        self.event = event

    def notify(self, context: Any) -> None:
        send(self.settings, task_notification(self.pipeline, self.event, context))


def overdue_notification(
    pipeline: str, expected_minutes: float, context: dict[str, Any] | None
) -> Notification:
    """The message for a run that has not finished within its expected duration."""
    dag_run = (context or {}).get("dag_run") or {}
    run_id = str(dag_run.get("dag_run_id") or dag_run.get("run_id") or "?")
    dag_id = str(dag_run.get("dag_id") or "?")
    state = str(dag_run.get("state") or "?")
    queued = str(dag_run.get("queued_at") or "?")
    link = ""
    try:
        from airflow.configuration import conf

        base = conf.get("api", "base_url", fallback="") or ""
        if base and dag_id != "?":
            link = f"{base.rstrip('/')}/dags/{dag_id}/runs/{run_id}"
    except Exception:  # noqa: BLE001 - a link is a nicety, never a reason not to notify
        link = ""
    title = f"[raw2gold] {pipeline}: run {run_id} is overdue"
    text = (
        f"Pipeline {pipeline}: run {run_id} has not finished {expected_minutes:g} min after it "
        f"was queued ({queued}); state {state}." + (f"\nRun: {link}" if link else "")
    )
    return Notification(
        pipeline,
        "run_overdue",
        title,
        text,
        run_id=run_id,
        log_url=link,
        details={"dag_id": dag_id, "state": state, "queued_at": queued},
    )


async def run_overdue(
    pipeline: str,
    notifications: dict[str, Any],
    expected_minutes: float,
    context: dict[str, Any] | None = None,
) -> str:
    """Deadline-alert callback, awaited by the triggerer: tell every channel the run is overdue.

    The triggerer (not an executor callback) because in Airflow 3.3 only its callbacks may read
    connections through the Execution API. The blocking senders run in a worker thread. The
    result is text: Airflow stores it in a text column, and anything else kills the triggerer.
    """
    from asgiref.sync import sync_to_async

    settings = NotificationsConfig.model_validate(notifications)
    message = overdue_notification(pipeline, expected_minutes, context)
    delivered: dict[str, bool] = await sync_to_async(send)(settings, message)
    return ", ".join(
        f"{channel}: {'sent' if ok else 'failed'}" for channel, ok in delivered.items()
    )


def overdue_alert(pipeline: str, settings: NotificationsConfig, minutes: float | None) -> Any:
    """An Airflow DeadlineAlert awaiting :func:`run_overdue` `minutes` after a run is queued.

    None when no duration is set or no channel is configured. The callback's arguments are
    connection ids and addresses only, never credentials.
    """
    if not minutes or not has_channels(settings):
        return None
    from datetime import timedelta

    from airflow.sdk.definitions.callback import AsyncCallback
    from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(minutes=minutes),
        callback=AsyncCallback(
            f"{__name__}.run_overdue",
            kwargs={
                "pipeline": pipeline,
                "notifications": settings.model_dump(mode="json"),
                "expected_minutes": minutes,
            },
        ),
        name=f"{pipeline}_overdue",
    )


def has_channels(settings: NotificationsConfig) -> bool:
    """Whether any channel is configured."""
    return bool(
        settings.slack_conn_id
        or settings.webhook_conn_id
        or (settings.email_conn_id and settings.email_to)
    )


def failure_callbacks(pipeline: str, settings: NotificationsConfig) -> list[BaseNotifier]:
    """Task-level on_failure_callback (called after the last retry only)."""
    return [PipelineNotifier(pipeline, settings, "task_failed")] if has_channels(settings) else []


def retry_callbacks(pipeline: str, settings: NotificationsConfig) -> list[BaseNotifier]:
    """Task-level on_retry_callback, when notifications.on_retry is set."""
    if has_channels(settings) and settings.on_retry:
        return [PipelineNotifier(pipeline, settings, "task_retry")]
    return []


def run_notifications(
    pipeline: str, settings: NotificationsConfig, summary: dict[str, Any], run_id: str
) -> list[Notification]:
    """Messages for the end of a successful run: quality warnings, and the success summary."""
    messages: list[Notification] = []
    warnings = [
        c
        for stage in summary.get("stages", {}).values()
        for c in stage.get("checks", [])
        if not c.get("passed") and c.get("severity") == "warn"
    ]
    if warnings:
        lines = [
            f"- {c.get('table')}: {c.get('check')} ({c.get('failing_rows')} rows)" for c in warnings
        ]
        messages.append(
            Notification(
                pipeline,
                "quality_warning",
                f"[raw2gold] {pipeline}: {len(warnings)} quality warning(s)",
                f"Pipeline {pipeline}, run {run_id}: published with warnings:\n" + "\n".join(lines),
                run_id=run_id,
                details={"warnings": warnings},
            )
        )
    if settings.on_success:
        raw_rows = sum(
            s.get("records", 0)
            for streams in summary.get("raw", {}).values()
            for s in streams.values()
        )
        gold = summary.get("stages", {}).get("publish", {}).get("gold", {})
        gold_text = ", ".join(
            f"{t} ({g.get('rows')} rows{', unchanged' if g.get('action') == 'unchanged' else ''})"
            for t, g in gold.items()
        )
        messages.append(
            Notification(
                pipeline,
                "run_succeeded",
                f"[raw2gold] {pipeline}: run {run_id} succeeded",
                f"Pipeline {pipeline}, run {run_id} succeeded: {raw_rows} raw records; "
                f"gold published: {gold_text or 'none'}.",
                run_id=run_id,
                details={"summary": summary},
            )
        )
    return messages
