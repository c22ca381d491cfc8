"""One Spark Connect server per run, shared by the run's Spark tasks (``spark.mode: local``).

The DAG gives each model its own tasks (build, check); starting a JVM in each would cost
10-15 s per task. Instead ``spark.start`` starts one Spark Connect server (the pyspark
installation's own, ``local[N]`` with raw2gold's Delta/S3A settings) bound to 127.0.0.1, and
every Spark task of the run connects to it as a client (``sc://127.0.0.1:PORT``), each in its own
session. ``spark.stop`` stops it by PID (SIGTERM, then SIGKILL), whatever happened before.

The server is recorded in ``_state/runs/<run_id>/spark_server.json`` (URL, PID, host). A task
uses it only when it runs on that host and the server answers; otherwise it starts its own JVM
as before, so a retry after a lost server still works. The server runs under coreutils
``timeout`` (where it exists) with the run's longest possible Spark time, so even a run that
never reaches ``spark.stop`` leaves no JVM behind. All settings, credentials included, go
through a 0600 properties file that is deleted once the server is up, never the command line.

With ``spark.server: shared`` the server outlives the run: ``spark.start`` reuses the
pipeline's server on this host (recorded in ``_state/spark_server/<pipeline>@<host>.json``) while
it answers, has the same settings and is younger than ``spark.server_hours``, and ``spark.stop``
leaves it up. Every run after the first then finds a warm JVM (classes loaded, code compiled),
which costs a fraction of a cold one's first-time work; the price is the server's memory held
between runs. ``raw2gold spark-server stop`` stops it.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from raw2gold.config.models import PipelineConfig
from raw2gold.errors import Raw2GoldError
from raw2gold.lake.layout import Lake, utc_now

log = logging.getLogger(__name__)

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
REMOTE_ENV = "RAW2GOLD_SPARK_REMOTE"
CONNECT_ENV = ("SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE", "SPARK_LOCAL_REMOTE")
START_TIMEOUT = 180.0


class ConnectServerError(Raw2GoldError):
    """The Spark Connect server could not start."""


def server_record(run_id: str) -> str:
    return Lake.run_record(run_id, "spark_server")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _command_line(pid: int) -> str:
    """A process's command line ('' when it is gone): from /proc, or ``ps`` where there is none."""
    if Path("/proc/self").exists():
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return ""
    done = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
    return done.stdout


def _port(url: str) -> int:
    """The port of ``sc://host:port`` (with or without ``/;session_id=...``)."""
    return int(url.split("/;")[0].rsplit(":", 1)[1])


def runs_server(record: dict[str, Any]) -> bool:
    """Whether the recorded process is alive and still the recorded server.

    Its command line must name the server's port: after a reboot the PID of a server recorded
    long ago may belong to another process, which must never be stopped.
    """
    pid = int(record["pid"])
    port = _port(str(record["url"]))
    return _alive(pid) and f"spark.connect.grpc.binding.port={port}" in _command_line(pid)


def server_command(config: PipelineConfig, port: int, properties: str, ttl: int) -> list[str]:
    """The command line of the server: no setting values on it, they are in ``properties``."""
    from raw2gold.transform.runners import spark_submit_binary

    # coreutils `timeout` bounds the server's life (not on stock macOS: then spark.stop alone).
    limit = ["timeout", "--kill-after=30", f"{ttl}s"] if shutil.which("timeout") else []
    return [
        *limit,
        spark_submit_binary(),
        "--class",
        SERVER_CLASS,
        "--master",
        config.spark.master,
        "--name",
        f"raw2gold-{config.name}-connect",
        "--properties-file",
        properties,
        "--conf",
        "spark.connect.grpc.binding.address=127.0.0.1",
        "--conf",
        f"spark.connect.grpc.binding.port={port}",
        "spark-internal",
    ]


def start_server(
    config: PipelineConfig, run_id: str, ttl_seconds: int, say: Callable[[str], Any] = log.info
) -> dict[str, Any]:
    """The run's server, up and answering, recorded for the run's tasks; its record.

    ``spark.server: per_run`` starts one for the run; ``shared`` reuses the pipeline's shared
    server on this host when it can (see :func:`shared_server`).
    """
    lake = Lake(config.lake)
    existing = usable_server(lake, run_id)
    if existing:
        say(f"Spark Connect server of run {run_id} already up at {existing['url']}")
        return existing
    if config.spark.server == "shared":
        record = shared_server(config, lake, ttl_seconds, say)
    else:
        record = _launch(config, ttl_seconds, f"spark-connect-{config.name}-{run_id}.log", say)
    lake.write_json(server_record(run_id), record)
    return record


def _launch(
    config: PipelineConfig,
    ttl_seconds: int,
    log_name: str,
    say: Callable[[str], Any],
    rotate_log: bool = False,
) -> dict[str, Any]:
    """Start a server that lives at most ``ttl_seconds``; wait until it answers; its record.

    ``rotate_log``: move an existing log of that name to ``<name>.1`` first (one server's log
    per file, two kept), instead of appending to it.
    """
    from raw2gold.transform.runners import write_properties
    from raw2gold.transform.session import spark_conf

    port = _free_port()
    conf = {k: v for k, v in spark_conf(config).items() if k != "spark.master"}
    properties = write_properties(conf)
    log_dir = Path(os.environ.get("RAW2GOLD_HOME", ".raw2gold")) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / log_name
    if rotate_log and log_path.exists():  # a new shared server: the previous one's log is .1
        os.replace(log_path, log_dir / f"{log_name}.1")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    started = time.monotonic()
    try:
        with open(log_path, "ab") as out:
            process = subprocess.Popen(
                server_command(config, port, properties, ttl_seconds),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # own process group: outlives this task, stopped by PID
            )
        while not _answers(port):
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise ConnectServerError(
                    f"Spark Connect server exited ({process.returncode}): {' | '.join(tail)}"
                )
            if time.monotonic() - started > START_TIMEOUT:
                _stop_group(process.pid)
                raise ConnectServerError(
                    f"Spark Connect server did not answer within {START_TIMEOUT:.0f} s; "
                    f"see {log_path}"
                )
            time.sleep(0.5)
    finally:
        os.unlink(properties)
    record = {
        "url": f"sc://127.0.0.1:{port}",
        "pid": process.pid,
        "host": socket.gethostname(),
        "started_at": utc_now(),
        "log": str(log_path),
        "ttl_seconds": ttl_seconds,
    }
    say(
        f"Spark Connect server up at {record['url']} (pid {process.pid}) in "
        f"{time.monotonic() - started:.1f} s"
    )
    return record


def shared_record(pipeline: str) -> str:
    """Where the pipeline's shared server on this host is recorded (one per host)."""
    return f"_state/spark_server/{pipeline}@{socket.gethostname()}.json"


def settings_fingerprint(config: PipelineConfig) -> str:
    """A digest of everything the server was started with (master, settings, Spark install).

    Credentials are part of the settings: rotated keys give a new server, not a stale one.
    Only the digest is recorded.
    """
    import hashlib
    import json

    from raw2gold.transform.runners import spark_submit_binary
    from raw2gold.transform.session import spark_conf

    settings = {"master": config.spark.master, "spark-submit": spark_submit_binary()}
    payload = json.dumps([settings, spark_conf(config)], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def shared_server(
    config: PipelineConfig, lake: Lake, run_ttl_seconds: int, say: Callable[[str], Any]
) -> dict[str, Any]:
    """The pipeline's shared server on this host, reused when it can be, else a new one.

    Reused while it is alive, answers, was started with the same settings and is younger than
    ``spark.server_hours``. Otherwise it is stopped (the DAG runs one run at a time, so no
    other run uses it) and a new one starts, living ``server_hours`` plus the run's longest
    possible Spark time: a run that reused it always finishes before its ``timeout`` ends it.
    """
    path = shared_record(config.name)
    fingerprint = settings_fingerprint(config)
    current = lake.read_record(path)
    if current and not current.get("stopped_at") and runs_server(current):
        age = time.time() - float(current["started_epoch"])
        reason = None
        if current.get("fingerprint") != fingerprint:
            reason = "the pipeline's Spark settings changed"
        elif age > config.spark.server_hours * 3600:
            reason = f"it is older than spark.server_hours ({config.spark.server_hours:g} h)"
        elif not _answers(_port(str(current["url"]))):
            reason = "it does not answer"
        if reason is None:
            say(
                f"reusing the shared Spark Connect server at {current['url']} "
                f"(pid {current['pid']}, up {age / 60:.0f} min)"
            )
            return dict(current)
        say(f"replacing the shared Spark Connect server (pid {current['pid']}): {reason}")
        _stop_recorded(lake, path, current)
    life = int(config.spark.server_hours * 3600) + run_ttl_seconds
    record = _launch(config, life, f"spark-connect-{config.name}-shared.log", say, rotate_log=True)
    record.update(shared=True, fingerprint=fingerprint, started_epoch=time.time())
    lake.write_json(path, record)
    return record


def answering(record: dict[str, Any]) -> bool:
    """Whether a recorded server's process is alive and answers on its port."""
    return runs_server(record) and _answers(_port(str(record["url"])))


def usable_server(lake: Lake, run_id: str) -> dict[str, Any] | None:
    """The run's server when it runs on this host, is alive and answers; else None."""
    record = lake.read_record(server_record(run_id))
    if not record or record.get("stopped_at") or record.get("host") != socket.gethostname():
        return None
    return record if answering(record) else None


def _stop_group(pid: int, timeout: float = 20.0) -> bool:
    """SIGTERM the process group, SIGKILL after `timeout`; whether it was running."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        try:  # reap it when it is our child (spark.start and spark.stop in one process)
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return True


def _stop_recorded(lake: Lake, path: str, record: dict[str, Any]) -> bool:
    """Stop a recorded server if it is still that server, and record it stopped; whether it
    was running."""
    stopped = runs_server(record) and _stop_group(int(record["pid"]))
    lake.write_json(path, {**record, "stopped_at": utc_now()})
    return stopped


def stop_server(config: PipelineConfig, run_id: str, say: Callable[[str], Any] = log.info) -> bool:
    """Stop the run's server (if any, on this host); whether one was stopped.

    A shared server stays up for the next run: the run only lets go of it.
    """
    lake = Lake(config.lake)
    record = lake.read_record(server_record(run_id))
    if not record or record.get("stopped_at"):
        say(f"no Spark Connect server recorded for run {run_id}")
        return False
    if record.get("host") != socket.gethostname():
        say(f"the Spark Connect server runs on {record.get('host')}, not here: not stopped")
        return False
    if record.get("shared"):
        lake.write_json(server_record(run_id), {**record, "stopped_at": utc_now()})
        say(
            f"the shared Spark Connect server (pid {record['pid']}) stays up for the next run "
            "(`raw2gold spark-server stop` stops it)"
        )
        return False
    stopped = _stop_recorded(lake, server_record(run_id), record)
    say(f"Spark Connect server (pid {record['pid']}) {'stopped' if stopped else 'was gone'}")
    return stopped


def stop_shared_server(config: PipelineConfig, say: Callable[[str], Any] = log.info) -> bool:
    """Stop the pipeline's shared server on this host; whether one was running."""
    lake = Lake(config.lake)
    record = lake.read_record(shared_record(config.name))
    if not record or record.get("stopped_at"):
        say(f"no shared Spark Connect server of {config.name} recorded on this host")
        return False
    stopped = _stop_recorded(lake, shared_record(config.name), record)
    say(f"shared Spark Connect server (pid {record['pid']}) {'stopped' if stopped else 'was gone'}")
    return stopped


def stop_session(spark: Any, timeout: float = 10.0) -> None:
    """Stop a Spark session; a Spark Connect one once the server has its pending releases.

    A Connect client tells the server it has read an operation's results in the background
    (ReleaseExecute) and ``stop()`` releases the session before waiting for those calls, so
    each one still in flight reached a closed session and the server logged it as an ERROR
    with a stack trace. Waiting for them first (at most ``timeout`` seconds, as ``stop()``
    itself would after the release) keeps the server's log free of such false errors. (A write
    whose response stream the client left before the server's sender finished can still log
    one: that race is inside Spark Connect.)
    """
    connect = type(spark).__module__.startswith("pyspark.sql.connect")
    pending = getattr(spark.client, "_release_futures", None) if connect else None
    if pending:
        concurrent.futures.wait(list(pending), timeout=timeout)
    spark.stop()


def interrupt_session(url: str, say: Callable[[str], Any] = log.info) -> None:
    """Interrupt every operation of a Spark Connect session (url with ``;session_id=``).

    Skipped when the server does not answer: the client would retry for minutes.
    """
    port = _port(url)
    if not _answers(port):
        say("the Spark Connect server is gone: nothing to interrupt")
        return
    try:
        from pyspark.sql import SparkSession

        with connect_mode_contained():
            session = SparkSession.builder.remote(url).create()
            try:
                interrupted = session.interruptAll()
                say(f"interrupted {len(interrupted)} Spark operation(s) on the server")
            finally:
                stop_session(session)  # also releases the task's session on the server
    except Exception as exc:  # the server or session may be gone already
        say(f"could not interrupt the Spark Connect session: {exc}")


@contextmanager
def connect_mode_contained() -> Iterator[None]:
    """Undo what creating a Spark Connect session does to ``os.environ``.

    pyspark sets SPARK_CONNECT_MODE_ENABLED=1 in the process environment, which every later
    child inherits: a spark-submit driver started afterwards would then refuse to start
    classic Spark (CONNECT_URL_NOT_SET).
    """
    saved = {key: os.environ.get(key) for key in CONNECT_ENV}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
