"""Retries, failure notifications and timeouts, run by Airflow itself (`airflow dags test`).

Notifications go to real servers on 127.0.0.1: an HTTP receiver standing in for Slack's
incoming-webhook endpoint and the generic JSON webhook (Slack itself cannot be reached here), and
a real SMTP server (aiosmtpd).
"""

from __future__ import annotations

import email
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.airflow import dags_test_home

DAG_FILE = '''
"""Test DAGs for raw2gold's notifications, retries and timeouts (airflow dag file)."""
import os
import sys
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

from raw2gold.config.models import NotificationsConfig
from raw2gold.orchestrate.notify import failure_callbacks, retry_callbacks
from raw2gold.orchestrate.operators import (
    IngestSourceOperator,
    RunSummaryOperator,
    SparkStageOperator,
)

STATE = Path(os.environ.get("R2G_TEST_STATE", "/nonexistent"))
settings = NotificationsConfig(
    slack_conn_id="r2g_slack",
    email_conn_id="r2g_smtp",
    email_to=["oncall@example.com"],
    webhook_conn_id="r2g_hook",
    on_retry=True,
)


def always_fails():
    raise ValueError("the source table orders is empty\\nsecond line of detail")


def fails_once():
    attempts = STATE / "attempts"
    count = int(attempts.read_text()) + 1 if attempts.exists() else 1
    attempts.write_text(str(count))
    if count == 1:
        raise RuntimeError("transient: connection reset by peer")


class SleepingStage(SparkStageOperator):
    def command(self, run_id, full_refresh):
        code = (
            "import os, time; "
            "open(os.environ['R2G_TEST_STATE'] + '/child.pid', 'w').write(str(os.getpid())); "
            "time.sleep(600)"
        )
        return [sys.executable, "-c", code]


class FailingStage(SparkStageOperator):
    """A stage job that fails like raw2gold's does: its summary line says whether the error is
    final (a failed check) or not (a store's hiccup, gone on the second try)."""

    def command(self, run_id, full_refresh):
        final = self.task_id == "check"
        code = (
            "import json, os, sys\\n"
            "path = os.environ['R2G_TEST_STATE'] + '/attempts'\\n"
            "tries = int(open(path).read()) + 1 if os.path.exists(path) else 1\\n"
            "open(path, 'w').write(str(tries))\\n"
            f"final = {final}\\n"
            "if not final and tries > 1:\\n"
            "    print('RAW2GOLD_SUMMARY ' + json.dumps({'status': 'succeeded'}))\\n"
            "    sys.exit(0)\\n"
            "error = 'check unique(id) on users failed' if final else 'read timed out'\\n"
            "print('raw2gold: ' + error, file=sys.stderr)\\n"
            "summary = {'status': 'failed', 'error': error, 'final': final}\\n"
            "print('RAW2GOLD_SUMMARY ' + json.dumps(summary))\\n"
            "sys.exit(1)\\n"
        )
        return [sys.executable, "-c", code]


common = dict(start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), schedule=None, catchup=False)
with DAG(
    "r2g_always_fails",
    default_args={"retries": 0, "on_failure_callback": failure_callbacks("demo", settings)},
    **common,
):
    PythonOperator(task_id="load_orders", python_callable=always_fails)

def retrying(retries):
    """default_args: retries 1 s apart, each retry and the failure notified."""
    return {
        "retries": retries,
        "retry_delay": timedelta(seconds=1),
        "on_failure_callback": failure_callbacks("demo", settings),
        "on_retry_callback": retry_callbacks("demo", settings),
    }


with DAG("r2g_fails_once", default_args=retrying(1), **common):
    PythonOperator(task_id="flaky", python_callable=fails_once)

for dag_id, task_id in [("r2g_final_failure", "check"), ("r2g_transient_failure", "transform")]:
    with DAG(dag_id, default_args=retrying(2), **common):
        FailingStage(task_id=task_id, pipeline_path="unused", stage=task_id)

with DAG("r2g_ingest_config_error", default_args=retrying(2), **common):
    IngestSourceOperator(
        task_id="ingest",
        pipeline_path=os.environ.get("R2G_TEST_PIPELINE", "/nonexistent"),
        source="malformed",
    )

with DAG("r2g_run_summary", params={"run_id": "20260102T030405Z-0123abcd"}, **common):
    RunSummaryOperator(
        task_id="done", pipeline_path=os.environ.get("R2G_TEST_PIPELINE", "/nonexistent")
    )

with DAG("r2g_timeout", default_args={"retries": 0}, **common):
    SleepingStage(
        task_id="spark", pipeline_path="unused", stage="transform",
        execution_timeout=timedelta(seconds=20),  # the child starts well within it, loaded or not
    )
'''


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory) -> dict[str, str]:
    return dags_test_home(tmp_path_factory.mktemp("airflow-home"), {"r2g_test_dags.py": DAG_FILE})


def dags_test(
    env: dict[str, str], dag_id: str, state: Path, extra_env: dict | None = None, **conns: dict
) -> subprocess.CompletedProcess:
    state.mkdir(parents=True, exist_ok=True)
    run_env = {**env, "R2G_TEST_STATE": str(state), **(extra_env or {})}
    for conn_id, conn in conns.items():
        run_env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
    return subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", dag_id],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def raw2gold_events(http_receiver) -> list[dict]:
    """The generic webhook's JSON bodies (raw2gold's events) among what the receiver got."""
    bodies = [json.loads(b) for b in http_receiver.received()]
    return [b for b in bodies if b.get("source") == "raw2gold"]


def channels(http_url: str, smtp_port: int, slack_path: str = "/slack", hook_path: str = "/hook"):
    return {
        "r2g_slack": {"conn_type": "slackwebhook", "password": f"{http_url}{slack_path}"},
        "r2g_hook": {"conn_type": "http", "host": f"{http_url}{hook_path}"},
        "r2g_smtp": {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": smtp_port,
            "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "raw2gold@localhost"},
        },
    }


def test_failure_notifies_slack_webhook_and_email(
    airflow_home, http_receiver, smtp_server, tmp_path
) -> None:
    result = dags_test(
        airflow_home,
        "r2g_always_fails",
        tmp_path / "state",
        **channels(http_receiver.url, smtp_server.port),
    )
    assert result.returncode != 0, "a failing task must fail the run"
    bodies = [json.loads(b) for b in http_receiver.received()]
    slack = [b for b in bodies if "blocks" in b or ("text" in b and "source" not in b)]
    hook = [b for b in bodies if b.get("source") == "raw2gold"]
    assert len(slack) == 1 and len(hook) == 1, bodies
    text = slack[0]["text"]
    assert "Pipeline demo: task load_orders failed (try 1)" in text
    assert "manual__" in text  # the run id
    assert "Error: the source table orders is empty" in text
    assert "second line" not in text  # one-line error
    assert re.search(r"\nLog: http://\S+/dags/r2g_always_fails/runs/\S+/tasks/load_orders", text)
    assert hook[0]["event"] == "task_failed" and hook[0]["task_id"] == "load_orders"
    (mail,) = smtp_server.received()
    message = email.message_from_bytes(mail)
    assert message["Subject"] == "[raw2gold] demo: task load_orders failed"
    assert message["To"] == "oncall@example.com"
    body = "".join(
        part.get_payload(decode=True).decode() for part in message.walk() if not part.is_multipart()
    )
    assert "the source table orders is empty" in body


def test_undeliverable_notification_does_not_mask_the_failure(airflow_home, tmp_path) -> None:
    from tests.fixtures.servers import free_port

    closed = free_port()  # nothing listens there
    result = dags_test(
        airflow_home,
        "r2g_always_fails",
        tmp_path / "state",
        **channels(f"http://127.0.0.1:{closed}", closed),
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "the source table orders is empty" in output
    assert "could not deliver the slack notification" in output
    assert "could not deliver the email notification" in output


def test_a_task_that_fails_once_succeeds_on_its_second_try(
    airflow_home, http_receiver, smtp_server, tmp_path
) -> None:
    state = tmp_path / "state"
    result = dags_test(
        airflow_home, "r2g_fails_once", state, **channels(http_receiver.url, smtp_server.port)
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert (state / "attempts").read_text() == "2"
    output = result.stdout + result.stderr
    assert "up_for_retry" in output
    hook = [json.loads(b) for b in http_receiver.received()]
    retries = [b for b in hook if b.get("event") == "task_retry"]
    assert len(retries) == 1 and retries[0]["try_number"] == 1
    assert "transient: connection reset by peer" in retries[0]["error"]
    assert not [b for b in hook if b.get("event") == "task_failed"]


def test_a_stage_that_fails_for_good_is_not_retried(
    airflow_home, http_receiver, smtp_server, tmp_path
) -> None:
    """A stage job whose summary marks its error final (a failed check, a model's mistake,
    another run's publish) fails its task at once: retries: 2 are not spent on it."""
    state = tmp_path / "state"
    channel = channels(http_receiver.url, smtp_server.port)
    result = dags_test(airflow_home, "r2g_final_failure", state, **channel)
    assert result.returncode != 0
    assert (state / "attempts").read_text() == "1"
    hook = raw2gold_events(http_receiver)
    assert [b["event"] for b in hook] == ["task_failed"]
    assert hook[0]["try_number"] == 1
    assert hook[0]["error"] == (
        "Spark stage check failed locally (exit 1): check unique(id) on users failed "
        "(not retried: a retry would fail the same way)"
    )


def test_a_stage_that_fails_for_now_is_retried(
    airflow_home, http_receiver, smtp_server, tmp_path
) -> None:
    state = tmp_path / "state"
    channel = channels(http_receiver.url, smtp_server.port)
    result = dags_test(airflow_home, "r2g_transient_failure", state, **channel)
    assert result.returncode == 0, result.stdout[-2000:]
    assert (state / "attempts").read_text() == "2"
    hook = raw2gold_events(http_receiver)
    assert [b["event"] for b in hook] == ["task_retry"]
    assert hook[0]["error"] == "Spark stage transform failed locally (exit 1): read timed out"


MALFORMED_CSV_PIPELINE = """
name: demo
lake: {uri: ./lake}
sources:
  malformed:
    connector: {package: airbyte-source-file, version: 0.5.39}
    config:
      dataset_name: bad
      format: csv
      url: ${PIPELINE_DIR}/bad.csv
      provider: {storage: local}
    streams: [{name: bad}]
"""


def test_a_connector_that_refuses_its_config_is_not_retried(
    airflow_home, http_receiver, smtp_server, tmp_path
) -> None:
    """The real source-file connector on a CSV its reader_options cannot parse reports a
    config_error (Airbyte protocol): the ingest task fails on its first try."""
    (tmp_path / "bad.csv").write_text("id,name\n1,a\n2,b,extra,more\n3,c\n")
    (tmp_path / "pipeline.yaml").write_text(MALFORMED_CSV_PIPELINE)
    result = dags_test(
        airflow_home,
        "r2g_ingest_config_error",
        tmp_path / "state",
        extra_env={"R2G_TEST_PIPELINE": str(tmp_path / "pipeline.yaml")},
        **channels(http_receiver.url, smtp_server.port),
    )
    assert result.returncode != 0
    hook = raw2gold_events(http_receiver)
    assert [(b["event"], b["try_number"]) for b in hook] == [("task_failed", 1)], hook
    assert "discover failed (exit code 1): File " in hook[0]["error"]
    assert "can not be parsed" in hook[0]["error"]
    assert "(not retried: a retry would fail the same way)" in hook[0]["error"]
    assert not (tmp_path / "lake" / "raw").exists()


def test_a_task_over_its_timeout_is_killed_with_its_external_process(
    airflow_home, tmp_path
) -> None:
    state = tmp_path / "state"
    result = dags_test(airflow_home, "r2g_timeout", state)
    assert result.returncode != 0
    assert "AirflowTaskTimeout" in result.stdout + result.stderr
    pid = int((state / "child.pid").read_text())
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    assert not _alive(pid), f"the stage's process {pid} survived the task timeout"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


SUMMARY_PIPELINE = """
name: demo
lake: {uri: ./lake}
sources:
  faker:
    connector: {package: airbyte-source-faker, version: 7.2.1}
    streams: [{name: users}]
notifications:
  slack_conn_id: r2g_slack
  webhook_conn_id: r2g_hook
  on_success: true
"""


def test_run_end_sends_the_success_summary_and_quality_warnings(
    airflow_home, http_receiver, tmp_path
) -> None:
    """The closing task of a run (RunSummaryOperator) reads what the stages recorded in the lake
    and sends a quality warning (a failed `warn` check) and the success summary."""
    from datetime import UTC, datetime

    from raw2gold.config import load_pipeline
    from raw2gold.lake.layout import Lake
    from tests.transform.rawdata import shop_records, write_raw_run

    run_id = "20260102T030405Z-0123abcd"
    (tmp_path / "pipeline.yaml").write_text(SUMMARY_PIPELINE)
    lake = Lake(load_pipeline(tmp_path / "pipeline.yaml").lake)
    users = shop_records(users=7)["users"]
    write_raw_run(lake, "faker", run_id, {"users": users}, datetime(2026, 1, 2, tzinfo=UTC))
    lake.write_json(lake.run_record(run_id, "processed"), {"processed": {"users": {"rows": 7}}})
    warning = {
        "table": "users",
        "check": "unique(email)",
        "passed": False,
        "severity": "warn",
        "failing_rows": 2,
    }
    lake.write_json(lake.run_record(run_id, "check"), {"status": "succeeded", "checks": [warning]})
    gold = {"top_users": {"rows": 5, "format": "delta"}}
    lake.write_json(lake.run_record(run_id, "publish"), {"status": "succeeded", "gold": gold})

    result = dags_test(
        airflow_home,
        "r2g_run_summary",
        tmp_path / "state",
        extra_env={"R2G_TEST_PIPELINE": str(tmp_path / "pipeline.yaml")},
        **channels(http_receiver.url, 0),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    bodies = [json.loads(b) for b in http_receiver.received()]
    hook = {b["event"]: b for b in bodies if b.get("source") == "raw2gold"}
    slack = [b["text"] for b in bodies if b.get("source") != "raw2gold"]
    assert set(hook) == {"quality_warning", "run_succeeded"}, bodies
    assert "users: unique(email) (2 rows)" in hook["quality_warning"]["text"]
    success = hook["run_succeeded"]
    assert success["run_id"] == run_id
    assert "7 raw records" in success["text"]
    assert "gold published: top_users (5 rows)" in success["text"]
    assert len(slack) == 2 and any("succeeded" in text for text in slack)
