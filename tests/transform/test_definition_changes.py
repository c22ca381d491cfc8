"""A processed table whose definition changes in pipeline.yaml (a declared type, the primary key)
is rebuilt from every raw run, instead of keeping rows typed and deduplicated the old way."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from raw2gold.config.loader import load_pipeline
from raw2gold.lake.layout import Lake
from raw2gold.transform.job import STAGES, run_stage
from tests.transform.rawdata import shop_records, ts, users_pipeline, write_raw_run

GOLD = "  ages:\n    sql: ages.sql\n    format: delta\n"


def _pipeline(folder: Path, text: str) -> Any:
    (folder / "pipeline.yaml").write_text(text)
    (folder / "ages.sql").write_text("SELECT id, email, age FROM {{ ref('users') }}")
    return load_pipeline(folder / "pipeline.yaml")


def _processed(spark: Any, config: Any) -> Any:
    lake = Lake(config.lake)
    return spark.read.format("delta").load(lake.spark_uri(lake.processed_table("users")))


def test_a_wider_declared_type_rebuilds_the_table(tmp_path: Path, spark: Any) -> None:
    """`age: int` became `bigint` for a value over 2^31: the table kept its int column and every
    run failed with DELTA_CAST_OVERFLOW_IN_TABLE_WRITE (a narrower change would have been stored
    into the old type without a word)."""
    text = users_pipeline("types", GOLD)
    config = _pipeline(tmp_path, text)
    lake = Lake(config.lake)
    users = shop_records(users=10)["users"]
    write_raw_run(lake, "faker", "r1", {"users": users}, datetime(2026, 3, 1, tzinfo=UTC))
    for stage in STAGES:
        run_stage(config, stage, "run1", spark=spark)

    config = _pipeline(tmp_path, text.replace("age: int", "age: bigint"))
    changed = {**users[3], "age": 3_000_000_000, "updated_at": ts(9)}
    write_raw_run(lake, "faker", "r2", {"users": [changed]}, datetime(2026, 3, 2, tzinfo=UTC))
    summary = run_stage(config, "transform", "run2", spark=spark)
    [result] = summary["processed"].values()
    assert result["mode"] == "overwrite"
    assert result["rebuilt_because"] == ["columns.age: int -> bigint"]
    assert result["raw_runs"] == ["r1", "r2"]
    for stage in ("check", "publish"):
        run_stage(config, stage, "run2", spark=spark)
    table = _processed(spark, config)
    assert table.schema["age"].dataType.simpleString() == "bigint"
    expected = {u["id"]: u["age"] for u in users} | {changed["id"]: changed["age"]}
    assert {r["id"]: r["age"] for r in table.collect()} == expected

    # the same definition again: an ordinary incremental run
    write_raw_run(lake, "faker", "r3", {"users": []}, datetime(2026, 3, 3, tzinfo=UTC))
    summary = run_stage(config, "transform", "run3", spark=spark)
    assert [r["rebuilt_because"] for r in summary["processed"].values()] == [[]]


def test_a_new_primary_key_rebuilds_the_table_one_row_per_new_key(
    tmp_path: Path, spark: Any
) -> None:
    """Keyed by id, two users shared an email; keyed by email after the change, a MERGE by email
    kept both rows for good (and updated both with one incoming row)."""
    text = users_pipeline("keys", GOLD)
    config = _pipeline(tmp_path, text)
    lake = Lake(config.lake)
    users = shop_records(users=8)["users"]
    users[5] = {**users[5], "email": users[2]["email"], "updated_at": ts(8)}  # newer than [2]
    write_raw_run(lake, "faker", "r1", {"users": users}, datetime(2026, 3, 1, tzinfo=UTC))
    for stage in STAGES:
        run_stage(config, stage, "run1", spark=spark)
    assert _processed(spark, config).count() == 8

    config = _pipeline(tmp_path, text.replace("primary_key: [id]", "primary_key: [email]"))
    write_raw_run(lake, "faker", "r2", {"users": []}, datetime(2026, 3, 2, tzinfo=UTC))
    summary = run_stage(config, "transform", "run2", spark=spark)
    [result] = summary["processed"].values()
    assert result["rebuilt_because"] == ["primary_key: ['id'] -> ['email']"]
    by_email: dict[str, dict[str, Any]] = {}
    for user in sorted(users, key=lambda u: u["updated_at"]):  # the latest record per email
        by_email[user["email"]] = user
    rows = _processed(spark, config).collect()
    assert len(rows) == len(by_email) == 7
    assert {r["email"]: r["id"] for r in rows} == {e: u["id"] for e, u in by_email.items()}
