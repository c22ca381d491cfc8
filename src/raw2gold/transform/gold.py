"""processed -> staged gold: SQL models with {{ ref('t') }} and Python `build(spark, ref)` models.

Every gold table of a run is written to ``_staging/<run_id>/gold/<table>/`` (Parquet), where
it is not yet visible to readers of gold. Checks then run on the staged data, and only the
publish stage makes it visible. A model that refers to another gold table reads that table's
staged output of the same run.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from raw2gold.config.loader import REF_IN_SQL, gold_order, model_refs
from raw2gold.config.models import DELTA_REFUSED, PipelineConfig, processed_name
from raw2gold.errors import Raw2GoldError, described, first_line, is_final
from raw2gold.lake.layout import Lake
from raw2gold.transform.delta import (
    NO_DATA_CHANGE,
    commits_since_newest,
    is_delta,
    log_commit,
    log_version,
    quote,
    sql_literal,
)
from raw2gold.transform.processed import read_processed

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

Ref = Callable[[str], "DataFrame"]
AFFECTED_PREFIX = "__r2g_by_"
# An incremental build collects its affected groups to the driver up to this many.
MAX_COLLECTED_GROUPS = 1_000_000
# Types whose text form casts back to the same value (timestamps carry their UTC offset).
_EXACT_TEXT = ("date", "decimal", "tinyint", "smallint", "int", "bigint", "string", "timestamp")


class GoldError(Raw2GoldError):
    """A gold model cannot be built; the message names the model. Final unless raised with
    ``final=False``: the model and its inputs are the same on every try."""

    final = True


@dataclass
class GoldResult:
    """What one gold table did in this run (``rows``: rows staged by this build)."""

    table: str
    rows: int
    staging: str
    duration_seconds: float
    build: str = "full"  # full | incremental | unchanged
    reason: str = ""
    groups: int = -1  # incremental: how many groups (`by` values) were recomputed

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BuildPlan:
    """How the gold stage builds one table, and what it read (recorded at publish)."""

    table: str
    mode: str  # full | incremental | unchanged
    reason: str
    inputs: dict[str, str]  # each referenced table -> its version when the model was built
    model_hash: str
    since: dict[str, str] = field(default_factory=dict)  # versions at the last publish
    changed: list[str] = field(default_factory=list)
    built_on_publish: int = 0  # the number of the table's publish this build follows
    layout: dict[str, Any] = field(default_factory=dict)  # mode, keys, partition_by

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def staged_build(lake: Lake, run_id: str, table: str) -> dict[str, Any] | None:
    """The build record the gold stage wrote for a table in a run (None: not built)."""
    return lake.read_record(lake.staging_build(run_id, table))


def staged_exists(lake: Lake, run_id: str, table: str) -> bool:
    return staged_build(lake, run_id, table) is not None


def written_schema(schema: StructType) -> dict[str, Any]:
    """The schema of Parquet written from a DataFrame of `schema`, as JSON for a record:
    reading with it needs no Spark job for the footers (Spark makes every field of a file
    source nullable, as it does for an inferred schema)."""
    result = schema.jsonValue()
    assert isinstance(result, dict)
    return result


def read_parquet(spark: SparkSession, uri: str, schema: dict[str, Any] | None) -> DataFrame:
    """Parquet this project wrote, with the schema recorded at the write (None: inferred)."""
    from pyspark.sql.types import StructType

    reader = spark.read
    if schema:
        reader = reader.schema(StructType.fromJson(schema))
    return reader.parquet(uri)


def read_staged(
    spark: SparkSession,
    config: PipelineConfig,
    run_id: str,
    table: str,
    build: dict[str, Any] | None = None,
) -> DataFrame:
    """The rows this run's build of a table wrote to staging (incremental: the changed groups);
    ``build``: its build record when the caller has read it already."""
    lake = Lake(config.lake)
    if build is None:
        build = staged_build(lake, run_id, table) or {}
    uri = lake.spark_uri(lake.staging_gold(run_id, table))
    return read_parquet(spark, uri, build.get("schema"))


def _by_match(expressions: list[str]) -> Column:
    """Null-safe equality of `expressions` (over a table's rows) with the affected groups."""
    from pyspark.sql import functions as F

    condition = None
    for index, expression in enumerate(expressions):
        term = F.expr(expression).eqNullSafe(F.col(f"{AFFECTED_PREFIX}{index}"))
        condition = term if condition is None else condition & term
    assert condition is not None
    return condition


def read_affected(
    spark: SparkSession,
    config: PipelineConfig,
    run_id: str,
    table: str,
    schema: dict[str, Any] | None = None,
) -> DataFrame:
    """The groups an incremental build recomputed: columns ``__r2g_by_0..n`` (``schema``:
    theirs, else the one the build recorded)."""
    lake = Lake(config.lake)
    if schema is None:
        schema = (staged_build(lake, run_id, table) or {}).get("affected_schema")
    return read_parquet(spark, lake.spark_uri(lake.staging_affected(run_id, table)), schema)


def prospective(spark: SparkSession, config: PipelineConfig, run_id: str, table: str) -> DataFrame:
    """The gold table as publishing this run would leave it; what checks and later models read.

    full: the staged rows; unchanged: the published table; incremental: the published rows of
    the groups not rebuilt, plus the staged rows of the rebuilt ones.
    """
    from pyspark.sql import functions as F

    from raw2gold.publish.publisher import read_gold

    lake = Lake(config.lake)
    build = staged_build(lake, run_id, table)
    if build is None:
        raise GoldError(f"gold {table} is not staged in run {run_id}: run the gold stage first")
    if build["mode"] == "unchanged":
        return read_gold(spark, config, table)
    staged = read_staged(spark, config, run_id, table, build)
    if build["mode"] == "full":
        if staged_is_whole(lake, config, table):
            return staged
        return _merged_with_published(spark, config, table, staged)
    incremental = config.gold[table].incremental
    assert incremental is not None
    published = read_gold(spark, config, table)
    kept = published.join(
        F.broadcast(read_affected(spark, config, run_id, table, build.get("affected_schema"))),
        _by_match([quote(b) for b in incremental.by]),
        "left_anti",
    )
    return kept.unionByName(staged.select(*published.columns))


def staged_is_whole(lake: Lake, config: PipelineConfig, table: str) -> bool:
    """Whether a full build's staged rows are the whole table once published: an overwrite, or
    the first publish of a ``merge`` or ``replace_partitions`` model (later ones keep rows)."""
    return config.gold[table].mode == "overwrite" or not gold_exists(lake, config, table)


def _merged_with_published(
    spark: SparkSession, config: PipelineConfig, table: str, staged: DataFrame
) -> DataFrame:
    """A ``merge`` or ``replace_partitions`` model's table as its publish leaves it: the
    published rows whose key (partition) the staged rows do not have, and the staged rows."""
    from pyspark.sql import functions as F

    from raw2gold.publish.publisher import read_gold

    model = config.gold[table]
    published = read_gold(spark, config, table)
    merge = model.mode == "merge"
    columns = model.keys if merge else model.partition_by
    replaced = staged.select(
        *[F.col(quote(c)).alias(f"_r2g_replaced_{i}") for i, c in enumerate(columns)]
    ).distinct()
    # MERGE matches keys by equality (a NULL key never matches); a partition is replaced whole,
    # the NULL partition too
    matches = [
        F.col(quote(c)) == F.col(f"_r2g_replaced_{i}")
        if merge
        else F.col(quote(c)).eqNullSafe(F.col(f"_r2g_replaced_{i}"))
        for i, c in enumerate(columns)
    ]
    condition = functools.reduce(lambda a, b: a & b, matches)
    kept = published.join(replaced, condition, "left_anti")
    return kept.unionByName(staged, allowMissingColumns=True)


def make_ref(
    spark: SparkSession, config: PipelineConfig, run_id: str, published_fallback: bool = True
) -> Ref:
    """ref(name): processed tables through Delta, gold tables as this run leaves them.

    A gold table not built in this run falls back to its published version.
    """
    lake = Lake(config.lake)
    cache: dict[str, DataFrame] = {}

    def ref(name: str) -> DataFrame:
        if name in cache:
            return cache[name]
        kind = config.table_kind(name)
        if kind == "processed":
            df = read_processed(spark, config, name)
        elif kind == "gold":
            if staged_exists(lake, run_id, name):
                df = prospective(spark, config, run_id, name)
            elif published_fallback:
                from raw2gold.publish.publisher import read_gold

                df = read_gold(spark, config, name)
            else:
                raise GoldError(f"gold table {name} is not staged in run {run_id}")
        else:
            raise GoldError(f"unknown table {name!r} in ref()")
        cache[name] = df
        return df

    return ref


def render_sql(spark: SparkSession, sql: str, ref: Ref) -> str:
    """Replace every {{ ref('t') }} by a temporary view of that table."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        view = f"__r2g_ref_{name}"
        ref(name).createOrReplaceTempView(view)
        return view

    return REF_IN_SQL.sub(replace, sql)


def _load_python(config: PipelineConfig, table: str, spec: str) -> Callable[..., Any]:
    module_path, _, function = spec.partition(":")
    path = (config.base_dir / module_path).resolve()
    name = f"raw2gold_model_{config.name}_{table}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise GoldError(f"gold {table}: cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    builder = getattr(module, function, None)
    if not callable(builder):
        raise GoldError(f"gold {table}: {module_path} has no function {function}")
    return builder


def model_dataframe(spark: SparkSession, config: PipelineConfig, table: str, ref: Ref) -> DataFrame:
    """The DataFrame a gold model defines (not yet written)."""
    model = config.gold[table]
    if model.sql:
        text = (config.base_dir / model.sql).read_text(encoding="utf-8").strip().rstrip(";")
        return spark.sql(render_sql(spark, text, ref))
    assert model.python is not None
    result = _load_python(config, table, model.python)(spark, ref)
    if not hasattr(result, "write") or not hasattr(result, "schema"):
        raise GoldError(f"gold {table}: {model.python} must return a DataFrame")
    return result


def model_hash(config: PipelineConfig, table: str) -> str:
    """A fingerprint of a gold model: its config and the text of its SQL or Python file."""
    model = config.gold[table]
    digest = hashlib.sha256(model.model_dump_json().encode())
    body = model.sql or (model.python or "").split(":")[0]
    path = config.base_dir / body
    if path.is_file():
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _commits(lake: Lake, table: str, since: str, now: str) -> list[dict[str, Any]] | None:
    """The commitInfo of each version of processed `table` after `since` up to `now` (None:
    not two versions in order)."""
    if not (since.isdigit() and now.isdigit()) or int(since) > int(now):
        return None
    relative = lake.processed_table(table)
    return [log_commit(lake, relative, v) or {} for v in range(int(since) + 1, int(now) + 1)]


def _merges_only(commits: list[dict[str, Any]] | None) -> bool:
    """Whether every commit is one of a processed table's MERGEs (inserts, updates, CDC deletes)
    or appends, or changes no rows (OPTIMIZE, VACUUM): the change feed then names every changed
    row with its old image. After any other commit (an overwrite: a full refresh) a model is
    rebuilt in full."""

    def row_level(commit: dict[str, Any]) -> bool:
        operation = commit.get("operation")
        append = (commit.get("operationParameters") or {}).get("mode") == "Append"
        return operation in ("MERGE", *NO_DATA_CHANGE) or operation == "WRITE" and append

    return commits is not None and all(row_level(c) for c in commits)


def _rows_unchanged(commits: list[dict[str, Any]] | None) -> bool:
    """Whether every commit changed no rows (table maintenance: OPTIMIZE, VACUUM)."""
    return commits is not None and all(c.get("operation") in NO_DATA_CHANGE for c in commits)


def _changed_outside(lake: Lake, config: PipelineConfig, table: str) -> str | None:
    """How a Delta gold table changed after raw2gold's newest publish of it, by another writer
    (a RESTORE, a DELETE or UPDATE by hand): "version 5: RESTORE"; None when it did not (or
    only by OPTIMIZE and VACUUM, which change no rows)."""
    relative = lake.gold_table(table)
    if config.gold[table].format != "delta" or not is_delta(lake, relative):
        return None
    published, later = commits_since_newest(lake, relative, "raw2gold_run_id")
    changes = [c for c in later if c.get("operation") not in NO_DATA_CHANGE]
    if published is None or not changes:
        return None
    first = changes[-1]  # the oldest
    return f"version {first['version']}: {first.get('operation') or 'a commit'}"


def _rebuilt_in_run(lake: Lake, run_id: str, table: str) -> bool:
    """Whether this run rebuilds a gold table (its build record, written before dependants)."""
    build = staged_build(lake, run_id, table)
    return build is not None and build["mode"] != "unchanged"


def plan_build(
    config: PipelineConfig,
    table: str,
    run_id: str,
    full_refresh: bool,
) -> BuildPlan:
    """Decide how to build a gold table: unchanged, incremental (changed groups) or full.

    The versions of the tables it reads are compared with the ones recorded at its last
    publish; processed tables by Delta version, gold tables by the run that last published them.
    """
    from raw2gold.publish.publisher import last_publish, publish_number

    lake = Lake(config.lake)
    model = config.gold[table]
    refs = model_refs(config, table)
    inputs: dict[str, str] = {}
    for name in refs:
        if name in config.processed:
            inputs[name] = str(log_version(lake, lake.processed_table(name)))
        elif _rebuilt_in_run(lake, run_id, name):
            inputs[name] = f"run:{run_id}"
        else:
            upstream = last_publish(lake, config, name)
            inputs[name] = f"run:{upstream['raw2gold_run_id']}" if upstream else "none"
    plan = BuildPlan(table, "full", "", inputs, model_hash(config, table))
    plan.layout = {"mode": model.mode, "keys": model.keys, "partition_by": model.partition_by}
    last = last_publish(lake, config, table)
    plan.built_on_publish = publish_number(last)
    build = (last or {}).get("build") or {}
    _same_layout_as_published(lake, config, table, last)
    outside = _changed_outside(lake, config, table) if build else None
    if full_refresh:
        plan.reason = "full refresh requested"
    elif not build:
        plan.reason = "first build"
    elif build.get("model_hash") != plan.model_hash:
        plan.reason = "the model or its config changed"
    elif outside:
        # what the table holds is no longer what its last publish recorded: an incremental
        # build would replace its changed groups only, and an unchanged one would leave it so
        plan.reason = (
            f"the table changed since run {last['raw2gold_run_id'] if last else '?'} "
            f"published it ({outside}), not by raw2gold"
        )
        log.warning("gold %s: rebuilt in full: %s", table, plan.reason)
    else:
        plan.since = dict(build.get("inputs") or {})
        moved = [n for n in refs if plan.since.get(n) != inputs[n]]
        commits = {
            n: _commits(lake, n, plan.since.get(n, ""), inputs[n])
            for n in moved
            if n in config.processed
        }
        plan.changed = [n for n in moved if not _rows_unchanged(commits.get(n))]
        listed = set(model.incremental.inputs) if model.incremental else set()
        others = [n for n in plan.changed if n not in listed]
        rewritten = [n for n in plan.changed if not _merges_only(commits.get(n))]
        if not plan.changed:
            plan.mode = "unchanged"
            plan.reason = f"inputs unchanged since run {last['raw2gold_run_id'] if last else '?'}"
        elif others:
            plan.reason = f"changed: {', '.join(others)}" + (
                " (not incremental inputs)" if model.incremental else ""
            )
        elif rewritten:
            plan.reason = f"processed {', '.join(rewritten)} rewritten, not merged"
        else:
            plan.mode = "incremental"
            plan.reason = f"changed: {', '.join(plan.changed)}"
    return plan


def _same_layout_as_published(
    lake: Lake, config: PipelineConfig, table: str, last: dict[str, Any] | None
) -> None:
    """Refuse to build a ``merge`` or ``replace_partitions`` model whose keys or partitioning
    changed since its table was published: a MERGE by the new keys would keep the rows merged
    by the old ones (two rows for one new key), and neither mode can repartition a table.
    Keys that keep every old key column are fine (rows unique by the old keys stay unique).
    A publish recorded before its layout was: not compared."""
    model = config.gold[table]
    published = ((last or {}).get("build") or {}).get("layout")
    if model.mode == "overwrite" or not published:
        return
    if published.get("mode") == "merge" and model.mode == "merge":
        old = list(published.get("keys") or [])
        if not set(old) <= set(model.keys):
            raise _layout_changed(lake, table, "keys", old, model.keys, last, "re-key")
    old = list(published.get("partition_by") or [])
    if old != model.partition_by:
        raise _layout_changed(
            lake, table, "partition_by", old, model.partition_by, last, "repartition"
        )


def _layout_changed(
    lake: Lake,
    table: str,
    setting: str,
    old: list[str],
    new: list[str],
    last: dict[str, Any] | None,
    verb: str,
) -> GoldError:
    """The one-line error for a merge or replace_partitions model whose layout changed."""
    run = (last or {}).get("raw2gold_run_id", "?")
    folder = lake.uri(lake.gold_table(table))
    return GoldError(
        f"gold {table}: {setting} changed from [{', '.join(old)}] to [{', '.join(new)}] since "
        f"run {run} published the table, which its mode cannot apply to the rows it holds; to "
        f"{verb} it, move {folder} aside (the next run builds the table anew from the model's "
        f"output), or set gold.{table}.{setting} back to [{', '.join(old)}]"
    )


def parquet_rows(lake: Lake, relative: str) -> int:
    """Rows of a Parquet folder written by Spark, from the files' footers (no Spark job)."""
    import pyarrow.parquet as pq

    total = 0
    for path in lake.list_files(relative, ".parquet"):
        with lake.fs.open_input_file(lake.path(path)) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def never_null_groups(config: PipelineConfig, table: str) -> list[int]:
    """Positions of the `by` columns an error-level not_null check of the model covers."""
    model = config.gold[table]
    assert model.incremental is not None
    covered = {
        column
        for check in model.checks
        if check.type == "not_null" and check.severity == "error"
        for column in check.columns
    }
    return [i for i, column in enumerate(model.incremental.by) if column in covered]


@dataclass
class AffectedGroups:
    """The groups an incremental build recomputes: how many, and each `by` value's range."""

    count: int
    # per `by`: lowest and highest value as text (None: no usable range), NULL occurs, SQL type
    bounds: list[tuple[str | None, str | None, bool, str]]
    schema: dict[str, Any] | None = None  # of the written groups (see written_schema)


def _write_affected(
    spark: SparkSession, config: PipelineConfig, run_id: str, plan: BuildPlan
) -> AffectedGroups:
    """Write the groups that the changed input rows touch (old and new images)."""
    from pyspark.sql import functions as F

    lake = Lake(config.lake)
    incremental = config.gold[plan.table].incremental
    assert incremental is not None
    groups = None
    for name in plan.changed:
        # Delta's SQL function, not the reader's readChangeFeed options: those make Spark log
        # three "duplicated key" warnings per read.
        uri = sql_literal(lake.spark_uri(lake.processed_table(name)))
        changes = spark.sql(
            f"SELECT * FROM table_changes_by_path({uri}, "
            f"{int(plan.since[name]) + 1}, {int(plan.inputs[name])})"
        )
        keys = changes.selectExpr(
            *[
                f"{expression} AS {AFFECTED_PREFIX}{index}"
                for index, expression in enumerate(incremental.expressions(name))
            ]
        )
        groups = keys if groups is None else groups.unionByName(keys)
    assert groups is not None
    # A group with NULL in a `by` column that an error-level not_null check covers can never be
    # published (the check would stop the run), so it is not rebuilt: rebuilding it would
    # read every input row whose expression is NULL (purchases never bought, say).
    for index in never_null_groups(config, plan.table):
        groups = groups.where(F.col(f"{AFFECTED_PREFIX}{index}").isNotNull())
    relative = lake.staging_affected(run_id, plan.table)
    distinct = groups.distinct()
    schema = written_schema(distinct.schema)
    # Usually few: collected with their ranges in one query and written from here; a change
    # touching more groups than that is written and ranged by Spark instead.
    collected = distinct.limit(MAX_COLLECTED_GROUPS + 1).toArrow()
    if collected.num_rows > MAX_COLLECTED_GROUPS:
        distinct.write.mode("overwrite").parquet(lake.spark_uri(relative))
        count = parquet_rows(lake, relative)
        written = read_affected(spark, config, run_id, plan.table, schema)
        return AffectedGroups(count, _spark_bounds(written) if count else [], schema)
    lake.replace_parquet(relative, collected)
    if not collected.num_rows:
        return AffectedGroups(0, [], schema)
    return AffectedGroups(collected.num_rows, _arrow_bounds(distinct.schema, collected), schema)


def _exact(kind: str) -> bool:
    return kind.split("(")[0] in _EXACT_TEXT


def _spark_bounds(written: DataFrame) -> list[tuple[str | None, str | None, bool, str]]:
    """Each column's lowest/highest value as text (session time zone), and whether NULL occurs."""
    from pyspark.sql import functions as F

    fields = written.schema.fields
    aggregates = []
    for f in fields:
        column = F.col(f.name)
        aggregates += [
            F.min(column).cast("string"),
            F.max(column).cast("string"),
            F.max(column.isNull().cast("int")),
        ]
    row = written.agg(*aggregates).collect()[0]
    return [
        (
            row[3 * i] if _exact(f.dataType.simpleString()) else None,
            row[3 * i + 1] if _exact(f.dataType.simpleString()) else None,
            bool(row[3 * i + 2]),
            f.dataType.simpleString(),
        )
        for i, f in enumerate(fields)
    ]


def _as_text(value: Any) -> str | None:
    """A value's text that Spark casts back exactly: ISO dates, timestamps with their offset
    (None for a timestamp without one)."""
    import datetime as dt

    if isinstance(value, dt.datetime):
        return None if value.tzinfo is None else value.isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _arrow_bounds(
    schema: StructType, groups: pa.Table
) -> list[tuple[str | None, str | None, bool, str]]:
    """Like :func:`_spark_bounds`, from the collected groups (Python orders text by code
    point, as Spark's default binary collation orders UTF-8)."""
    bounds: list[tuple[str | None, str | None, bool, str]] = []
    for f in schema.fields:
        kind = f.dataType.simpleString()
        values = groups.column(f.name).to_pylist()
        present = [v for v in values if v is not None]
        nulls = len(present) < len(values)
        if not present or not _exact(kind):
            bounds.append((None, None, nulls, kind))
            continue
        low, high = _as_text(min(present)), _as_text(max(present))
        exact = low is not None and high is not None
        bounds.append((low if exact else None, high if exact else None, nulls, kind))
    return bounds


def _group_filtered(
    spark: SparkSession,
    config: PipelineConfig,
    run_id: str,
    table: str,
    ref: Ref,
    affected: AffectedGroups,
) -> Ref:
    """ref() for an incremental build: each listed input keeps only the rows of the groups.

    Besides the exact (semi-join) match, each group expression is bounded by the groups'
    lowest and highest value, a filter Spark can push into the scan (casts of timestamps to
    dates are unwrapped), so Delta skips files whose statistics lie outside.
    """
    from pyspark.sql import functions as F

    incremental = config.gold[table].incremental
    assert incremental is not None
    groups = F.broadcast(read_affected(spark, config, run_id, table, affected.schema))

    def filtered(name: str) -> DataFrame:
        df = ref(name)
        if name not in incremental.inputs:
            return df
        for expression, (low, high, nulls, kind) in zip(
            incremental.expressions(name), affected.bounds, strict=True
        ):
            if low is None or high is None:
                continue
            value = F.expr(expression)
            in_range = value.between(F.lit(low).cast(kind), F.lit(high).cast(kind))
            df = df.where(in_range | value.isNull() if nulls else in_range)
        return df.join(groups, _by_match(incremental.expressions(name)), "left_semi")

    return filtered


def _field_names(kind: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(path, name) of every field of a Spark schema, nested ones (struct fields, also in
    arrays and maps) as ``address.Zip Code``."""
    from pyspark.sql.types import ArrayType, MapType, StructType

    if isinstance(kind, StructType):
        for f in kind.fields:
            yield prefix + f.name, f.name
            yield from _field_names(f.dataType, f"{prefix}{f.name}.")
    elif isinstance(kind, ArrayType):
        yield from _field_names(kind.elementType, prefix)
    elif isinstance(kind, MapType):
        yield from _field_names(kind.keyType, prefix)
        yield from _field_names(kind.valueType, prefix)


def _delta_names(config: PipelineConfig, table: str, schema: StructType) -> None:
    """Refuse, before anything is written, a Delta gold model's column or nested field name
    Delta would refuse at publish (a space, ``,;{}()=``), naming the model's file and a name
    Delta takes."""
    model = config.gold[table]
    if model.format != "delta":
        return
    refused = [(path, name) for path, name in _field_names(schema) if DELTA_REFUSED.search(name)]
    if refused:
        names = ", ".join(
            f"{path!r} (e.g. AS {processed_name(name)})"
            if path == name
            else f"{path!r} (e.g. to {processed_name(name)})"
            for path, name in refused
        )
        raise GoldError(
            f"gold {table}: Delta refuses spaces and ',;{{}}()=' in column names: rename "
            f"{names} in {model.sql or model.python}, or publish it as format: parquet"
        )


def _named_columns_exist(config: PipelineConfig, table: str, columns: list[str]) -> None:
    """The columns a gold model's config names (keys, partition_by, incremental.by) must be
    among its output's, or its publish (or its next incremental build) would fail."""
    model = config.gold[table]
    named = {
        "keys": model.keys,
        "partition_by": model.partition_by,
        "incremental.by": model.incremental.by if model.incremental else [],
    }
    known = {c.lower() for c in columns}
    for setting, names in named.items():
        missing = [n for n in names if n.lower() not in known]
        if missing:
            raise GoldError(
                f"gold {table}: {setting} names {', '.join(missing)}, which the model's output "
                f"does not have (its columns: {', '.join(columns)}); fix gold.{table}.{setting} "
                f"in {config.path.name} or the model"
            )


def _one_row_per_key(staged: DataFrame, table: str, config: PipelineConfig) -> None:
    """A ``merge`` model's rows must have a key each, and one row per key: MERGE fails on two
    rows of one key that the table has, inserts both when it has not, and never matches a NULL
    key, so such a row would be added again by every run."""
    from pyspark.sql import functions as F

    keys = config.gold[table].keys
    columns = [F.col(quote(k)) for k in keys]
    nulls = functools.reduce(lambda a, b: a | b, [c.isNull() for c in columns])
    counts = staged.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count(F.when(nulls, 1)).alias("nulls"),
        F.count_distinct(*columns).alias("keys"),
    ).collect()[0]
    named = ", ".join(keys)
    if counts["nulls"]:
        raise GoldError(
            f"gold {table}: mode merge needs a key in every row, but {counts['nulls']} row(s) "
            f"have a NULL in {named} (a NULL key never matches: such a row would be added again "
            "every run); filter them out or give them a key in the model"
        )
    if counts["keys"] < counts["rows"]:
        example = staged.groupBy(*columns).count().where(F.col("count") > 1).limit(1).collect()[0]
        shown = ", ".join(f"{k}={example[k]!r}" for k in keys)
        raise GoldError(
            f"gold {table}: mode merge needs one row per key ({named}), but "
            f"{counts['rows'] - counts['keys']} row(s) repeat a key (e.g. {shown}: "
            f"{example['count']} rows); make the model's rows unique on its keys"
        )


def _write_staged(
    spark: SparkSession, config: PipelineConfig, run_id: str, table: str, ref: Ref
) -> dict[str, Any]:
    """Write the model's rows to staging; the schema they are read back with."""
    lake = Lake(config.lake)
    try:
        df = model_dataframe(spark, config, table, ref)
        _delta_names(config, table, df.schema)
        _named_columns_exist(config, table, df.columns)
        uri = lake.spark_uri(lake.staging_gold(run_id, table))
        df.write.mode("overwrite").parquet(uri)
        if config.gold[table].mode == "merge":
            _one_row_per_key(spark.read.schema(df.schema).parquet(uri), table, config)
        return written_schema(df.schema)
    except GoldError:
        raise
    except Exception as exc:
        python = config.gold[table].python
        module = str(config.base_dir / python.partition(":")[0]) if python else None
        message = f"gold {table} failed: {described(exc, module)}"
        raise GoldError(message, final=is_final(exc)) from exc


def build_gold(
    spark: SparkSession,
    config: PipelineConfig,
    run_id: str,
    tables: list[str] | None = None,
    full_refresh: bool = False,
) -> list[GoldResult]:
    """Build gold tables into this run's staging area, a model after the gold it reads;
    independent models at the same time (:mod:`raw2gold.transform.parallel`).

    A model whose inputs and definition did not change since its last publish is not rebuilt
    (``unchanged``); an ``incremental`` model whose only changes are MERGEs or appends into its
    listed inputs rebuilds the changed groups; anything else is rebuilt in full.
    """
    from raw2gold.transform.parallel import in_parallel

    names = [t for t in gold_order(config) if tables is None or t in tables]
    after = {t: {r for r in model_refs(config, t) if r in names} for t in names}

    def build(session: SparkSession, table: str) -> GoldResult:
        return _build_one(session, config, run_id, table, full_refresh)

    built = in_parallel(spark, names, build, after)
    return [built[t] for t in names]


def _build_one(
    spark: SparkSession, config: PipelineConfig, run_id: str, table: str, full_refresh: bool
) -> GoldResult:
    lake = Lake(config.lake)
    started = time.monotonic()
    _same_format_as_published(lake, config, table)
    plan = plan_build(config, table, run_id, full_refresh)
    lake.delete_file(lake.staging_build(run_id, table))
    staging = lake.staging_gold(run_id, table)
    affected = AffectedGroups(-1, [])  # count -1: not an incremental build
    if plan.mode == "incremental":
        try:
            affected = _write_affected(spark, config, run_id, plan)
        except Exception as exc:  # e.g. no change data feed for these versions
            first = first_line(exc)
            log.warning("gold %s: rebuilding in full, no usable change feed: %s", table, first)
            plan.mode, plan.reason = "full", f"no usable change feed ({first[:120]})"
        else:
            if affected.count == 0:
                plan.mode, plan.reason = "unchanged", "inputs changed no rows"
    rows = 0
    schema = None
    if plan.mode == "unchanged":
        lake.delete_dir(staging)
    else:
        model_ref = make_ref(spark, config, run_id)
        if plan.mode == "incremental":
            model_ref = _group_filtered(spark, config, run_id, table, model_ref, affected)
        schema = _write_staged(spark, config, run_id, table, model_ref)
        rows = parquet_rows(lake, staging)
    lake.write_json(
        lake.staging_build(run_id, table),
        {
            **plan.as_dict(),
            "groups": affected.count,
            "rows": rows,
            "schema": schema,
            "affected_schema": affected.schema,
        },
    )
    log.info("gold %s: %s build (%s), %d rows staged", table, plan.mode, plan.reason, rows)
    return GoldResult(
        table,
        rows,
        staging,
        round(time.monotonic() - started, 3),
        plan.mode,
        plan.reason,
        affected.count,
    )


def _same_format_as_published(lake: Lake, config: PipelineConfig, table: str) -> None:
    """Refuse to build a model whose table folder holds the other format's published table:
    the two would share the folder, and readers of the old format would go on reading it."""
    model = config.gold[table]
    published = "parquet" if model.format == "delta" else "delta"
    if not _published_as(lake, table, published):
        return
    raise GoldError(
        f"gold {table}: {lake.uri(lake.gold_table(table))} holds the table as format: "
        f"{published} published it, and "
        f"the model now says format: {model.format}; to switch, delete that folder (the next "
        f"run rebuilds the table from processed), or keep format: {published}"
    )


def _published_as(lake: Lake, table: str, fmt: str) -> bool:
    """Whether the gold table's folder holds a table published in format ``fmt``: a Delta log,
    or a Parquet pointer."""
    if fmt == "delta":
        return is_delta(lake, lake.gold_table(table))
    return lake.exists(f"{lake.gold_table(table)}/_current.json")


def gold_exists(lake: Lake, config: PipelineConfig, table: str) -> bool:
    """Whether a gold table has been published."""
    return _published_as(lake, table, config.gold[table].format)
