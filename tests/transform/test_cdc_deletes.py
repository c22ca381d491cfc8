"""Deletes from CDC sources: a key whose latest record is a deletion leaves processed and gold.

Airbyte's CDC sources (Postgres, MySQL, SQL Server) emit a deleted source row as a record with
`_ab_cdc_deleted_at` set. Processed and gold must equal the independent computation (latest
record per key, deletions left out) after every run, however the records arrive.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from raw2gold.config.loader import load_pipeline
from raw2gold.config.models import MaintenanceConfig
from raw2gold.lake.layout import Lake
from raw2gold.orchestrate.summary import processed_note, run_summary
from raw2gold.transform.job import STAGES, run_stage
from raw2gold.transform.maintenance import delta_tables
from raw2gold.transform.processed import ProcessedError, build_processed
from tests.transform.rawdata import (
    shop_records,
    ts,
    with_processed,
    write_raw_run,
)
from tests.transform.reference import assert_gold_matches_reference, first_shop_run, latest

CDC = {"_ab_cdc_deleted_at": pa.string()}
T1, T2, T3, T4 = (datetime(2026, 3, d, 6, tzinfo=UTC) for d in (1, 2, 3, 4))


def _users(lake_dir: Path, spark: Any) -> dict[int, dict[str, Any]]:
    df = spark.read.format("delta").load(str(lake_dir / "processed" / "users"))
    return {row["id"]: row.asDict() for row in df.collect()}


def _assert_users_match(
    lake_dir: Path, lake: Lake, spark: Any, castable: tuple[str, ...] = ()
) -> None:
    """Processed users equal the independent computation: the latest raw record per id,
    deletions left out (compared by e-mail, which the updates change)."""
    got = _users(lake_dir, spark)
    expected = latest(lake, "faker", "users", castable)
    assert {k: r["email"] for k, r in got.items()} == {k: r["email"] for k, r in expected.items()}
    assert all(r["_ab_cdc_deleted_at"] is None for r in got.values())


def _delete(user: dict[str, Any], day: int) -> dict[str, Any]:
    """A CDC deletion record of `user` (as Postgres sends it: the key and the old values)."""
    return {**user, "updated_at": ts(day, user["id"]), "_ab_cdc_deleted_at": ts(day, user["id"])}


def _first_run(tmp_path: Path, shop_pipeline: Path, count: int) -> tuple[Path, Any, Lake, Any]:
    """The shop pipeline on a new lake whose first raw run holds `count` users with the CDC
    column; the lake folder, config, lake and users by id."""
    lake_dir = tmp_path / "lake"
    config = load_pipeline(shop_pipeline, str(lake_dir))
    lake = Lake(config.lake)
    users = {u["id"]: u for u in shop_records(users=count)["users"]}
    write_raw_run(lake, "faker", "r1", {"users": list(users.values())}, T1, extra_fields=CDC)
    return lake_dir, config, lake, users


def test_deletions_remove_keys_and_older_records_never_bring_them_back(
    tmp_path: Path, spark: Any, shop_pipeline: Path
) -> None:
    lake_dir, config, lake, users = _first_run(tmp_path, shop_pipeline, 6)
    [first] = build_processed(spark, config, "run1", tables=["users"])
    assert (first.mode, first.rows) == ("overwrite", 6)

    run2 = [
        _delete(users[2], 5),
        _delete({**users[1], "id": 99}, 5),  # a key processed never had: nothing to delete
        {**users[3], "email": "three@example.com", "updated_at": ts(5, 3)},
        {**users[1], "id": 7, "updated_at": ts(5, 7)},
    ]
    write_raw_run(lake, "faker", "r2", {"users": run2}, T2, extra_fields=CDC)
    [second] = build_processed(spark, config, "run2", tables=["users"])
    assert (second.mode, second.rows_deleted, second.rows) == ("merge", 1, 6)
    _assert_users_match(lake_dir, lake, spark)
    assert 2 not in _users(lake_dir, spark)

    run3 = [
        {**users[2], "email": "late@example.com", "updated_at": ts(3, 2)},  # older than its delete
        _delete({**users[4], "updated_at": ts(0, 4)}, 0),  # older than the stored row: ignored
        {**users[1], "id": 99, "updated_at": ts(6, 99)},  # newer than its delete: inserted
        _delete(users[7 - 1], 6),  # user 6
    ]
    write_raw_run(lake, "faker", "r3", {"users": run3}, T3, extra_fields=CDC)
    [third] = build_processed(spark, config, "run3", tables=["users"])
    assert third.rows_deleted == 1
    rows = _users(lake_dir, spark)
    assert sorted(rows) == [1, 3, 4, 5, 7, 99]
    _assert_users_match(lake_dir, lake, spark)

    # Re-running finds nothing new; a rebuild from every raw run gives the same table.
    [again] = build_processed(spark, config, "run3", tables=["users"])
    assert again.mode == "unchanged"
    [rebuilt] = build_processed(spark, config, "run4", full_refresh=True, tables=["users"])
    assert rebuilt.mode == "overwrite"
    _assert_users_match(lake_dir, lake, spark)

    # After the rebuild, the deletions are still known: a late record stays out.
    late = [{**users[6], "email": "late6@example.com", "updated_at": ts(2, 6)}]
    write_raw_run(lake, "faker", "r4", {"users": late}, T4, extra_fields=CDC)
    build_processed(spark, config, "run5", tables=["users"])
    assert 6 not in _users(lake_dir, spark)
    _assert_users_match(lake_dir, lake, spark)
    # the deleted keys are a Delta table of their own, kept small by `maintain` too
    assert delta_tables(config)["deleted.users"] == "_state/deleted/users"


def test_a_deletion_needs_only_its_key_and_cursor_to_cast(
    tmp_path: Path, spark: Any, shop_pipeline: Path
) -> None:
    """A value that does not cast in a deletion record's other columns does not hold the
    deletion back; in an ordinary record it still sends the record to quarantine."""
    lake_dir, config, lake, users = _first_run(tmp_path, shop_pipeline, 4)
    build_processed(spark, config, "run1", tables=["users"])
    run2 = [
        {**_delete(users[2], 5), "created_at": "not a date"},  # deleted all the same
        {**users[3], "email": "three@example.com", "updated_at": ts(5, 3), "created_at": "?"},
        {**_delete(users[4], 5), "updated_at": "not a date"},  # a bad cursor: quarantined
    ]
    write_raw_run(lake, "faker", "r2", {"users": run2}, T2, extra_fields=CDC)
    [result] = build_processed(spark, config, "run2", tables=["users"])
    assert (result.rows_deleted, result.rows_quarantined, result.rows) == (1, 2, 3)
    assert sorted(_users(lake_dir, spark)) == [1, 3, 4]
    assert _users(lake_dir, spark)[3]["email"] == users[3]["email"]  # its update: quarantined
    _assert_users_match(lake_dir, lake, spark, castable=("created_at", "updated_at"))
    quarantine = spark.read.format("delta").load(str(lake_dir / "quarantine" / "users"))
    assert sorted(row["reason"] for row in quarantine.collect()) == [
        "column created_at: cannot cast ? to timestamp",
        "column updated_at: cannot cast not a date to timestamp",
    ]


def test_deleted_when_false_keeps_deletion_records_as_rows_and_a_bad_one_is_one_line(
    tmp_path: Path, spark: Any, shop_pipeline: Path
) -> None:
    lake_dir, config, lake, users = _first_run(tmp_path, shop_pipeline, 3)
    build_processed(spark, config, "run1", tables=["users"])
    write_raw_run(lake, "faker", "r2", {"users": [_delete(users[1], 5)]}, T2, extra_fields=CDC)

    with pytest.raises(ProcessedError) as failed:
        build_processed(
            spark, with_processed(config, "users", deleted_when="no_such_column"), "run2"
        )
    message = str(failed.value)
    assert "\n" not in message
    assert "processed users: deleted_when 'no_such_column'" in message
    assert "fix it in pipeline.yaml" in message
    with pytest.raises(ProcessedError, match="is string, not a condition"):
        build_processed(spark, with_processed(config, "users", deleted_when="email"), "run2")

    kept = with_processed(config, "users", deleted_when="false")
    [result] = build_processed(spark, kept, "run2", tables=["users"])
    assert (result.rows_deleted, result.rows) == (0, 3)
    assert _users(lake_dir, spark)[1]["_ab_cdc_deleted_at"] is not None


def test_deleted_purchases_leave_incremental_gold(
    tmp_path: Path, spark: Any, shop_pipeline: Path
) -> None:
    """Deletions reach gold through Delta's change feed: the incremental models rebuild the days
    and customers of the deleted purchases, and gold equals the independent computation."""
    config = load_pipeline(shop_pipeline, str(tmp_path / "lake"))
    lake = Lake(config.lake)
    records = first_shop_run(config, spark, T1, extra_fields=CDC)

    bought = [p for p in records["purchases"] if p["purchased_at"] and not p["returned_at"]]
    gone = [
        {**p, "updated_at": ts(8, p["id"]), "_ab_cdc_deleted_at": ts(8, p["id"])}
        for p in bought[:3]
    ]
    write_raw_run(lake, "faker", "r2", {"purchases": gone}, T2, extra_fields=CDC)
    summaries = {stage: run_stage(config, stage, "run2", spark=spark) for stage in STAGES}
    assert summaries["transform"]["processed"]["purchases"]["rows_deleted"] == 3
    # and the run summary (`raw2gold run`'s closing table) says so
    recorded = run_summary(str(shop_pipeline), "run2", lake_uri=config.lake.uri)
    assert processed_note(recorded["stages"]["transform"]["processed"]["purchases"]) == "3 deleted"
    gold = summaries["transform"]["gold"]
    assert gold["daily_category_revenue"]["build"] == "incremental"
    assert gold["customer_lifetime_value"]["build"] == "incremental"
    assert_gold_matches_reference(config)


def test_maintain_forgets_deleted_keys_older_than_the_retention(
    tmp_path: Path, spark: Any, shop_pipeline: Path
) -> None:
    """`maintenance.deleted_keys_retain_days` bounds `_state/deleted/<table>`: `maintain` forgets
    a key whose deletion record was extracted longer ago, and keeps the others; a late record
    older than a forgotten deletion then brings its key back (the documented price), while a
    remembered deletion still keeps its key out."""
    lake_dir, shop, lake, users = _first_run(tmp_path, shop_pipeline, 4)
    config = shop.model_copy(update={"maintenance": MaintenanceConfig(deleted_keys_retain_days=30)})
    build_processed(spark, config, "run1", tables=["users"])
    recent = datetime.now(UTC) - timedelta(days=2)
    write_raw_run(lake, "faker", "r2", {"users": [_delete(users[2], 5)]}, T2, extra_fields=CDC)
    write_raw_run(lake, "faker", "r3", {"users": [_delete(users[3], 5)]}, recent, extra_fields=CDC)
    [deleted] = build_processed(spark, config, "run2", tables=["users"])
    assert (deleted.rows_deleted, sorted(_users(lake_dir, spark))) == (2, [1, 4])

    maintained = run_stage(config, "maintain", "maintain1", spark=spark)["maintained"]
    assert maintained["deleted.users"]["keys_forgotten"] == 1
    remembered = spark.read.format("delta").load(str(lake_dir / "_state" / "deleted" / "users"))
    assert [row["id"] for row in remembered.collect()] == [3]
    assert (
        run_stage(config, "maintain", "maintain2", spark=spark)["maintained"]["deleted.users"][
            "keys_forgotten"
        ]
        == 0
    )

    late = [{**users[k], "email": f"late{k}@example.com", "updated_at": ts(3, k)} for k in (2, 3)]
    write_raw_run(lake, "faker", "r4", {"users": late}, T4, extra_fields=CDC)
    build_processed(spark, config, "run3", tables=["users"])
    assert sorted(_users(lake_dir, spark)) == [1, 2, 4]
