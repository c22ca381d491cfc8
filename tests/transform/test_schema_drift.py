"""Schema drift in processed: a column that appears (or disappears) in the source, per policy."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from raw2gold.config.loader import load_pipeline
from raw2gold.lake.layout import Lake
from raw2gold.transform.processed import ProcessedError, build_processed
from tests.transform.rawdata import shop_records, ts, with_processed, write_raw_run

T1 = datetime(2026, 2, 1, 6, tzinfo=UTC)
T2 = datetime(2026, 2, 2, 6, tzinfo=UTC)
T3 = datetime(2026, 2, 3, 6, tzinfo=UTC)


def _users(lake_dir: Path, spark: Any) -> dict[int, dict[str, Any]]:
    df = spark.read.format("delta").load(str(lake_dir / "processed" / "users"))
    return {row["id"]: row.asDict() for row in df.collect()}


def _config(shop_pipeline: Path, lake_dir: Path, policy: str) -> Any:
    return with_processed(
        load_pipeline(shop_pipeline, str(lake_dir)), "users", extra_columns=policy
    )


def test_new_source_column_appears_in_processed_and_a_dropped_one_stays(
    tmp_path: Path, spark: Any, shop_pipeline: Path
) -> None:
    """Policy `keep` (the default): run 2 brings a new column; run 3 no longer has it."""
    lake_dir = tmp_path / "lake"
    config = load_pipeline(shop_pipeline, str(lake_dir))
    assert config.processed["users"].extra_columns == "keep"
    lake = Lake(config.lake)
    users = shop_records(users=5)["users"]
    write_raw_run(lake, "faker", "r1", {"users": users}, T1)
    [first] = build_processed(spark, config, "run1", tables=["users"])
    assert first.columns_added == []
    assert "loyalty_tier" not in _users(lake_dir, spark)[1]

    changed = [
        {**users[0], "updated_at": ts(5, 1), "loyalty_tier": "gold", "visits": 7},
        {**users[0], "id": 6, "updated_at": ts(5, 6), "loyalty_tier": "silver", "visits": 2},
    ]
    extra = {"loyalty_tier": pa.string(), "visits": pa.int64()}
    write_raw_run(lake, "faker", "r2", {"users": changed}, T2, extra_fields=extra)
    [second] = build_processed(spark, config, "run2", tables=["users"])
    assert second.mode == "merge"
    assert second.columns_added == ["loyalty_tier", "visits"]
    rows = _users(lake_dir, spark)
    assert len(rows) == 6
    assert (rows[1]["loyalty_tier"], rows[1]["visits"]) == ("gold", 7)
    assert (rows[6]["loyalty_tier"], rows[6]["visits"]) == ("silver", 2)
    assert rows[2]["loyalty_tier"] is None and rows[2]["visits"] is None
    types = dict(spark.read.format("delta").load(str(lake_dir / "processed/users")).dtypes)
    assert types["visits"] == "bigint" and types["age"] == "int"

    # The source drops the columns again: the MERGE still works and keeps stored values.
    later = [
        {**users[0], "email": "again1@example.com", "updated_at": ts(6, 1)},
        {**users[0], "id": 7, "updated_at": ts(6, 7)},
    ]
    write_raw_run(lake, "faker", "r3", {"users": later}, T3)
    [third] = build_processed(spark, config, "run3", tables=["users"])
    assert third.mode == "merge" and third.columns_added == []
    rows = _users(lake_dir, spark)
    assert rows[1]["email"] == "again1@example.com"
    assert rows[1]["loyalty_tier"] == "gold"
    assert rows[7]["loyalty_tier"] is None
    assert len(rows) == 7

    # Only new ids, above every stored one: appended (no MERGE), the same rows a MERGE inserts.
    newer = [
        {**users[0], "id": 8, "updated_at": ts(7, 8)},
        {**users[0], "id": 9, "updated_at": ts(7, 9)},
        {**users[0], "id": 9, "email": "older@example.com", "updated_at": ts(7, 1)},
    ]
    write_raw_run(lake, "faker", "r4", {"users": newer}, T3 + timedelta(days=1))
    [fourth] = build_processed(spark, config, "run4", tables=["users"])
    assert (fourth.mode, fourth.rows_inserted, fourth.rows) == ("append", 2, 9)
    rows = _users(lake_dir, spark)
    assert rows[9]["email"] == users[0]["email"]  # the latest record of id 9
    assert rows[8]["loyalty_tier"] is None and rows[1]["loyalty_tier"] == "gold"


def test_policy_drop_ignores_and_fail_names_the_stream_and_columns(
    tmp_path: Path, spark: Any, shop_pipeline: Path
) -> None:
    extra = {"loyalty_tier": pa.string()}
    users = [{**u, "loyalty_tier": "gold"} for u in shop_records(users=3)["users"]]

    dropping = _config(shop_pipeline, tmp_path / "drop", "drop")
    write_raw_run(Lake(dropping.lake), "faker", "r1", {"users": users}, T1, extra_fields=extra)
    [result] = build_processed(spark, dropping, "run1", tables=["users"])
    assert result.rows == 3
    assert "loyalty_tier" not in _users(tmp_path / "drop", spark)[1]

    failing = _config(shop_pipeline, tmp_path / "fail", "fail")
    write_raw_run(Lake(failing.lake), "faker", "r1", {"users": users}, T1, extra_fields=extra)
    with pytest.raises(ProcessedError) as excinfo:
        build_processed(spark, failing, "run1", tables=["users"])
    message = str(excinfo.value)
    assert "\n" not in message
    assert "faker.users" in message and "loyalty_tier" in message
    assert "extra_columns" in message
    assert not (tmp_path / "fail" / "processed" / "users").exists()


def _scored_first_run(
    tmp_path: Path, shop_pipeline: Path, users: int
) -> tuple[Path, Any, Lake, list[dict[str, Any]]]:
    """A lake whose first raw run of users has an undeclared integer column `score` (1)."""
    lake_dir = tmp_path / "lake"
    config = load_pipeline(shop_pipeline, str(lake_dir))
    lake = Lake(config.lake)
    rows = shop_records(users=users)["users"]
    first = [{**u, "score": 1} for u in rows]
    write_raw_run(lake, "faker", "r1", {"users": first}, T1, extra_fields={"score": pa.int64()})
    return lake_dir, config, lake, rows


def test_a_column_whose_raw_type_changed_is_read_as_a_type_every_run_fits(
    tmp_path: Path, spark: Any, shop_pipeline: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two raw runs processed together (a first load, later a full refresh) whose files differ
    in a column's type: the source's declared `age` went from integer to text, an undeclared
    `score` from integer to number (as value kinds inferred per landing do). Spark cannot merge
    such footers; each run is read with its own types, `age` as text and `score` as double, and
    typing casts them as declared: a value that does not cast is quarantined, not lost."""
    lake_dir, config, lake, users = _scored_first_run(tmp_path, shop_pipeline, 4)
    second = [
        {**users[0], "age": "31", "updated_at": ts(5, 1), "score": 2.5},
        {**users[1], "age": "forty", "updated_at": ts(5, 2), "score": 3.0},
        {**users[2], "id": 5, "age": None, "updated_at": ts(5, 5), "score": None},
    ]
    changed = {"age": pa.string(), "score": pa.float64()}
    write_raw_run(lake, "faker", "r2", {"users": second}, T2, extra_fields=changed)

    with caplog.at_level("WARNING", logger="raw2gold.transform.processed"):
        [result] = build_processed(spark, config, "run1", tables=["users"])
    assert "raw runs hold age, score with different types: read as age string, score double" in (
        caplog.text
    )
    assert (result.rows_read, result.rows_quarantined, result.rows) == (7, 1, 5)
    expected = {
        1: (31, 2.5),  # r2's newer row
        2: (users[1]["age"], 1.0),  # r2's row has an age that is no integer: r1's stays
        3: (users[2]["age"], 1.0),
        4: (users[3]["age"], 1.0),
        5: (None, None),
    }
    assert {i: (r["age"], r["score"]) for i, r in _users(lake_dir, spark).items()} == expected
    types = dict(spark.read.format("delta").load(str(lake_dir / "processed/users")).dtypes)
    assert (types["age"], types["score"]) == ("int", "double")
    quarantine = spark.read.format("delta").load(str(lake_dir / "quarantine" / "users"))
    reasons = [(row["raw_run_id"], row["reason"]) for row in quarantine.collect()]
    assert reasons == [("r2", "column age: cannot cast forty to int")]

    [again] = build_processed(spark, config, "run2", full_refresh=True, tables=["users"])
    assert (again.mode, again.rows_read, again.rows) == ("overwrite", 7, 5)
    assert {i: (r["age"], r["score"]) for i, r in _users(lake_dir, spark).items()} == expected
    assert quarantine.count() == 1  # the same bad record, not quarantined twice


def test_an_undeclared_column_keeps_its_type_and_a_value_that_does_not_fit_is_quarantined(
    tmp_path: Path, spark: Any, shop_pipeline: Path
) -> None:
    """`score` (not declared) arrived as integers and is a bigint column; a later raw run has
    it as text. Its values are cast to bigint like a declared column's: "7" is stored as 7 and
    "x" sends its record to quarantine, where the MERGE used to fail the whole table."""
    lake_dir, config, lake, users = _scored_first_run(tmp_path, shop_pipeline, 3)
    build_processed(spark, config, "run1", tables=["users"])
    later = [
        {**users[0], "updated_at": ts(5, 1), "score": "7"},
        {**users[1], "email": "two@example.com", "updated_at": ts(5, 2), "score": "x"},
        {**users[2], "updated_at": ts(5, 3), "score": None},
    ]
    write_raw_run(lake, "faker", "r2", {"users": later}, T2, extra_fields={"score": pa.string()})
    [result] = build_processed(spark, config, "run2", tables=["users"])
    assert (result.mode, result.rows_quarantined, result.rows_updated) == ("merge", 1, 2)
    rows = _users(lake_dir, spark)
    assert {i: (r["email"], r["score"]) for i, r in rows.items()} == {
        1: (users[0]["email"], 7),
        2: (users[1]["email"], 1),  # its newer record is quarantined: the stored row stays
        3: (users[2]["email"], None),
    }
    types = dict(spark.read.format("delta").load(str(lake_dir / "processed/users")).dtypes)
    assert types["score"] == "bigint"
    quarantine = spark.read.format("delta").load(str(lake_dir / "quarantine" / "users"))
    [bad] = quarantine.collect()
    assert bad["reason"] == "column score: cannot cast x to bigint"
    assert json.loads(bad["record"])["score"] == "x"


def test_epoch_milliseconds_declared_as_a_timestamp_are_quarantined_not_stored_in_year_58000(
    tmp_path: Path, spark: Any, shop_pipeline: Path
) -> None:
    """A number cast to a timestamp is seconds since 1970. A source sending epoch
    milliseconds gave timestamps in the year ~58000, stored without a word; a value outside
    years 1 to 9999 now goes to quarantine with the reason and the fix."""
    lake_dir = tmp_path / "lake"
    shop = load_pipeline(shop_pipeline, str(lake_dir))
    columns = {**shop.processed["users"].columns, "last_login": "timestamp"}
    config = with_processed(shop, "users", columns=columns)
    lake = Lake(config.lake)
    users = shop_records(users=3)["users"]
    seconds = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    logins = [seconds, seconds * 1000, None]
    rows = [{**u, "last_login": login} for u, login in zip(users, logins, strict=True)]
    write_raw_run(lake, "faker", "r1", {"users": rows}, T1, extra_fields={"last_login": pa.int64()})
    [result] = build_processed(spark, config, "run1", tables=["users"])
    assert result.rows_quarantined == 1
    table = spark.read.format("delta").load(str(lake_dir / "processed" / "users"))
    stored = {
        r["id"]: r["epoch"]
        for r in table.selectExpr("id", "CAST(last_login AS BIGINT) AS epoch").collect()
    }
    assert stored == {users[0]["id"]: seconds, users[2]["id"]: None}
    quarantine = spark.read.format("delta").load(str(lake_dir / "quarantine" / "users"))
    [bad] = quarantine.collect()
    assert bad["reason"].startswith(f"column last_login: cannot cast {seconds * 1000} to timestamp")
    assert "epoch milliseconds?" in bad["reason"] and "timestamp_millis" in bad["reason"]


def test_a_record_the_changed_definition_types_leaves_quarantine_as_it_enters_processed(
    tmp_path: Path, spark: Any, shop_pipeline: Path
) -> None:
    """Following the quarantine's hint (declare epoch milliseconds `bigint`) rebuilds the table
    from every raw run, and the record it now types is in processed. It also stayed in
    quarantine, so `raw2gold quarantine` still listed it as rejected: counted twice. A rebuild's
    verdict now replaces the quarantine rows of the raw runs it read; a record it still rejects
    (a null key) stays, and an incremental run after it adds its own."""
    from raw2gold.quality.quarantine import read_quarantine

    lake_dir = tmp_path / "lake"
    shop = load_pipeline(shop_pipeline, str(lake_dir))
    declared = shop.processed["users"].columns

    def with_login(kind: str) -> Any:
        return with_processed(shop, "users", columns={**declared, "last_login": kind})

    lake = Lake(shop.lake)
    users = shop_records(users=4)["users"]
    seconds = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    logins = [seconds, seconds * 1000, seconds, None]
    rows = [{**u, "last_login": login} for u, login in zip(users, logins, strict=True)]
    rows[2]["id"] = None
    login = {"last_login": pa.int64()}
    write_raw_run(lake, "faker", "r1", {"users": rows}, T1, extra_fields=login)
    [first] = build_processed(spark, with_login("timestamp"), "run1", tables=["users"])
    assert first.rows_quarantined == 2
    assert read_quarantine(shop, "users").rows == 2

    [rebuilt] = build_processed(spark, with_login("bigint"), "run2", tables=["users"])
    assert rebuilt.mode == "overwrite" and rebuilt.rows_quarantined == 1
    assert {r["id"]: r["last_login"] for r in _users(lake_dir, spark).values()} == {
        users[0]["id"]: seconds,
        users[1]["id"]: seconds * 1000,
        users[3]["id"]: None,
    }
    report = read_quarantine(shop, "users")
    assert report.rows == 1
    [kept] = report.sample
    assert kept["raw_run_id"] == "r1" and kept["quarantined_by_run"] == "run1"
    assert "primary key" in kept["reason"]

    later = [{**users[0], "id": None, "updated_at": ts(9, 1), "last_login": seconds}]
    write_raw_run(lake, "faker", "r2", {"users": later}, T2, extra_fields=login)
    [merged] = build_processed(spark, with_login("bigint"), "run3", tables=["users"])
    assert merged.mode != "overwrite" and merged.rows_quarantined == 1
    assert sorted(r["raw_run_id"] for r in read_quarantine(shop, "users").sample) == ["r1", "r2"]

    [again] = build_processed(
        spark, with_login("bigint"), "run4", tables=["users"], full_refresh=True
    )
    assert again.rows_quarantined == 2
    assert read_quarantine(shop, "users").rows == 2
