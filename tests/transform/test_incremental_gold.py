"""Incremental gold: only the groups that changed processed rows touch are rebuilt and replaced.

The shop's daily_category_revenue (Delta, by purchase_date; partitioned by it here, as a large
table would be, so that its days are replaced by replaceWhere or appended) and
customer_lifetime_value (Parquet, by user_id) are incremental; top_products is not. After
every run the published gold must equal the independent computation over all raw runs,
whatever the build did.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from raw2gold.config.loader import load_pipeline
from raw2gold.config.models import LakeConfig
from raw2gold.lake.layout import Lake
from raw2gold.publish.publisher import current_pointer
from raw2gold.transform.delta import log_commit, log_version
from raw2gold.transform.gold import plan_build
from raw2gold.transform.job import STAGES, run_stage
from tests.publish.digest import tree_digest
from tests.story import Story
from tests.transform.rawdata import (
    MAKES,
    categories,
    daily_partitioned,
    purchase,
    shop_records,
    ts,
    with_gold,
    write_raw_run,
)
from tests.transform.reference import assert_gold_matches_reference, parse_ts

T0 = datetime(2026, 1, 8, 6, tzinfo=UTC)
DAILY, CLV, TOP = "daily_category_revenue", "customer_lifetime_value", "top_products"


def run_all(shop: Any, spark: Any, run_id: str, full_refresh: bool = False) -> dict[str, Any]:
    """transform, check and publish of one run; the summaries by stage."""
    return {
        stage: run_stage(shop.config, stage, run_id, full_refresh, spark=spark) for stage in STAGES
    }


def builds(summaries: dict[str, Any]) -> dict[str, tuple[str, str, int]]:
    gold = summaries["transform"]["gold"]
    return {t: (g["build"], g["reason"], g["groups"]) for t, g in gold.items()}


def day_of(row: dict[str, Any]) -> date:
    stamp = parse_ts(row["purchased_at"])
    assert stamp is not None
    return stamp.date()


def change_purchases(shop: Any, spark: Any) -> SimpleNamespace:
    """run2: new purchases, one moved to another day, one returned, one still in a cart; a user
    changes e-mail."""
    completed = [p for p in shop.records["purchases"] if p["purchased_at"] and not p["returned_at"]]
    moved, returned = completed[0], completed[1]
    later = ts(8, 1)
    changes = [
        purchase(201, 3, 1, 9),
        purchase(202, 4, 2, 9),
        {**purchase(203, 3, 2, 9), "purchased_at": None},  # in a cart: no day (NULL group)
        {**moved, "purchased_at": ts(9, 500), "updated_at": later},  # to another day
        {**returned, "returned_at": ts(8, 2), "updated_at": later},  # no longer revenue
    ]
    user5 = next(u for u in shop.records["users"] if u["id"] == 5)
    users = [{**user5, "email": "five@example.com", "updated_at": later}]
    write_raw_run(
        shop.lake, "faker", "r2", {"purchases": changes, "users": users}, T0 + timedelta(days=1)
    )
    return SimpleNamespace(summaries=run_all(shop, spark, "run2"), moved=moved, returned=returned)


def buy_on_a_new_day(shop: Any, spark: Any) -> dict[str, Any]:
    """run3: one purchase on a day gold has no row for yet."""
    write_raw_run(
        shop.lake, "faker", "r3", {"purchases": [purchase(301, 7, 3, 12)]}, T0 + timedelta(days=2)
    )
    return run_all(shop, spark, "run3")


def return_it(shop: Any, spark: Any) -> dict[str, Any]:
    """run4: that purchase is returned, so its day has no revenue left."""
    returned = {**purchase(301, 7, 3, 12, returned=True), "updated_at": ts(13, 5)}
    write_raw_run(shop.lake, "faker", "r4", {"purchases": [returned]}, T0 + timedelta(days=3))
    return run_all(shop, spark, "run4")


def run_without_changes(shop: Any, spark: Any, run_id: str) -> SimpleNamespace:
    """A run with no new raw data: the gold before it and the run's summaries."""
    before = _gold_state(shop)
    return SimpleNamespace(before=before, summaries=run_all(shop, spark, run_id))


def change_a_product(shop: Any, spark: Any) -> dict[str, Any]:
    """run6: a product's price changes (products is not an incremental input)."""
    product = {**shop.records["products"][0], "price": 999.99, "updated_at": ts(20)}
    write_raw_run(shop.lake, "faker", "r6", {"products": [product]}, T0 + timedelta(days=4))
    return run_all(shop, spark, "run6")


def change_more_groups_than_collected(shop: Any, spark: Any) -> dict[str, Any]:
    """run9: two new purchases while at most one affected group is collected to the driver."""
    from raw2gold.transform import gold

    changes = [purchase(901, 8, 1, 14), purchase(902, 9, 2, 15)]
    write_raw_run(shop.lake, "faker", "r9", {"purchases": changes}, T0 + timedelta(days=9))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gold, "MAX_COLLECTED_GROUPS", 1)
        return run_all(shop, spark, "run9")


SAME_CATEGORIES = [(m, c, "X") for m, c in MAKES]
AUDI_MOVED = [(MAKES[0][0], "luxury", "X"), *SAME_CATEGORIES[1:]]


def land_categories(
    shop: Any, spark: Any, raw_run: str, run_id: str, day: int, rows: list[tuple[str, str, str]]
) -> SimpleNamespace:
    """A run after the CSV source was read again (a full-refresh stream: a new raw run holding
    every row): the gold before it and the run's summaries."""
    before = _gold_state(shop)
    write_raw_run(
        shop.lake,
        "catalog_csv",
        raw_run,
        {"make_categories": categories(rows)},
        T0 + timedelta(days=day),
    )
    return SimpleNamespace(before=before, summaries=run_all(shop, spark, run_id))


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, spark: Any, shop_pipeline: Path) -> Any:
    """The shop's lake and the runs this module's tests follow, reached in order
    (:class:`tests.story.Story`): a test picked alone runs the ones before its own first."""
    lake_dir = tmp_path_factory.mktemp("incremental") / "lake"
    config = daily_partitioned(load_pipeline(shop_pipeline, str(lake_dir)))
    lake = Lake(config.lake)
    records = shop_records()
    write_raw_run(lake, "faker", "r1", records, T0)
    write_raw_run(lake, "catalog_csv", "c1", {"make_categories": categories()}, T0)
    shop = SimpleNamespace(config=config, lake=lake, records=records)
    shop.story = Story(
        [
            ("run1", lambda: run_all(shop, spark, "run1")),
            ("run2", lambda: change_purchases(shop, spark)),
            ("run3", lambda: buy_on_a_new_day(shop, spark)),
            ("run4", lambda: return_it(shop, spark)),
            ("run5", lambda: run_without_changes(shop, spark, "run5")),
            ("run6", lambda: change_a_product(shop, spark)),
            ("run6 again", lambda: run_without_changes(shop, spark, "run6")),
            ("run7", lambda: run_all(shop, spark, "run7", full_refresh=True)),
            ("run9", lambda: change_more_groups_than_collected(shop, spark)),
            ("run10", lambda: land_categories(shop, spark, "c2", "run10", 10, SAME_CATEGORIES)),
            ("run11", lambda: land_categories(shop, spark, "c3", "run11", 11, AUDI_MOVED)),
        ]
    )
    return shop


def test_first_build_is_full(shop: Any) -> None:
    assert builds(shop.story.reach("run1")) == {
        DAILY: ("full", "first build", -1),
        CLV: ("full", "first build", -1),
        TOP: ("full", "first build", -1),
    }
    assert_gold_matches_reference(shop.config)


def test_changed_purchases_rebuild_only_their_days_and_customers(shop: Any) -> None:
    run2 = shop.story.reach("run2")
    summaries, moved, returned = run2.summaries, run2.moved, run2.returned

    # the NULL day is not rebuilt: not_null(purchase_date) keeps it out of gold anyway
    days = {date(2026, 1, 10), day_of(moved), day_of(returned)}
    customers = {3, 4, 5, moved["user_id"], returned["user_id"]}
    assert builds(summaries) == {
        DAILY: ("incremental", "changed: purchases", len(days)),
        CLV: ("incremental", "changed: purchases, users", len(customers)),
        TOP: ("full", "changed: purchases", -1),
    }
    assert_gold_matches_reference(shop.config)
    rebuilt_only = {
        c["check"] for c in summaries["check"]["checks"] if "rebuilt groups" in c["message"]
    }
    assert rebuilt_only == {
        "not_null(purchase_date,category,revenue)",
        "unique(purchase_date,category)",
        "expression(revenue >= 0 AND purchases > 0)",
        "unique(user_id)",
        "relationships(user_id)",
    }
    # The Delta commit rewrote only the rebuilt days' partitions.
    assert _partitions_written(shop.lake, DAILY) <= {d.isoformat() for d in days}
    assert summaries["publish"]["gold"][DAILY]["action"] == "published"
    # row_count checks compare with the version before the run (processed) / published (gold)
    counts = {
        (c["table"], c["message"].split("; ")[-1])
        for stage in ("transform", "check")
        for c in summaries[stage]["checks"]
        if c["type"] == "row_count" and c["table"] in ("users", CLV)
    }
    assert counts == {
        ("users", "0.0% change vs previous 30 rows (within 50%)"),
        (CLV, "0.0% change vs previous 30 rows (within 50%)"),
    }


def test_a_group_that_empties_is_removed(shop: Any) -> None:
    shop.story.reach("run3")
    assert_gold_matches_reference(shop.config)
    assert date(2026, 1, 13) in _gold_days(shop)
    # a day gold did not have yet: appended, not a replaceWhere overwrite
    assert _newest_write(shop.lake, DAILY) == ("Append", None)

    summaries = shop.story.reach("run4")
    assert builds(summaries)[DAILY] == ("incremental", "changed: purchases", 1)
    assert date(2026, 1, 13) not in _gold_days(shop)
    assert _newest_write(shop.lake, DAILY) == ("Overwrite", "(`purchase_date` = DATE'2026-01-13')")
    assert_gold_matches_reference(shop.config)


def test_published_runs_staging_is_removed(shop: Any, spark: Any) -> None:
    """A finished publish removes the staging of the runs published before it (each held a copy
    of the gold it rebuilt); publishing one of them again is then a no-op, gold untouched."""
    shop.story.reach("run4")
    assert shop.lake.staged_runs() == ["run4"]
    before = _gold_state(shop)
    summary = run_stage(shop.config, "publish", "run3", spark=spark)
    assert {g["action"] for g in summary["gold"].values()} == {"already_published"}
    assert _gold_state(shop) == before
    assert shop.lake.staged_runs() == ["run4"]


def test_unchanged_inputs_publish_nothing(shop: Any) -> None:
    run5 = shop.story.reach("run5")
    summaries = run5.summaries
    assert {t: b[0] for t, b in builds(summaries).items()} == dict.fromkeys(
        (DAILY, CLV, TOP), "unchanged"
    )
    assert {g["action"] for g in summaries["publish"]["gold"].values()} == {"unchanged"}
    assert all(c["passed"] for c in summaries["check"]["checks"])  # checks still run
    # processed users has not changed since run2 checked it: its results are carried over
    users = [c for c in summaries["transform"]["checks"] if c["table"] == "users"]
    assert len(users) == 3
    assert all(c["passed"] and c["message"].endswith("checked by run run2") for c in users)
    assert _gold_state(shop) == run5.before
    assert_gold_matches_reference(shop.config)


def test_a_change_outside_the_incremental_inputs_rebuilds_in_full(shop: Any) -> None:
    summaries = shop.story.reach("run6")
    reason = "changed: products (not incremental inputs)"
    assert builds(summaries)[DAILY] == ("full", reason, -1)
    assert builds(summaries)[CLV] == ("full", reason, -1)
    assert_gold_matches_reference(shop.config)


def test_rerunning_a_published_run_changes_nothing(shop: Any) -> None:
    again = shop.story.reach("run6 again")
    assert {b[0] for b in builds(again.summaries).values()} == {"unchanged"}
    assert _gold_state(shop) == again.before


def test_full_refresh_and_a_changed_model_rebuild_in_full(shop: Any) -> None:
    summaries = shop.story.reach("run7")
    assert {b[:2] for b in builds(summaries).values()} == {("full", "full refresh requested")}
    assert_gold_matches_reference(shop.config)

    changed = with_gold(shop.config, DAILY, checks=shop.config.gold[DAILY].checks[:1])
    plan = plan_build(changed, DAILY, "run8", False)
    assert (plan.mode, plan.reason) == ("full", "the model or its config changed")
    assert plan_build(shop.config, DAILY, "run8", False).mode == "unchanged"


def _gold_days(shop: Any) -> set[date]:
    from raw2gold.publish.publisher import gold_arrow_table

    rows = gold_arrow_table(shop.config, DAILY).to_pylist()
    return {r["purchase_date"] for r in rows}


def _gold_state(shop: Any) -> tuple[Any, ...]:
    gold = shop.lake.path("gold")
    pointer = current_pointer(shop.lake, CLV)
    return (
        log_version(shop.lake, f"gold/{DAILY}"),
        log_version(shop.lake, f"gold/{TOP}"),
        pointer["version"] if pointer else None,
        tree_digest(Path(gold)),
    )


def _partitions_written(lake: Lake, table: str) -> set[str]:
    """purchase_date values of the files the newest commit of a Delta gold table added."""
    relative = f"gold/{table}/_delta_log/{log_version(lake, f'gold/{table}'):020d}.json"
    with lake.fs.open_input_stream(lake.path(relative)) as stream:
        actions = [json.loads(line) for line in stream.read().decode().splitlines() if line]
    return {a["add"]["partitionValues"]["purchase_date"] for a in actions if "add" in a}


def _newest_write(lake: Lake, table: str) -> tuple[str, str | None]:
    """The save mode and replaceWhere predicate of a Delta gold table's newest commit."""
    relative = f"gold/{table}"
    info = log_commit(lake, relative, log_version(lake, relative))
    assert info is not None and info["operation"] == "WRITE"
    parameters = info["operationParameters"]
    predicate = parameters.get("predicate")
    return parameters["mode"], predicate


def test_group_ranges_from_the_driver_equal_sparks(spark: Any) -> None:
    """The collected groups' ranges (text) cast back in Spark to the values Spark's own
    min/max give, for every type a range is kept for; other types get none."""
    from decimal import Decimal

    from pyspark.sql import functions as F

    from raw2gold.transform.gold import _arrow_bounds, _spark_bounds

    rows = [
        (date(2026, 1, 9), datetime(2026, 1, 9, 23, 30, 0, 5, tzinfo=UTC), Decimal("1.50"), "b", 7),
        (date(2025, 12, 31), datetime(2025, 12, 31, 0, 0, tzinfo=UTC), Decimal("-2.25"), "Ä", -3),
        (None, None, None, None, None),
    ]
    schema = "d date, t timestamp, m decimal(18,2), s string, i bigint"
    groups = spark.createDataFrame(rows, schema).withColumn("n", F.col("t").cast("timestamp_ntz"))
    from_driver = _arrow_bounds(groups.schema, groups.toArrow())
    from_spark = _spark_bounds(groups)
    assert [b[2:] for b in from_driver] == [b[2:] for b in from_spark]  # NULLs and types
    assert from_driver[-1][:2] == (None, None)  # timestamp_ntz: no range
    for (low, high, _, kind), (s_low, s_high, _, _) in zip(
        from_driver[:-1], from_spark[:-1], strict=True
    ):
        pairs = [(low, s_low), (high, s_high)]
        cast = spark.createDataFrame(pairs, "a string, b string").selectExpr(
            f"CAST(a AS {kind}) = CAST(b AS {kind}) AS same"
        )
        assert all(r.same for r in cast.collect()), (kind, pairs)


def test_recorded_schemas_read_back_as_spark_infers(spark: Any, tmp_path: Path) -> None:
    """Staged rows, affected groups and Parquet gold are read with the schema recorded when
    they were written (no Spark job for the footers): it must be the schema Spark would infer,
    for Spark's writes (partitioned too) and for the groups written from the driver."""
    from decimal import Decimal

    from pyspark.sql import functions as F

    from raw2gold.transform.gold import read_parquet, written_schema

    rows = [
        (date(2026, 1, 9), datetime(2026, 1, 9, 23, 30, tzinfo=UTC), Decimal("1.50"), "b", 7),
        (date(2025, 12, 31), datetime(2025, 12, 31, tzinfo=UTC), Decimal("-2.25"), "Ä", -3),
        (None, None, None, None, None),
    ]
    df = (
        spark.createDataFrame(rows, "d date, t timestamp, m decimal(18,2), s string, i bigint")
        .withColumn("n", F.col("t").cast("timestamp_ntz"))
        .withColumn("k", F.lit(1))  # not nullable
        .withColumn("a", F.array(F.col("i"), F.lit(None).cast("bigint")))
        .withColumn("st", F.struct(F.col("s").alias("inner"), F.lit(b"x").alias("raw")))
        .withColumn("mp", F.create_map(F.lit("key"), F.col("m")))
    )
    spark_written, partitioned, driver_written = (str(tmp_path / n) for n in ("s", "p", "a"))
    df.write.parquet(spark_written)
    df.write.partitionBy("d", "s").parquet(partitioned)
    groups = df.select("d", "t", "m", "s", "i", "n")
    Lake(LakeConfig(uri=str(tmp_path))).replace_parquet("a", groups.toArrow())
    for uri, written in ((spark_written, df), (partitioned, df), (driver_written, groups)):
        known = read_parquet(spark, uri, written_schema(written.schema))
        inferred = read_parquet(spark, uri, None)
        assert known.schema == inferred.schema, uri
        assert sorted(map(repr, known.collect())) == sorted(map(repr, inferred.collect()))


def test_many_groups_are_written_by_spark(shop: Any) -> None:
    """Past MAX_COLLECTED_GROUPS the affected groups are not collected: Spark writes them."""
    summaries = shop.story.reach("run9")
    assert builds(summaries)[DAILY] == ("incremental", "changed: purchases", 2)
    assert builds(summaries)[CLV] == ("incremental", "changed: purchases", 2)
    affected = shop.lake.list_files(shop.lake.staging_affected("run9", DAILY))
    assert any(f.endswith("_SUCCESS") for f in affected)  # Spark's committer wrote them
    assert_gold_matches_reference(shop.config)


def test_the_same_snapshot_again_writes_nothing(shop: Any) -> None:
    """The CSV read again with the same rows (new raw ids and extraction time): processed
    make_categories keeps its version, so no model is rebuilt and gold stays as it was."""
    version = log_version(shop.lake, shop.lake.processed_table("make_categories"))
    run10 = shop.story.reach("run10")
    processed = run10.summaries["transform"]["processed"]["make_categories"]
    assert (processed["mode"], processed["raw_runs"]) == ("unchanged", ["c2"])
    assert processed["delta_version"] == version == processed["previous_version"]
    assert processed["rows"] == len(MAKES) and processed["rows_written"] == 0
    assert {b[0] for b in builds(run10.summaries).values()} == {"unchanged"}
    assert {g["action"] for g in run10.summaries["publish"]["gold"].values()} == {"unchanged"}
    assert _gold_state(shop) == run10.before
    assert_gold_matches_reference(shop.config)


def test_a_changed_snapshot_is_written_and_its_models_rebuilt(shop: Any) -> None:
    """One category changed in the next snapshot: the table is overwritten with it, the two
    models that read it are rebuilt in full and published, and gold equals the reference."""
    from raw2gold.publish.publisher import publish_history

    publishes = len(publish_history(shop.config, DAILY))
    run11 = shop.story.reach("run11")
    processed = run11.summaries["transform"]["processed"]["make_categories"]
    assert (processed["mode"], processed["rows_written"]) == ("overwrite", len(MAKES))
    assert processed["delta_version"] == processed["previous_version"] + 1
    reason = "changed: make_categories"
    assert builds(run11.summaries) == {
        DAILY: ("full", f"{reason} (not incremental inputs)", -1),
        CLV: ("unchanged", "inputs unchanged since run run9", -1),
        TOP: ("full", reason, -1),
    }
    history = publish_history(shop.config, DAILY)
    assert len(history) == publishes + 1 and history[0]["run_id"] == "run11"
    assert_gold_matches_reference(shop.config)
