"""Publish staged gold atomically, only after the run's checks passed.

* Delta, mode overwrite: one overwrite commit (``partitionBy`` when configured).
* Delta, mode merge: one ``MERGE INTO`` on the model's keys.
* Delta, mode replace_partitions: one dynamic partition overwrite: the partitions present in
  the run's output are replaced, all others stay as they are.
* Incremental builds (a model's ``incremental``): one ``MERGE INTO`` that deletes the rows of
  the rebuilt groups and inserts their new rows (Delta); Parquet writes the whole new version.
* Unchanged builds (inputs and model as at the last publish) publish nothing.
* Parquet: the data goes to ``gold/<table>/version=<run_id>/``; then the pointer
  ``gold/<table>/_current.json`` is replaced in one atomic write. The newest
  :data:`KEEP_VERSIONS` versions are kept.

Each Delta commit carries lineage as userMetadata (run id, processed inputs with their raw runs,
rows, check results); the same lineage goes to ``_state/runs/<run_id>/publish.json``. Publishing
a run twice changes nothing the second time. Each table flips atomically; if publishing stops
between two tables, re-running publish for the run completes the rest.

Two runs at once (``raw2gold run`` beside a scheduled run): each publish of a table is numbered
(``publish_number`` in its lineage) and a build records the number it followed. A run publishes
a table only if no other run published it since its build: checked before writing, and for Delta
again by Delta itself (the commit records transaction id ``raw2gold`` at the new number, so of
two publishes following the same one, Delta keeps one). A Parquet pointer is compared and replaced
in one compare-and-swap (:meth:`Lake.swap_json`: a lock beside it locally, a conditional write on
S3), so of two publishes following the same one, one switches the pointer.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from raw2gold.config.loader import gold_order
from raw2gold.config.models import PipelineConfig
from raw2gold.errors import Raw2GoldError, error_class, first_line
from raw2gold.lake.layout import ConcurrentWriteError, Lake, utc_now
from raw2gold.lake.lease import table_lease
from raw2gold.transform.delta import (
    CONCURRENT,
    commit_metadata,
    delta_ref,
    is_delta,
    live_files,
    log_row_count,
    log_version,
    newest_metadata,
    quote,
    sql_literal,
    table_rows,
)
from raw2gold.transform.gold import (
    AFFECTED_PREFIX,
    parquet_rows,
    prospective,
    read_affected,
    read_parquet,
    read_staged,
    staged_build,
    staged_is_whole,
    written_schema,
)
from raw2gold.transform.parallel import in_parallel

if TYPE_CHECKING:
    import pyarrow as pa
    from deltalake import DeltaTable
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

POINTER = "_current.json"
KEEP_VERSIONS = 3
MAX_PARTITIONS = 1000  # rebuilt partitions replaced by replaceWhere; more: by MERGE
# recorded with each publish
BUILD_KEYS = ("mode", "reason", "inputs", "model_hash", "groups", "layout")


class PublishError(Raw2GoldError):
    """Publishing is refused or failed; gold stays as it was. Final unless raised with
    ``final=False``: a run whose build another run's publish overtook must run again whole."""

    final = True


def not_published(table: str) -> PublishError:
    """The error for reading a gold table no run has published."""
    return PublishError(
        f"gold table {table} has not been published yet: a run publishes it "
        "(raw2gold run, or the pipeline's DAG in Airflow)"
    )


@dataclass
class PublishResult:
    """What publishing one gold table did."""

    table: str
    format: str
    mode: str
    action: str  # published | already_published | unchanged
    rows: int
    version: str
    duration_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pointer_path(table: str) -> str:
    return f"{Lake.gold_table(table)}/{POINTER}"


def current_pointer(lake: Lake, table: str) -> dict[str, Any] | None:
    """The pointer of a Parquet gold table (None before its first publish)."""
    if not lake.exists(pointer_path(table)):
        return None
    pointer: dict[str, Any] = lake.read_json(pointer_path(table))
    return pointer


def _newest_publish(
    lake: Lake, config: PipelineConfig, table: str
) -> tuple[int, dict[str, Any]] | None:
    """(Delta version or -1 for Parquet, lineage) of a gold table's newest raw2gold publish."""
    if config.gold[table].format == "parquet":
        pointer = current_pointer(lake, table)
        meta = (pointer or {}).get("lineage")
        return (-1, dict(meta)) if isinstance(meta, dict) else None
    return newest_metadata(lake, lake.gold_table(table), "raw2gold_run_id", look_back=None)


def last_publish(lake: Lake, config: PipelineConfig, table: str) -> dict[str, Any] | None:
    """The lineage recorded by a gold table's newest raw2gold publish (None: never published).

    Read without Spark: the newest Delta commits' userMetadata, or the Parquet pointer.
    """
    found = _newest_publish(lake, config, table)
    if found is None:
        return None
    version, meta = found
    if meta.get("rows") is None:  # an incremental publish leaves the rows to the Delta log
        meta = {**meta, "rows": log_row_count(lake, lake.gold_table(table), version)}
    return meta


def publish_number(meta: dict[str, Any] | None) -> int:
    """The number of the publish whose lineage this is (0: none, or one recorded before
    publishes were numbered)."""
    return int((meta or {}).get("publish_number") or 0)


def another_run_published(table: str, other: str | None) -> str:
    """What to tell when another run published a table after this run built it."""
    who = f"another run ({other})" if other else "another run"
    return (
        f"gold {table}: {who} published the table after this run built it, so this run "
        "published nothing to it (its build may be older than what is published); run again "
        "to build from the newest data"
    )


def _newest_number(lake: Lake, config: PipelineConfig, table: str) -> tuple[int, str | None]:
    """The number of the table's newest publish and the run that made it."""
    found = _newest_publish(lake, config, table)
    meta = found[1] if found else None
    return publish_number(meta), (meta or {}).get("raw2gold_run_id")


def _numbered(
    lake: Lake, config: PipelineConfig, table: str, metadata: dict[str, Any], built_on: int | None
) -> tuple[int, dict[str, Any]]:
    """(the publish number the build followed, the publish's metadata with its own number);
    raise if another run published the table since. ``built_on`` None: a build staged before
    publishes were numbered, which follows the newest publish."""
    number, run = _newest_number(lake, config, table)
    if built_on is not None and number != built_on:
        raise PublishError(another_run_published(table, run))
    return number, {**metadata, "publish_number": number + 1}


def lineage(spark: SparkSession, config: PipelineConfig, run_id: str) -> dict[str, Any]:
    """Inputs of the run's gold: each processed table's Delta version and the raw runs its
    newest raw2gold commit applied (read from the Delta log, so retries keep the lineage)."""
    lake = Lake(config.lake)
    inputs: dict[str, Any] = {}
    for table in config.processed:
        relative = lake.processed_table(table)
        newest = log_version(lake, relative)
        if newest < 0:
            continue
        found = newest_metadata(lake, relative, "raw_runs")
        meta = found[1] if found else {}
        inputs[table] = {
            "delta_version": newest,
            "last_raw_runs": meta.get("new_raw_runs", []),
            "last_written_by_run": meta.get("raw2gold_run_id"),
            "raw_runs_total": len(meta.get("raw_runs", [])),
        }
    return {"run_id": run_id, "processed": inputs}


def _publish_delta(
    spark: SparkSession,
    config: PipelineConfig,
    lake: Lake,
    table: str,
    run_id: str,
    df: DataFrame,
    metadata: dict[str, Any],
    incremental: bool = False,
    built_on: int | None = None,
) -> tuple[str, str]:
    """Publish in one Delta commit unless this run did already or another run published the
    table after this run's build (``built_on``: the publish number the build followed; None:
    a build recorded before publishes were numbered, not compared)."""
    relative = lake.gold_table(table)
    # this run's commit, if an earlier attempt made it (any commit the log still holds)
    done = newest_metadata(lake, relative, "raw2gold_run_id", look_back=None, value=run_id)
    if done is not None:
        return "already_published", str(done[0])
    built_on, metadata = _numbered(lake, config, table, metadata, built_on)
    _write_delta(spark, config, lake, table, run_id, df, metadata, incremental, built_on)
    done = newest_metadata(lake, relative, "raw2gold_run_id", look_back=None, value=run_id)
    if done is None:  # Delta skipped the write: another run's commit holds the number
        raise PublishError(another_run_published(table, _newest_number(lake, config, table)[1]))
    return "published", str(done[0])


def _write_delta(
    spark: SparkSession,
    config: PipelineConfig,
    lake: Lake,
    table: str,
    run_id: str,
    df: DataFrame,
    metadata: dict[str, Any],
    incremental: bool,
    built_on: int,
) -> None:
    """The publish's one commit, with Delta's transaction id ``raw2gold`` at ``built_on + 1``:
    Delta skips it, or fails it with a concurrent-transaction conflict, if another publish
    took that number first."""
    model = config.gold[table]
    relative = lake.gold_table(table)
    uri = lake.spark_uri(relative)
    try:
        if incremental:
            _replace_groups(spark, config, run_id, table, uri, df, metadata, built_on)
        elif model.mode == "merge" and is_delta(lake, relative):
            view = f"__r2g_publish_{table}"
            df.createOrReplaceTempView(view)
            on = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in model.keys)
            with commit_metadata(spark, metadata, built_on):
                spark.sql(
                    f"MERGE INTO {delta_ref(uri)} AS t USING {view} AS s ON {on} "
                    "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *"
                )
            spark.catalog.dropTempView(view)
        elif model.mode == "replace_partitions" and is_delta(lake, relative):
            writer = (
                df.write.format("delta")
                .mode("overwrite")
                .option("partitionOverwriteMode", "dynamic")
                .partitionBy(*model.partition_by)
            )
            with commit_metadata(spark, metadata, built_on):
                writer.save(uri)
        else:
            writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
            if model.partition_by:
                writer = writer.partitionBy(*model.partition_by)
            with commit_metadata(spark, metadata, built_on):
                writer.save(uri)
    except Exception as exc:
        kind = error_class(exc) or ""
        if not kind.startswith(CONCURRENT):
            raise
        number, other = _newest_number(lake, config, table)
        if number != built_on:
            raise PublishError(another_run_published(table, other)) from exc
        raise PublishError(
            f"gold {table}: another commit to the table (maintenance, or a writer other than "
            f"raw2gold) conflicted with this run's ({kind}), so this run published nothing to "
            "it; publish the run again",
            final=False,
        ) from exc


def _partition_groups(
    config: PipelineConfig, run_id: str, table: str
) -> list[tuple[Any, ...]] | None:
    """The rebuilt groups, when they are whole partitions (every `by` column is a partition
    column), few enough and of types a partition predicate names; else None."""
    import datetime as dt

    import pyarrow.parquet as pq

    model = config.gold[table]
    incremental = model.incremental
    assert incremental is not None
    if not set(incremental.by) <= set(model.partition_by):
        return None
    lake = Lake(config.lake)
    relative = lake.staging_affected(run_id, table)
    if parquet_rows(lake, relative) > MAX_PARTITIONS:
        return None
    columns = [f"{AFFECTED_PREFIX}{i}" for i in range(len(incremental.by))]
    read = pq.read_table(lake.path(relative), columns=columns, filesystem=lake.fs)
    groups = [tuple(row[c] for c in columns) for row in read.to_pylist()]
    for group in groups:
        for value in group:
            is_date = isinstance(value, dt.date) and not isinstance(value, dt.datetime)
            plain = isinstance(value, int | str) and not isinstance(value, bool)
            if value is not None and not is_date and not plain:
                return None  # other types: the MERGE below
    return groups


def _partition_text(value: Any) -> str | None:
    """A partition value as the Delta log writes it (``partitionValues``)."""
    return (
        None if value is None else value.isoformat() if hasattr(value, "isoformat") else str(value)
    )


def _partition_predicate(by: list[str], groups: list[tuple[Any, ...]]) -> str:
    """A replaceWhere predicate naming each group's partition."""
    terms = []
    for group in groups:
        parts = []
        for column, value in zip(by, group, strict=True):
            if value is None:
                parts.append(f"{quote(column)} IS NULL")
            elif hasattr(value, "isoformat"):
                parts.append(f"{quote(column)} = DATE'{value.isoformat()}'")
            else:
                parts.append(f"{quote(column)} = {sql_literal(value)}")
        terms.append("(" + " AND ".join(parts) + ")")
    return " OR ".join(terms) if terms else "FALSE"


def _partitions_absent(
    lake: Lake, relative: str, by: list[str], groups: list[tuple[Any, ...]]
) -> bool:
    """Whether no live file of the table lies in any of the groups' partitions (Delta log)."""
    files = live_files(lake, relative)
    if files is None:
        return False
    wanted = {tuple(_partition_text(v) for v in group) for group in groups}
    for add in files:
        values = add.get("partitionValues") or {}
        if tuple(values.get(column) for column in by) in wanted:
            return False
    return True


def _replace_groups(
    spark: SparkSession,
    config: PipelineConfig,
    run_id: str,
    table: str,
    uri: str,
    staged: DataFrame,
    metadata: dict[str, Any],
    built_on: int,
) -> None:
    """One MERGE commit: delete the gold rows of the rebuilt groups, insert their new rows.

    When the groups are whole partitions: one overwrite with ``replaceWhere`` on them instead,
    or an append when the Delta log shows none of them holds a file yet (publishes of a table
    are serialized: the DAG runs one at a time). Otherwise the source holds one 'delete' row
    per group (matching every gold row of the group; Delta allows many matches for an
    unconditional DELETE) and the staged rows as 'insert' rows, which never match. A group
    that became empty is thus removed too.
    """
    from pyspark.sql import functions as F

    model = config.gold[table]
    incremental = model.incremental
    assert incremental is not None
    lake = Lake(config.lake)
    partitions = _partition_groups(config, run_id, table)
    if partitions is not None:
        writer = staged.write.format("delta").partitionBy(*model.partition_by)
        if _partitions_absent(lake, lake.gold_table(table), incremental.by, partitions):
            writer = writer.mode("append")  # new partitions only (a new day, say)
        else:
            writer = writer.mode("overwrite").option(
                "replaceWhere", _partition_predicate(incremental.by, partitions)
            )
        with commit_metadata(spark, metadata, built_on):
            writer.save(uri)
        return
    groups = [f"{AFFECTED_PREFIX}{i}" for i in range(len(incremental.by))]
    deletes = read_affected(spark, config, run_id, table).select(
        *groups,
        *[F.lit(None).cast(f.dataType).alias(f.name) for f in staged.schema.fields],
        F.lit("delete").alias("__r2g_op"),
    )
    inserts = staged.select(
        *[F.col(quote(b)).alias(g) for b, g in zip(incremental.by, groups, strict=True)],
        *[F.col(quote(c)) for c in staged.columns],
        F.lit("insert").alias("__r2g_op"),
    )
    view = f"__r2g_publish_{table}"
    deletes.unionByName(inserts).createOrReplaceTempView(view)
    pairs = zip(incremental.by, groups, strict=True)
    on = " AND ".join(f"t.{quote(b)} <=> s.{g}" for b, g in pairs)
    names = [quote(c) for c in staged.columns]
    with commit_metadata(spark, metadata, built_on):
        spark.sql(
            f"MERGE INTO {delta_ref(uri)} AS t USING {view} AS s "
            f"ON s.__r2g_op = 'delete' AND {on} "
            "WHEN MATCHED THEN DELETE "
            f"WHEN NOT MATCHED AND s.__r2g_op = 'insert' THEN INSERT ({', '.join(names)}) "
            f"VALUES ({', '.join('s.' + n for n in names)})"
        )
    spark.catalog.dropTempView(view)


def _version_dirs(lake: Lake, table: str) -> list[str]:
    folders = lake.folders(lake.gold_table(table))
    return [f.removeprefix("version=") for f in folders if f.startswith("version=")]


def _publish_parquet(
    config: PipelineConfig,
    lake: Lake,
    table: str,
    run_id: str,
    df: DataFrame,
    metadata: dict[str, Any],
    built_on: int | None = None,
) -> tuple[str, str, int]:
    """Write the rows as a new version folder, then switch the pointer; (action, version, rows).

    Refused, writing nothing, when another run published the table after this run's build
    (``built_on`` as for :func:`_publish_delta`).
    """
    model = config.gold[table]
    pointer = current_pointer(lake, table)
    relative = f"{lake.gold_table(table)}/version={run_id}"
    if pointer and run_id in pointer.get("versions", []):  # an earlier attempt published it
        return "already_published", run_id, parquet_rows(lake, relative)
    built_on, metadata = _numbered(lake, config, table, metadata, built_on)
    writer = df.write.mode("overwrite")
    if model.partition_by:
        writer = writer.partitionBy(*model.partition_by)
    writer.parquet(lake.spark_uri(relative))
    if metadata.get("rows") is None:  # an incremental publish: read from what was written
        metadata = {**metadata, "rows": parquet_rows(lake, relative)}
    previous = pointer.get("versions", []) if pointer else []
    versions = [run_id, *[v for v in previous if v != run_id]][:KEEP_VERSIONS]
    entry = {
        "version": run_id,
        "run_id": run_id,
        "published_at": metadata.get("published_at"),
        "rows": metadata.get("rows"),
        "checks": metadata.get("checks", []),
        **history_inputs(config, table, metadata),
    }
    old_entries = [e for e in (pointer or {}).get("history", []) if e.get("version") in versions]
    new_pointer = {
        "version": run_id,
        "path": relative,
        "format": "parquet",
        "partition_by": model.partition_by,
        "schema": written_schema(df.schema),
        "published_at": utc_now(),
        "versions": versions,
        "history": [entry, *[e for e in old_entries if e.get("version") != run_id]],
        "lineage": metadata,
    }
    try:
        _write_pointer(config, lake, table, new_pointer, built_on)
    except PublishError:
        lake.delete_dir(relative)
        raise
    # keep what a pointer written since names too (a run that published after this one)
    kept = set(versions) | set((current_pointer(lake, table) or {}).get("versions", []))
    for old in _version_dirs(lake, table):
        if old not in kept:
            lake.delete_dir(f"{lake.gold_table(table)}/version={old}")
    return "published", run_id, int(metadata["rows"])


def _write_pointer(
    config: PipelineConfig, lake: Lake, table: str, pointer: dict[str, Any], built_on: int
) -> None:
    """Replace the table's pointer in one write, unless another run published it meanwhile:
    the pointer's number is compared and the pointer replaced in one compare-and-swap."""

    def replace(current: dict[str, Any] | None) -> dict[str, Any]:
        newest = (current or {}).get("lineage")
        if publish_number(newest) != built_on:
            raise PublishError(another_run_published(table, (newest or {}).get("raw2gold_run_id")))
        return pointer

    try:
        lake.swap_json(pointer_path(table), replace)
    except ConcurrentWriteError as exc:
        _, other = _newest_number(lake, config, table)
        raise PublishError(another_run_published(table, other)) from exc


def _publish_table(
    spark: SparkSession,
    config: PipelineConfig,
    run_id: str,
    table: str,
    build: dict[str, Any],
    metadata: dict[str, Any],
    checked_rows: dict[str, Any],
) -> PublishResult:
    """Publish one staged gold table in one commit (Delta) or pointer switch (Parquet)."""
    lake = Lake(config.lake)
    started = time.monotonic()
    model = config.gold[table]
    if build["mode"] == "unchanged":
        last = last_publish(lake, config, table) or {}
        log.info("gold %s unchanged (%s)", table, build.get("reason"))
        return PublishResult(
            table,
            model.format,
            model.mode,
            "unchanged",
            int(last.get("rows") or 0),
            str(last.get("raw2gold_run_id", "")),
            round(time.monotonic() - started, 3),
        )
    incremental = build["mode"] == "incremental"
    built_on = build.get("built_on_publish")  # None: staged before publishes were numbered
    df = read_staged(spark, config, run_id, table, build)
    # Rows as the check stage counted them, or the staged rows of a full build that replaces
    # the table; else the publish reads them after writing (Delta log, Parquet footers).
    counted = checked_rows.get(table)
    replaces_table = not incremental and staged_is_whole(lake, config, table)
    if counted is None and replaces_table and build.get("rows") is not None:
        counted = int(build["rows"])
    rows = None if counted is None else int(counted)
    if rows is not None:
        metadata = {**metadata, "rows": rows}
    if model.format == "delta":
        with table_lease(lake, f"gold.{table}", run_id):
            action, version = _publish_delta(
                spark, config, lake, table, run_id, df, metadata, incremental, built_on
            )
        if rows is None:
            rows = table_rows(spark, lake, lake.gold_table(table), int(version))
    else:
        whole = prospective(spark, config, run_id, table) if incremental else df
        # the lease too: a publish prunes every version folder its pointer does not name,
        # which would include one another run is writing at that moment
        with table_lease(lake, f"gold.{table}", run_id):
            action, version, rows = _publish_parquet(
                config, lake, table, run_id, whole, metadata, built_on
            )
    log.info("gold %s %s (version %s, %d rows)", table, action, version, rows)
    return PublishResult(
        table,
        model.format,
        model.mode,
        action,
        rows,
        version,
        round(time.monotonic() - started, 3),
    )


def publish(
    spark: SparkSession,
    config: PipelineConfig,
    run_id: str,
    require_checks: bool = True,
) -> list[PublishResult]:
    """Publish every gold table staged by the run; refuse unless its check stage passed."""
    lake = Lake(config.lake)
    from raw2gold.transform.job import stage_record

    checks = stage_record(lake, run_id, "check")
    parts = (checks or {}).get("parts", [])
    checked = set(config.gold) if "all" in parts else {t for p in parts for t in p}
    if require_checks and (
        checks is None or checks.get("status") != "succeeded" or checked < set(config.gold)
    ):
        missing = sorted(set(config.gold) - checked)
        raise PublishError(
            f"run {run_id} has no passed check stage"
            + (f" for {', '.join(missing)}" if checks and missing else "")
            + ": run --stage check before publish"
        )
    check_summary = [
        {"table": c["table"], "check": c["check"], "passed": c["passed"]}
        for c in (checks or {}).get("checks", [])
    ]
    checked_rows: dict[str, Any] = (checks or {}).get("rows") or {}
    names = gold_order(config)
    builds = {table: staged_build(lake, run_id, table) for table in names}
    missing = [t for t, b in builds.items() if b is None]
    done = lake.read_record(lake.run_record(run_id, "publish")) or {}
    if missing and done.get("status") != "failed" and set(done.get("gold") or {}) >= set(names):
        log.info("run %s was published before (its staging is removed): nothing to do", run_id)
        fields = set(PublishResult.__dataclass_fields__)
        recorded = [{k: v for k, v in done["gold"][t].items() if k in fields} for t in names]
        return [
            PublishResult(**{**r, "action": "already_published", "duration_seconds": 0.0})
            for r in recorded
        ]
    if missing:
        raise PublishError(
            f"gold {', '.join(missing)} not staged in run {run_id}: run transform first"
        )
    base = lineage(spark, config, run_id)

    def publish_table(session: SparkSession, table: str) -> PublishResult:
        build = builds[table]
        assert build is not None
        metadata = {
            **base,
            "raw2gold_run_id": run_id,
            "table": table,
            "checks": [c for c in check_summary if c["table"] == table],
            "published_at": utc_now(),
            "build": {k: build.get(k) for k in BUILD_KEYS},
        }
        return _publish_table(session, config, run_id, table, build, metadata, checked_rows)

    published = in_parallel(spark, names, publish_table)
    results = [published[t] for t in names]
    lake.write_json(
        lake.run_record(run_id, "publish"),
        {"run_id": run_id, "lineage": base, "gold": {r.table: r.as_dict() for r in results}},
    )
    removed = remove_published_staging(lake, keep=run_id)
    if removed:
        log.info("removed the staging of %d published run(s): %s", len(removed), ", ".join(removed))
    return results


def remove_published_staging(lake: Lake, keep: str) -> list[str]:
    """Delete the staging folders of the runs whose publish finished, except `keep`'s.

    A run reads only its own staging, and a published one only needs it to repeat its check or
    publish stage (clearing the whole run stages it again). A run whose publish failed or never
    ran keeps its staging for a retry.
    """
    removed = []
    for run in lake.staged_runs():
        record = lake.read_record(lake.run_record(run, "publish"))
        if run != keep and record is not None and record.get("status") != "failed":
            lake.delete_dir(lake.staging_run(run))
            removed.append(run)
    return removed


def read_gold(spark: SparkSession, config: PipelineConfig, table: str) -> DataFrame:
    """A published gold table as a DataFrame (Delta, or the Parquet version the pointer names)."""
    lake = Lake(config.lake)
    if config.gold[table].format == "delta":
        relative = lake.gold_table(table)
        if not is_delta(lake, relative):
            raise not_published(table)
        return spark.read.format("delta").load(lake.spark_uri(relative))
    pointer = current_pointer(lake, table)
    if pointer is None:
        raise not_published(table)
    return read_parquet(spark, lake.spark_uri(pointer["path"]), pointer.get("schema"))


def delta_storage_options(lake: Lake) -> dict[str, str]:
    """delta-rs storage options for the lake (empty for a local folder)."""
    creds = lake.credentials
    if creds is None:
        return {}
    options = {"AWS_REGION": creds.region}
    if creds.endpoint:
        options["AWS_ENDPOINT_URL"] = creds.endpoint
        if creds.endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    if creds.path_style:
        options["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false"
    if creds.access_key and creds.secret_key:
        options["AWS_ACCESS_KEY_ID"] = creds.access_key
        options["AWS_SECRET_ACCESS_KEY"] = creds.secret_key
    if creds.session_token:
        options["AWS_SESSION_TOKEN"] = creds.session_token
    return options


@contextmanager
def delta_table(
    lake: Lake, relative: str, label: str, version: int | None = None
) -> Iterator[DeltaTable]:
    """A Delta table of the lake opened with delta-rs (at ``version``: as that commit left it);
    its errors while open (a damaged or unreadable log) become one line led by ``label`` and
    naming the log's folder."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    try:
        yield DeltaTable(
            lake.uri(relative), version=version, storage_options=delta_storage_options(lake)
        )
    except DeltaError as exc:
        first = first_line(exc)
        raise PublishError(
            f"{label}: its Delta log {lake.uri(relative)}/_delta_log cannot be read ({first}); "
            "check the lake's credentials, and that no file there was damaged or removed "
            "(restore it from a backup or the store's object versions)",
            final=False,  # credentials or the store may come back
        ) from None


def gold_delta_table(
    lake: Lake, table: str, version: int | None = None
) -> AbstractContextManager[DeltaTable]:
    """A published Delta gold table opened with delta-rs: :func:`delta_table`."""
    return delta_table(lake, lake.gold_table(table), f"gold table {table}", version)


def gold_arrow_table(config: PipelineConfig, table: str, as_of: str | None = None) -> pa.Table:
    """A published gold table read without Spark (delta-rs for Delta, pyarrow for Parquet);
    ``as_of``: as the publish of that run left it (a Delta commit the log holds, a kept Parquet
    version)."""
    import pyarrow.dataset as ds

    lake = Lake(config.lake)
    relative = lake.gold_table(table)
    history = f"`raw2gold history {table}` lists the publishes"
    if config.gold[table].format == "delta":
        if not is_delta(lake, relative):
            raise not_published(table)
        version = None
        if as_of is not None:
            found = newest_metadata(lake, relative, "raw2gold_run_id", look_back=None, value=as_of)
            if found is None:
                raise PublishError(
                    f"gold table {table}: run {as_of} published no version of it that its "
                    f"Delta log still holds; {history}"
                )
            version = found[0]
        with gold_delta_table(lake, table, version) as delta:
            try:
                return delta.to_pyarrow_table()
            except OSError as exc:  # an old version's files, which VACUUM removed
                if version is None:
                    raise
                raise PublishError(
                    f"gold table {table}: run {as_of}'s version ({version}) can no longer be "
                    f"read, its files are gone ({first_line(exc)}): VACUUM removes the files "
                    "of versions older than maintenance.vacuum_retain_hours"
                ) from None
    pointer = current_pointer(lake, table)
    if pointer is None:
        raise not_published(table)
    path = pointer["path"]
    if as_of is not None:
        if as_of not in pointer.get("versions", []):
            raise PublishError(
                f"gold table {table}: run {as_of}'s version is not kept (a Parquet table keeps "
                f"its newest {KEEP_VERSIONS}: {', '.join(pointer.get('versions', []))}); "
                f"{history}"
            )
        path = f"{relative}/version={as_of}"
    dataset = ds.dataset(lake.path(path), filesystem=lake.fs, format="parquet", partitioning="hive")
    return dataset.to_table()


def processed_inputs(config: PipelineConfig, table: str) -> list[str]:
    """The processed tables a gold table is computed from, through the gold models it reads."""
    from raw2gold.config.loader import model_refs

    found: set[str] = set()
    pending, seen = [table], {table}
    while pending:
        for ref in model_refs(config, pending.pop()):
            if ref in config.processed:
                found.add(ref)
            elif ref in config.gold and ref not in seen:
                seen.add(ref)
                pending.append(ref)
    return sorted(found)


def history_inputs(config: PipelineConfig, table: str, meta: dict[str, Any]) -> dict[str, Any]:
    """What a publish was computed from, from its recorded lineage: each processed input's Delta
    version and the raw runs its newest commit applied, and how the model was built."""
    processed = meta.get("processed") or {}
    inputs = {
        name: {
            "delta_version": processed[name].get("delta_version"),
            "raw_runs": processed[name].get("last_raw_runs", []),
        }
        for name in processed_inputs(config, table)
        if isinstance(processed.get(name), dict)
    }
    return {"inputs": inputs, "build": (meta.get("build") or {}).get("mode")}


def publish_history(config: PipelineConfig, table: str) -> list[dict[str, Any]]:
    """Publications of a gold table, newest first, read without Spark.

    Entries: version (Delta version or Parquet run id), run_id, published_at, rows, checks,
    inputs (each processed input's Delta version and the raw runs it last applied) and build
    (full or incremental); the last two are empty for publishes recorded before they existed.
    """
    lake = Lake(config.lake)
    if config.gold[table].format == "parquet":
        pointer = current_pointer(lake, table)
        entries = list(pointer.get("history", [])) if pointer else []
        return [{"inputs": {}, "build": None, **e} for e in entries]
    if not is_delta(lake, lake.gold_table(table)):
        return []
    with gold_delta_table(lake, table) as delta:
        commits = delta.history()
    entries = []
    for commit in commits:
        try:
            meta = json.loads(commit.get("userMetadata") or "")
        except ValueError:
            meta = None
        if not isinstance(meta, dict) or "raw2gold_run_id" not in meta:
            continue
        entries.append(
            {
                "version": commit.get("version"),
                "run_id": meta["raw2gold_run_id"],
                "published_at": meta.get("published_at"),
                "rows": meta["rows"]
                if meta.get("rows") is not None
                else log_row_count(lake, lake.gold_table(table), int(commit["version"])),
                "checks": meta.get("checks", []),
                **history_inputs(config, table, meta),
            }
        )
    return sorted(entries, key=lambda e: -int(e["version"] or 0))
