"""`raw2gold trigger`: start a manual DAG run through Airflow's REST API and follow it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raw2gold.orchestrate.local_airflow import AirflowClient, AirflowError

FINISHED = {"success", "failed"}
FAILED_TASK_STATES = {"failed", "upstream_failed"}


def parse_params(items: list[str]) -> dict[str, Any]:
    """`k=v` pairs into a conf dict; values are JSON when they parse, else strings."""
    conf: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {item!r}: expected KEY=VALUE")
        try:
            conf[key] = json.loads(raw)
        except ValueError:
            conf[key] = raw
    return conf


def resolve_dag_id(target: str) -> str:
    """A pipeline.yaml path becomes its DAG id; anything else is taken as a DAG id."""
    path = Path(target)
    if path.suffix in {".yaml", ".yml"} or path.is_file():
        from raw2gold.config import load_pipeline

        return load_pipeline(path).dag_id
    return target


@dataclass
class TaskChange:
    """A task instance reached a new state."""

    task_id: str
    state: str
    try_number: int
    duration: float | None
    map_index: int = -1


@dataclass
class FollowResult:
    """How a followed run ended."""

    dag_id: str
    run_id: str
    state: str
    failed_tasks: list[str] = field(default_factory=list)
    tasks: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state == "success"


def start_run(client: AirflowClient, dag_id: str, conf: dict[str, Any]) -> str:
    """Wait for the DAG to be parsed, unpause it and start a manual run; returns its run id."""
    client.wait_for_dag(dag_id)
    client.unpause(dag_id)
    run = client.trigger(dag_id, conf)
    return str(run["dag_run_id"])


def follow_run(
    client: AirflowClient,
    dag_id: str,
    run_id: str,
    *,
    on_change: Callable[[TaskChange], None] | None = None,
    poll: float = 1.0,
    timeout: float | None = None,
) -> FollowResult:
    """Poll the run's task instances until the run ends, reporting each task state change."""
    started = time.monotonic()
    seen: dict[str, tuple[str, int]] = {}
    states: dict[str, str] = {}
    while True:
        run = client.dag_run(dag_id, run_id)
        for ti in client.task_instances(dag_id, run_id):
            key = (
                ti["task_id"]
                if ti.get("map_index", -1) in (-1, None)
                else (f"{ti['task_id']}[{ti['map_index']}]")
            )
            state = ti.get("state") or "none"
            states[key] = state
            marker = (state, int(ti.get("try_number") or 0))
            if seen.get(key) != marker and state != "none":
                seen[key] = marker
                if on_change:
                    on_change(
                        TaskChange(
                            key, state, marker[1], ti.get("duration"), ti.get("map_index", -1)
                        )
                    )
        run_state = str(run.get("state"))
        if run_state in FINISHED:
            failed = sorted(k for k, s in states.items() if s in FAILED_TASK_STATES)
            failed.sort(key=lambda k: states[k] != "failed")
            return FollowResult(
                dag_id, run_id, run_state, failed, states, time.monotonic() - started
            )
        if timeout is not None and time.monotonic() - started > timeout:
            raise AirflowError(f"run {run_id} of {dag_id} still {run_state} after {timeout:.0f}s")
        time.sleep(poll)
