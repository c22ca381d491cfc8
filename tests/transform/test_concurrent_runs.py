"""Two runs processing the same raw run at once (`raw2gold run` beside a scheduled run): one
commits, the other writes nothing and says so, instead of appending the same rows again."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from raw2gold.config.loader import load_pipeline
from raw2gold.lake.layout import Lake
from raw2gold.transform import processed
from raw2gold.transform.processed import ProcessedError, build_processed
from tests.transform.rawdata import shop_records, ts, write_raw_run


@pytest.mark.parametrize("new_ids", [True, False], ids=["append", "merge"])
def test_a_run_that_commits_while_another_processes_keeps_the_other_out(
    tmp_path: Path,
    spark: Any,
    shop_pipeline: Path,
    monkeypatch: pytest.MonkeyPatch,
    new_ids: bool,
    without_table_leases: None,
) -> None:
    """Run B reads the table, then run A processes the same raw run and commits before B
    writes (A runs inside B's write step here, the window two processes share). Blind appends
    never conflict in Delta: B appended the same five users again (seen with two processes).
    The table lease keeps two runs apart before this (tests/lake/test_lease.py); this is the
    guard behind it, tested with the lease off."""
    config = load_pipeline(shop_pipeline, str(tmp_path / "lake"))
    lake = Lake(config.lake)
    users = shop_records(users=20)["users"]
    write_raw_run(lake, "faker", "r1", {"users": users}, datetime(2026, 2, 1, tzinfo=UTC))
    build_processed(spark, config, "run0", tables=["users"])
    first = 100 if new_ids else 1
    changed = [
        {**users[0], "id": first + i, "email": f"late{i}@example.com", "updated_at": ts(9, i)}
        for i in range(5)
    ]
    write_raw_run(lake, "faker", "r2", {"users": changed}, datetime(2026, 2, 2, tzinfo=UTC))

    write = processed._merge_or_append
    inner: list[Any] = []

    def another_run_first(*args: Any, **kwargs: Any) -> None:
        if not inner:
            inner.append(None)  # run A's own write step goes straight through
            inner[0] = build_processed(spark, config, "runA", tables=["users"])
        write(*args, **kwargs)

    monkeypatch.setattr(processed, "_merge_or_append", another_run_first)
    with pytest.raises(ProcessedError) as caught:
        build_processed(spark, config, "runB", tables=["users"])
    assert str(caught.value) == (
        "processed users: another run (runA) wrote the table while this run was processing it, "
        "so this run wrote nothing to it (Delta keeps one of two such commits: no raw run is "
        "applied twice); run again to apply what is left"
    )
    [[run_a]] = inner
    assert run_a.mode == ("append" if new_ids else "merge") and run_a.raw_runs == ["r2"]
    table = spark.read.format("delta").load(lake.spark_uri(lake.processed_table("users")))
    rows = {r["id"]: r["email"] for r in table.collect()}
    expected = {u["id"]: u["email"] for u in users} | {c["id"]: c["email"] for c in changed}
    assert table.count() == len(rows) == len(expected) and rows == expected

    monkeypatch.setattr(processed, "_merge_or_append", write)
    [again] = build_processed(spark, config, "runB", tables=["users"])
    assert again.mode == "unchanged" and again.raw_runs == []


def test_a_run_waits_for_the_run_writing_the_table(
    tmp_path: Path, spark: Any, shop_pipeline: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """Run A is processing users when run B starts: B waits for A's lease on the table, then
    finds the raw run applied and writes nothing, without an error to run again for."""
    caplog.set_level(logging.INFO, logger="raw2gold.lake.lease")
    config = load_pipeline(shop_pipeline, str(tmp_path / "lake"))
    lake = Lake(config.lake)
    users = shop_records(users=20)["users"]
    write_raw_run(lake, "faker", "r1", {"users": users}, datetime(2026, 2, 1, tzinfo=UTC))
    build_processed(spark, config, "run0", tables=["users"])
    changed = [{**users[0], "id": 100 + i, "updated_at": ts(9, i)} for i in range(5)]
    write_raw_run(lake, "faker", "r2", {"users": changed}, datetime(2026, 2, 2, tzinfo=UTC))

    process = processed._process_table
    a_inside = threading.Event()

    def a_holds_the_table_a_while(*args: Any, **kwargs: Any) -> Any:
        if "runA" in args:  # (spark, config, lake, table, run_id, full_refresh)
            a_inside.set()
            time.sleep(2)
        return process(*args, **kwargs)

    monkeypatch.setattr(processed, "_process_table", a_holds_the_table_a_while)
    results: dict[str, Any] = {}
    run_a = threading.Thread(
        target=lambda: results.update(a=build_processed(spark, config, "runA", tables=["users"]))
    )
    run_a.start()
    assert a_inside.wait(timeout=60)
    [run_b] = build_processed(spark, config, "runB", tables=["users"])
    run_a.join(timeout=120)
    [a] = results["a"]
    assert (a.mode, a.raw_runs) == ("append", ["r2"])
    assert (run_b.mode, run_b.raw_runs) == ("unchanged", [])
    waited = [r.getMessage() for r in caplog.records if "waiting for run runA" in r.getMessage()]
    assert waited and waited[0].startswith("processed.users: waiting for run runA (host ")
    table = spark.read.format("delta").load(lake.spark_uri(lake.processed_table("users")))
    assert sorted(r["id"] for r in table.collect()) == sorted(u["id"] for u in users + changed)
