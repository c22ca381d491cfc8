"""Delta table upkeep: OPTIMIZE compacts small files, VACUUM deletes the files no retained
version needs, and neither changes a row or turns the next incremental gold build into a full
one. Real Spark and Delta on a temporary lake; gold checked against the independent
computation over all raw runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from raw2gold.cli import main
from raw2gold.config.loader import load_pipeline
from raw2gold.config.models import MaintenanceConfig
from raw2gold.lake.layout import Lake
from raw2gold.transform.delta import live_files, log_commit, log_row_count, log_version
from raw2gold.transform.job import STAGES, run_stage
from raw2gold.transform.maintenance import STATE
from tests.transform.rawdata import (
    categories,
    daily_partitioned,
    shop_records,
    ts,
    write_raw_run,
)
from tests.transform.reference import assert_gold_matches_reference

T0 = datetime(2026, 1, 8, 6, tzinfo=UTC)
PURCHASES = "processed/purchases"
QUARANTINE = "quarantine/purchases"


def new_purchases(first: int, day: int) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "user_id": 1 + i % 30,
            "product_id": 1 + i % 12,
            "created_at": ts(day, i),
            "updated_at": ts(day, i),
            "added_to_cart_at": ts(day, i),
            "purchased_at": ts(day, i + 30),
            "returned_at": None,
        }
        for i in range(first, first + 5)
    ]


def with_a_bad_purchase(purchases: list[dict[str, Any]], id: int) -> list[dict[str, Any]]:
    """The purchases and one whose created_at is no time: the run quarantines it."""
    return [*purchases, {**purchases[0], "id": id, "created_at": "not a time"}]


def parquet_on_disk(lake_dir: Path, table: str) -> int:
    return sum(1 for _ in (lake_dir / table).rglob("*.parquet"))


def test_optimize_and_vacuum_keep_rows_and_incremental_builds(
    tmp_path: Path, spark: Any, shop_pipeline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake_dir = tmp_path / "lake"
    shop = daily_partitioned(load_pipeline(shop_pipeline, str(lake_dir)))
    settings = MaintenanceConfig(optimize_min_files=3, vacuum_retain_hours=0, vacuum_every_hours=24)
    config = shop.model_copy(update={"maintenance": settings})
    lake = Lake(config.lake)
    records = shop_records()
    records["purchases"] = with_a_bad_purchase(records["purchases"], 900)
    write_raw_run(lake, "faker", "r0-faker", records, T0)
    write_raw_run(lake, "catalog_csv", "r0-csv", {"make_categories": categories()}, T0)
    for stage in STAGES:
        run_stage(config, stage, "run0", spark=spark)
    for n in range(1, 3):  # two small appends: purchases gets a small file each
        extracted = T0 + timedelta(days=n)
        streams = {"purchases": with_a_bad_purchase(new_purchases(1000 + 10 * n, 7 + n), 900 + n)}
        write_raw_run(lake, "faker", f"r{n}-faker", streams, extracted)
        for stage in STAGES:
            run_stage(config, stage, f"run{n}", spark=spark)

    files_before = live_files(lake, PURCHASES) or []
    rows_before = log_row_count(lake, PURCHASES)
    on_disk_before = parquet_on_disk(lake_dir, "processed/purchases")
    assert len(files_before) >= 3

    summary = run_stage(config, "maintain", "maintain1", spark=spark)
    done = summary["maintained"]["processed.purchases"]
    assert done["optimized"] and done["vacuumed"]
    assert done["live_files"] == len(files_before) and done["live_files_after"] == 1
    assert log_row_count(lake, PURCHASES) == rows_before
    newest = log_commit(lake, PURCHASES, log_version(lake, PURCHASES)) or {}
    assert newest.get("operation", "").startswith(("OPTIMIZE", "VACUUM"))
    # VACUUM with no retention: only the files of the newest version stay on disk
    assert parquet_on_disk(lake_dir, "processed/purchases") < on_disk_before
    assert {Path(f["path"]).name for f in live_files(lake, PURCHASES) or []} <= {
        p.name for p in (lake_dir / "processed/purchases").rglob("*.parquet")
    }
    assert "processed.purchases" in lake.read_json(STATE)
    # the quarantine got a small file from each of the three runs: compacted, its rows kept
    rejected = summary["maintained"]["quarantine.purchases"]
    assert rejected["optimized"] and rejected["live_files"] == 3
    assert rejected["live_files_after"] == 1 and log_row_count(lake, QUARANTINE) == 3
    # too few small files, or one per partition (daily): vacuumed, not optimized
    assert not summary["maintained"]["processed.users"]["optimized"]
    daily = summary["maintained"]["gold.daily_category_revenue"]
    assert daily["vacuumed"] and not daily["optimized"] and daily["small_files"] == 0
    assert summary["maintained"]["gold.top_products"]["vacuumed"]
    assert "gold.customer_lifetime_value" not in summary["maintained"]  # Parquet gold

    # The next run: OPTIMIZE and VACUUM commits change no rows, so gold stays incremental.
    write_raw_run(
        lake, "faker", "r3-faker", {"purchases": new_purchases(2000, 12)}, T0 + timedelta(days=3)
    )
    built = {s: run_stage(config, s, "run3", spark=spark) for s in STAGES}
    gold = built["transform"]["gold"]
    assert gold["daily_category_revenue"]["build"] == "incremental"
    assert gold["customer_lifetime_value"]["build"] == "incremental"
    assert_gold_matches_reference(config)

    # VACUUM waits vacuum_every_hours; OPTIMIZE waits for enough small files again.
    again = run_stage(config, "maintain", "maintain2", spark=spark)["maintained"]
    assert not any(r["vacuumed"] or r["optimized"] for r in again.values())
    # and from the command line, with the defaults (no maintenance block in the yaml): one row
    # per Delta table, its name whole even in a log (not a terminal), what was done
    capsys.readouterr()
    assert main(["maintain", "-p", str(shop_pipeline), "--lake", str(lake_dir)]) == 0
    printed = capsys.readouterr().out
    rows = {
        cells[0]: cells[1:]
        for line in printed.splitlines()
        if len(cells := [c.strip() for c in line.split("│")]) == 7
    }
    assert set(rows) == set(again) and "processed.make_categories" in rows
    purchases = rows["processed.purchases"]
    assert purchases[0] == str(len(live_files(lake, PURCHASES) or []))  # live files
    assert purchases[2:4] == ["", ""]  # neither optimized nor vacuumed: not due
