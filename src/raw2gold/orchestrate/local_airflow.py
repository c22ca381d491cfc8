"""A real, local Airflow for users: `raw2gold airflow up | down | status`.

Four detached processes (api-server, scheduler, dag-processor, triggerer) bound to 127.0.0.1,
LocalExecutor, SQLite in RAW2GOLD_HOME/airflow (or PostgreSQL via a connection string), examples
off, the simple auth manager with a generated admin password. PIDs, port and logs live in
RAW2GOLD_HOME/airflow/run/.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from raw2gold.errors import first_line
from raw2gold.orchestrate.local_run import (
    DAGS_FOLDER,
    AirflowError,
    migrate_airflow_db,
    raw2gold_home,
)

log = logging.getLogger(__name__)

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
CONNECTOR_POOL = "raw2gold_connectors"
CONNECTOR_POOL_SLOTS = 2
POOL_ATTEMPTS = 5  # pool creation retried on 5xx (1+2+4+8 s of waits at most)
DB_URL_ENV = "RAW2GOLD_AIRFLOW_DB_URL"
ADMIN = "admin"
INSTANCE_ENV = "RAW2GOLD_AIRFLOW_INSTANCE"


@dataclass
class Component:
    """One Airflow process started by `up`."""

    name: str
    pid: int
    create_time: float
    log: str

    def process(self) -> psutil.Process | None:
        """The live process, or None if it is gone (or the PID now belongs to someone else)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 1.0:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None


@dataclass
class AirflowState:
    """What `up` recorded in RAW2GOLD_HOME/airflow/run/state.json."""

    port: int
    url: str
    airflow_home: str
    dags_folder: str
    pipelines: str
    db: str
    instance: str
    username: str = ADMIN
    components: list[Component] = field(default_factory=list)
    started_at: float = 0.0

    @classmethod
    def load(cls, path: Path) -> AirflowState:
        data = json.loads(path.read_text())
        data["components"] = [Component(**c) for c in data.get("components", [])]
        return cls(**data)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @property
    def api_url(self) -> str:
        return self.url

    def password(self) -> str:
        """The admin password from the simple auth manager's passwords file."""
        return read_password(Path(self.airflow_home), self.username)


def airflow_home(home: Path | None = None) -> Path:
    """AIRFLOW_HOME of the local Airflow under ``home`` (default RAW2GOLD_HOME; shared with run)."""
    return (home or raw2gold_home()) / "airflow"


def run_dir(home: Path | None = None) -> Path:
    """Where state.json and the process logs live."""
    return airflow_home(home) / "run"


def state_file(home: Path | None = None) -> Path:
    return run_dir(home) / "state.json"


def passwords_file(home: Path) -> Path:
    return home / "simple_auth_manager_passwords.json.generated"


def read_password(home: Path, username: str = ADMIN) -> str:
    """The password the simple auth manager uses for ``username``."""
    path = passwords_file(home)
    try:
        return str(json.loads(path.read_text())[username])
    except (OSError, ValueError, KeyError) as exc:
        raise AirflowError(f"no password for {username!r} in {path}") from exc


def ensure_password(home: Path, username: str = ADMIN) -> str:
    """Generate the admin password once and write it where Airflow reads it (kept on later ups)."""
    path = passwords_file(home)
    passwords: dict[str, str] = {}
    if path.exists():
        try:
            passwords = json.loads(path.read_text() or "{}")
        except ValueError:
            passwords = {}
    if username not in passwords:
        passwords[username] = secrets.token_urlsafe(16)
        path.write_text(json.dumps(passwords) + "\n")
        path.chmod(0o600)
    return passwords[username]


def default_parallelism() -> int:
    """Task slots for this machine: small, since Spark and connectors need the memory."""
    return max(1, min(4, 2 * (os.cpu_count() or 1)))


def mask_db_url(url: str) -> str:
    """A connection string without its password."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def _secrets(home: Path) -> dict[str, str]:
    """JWT secret and Fernet key shared by all four processes, generated once per home."""
    path = home / "run" / "secrets.json"
    if path.exists():
        data: dict[str, str] = json.loads(path.read_text())
        return data
    from cryptography.fernet import Fernet

    data = {"jwt_secret": secrets.token_urlsafe(64), "fernet_key": Fernet.generate_key().decode()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) + "\n")
    path.chmod(0o600)
    return data


def server_env(
    *,
    port: int,
    home: Path,
    dags_folder: Path,
    pipelines: str,
    db_url: str | None,
    parallelism: int,
    instance: str,
) -> dict[str, str]:
    """Environment of the four Airflow processes."""
    keys = _secrets(home)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file(home)),
        "AIRFLOW__CORE__FERNET_KEY": keys["fernet_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "RAW2GOLD_PIPELINES": pipelines,
        "RAW2GOLD_CONNECTOR_POOL": CONNECTOR_POOL,
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
        "PYTHONUNBUFFERED": "1",
        INSTANCE_ENV: instance,
    }
    if db_url:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = db_url
    return env


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _command(name: str, port: int) -> list[str]:
    base = [sys.executable, "-m", "airflow", name]
    if name == "api-server":
        return [*base, "--host", "127.0.0.1", "--port", str(port)]
    if name in {"scheduler", "triggerer"}:
        return [*base, "--skip-serve-logs"]
    return base


def _tail(path: str | Path, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def running_state(home: Path | None = None) -> AirflowState | None:
    """The recorded state if at least one recorded process is still alive."""
    path = state_file(home)
    if not path.exists():
        return None
    state = AirflowState.load(path)
    if any(c.process() for c in state.components):
        return state
    return None


def check_db_driver(db_url: str) -> None:
    """Fail early when the connection string's database driver is not installed."""
    import importlib.util

    scheme = db_url.split("://", 1)[0]
    if not scheme.startswith("postgres"):
        return
    driver = scheme.split("+", 1)[1] if "+" in scheme else "psycopg2"
    # Airflow 3 also opens the metadata DB asynchronously, through asyncpg.
    missing = [m for m in (driver, "asyncpg") if importlib.util.find_spec(m) is None]
    if missing:
        raise AirflowError(
            f"{mask_db_url(db_url)} needs the {' and '.join(missing)} module(s); install "
            "raw2gold's postgres extra: `uv pip install 'raw2gold[postgres]'`"
        )


def check_pipelines(spec: str) -> list[Path]:
    """The pipeline files named by ``spec``; each must exist and be valid, and no two may share a
    name (ConfigError if not)."""
    from raw2gold.config import load_pipelines, pipeline_files

    paths = pipeline_files(spec)
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        raise AirflowError(
            f"no pipeline file found for {', '.join(missing) or spec or '(none)'}; "
            "give --pipelines PATH_OR_GLOB ..."
        )
    load_pipelines(paths)
    return paths


def up(
    *,
    pipelines: Iterable[str] = ("pipeline.yaml",),
    port: int = 8080,
    db_url: str | None = None,
    dags_folder: Path | None = None,
    parallelism: int | None = None,
    timeout: float = 180.0,
    home: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> AirflowState:
    """Start the four processes detached, wait until healthy, create the connector pool.

    ``dags_folder`` replaces the package's DAG folder (tests); ``home`` replaces RAW2GOLD_HOME.
    """
    if running := running_state(home):
        raise AirflowError(
            f"a local Airflow is already running at {running.url}; run `raw2gold airflow down`"
        )
    if not _port_free(port):
        raise AirflowError(f"port {port} on 127.0.0.1 is in use; choose another with --port")
    root = home
    home = airflow_home(root)
    logs = run_dir(root)
    logs.mkdir(parents=True, exist_ok=True)
    db_url = db_url or os.environ.get(DB_URL_ENV) or None
    if db_url:
        check_db_driver(db_url)
    spec = os.pathsep.join(os.path.abspath(os.path.expanduser(p)) for p in pipelines)
    if dags_folder is None:
        check_pipelines(spec)
    folder = (dags_folder or DAGS_FOLDER).resolve()
    instance = secrets.token_hex(8)
    env = server_env(
        port=port,
        home=home,
        dags_folder=folder,
        pipelines=spec,
        db_url=db_url,
        parallelism=parallelism or default_parallelism(),
        instance=instance,
    )
    say = progress or (lambda message: None)
    ensure_password(home)
    say(f"migrating the metadata DB ({mask_db_url(db_url) if db_url else 'SQLite'})")
    migrate_airflow_db(env)
    url = f"http://127.0.0.1:{port}"
    state = AirflowState(
        port=port,
        url=url,
        airflow_home=str(home),
        dags_folder=str(folder),
        pipelines=spec,
        db=mask_db_url(db_url) if db_url else f"sqlite:///{home / 'airflow.db'}",
        instance=instance,
        started_at=time.time(),
    )
    try:
        # The scheduler starts last: tasks it queues need the api-server's execution API.
        for name in ("api-server", "dag-processor", "triggerer", "scheduler"):
            if name == "scheduler":
                say("waiting for the api-server to answer")
                wait_answering(state, timeout=timeout)
            log_path = logs / f"{name}.log"
            with log_path.open("ab") as log:
                proc = subprocess.Popen(
                    _command(name, port),
                    env=env,
                    cwd=home,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            created = psutil.Process(proc.pid).create_time()
            state.components.append(Component(name, proc.pid, created, str(log_path)))
            state.save(state_file(root))
            say(f"started {name} (pid {proc.pid}, log {log_path})")
        say("waiting until every component is healthy")
        wait_healthy(state, timeout=timeout)
        client = AirflowClient(url, ADMIN, state.password())
        try:
            client.ensure_pool(CONNECTOR_POOL, CONNECTOR_POOL_SLOTS)
        finally:
            client.close()
    except BaseException:
        stop(state)
        raise
    return state


def health(url: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """GET /api/v2/monitor/health, or None if the api-server does not answer."""
    try:
        reply = httpx.get(f"{url}/api/v2/monitor/health", timeout=timeout)
        if reply.status_code != 200:
            return None
        data: dict[str, Any] = reply.json()
        return data
    except httpx.HTTPError:
        return None


def is_healthy(report: dict[str, Any] | None) -> bool:
    """Every component in the health report is healthy."""
    if not report:
        return False
    parts = [v for v in report.values() if isinstance(v, dict)]
    return bool(parts) and all(p.get("status") == "healthy" for p in parts)


def wait_answering(state: AirflowState, timeout: float = 120.0) -> None:
    """Wait until the api-server answers HTTP; fail early if a process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(state)
        if health(state.url) is not None:
            return
        time.sleep(0.5)
    raise AirflowError(f"the api-server does not answer at {state.url} after {timeout:.0f}s")


def _check_alive(state: AirflowState) -> None:
    for component in state.components:
        if component.process() is None:
            raise AirflowError(
                f"airflow {component.name} exited during start; last lines of "
                f"{component.log}:\n{_tail(component.log)}"
            )


def wait_healthy(state: AirflowState, timeout: float = 120.0) -> dict[str, Any]:
    """Wait until all components report healthy; fail early if a process dies."""
    deadline = time.monotonic() + timeout
    report: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        _check_alive(state)
        report = health(state.url)
        if is_healthy(report):
            assert report is not None
            return report
        time.sleep(1.0)
    raise AirflowError(f"Airflow not healthy after {timeout:.0f}s: {report}")


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _group_members(pgids: set[int], instance: str | None = None) -> list[psutil.Process]:
    """Processes in one of ``pgids`` (or tagged with ``instance`` in their environment)."""
    found: list[psutil.Process] = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if os.getpgid(proc.pid) in pgids:
                found.append(proc)
                continue
            if instance and proc.environ().get(INSTANCE_ENV) == instance:
                found.append(proc)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return found


def leftover_processes(state: AirflowState) -> list[psutil.Process]:
    """Processes started by this Airflow that are still alive (should be none after `down`)."""
    pgids = {c.pid for c in state.components}
    alive = []
    for proc in _group_members(pgids, state.instance):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.Error:
            continue
    return alive


def stop(state: AirflowState, timeout: float = 30.0) -> list[str]:
    """SIGTERM each process group, wait up to ``timeout``, then SIGKILL what is left.

    Processes that left the groups but carry this Airflow's instance tag (a connector in its
    own process group, started by a task) get the SIGTERM too, and the SIGKILL if they ignore it.
    """
    messages: list[str] = []
    pgids = {c.pid for c in state.components if c.process() is not None}
    escaped = [p for p in leftover_processes(state) if _pgid(p.pid) not in pgids]
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for proc in escaped:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and leftover_processes(state):
        time.sleep(0.3)
    left = leftover_processes(state)
    if left:
        messages.append(f"killing {len(left)} process(es) still alive after {timeout:.0f}s")
        for pgid in {c.pid for c in state.components}:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in left:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(left, timeout=10)
    left = leftover_processes(state)
    if left:
        raise AirflowError(f"processes still alive after SIGKILL: {[p.pid for p in left]}")
    return messages


def down(
    timeout: float = 30.0, home: Path | None = None, say: Callable[[str], Any] = log.info
) -> AirflowState | None:
    """Stop the local Airflow recorded in state.json, and the shared Spark Connect servers of
    the pipelines it served (``spark.server: shared``); None if nothing was recorded."""
    path = state_file(home)
    if not path.exists():
        return None
    state = AirflowState.load(path)
    for message in stop(state, timeout=timeout):
        say(message)
    stop_shared_spark_servers(state.pipelines, say)
    path.unlink(missing_ok=True)
    return state


def stop_shared_spark_servers(spec: str, say: Callable[[str], Any]) -> int:
    """Stop the shared Spark Connect server of each pipeline in ``spec`` that has one here."""
    from raw2gold.config import ConfigError, load_pipeline, pipeline_files
    from raw2gold.transform.connect import stop_shared_server

    stopped = 0
    for path in pipeline_files(spec):
        try:
            config = load_pipeline(path)
        except (ConfigError, OSError) as exc:  # a file changed or removed since `up`
            first = first_line(exc)
            say(f"{path}: not read ({first}): its Spark server left alone")
            continue
        if config.spark.mode == "local" and config.spark.server == "shared":
            stopped += stop_shared_server(config, say)
    return stopped


def status(
    home: Path | None = None,
) -> tuple[AirflowState | None, dict[str, bool], dict[str, Any] | None]:
    """(state, {component: alive}, health report) of the recorded local Airflow."""
    path = state_file(home)
    if not path.exists():
        return None, {}, None
    state = AirflowState.load(path)
    alive = {c.name: c.process() is not None for c in state.components}
    return state, alive, health(state.url) if any(alive.values()) else None


# ---- REST ----------------------------------------------------------------------------------
class AirflowClient:
    """A small client of Airflow's REST API v2 with a bearer token from POST /auth/token."""

    def __init__(self, url: str, username: str, password: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.username = username
        self.password = password
        self._http = httpx.Client(base_url=self.url, timeout=timeout)
        self._token: str | None = None

    @property
    def token(self) -> str:
        if self._token is None:
            reply = self._http.post(
                "/auth/token", json={"username": self.username, "password": self.password}
            )
            if reply.status_code not in (200, 201):
                raise AirflowError(f"login to {self.url} failed: {reply.status_code} {reply.text}")
            self._token = str(reply.json()["access_token"])
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request with the bearer token (logs in again once if the token expired)."""
        headers = {"Authorization": f"Bearer {self.token}"}
        reply = self._http.request(method, path, headers=headers, **kwargs)
        if reply.status_code == 401:
            self._token = None
            headers = {"Authorization": f"Bearer {self.token}"}
            reply = self._http.request(method, path, headers=headers, **kwargs)
        return reply

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """A request that must succeed; returns the JSON body."""
        reply = self.request(method, path, **kwargs)
        if reply.status_code >= 400:
            raise AirflowError(f"{method} {path}: {reply.status_code} {reply.text[:300]}")
        return reply.json() if reply.content else None

    def close(self) -> None:
        self._http.close()

    def ensure_pool(self, name: str, slots: int) -> None:
        """Create the pool, or set its size if it exists."""
        body = {
            "name": name,
            "slots": slots,
            "description": "raw2gold connector tasks",
            "include_deferred": False,
        }
        for attempt in range(POOL_ATTEMPTS):
            # Right after start, SQLite can be locked by the other components: a 5xx that passes.
            reply = self.request("POST", "/api/v2/pools", json=body)
            if reply.status_code < 500:
                break
            time.sleep(2**attempt)
        if reply.status_code == 409:
            self.call("PATCH", f"/api/v2/pools/{name}", json=body)
        elif reply.status_code >= 400:
            raise AirflowError(f"creating pool {name}: {reply.status_code} {reply.text[:300]}")

    def wait_for_dag(self, dag_id: str, timeout: float = 90.0) -> dict[str, Any]:
        """The DAG, once the dag-processor has parsed it."""
        deadline = time.monotonic() + timeout
        while True:
            reply = self.request("GET", f"/api/v2/dags/{dag_id}")
            if reply.status_code == 200:
                data: dict[str, Any] = reply.json()
                return data
            if reply.status_code != 404 or time.monotonic() > deadline:
                raise AirflowError(
                    f"DAG {dag_id!r} not found at {self.url} after {timeout:.0f}s "
                    f"({reply.status_code}); see the dag-processor log and import errors"
                )
            time.sleep(1.0)

    def unpause(self, dag_id: str) -> None:
        self.call("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> dict[str, Any]:
        """Start a manual run; returns the DAG run."""
        body = {"logical_date": None, "conf": conf or {}}
        data: dict[str, Any] = self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)
        return data

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{_q(run_id)}")
        return data

    def dag_runs(self, dag_id: str, **params: Any) -> list[dict[str, Any]]:
        data = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns", params=params)
        runs: list[dict[str, Any]] = data["dag_runs"]
        return runs

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        data = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances")
        tis: list[dict[str, Any]] = data["task_instances"]
        return tis


def _q(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def client_from_state(
    url: str | None = None,
    username: str | None = None,
    password: str | None = None,
    home: Path | None = None,
) -> AirflowClient:
    """A client of the local Airflow recorded in state.json (or of ``url`` with credentials)."""
    password = password or os.environ.get("RAW2GOLD_AIRFLOW_PASSWORD") or None
    if url is None:
        path = state_file(home)
        if not path.exists():
            raise AirflowError("no local Airflow is running; start one with `raw2gold airflow up`")
        state = AirflowState.load(path)
        url = state.url
        username = username or state.username
        password = password or state.password()
    if not username or not password:
        raise AirflowError("give --user and --password (or RAW2GOLD_AIRFLOW_PASSWORD) with --url")
    return AirflowClient(url, username, password)
