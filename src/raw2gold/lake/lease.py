"""Table leases: one raw2gold writer at a time per Delta table on an S3 lake.

Delta's S3 log store checks that a commit file does not exist and then writes it, and S3A
writes it without ``If-None-Match``: two Spark drivers committing the same version of a table
in the same instant both pass the check, and one commit replaces the other (Delta documents
S3 as single-driver). A lease serialises raw2gold's writers of one table across drivers and
hosts: a small JSON file ``_state/leases/<kind>/<table>.json`` that a writer takes by
compare-and-swap (:meth:`Lake.swap_json`: a conditional PUT on S3), renews while it works and
marks released after. A writer that finds the lease held waits; a lease its holder stopped
renewing (killed, host gone) is taken over once it expires.

Local lakes take no lease: Delta commits there by an atomic rename, which refuses a second
writer of the same version.
"""

from __future__ import annotations

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

    def _mine(self, acquired_at: float | None = None) -> dict[str, Any]:
        now = time.time()
        return {
            "table": self.name,
            "run_id": self.run_id,
            "token": self.token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "acquired_at": _when(acquired_at or now),
            "expires": now + self.ttl,
            "expires_at": _when(now + self.ttl),
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
                current.get("expires_at"),
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
                waited = time.monotonic() - started
                if said is None or waited - said >= WAIT_LOG_SECONDS:
                    said = waited
                    log.info(
                        "%s: waiting for %s, which is writing the table (lease renewed until "
                        "%s; waited %.0f s)",
                        self.name,
                        _holder(held.lease),
                        held.lease.get("expires_at"),
                        waited,
                    )
                time.sleep(self.poll)
        if said is not None:
            log.info("%s: lease taken after waiting %.0f s", self.name, time.monotonic() - started)
        self._stop.clear()
        self._renewer = threading.Thread(
            target=self._renew_until_released, name=f"lease {self.name}", daemon=True
        )
        self._renewer.start()

    def _check_mine(self, current: dict[str, Any] | None) -> None:
        if not current or current.get("token") != self.token:
            other = _holder(current) if current else "nobody (the file is gone)"
            raise LeaseLost(
                f"{self.name}: this run's lease expired before it was renewed and {other} "
                f"holds it now, so the two may have written the table at once: check "
                f"`raw2gold history` or the Delta log, and run again"
            )

    def _renew(self, current: dict[str, Any] | None) -> dict[str, Any]:
        self._check_mine(current)
        assert current is not None
        return {**self._mine(), "acquired_at": current.get("acquired_at")}

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
            self._check_mine(current)
            assert current is not None
            return {**current, "released": True, "released_at": _when(time.time())}

        if self.lost:
            raise LeaseLost(self.lost)
        while True:
            try:
                self.lake.swap_json(self.path, released)
                return
            except ConcurrentWriteError:
                continue


@contextmanager
def table_lease(lake: Lake, name: str, run_id: str) -> Iterator[None]:
    """Hold the lease of table ``name`` (``processed.users``, ``gold.by_day``) while the block
    writes it, on an S3 lake; a local lake needs none (see the module's docstring)."""
    if lake.scheme != "s3":
        yield
        return
    lease = TableLease(lake, name, run_id)
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
