"""A stream whose raw run holds no records: a new processed table is created empty (gold can
read it), and an empty newest snapshot empties its table, once."""

from __future__ import annotations

import csv
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from raw2gold.config.loader import load_pipeline
from raw2gold.ingest import ingest_source
from raw2gold.lake.layout import Lake
from raw2gold.publish.publisher import gold_arrow_table
from raw2gold.transform.delta import log_version
from raw2gold.transform.job import STAGES, run_stage
from raw2gold.transform.processed import build_processed
from tests.transform.rawdata import csv_pipeline, shop_records, users_pipeline, write_raw_run


def _all_stages(config: Any, run_id: str, spark: Any) -> dict[str, Any]:
    return {stage: run_stage(config, stage, run_id, spark=spark) for stage in STAGES}


def test_a_first_sync_without_records_gives_an_empty_table_that_gold_reads(
    tmp_path: Path, spark: Any
) -> None:
    """The first raw run of users holds no records (a connector's manifest lists no file):
    gold is built, checked and published empty instead of failing on a missing table; the
    next run's users MERGE into it."""
    (tmp_path / "pipeline.yaml").write_text(
        users_pipeline("empty", "  per_country:\n    sql: per_country.sql\n    format: delta\n")
    )
    (tmp_path / "per_country.sql").write_text(
        "SELECT nationality, COUNT(*) AS users FROM {{ ref('users') }} GROUP BY nationality"
    )
    config = load_pipeline(tmp_path / "pipeline.yaml")
    lake = Lake(config.lake)
    lake.write_json(
        Lake.raw_manifest("faker", "r1"),
        {
            "run_id": "r1",
            "source": "faker",
            "finished_at": "2026-05-01T06:00:00+00:00",
            "ingest_date": "2026-05-01",
            "streams": {"users": {"files": [], "records": 0}},
            "state": None,
        },
    )
    first = _all_stages(config, "run1", spark)
    assert all(summary["status"] == "succeeded" for summary in first.values())
    users = spark.read.format("delta").load(lake.spark_uri(lake.processed_table("users")))
    assert users.count() == 0
    assert dict(users.dtypes) == {
        **config.processed["users"].columns,
        "_raw2gold_run_id": "string",
        "_airbyte_extracted_at": "timestamp",
    }
    assert gold_arrow_table(config, "per_country").num_rows == 0

    records = shop_records(users=9)["users"]
    write_raw_run(lake, "faker", "r2", {"users": records}, datetime(2026, 5, 2, tzinfo=UTC))
    _all_stages(config, "run2", spark)
    published = gold_arrow_table(config, "per_country").to_pylist()
    assert {r["nationality"]: r["users"] for r in published} == Counter(
        r["nationality"] for r in records
    )


def test_a_csv_emptied_at_the_source_empties_its_table_once(tmp_path: Path, spark: Any) -> None:
    """The real source-file connector reads a CSV, then the same CSV with its header only: the
    snapshot table becomes empty (it kept the old rows), and reading it empty again writes
    nothing; rows that come back fill it again."""
    data = tmp_path / "makes.csv"
    rows = [["Audi", "premium"], ["Ford", "mainstream"], ["Lada", "budget"]]
    columns = {"make": "string", "category": "string"}
    csv_pipeline(tmp_path, data, "makes", ["make"], columns)
    config = load_pipeline(tmp_path / "pipeline.yaml")
    lake = Lake(config.lake)
    relative = lake.processed_table("makes")

    def land(run: str, content: list[list[str]]) -> list[tuple[str, str]]:
        with open(data, "w", newline="") as handle:
            csv.writer(handle).writerows([["make", "category"], *content])
        ingest_source(config, "csv", run, "2026-11-26")
        [result] = build_processed(spark, config, f"run-{run}")
        table = spark.read.format("delta").load(lake.spark_uri(relative))
        assert result.rows == table.count()
        return sorted((r["make"], r["category"]) for r in table.collect())

    assert land("c1", rows) == sorted((m, c) for m, c in rows)
    full = log_version(lake, relative)
    assert land("c2", []) == []
    assert log_version(lake, relative) == full + 1
    assert land("c3", []) == []
    assert log_version(lake, relative) == full + 1  # the same empty snapshot: nothing written
    assert land("c4", rows[:1]) == [("Audi", "premium")]
