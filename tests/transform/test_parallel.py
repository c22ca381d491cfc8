"""Independent table steps run side by side, each in its own session of one Spark application."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from raw2gold.config.models import LakeConfig
from raw2gold.lake.layout import Lake
from raw2gold.transform.delta import commit_metadata, log_commit
from raw2gold.transform.parallel import WORKERS_ENV, in_parallel


def test_steps_run_side_by_side_after_their_dependencies(spark: Any) -> None:
    before = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "3")  # a session setting the steps inherit
    try:
        _side_by_side(spark)
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", before)


def _side_by_side(spark: Any) -> None:
    spans: dict[str, tuple[float, float]] = {}
    sessions: dict[str, Any] = {}

    def step(session: Any, name: str) -> int:
        started = time.monotonic()
        sessions[name] = session
        session.createDataFrame([(name,)], "n string").createOrReplaceTempView("mine")
        count = session.range(100_000).selectExpr("sum(id)").collect()[0][0]
        time.sleep(0.3)
        assert session.table("mine").collect()[0][0] == name  # views are per step
        spans[name] = (started, time.monotonic())
        assert session.conf.get("spark.sql.shuffle.partitions") == "3"
        return int(count)

    results = in_parallel(spark, ["a", "b", "c"], step, after={"c": {"a"}})
    assert results == dict.fromkeys("abc", 4_999_950_000)
    assert spans["c"][0] >= spans["a"][1]  # c waited for a
    assert spans["b"][0] < spans["a"][1]  # b ran alongside a
    assert len({id(s) for s in sessions.values()}) == 3
    assert all(s.sparkContext is spark.sparkContext for s in sessions.values())


def test_a_failure_stops_new_steps_and_is_raised(spark: Any) -> None:
    started: list[str] = []
    lock = threading.Lock()

    def step(session: Any, name: str) -> str:
        with lock:
            started.append(name)
        if name == "bad":
            raise ValueError("gold bad failed: no such column")
        return name

    with pytest.raises(ValueError, match="gold bad failed"):
        in_parallel(spark, ["bad", "later"], step, after={"later": {"bad"}})
    assert started == ["bad"]


def test_one_at_a_time_when_asked(spark: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKERS_ENV, "1")
    seen: list[Any] = []
    in_parallel(spark, ["a", "b"], lambda session, name: seen.append(session))
    assert seen == [spark, spark]


def test_each_steps_delta_commit_carries_its_own_metadata(spark: Any, tmp_path: Path) -> None:
    """Processed tables record their raw runs in their commits' metadata: steps that commit at
    the same moment (all inside their metadata block at once) must not swap it."""
    names = ["a", "b", "c"]
    everyone_set = threading.Barrier(len(names), timeout=60)

    def step(session: Any, name: str) -> None:
        with commit_metadata(session, {"raw_runs": [f"run-of-{name}"]}):
            everyone_set.wait()  # all three metadata values are set before any commit
            session.range(5).write.format("delta").save(str(tmp_path / name))

    in_parallel(spark, names, step)
    lake = Lake(LakeConfig(uri=str(tmp_path)))
    for name in names:
        commit = log_commit(lake, name, 0) or {}
        assert json.loads(commit["userMetadata"]) == {"raw_runs": [f"run-of-{name}"]}
