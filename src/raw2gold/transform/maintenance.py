"""Upkeep of the pipeline's Delta tables: compact small files, delete files nothing needs.

Every run adds files: a processed table's MERGE or append, a gold table's publish. Left alone,
a table read on every run keeps growing in files (each a task and a footer to read), and the
files its rewrites replaced stay on storage forever. The ``maintain`` stage, after publish:

* OPTIMIZE a processed table (its quarantine and deleted keys too: each run that rejects rows
  appends a file to the quarantine) or Delta gold table once
  ``maintenance.optimize_min_files`` of its live files are smaller than ``small_file_mb`` and
  share a partition with another small file
  (counted from the Delta log, without Spark; a lone file per partition cannot be merged, so
  a table partitioned by day is not rewritten every run for nothing). Delta compacts within
  each partition and commits without data change, so readers, the change feed
  and incremental gold builds see the same rows (:data:`~raw2gold.transform.delta.NO_DATA_CHANGE`).
* VACUUM it with ``vacuum_retain_hours`` at most every ``vacuum_every_hours`` (the time of the
  last one is kept in ``_state/maintenance.json``): files that no version of that window needs
  are deleted, so time travel and change feeds reach back that far and no further. A gold
  build whose last publish is older falls back to a full build, as with any missing change feed.
* With ``deleted_keys_retain_days``, forget the keys CDC deletion records removed (the
  ``deleted.<table>`` tables) once their deletion record is that many days old, so a source
  that deletes a lot does not grow that table forever.

Raw is never touched (it is immutable), and Parquet gold keeps its newest versions itself.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from raw2gold.config.models import MaintenanceConfig, PipelineConfig
from raw2gold.lake.layout import Lake, utc_now
from raw2gold.lake.lease import table_lease
from raw2gold.transform.delta import delta_ref, is_delta, live_files
from raw2gold.transform.processed import EXTRACTED_AT

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

STATE = "_state/maintenance.json"
# Delta refuses a VACUUM retention under 7 days unless this check is off for the session.
RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"
DELTA_DEFAULT_RETENTION_HOURS = 168


@dataclass
class MaintenanceResult:
    """What the maintain stage did to one Delta table."""

    table: str  # processed.<name>, gold.<name> or deleted.<name>
    live_files: int  # before
    small_files: int  # before: small files in partitions holding more than one
    optimized: bool
    vacuumed: bool
    live_files_after: int
    duration_seconds: float
    keys_forgotten: int = 0  # deleted.<name>: deleted keys older than deleted_keys_retain_days

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def delta_tables(config: PipelineConfig) -> dict[str, str]:
    """The pipeline's Delta tables that exist: {"processed.x" | "quarantine.x" | "deleted.x" |
    "gold.y": lake-relative path} (``quarantine.x``: the rows processed x could not type,
    ``deleted.x``: the keys CDC deletions removed from it)."""
    lake = Lake(config.lake)
    tables = {f"processed.{t}": lake.processed_table(t) for t in config.processed}
    tables.update({f"quarantine.{t}": lake.quarantine_table(t) for t in config.processed})
    tables.update({f"deleted.{t}": lake.deleted_keys(t) for t in config.processed})
    tables.update(
        {f"gold.{t}": lake.gold_table(t) for t, m in config.gold.items() if m.format == "delta"}
    )
    return {name: path for name, path in tables.items() if is_delta(lake, path)}


def _vacuum_due(state: dict[str, Any], table: str, every_hours: float) -> bool:
    last = state.get(table, {}).get("vacuumed_at")
    if not last:
        return True
    age = datetime.now(UTC) - datetime.fromisoformat(last)
    return age.total_seconds() >= every_hours * 3600


def maintain(
    spark: SparkSession, config: PipelineConfig, run_id: str = "maintain"
) -> list[MaintenanceResult]:
    """OPTIMIZE and VACUUM the pipeline's Delta tables as ``config.maintenance`` says
    (its defaults when the pipeline has no ``maintenance`` block); each under its table's
    lease (a processed table's quarantine and deleted keys under the processed table's, which
    the run writing them holds)."""
    settings = config.maintenance or MaintenanceConfig()
    lake = Lake(config.lake)
    state: dict[str, Any] = lake.read_record(STATE) or {}
    results = []
    for table, relative in delta_tables(config).items():
        kind, _, name = table.partition(".")
        lease = f"{'gold' if kind == 'gold' else 'processed'}.{name}"
        with table_lease(lake, lease, run_id):
            results.append(_maintain_table(spark, lake, settings, state, table, relative))
    return results


def _maintain_table(
    spark: SparkSession,
    lake: Lake,
    settings: MaintenanceConfig,
    state: dict[str, Any],
    table: str,
    relative: str,
) -> MaintenanceResult:
    started = time.monotonic()
    uri = delta_ref(lake.spark_uri(relative))
    forgotten = 0
    if table.startswith("deleted.") and settings.deleted_keys_retain_days is not None:
        forgotten = _forget_deleted_keys(spark, table, uri, settings.deleted_keys_retain_days)
    files = live_files(lake, relative)
    if files is None:  # a log raw2gold cannot read without Spark: ask Spark for the count
        detail = spark.sql(f"DESCRIBE DETAIL {uri}").collect()[0]
        files = [{"size": 0}] * int(detail["numFiles"])
    small = _compactable(files, settings.small_file_mb * 2**20)
    optimize = settings.optimize_min_files > 0 and small >= settings.optimize_min_files
    if optimize:
        log.info("%s: %d of %d live files can be compacted: OPTIMIZE", table, small, len(files))
        spark.sql(f"OPTIMIZE {uri}")
    retain = settings.vacuum_retain_hours
    vacuum = False
    if retain is not None and _vacuum_due(state, table, settings.vacuum_every_hours):
        log.info("%s: VACUUM, keeping what the last %g h need", table, retain)
        _vacuum(spark, uri, retain)
        state[table] = {**state.get(table, {}), "vacuumed_at": utc_now()}
        lake.write_json(STATE, state)  # per table: a maintain that stops halfway keeps it
        vacuum = True
    after = live_files(lake, relative) if optimize else files
    return MaintenanceResult(
        table,
        len(files),
        small,
        optimize,
        vacuum,
        len(after) if after is not None else -1,
        round(time.monotonic() - started, 3),
        forgotten,
    )


def _forget_deleted_keys(spark: SparkSession, table: str, uri: str, days: float) -> int:
    """Delete the deleted keys whose deletion record was extracted more than ``days`` ago; how
    many. (A table written before the extraction time was recorded keeps its keys.)"""
    if EXTRACTED_AT not in spark.table(uri).columns:
        log.info("%s: no extraction times recorded, keeping every key", table)
        return 0
    cutoff = datetime.now(UTC) - timedelta(days=days)
    [row] = spark.sql(
        f"DELETE FROM {uri} WHERE {EXTRACTED_AT} < TIMESTAMP '{cutoff:%Y-%m-%d %H:%M:%S.%f}'"
    ).collect()
    forgotten = int(row[0] or 0)
    log.info("%s: forgot %d keys deleted more than %g days ago", table, forgotten, days)
    return forgotten


def _compactable(files: list[dict[str, Any]], small_bytes: float) -> int:
    """Small files that OPTIMIZE can merge: those in partitions holding more than one."""
    per_partition: dict[tuple[tuple[str, Any], ...], int] = {}
    for add in files:
        if int(add.get("size") or 0) < small_bytes:
            key = tuple(sorted((add.get("partitionValues") or {}).items()))
            per_partition[key] = per_partition.get(key, 0) + 1
    return sum(count for count in per_partition.values() if count > 1)


def _vacuum(spark: SparkSession, uri: str, retain_hours: float) -> None:
    """VACUUM a table; a retention under Delta's 7-day minimum is taken as configured."""
    statement = f"VACUUM {uri} RETAIN {retain_hours:g} HOURS"
    if retain_hours >= DELTA_DEFAULT_RETENTION_HOURS:
        spark.sql(statement)
        return
    before = spark.conf.get(RETENTION_CHECK, "true")
    spark.conf.set(RETENTION_CHECK, "false")
    try:
        spark.sql(statement)
    finally:
        spark.conf.set(RETENTION_CHECK, before or "true")
