"""The local Airflow with its real scheduler: scheduled runs, REST-triggered runs with params,
`raw2gold trigger`, loopback-only listeners and a clean `raw2gold airflow down`.

One Airflow serves the whole file (session fixture); the `down` test stops it and runs last.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import httpx
import psutil
import pytest

from raw2gold.cli import main
from raw2gold.orchestrate import local_airflow
from tests.fixtures.airflow import (
    FAILING_DAG,
    OVERDUE_CONN,
    OVERDUE_DAG,
    OVERDUE_RELEASE,
    OVERDUE_SECONDS,
    PARAMS_DAG,
    SCHEDULED_DAG,
    LocalAirflow,
)
from tests.fixtures.servers import Receiver

LOOPBACK = {"127.0.0.1", "::1"}


def _wait_run(
    server: LocalAirflow, dag_id: str, run_id: str, timeout: float = 120.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = server.client.dag_run(dag_id, run_id)
        if run["state"] in {"success", "failed"} or time.monotonic() > deadline:
            return run
        time.sleep(1.0)


def _members(state: local_airflow.AirflowState) -> list[psutil.Process]:
    """Every live process in the recorded process groups."""
    pgids = {c.pid for c in state.components}
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) in pgids and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def test_cron_dag_gets_a_scheduled_run_that_succeeds(airflow_server: LocalAirflow) -> None:
    client = airflow_server.client
    client.wait_for_dag(SCHEDULED_DAG)
    deadline = time.monotonic() + 150
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        runs = client.dag_runs(SCHEDULED_DAG, run_type="scheduled")
        if any(r["state"] == "success" for r in runs):
            break
        time.sleep(2.0)
    done = [r for r in runs if r["state"] == "success"]
    assert done, f"no successful scheduled run within 150 s: {runs}"
    assert done[0]["run_type"] == "scheduled"
    assert done[0]["dag_run_id"].startswith("scheduled__")
    assert (airflow_server.out / "ticks" / "scheduled").read_text().startswith("scheduled__")


def test_rest_triggered_run_with_params_succeeds(airflow_server: LocalAirflow) -> None:
    base = airflow_server.base_url
    anonymous = httpx.get(f"{base}/api/v2/dags/{PARAMS_DAG}", timeout=10)
    assert anonymous.status_code == 401
    token = httpx.post(
        f"{base}/auth/token",
        json={"username": airflow_server.username, "password": airflow_server.password},
        timeout=10,
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    airflow_server.client.wait_for_dag(PARAMS_DAG)
    reply = httpx.patch(
        f"{base}/api/v2/dags/{PARAMS_DAG}", json={"is_paused": False}, headers=headers, timeout=10
    )
    assert reply.status_code == 200, reply.text
    conf = {"who": "alice", "n": 3, "sources": ["faker"]}
    reply = httpx.post(
        f"{base}/api/v2/dags/{PARAMS_DAG}/dagRuns",
        json={"logical_date": None, "conf": conf},
        headers=headers,
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    run = reply.json()
    assert run["run_type"] == "manual"
    finished = _wait_run(airflow_server, PARAMS_DAG, run["dag_run_id"])
    assert finished["state"] == "success", finished
    files = list((airflow_server.out / "params").glob("manual__*.json"))
    seen = [json.loads(f.read_text()) for f in files]
    assert conf in seen


def test_trigger_cli_follows_runs(
    airflow_server: LocalAirflow, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("RAW2GOLD_HOME", str(airflow_server.home))
    code = main(["trigger", PARAMS_DAG, "--param", "who=bob", "--param", 'sources=["a","b"]'])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert "record success" in out.out
    assert "finish success" in out.out
    assert "succeeded" in out.out
    seen = [json.loads(f.read_text()) for f in (airflow_server.out / "params").glob("*.json")]
    assert {"who": "bob", "n": 0, "sources": ["a", "b"]} in seen

    code = main(["trigger", FAILING_DAG])
    out = capsys.readouterr()
    assert code == 1, out.out + out.err
    assert "boom failed" in out.out
    assert "failed task(s): boom" in out.err


def test_overdue_run_sends_a_deadline_alert_and_still_succeeds(
    airflow_server: LocalAirflow, http_receiver: Receiver
) -> None:
    """A run still going after its expected duration: the scheduler's deadline alert runs
    raw2gold's callback on the executor, which POSTs to a real HTTP receiver on 127.0.0.1
    (the webhook's address comes from an Airflow connection created over REST)."""
    airflow_server.rest(
        "POST",
        "/api/v2/connections",
        json={"connection_id": OVERDUE_CONN, "conn_type": "http", "host": http_receiver.url},
    )
    airflow_server.client.wait_for_dag(OVERDUE_DAG)
    airflow_server.rest("PATCH", f"/api/v2/dags/{OVERDUE_DAG}", json={"is_paused": False})
    run = airflow_server.rest(
        "POST", f"/api/v2/dags/{OVERDUE_DAG}/dagRuns", json={"logical_date": None}
    )
    run_id = run["dag_run_id"]
    deadline = time.monotonic() + 120
    while not http_receiver.received() and time.monotonic() < deadline:
        time.sleep(1.0)
    received = [json.loads(body) for body in http_receiver.received()]
    assert received, f"no overdue alert within 120 s (expected after {OVERDUE_SECONDS} s)"
    alert = received[0]
    assert alert["event"] == "run_overdue"
    assert alert["pipeline"] == "overdue_test"
    assert alert["run_id"] == run_id
    assert run_id in alert["text"] and "has not finished" in alert["text"]
    assert alert["details"]["dag_id"] == OVERDUE_DAG
    (airflow_server.out / OVERDUE_RELEASE).touch()  # the task may end now
    finished = _wait_run(airflow_server, OVERDUE_DAG, run_id)
    assert finished["state"] == "success"
    assert len(http_receiver.received()) == 1
    # The triggerer that ran the callback is still alive (a callback result Airflow cannot
    # store once killed it).
    _, alive, _ = local_airflow.status(airflow_server.home)
    assert alive["triggerer"], "the triggerer died after running the deadline callback"


def test_listens_on_loopback_only_and_status(
    airflow_server: LocalAirflow, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    pids = {p.pid for p in _members(airflow_server.state)}
    listening = [
        c
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    ]
    assert listening, "the api-server should listen"
    assert all(c.laddr.ip in LOOPBACK for c in listening), listening
    api_pid = next(c.pid for c in airflow_server.state.components if c.name == "api-server")
    api_group = {p.pid for p in _members(airflow_server.state) if os.getpgid(p.pid) == api_pid}
    assert any(c.laddr.port == airflow_server.state.port and c.pid in api_group for c in listening)
    monkeypatch.setenv("RAW2GOLD_HOME", str(airflow_server.home))
    assert main(["airflow", "status"]) == 0
    out = capsys.readouterr().out
    for name in local_airflow.COMPONENTS:
        assert name in out
    assert "health: healthy" in out


def test_down_leaves_no_process(
    airflow_server: LocalAirflow, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Runs last in this file: it stops the session's Airflow."""
    state = airflow_server.state
    assert len(_members(state)) >= 4
    monkeypatch.setenv("RAW2GOLD_HOME", str(airflow_server.home))
    started = time.monotonic()
    assert main(["airflow", "down"]) == 0
    assert time.monotonic() - started < 60
    assert "stopped" in capsys.readouterr().out
    for component in state.components:
        assert component.process() is None, component
    assert _members(state) == []
    assert local_airflow.leftover_processes(state) == []
    assert not local_airflow.state_file(airflow_server.home).exists()
    assert main(["airflow", "status"]) == 1
