"""Source column names Delta refuses (a CSV header `Unit Price`): processed names them with _."""

from __future__ import annotations

import csv
import json
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from raw2gold.config.loader import load_pipeline
from raw2gold.ingest import ingest_source
from raw2gold.lake.layout import Lake
from raw2gold.publish.publisher import gold_arrow_table
from raw2gold.transform.job import StageError, run_stage
from raw2gold.transform.processed import ProcessedError, build_processed
from tests.ingest.conftest import read_raw
from tests.transform.rawdata import (
    csv_pipeline,
    shop_records,
    ts,
    users_pipeline,
    with_processed,
    write_raw_run,
)

HEADER = ["SKU", "Unit Price", "In Stock", "Size (cm)", "a=b", "Weight.kg"]
ROWS = [
    ["a-1", "9.99", "true", "12", "x", "0.5"],
    ["b-2", "12.50", "false", "40", "y", "1.25"],
    ["c-3", "cheap", "true", "7", "w", "2"],  # a price that is not a number
]


def test_a_csv_with_spaces_and_brackets_in_its_header_reaches_processed(
    tmp_path: Path, spark: Any
) -> None:
    """The real source-file connector lands the CSV with its header as it is; processed stores
    `Unit Price` as Unit_Price (declared), `In Stock` and `Size (cm)` as In_Stock and Size__cm_
    (kept, undeclared), where Delta refuses the raw names; `Weight.kg`, which Delta takes, keeps
    its name (and, declared, is typed by it, not read as a field of a struct `Weight`)."""
    data = tmp_path / "prices.csv"
    with open(data, "w", newline="") as handle:
        csv.writer(handle).writerows([HEADER, *ROWS])
    columns = {"SKU": "string", "Unit_Price": "decimal(10,2)", "Weight.kg": "double"}
    pipeline = csv_pipeline(tmp_path, data, "prices", ["SKU"], columns)
    config = load_pipeline(pipeline)
    manifest = ingest_source(config, "csv", "r1", "2026-11-26")
    landed = read_raw(config, manifest["streams"]["prices"]["files"])
    assert {"Unit Price", "In Stock", "Size (cm)", "a=b"} <= set(landed[0])

    [result] = build_processed(spark, config, "run1")
    assert (result.rows_read, result.rows_quarantined) == (3, 1)
    lake = Lake(config.lake)
    df = spark.read.format("delta").load(lake.spark_uri(lake.processed_table("prices")))
    assert [c for c in df.columns if not c.startswith("_")] == [
        "SKU",
        "Unit_Price",
        "Weight.kg",
        "In_Stock",
        "Size__cm_",
        "a_b",
    ]
    rows = {r["SKU"]: r.asDict() for r in df.collect()}
    expected = {row[0]: row for row in ROWS if row[1] != "cheap"}
    assert sorted(rows) == sorted(expected)
    for sku, row in expected.items():
        got = rows[sku]
        assert (got["Unit_Price"], got["a_b"]) == (Decimal(row[1]), row[4])
        assert str(got["In_Stock"]).lower() == row[2]
        assert int(got["Size__cm_"]) == int(row[3])
        assert got["Weight.kg"] == float(row[5])
    [bad] = spark.read.format("delta").load(lake.spark_uri("quarantine/prices")).collect()
    assert bad["reason"] == "column Unit_Price: cannot cast cheap to decimal(10,2)"


def test_two_raw_columns_that_would_share_a_name_stop_the_table_naming_both(
    tmp_path: Path, spark: Any, shop_pipeline: Path
) -> None:
    lake_dir = tmp_path / "lake"
    config = load_pipeline(shop_pipeline, str(lake_dir))
    users = shop_records(users=3)["users"]
    extra = {"Launch Year": pa.int64(), "Launch_Year": pa.int64()}
    record = {**users[0], "updated_at": ts(5, 1), "Launch Year": 1, "Launch_Year": 2}
    write_raw_run(
        Lake(config.lake),
        "faker",
        "r1",
        {"users": [record]},
        datetime(2026, 2, 1, 6, tzinfo=UTC),
        extra_fields=extra,
    )
    with pytest.raises(ProcessedError) as caught:
        build_processed(spark, config, "run1", tables=["users"])
    assert str(caught.value) == (
        "processed users: raw columns 'Launch Year' and 'Launch_Year' of faker.users would be "
        "one column in processed (Spark and Delta ignore case in column names, and Delta "
        "refuses spaces and ',;{}()=', which become _); rename one at the source"
    )
    assert not (lake_dir / "processed" / "users").exists()


@pytest.mark.parametrize("fmt", ["delta", "parquet"])
def test_a_gold_column_name_delta_refuses_stops_the_build_naming_the_model(
    tmp_path: Path, spark: Any, fmt: str
) -> None:
    """Delta would refuse `User Count` only at publish, after the checks: the gold build stops
    first, naming the model's file and a name Delta takes. Parquet gold keeps the name."""
    (tmp_path / "pipeline.yaml").write_text(
        users_pipeline("names", f"  per_country:\n    sql: per_country.sql\n    format: {fmt}\n")
    )
    (tmp_path / "per_country.sql").write_text(
        "SELECT nationality, COUNT(*) AS `User Count` FROM {{ ref('users') }} GROUP BY 1"
    )
    config = load_pipeline(tmp_path / "pipeline.yaml")
    users = shop_records(users=6)["users"]
    write_raw_run(
        Lake(config.lake), "faker", "r1", {"users": users}, datetime(2026, 4, 1, tzinfo=UTC)
    )
    run_stage(config, "processed", "run1", spark=spark)
    if fmt == "delta":
        with pytest.raises(StageError) as caught:
            run_stage(config, "gold", "run1", spark=spark)
        assert str(caught.value) == (
            "gold per_country: Delta refuses spaces and ',;{}()=' in column names: rename "
            "'User Count' (e.g. AS User_Count) in per_country.sql, or publish it as "
            "format: parquet"
        )
        return
    for stage in ("gold", "check", "publish"):
        assert run_stage(config, stage, "run1", spark=spark)["status"] == "succeeded"
    counts = Counter(u["nationality"] for u in users)
    published = gold_arrow_table(config, "per_country").to_pylist()
    assert {r["nationality"]: r["User Count"] for r in published} == counts


def test_raw_columns_that_differ_only_in_case_and_a_declared_name_in_another_case(
    tmp_path: Path, spark: Any, shop_pipeline: Path
) -> None:
    """Spark cannot read a raw file with `email` and `EMAIL` (COLUMN_ALREADY_EXISTS, naming
    neither the table nor the file); a declared `Nationality` when raw has `nationality` names
    the raw column it may mean."""
    config = load_pipeline(shop_pipeline, str(tmp_path / "lake"))
    lake = Lake(config.lake)
    users = [{**u, "EMAIL": u["email"].upper()} for u in shop_records(users=3)["users"]]
    write_raw_run(
        lake,
        "faker",
        "r1",
        {"users": users},
        datetime(2026, 2, 1, tzinfo=UTC),
        None,
        {"EMAIL": pa.string()},
    )
    with pytest.raises(ProcessedError) as caught:
        build_processed(spark, config, "run1", tables=["users"])
    assert str(caught.value).startswith(
        "processed users: raw columns 'email' and 'EMAIL' of faker.users (raw file "
        "raw/faker/users/ingest_date=2026-02-01/run_id=r1/part-00000.parquet) would be one "
        "column in processed"
    )

    lake.delete_file(Lake.raw_manifest("faker", "r1"))
    write_raw_run(lake, "faker", "r2", {"users": users}, datetime(2026, 2, 2, tzinfo=UTC))
    columns = dict(config.processed["users"].columns)
    columns["Nationality"] = columns.pop("nationality")
    renamed = with_processed(config, "users", columns=columns)
    with pytest.raises(ProcessedError) as caught:
        build_processed(spark, renamed, "run2", tables=["users"])
    assert str(caught.value) == (
        "processed users: raw data of faker.users has no column(s) Nationality (declared in "
        "columns; raw has nationality)"
    )
    [result] = build_processed(spark, config, "run2", tables=["users"])
    assert result.rows == 3


NESTED = "struct<`Zip Code`: string, lines: array<struct<`Line No`: int, text: string>>>"


def test_struct_field_names_delta_refuses_are_stored_with_underscores(
    tmp_path: Path, spark: Any
) -> None:
    """A declared struct with a field `Zip Code` (JSON keys as the source names them) failed
    every processed run with DELTA_INVALID_CHARACTERS_IN_COLUMN_NAMES; now the JSON is read by
    the declared names and stored as Zip_Code, also in arrays of structs and in the empty
    table a first sync without records creates. A gold model making such a field stops at its
    build, naming the field's path."""
    gold = (
        "  zips:\n    sql: zips.sql\n    format: delta\n"
        "  nested:\n    sql: nested.sql\n    format: delta\n"
    )
    text = users_pipeline("nested", gold).replace(
        "updated_at: timestamp}", f"updated_at: timestamp, address: '{NESTED}'}}"
    )
    (tmp_path / "pipeline.yaml").write_text(text)
    (tmp_path / "zips.sql").write_text(
        "SELECT id, address.Zip_Code AS zip, address.lines[0].Line_No AS line_no "
        "FROM {{ ref('users') }}"
    )
    (tmp_path / "nested.sql").write_text(
        "SELECT id, named_struct('Zip Code', address.Zip_Code) AS place FROM {{ ref('users') }}"
    )
    config = load_pipeline(tmp_path / "pipeline.yaml")
    lake = Lake(config.lake)
    address = {"address": pa.string()}
    write_raw_run(
        lake, "faker", "r0", {"users": []}, datetime(2026, 4, 1, tzinfo=UTC), None, address
    )
    run_stage(config, "processed", "run0", spark=spark)
    table = spark.read.format("delta").load(lake.spark_uri(lake.processed_table("users")))
    stored = "struct<Zip_Code:string,lines:array<struct<Line_No:int,text:string>>>"
    assert table.schema["address"].dataType.simpleString() == stored

    users = shop_records(users=4)["users"]
    for i, user in enumerate(users):
        place = {"Zip Code": f"0{i}00{i}", "lines": [{"Line No": i + 1, "text": "Main St"}]}
        user["address"] = json.dumps(place)
    write_raw_run(
        lake, "faker", "r1", {"users": users}, datetime(2026, 4, 2, tzinfo=UTC), None, address
    )
    run_stage(config, "processed", "run1", spark=spark)
    run_stage(config, "gold", "run1", spark=spark, tables=["zips"])
    staged = spark.read.parquet(lake.spark_uri(lake.staging_gold("run1", "zips"))).collect()
    expected = {u["id"]: (f"0{i}00{i}", i + 1) for i, u in enumerate(users)}
    assert {r["id"]: (r["zip"], r["line_no"]) for r in staged} == expected
    with pytest.raises(StageError) as caught:
        run_stage(config, "gold", "run1", spark=spark, tables=["nested"])
    assert str(caught.value) == (
        "gold nested: Delta refuses spaces and ',;{}()=' in column names: rename "
        "'place.Zip Code' (e.g. to Zip_Code) in nested.sql, or publish it as format: parquet"
    )
