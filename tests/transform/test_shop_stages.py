"""The shop demo through transform → check → publish on raw fixtures, run after run."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from raw2gold.cli import main
from raw2gold.config.loader import load_pipeline
from raw2gold.lake.layout import Lake
from raw2gold.transform.job import STAGES, run_stage
from raw2gold.transform.processed import build_processed, processed_raw_runs
from tests.story import Story
from tests.transform.rawdata import categories, shop_records, ts, write_raw_run
from tests.transform.reference import assert_gold_matches_reference, parse_ts, shop_gold

T1 = datetime(2026, 1, 8, 6, tzinfo=UTC)
T2 = datetime(2026, 1, 9, 6, tzinfo=UTC)


def update_users_and_purchases(shop: Any, spark: Any) -> dict[str, Any]:
    """run2: newer, late and repeated user versions, new purchases (one malformed) and a new
    categories snapshot, through every stage; the transform summary."""
    users = [
        # newer version of user 1
        {**_user(1), "email": "new1@example.com", "updated_at": ts(3, 1)},
        # late duplicate: user 2 with an OLDER cursor than stored must not win
        {**_user(2), "email": "stale2@example.com", "updated_at": ts(0, 2)},
        # two versions of user 3 in one run: the latest wins
        {**_user(3), "email": "mid3@example.com", "updated_at": ts(3, 3)},
        {**_user(3), "email": "last3@example.com", "updated_at": ts(4, 3, offset=False)},
        {**_user(31), "email": "user31@example.com"},
    ]
    purchases = [
        {
            "id": i,
            "user_id": 31,
            "product_id": 1 + i % 12,
            "created_at": ts(7, i),
            "updated_at": ts(7, i),
            "added_to_cart_at": ts(7, i),
            "purchased_at": ts(7, i, offset=i % 2 == 0),
            "returned_at": None,
        }
        for i in range(121, 131)
    ]
    bad = {**purchases[0], "id": 131, "purchased_at": "not-a-date"}
    write_raw_run(
        shop.lake, "faker", "r2-faker", {"users": users, "purchases": [*purchases, bad]}, T2
    )
    snapshot = categories([("Audi", "premium", "DE"), ("Ford", "truck", "US")])
    write_raw_run(shop.lake, "catalog_csv", "r2-csv", {"make_categories": snapshot}, T2)

    summary = run_stage(shop.config, "transform", "run2", spark=spark)
    run_stage(shop.config, "check", "run2", spark=spark)
    run_stage(shop.config, "publish", "run2", spark=spark)
    return summary


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, spark: Any, shop_pipeline: Path) -> Any:
    """The shop's lake and its two runs, reached in order (:class:`tests.story.Story`)."""
    lake_dir = tmp_path_factory.mktemp("shop") / "lake"
    config = load_pipeline(shop_pipeline, str(lake_dir))
    lake = Lake(config.lake)
    write_raw_run(lake, "faker", "r1-faker", shop_records(), T1)
    write_raw_run(lake, "catalog_csv", "r1-csv", {"make_categories": categories()}, T1)
    shop = SimpleNamespace(config=config, lake=lake)
    shop.story = Story(
        [
            ("run1", lambda: {s: run_stage(config, s, "run1", spark=spark) for s in STAGES}),
            ("run2", lambda: update_users_and_purchases(shop, spark)),
        ]
    )
    return shop


def processed(spark: Any, shop: Any, table: str) -> dict[Any, Any]:
    df = spark.read.format("delta").load(shop.lake.spark_uri(f"processed/{table}"))
    key = "make" if table == "make_categories" else "id"
    return {r[key]: r.asDict() for r in df.collect()}


def test_first_load_types_rows_and_summaries(spark: Any, shop: Any) -> None:
    summaries = shop.story.reach("run1")
    transform = summaries["transform"]
    assert transform["status"] == "succeeded"
    assert transform["processed"]["users"]["mode"] == "overwrite"
    assert transform["processed"]["users"]["rows_read"] == 30
    assert transform["processed"]["users"]["rows_written"] == 30
    assert transform["processed"]["users"]["rows"] == 30
    assert transform["gold"]["top_products"]["rows"] == 10
    assert summaries["publish"]["gold"]["customer_lifetime_value"]["format"] == "parquet"
    assert transform["processed"]["purchases"]["raw_runs"] == ["r1-faker"]
    assert {c["check"] for c in transform["checks"]} == {
        "not_null(id,email)",
        "unique(id)",
        "row_count",
    }
    assert all(c["passed"] for c in summaries["check"]["checks"])
    for stage in STAGES:
        assert shop.lake.read_json(f"_state/runs/run1/{stage}.json")["status"] == "succeeded"

    df = spark.read.format("delta").load(shop.lake.spark_uri("processed/purchases"))
    types = dict(df.dtypes)
    assert types["id"] == "bigint" and types["purchased_at"] == "timestamp"
    assert types["_raw2gold_run_id"] == "string"
    assert types["_airbyte_extracted_at"] == "timestamp"
    assert (
        dict(spark.read.format("delta").load(shop.lake.spark_uri("processed/products")).dtypes)[
            "price"
        ]
        == "decimal(12,2)"
    )
    # Timestamps with '+00:00' and without an offset both parse (as UTC).
    reference = shop_gold(shop.lake)["purchases"]
    rows = processed(spark, shop, "purchases")
    assert len(rows) == 120
    for key, row in rows.items():
        expected = parse_ts(reference[key]["purchased_at"])
        got = row["purchased_at"]
        assert (got is None) == (expected is None)
        if got is not None:
            assert got.replace(tzinfo=UTC) == expected
    assert processed_raw_runs(shop.lake, "processed/users") == {"r1-faker"}


def test_gold_matches_independent_computation(shop: Any) -> None:
    shop.story.reach("run1")
    assert_gold_matches_reference(shop.config)


def test_incremental_updates_late_duplicates_and_quarantine(spark: Any, shop: Any) -> None:
    summary = shop.story.reach("run2")
    tables = summary["processed"]
    assert tables["users"]["mode"] == "merge"
    assert tables["users"]["raw_runs"] == ["r2-faker"]
    assert tables["purchases"]["rows_quarantined"] == 1
    assert tables["purchases"]["quarantined"] == 1
    assert tables["purchases"]["rows"] == 130
    assert (tables["purchases"]["mode"], tables["purchases"]["rows_inserted"]) == ("append", 10)
    assert tables["products"]["mode"] == "unchanged"
    assert tables["make_categories"]["mode"] == "overwrite"

    got = processed(spark, shop, "users")
    assert len(got) == 31
    assert got[1]["email"] == "new1@example.com"
    assert got[2]["email"] == "user2@example.com"
    assert got[3]["email"] == "last3@example.com"
    assert got[3]["_raw2gold_run_id"] == "r2-faker"
    assert got[2]["_raw2gold_run_id"] == "r1-faker"
    assert len(processed(spark, shop, "purchases")) == 130
    assert {k: v["category"] for k, v in processed(spark, shop, "make_categories").items()} == {
        "Audi": "premium",
        "Ford": "truck",
    }
    quarantine = spark.read.format("delta").load(shop.lake.spark_uri("quarantine/purchases"))
    rows = quarantine.collect()
    assert len(rows) == 1
    assert rows[0]["raw_run_id"] == "r2-faker"
    assert "purchased_at" in rows[0]["reason"] and "not-a-date" in rows[0]["reason"]
    assert rows[0]["_airbyte_raw_id"]

    assert_gold_matches_reference(shop.config)


def test_rerun_without_new_raw_runs_changes_nothing(spark: Any, shop: Any) -> None:
    shop.story.reach("run2")

    def versions() -> dict[str, int]:
        newest = "DESCRIBE HISTORY delta.`{}` LIMIT 1"  # Delta's own view, through Spark
        return {
            t: spark.sql(newest.format(shop.lake.spark_uri(f"{kind}/{t}"))).first()["version"]
            for kind, t in [("processed", t) for t in shop.config.processed]
            + [("quarantine", "purchases")]
        }

    before = versions()
    results = build_processed(spark, shop.config, "run3")
    assert {r.mode for r in results} == {"unchanged"}
    assert versions() == before


def test_full_refresh_rebuilds_the_same_content(spark: Any, shop: Any) -> None:
    shop.story.reach("run2")
    before = {t: processed(spark, shop, t) for t in ("users", "purchases")}
    results = {r.table: r for r in build_processed(spark, shop.config, "run4", full_refresh=True)}
    assert results["users"].mode == "overwrite"
    assert results["users"].raw_runs == ["r1-faker", "r2-faker"]
    assert results["users"].rows_written == 31
    for table, rows in before.items():
        assert processed(spark, shop, table) == rows
    quarantine = spark.read.format("delta").load(shop.lake.spark_uri("quarantine/purchases"))
    assert quarantine.count() == 1


def _user(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "name": f"user {i}",
        "email": f"user{i}@example.com",
        "age": 30,
        "nationality": "ES",
        "created_at": ts(0, i),
        "updated_at": ts(2, i),
    }


def test_raw2gold_quarantine_says_why_and_from_which_raw_run(
    shop: Any, shop_pipeline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`raw2gold quarantine purchases` after run2 (one purchase whose purchased_at is no date),
    read with delta-rs: the problem without its value, its raw run, the record whole; a raw run
    without rejected rows and a table without a quarantine say so; an unknown table is one line."""
    shop.story.reach("run2")
    where = ["-p", str(shop_pipeline), "--lake", shop.config.lake.uri]
    capsys.readouterr()
    assert main(["quarantine", "purchases", *where]) == 0
    out = capsys.readouterr().out
    assert "quarantine of processed.purchases: 1 rows" in out
    assert re.search(r"column purchased_at: cannot cast to timestamp\s+│\s+1 │ r2-faker", out), out
    assert "not-a-date" in out and "first 1 rows" in out
    assert main(["quarantine", "purchases", *where, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 1
    assert report["problems"] == [
        {
            "problem": "column purchased_at: cannot cast to timestamp",
            "rows": 1,
            "raw_runs": ["r2-faker"],
        }
    ]
    (row,) = report["sample"]
    assert json.loads(row["record"])["id"] == 131 and row["raw_run_id"] == "r2-faker"
    assert main(["quarantine", "purchases", *where, "--run", "r1-faker"]) == 0
    assert "processed.purchases quarantined no rows of run r1-faker in " in capsys.readouterr().out
    assert main(["quarantine", "users", *where]) == 0
    assert "processed.users quarantined no rows in " in capsys.readouterr().out
    assert main(["quarantine", "daily_category_revenue", *where]) == 1
    assert "no processed table 'daily_category_revenue' in pipeline.yaml; known: " in (
        capsys.readouterr().err
    )
