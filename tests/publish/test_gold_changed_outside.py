"""A Delta gold table changed by another writer after raw2gold published it (a RESTORE or a
DELETE by hand) is rebuilt in full at the next run, so gold is again what its model computes
from processed; an incremental build on top of such a change mixed the two."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from raw2gold.config.loader import load_pipeline
from raw2gold.lake.layout import Lake
from raw2gold.transform.delta import delta_ref, log_version
from raw2gold.transform.job import STAGES, run_stage
from tests.transform.rawdata import categories, purchase, shop_records, write_raw_run
from tests.transform.reference import assert_gold_matches_reference

T0 = datetime(2026, 1, 8, 6, tzinfo=UTC)
DAILY = "daily_category_revenue"


def _run(config: Any, spark: Any, run_id: str) -> dict[str, Any]:
    """transform, check and publish of one run; the daily model's build (mode, reason)."""
    summaries = {stage: run_stage(config, stage, run_id, spark=spark) for stage in STAGES}
    build = summaries["transform"]["gold"][DAILY]
    return {"build": (build["build"], build["reason"]), "publish": summaries["publish"]}


def _rebuilt_in_full(run: dict[str, Any], published_by: str, change: str) -> None:
    assert run["build"] == (
        "full",
        f"the table changed since run {published_by} published it ({change}), not by raw2gold",
    )


def test_a_restored_or_edited_delta_gold_table_is_rebuilt_in_full(
    tmp_path: Path, spark: Any, shop_pipeline: Path
) -> None:
    """run1 and run2 publish; then the table is restored to run1's version by hand. Before, the
    next run with one new day rebuilt that day alone into the restored table (run2's days
    stayed as run1 had them), and a run without new data published nothing over it."""
    config = load_pipeline(shop_pipeline, str(tmp_path / "lake"))
    lake = Lake(config.lake)
    write_raw_run(lake, "faker", "r1", shop_records(), T0)
    write_raw_run(lake, "catalog_csv", "c1", {"make_categories": categories()}, T0)
    _run(config, spark, "run1")
    uri = lake.spark_uri(lake.gold_table(DAILY))
    run1_version = log_version(lake, lake.gold_table(DAILY))
    write_raw_run(lake, "faker", "r2", {"purchases": [purchase(201, 3, 1, 9)]}, T0 + timedelta(1))
    assert _run(config, spark, "run2")["build"] == ("incremental", "changed: purchases")
    assert_gold_matches_reference(config)

    spark.sql(f"RESTORE TABLE {delta_ref(uri)} TO VERSION AS OF {run1_version}").collect()
    restored = log_version(lake, lake.gold_table(DAILY))
    write_raw_run(lake, "faker", "r3", {"purchases": [purchase(301, 4, 2, 12)]}, T0 + timedelta(2))
    _rebuilt_in_full(_run(config, spark, "run3"), "run2", f"version {restored}: RESTORE")
    assert_gold_matches_reference(config)

    # a run without new raw data after a DELETE by hand
    spark.sql(f"DELETE FROM {delta_ref(uri)} WHERE category = 'premium'").collect()
    deleted = log_version(lake, lake.gold_table(DAILY))
    _rebuilt_in_full(_run(config, spark, "run4"), "run3", f"version {deleted}: DELETE")
    assert_gold_matches_reference(config)

    # OPTIMIZE and VACUUM change no rows: nothing to rebuild
    spark.sql(f"OPTIMIZE {delta_ref(uri)}").collect()
    assert _run(config, spark, "run5")["build"] == ("unchanged", "inputs unchanged since run run4")
    assert_gold_matches_reference(config)
