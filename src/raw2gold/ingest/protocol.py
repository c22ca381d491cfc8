"""Run an Airbyte connector's CLI as a subprocess and parse its stdout (the Airbyte protocol).

The connector gets its config, catalog and state as files in a private temporary folder
(mode 0700, files 0600), deleted when the process ends. Its stdout is read line by line with
orjson: LOG messages go to the ``log`` callable and the ``raw2gold.ingest`` logger, ERROR traces
become the failure message, everything else is yielded to the caller. A line that is not an
Airbyte message (a stray ``print``) is counted and yielded as ``(None, line)`` so the caller can
keep it in quarantine; it does not stop the run.

A connector runs in its own process group: :meth:`ConnectorProcess.terminate` (and
:func:`terminate_all`, for an Airflow ``on_kill``) stops it and everything it forked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from raw2gold.errors import Raw2GoldError

logger = logging.getLogger("raw2gold.ingest")

LogFn = Callable[[str], None]
Message = dict[str, Any]

STDERR_TAIL_LINES = 40
MAX_ERROR_CHARS = 600
_LOG_LEVELS = {
    "FATAL": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "INFO": logging.INFO,
    "DEBUG": logging.DEBUG,
    "TRACE": logging.DEBUG,
}
_GENERIC_ERRORS = ("Something went wrong in the connector",)


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """Collapse whitespace (newlines included) and cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class ConnectorError(Raw2GoldError):
    """A connector failed. ``str()`` is one line: what failed, the connector's words, a hint.
    ``final`` when the connector said its config is wrong (an error trace of failure_type
    config_error) or the pipeline asks for what its catalog lacks: a retry would fail alike."""

    def __init__(
        self,
        message: str,
        *,
        connector: str = "connector",
        verb: str = "",
        exit_code: int | None = None,
        stderr_tail: Iterable[str] = (),
        hint: str = "",
        final: bool = False,
    ):
        self.message = one_line(message)
        self.connector = connector
        self.verb = verb
        self.exit_code = exit_code
        self.stderr_tail = list(stderr_tail)
        self.hint = hint
        what = f"{connector} {verb}".strip()
        code = f" (exit code {exit_code})" if exit_code not in (None, 0) else ""
        text = f"{what} failed{code}: {self.message}"
        super().__init__(f"{text} (hint: {one_line(hint)})" if hint else text, final=final)


def _write_private(folder: Path, name: str, payload: Any) -> Path:
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(orjson.dumps(payload))
    return path


_ACTIVE: set[ConnectorProcess] = set()
_ACTIVE_LOCK = threading.Lock()


def terminate_all() -> int:
    """Terminate every connector process started by this Python process (for ``on_kill``)."""
    with _ACTIVE_LOCK:
        running = list(_ACTIVE)
    for process in running:
        process.terminate()
    return len(running)


class ConnectorProcess:
    """One run of a connector verb (spec, check, discover, read) as a subprocess.

    Use as a context manager and iterate :meth:`messages`::

        with ConnectorProcess([...,"source-faker"], "read", config=c, catalog=k) as proc:
            for message, line in proc.messages():
                ...
        proc.raise_for_failure()
    """

    def __init__(
        self,
        argv: list[str],
        verb: str,
        *,
        config: dict[str, Any] | None = None,
        catalog: dict[str, Any] | None = None,
        state: Any = None,
        log: LogFn | None = None,
        secrets: Iterable[str] = (),
        name: str | None = None,
        env: dict[str, str] | None = None,
        timeout_seconds: float | None = None,
    ):
        self.argv = list(argv)
        self.verb = verb
        self.config = config
        self.catalog = catalog
        self.state = state
        self.log = log
        self.secrets = sorted({s for s in secrets if isinstance(s, str) and len(s) >= 4}, key=len)
        self.secrets.reverse()
        self.name = name or Path(self.argv[-1]).name
        self.env = env
        self.timeout_seconds = timeout_seconds
        self.exit_code: int | None = None
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.error_traces: list[dict[str, Any]] = []
        self.log_counts: Counter[str] = Counter()
        self.log_tail: deque[str] = deque(maxlen=5)  # last WARN/ERROR/FATAL log messages
        self.invalid_lines = 0
        self.terminated = False
        self.timed_out = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._folder: Path | None = None
        self._stderr_thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> ConnectorProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self.terminate()
        self.close()

    def start(self) -> None:
        """Write the input files and start the connector."""
        self._folder = Path(tempfile.mkdtemp(prefix="raw2gold-connector-"))
        args = [*self.argv, self.verb]
        if self.config is not None:
            args += ["--config", str(_write_private(self._folder, "config.json", self.config))]
        if self.catalog is not None:
            args += ["--catalog", str(_write_private(self._folder, "catalog.json", self.catalog))]
        if self.state is not None:
            args += ["--state", str(_write_private(self._folder, "state.json", self.state))]
        env = dict(self.env if self.env is not None else os.environ)
        for key in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
            env.pop(key, None)
        logger.debug("starting %s %s", self.name, self.verb)
        try:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=self._folder,
                start_new_session=True,  # its own process group: terminate() reaches children
            )
        except OSError as exc:
            self.close()
            raise ConnectorError(
                f"cannot start {args[0]}: {exc.strerror or exc}",
                connector=self.name,
                verb=self.verb,
                hint="is the connector installed? (see raw2gold.ingest.connectors)",
            ) from None
        with _ACTIVE_LOCK:
            _ACTIVE.add(self)
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        if self.timeout_seconds:
            self._timer = threading.Timer(self.timeout_seconds, self._on_timeout)
            self._timer.daemon = True
            self._timer.start()

    def _on_timeout(self) -> None:
        self.timed_out = True
        self.terminate()

    def _drain_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for raw in self._proc.stderr:
            line = self.mask(raw.decode("utf-8", "replace").rstrip())
            if line:
                self.stderr_tail.append(line)
                logger.debug("%s stderr: %s", self.name, line)

    def terminate(self, grace_seconds: float = 10.0) -> None:
        """Stop the connector and its children: SIGTERM to the group, SIGKILL after a grace."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        self.terminated = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def wait(self) -> int:
        """Wait for the exit and return the exit code."""
        assert self._proc is not None
        self.exit_code = self._proc.wait()
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=5)
        if self._timer is not None:
            self._timer.cancel()
        with _ACTIVE_LOCK:
            _ACTIVE.discard(self)
        return self.exit_code

    def close(self) -> None:
        """Delete the input files (config may hold secrets)."""
        if self._timer is not None:
            self._timer.cancel()
        with _ACTIVE_LOCK:
            _ACTIVE.discard(self)
        if self._proc is not None:
            for stream in (self._proc.stdout, self._proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    # ---- output ------------------------------------------------------------------------------
    def mask(self, text: str) -> str:
        """Replace known secret values in a text by ****."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "****")
        return text

    def _emit_log(self, level: str, message: str) -> None:
        level = level.upper()
        self.log_counts[level] += 1
        message = self.mask(message)
        if level in ("WARN", "WARNING", "ERROR", "FATAL"):
            self.log_tail.append(one_line(f"{level}: {message}", 300))
        logger.log(_LOG_LEVELS.get(level, logging.INFO), "%s: %s", self.name, message)
        if self.log is not None:
            self.log(f"[{self.name}] {level} {message}")

    def messages(self) -> Iterator[tuple[Message | None, bytes]]:
        """Yield ``(message, line)`` for each stdout line until the connector exits.

        LOG messages are consumed here. Non-JSON lines yield ``(None, line)``. When the output
        ends the process is waited for, so :attr:`exit_code` is set afterwards.
        """
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if not line.strip():
                continue
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                message = None
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                self.invalid_lines += 1
                yield None, line
                continue
            kind = message["type"]
            if kind == "LOG":
                body = message.get("log") or {}
                self._emit_log(str(body.get("level", "INFO")), str(body.get("message", "")))
                continue
            if kind == "TRACE":
                trace = message.get("trace") or {}
                if trace.get("type") == "ERROR":
                    self.error_traces.append(trace.get("error") or {})
            yield message, line
        self.wait()

    def collect(self) -> list[Message]:
        """Run to the end and return all messages (for spec, check and discover)."""
        return [message for message, _ in self.messages() if message is not None]

    # ---- failure -----------------------------------------------------------------------------
    def error_message(self) -> str | None:
        """The connector's own words on why it failed, or None when it did not fail."""
        if self.timed_out:
            return f"timed out after {self.timeout_seconds:.0f} s"
        if self.error_traces:
            error = self.error_traces[-1]
            message = str(error.get("message") or "")
            internal = str(error.get("internal_message") or "")
            if internal and (not message or message.startswith(_GENERIC_ERRORS)):
                message = f"{message} ({internal})" if message else internal
            return self.mask(message or "error trace without a message")
        if self.exit_code not in (None, 0):
            if self.terminated:
                return "terminated"
            if self.stderr_tail:
                return self.stderr_tail[-1]
            if self.log_tail:
                return self.log_tail[-1]
            return "the connector exited without an error message"
        return None

    def raise_for_failure(self, hint: str = "") -> None:
        """Raise :class:`ConnectorError` when the connector failed (error trace or exit code)."""
        message = self.error_message()
        if message is None:
            return
        raise ConnectorError(
            message,
            connector=self.name,
            verb=self.verb,
            exit_code=self.exit_code,
            stderr_tail=self.stderr_tail,
            hint=hint or default_hint(self.verb, message),
            final=self.config_error(),
        )

    def config_error(self) -> bool:
        """Whether the connector failed on its config (the Airbyte protocol's failure_type
        config_error), which no retry changes; system and transient errors may pass."""
        if self.timed_out or not self.error_traces:
            return False
        return self.error_traces[-1].get("failure_type") == "config_error"


def default_hint(verb: str, message: str) -> str:
    """A short hint on what to look at for a failed verb."""
    lowered = message.lower()
    if "no such file" in lowered or "not found" in lowered:
        return "check the path or URL in the source config (${PIPELINE_DIR} is the yaml's folder)"
    if verb in ("check", "discover", "spec"):
        return "compare the source config with the connector's spec (its `spec` command)"
    if "terminated" in lowered or "timed out" in lowered:
        return "the run was stopped; it is safe to run again (nothing was committed)"
    return "see the connector log above; nothing was committed, the run can be retried"
