"""Where a Spark stage runs: one entry point (``raw2gold.transform.job``), three deployments.

* :class:`LocalRunner` (``spark.mode: local``): ``python -m raw2gold.transform.job`` as a child
  process with an embedded Spark (``spark.master``, e.g. ``local[2]``).
* :class:`SparkSubmitRunner` (``spark.mode: cluster``): spark-submit of ``driver.py`` (which calls
  the same job) to ``spark.master`` or the ``spark_conn_id`` connection, through the Airflow Spark
  provider's ``SparkSubmitHook``.
* :class:`SshRunner` (``spark.mode: ssh``): the job on a remote host over SSH, through the Airflow
  SSH provider's ``SSHHook`` (key auth, strict host-key checking).

Every runner streams the job's output to a logger, returns the ``RAW2GOLD_SUMMARY`` JSON the job
prints last, raises :class:`StageRunError` with one line when the stage fails, and stops the
work on :meth:`StageRunner.kill`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from raw2gold.config.models import PipelineConfig
from raw2gold.errors import Raw2GoldError, first_line
from raw2gold.transform.connect import CONNECT_ENV

if TYPE_CHECKING:
    import paramiko

SUMMARY_PREFIX = "RAW2GOLD_SUMMARY "
PGID_PREFIX = "RAW2GOLD_PGID "
DRIVER = Path(__file__).with_name("driver.py")


class Log(Protocol):
    """What runners log through: a logging.Logger or Airflow's task logger."""

    def info(self, msg: Any, /, *args: Any) -> Any: ...
    def warning(self, msg: Any, /, *args: Any) -> Any: ...
    def error(self, msg: Any, /, *args: Any) -> Any: ...


class StageRunError(Raw2GoldError):
    """The stage (or getting it started) failed; the message is one line with the fix.
    ``final`` when retrying cannot help (the job said so, or the SSH setup is wrong)."""


class Output:
    """Collects a job's output lines: logs them, keeps a tail and the summary line."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.summary: dict[str, Any] | None = None
        self.tail: deque[str] = deque(maxlen=40)

    def feed(self, line: str) -> bool:
        """Record one line; False when it is the summary line (not to be logged as text)."""
        line = line.rstrip("\r\n")
        if line.startswith(SUMMARY_PREFIX):
            try:
                self.summary = json.loads(line[len(SUMMARY_PREFIX) :])
            except json.JSONDecodeError:
                self.log.warning("unreadable summary line: %s", line[:200])
            return False
        self.tail.append(line)
        return True

    def consume(self, lines: Iterable[str]) -> None:
        for line in lines:
            if self.feed(line):
                self.log.info("%s", line.rstrip("\r\n"))

    def error(self) -> str:
        """The job's own error line, else the last output line."""
        if self.summary and self.summary.get("error"):
            return str(self.summary["error"])
        errors = [line for line in self.tail if line.startswith("raw2gold:")]
        if errors:
            return errors[-1].removeprefix("raw2gold:").strip()
        return self.tail[-1] if self.tail else "no output"


def job_args(
    pipeline: str, stage: str, run_id: str, full_refresh: bool, tables: list[str] | None = None
) -> list[str]:
    """Arguments of ``raw2gold.transform.job`` (after the program)."""
    args = ["--pipeline", pipeline, "--stage", stage, "--run-id", run_id]
    if tables:
        args += ["--tables", ",".join(tables)]
    return args + (["--full-refresh"] if full_refresh else [])


def app_name(config: PipelineConfig, stage: str, run_id: str) -> str:
    """The Spark application name of a stage (the same one the job's session uses)."""
    return f"raw2gold-{config.name}-{stage}-{run_id}"


class StageRunner:
    """Runs one stage somewhere; subclasses say where."""

    where = "?"

    def __init__(self, stage: str, log: Log, tables: list[str] | None = None) -> None:
        self.stage = stage
        self.tables = tables
        self.log = log
        self.output = Output(log)

    @property
    def label(self) -> str:
        """The stage, with the tables it is limited to (also its run record's name)."""
        from raw2gold.transform.job import record_name

        return record_name(self.stage, self.tables)

    def run(self, run_id: str, full_refresh: bool = False) -> dict[str, Any]:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def _failed(self, code: int | str) -> StageRunError:
        """The stage's failure; final when the job's summary says a retry cannot help."""
        return StageRunError(
            f"Spark stage {self.label} failed {self.where} (exit {code}): {self.output.error()}",
            final=bool((self.output.summary or {}).get("final")),
        )


class LocalRunner(StageRunner):
    """The job as a child process in its own process group (embedded Spark)."""

    where = "locally"

    def __init__(
        self,
        stage: str,
        log: Log,
        command: Callable[[str, bool], list[str]],
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(stage, log)
        self.command = command
        self.env = env or {}
        self.process: subprocess.Popen[str] | None = None

    def run(self, run_id: str, full_refresh: bool = False) -> dict[str, Any]:
        cmd = self.command(run_id, full_refresh)
        env = {**os.environ, "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1")}
        for key in CONNECT_ENV:  # Spark Connect only when self.env names the run's server
            env.pop(key, None)
        env.update(self.env)
        self.log.info("running: %s", shlex.join(cmd))
        self.process = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        self.output.consume(self.process.stdout)
        code = self.process.wait()
        self.process = None
        if code != 0:
            raise self._failed(code)
        return self.output.summary or {}

    def kill(self) -> None:
        """SIGTERM the job's process group, SIGKILL after 10 s."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        kill_group(process, timeout=10)


def kill_group(process: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM a process group led by ``process``, SIGKILL it after ``timeout``."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------------------------
# cluster mode: spark-submit through the Airflow Spark provider


def spark_submit_binary() -> str:
    """spark-submit on PATH, else the one of the installed pyspark (its SPARK_HOME)."""
    found = shutil.which("spark-submit")
    if found:
        return found
    home = os.environ.get("SPARK_HOME")
    if not home:
        import pyspark

        home = str(Path(pyspark.__file__).parent)
    return str(Path(home) / "bin" / "spark-submit")


def write_properties(conf: dict[str, str], directory: str | None = None) -> str:
    """A Java properties file (mode 0600) holding ``conf``; the caller deletes it."""
    fd, path = tempfile.mkstemp(prefix="raw2gold-spark-", suffix=".properties", dir=directory)
    os.fchmod(fd, 0o600)

    def escape(text: str) -> str:
        text = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return text.replace("=", "\\=").replace(":", "\\:").replace(" ", "\\ ")

    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        for key, value in conf.items():
            handle.write(f"{escape(key)}={escape(value)}\n")
    return path


def submit_settings(config: PipelineConfig) -> tuple[dict[str, str], dict[str, str], str, str]:
    """(public --conf settings, secret settings, packages, excluded packages) for spark-submit."""
    from raw2gold.transform.session import SECRET_MARKERS, spark_conf

    conf = spark_conf(config)
    packages = conf.pop("spark.jars.packages", "")
    excludes = conf.pop("spark.jars.excludes", "")
    secret = {k: v for k, v in conf.items() if any(m in k.lower() for m in SECRET_MARKERS)}
    public = {k: v for k, v in conf.items() if k not in secret}
    return public, secret, packages, excludes


def _submit_hook_class() -> type[Any]:
    """SparkSubmitHook that keeps the summary line out of the log and can use config's master."""
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    class Raw2goldSubmitHook(SparkSubmitHook):
        def __init__(self, *, output: Output, master: str | None, **kwargs: Any) -> None:
            self.r2g_output = output
            self.r2g_master = master
            super().__init__(**kwargs)

        def _resolve_connection(self) -> dict[str, Any]:
            if self.r2g_master is None:
                resolved: dict[str, Any] = super()._resolve_connection()
                return resolved
            return {
                "master": self.r2g_master,
                "queue": self._yarn_queue,
                "deploy_mode": self._deploy_mode,
                "spark_binary": self.spark_binary or "spark-submit",
                "namespace": None,
                "principal": self._principal,
                "keytab": self._keytab,
                "rest_scheme": "http",
                "rest_port": 6066,
                "rest_endpoint": None,
            }

        def _get_spark_binary_path(self) -> list[str]:
            binary = self._connection["spark_binary"]
            if binary == "spark-submit" and not shutil.which(binary):
                return [spark_submit_binary()]
            return [binary]

        def _process_spark_submit_log(self, itr: Iterator[Any]) -> None:
            output = self.r2g_output
            super()._process_spark_submit_log(line for line in itr if output.feed(line))

    return Raw2goldSubmitHook


class SparkSubmitRunner(StageRunner):
    """spark-submit of the stage to a cluster (standalone, YARN, Kubernetes).

    Settings go as ``--conf`` (jars as ``--packages``); secrets (S3 keys) go in a 0600
    ``--properties-file`` that is deleted afterwards, so ``ps`` never shows them.
    """

    def __init__(
        self,
        config: PipelineConfig,
        pipeline_path: str,
        stage: str,
        log: Log,
        tables: list[str] | None = None,
    ) -> None:
        super().__init__(stage, log, tables)
        self.config = config
        self.pipeline_path = str(Path(pipeline_path).resolve())
        self.hook: Any = None
        self.where = f"on {config.spark.spark_conn_id or config.spark.master}"
        self._lock = threading.Lock()

    def build_hook(self, run_id: str, full_refresh: bool, properties_file: str | None) -> Any:
        spark = self.config.spark
        public, _, packages, excludes = submit_settings(self.config)
        env = {
            "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
            "PYSPARK_DRIVER_PYTHON": os.environ.get("PYSPARK_DRIVER_PYTHON", sys.executable),
            "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
        }
        deploy_mode = None if spark.spark_conn_id else spark.deploy_mode
        hook_class = _submit_hook_class()
        hook = hook_class(
            output=self.output,
            master=None if spark.spark_conn_id else spark.master,
            conn_id=spark.spark_conn_id or "spark_default",
            conf=public,
            packages=packages or None,
            exclude_packages=excludes or None,
            properties_file=properties_file,
            name=app_name(self.config, self.label, run_id),
            application_args=job_args(
                self.pipeline_path, self.stage, run_id, full_refresh, self.tables
            ),
            deploy_mode=deploy_mode,
        )
        if hook._connection["deploy_mode"] != "cluster":
            hook._env_vars = env  # the driver runs here: use this python
            # the driver's output is the task log: Spark's INFO chatter would drown it
            hook._conf = {"spark.log.level": "WARN", **hook._conf}
        return hook

    def run(self, run_id: str, full_refresh: bool = False) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowException

        from raw2gold.transform.session import redact

        public, secret, packages, _ = submit_settings(self.config)
        properties = write_properties(secret) if secret else None
        try:
            with self._lock:
                self.hook = self.build_hook(run_id, full_refresh, properties)
            self.log.info(
                "spark-submit %s to %s, packages %s, settings %s",
                DRIVER,
                self.hook._connection["master"],
                packages,
                redact({**public, **secret}),
            )
            try:
                self.hook.submit(str(DRIVER), start_new_session=True)
                code: int | str = 0
            except AirflowException as exc:
                code = self.hook._submit_sp.returncode if self.hook._submit_sp else str(exc)
                if self.output.summary is None and not self.output.tail:
                    first = first_line(exc)
                    raise StageRunError(f"spark-submit failed {self.where}: {first}") from exc
        finally:
            if properties:
                Path(properties).unlink(missing_ok=True)
        if self.output.summary is None:  # cluster deploy mode: the driver's output is elsewhere
            self.output.summary = self._summary_from_lake(run_id)
        summary = self.output.summary or {}
        if code != 0 or summary.get("status") == "failed":
            raise self._failed(code)
        return summary

    def _summary_from_lake(self, run_id: str) -> dict[str, Any] | None:
        """Cluster deploy mode: the driver's output is not here; read what it wrote."""
        from raw2gold.lake.layout import Lake

        lake = Lake(self.config.lake)
        try:
            record: dict[str, Any] = lake.read_json(lake.run_record(run_id, self.label))
        except Exception:
            return None
        return record

    def kill(self) -> None:
        """Stop the application: the spark-submit process group (the client-mode driver with
        it), then the provider's kill (cluster-mode driver, YARN application, k8s pod)."""
        with self._lock:
            hook = self.hook
        if hook is None:
            return
        process = hook._submit_sp
        if process is not None and process.poll() is None:
            kill_group(process, timeout=15)
        hook.on_kill()


# --------------------------------------------------------------------------------------------
# ssh mode: the job on a remote host through the Airflow SSH provider


def _keyscan(host: str, port: int) -> str:
    return f"ssh-keyscan -p {port} -t ed25519 {host}" if port != 22 else f"ssh-keyscan {host}"


class SshRunner(StageRunner):
    """``python -m raw2gold.transform.job`` on a remote host over SSH.

    The remote process runs under ``setsid`` and prints its process group id first, so a kill
    stops the whole remote group over a second SSH channel.
    """

    def __init__(
        self,
        config: PipelineConfig,
        pipeline_path: str,
        stage: str,
        log: Log,
        tables: list[str] | None = None,
    ) -> None:
        super().__init__(stage, log, tables)
        self.config = config
        self.pipeline_path = config.spark.remote_pipeline or str(Path(pipeline_path).resolve())
        self.conn_id = config.spark.ssh_conn_id or ""
        self.client: paramiko.SSHClient | None = None
        self.channel: paramiko.Channel | None = None
        self.pgid: int | None = None
        self.where = f"over ssh ({self.conn_id})"

    def remote_command(self, run_id: str, full_refresh: bool) -> str:
        """The shell command run on the remote host."""
        python = self.config.spark.remote_python
        args = [python, "-m", "raw2gold.transform.job"]
        args += job_args(self.pipeline_path, self.stage, run_id, full_refresh, self.tables)
        inner = f'echo "{PGID_PREFIX}$$"; exec {shlex.join(args)}'
        return f"exec setsid -w sh -c {shlex.quote(inner)}"

    def connect(self) -> paramiko.SSHClient:
        """An SSH client per the connection, with key auth and host-key checking enforced."""
        import paramiko
        from airflow.providers.ssh.hooks.ssh import SSHHook

        if not self.conn_id:
            raise StageRunError("spark.mode is ssh but spark.ssh_conn_id is not set", final=True)
        try:
            hook = SSHHook(ssh_conn_id=self.conn_id, conn_retry_attempts=1, conn_timeout=20)
        except Exception as exc:
            raise StageRunError(f"SSH connection {self.conn_id!r} is unusable: {exc}") from exc
        where = f"{hook.username}@{hook.remote_host}:{hook.port}"
        host, port = hook.remote_host, hook.port or 22
        if hook.no_host_key_check or hook.allow_host_key_change:
            raise StageRunError(
                f"SSH connection {self.conn_id!r} turns host-key checking off: set extra "
                f'"no_host_key_check": false and "host_key" to the output of '
                f"{_keyscan(host, port)}",
                final=True,
            )
        if hook.pkey is None and not hook.key_file:
            raise StageRunError(
                f"SSH connection {self.conn_id!r} has no key: set extra private_key (OpenSSH "
                "ed25519 key text) or key_file (a path on the Airflow worker)",
                final=True,
            )
        if hook.password:
            self.log.warning(
                "ignoring the password of SSH connection %s: key auth only", self.conn_id
            )
            hook.password = None
        hook.look_for_keys = False
        try:
            client = hook.get_conn()
        except paramiko.BadHostKeyException as exc:
            raise StageRunError(
                f"host key of {host}:{port} does not match the one configured for "
                f"{self.conn_id!r} (server offered {exc.key.get_name()} "
                f"{exc.key.fingerprint}): if the host was re-keyed, check it and update the "
                f'connection\'s "host_key" extra (or ~/.ssh/known_hosts) from '
                f"{_keyscan(host, port)}",
                final=True,
            ) from exc
        except paramiko.AuthenticationException as exc:
            raise StageRunError(
                f"SSH key authentication failed for {where} (connection {self.conn_id!r}): "
                "add the connection's public key (ssh-keygen -y -f KEY) to "
                f"~{hook.username}/.ssh/authorized_keys on {host}",
                final=True,
            ) from exc
        except paramiko.SSHException as exc:
            if "known_hosts" in str(exc):
                raise StageRunError(
                    f"host key of {host}:{port} is not in known_hosts: add it with "
                    f"{_keyscan(host, port)} >> ~/.ssh/known_hosts, or put that line's key in "
                    f'the "host_key" extra of connection {self.conn_id!r}',
                    final=True,
                ) from exc
            raise StageRunError(f"SSH to {where} failed: {exc}") from exc
        except OSError as exc:
            raise StageRunError(f"cannot reach SSH server {where}: {exc}") from exc
        self.host = host
        return client

    def run(self, run_id: str, full_refresh: bool = False) -> dict[str, Any]:
        self.client = self.connect()
        command = self.remote_command(run_id, full_refresh)
        self.log.info("running on %s: %s", self.host, command)
        try:
            transport = self.client.get_transport()
            assert transport is not None
            self.channel = channel = transport.open_session()
            channel.set_combine_stderr(True)
            channel.exec_command(command)
            stream = channel.makefile("rb")
            for raw in stream:
                line = raw.decode("utf-8", errors="replace")
                if self.pgid is None and line.startswith(PGID_PREFIX):
                    self.pgid = int(line[len(PGID_PREFIX) :].strip())
                    continue
                self.output.consume([line])
            code = channel.recv_exit_status()
        finally:
            self.channel = None
            if self.client is not None:
                self.client.close()
                self.client = None
        if code != 0:
            raise self._remote_failure(code)
        return self.output.summary or {}

    def _remote_failure(self, code: int) -> StageRunError:
        python = self.config.spark.remote_python
        text = "\n".join(self.output.tail)
        if code == -1:
            return StageRunError(f"SSH session to {self.host} closed before the stage finished")
        if code in (126, 127) and "setsid" in text and python not in text:
            return StageRunError(
                f"setsid is missing on {self.host}: install util-linux there (apt-get install "
                "util-linux)",
                final=True,
            )
        if code in (126, 127):
            return StageRunError(
                f"remote python {python!r} was not found on {self.host} (exit {code}): install "
                "raw2gold there and set spark.remote_python to that venv's python "
                "(e.g. /opt/raw2gold/.venv/bin/python)",
                final=True,
            )
        if "No module named raw2gold" in text:
            return StageRunError(
                f"raw2gold is not installed for {python!r} on {self.host}: install it there "
                "(pip install raw2gold) or point spark.remote_python at the venv that has it",
                final=True,
            )
        return self._failed(code)

    def kill(self) -> None:
        """Kill the remote process group over a new channel, then close the session."""
        client, pgid = self.client, self.pgid
        if client is not None and pgid is not None:
            script = (
                f"kill -TERM -- -{pgid} 2>/dev/null || exit 0; "
                f"for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 -- -{pgid} 2>/dev/null || exit 0; "
                f"sleep 1; done; kill -KILL -- -{pgid}"
            )
            try:
                transport = client.get_transport()
                if transport is None or not transport.is_active():
                    client = self.connect()
                _, out, _ = client.exec_command(script, timeout=30)
                out.channel.recv_exit_status()
                self.log.info("killed remote process group %s on %s", pgid, self.host)
            except Exception as exc:
                self.log.error("could not kill remote process group %s: %s", pgid, exc)
        channel = self.channel
        if channel is not None:
            channel.close()


def make_runner(
    config: PipelineConfig | None,
    pipeline_path: str,
    stage: str,
    log: Log,
    command: Callable[[str, bool], list[str]] | None = None,
    tables: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> StageRunner:
    """The runner for ``config.spark.mode`` (local when there is no config to read).

    ``env`` goes to the local job (e.g. the run's Spark Connect server to use).
    """
    mode = config.spark.mode if config is not None else "local"
    if mode == "cluster":
        assert config is not None
        return SparkSubmitRunner(config, pipeline_path, stage, log, tables)
    if mode == "ssh":
        assert config is not None
        return SshRunner(config, pipeline_path, stage, log, tables)

    def default_command(run_id: str, full_refresh: bool) -> list[str]:
        args = job_args(pipeline_path, stage, run_id, full_refresh, tables)
        return [sys.executable, "-m", "raw2gold.transform.job", *args]

    runner = LocalRunner(stage, log, command or default_command, env)
    runner.tables = tables
    return runner
