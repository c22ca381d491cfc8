"""Two runs processing the same raw run at once (`raw2gold run` beside a scheduled run): one
commits, the other writes nothing and says so, instead of appending the same rows again."""

from __future__ import annotations

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
    tmp_path: Path, spark: Any, shop_pipeline: Path, monkeypatch: pytest.MonkeyPatch, new_ids: bool
) -> None:
    """Run B reads the table, then run A processes the same raw run and commits before B
    writes (A runs inside B's write step here, the window two processes share). Blind appends
    never conflict in Delta: B appended the same five users again (seen with two processes)."""
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
