"""The fingerprint that tells whether a full-refresh snapshot changes its processed table.

A snapshot re-read without changes must match (whatever its row order, raw run and extraction
time); any changed value, a value moved to NULL, a changed type or nested value must not.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from raw2gold.config.models import ProcessedModel
from raw2gold.transform.processed import content_fingerprint

MODEL = ProcessedModel(
    source="catalog_csv.make_categories",
    primary_key=["make"],
    columns={"make": "string", "category": "string", "rank": "int", "tags": "map<string,int>"},
)
ROWS = [
    ("Audi", "premium", 1, {"a": 1}),
    ("BMW", None, 2, {"b": 2}),
    ("Ford", "mainstream", None, None),
]
SCHEMA = (
    "make string, category string, rank int, tags map<string,int>,"
    " _raw2gold_run_id string, _airbyte_extracted_at timestamp"
)


def fingerprint(
    spark: Any, rows: list[tuple[Any, ...]], run: str = "r1", schema: str = SCHEMA
) -> dict[str, Any]:
    at = datetime(2026, 1, 1, tzinfo=UTC) if run == "r1" else datetime(2026, 2, 1, tzinfo=UTC)
    df = spark.createDataFrame([(*r, run, at) for r in rows], schema)
    return content_fingerprint(df, MODEL)


def test_the_same_rows_match_in_any_order_from_any_run(spark: Any) -> None:
    first = fingerprint(spark, ROWS)
    assert first["rows"] == 3
    assert fingerprint(spark, ROWS[::-1], run="r2") == first


def test_any_change_to_the_rows_does_not_match(spark: Any) -> None:
    first = fingerprint(spark, ROWS)
    audi, bmw, ford = ROWS
    changed = {
        "a value": [("Audi", "luxury", 1, {"a": 1}), bmw, ford],
        "a value moved into the NULL beside it": [audi, (None, "BMW", 2, {"b": 2}), ford],
        "a nested value": [("Audi", "premium", 1, {"a": 2}), bmw, ford],
        "a row fewer": [audi, bmw],
        "a row twice": [audi, bmw, ford, ford],
        "two values swapped between rows": [
            ("Audi", "premium", 2, {"a": 1}),
            ("BMW", None, 1, {"b": 2}),
            ford,
        ],
    }
    for what, rows in changed.items():
        assert fingerprint(spark, rows) != first, what
    wider = SCHEMA.replace("rank int", "rank bigint")
    assert fingerprint(spark, ROWS, schema=wider) != first, "a column's type"
