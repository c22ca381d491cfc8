"""Table leases: one raw2gold writer of a Delta table at a time, across Spark drivers (Delta's
commit is not atomic across processes on S3 nor on a local folder). S3 leases run against a
real S3-compatible server (SeaweedFS on 127.0.0.1)."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from raw2gold.config.models import LakeConfig
from raw2gold.lake import Lake
from raw2gold.lake.lease import LeaseLost, TableLease, lease_path, table_lease


def test_a_second_writer_waits_while_the_first_renews_its_lease(s3_lake: Lake, caplog) -> None:
    """A holds the lease more than twice its time to live, renewing it; B waits all along and
    takes it only once A releases it."""
    caplog.set_level(logging.INFO, logger="raw2gold.lake.lease")
    first = TableLease(s3_lake, "processed.users", "runA", ttl=1.0, poll=0.1)
    first.acquire()
    events: list[str] = []

    def second_writer() -> None:
        second = TableLease(s3_lake, "processed.users", "runB", ttl=1.0, poll=0.1)
        second.acquire()
        events.append("B took it")
        second.release()

    thread = threading.Thread(target=second_writer)
    thread.start()
    time.sleep(2.5)  # past A's first expiry twice: only its renewals keep B out
    events.append("A releases")
    first.release()
    thread.join(timeout=30)
    assert events == ["A releases", "B took it"]
    lease = s3_lake.read_json(lease_path("processed.users"))
    assert (lease["run_id"], lease["released"]) == ("runB", True)
    waiting = [r.getMessage() for r in caplog.records if "waiting for run runA" in r.getMessage()]
    assert waiting, "B says whom it waits for"


def test_a_lease_its_holder_stopped_renewing_is_taken_over(s3_lake: Lake, caplog) -> None:
    """A writer killed while it held the lease renews it no more: the next takes it once it
    has expired, saying whose it was."""
    gone = {"run_id": "runGone", "token": "t", "host": "h", "pid": 1, "released": False}
    s3_lake.write_json(lease_path("gold.by_day"), {**gone, "expires": time.time() - 1})
    lease = TableLease(s3_lake, "gold.by_day", "runB")
    lease.acquire()
    lease.release()
    taken = [r.getMessage() for r in caplog.records if "taking it over" in r.getMessage()]
    assert len(taken) == 1 and "run runGone (host h, pid 1) held its lease until 20" in taken[0]
    assert s3_lake.read_json(lease_path("gold.by_day"))["run_id"] == "runB"


def test_a_writer_whose_lease_was_taken_is_told(s3_lake: Lake) -> None:
    """Had A's renewals failed for longer than the lease lives, B took it over; A's release
    then fails in one line naming B, instead of A's run passing as if it had written alone."""
    lease = TableLease(s3_lake, "processed.orders", "runA")
    lease.acquire()
    taken = {**s3_lake.read_json(lease_path("processed.orders")), "run_id": "runB", "token": "x"}
    s3_lake.write_json(lease_path("processed.orders"), taken)
    with pytest.raises(LeaseLost, match=r"^processed.orders: this run's lease expired .* run runB"):
        lease.release()
    assert s3_lake.read_json(lease_path("processed.orders"))["run_id"] == "runB"


HOLDER = """
import sys, time
from raw2gold.config.models import LakeConfig
from raw2gold.lake import Lake
from raw2gold.lake.lease import table_lease

with table_lease(Lake(LakeConfig(uri=sys.argv[1])), "gold.by_day", "runA"):
    print("HELD", flush=True)
    time.sleep(600)
"""


def test_a_local_lease_is_freed_the_moment_its_holder_is_killed(tmp_path: Path, caplog) -> None:
    """On a local lake the lease is a lock the kernel holds for a process: a second writer
    waits, naming the holder, and takes it as soon as the holder is killed (SIGKILL: no
    cleanup ran), not after a time to live."""
    caplog.set_level(logging.INFO, logger="raw2gold.lake.lease")
    lake = Lake(LakeConfig(uri=str(tmp_path / "lake")))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, lake.config.uri], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "HELD"
        events: list[str] = []

        def second_writer() -> None:
            with table_lease(lake, "gold.by_day", "runB", poll=0.1):
                events.append("B took it")

        thread = threading.Thread(target=second_writer)
        thread.start()
        time.sleep(1.0)
        events.append("A killed")
        holder.kill()
        thread.join(timeout=30)
    finally:
        holder.kill()
        holder.wait()
    assert events == ["A killed", "B took it"]
    waiting = [r.getMessage() for r in caplog.records if "waiting for run runA" in r.getMessage()]
    assert waiting and f"pid {holder.pid})" in waiting[0]
    assert lake.read_json(lease_path("gold.by_day"))["run_id"] == "runB"
