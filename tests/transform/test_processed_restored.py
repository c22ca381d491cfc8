"""A processed table restored by hand to an earlier version (Delta RESTORE) holds the raw runs
that version had applied, and raw2gold applies the others again: processed stays every
committed raw run, deduplicated. Before, raw2gold read the raw runs applied from its newest
commit, older than the restore: the runs the restore took out were never applied again."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from raw2gold.config.loader import load_pipeline
from raw2gold.lake.layout import Lake
from raw2gold.transform.delta import delta_ref, log_version
from raw2gold.transform.processed import build_processed
from tests.transform.rawdata import shop_records, ts, write_raw_run
from tests.transform.reference import latest


def _emails(spark: Any, lake: Lake) -> dict[int, str]:
    table = spark.read.format("delta").load(lake.spark_uri(lake.processed_table("users")))
    return {r["id"]: r["email"] for r in table.collect()}


def test_raw_runs_a_restore_took_out_are_applied_again(
    tmp_path: Path, spark: Any, shop_pipeline: Path
) -> None:
    config = load_pipeline(shop_pipeline, str(tmp_path / "lake"))
    lake = Lake(config.lake)
    users = shop_records(users=20)["users"]
    write_raw_run(lake, "faker", "r1", {"users": users}, datetime(2026, 2, 1, tzinfo=UTC))
    build_processed(spark, config, "run1", tables=["users"])
    relative = lake.processed_table("users")
    run1_version = log_version(lake, relative)
    changed = [
        {**users[0], "email": "first@example.com", "updated_at": ts(9, 0)},
        {**users[0], "id": 100, "email": "new@example.com", "updated_at": ts(9, 1)},
    ]
    write_raw_run(lake, "faker", "r2", {"users": changed}, datetime(2026, 2, 2, tzinfo=UTC))
    build_processed(spark, config, "run2", tables=["users"])

    uri = lake.spark_uri(relative)
    spark.sql(f"RESTORE TABLE {delta_ref(uri)} TO VERSION AS OF {run1_version}").collect()
    newer = [{**users[1], "id": 200, "email": "later@example.com", "updated_at": ts(10, 0)}]
    write_raw_run(lake, "faker", "r3", {"users": newer}, datetime(2026, 2, 3, tzinfo=UTC))
    [result] = build_processed(spark, config, "run3", tables=["users"])
    assert sorted(result.raw_runs) == ["r2", "r3"]
    expected = {k: r["email"] for k, r in latest(lake, "faker", "users").items()}
    assert _emails(spark, lake) == expected
    assert expected[100] == "new@example.com" and expected[users[0]["id"]] == "first@example.com"

    [again] = build_processed(spark, config, "run4", tables=["users"])
    assert again.mode == "unchanged" and again.raw_runs == []

    # restored to a time: every raw run is merged again
    log_file = Path(lake.path(relative, f"_delta_log/{run1_version:020d}.json"))
    when = datetime.fromtimestamp(log_file.stat().st_mtime, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    spark.sql(f"RESTORE TABLE {delta_ref(uri)} TO TIMESTAMP AS OF '{when}'").collect()
    assert _emails(spark, lake) == {u["id"]: u["email"] for u in users}
    [result] = build_processed(spark, config, "run5", tables=["users"])
    assert sorted(result.raw_runs) == ["r1", "r2", "r3"]
    assert _emails(spark, lake) == expected
