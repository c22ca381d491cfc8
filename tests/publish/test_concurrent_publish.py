"""Two runs publishing the same gold table (`raw2gold run` beside a scheduled run): a run whose
build another run's publish overtook publishes nothing to that table and says so, instead of
putting back what its older build computed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from raw2gold.lake.layout import Lake
from raw2gold.publish import publisher
from raw2gold.publish.publisher import PublishError, gold_arrow_table, publish_history
from raw2gold.transform.job import STAGES, StageError, run_stage
from tests.publish.digest import tree_digest
from tests.publish.published import new_users, published


def _users(config: Any) -> int:
    """Users in gold, counted from whichever of the two tables the pipeline has."""
    if "ages" in config.gold:
        return int(gold_arrow_table(config, "ages").num_rows)
    return sum(r["users"] for r in gold_arrow_table(config, "by_nationality").to_pylist())


def test_a_build_another_run_published_over_is_notpublished(tmp_path: Path, spark: Any) -> None:
    """Run A builds and checks gold from 23 users; run B, started later, publishes 26; then A's
    publish would have put the 23 back (it did: gold went back to 23 users)."""
    config = published(tmp_path, spark, ["by_nationality", "ages"])
    lake = Lake(config.lake)
    new_users(lake, "r2", 100, 2)
    for stage in ("transform", "check"):
        run_stage(config, stage, "runA", spark=spark)
    new_users(lake, "r3", 200, 3)
    for stage in STAGES:
        run_stage(config, stage, "runB", spark=spark)
    assert (
        _users(config)
        == sum(r["users"] for r in gold_arrow_table(config, "by_nationality").to_pylist())
        == 26
    )
    gold = Path(lake.path("gold"))
    before = tree_digest(gold)

    with pytest.raises(StageError) as caught:
        run_stage(config, "publish", "runA", spark=spark)
    assert str(caught.value).splitlines()[0] == (
        "gold by_nationality: another run (runB) published the table after this "
        "run built it, so this run published nothing to it (its build may be older than what "
        "is published); run again to build from the newest data"
    )
    assert caught.value.summary["final"] is True  # a retry of A's publish would fail alike
    assert tree_digest(gold) == before
    assert [e["run_id"] for e in publish_history(config, "ages")] == ["runB", "run1"]

    # the next run goes through: B's publish already holds the newest data
    summaries = [run_stage(config, stage, "runC", spark=spark) for stage in STAGES]
    assert {r["action"] for r in summaries[-1]["gold"].values()} == {"unchanged"}


@pytest.mark.parametrize("table", ["by_nationality", "ages"])
def test_of_two_publishes_at_once_one_commits(
    tmp_path: Path,
    spark: Any,
    monkeypatch: pytest.MonkeyPatch,
    table: str,
    without_table_leases: None,
) -> None:
    """Runs A and B built on the same published table; A publishes inside B's publish of it,
    after B looked for other runs' publishes (the window two processes share): Delta keeps
    one of the two commits (its transaction id), the Parquet pointer is switched once. The
    Delta table's lease keeps two publishes apart before this (tests/lake/test_lease.py); this
    is the guard behind it, tested with the lease off."""
    config = published(tmp_path, spark, [table])
    lake = Lake(config.lake)
    new_users(lake, "r2", 100, 2)
    for stage in ("transform", "check"):
        run_stage(config, stage, "runA", spark=spark)
    for stage in ("transform", "check"):
        run_stage(config, stage, "runB", spark=spark)
    write = publisher._write_delta if table == "by_nationality" else publisher._write_pointer
    name = write.__name__
    inner: list[Any] = []

    def another_run_first(*args: Any, **kwargs: Any) -> Any:
        if not inner:
            inner.append(None)  # run A's own write goes straight through
            inner[0] = publisher.publish(spark, config, "runA")
        return write(*args, **kwargs)

    monkeypatch.setattr(publisher, name, another_run_first)
    with pytest.raises(PublishError) as caught:
        publisher.publish(spark, config, "runB")
    assert str(caught.value).startswith(f"gold {table}: another run (runA) published the table")
    assert [e["run_id"] for e in publish_history(config, table)] == ["runA", "run1"]
    assert [r.action for r in inner[0]] == ["published"]
    assert _users(config) == 23


def test_of_two_parquet_pointer_switches_in_one_instant_one_stands(
    tmp_path: Path, spark: Any, monkeypatch: pytest.MonkeyPatch, without_table_leases: None
) -> None:
    """Runs A and B built on the same Parquet publish; A's publish starts (in a thread) while B
    has compared the pointer's number and is writing the pointer, the instant the test above
    leaves out. Before, both found the number they built on and both switched the pointer (A's
    switch, then B's over it: A's run reported its publish, which no pointer named and whose
    version B's publish deleted; seen). Now the compare and the switch are one step: A waits,
    finds B's publish and publishes nothing. (The table's lease keeps two publishes apart before
    this, see the next test; this is the guard behind it, tested with the lease off.)"""
    import threading
    import time

    from raw2gold.lake.layout import Lake as LakeClass

    config = published(tmp_path, spark, ["ages"])
    lake = Lake(config.lake)
    new_users(lake, "r2", 100, 2)
    for run in ("runA", "runB"):
        for stage in ("transform", "check"):
            run_stage(config, stage, run, spark=spark)
    write_json, swap_json = LakeClass.write_json, LakeClass.swap_json
    outcome: dict[str, Any] = {}
    started: list[threading.Thread] = []
    a_swaps, run_b_thread = threading.Event(), threading.current_thread()

    def swap_noting_a(self: Any, relative: str, replace: Any) -> Any:
        if threading.current_thread() is not run_b_thread:
            a_swaps.set()
        return swap_json(self, relative, replace)

    def run_a() -> None:
        try:
            outcome["A"] = publisher.publish(spark, config, "runA")
        except PublishError as exc:
            outcome["A"] = exc

    def a_starts_at_bs_pointer_write(self: Any, relative: str, payload: Any) -> None:
        if relative.endswith("/_current.json") and not started:
            started.append(threading.Thread(target=run_a))
            started[0].start()
            deadline = time.monotonic() + 60
            while started[0].is_alive() and not a_swaps.is_set() and time.monotonic() < deadline:
                started[0].join(timeout=0.1)  # before: A published in full meanwhile
            started[0].join(timeout=1)  # A's switch waits for B's
        write_json(self, relative, payload)

    monkeypatch.setattr(LakeClass, "write_json", a_starts_at_bs_pointer_write)
    monkeypatch.setattr(LakeClass, "swap_json", swap_noting_a)
    [result_b] = publisher.publish(spark, config, "runB")
    started[0].join(timeout=60)
    assert result_b.action == "published"
    assert isinstance(outcome["A"], PublishError)
    assert str(outcome["A"]).startswith("gold ages: another run (runB) published the table")
    assert [e["run_id"] for e in publish_history(config, "ages")] == ["runB", "run1"]
    assert sorted(p.name for p in Path(lake.path("gold/ages")).glob("version=*")) == [
        "version=run1",
        "version=runB",
    ]
    assert _users(config) == 23


def test_a_parquet_publish_waits_for_the_tables_lease(tmp_path: Path, spark: Any) -> None:
    """A Parquet publish prunes every version folder its pointer does not name, so while
    another run holds the table (writing its own version folder, not yet named by a pointer),
    a publish waits for it: before, it wrote its folder and pruned around the other run's."""
    import threading
    import time

    from raw2gold.lake.lease import table_lease

    config = published(tmp_path, spark, ["ages"])
    lake = Lake(config.lake)
    new_users(lake, "r2", 100, 2)
    for stage in ("transform", "check"):
        run_stage(config, stage, "runB", spark=spark)
    results: list[Any] = []
    other = Path(lake.path("gold/ages/version=runA"))
    with table_lease(lake, "gold.ages", "runA"):
        other.mkdir()  # run A's version, being written
        (other / "part-00000.parquet").write_bytes(b"being written")
        thread = threading.Thread(
            target=lambda: results.append(publisher.publish(spark, config, "runB"))
        )
        thread.start()
        time.sleep(3)
        assert thread.is_alive() and not Path(lake.path("gold/ages/version=runB")).exists()
        waited = other.exists()
    thread.join(timeout=120)
    assert waited and not thread.is_alive()
    assert [r.action for r in results[0]] == ["published"]
    assert [e["run_id"] for e in publish_history(config, "ages")] == ["runB", "run1"]
