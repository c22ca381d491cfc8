"""Table leases: one raw2gold writer at a time per Delta table, across Spark drivers.

Delta commits version N of a table by creating its log file only if it does not exist, but
neither of the file systems a lake lives on does that in one step for two processes: Delta's S3
log store checks that the file is absent and then writes it (S3A sends no ``If-None-Match``),
and on a local folder Hadoop's rename does not refuse an existing target (Delta's HDFS log store
checks first, and serialises only the writers of its own JVM). Two runs with their own Spark
drivers committing one table in the same instant both pass the check, and one commit replaces
the other. A lease serialises raw2gold's writers of a table:

* on S3, a small JSON file ``_state/leases/<kind>/<table>.json`` that a writer takes by
  compare-and-swap (:meth:`Lake.swap_json`, a conditional PUT), renews while it works and marks
  released after; a writer that finds it held waits, and a lease its holder stopped renewing
  (killed, host gone) is taken over once it expires;
* on a local lake, an exclusive ``flock`` on ``<kind>/<table>.lock`` beside that file, which
  the kernel releases when its process ends however it ends; the JSON file says who holds it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from raw2gold.errors import Raw2GoldError
from raw2gold.lake.layout import ConcurrentWriteError, Lake

log = logging.getLogger(__name__)

LEASES = "_state/leases"
TTL_SECONDS = 120.0
WAIT_LOG_SECONDS = 60.0


class LeaseLost(Raw2GoldError):
    """Another writer took this writer's lease (it was not renewed in time)."""


class _Held(Exception):
    def __init__(self, lease: dict[str, Any]):
        super().__init__(lease.get("run_id"))
        self.lease = lease


def lease_path(name: str) -> str:
    """Where the lease of ``processed.users`` or ``gold.by_day`` lives in the lake."""
    kind, _, table = name.partition(".")
    return f"{LEASES}/{kind}/{table}.json"


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _holder(lease: dict[str, Any]) -> str:
    return f"run {lease.get('run_id')} (host {lease.get('host')}, pid {lease.get('pid')})"


def _say_waiting(name: str, lease: dict[str, Any], started: float, said: float | None) -> float:
    """Log whom a writer waits for, at first and then every minute; when it last said so."""
    waited = time.monotonic() - started
    if said is not None and waited - said < WAIT_LOG_SECONDS:
        return said
    until = f" (lease renewed until {_when(lease['expires'])})" if lease.get("expires") else ""
    log.info(
        "%s: waiting for %s, which is writing the table%s; waited %.0f s",
        name,
        _holder(lease),
        until,
        waited,
    )
    return waited


def _record(name: str, run_id: str) -> dict[str, Any]:
    """Who holds a lease: what the waiting message names."""
    return {
        "table": name,
        "run_id": run_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "acquired_at": _when(time.time()),
    }


def _say_taken(name: str, started: float, said: float | None) -> None:
    if said is not None:
        log.info("%s: lease taken after waiting %.0f s", name, time.monotonic() - started)


class TableLease:
    """A lease on one table, for one run: :meth:`acquire`, work, :meth:`release`."""

    def __init__(
        self,
        lake: Lake,
        name: str,
        run_id: str,
        ttl: float = TTL_SECONDS,
        poll: float = 1.0,
    ):
        self.lake, self.name, self.run_id = lake, name, run_id
        self.ttl, self.poll = ttl, poll
        self.path = lease_path(name)
        self.token = uuid.uuid4().hex
        self.lost: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _mine(self) -> dict[str, Any]:
        return {
            **_record(self.name, self.run_id),
            "token": self.token,
            "expires": time.time() + self.ttl,
            "released": False,
        }

    def _take(self, current: dict[str, Any] | None) -> dict[str, Any]:
        if current and not current.get("released") and current.get("token") != self.token:
            if float(current.get("expires") or 0) > time.time():
                raise _Held(current)
            log.warning(
                "%s: %s held its lease until %s and did not renew it (stopped or gone): "
                "taking it over",
                self.name,
                _holder(current),
                _when(float(current.get("expires") or 0)),
            )
        return self._mine()

    def acquire(self) -> None:
        """Take the lease, waiting while another live writer holds it."""
        started = time.monotonic()
        said: float | None = None
        while True:
            try:
                self.lake.swap_json(self.path, self._take)
                break
            except ConcurrentWriteError:
                continue  # another writer took or renewed it between our read and write
            except _Held as held:
                said = _say_waiting(self.name, held.lease, started, said)
                time.sleep(self.poll)
        _say_taken(self.name, started, said)
        self._stop.clear()
        self._renewer = threading.Thread(
            target=self._renew_until_released, name=f"lease {self.name}", daemon=True
        )
        self._renewer.start()

    def _check_mine(self, current: dict[str, Any] | None) -> dict[str, Any]:
        """``current`` if it is still this writer's lease; else raise :class:`LeaseLost`."""
        if not current or current.get("token") != self.token:
            other = _holder(current) if current else "nobody (the file is gone)"
            raise LeaseLost(
                f"{self.name}: this run's lease expired before it was renewed and {other} "
                f"holds it now, so the two may have written the table at once: check "
                f"`raw2gold history` or the Delta log, and run again"
            )
        return current

    def _renew(self, current: dict[str, Any] | None) -> dict[str, Any]:
        mine = self._check_mine(current)
        return {**self._mine(), "acquired_at": mine.get("acquired_at")}

    def _renew_until_released(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self.lake.swap_json(self.path, self._renew)
            except LeaseLost as exc:
                self.lost = str(exc)
                log.error("%s", exc)
                return
            except Exception as exc:  # the store unreachable for a moment: try again
                log.warning("%s: renewing the lease failed (%s): trying again", self.name, exc)

    def release(self) -> None:
        """Mark the lease released; raise :class:`LeaseLost` if another writer took it."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()

        def released(current: dict[str, Any] | None) -> dict[str, Any]:
            mine = self._check_mine(current)
            return {**mine, "released": True, "released_at": _when(time.time())}

        if self.lost:
            raise LeaseLost(self.lost)
        while True:
            try:
                self.lake.swap_json(self.path, released)
                return
            except ConcurrentWriteError:
                continue


@contextmanager
def table_lease(lake: Lake, name: str, run_id: str, poll: float = 1.0) -> Iterator[None]:
    """Hold the lease of table ``name`` (``processed.users``, ``gold.by_day``) while the block
    writes it (see the module's docstring)."""
    if lake.scheme != "s3":
        with _local_lease(lake, name, run_id, poll):
            yield
        return
    lease = TableLease(lake, name, run_id, poll=poll)
    lease.acquire()
    try:
        yield
    except BaseException:
        try:
            lease.release()
        except LeaseLost as lost:
            log.error("%s", lost)
        raise
    lease.release()


@contextmanager
def _local_lease(lake: Lake, name: str, run_id: str, poll: float) -> Iterator[None]:
    relative = lease_path(name)
    target = lake.path(relative)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    started = time.monotonic()
    said: float | None = None
    with open(target.removesuffix(".json") + ".lock", "a") as lock:
        while True:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = lake.read_record(relative) or {"run_id": "?"}
                said = _say_waiting(name, holder, started, said)
                time.sleep(poll)
        try:
            _say_taken(name, started, said)
            lake.write_json(relative, _record(name, run_id))
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
