"""How `raw2gold airflow down` stops what `up` started, on real processes that ignore SIGTERM.

No Airflow here: the state file names a process group started by the test, as `up` records
its components, and processes that left it but carry the instance's tag in their environment
(as a task's connector does in its own process group).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from raw2gold.cli import main
from raw2gold.orchestrate import local_airflow

SLEEPER = """
import signal, subprocess, sys, time
child = None
if sys.argv[1] == "leader":  # and a child in its process group
    child = subprocess.Popen(
        [sys.executable, "-c", sys.argv[2], "stubborn"], stdout=subprocess.PIPE
    )
    child.stdout.readline()
if sys.argv[1] == "graceful":
    def leave(*_):
        open(sys.argv[2], "w").write("SIGTERM")
        sys.exit(0)
    signal.signal(signal.SIGTERM, leave)
else:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", child.pid if child else "", flush=True)
time.sleep(600)
"""


def _sleeper(mode: str, env: dict[str, str], *extra: str) -> tuple[subprocess.Popen, str]:
    """A process in a session of its own that ignores SIGTERM (``stubborn``), leaves on it
    (``graceful``, writing to the file given) or ignores it with a child (``leader``)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SLEEPER, mode, *extra],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    ready, _, child = proc.stdout.readline().strip().partition(" ")
    assert ready == "ready"
    return proc, child


@pytest.fixture
def instance() -> Iterator[str]:
    """An instance tag; whatever still carries it at the end is killed."""
    tag = f"test-{uuid.uuid4().hex}"
    yield tag
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(local_airflow.INSTANCE_ENV) == tag:
                proc.kill()
        except psutil.Error:
            continue


def test_processes_that_ignore_sigterm_are_killed_and_escaped_ones_get_sigterm_first(
    instance: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    env = {**os.environ, local_airflow.INSTANCE_ENV: instance}
    leader, child = _sleeper("leader", env, SLEEPER)  # a component, as `up` starts it
    in_group = psutil.Process(int(child))
    escaped, _ = _sleeper("stubborn", env)
    said = tmp_path / "graceful.txt"
    graceful, _ = _sleeper("graceful", env, str(said))
    state = local_airflow.AirflowState(
        port=0,
        url="http://127.0.0.1:0",
        airflow_home=str(tmp_path),
        dags_folder=str(tmp_path),
        pipelines="",
        db="",
        instance=instance,
        components=[
            local_airflow.Component(
                "scheduler", leader.pid, psutil.Process(leader.pid).create_time(), ""
            )
        ],
    )
    assert len(local_airflow.leftover_processes(state)) == 4
    home = tmp_path / ".raw2gold"
    state.save(local_airflow.state_file(home))
    monkeypatch.setenv("RAW2GOLD_HOME", str(home))

    assert main(["airflow", "down", "--timeout", "2"]) == 0

    out = capsys.readouterr().out
    assert "killing 3 process(es) still alive after 2s" in out and "stopped" in out
    assert local_airflow.leftover_processes(state) == []
    assert not local_airflow.state_file(home).exists()
    # the three that ignore SIGTERM are gone (SIGKILL; stop() reaped its own children), and the
    # escaped process that honours SIGTERM got it and left on its own
    for pid in (leader.pid, in_group.pid, escaped.pid):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert said.read_text() == "SIGTERM"
    graceful.wait(timeout=10)
