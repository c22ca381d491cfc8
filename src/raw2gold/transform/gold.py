"""processed -> staged gold: SQL models with {{ ref('t') }} and Python `build(spark, ref)` models.

Every gold table of a run is written to ``_staging/<run_id>/gold/<table>/`` (Parquet), where
it is not yet visible to readers of gold. Checks then run on the staged data, and only the
publish stage makes it visible. A model that refers to another gold table reads that table's
staged output of the same run.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from raw2gold.config.loader import REF_IN_SQL, gold_order
from raw2gold.config.models import PipelineConfig
from raw2gold.lake.layout import Lake
from raw2gold.transform.delta import is_delta
from raw2gold.transform.processed import read_processed

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

Ref = Callable[[str], "DataFrame"]


class GoldError(RuntimeError):
    """A gold model cannot be built; the message names the model."""


@dataclass
class GoldResult:
    """What one gold table did in this run."""

    table: str
    rows: int
    staging: str
    duration_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def staged_exists(lake: Lake, run_id: str, table: str) -> bool:
    return bool(lake.list_files(lake.staging_gold(run_id, table), ".parquet"))


def read_staged(spark: SparkSession, config: PipelineConfig, run_id: str, table: str) -> DataFrame:
    lake = Lake(config.lake)
    return spark.read.parquet(lake.spark_uri(lake.staging_gold(run_id, table)))


def make_ref(
    spark: SparkSession, config: PipelineConfig, run_id: str, published_fallback: bool = True
) -> Ref:
    """ref(name): processed tables through Delta, gold tables from this run's staging.

    A gold table not staged in this run falls back to its published version.
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
                df = read_staged(spark, config, run_id, name)
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


def build_gold(
    spark: SparkSession, config: PipelineConfig, run_id: str, tables: list[str] | None = None
) -> list[GoldResult]:
    """Build gold tables in dependency order into this run's staging area."""
    lake = Lake(config.lake)
    ref = make_ref(spark, config, run_id)
    results = []
    for table in gold_order(config):
        if tables is not None and table not in tables:
            continue
        started = time.monotonic()
        try:
            df = model_dataframe(spark, config, table, ref)
            staging = lake.staging_gold(run_id, table)
            df.write.mode("overwrite").parquet(lake.spark_uri(staging))
        except GoldError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GoldError(f"gold {table} failed: {first}") from exc
        rows = read_staged(spark, config, run_id, table).count()
        results.append(GoldResult(table, rows, staging, round(time.monotonic() - started, 3)))
        log.info("gold %s staged: %d rows", table, rows)
    return results


def gold_exists(lake: Lake, config: PipelineConfig, table: str) -> bool:
    """Whether a gold table has been published."""
    if config.gold[table].format == "delta":
        return is_delta(lake, lake.gold_table(table))
    return lake.exists(f"{lake.gold_table(table)}/_current.json")
