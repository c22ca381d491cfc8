"""Gold numbers of the shop demo computed without Spark: plain Python over the raw Parquet."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pyarrow.parquet as pq

from raw2gold.config.models import PipelineConfig
from raw2gold.lake.layout import Lake
from raw2gold.publish.publisher import gold_arrow_table


def parse_ts(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _rows(lake: Lake, source: str, stream: str) -> list[list[dict[str, Any]]]:
    """Rows per committed run (oldest first)."""
    runs = []
    for manifest in lake.committed_raw_runs(source):
        files = manifest["streams"].get(stream, {}).get("files", [])
        rows = []
        for path in files:
            rows += pq.read_table(lake.path(path), filesystem=lake.fs).to_pylist()
        if files:
            runs.append(rows)
    return runs


def latest(lake: Lake, source: str, stream: str, castable: tuple[str, ...] = ()) -> dict:
    """Deduplicated rows by id: greatest (updated_at, _airbyte_extracted_at) wins; keys whose
    winner is a CDC deletion (`_ab_cdc_deleted_at` set) are left out."""
    best: dict[Any, dict[str, Any]] = {}
    for rows in _rows(lake, source, stream):
        for row in rows:
            deletion = row.get("_ab_cdc_deleted_at") is not None
            try:
                for column in castable:
                    if not deletion or column in ("id", "updated_at"):  # a deletion's key, cursor
                        parse_ts(row[column])
            except ValueError:
                continue  # quarantined by the transform
            key = row["id"]
            rank = (parse_ts(row["updated_at"]), row["_airbyte_extracted_at"])
            if key not in best or rank >= best[key]["_rank"]:
                best[key] = {**row, "_rank": rank}
    # Airbyte CDC: a key whose latest record is a deletion is gone
    return {k: r for k, r in best.items() if r.get("_ab_cdc_deleted_at") is None}


def shop_gold(lake: Lake) -> dict[str, Any]:
    purchases = latest(
        lake,
        "faker",
        "purchases",
        ("created_at", "updated_at", "added_to_cart_at", "purchased_at", "returned_at"),
    )
    products = latest(lake, "faker", "products")
    users = latest(lake, "faker", "users")
    snapshots = _rows(lake, "catalog_csv", "make_categories")
    categories = {r["make"]: r["category"] for r in snapshots[-1]} if snapshots else {}

    daily: dict[tuple[date, str], list[Any]] = defaultdict(lambda: [0, Decimal("0")])
    clv: dict[int, list[Any]] = {u: [0, Decimal("0")] for u in users}
    per_product: dict[int, list[Any]] = defaultdict(lambda: [0, Decimal("0")])
    span: dict[int, list[datetime]] = {}  # user -> [first, last] completed purchase
    for p in purchases.values():
        bought = parse_ts(p["purchased_at"])
        if bought is None or p["returned_at"] is not None:
            continue
        product = products.get(p["product_id"])
        if product is not None:
            price = Decimal(repr(product["price"])).quantize(Decimal("0.01"))
            key = (bought.date(), categories.get(product["make"], "unknown"))
            daily[key][0] += 1
            daily[key][1] += price
            per_product[p["product_id"]][0] += 1
            per_product[p["product_id"]][1] += price
        if p["user_id"] in clv:
            first_last = span.setdefault(p["user_id"], [bought, bought])
            first_last[:] = [min(first_last[0], bought), max(first_last[1], bought)]
            clv[p["user_id"]][0] += 1
            if product is not None:
                clv[p["user_id"]][1] += Decimal(repr(product["price"])).quantize(Decimal("0.01"))
    top = sorted(per_product.items(), key=lambda kv: (-kv[1][1], kv[0]))[:10]
    return {
        "daily_category_revenue": {k: (v[0], v[1]) for k, v in daily.items()},
        "customer_lifetime_value": {k: (v[0], v[1]) for k, v in clv.items()},
        "customer_details": {
            u: (row["email"], *span.get(u, [None, None])) for u, row in users.items()
        },
        "top_products": [(k, v[0], v[1]) for k, v in top],
        "users": users,
        "purchases": purchases,
    }


def assert_gold_matches_reference(config: PipelineConfig) -> None:
    """The shop's published gold equals the independent computation over its raw runs."""
    expected = shop_gold(Lake(config.lake))
    daily = gold_arrow_table(config, "daily_category_revenue").to_pylist()
    got = {(r["purchase_date"], r["category"]): (r["purchases"], r["revenue"]) for r in daily}
    assert got == expected["daily_category_revenue"]
    clv = gold_arrow_table(config, "customer_lifetime_value").to_pylist()
    got_clv = {r["user_id"]: (r["purchases"], r["lifetime_value"]) for r in clv}
    assert got_clv == expected["customer_lifetime_value"]
    details = {
        r["user_id"]: (r["email"], r["first_purchase_at"], r["last_purchase_at"]) for r in clv
    }
    assert details == expected["customer_details"]
    top = gold_arrow_table(config, "top_products").to_pylist()
    got_top = sorted(
        [(r["product_id"], r["purchases"], r["revenue"]) for r in top], key=lambda t: -t[2]
    )
    assert [t[2] for t in got_top] == [t[2] for t in expected["top_products"]]
    assert {t[0] for t in got_top} == {t[0] for t in expected["top_products"]}


def first_shop_run(
    config: PipelineConfig,
    spark: Any,
    extracted_at: datetime,
    extra_fields: dict[str, Any] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """The shop's first raw runs (faker `r1`, the categories CSV `c1`) through every stage as
    run `run1`, gold checked against the reference; the faker records."""
    from raw2gold.transform.job import STAGES, run_stage
    from tests.transform.rawdata import categories, shop_records, write_raw_run

    lake = Lake(config.lake)
    records = shop_records()
    write_raw_run(lake, "faker", "r1", records, extracted_at, extra_fields=extra_fields)
    write_raw_run(lake, "catalog_csv", "c1", {"make_categories": categories()}, extracted_at)
    for stage in STAGES:
        run_stage(config, stage, "run1", spark=spark)
    assert_gold_matches_reference(config)
    return records
