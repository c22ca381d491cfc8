"""Row counts read from the Delta log (no Spark job) agree with Spark counting the table.

Covers what a processed or gold table goes through: appends past a checkpoint (every 10
commits), an overwrite, a MERGE, a DELETE with deletion vectors, and old versions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raw2gold.config.models import LakeConfig
from raw2gold.lake.layout import Lake
from raw2gold.transform.delta import live_files, log_row_count, log_version, table_rows


def _counts(spark: Any, uri: str, versions: range) -> list[int]:
    return [spark.read.format("delta").option("versionAsOf", v).load(uri).count() for v in versions]


def test_row_counts_from_the_log_match_spark(spark: Any, tmp_path: Path) -> None:
    lake = Lake(LakeConfig(uri=str(tmp_path / "lake")))
    relative = "processed/events"
    uri = lake.spark_uri(relative)
    spark.range(0, 50).write.format("delta").save(uri)
    for batch in range(1, 12):  # a checkpoint is written at version 10
        spark.range(batch * 100, batch * 100 + batch).write.format("delta").mode("append").save(uri)
    spark.sql(
        f"ALTER TABLE delta.`{uri}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')"
    )
    spark.sql(f"DELETE FROM delta.`{uri}` WHERE id % 7 = 0")  # deletion vectors
    spark.range(5, 60).createOrReplaceTempView("incoming")
    spark.sql(
        f"MERGE INTO delta.`{uri}` AS t USING incoming AS s ON t.id = s.id "
        "WHEN NOT MATCHED THEN INSERT *"
    )
    newest = log_version(lake, relative)
    assert lake.exists(f"{relative}/_delta_log/{10:020d}.checkpoint.parquet")

    # the checksum files list the live files; without them the log is replayed
    expected = _counts(spark, uri, range(newest + 1))
    assert [log_row_count(lake, relative, v) for v in range(newest + 1)] == expected
    for crc in lake.list_files(f"{relative}/_delta_log", ".crc"):
        lake.delete_file(crc)
    assert [log_row_count(lake, relative, v) for v in range(newest + 1)] == expected
    assert log_row_count(lake, relative) == expected[-1]

    spark.range(0, 3).write.format("delta").mode("overwrite").save(uri)
    assert log_row_count(lake, relative) == 3
    assert table_rows(spark, lake, relative, newest) == expected[-1]


def test_no_usable_log_falls_back_to_counting(spark: Any, tmp_path: Path) -> None:
    lake = Lake(LakeConfig(uri=str(tmp_path / "lake")))
    relative = "gold/t"
    uri = lake.spark_uri(relative)
    spark.conf.set("spark.databricks.delta.stats.collect", "false")
    try:
        spark.range(0, 7).write.format("delta").save(uri)
    finally:
        spark.conf.unset("spark.databricks.delta.stats.collect")
    assert log_row_count(lake, relative) is None  # files without numRecords statistics
    assert table_rows(spark, lake, relative) == 7
    assert log_row_count(lake, "gold/missing") is None


def test_partition_values_after_a_checkpoint(spark: Any, tmp_path: Path) -> None:
    """A partitioned table past its first checkpoint, with more files than its checksum lists:
    the live files come from the checkpoint, whose partition values must read as the JSON log's
    (an incremental Delta publish decides append vs replaceWhere from them)."""
    from raw2gold.publish.publisher import _partitions_absent

    lake = Lake(LakeConfig(uri=str(tmp_path / "lake")))
    relative = "gold/daily"
    uri = lake.spark_uri(relative)
    for day in range(12):  # one commit per day, 12 files each: a checkpoint at version 10
        rows = spark.range(0, 12).selectExpr(f"DATE'2026-01-01' + {day} AS day", "id")
        rows.repartition(12).write.format("delta").mode("append").partitionBy("day").save(uri)
    assert lake.exists(f"{relative}/_delta_log/{10:020d}.checkpoint.parquet")
    for crc in lake.list_files(f"{relative}/_delta_log", ".crc"):
        lake.delete_file(crc)  # (Delta lists files in a checksum only for small tables)

    files = live_files(lake, relative)
    assert files is not None
    assert len(files) == len(spark.read.format("delta").load(uri).inputFiles())
    days = {f["partitionValues"]["day"] for f in files}
    assert days == {f"2026-01-{d:02d}" for d in range(1, 13)}
    assert not _partitions_absent(lake, relative, ["day"], [("2026-01-03",)])
    assert _partitions_absent(lake, relative, ["day"], [("2026-02-01",)])
