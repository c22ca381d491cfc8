"""raw -> processed: type, quarantine, deduplicate and MERGE each raw stream into Delta.

Per processed table:

* **Which raw runs.** Committed manifests (``raw/<source>/_runs/*.json``) of the source. The raw
  run ids already applied are stored in the table's own Delta commits (``userMetadata`` JSON,
  key ``raw_runs``: the cumulative sorted list), so "data merged" and "runs marked done" are
  one atomic commit. Re-running with the same raw runs finds nothing new and commits nothing.
* **Typing.** Each declared column is ``try_cast`` to its Spark type (JSON text → ``from_json``
  for struct/array/map). A value that is present but does not cast, or a null primary key,
  sends the row to ``quarantine/<table>/`` (Delta, insert-only MERGE on run id + _airbyte_raw_id
  so a retried run adds nothing twice) with a reason naming the column and the value. Values
  are never silently nulled. Casting is Spark's: doubles cast to integers truncate. A full
  rebuild replaces the quarantine rows of the raw runs it read with its own verdict.
* **Incremental streams.** Deduplicate by primary key keeping the latest cursor, then the latest
  ``_airbyte_extracted_at``; ``MERGE INTO`` by key, updating only when the incoming cursor is
  >= the stored one (a late, older record never overwrites a newer one).
* **Deletes** (CDC sources): a record matching ``deleted_when`` (default: Airbyte's
  ``_ab_cdc_deleted_at IS NOT NULL`` when the stream has the column) deletes its key under the
  same cursor rule, in the same MERGE. The deleted keys and their cursor are kept in
  ``_state/deleted/<table>`` so that a later, older record does not insert the key again.
  A deletion record needs only its key and cursor to cast: its other values are never stored,
  so a bad one there does not hold the deletion back (nor quarantine it).
* **Full-refresh streams** (e.g. a CSV): every raw run is a complete snapshot, so the table
  becomes exactly the newest raw run's rows (overwrite); older runs are marked as seen. A
  snapshot holding the rows the table already has (a source re-read each run without changes)
  writes nothing: its rows' fingerprint (count, schema, partitioning and an order-independent
  digest of every value) equals the one the table's last overwrite recorded. The table keeps
  its version, so the gold models that read it are not rebuilt.
* ``full_refresh=True`` rebuilds an incremental table from all committed raw runs (overwrite).
  So does a change of the table's definition (source, key, cursor, declared columns and types,
  partitioning, extra_columns, deleted_when), recorded with each commit (:func:`definition`).
* **Two runs at once** never apply a raw run twice: each commit records Delta's transaction
  id at the version it read plus one, so the second of two runs that read the same version is
  skipped or conflicts, and stops saying another run wrote the table.
* **No records** (a raw run whose manifest lists no file for the stream): a new table is created
  empty with its declared columns, so gold can read it; an empty newest snapshot empties its
  table; an incremental table is left as it is.

**Schema drift** (``extra_columns``, default ``keep``). A raw column that is not declared in
``columns`` (and is not Airbyte/raw2gold metadata) is carried into processed with its raw type,
untyped. When such a column first appears in a later raw run it is added to the Delta table
(``ALTER TABLE ... ADD COLUMNS``, nullable: older rows read NULL) before the MERGE. The MERGE
names its columns, so a column that later disappears from the source stays in the table: updated
rows keep their stored value, new rows get NULL. ``drop`` keeps only declared columns;
``fail`` stops the run naming the stream and the columns. A declared column that is missing in
raw is always an error. An overwrite (full refresh, snapshot streams) rebuilds the table with
the columns its raw runs have now. Raw runs whose files differ in a column's type are read apart,
that column as a type every run fits (bigint, double, else text); an undeclared column the table
holds with another type is typed to the table's type like a declared column. A raw column name
Delta refuses (a space, ``,;{}()=``) is stored with ``_`` in their place (``Unit Price`` ->
``Unit_Price``, :func:`~raw2gold.config.models.processed_name`).

A raw file Spark cannot read stops the table with one line naming the file, its run and the way
out (restore it, or delete the run's manifest).

Processed tables have Delta's change data feed on: an ``incremental`` gold model reads the rows
its inputs changed since its last publish (old and new images) to find the groups to rebuild.

Processed tables keep two metadata columns: ``_raw2gold_run_id`` (the raw run the row came from)
and ``_airbyte_extracted_at`` (when the connector read it).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import logging
import operator
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from raw2gold.config.models import (
    PipelineConfig,
    ProcessedModel,
    processed_name,
    processed_type,
)
from raw2gold.errors import Raw2GoldError, error_class, first_line, root_cause
from raw2gold.lake.layout import Lake, utc_now
from raw2gold.lake.lease import table_lease
from raw2gold.transform.delta import (
    CONCURRENT,
    NO_DATA_CHANGE,
    commit_metadata,
    commit_versions,
    commits_since_newest,
    delta_ref,
    file_stats,
    is_delta,
    live_files,
    log_commit,
    log_version,
    newest_metadata,
    quote,
    restored_to,
    sql_literal,
    table_rows,
)
from raw2gold.transform.parallel import in_parallel

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame, Row, SparkSession

log = logging.getLogger(__name__)

EXTRACTED_AT = "_airbyte_extracted_at"
META_COLUMNS = ["_raw2gold_run_id", EXTRACTED_AT]
# Airbyte's CDC sources mark a deleted source row with a record whose _ab_cdc_deleted_at is set.
CDC_DELETED_AT = "_ab_cdc_deleted_at"
DELETED = "_raw2gold_deleted"  # whether a record deletes its key (never stored in processed)
# Processed tables record row-level changes, so incremental gold models read only what changed.
CHANGE_FEED = "delta.enableChangeDataFeed"
COMPLEX = re.compile(r"^(array|map|struct)<", re.IGNORECASE)
# Spark's error classes for a file it cannot read (corrupt, cut short) or find
READ_FAILURES = {"FAILED_READ_FILE", "PATH_NOT_FOUND"}


class ProcessedError(Raw2GoldError):
    """A processed table cannot be built (missing column, unreadable raw data, ...). Final
    unless raised with ``final=False``: raw data and config are the same on every try."""

    final = True


@dataclass
class ProcessedResult:
    """What one processed table did in this run."""

    table: str
    mode: str  # merge | overwrite | unchanged
    raw_runs: list[str] = field(default_factory=list)
    rows_read: int = 0
    rows_quarantined: int = 0
    rows_written: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_deleted: int = 0  # keys removed by deletion records (CDC deletes)
    columns_added: list[str] = field(default_factory=list)
    rows: int = 0  # rows in the table after this run
    delta_version: int = -1
    previous_version: int = -1  # the Delta version before this run (-1: the table was new)
    duration_seconds: float = 0.0
    rebuilt_because: list[str] = field(default_factory=list)  # definition changes (rebuilt)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "quarantined": self.rows_quarantined}


TYPE_ALIASES = {"integer": "int", "long": "bigint"}


def _type_text(spark_type: str) -> str:
    """A declared type as compared between runs: case, spaces and aliases do not count."""
    text = re.sub(r"\s+", "", processed_type(spark_type).lower())
    return TYPE_ALIASES.get(text, text)


def definition(model: ProcessedModel) -> dict[str, Any]:
    """What a processed table's rows depend on besides raw, recorded with each of its commits:
    a change rebuilds the table from every raw run (:func:`definition_changes`)."""
    return {
        "source": model.source,
        "primary_key": list(model.primary_key),
        "cursor": model.cursor,
        "columns": {c: _type_text(t) for c, t in model.columns.items()},
        "partition_by": list(model.partition_by),
        "extra_columns": model.extra_columns,
        "deleted_when": model.deleted_when,
    }


def definition_changes(before: dict[str, Any] | None, model: ProcessedModel) -> list[str]:
    """How the model's definition differs from the one the table's newest commit recorded
    (``columns.age: int -> bigint``, ``primary_key: ['id'] -> ['email']``); none when that
    commit recorded none (a table written before definitions were recorded)."""
    if not before:
        return []
    now = definition(model)
    changes = []
    for key, value in now.items():
        old = before.get(key)
        if key == "columns" and isinstance(old, dict):
            for column in sorted(set(old) | set(value)):
                was, is_ = old.get(column, "(none)"), value.get(column, "(none)")
                if was != is_:
                    changes.append(f"columns.{column}: {was} -> {is_}")
        elif old != value:
            changes.append(f"{key}: {old!r} -> {value!r}")
    return changes


def newest_commit_record(lake: Lake, relative: str) -> dict[str, Any]:
    """What a processed table's newest raw2gold commit recorded: the raw runs applied, the
    definition it was written with, … (empty: none yet).

    A table restored by hand (Delta ``RESTORE``) after that commit holds what the restored
    version held: the record is the one of that version, so the raw runs the restore took out
    are applied again (restored to a timestamp: no raw run counts as applied, and every one is
    merged again, which leaves rows already there as they are)."""
    found, later = commits_since_newest(lake, relative, "raw_runs")
    if found is None:
        return {}
    version, record = found
    target = restored_to(later)
    if target is None:
        return record
    earlier = (
        newest_metadata(lake, relative, "raw_runs", None, at_most=target) if target >= 0 else None
    )
    kept = earlier[1] if earlier else {"definition": record.get("definition")}
    log.warning(
        "processed %s: restored to version %s after raw2gold wrote version %d: applying the "
        "raw runs that version had not applied again",
        relative.rsplit("/", 1)[-1],
        target if target >= 0 else "(a timestamp)",
        version,
    )
    return kept


def processed_raw_runs(lake: Lake, relative: str) -> set[str]:
    """Raw run ids already applied to a processed table (from its newest raw2gold commit)."""
    return set(newest_commit_record(lake, relative).get("raw_runs", []))


# A number cast to a timestamp is seconds since 1970-01-01 UTC; those between years 1 and 9999
# only. Spark would store later ones (up to year 294247), but such a value is a unit mistake —
# epoch milliseconds or microseconds read as seconds — and most readers refuse the year.
EPOCH_SECONDS = (-62135596800, 253402300799)
EPOCH_HINT = (
    " (a number is read as seconds since 1970-01-01, and this one falls outside years 1 to "
    "9999: epoch milliseconds? declare the column bigint and convert it in a gold model, e.g. "
    "with timestamp_millis)"
)


def _numbers_to_timestamp(spark_type: str, source_type: str) -> bool:
    """Whether a raw number is cast to a timestamp (read as seconds since the epoch)."""
    numeric = source_type in (*INTEGER_TYPES, "float", "double") or source_type.startswith(
        "decimal"
    )
    return numeric and spark_type.strip().lower() in ("timestamp", "timestamp_ltz")


def _cast(column: str, spark_type: str, source_type: str) -> str:
    name = quote(column)
    if COMPLEX.match(spark_type.strip()) and source_type == "string":
        parsed = f"from_json({name}, '{spark_type}')"  # the JSON keys as the source names them
        stored = processed_type(spark_type)
        return parsed if stored == spark_type else f"CAST({parsed} AS {stored})"
    cast = f"try_cast({name} AS {spark_type})"
    if _numbers_to_timestamp(spark_type, source_type):
        low, high = EPOCH_SECONDS
        return f"CASE WHEN {name} BETWEEN {low} AND {high} THEN {cast} END"
    return cast


def one_column_error(table: str, source: str, columns: list[str], where: str = "") -> str:
    """What to tell when raw columns would be one column in processed (case, refused chars)."""
    return (
        f"processed {table}: raw columns {' and '.join(repr(c) for c in columns)} of "
        f"{source}{where} would be one column in processed (Spark and Delta ignore case in "
        "column names, and Delta refuses spaces and ',;{}()=', which become _); rename one at "
        "the source"
    )


def _one_column(names: list[str]) -> list[str] | None:
    """The first raw columns that processed would store as one column (their processed names
    equal but for case, which Spark and Delta ignore); None when there are none."""
    owners: dict[str, list[str]] = {}
    for name in names:
        owners.setdefault(processed_name(name).lower(), []).append(name)
    return next((same for same in owners.values() if len(same) > 1), None)


def _footer_schema(lake: Lake, path: str) -> pa.Schema:
    """The schema of a raw Parquet file, from its footer (no Spark job)."""
    import pyarrow.parquet as pq

    with lake.fs.open_input_file(lake.path(path)) as handle:
        return pq.read_schema(handle)


def with_processed_names(raw: DataFrame, table: str, source: str) -> DataFrame:
    """The raw frame with its columns named as processed names them (:func:`processed_name`).

    Two raw columns that would share a name are an error naming both.
    """
    same = _one_column(raw.columns)
    if same:
        raise ProcessedError(one_column_error(table, source, same))
    renamed = {c: processed_name(c) for c in raw.columns}
    changed = {c: n for c, n in renamed.items() if c != n}
    if not changed:
        return raw
    log.info(
        "processed %s: raw column(s) %s of %s stored as %s",
        table,
        ", ".join(repr(c) for c in changed),
        source,
        ", ".join(changed.values()),
    )
    from pyspark.sql import functions as F

    return raw.select(*[F.col(quote(c)).alias(n) for c, n in renamed.items()])


def extra_columns(raw: DataFrame, model: ProcessedModel, table: str) -> list[str]:
    """Undeclared raw columns that processed carries, per the model's `extra_columns` policy."""
    extras = [
        c
        for c in raw.columns
        if c not in model.columns and not c.startswith(("_airbyte_", "_raw2gold_"))
    ]
    if extras and model.extra_columns == "fail":
        raise ProcessedError(
            f"processed {table}: raw stream {model.source} has undeclared column(s) "
            f"{', '.join(extras)}; declare them under processed.{table}.columns or set "
            "extra_columns: keep (carry them) or drop (ignore them)"
        )
    return extras if model.extra_columns == "keep" else []


def deletion_condition(raw: DataFrame, model: ProcessedModel, table: str) -> str | None:
    """The SQL condition that makes a raw record a deletion of its key, or None (no deletes).

    ``deleted_when`` when set ('false' turns deletes off); otherwise Airbyte's CDC marker when
    the stream has it. A condition that is not a boolean over the raw record is an error.
    """
    from pyspark.sql import functions as F

    condition = model.deleted_when
    if condition is None:
        return f"{quote(CDC_DELETED_AT)} IS NOT NULL" if CDC_DELETED_AT in raw.columns else None
    if condition.strip().lower() == "false":
        return None
    try:
        kind = raw.select(F.expr(condition).alias("deleted")).schema["deleted"].dataType
    except Exception as exc:
        raise ProcessedError(
            f"processed {table}: deleted_when {condition!r} is not a condition over the raw "
            f"record of {model.source} ({first_line(exc)}); fix it in pipeline.yaml"
        ) from exc
    if kind.typeName() != "boolean":
        raise ProcessedError(
            f"processed {table}: deleted_when {condition!r} is {kind.simpleString()}, not a "
            "condition (true/false); fix it in pipeline.yaml"
        )
    return condition


def _raw_names_hint(missing: list[str], names: list[str]) -> str:
    """The raw columns a missing declared column may mean (another case, a close spelling),
    else the raw data columns."""
    data = [n for n in names if not n.startswith(("_airbyte_", "_raw2gold_"))]
    close = []
    for column in missing:
        close += [n for n in data if n.lower() == column.lower()] or difflib.get_close_matches(
            column, data, n=1
        )
    if close:
        return f"raw has {', '.join(close)}"
    shown = ", ".join(data[:30]) + (", ..." if len(data) > 30 else "")
    return f"raw has {shown}" if data else "raw has no data columns"


def typed_with_reasons(
    raw: DataFrame,
    model: ProcessedModel,
    table: str,
    extras: list[str] | None = None,
    deleted: str | None = None,
    stored: dict[str, str] | None = None,
) -> tuple[DataFrame, list[str]]:
    """Add typed columns and a `_raw2gold_reasons` array (empty when the row is good), and with
    a ``deleted`` condition the `_raw2gold_deleted` flag, evaluated on the raw record.

    Returns the frame and its data columns: the declared ones, then `extras` as they are in raw
    — except one the table already holds with another type (``stored``: column -> the table's
    type), which is typed to it like a declared column.
    """
    from pyspark.sql import functions as F

    source_types = dict(raw.dtypes)
    missing = [c for c in model.columns if c not in source_types]
    if missing:
        raise ProcessedError(
            f"processed {table}: raw data of {model.source} has no column(s) "
            f"{', '.join(missing)} (declared in columns; {_raw_names_hint(missing, raw.columns)})"
        )
    typed_exprs = []
    reasons: list[Column] = []
    failed: list[Column] = []
    deleting = F.coalesce(F.expr(deleted), F.lit(False)) if deleted else None
    # A deletion record needs only its key and cursor: its other values are never stored.
    needed = {*model.primary_key, *([model.cursor] if model.cursor else [])}
    extras = extras or []
    retyped = {
        c: kind for c, kind in (stored or {}).items() if c in extras and kind != source_types[c]
    }
    for column, spark_type in {**model.columns, **retyped}.items():
        cast = _cast(column, spark_type, source_types[column])
        typed_exprs.append(F.expr(cast).alias(column))
        bad = F.col(quote(column)).isNotNull() & F.expr(cast).isNull()
        if deleting is not None and column not in needed:
            bad = bad & ~deleting
        hint = EPOCH_HINT if _numbers_to_timestamp(spark_type, source_types[column]) else ""
        message = F.concat(
            F.lit(f"column {column}: cannot cast "),
            F.coalesce(F.col(quote(column)).cast("string"), F.lit("?")),
            F.lit(f" to {spark_type}{hint}"),
        )
        failed.append(bad)
        reasons.append(F.when(bad, message))
    for key in model.primary_key:
        failed.append(F.col(quote(key)).isNull())
        reasons.append(F.when(F.col(quote(key)).isNull(), F.lit(f"primary key {key} is null")))
    # One boolean per row, compiled with the casts; the reasons array (a higher-order function,
    # evaluated row by row without code generation) and the raw record only for bad rows.
    any_failed = functools.reduce(operator.or_, failed)
    problems = F.when(any_failed, F.filter(F.array(*reasons), lambda r: r.isNotNull())).otherwise(
        F.array().cast("array<string>")
    )
    record = F.when(
        any_failed, F.to_json(F.struct(*[F.col(quote(c)) for c in [*model.columns, *retyped]]))
    )
    typed = raw.select(
        *typed_exprs,
        *[F.col(quote(c)) for c in extras if c not in retyped],
        F.col("_raw2gold_run_id"),
        F.col("_airbyte_extracted_at").cast("timestamp").alias("_airbyte_extracted_at"),
        F.col("_airbyte_raw_id"),
        record.alias("_raw2gold_record"),
        problems.alias("_raw2gold_reasons"),
        *([deleting.alias(DELETED)] if deleting is not None else []),
    )
    return typed, [*model.columns, *retyped, *[c for c in extras if c not in retyped]]


def _add_new_columns(
    spark: SparkSession, uri: str, incoming: DataFrame, table: str, existing: dict[str, str]
) -> list[str]:
    """Add incoming columns the Delta table lacks (nullable); returns their names."""
    new = [f for f in incoming.schema.fields if f.name not in existing]
    if new:
        columns = ", ".join(f"{quote(f.name)} {f.dataType.simpleString()}" for f in new)
        spark.sql(f"ALTER TABLE {delta_ref(uri)} ADD COLUMNS ({columns})")
        log.warning(
            "processed %s: new source column(s) %s added", table, ", ".join(f.name for f in new)
        )
    return [f.name for f in new]


def _no_rows(spark: SparkSession, model: ProcessedModel) -> DataFrame:
    """A table's rows when its raw runs hold none: the declared columns, typed, and metadata."""
    declared = [f"{quote(c)} {processed_type(kind)}" for c, kind in model.columns.items()]
    return spark.createDataFrame(
        [], ", ".join([*declared, "_raw2gold_run_id string", f"{EXTRACTED_AT} timestamp"])
    )


def deduplicate(df: DataFrame, model: ProcessedModel) -> DataFrame:
    """One row per primary key: the latest cursor, then the latest extraction, then raw id."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = []
    if model.cursor:
        order.append(F.col(quote(model.cursor)).desc_nulls_last())
    order += [F.col("_airbyte_extracted_at").desc_nulls_last(), F.col("_airbyte_raw_id").desc()]
    window = Window.partitionBy(*[F.col(quote(k)) for k in model.primary_key]).orderBy(*order)
    return (
        df.withColumn("_raw2gold_rank", F.row_number().over(window))
        .where("_raw2gold_rank = 1")
        .drop("_raw2gold_rank")
    )


def content_fingerprint(rows: DataFrame, model: ProcessedModel) -> dict[str, Any]:
    """What a table written from ``rows`` would hold, to tell whether a new snapshot changes it:
    the row count and a digest of the written schema, the partitioning and every row's values
    (two 64-bit sums of per-row hashes, so independent of row order). Where each row came from
    and when it was extracted (:data:`META_COLUMNS`) is left out: a source re-read unchanged
    gives the same fingerprint."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, MapType, StructType

    fields = [f for f in rows.schema.fields if f.name not in META_COLUMNS]
    values: list[Column] = []
    for f in fields:
        column = F.col(quote(f.name))
        nested = isinstance(f.dataType, ArrayType | MapType | StructType)
        # Spark's row hashes skip NULLs (and refuse maps): each value also says whether it is
        # NULL, so (NULL, 1) and (1, NULL) differ, and nested values are hashed as JSON.
        values += [F.to_json(column) if nested else column, column.isNull()]
    [row] = rows.agg(
        F.count(F.lit(1)).alias("n"),
        F.sum(F.xxhash64(*values).cast("decimal(38,0)")).alias("xx"),
        F.sum(F.hash(*values).cast("decimal(38,0)")).alias("murmur"),
    ).collect()
    shape = [[f.name, f.dataType.simpleString()] for f in fields]
    text = json.dumps([shape, model.partition_by, str(row["xx"]), str(row["murmur"])])
    return {"rows": int(row["n"]), "digest": hashlib.sha256(text.encode()).hexdigest()}


def last_content(lake: Lake, relative: str) -> dict[str, Any] | None:
    """The fingerprint the table's newest data-changing commit recorded (None: it recorded
    none, or the log no longer holds that commit)."""
    for version in commit_versions(lake, relative)[::-1]:
        commit = log_commit(lake, relative, version)
        if commit is None:
            return None
        if commit.get("operation") in NO_DATA_CHANGE:
            continue  # OPTIMIZE, VACUUM: the same rows
        content = (commit.get("metadata") or {}).get("content")
        return content if isinstance(content, dict) else None
    return None


def _quarantine(
    spark: SparkSession,
    lake: Lake,
    table: str,
    bad: DataFrame | None,
    run_id: str,
    rebuilt: list[str],
) -> None:
    """Record rejected rows in quarantine/<table> (idempotent per raw run and record).

    ``rebuilt``: the raw runs a full rebuild of the table reads again. Their earlier rows
    in quarantine give way to this build's verdict, so a record that a changed definition now
    types (epoch milliseconds declared ``bigint``, as the hint says) leaves quarantine as it
    enters processed. ``bad`` None: this build rejected nothing.
    """
    from pyspark.sql import functions as F

    relative = lake.quarantine_table(table)
    uri = lake.spark_uri(relative)
    exists = is_delta(lake, relative)
    runs = ", ".join(sql_literal(raw_run) for raw_run in rebuilt)
    if bad is None:
        if exists and rebuilt:
            spark.sql(f"DELETE FROM {delta_ref(uri)} WHERE raw_run_id IN ({runs})")
        return
    rows = bad.select(
        F.lit(table).alias("table"),
        F.col("_raw2gold_run_id").alias("raw_run_id"),
        F.col("_airbyte_raw_id"),
        F.col("_airbyte_extracted_at"),
        F.array_join("_raw2gold_reasons", "; ").alias("reason"),
        F.col("_raw2gold_record").alias("record"),
        F.lit(run_id).alias("quarantined_by_run"),
        F.current_timestamp().alias("quarantined_at"),
    )
    if not exists:
        rows.write.format("delta").mode("append").save(uri)
        return
    view = f"__r2g_quarantine_{table}"
    rows.createOrReplaceTempView(view)
    superseded = (
        f" WHEN NOT MATCHED BY SOURCE AND t.raw_run_id IN ({runs}) THEN DELETE" if rebuilt else ""
    )
    spark.sql(
        f"MERGE INTO {delta_ref(uri)} AS t USING {view} AS s "
        "ON t.raw_run_id = s.raw_run_id AND t._airbyte_raw_id = s._airbyte_raw_id "
        "WHEN NOT MATCHED THEN INSERT *" + superseded
    )
    spark.catalog.dropTempView(view)


def raw_files(manifest: dict[str, Any], stream: str) -> list[str]:
    """The files a raw run's manifest lists for a stream (lake-relative)."""
    files: list[str] = manifest.get("streams", {}).get(stream, {}).get("files", [])
    return files


def _read_raw(
    spark: SparkSession, lake: Lake, table: str, source: str, manifests: list[dict[str, Any]]
) -> DataFrame | None:
    """The raw runs' records of the table's ``<source>.<stream>`` (None: the runs hold none)."""
    stream = source.partition(".")[2]
    paths = [path for manifest in manifests for path in raw_files(manifest, stream)]
    if not paths:
        return None
    files = [lake.spark_uri(path) for path in paths]
    # The runs' schemas merged once (a Spark job over the footers), then pinned: a Spark
    # Connect session analyses a plan again for every schema lookup and every action, and an
    # unpinned read would merge the footers again each time (a classic session resolves the
    # read once, so there the pinned read costs nothing more).
    try:
        merged = spark.read.option("mergeSchema", "true").parquet(*files).schema
    except Exception as exc:
        if error_class(exc) == "COLUMN_ALREADY_EXISTS":
            raise ProcessedError(_same_column_in_any_case(lake, table, source, paths)) from exc
        if error_class(exc) != "CANNOT_MERGE_SCHEMAS":
            raise
        return _read_raw_types_apart(spark, lake, table, paths)
    return spark.read.schema(merged).parquet(*files)


def _same_column_in_any_case(lake: Lake, table: str, source: str, paths: list[str]) -> str:
    """The message for raw files Spark cannot read because two of their columns differ only in
    case (``email`` and ``EMAIL``): the first file with such columns, from its footer."""
    for path in paths:
        same = _one_column(_footer_schema(lake, path).names)
        if same:
            return one_column_error(table, source, same, f" (raw file {path})")
    return f"processed {table}: raw columns of {source} differ only in case; rename them"


def _read_raw_types_apart(
    spark: SparkSession, lake: Lake, table: str, paths: list[str]
) -> DataFrame:
    """Raw files whose columns differ in type (a source that changed a column's type between
    runs, a value kind inferred per landing): the files of each schema read apart, and each
    such column read as the type all its kinds fit — a wider number or, for any other mix, text
    (nested values as JSON) — which typing then casts to the declared type like any value."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import (
        ArrayType,
        DataType,
        DoubleType,
        IntegralType,
        LongType,
        MapType,
        NullType,
        NumericType,
        StringType,
        StructType,
    )

    groups: dict[str, list[str]] = {}
    for path in paths:
        groups.setdefault(_footer_schema(lake, path).to_string(), []).append(path)
    frames = [spark.read.parquet(*[lake.spark_uri(p) for p in g]) for g in groups.values()]
    schemas = [frame.schema for frame in frames]  # one analysis each (Spark Connect)
    kinds: dict[str, list[DataType]] = {}
    for schema in schemas:
        for f in schema.fields:
            if f.dataType not in kinds.setdefault(f.name, []):
                kinds[f.name].append(f.dataType)

    def common(types: list[DataType]) -> DataType:
        known = [t for t in types if not isinstance(t, NullType)] or types
        if len(known) == 1:
            return known[0]
        if all(isinstance(t, IntegralType) for t in known):
            return LongType()
        if all(isinstance(t, NumericType) for t in known):
            return DoubleType()
        return StringType()

    targets = {name: common(types) for name, types in kinds.items() if len(types) > 1}
    log.warning(
        "processed %s: raw runs hold %s with different types: read as %s",
        table,
        ", ".join(sorted(targets)),
        ", ".join(f"{n} {t.simpleString()}" for n, t in sorted(targets.items())),
    )

    def column(name: str, kind: DataType) -> Column:
        value = F.col(quote(name))
        if name not in targets or kind == targets[name]:
            return value
        if isinstance(targets[name], StringType) and isinstance(
            kind, ArrayType | MapType | StructType
        ):
            value = F.to_json(value)
        return value.cast(targets[name]).alias(name)

    read = [
        frame.select(*[column(f.name, f.dataType) for f in schema.fields])
        for frame, schema in zip(frames, schemas, strict=True)
    ]
    return functools.reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), read)


def bound_keys(incoming: DataFrame, keys: list[str]) -> list[str]:
    """The integer or text keys whose incoming range bounds a MERGE (:func:`key_bounds`)."""
    from pyspark.sql.types import IntegralType, StringType

    types = {f.name: f.dataType for f in incoming.schema.fields}
    return [k for k in keys if isinstance(types.get(k), IntegralType | StringType)]


def key_bounds(
    keys: list[str], only: Column
) -> tuple[list[Column], Callable[[Row], dict[str, tuple[Any, Any]]]]:
    """Aggregates of each key's lowest and highest value over the rows where `only` holds,
    and how to read ``{key: (min, max)}`` from the row they return (after any aggregates
    before them), so the bounds come from a pass the stage makes anyway."""
    from pyspark.sql import functions as F

    aggregates = [f(F.when(only, F.col(quote(k)))) for k in keys for f in (F.min, F.max)]

    def read(row: Row) -> dict[str, tuple[Any, Any]]:
        values = list(row)[len(row) - len(aggregates) :]
        return {
            key: (values[2 * i], values[2 * i + 1])
            for i, key in enumerate(keys)
            if values[2 * i] is not None and values[2 * i + 1] is not None
        }

    return aggregates, read


def bound_predicates(bounds: dict[str, tuple[Any, Any]]) -> list[str]:
    """Target-only range predicates ``t.k BETWEEN min AND max`` for the MERGE condition.

    Every incoming key lies in its range, so the MERGE matches the same rows; Delta uses the
    predicates to skip target files whose key statistics lie outside (e.g. new, growing ids).
    """
    return [
        f"t.{quote(k)} BETWEEN {sql_literal(low)} AND {sql_literal(high)}"
        for k, (low, high) in bounds.items()
    ]


def cannot_match(lake: Lake, relative: str, key: str, low: int, high: int) -> bool:
    """Whether no row of the table can have an integer `key` in [low, high], by the statistics
    of its files in the Delta log (a file without them, or any doubt, answers False)."""
    files = live_files(lake, relative)
    if files is None:
        return False
    for add in files:
        stats = file_stats(add)
        if stats is None or stats.get("numRecords") is None:
            return False
        nulls = (stats.get("nullCount") or {}).get(key)
        if nulls is not None and int(nulls) == int(stats["numRecords"]):
            continue  # no key in this file can match
        lowest = (stats.get("minValues") or {}).get(key)
        highest = (stats.get("maxValues") or {}).get(key)
        if not isinstance(lowest, int) or not isinstance(highest, int):
            return False
        if not (high < lowest or low > highest):
            return False
    return True


def _merge_condition(model: ProcessedModel) -> str:
    if model.cursor:
        c = quote(model.cursor)
        return f"(s.{c} >= t.{c} OR t.{c} IS NULL)"
    return "(s._airbyte_extracted_at >= t._airbyte_extracted_at)"


INTEGER_TYPES = ("tinyint", "smallint", "int", "bigint")


def _written_rows(latest: DataFrame) -> DataFrame:
    """The rows a write keeps: deletion records left out and their flag dropped (the frame as
    it is when the table has no deletes)."""
    from pyspark.sql import functions as F

    if DELETED not in latest.columns:
        return latest
    return latest.where(~F.col(DELETED)).drop(DELETED)


def _keep_deletions(
    spark: SparkSession,
    lake: Lake,
    table: str,
    model: ProcessedModel,
    latest: DataFrame,
    deletions: int,
    replace: bool,
) -> DataFrame:
    """Record the keys this batch deletes (`_state/deleted/<table>`, with their cursor and
    when their deletion record was extracted) and return the batch without records older than
    their key's deletion.

    Without the record, a late record older than a deletion that was already applied would
    find no row to compare its cursor with and insert the key again. ``replace`` (a rebuild
    from every raw run) rewrites the record from the batch. It is committed before the
    processed table, so a run that stops in between redoes both.
    """
    from pyspark.sql import functions as F

    relative = lake.deleted_keys(table)
    uri = lake.spark_uri(relative)
    exists = is_delta(lake, relative)
    order = model.cursor or EXTRACTED_AT
    kept = dict.fromkeys([*model.primary_key, order, EXTRACTED_AT])  # the age `maintain` prunes by
    batch = latest.where(F.col(DELETED)).select(*[quote(c) for c in kept])
    if deletions and exists and not replace:
        view = f"__r2g_deleted_{table}"
        batch.createOrReplaceTempView(view)
        on = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in model.primary_key)
        o = quote(order)
        spark.sql(
            f"MERGE INTO {delta_ref(uri)} AS t USING {view} AS s ON {on} "
            f"WHEN MATCHED AND (s.{o} > t.{o} OR t.{o} IS NULL) THEN UPDATE SET * "
            "WHEN NOT MATCHED THEN INSERT *"
        ).collect()
        spark.catalog.dropTempView(view)
    elif deletions or (exists and replace):
        batch.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(uri)
    if replace or not (exists or deletions):
        return latest
    gone = spark.read.format("delta").load(uri).alias("d")
    stale = [F.col(f"s.{quote(k)}") == F.col(f"d.{quote(k)}") for k in model.primary_key]
    stale += [F.col(f"d.{quote(order)}") > F.col(f"s.{quote(order)}"), ~F.col(f"s.{DELETED}")]
    return latest.alias("s").join(gone, functools.reduce(operator.and_, stale), "left_anti")


def _merge_or_append(
    spark: SparkSession,
    lake: Lake,
    relative: str,
    model: ProcessedModel,
    latest: DataFrame,
    metadata: dict[str, Any],
    result: ProcessedResult,
    bounds: dict[str, tuple[Any, Any]],
) -> None:
    """MERGE the deduplicated incoming rows by key into the table, in one commit.

    When no incoming key can match a row (one integer key whose incoming range lies outside
    every file's range, e.g. new growing ids), the MERGE would only insert: an append writes
    the same rows without the MERGE's join. A deletion record (`_raw2gold_deleted`) deletes
    its key's row under the same cursor rule as an update, and never inserts.
    """

    uri = lake.spark_uri(relative)
    deletes = DELETED in latest.columns
    key = model.primary_key[0]
    if (
        len(model.primary_key) == 1
        and dict(latest.dtypes).get(key) in INTEGER_TYPES
        and key in bounds
        and cannot_match(lake, relative, key, *bounds[key])
    ):
        result.mode = "append"  # rows written: from the commit, as for an overwrite
        with commit_metadata(spark, metadata, result.previous_version):
            _written_rows(latest).write.format("delta").mode("append").save(uri)
        return
    result.mode = "merge"
    view = f"__r2g_incoming_{result.table}"
    latest.createOrReplaceTempView(view)
    on = " AND ".join(
        [f"t.{quote(k)} = s.{quote(k)}" for k in model.primary_key] + bound_predicates(bounds)
    )
    names = [quote(c) for c in latest.columns if c != DELETED]
    updates = ", ".join(f"t.{n} = s.{n}" for n in names)
    values = ", ".join(f"s.{n}" for n in names)
    newer = _merge_condition(model)
    flag = f"s.{DELETED}"
    sql = (
        f"MERGE INTO {delta_ref(uri)} AS t USING {view} AS s ON {on} "
        + (f"WHEN MATCHED AND {flag} AND {newer} THEN DELETE " if deletes else "")
        + f"WHEN MATCHED AND {newer} THEN UPDATE SET {updates} "
        + f"WHEN NOT MATCHED {f'AND NOT {flag} ' if deletes else ''}"
        + f"THEN INSERT ({', '.join(names)}) VALUES ({values})"
    )
    with commit_metadata(spark, metadata, result.previous_version):
        stats = spark.sql(sql).collect()
    spark.catalog.dropTempView(view)
    if stats:
        row = stats[0].asDict()
        result.rows_updated = int(row.get("num_updated_rows") or 0)
        result.rows_inserted = int(row.get("num_inserted_rows") or 0)
        result.rows_deleted = int(row.get("num_deleted_rows") or 0)
    result.rows_written = result.rows_updated + result.rows_inserted


def process_table(
    spark: SparkSession,
    config: PipelineConfig,
    table: str,
    run_id: str,
    full_refresh: bool = False,
) -> ProcessedResult:
    """Bring one processed table up to date with the committed raw runs.

    A raw file Spark cannot read (not Parquet, cut short, gone) stops the table with one line
    naming the file, its raw run and what to do (:class:`ProcessedError`).
    """
    try:
        lake = Lake(config.lake)
        with table_lease(lake, f"processed.{table}", run_id):
            return _process_table(spark, config, lake, table, run_id, full_refresh)
    except ProcessedError:
        raise
    except Exception as exc:
        if (error_class(exc) or "").startswith(CONCURRENT):
            raise ProcessedError(another_run_wrote(table), final=False) from exc
        problem = unreadable_raw_file(config, table, exc)
        if problem is None:
            raise
        raise ProcessedError(problem, final=False) from exc  # a store's hiccup reads so too


def another_run_wrote(table: str, other: str | None = None) -> str:
    """What to tell when another run committed the table while this one processed it."""
    who = f"another run ({other})" if other else "another run"
    return (
        f"processed {table}: {who} wrote the table while this run was processing it, so this "
        "run wrote nothing to it (Delta keeps one of two such commits: no raw run is applied "
        "twice); run again to apply what is left"
    )


def _written_by_this_run(
    lake: Lake, relative: str, table: str, run_id: str, read_version: int
) -> None:
    """Raise unless a commit since ``read_version`` is this run's: Delta skips a write whose
    transaction version another run's commit reached first (:func:`commit_metadata`)."""
    found = newest_metadata(lake, relative, "raw2gold_run_id", look_back=20, value=run_id)
    if found is None or found[0] <= read_version:
        newest = newest_metadata(lake, relative, "raw2gold_run_id", look_back=1)
        raise ProcessedError(
            another_run_wrote(table, newest[1]["raw2gold_run_id"] if newest else None),
            final=False,  # a retry applies what the other run left
        )


def unreadable_raw_file(config: PipelineConfig, table: str, error: Exception) -> str | None:
    """What to tell when Spark could not read one of the table's raw files; None if not that."""
    kind = error_class(error) or ""
    if kind.split(".")[0] not in READ_FAILURES:
        return None
    source, _, stream = config.processed[table].source.partition(".")
    lake = Lake(config.lake)
    text = str(error)
    for manifest in lake.committed_raw_runs(source):
        for path in raw_files(manifest, stream):
            if path in text:
                run = manifest["run_id"]
                return (
                    f"processed {table}: raw file {path} (raw run {run} of {source}.{stream}) "
                    f"cannot be read ({kind}: {root_cause(error)}); raw files are written once, "
                    f"by ingest: restore it, or delete {Lake.raw_manifest(source, run)} to leave "
                    f"that run out (the next ingest lands its records again if it was "
                    f"{source}'s newest run)"
                )
    return None


def _process_table(
    spark: SparkSession,
    config: PipelineConfig,
    lake: Lake,
    table: str,
    run_id: str,
    full_refresh: bool,
) -> ProcessedResult:
    from pyspark.sql import functions as F

    started = time.monotonic()
    model = config.processed[table]
    source_name, _, stream_name = model.source.partition(".")
    stream = config.sources[source_name].stream(stream_name)
    relative = lake.processed_table(table)
    uri = lake.spark_uri(relative)
    exists = is_delta(lake, relative)
    recorded = newest_commit_record(lake, relative) if exists else {}
    changes = [] if full_refresh else definition_changes(recorded.get("definition"), model)
    if changes:
        # keys, cursor or types the rows were deduplicated, merged or typed by no longer hold
        log.warning(
            "processed %s: its definition changed since the table was written (%s): rebuilding "
            "it from every raw run",
            table,
            "; ".join(changes),
        )
        full_refresh = True
    done = set(recorded.get("raw_runs", [])) if not full_refresh else set()

    runs = [m for m in lake.committed_raw_runs(source_name) if stream_name in m.get("streams", {})]
    all_ids = sorted(m["run_id"] for m in runs)
    snapshot = stream.sync_mode == "full_refresh"
    if snapshot:
        pending = runs[-1:] if runs and runs[-1]["run_id"] not in done else []
        overwrite = True
    else:
        pending = [m for m in runs if m["run_id"] not in done]
        overwrite = full_refresh or not exists
    result = ProcessedResult(table, "unchanged", raw_runs=[m["run_id"] for m in pending])
    result.rebuilt_because = changes
    result.previous_version = log_version(lake, relative) if exists else -1
    raw = _read_raw(spark, lake, table, model.source, pending) if pending else None
    if pending and raw is None:
        log.warning("processed %s: raw runs %s hold no records", table, result.raw_runs)
    # No records: a new table is created empty (gold can read it), and an empty newest snapshot
    # empties its table, as Airbyte's overwrite does; an incremental table has nothing to add.
    if raw is None and not (pending and overwrite):
        if exists:
            result.delta_version = log_version(lake, relative)
            result.rows = table_rows(spark, lake, relative, result.delta_version)
        result.duration_seconds = round(time.monotonic() - started, 3)
        return result

    typed = None
    deleted = None
    try:
        if raw is None:
            latest = _no_rows(spark, model)
        else:
            raw = with_processed_names(raw, table, model.source)
            deleted = deletion_condition(raw, model, table)
            # the table's column types, which a MERGE casts into (an undeclared column included)
            stored = dict(spark.read.format("delta").load(uri).dtypes) if not overwrite else {}
            typed, columns = typed_with_reasons(
                raw, model, table, extra_columns(raw, model, table), deleted, stored
            )
            typed = typed.cache()
            well_typed = F.size("_raw2gold_reasons") == 0
            ranges, read_ranges = key_bounds(bound_keys(typed, model.primary_key), well_typed)
            deletions = (
                [F.sum(F.when(well_typed & F.col(DELETED), 1).otherwise(0))] if deleted else []
            )
            counts = typed.agg(
                F.count(F.lit(1)).alias("n"),
                F.sum(F.when(F.size("_raw2gold_reasons") > 0, 1).otherwise(0)).alias("bad"),
                *[d.alias("deletions") for d in deletions],
                *ranges,
            ).collect()[0]
            result.rows_read = int(counts["n"])
            result.rows_quarantined = int(counts["bad"] or 0)
            rebuilt = result.raw_runs if full_refresh else []  # read again: new verdicts
            if result.rows_quarantined:
                bad = typed.where(F.size("_raw2gold_reasons") > 0)
                _quarantine(spark, lake, table, bad, run_id, rebuilt)
                log.warning("processed %s: %d row(s) quarantined", table, result.rows_quarantined)
            elif rebuilt:
                _quarantine(spark, lake, table, None, run_id, rebuilt)
            latest = deduplicate(typed.where(well_typed), model).select(
                *[quote(c) for c in columns], *META_COLUMNS, *([DELETED] if deleted else [])
            )
            if deleted and not snapshot:
                latest = _keep_deletions(
                    spark, lake, table, model, latest, int(counts["deletions"] or 0), overwrite
                )
        seen = sorted(set(all_ids if snapshot else []) | done | set(result.raw_runs))
        metadata: dict[str, Any] = {
            "raw2gold_run_id": run_id,
            "raw_runs": seen,
            "new_raw_runs": result.raw_runs,
            "committed_at": utc_now(),
            "definition": definition(model),
        }
        rows = _written_rows(latest)
        content = content_fingerprint(rows, model) if snapshot else None
        if content:
            metadata["content"] = content
        if content and exists and not full_refresh and content == last_content(lake, relative):
            log.info(
                "processed %s: raw run %s holds the %d rows the table has: nothing written",
                table,
                ", ".join(result.raw_runs),
                content["rows"],
            )
        elif overwrite:
            result.mode = "overwrite"
            writer = (
                rows.write.format("delta")
                .mode("overwrite")
                .option("overwriteSchema", "true")
                .option(CHANGE_FEED, "true")
            )
            if model.partition_by:
                writer = writer.partitionBy(*model.partition_by)
            with commit_metadata(spark, metadata, result.previous_version):
                writer.save(uri)
        else:
            incoming = latest.drop(DELETED)  # no-op without deletes
            result.columns_added = _add_new_columns(spark, uri, incoming, table, stored)
            bounds = read_ranges(counts)
            _merge_or_append(spark, lake, relative, model, latest, metadata, result, bounds)
    finally:
        if typed is not None:
            typed.unpersist()
    if result.mode != "unchanged":
        _written_by_this_run(lake, relative, table, run_id, result.previous_version)
    result.delta_version = log_version(lake, relative)
    if result.mode in ("overwrite", "append"):
        commit = log_commit(lake, relative, result.delta_version) or {}
        written = int((commit.get("operationMetrics") or {}).get("numOutputRows", 0))
        result.rows_written = result.rows_inserted = written
    result.rows = table_rows(spark, lake, relative, result.delta_version)
    result.duration_seconds = round(time.monotonic() - started, 3)
    log.info("processed %s: %s", table, result)
    return result


def build_processed(
    spark: SparkSession,
    config: PipelineConfig,
    run_id: str,
    full_refresh: bool = False,
    tables: list[str] | None = None,
) -> list[ProcessedResult]:
    """Update every processed table (or the ones named) from the committed raw runs.

    The tables are independent (each reads its own raw stream and writes its own Delta table),
    so they are updated side by side (:func:`~raw2gold.transform.parallel.in_parallel`).
    """
    names = tables or list(config.processed)
    done = in_parallel(
        spark,
        names,
        lambda session, table: process_table(session, config, table, run_id, full_refresh),
    )
    return [done[table] for table in names]


def read_processed(spark: SparkSession, config: PipelineConfig, table: str) -> DataFrame:
    """A processed table, read through Delta."""
    lake = Lake(config.lake)
    relative = lake.processed_table(table)
    if not is_delta(lake, relative):
        raise ProcessedError(
            f"processed table {table} does not exist yet: ingest its source "
            f"({config.processed[table].source}) and run the transform stage"
        )
    return spark.read.format("delta").load(lake.spark_uri(relative))
