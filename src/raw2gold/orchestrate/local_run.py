"""Run a pipeline's DAG once through Airflow (`airflow dags test`) and follow it live.

Used by `raw2gold run`: it prepares a private Airflow home (SQLite, examples off), runs the DAG
in a subprocess, turns Airflow's log into one line per task event, keeps the full log in a file,
and returns what each task did.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from raw2gold.config import PipelineConfig
from raw2gold.errors import Raw2GoldError
from raw2gold.file_lock import file_lock

DAGS_FOLDER = Path(__file__).parent / "dags"
STARTING = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
ENDED = re.compile(r"\[DAG TEST\] end task task_id=(\S+)")
NEW_STATE = re.compile(r"new_state=(\w+)")
INTERRUPT_GRACE = 30.0  # seconds an interrupted task's on_kill has before `dags test` is killed
EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception): ")
LOGGER_SUFFIX = re.compile(r"\s+\[[\w.]+\]( loc=\S+)?$")  # structlog's "[logger] loc=file:line"


class AirflowError(Raw2GoldError):
    """The local Airflow could not be started, reached, stopped or set up."""


def raw2gold_home() -> Path:
    """Where raw2gold keeps its local Airflow home and run logs (RAW2GOLD_HOME, ./.raw2gold)."""
    return Path(os.environ.get("RAW2GOLD_HOME", ".raw2gold")).resolve()


def logs_folder() -> Path:
    """Where `raw2gold run` writes each run's full log."""
    return raw2gold_home() / "logs"


def shown_folder(path: Path) -> str:
    """A path as a person reads it: relative when under the working folder, else absolute."""
    try:
        return str(path.relative_to(Path.cwd())) + "/"
    except ValueError:
        return str(path) + "/"


def airflow_env(pipeline_path: Path, lake_uri: str | None) -> dict[str, str]:
    """Environment for a private, local Airflow that sees exactly one pipeline."""
    home = raw2gold_home() / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
        "RAW2GOLD_PIPELINES": str(pipeline_path),
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
        "PYTHONUNBUFFERED": "1",
    }
    if lake_uri:
        env["RAW2GOLD_LAKE_URI"] = lake_uri
    return env


def db_setup_lock(env: dict[str, str]) -> AbstractContextManager[None]:
    """Held by a raw2gold command while it creates or writes the Airflow home's DB set-up."""
    return file_lock(Path(env["AIRFLOW_HOME"]) / ".raw2gold-db.lock")


def migrate_airflow_db(env: dict[str, str], *, unless_ready: bool = False) -> None:
    """`airflow db migrate` for the Airflow home in ``env`` (about 6 s on a new SQLite DB).

    One raw2gold command at a time per home: two started together on a new home (two `raw2gold
    run`s, or one beside `raw2gold airflow up`) would both create its tables, and one fail.
    ``unless_ready`` skips it when a migrate has already succeeded there (`raw2gold run`).
    """
    home = Path(env["AIRFLOW_HOME"])
    ready = home / ".raw2gold-db-ready"
    if unless_ready and ready.exists():
        return
    with db_setup_lock(env):
        if unless_ready and ready.exists():  # another command migrated it while this one waited
            return
        result = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env=env,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            error = migrate_error(result.stderr + result.stdout)
            raise AirflowError(f"airflow db migrate failed in {home}: {error}")
        ready.write_text("ok\n")


def migrate_error(output: str) -> str:
    """The exception line of a failed `airflow db migrate` (the last one: SQLAlchemy's, which
    names the database's own error), else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if EXCEPTION_LINE.match(line)]
    return (errors or lines or ["no output"])[-1][:300]


@dataclass
class TaskEvent:
    """What happened to one task of the run."""

    task_id: str
    state: str = "running"
    started: float = 0.0
    seconds: float = 0.0
    tries: int = 0


@dataclass
class RunResult:
    """The outcome of one `airflow dags test` run."""

    run_id: str
    ok: bool
    tasks: dict[str, TaskEvent] = field(default_factory=dict)
    log_file: Path = Path()
    seconds: float = 0.0
    error: str = ""


def run_conf(
    run_id: str, full_refresh: bool, sources: list[str] | None, ingest: bool
) -> dict[str, Any]:
    """The DAG run's params for `raw2gold run`'s flags (the DAG validates them)."""
    return {
        "run_id": run_id,
        "full_refresh": full_refresh,
        "sources": sources or [],
        "ingest": ingest,
    }


def run_dag_test(
    config: PipelineConfig,
    run_id: str,
    *,
    lake_uri: str | None = None,
    full_refresh: bool = False,
    sources: list[str] | None = None,
    ingest: bool = True,
    on_event: Callable[[TaskEvent], None] | None = None,
) -> RunResult:
    """Run the pipeline's DAG once with `airflow dags test`, reporting task events as they come.

    ``sources`` ingests only those (None: all), ``ingest`` False lands nothing: the DAG's params.
    """
    env = airflow_env(config.path, lake_uri)
    migrate_airflow_db(env, unless_ready=True)
    log_dir = logs_folder()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"{config.name}-{run_id}.log"
    conf = json.dumps(run_conf(run_id, full_refresh, sources, ingest))
    cmd = [sys.executable, "-m", "airflow", "dags", "test", config.dag_id, "--conf", conf]
    started = time.monotonic()
    result = RunResult(run_id=run_id, ok=False, log_file=log_file)
    current: TaskEvent | None = None
    errors: list[str] = []
    # `dags test` writes the DAG and its run into the DB before its first task: two runs doing
    # that at once on a new DB collide ("UNIQUE constraint failed: dag.dag_id"), so that part
    # runs one at a time per Airflow home; the tasks then run side by side.
    setting_up = ExitStack()
    setting_up.enter_context(db_setup_lock(env))
    with (
        setting_up,
        log_file.open("w") as log,
        subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process,
    ):
        assert process.stdout is not None
        try:
            for line in process.stdout:
                log.write(line)
                if match := STARTING.search(line):
                    setting_up.close()
                    task_id = match.group(1)
                    current = result.tasks.setdefault(task_id, TaskEvent(task_id))
                    current.started = time.monotonic()
                    current.tries += 1
                    current.state = "running"
                    if on_event:
                        on_event(current)
                elif current and "Task instance state updated" in line and "new_state=" in line:
                    state = NEW_STATE.search(line)
                    if state:
                        current.state = state.group(1)
                elif current and (match := ENDED.search(line)):
                    current.seconds += time.monotonic() - current.started
                    if current.state == "running":
                        current.state = "success"
                    if on_event:
                        on_event(current)
                    current = None
                elif "raw2gold:" in line or "AirflowException" in line or "Error:" in line:
                    errors.append(line.strip())
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as `raw2gold run` turns it into one
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
            stop_dag_test(process, log, task_running=current is not None)
            raise RunInterrupted(stop_interrupted_run(config, run_id, current)) from None
        code = process.wait()
    result.seconds = time.monotonic() - started
    failed = [t for t in result.tasks.values() if t.state in {"failed", "upstream_failed"}]
    result.ok = code == 0 and not failed
    if not result.ok:
        result.error = first_error(errors) or f"airflow dags test exited {code}"
    return result


def stop_dag_test(process: subprocess.Popen[str], log: TextIO, task_running: bool) -> None:
    """Stop an interrupted `dags test`. While a task runs: SIGTERM, on which Airflow calls the
    task's on_kill (its connector, Spark job and queries stop), then SIGKILL at the task's end
    (INTERRUPT_GRACE s at most), so that it starts no retry nor next task."""
    assert process.stdout is not None
    if task_running and process.poll() is None:
        process.terminate()
        watchdog = threading.Timer(INTERRUPT_GRACE, process.kill)
        watchdog.start()
        for line in process.stdout:
            log.write(line)
            if ENDED.search(line) or STARTING.search(line):
                break
        watchdog.cancel()
    process.kill()
    process.wait()


class RunInterrupted(KeyboardInterrupt):
    """`raw2gold run` was interrupted; the message says what was stopped."""


def stop_interrupted_run(config: PipelineConfig, run_id: str, task: TaskEvent | None) -> str:
    """Stop the interrupted run's Spark Connect server; what the run's last line says.

    The server lives in its own session, so that it outlives each task: Ctrl-C does not reach
    it, and without `spark.stop` it would hold its memory until its time limit (the DAG's
    timeout). A shared server stays up for the next run.
    """
    from raw2gold.lake import Lake
    from raw2gold.transform.connect import server_record, stop_server

    stop_server(config, run_id, lambda message: None)
    record = Lake(config.lake).read_record(server_record(run_id))
    where = f" during {task.task_id}" if task else ""
    if not record:
        return f"run {run_id} stopped{where}, before a Spark Connect server was recorded"
    if record.get("shared"):
        return f"run {run_id} stopped{where}; the shared Spark Connect server stays up"
    return f"run {run_id} stopped{where}, and its Spark Connect server (pid {record['pid']})"


def first_error(lines: list[str]) -> str:
    """The run's error for `raw2gold run`'s last line: the first raw2gold error a task logged,
    without the logger and source location Airflow appends (else the first error line)."""
    for line in lines:
        if "raw2gold: " in line:
            return LOGGER_SUFFIX.sub("", line.split("raw2gold: ", 1)[1].strip())
    return lines[0][:300] if lines else ""
