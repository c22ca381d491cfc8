"""Small Delta helpers shared by the stages, written against SQL/DataFrame APIs only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from raw2gold.lake.layout import Lake

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"


def quote(name: str) -> str:
    """A backtick-quoted SQL identifier."""
    return "`" + name.replace("`", "``") + "`"


def delta_ref(uri: str) -> str:
    """The SQL reference of a path-based Delta table."""
    return f"delta.`{uri}`"


def is_delta(lake: Lake, relative: str) -> bool:
    """Whether a Delta table exists at a lake-relative path (has a _delta_log with commits)."""
    return bool(lake.list_files(f"{relative}/_delta_log", ".json"))


def history(spark: SparkSession, uri: str) -> list[dict[str, Any]]:
    """Commits of a Delta table, newest first: version, operation and parsed userMetadata."""
    rows = spark.sql(f"DESCRIBE HISTORY {delta_ref(uri)}").select(
        "version", "operation", "operationMetrics", "userMetadata"
    )
    commits = []
    for row in rows.collect():
        metadata: Any = None
        if row["userMetadata"]:
            try:
                metadata = json.loads(row["userMetadata"])
            except ValueError:
                metadata = None
        commits.append(
            {
                "version": row["version"],
                "operation": row["operation"],
                "metrics": dict(row["operationMetrics"] or {}),
                "metadata": metadata,
            }
        )
    return sorted(commits, key=lambda c: -int(c["version"]))


def latest_version(spark: SparkSession, uri: str) -> int:
    commits = history(spark, uri)
    return int(commits[0]["version"]) if commits else -1


@contextmanager
def commit_metadata(spark: SparkSession, payload: dict[str, Any]) -> Iterator[None]:
    """Attach ``payload`` (JSON) as userMetadata to the Delta commits made inside the block."""
    spark.conf.set(USER_METADATA, json.dumps(payload, sort_keys=True, default=str))
    try:
        yield
    finally:
        spark.conf.unset(USER_METADATA)
