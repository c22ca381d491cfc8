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


def sql_literal(value: Any) -> str:
    """A Spark SQL literal for a Python scalar (None, bool, int, float or text)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def delta_ref(uri: str) -> str:
    """The SQL reference of a path-based Delta table."""
    return f"delta.`{uri}`"


def is_delta(lake: Lake, relative: str) -> bool:
    """Whether a Delta table exists at a lake-relative path (has a _delta_log with commits)."""
    return bool(lake.list_files(f"{relative}/_delta_log", ".json"))


def log_version(lake: Lake, relative: str) -> int:
    """The newest version of a Delta table from its log listing (-1 when there is none)."""
    versions = [
        int(name.rsplit("/", 1)[-1].split(".")[0])
        for name in lake.list_files(f"{relative}/_delta_log", ".json")
        if name.rsplit("/", 1)[-1].split(".")[0].isdigit()
    ]
    return max(versions, default=-1)


def log_commit(lake: Lake, relative: str, version: int) -> dict[str, Any] | None:
    """The commitInfo of one Delta version, read from its log file without Spark.

    ``userMetadata`` is parsed into ``metadata`` when it is JSON. None when the file is gone
    (log cleanup) or holds no commitInfo.
    """
    path = f"{relative}/_delta_log/{version:020d}.json"
    if not lake.exists(path):
        return None
    with lake.fs.open_input_stream(lake.path(path)) as stream:
        text = stream.read().decode("utf-8")
    for line in text.splitlines():
        action = json.loads(line) if line.strip() else {}
        info = action.get("commitInfo")
        if info is not None:
            try:
                info["metadata"] = json.loads(info.get("userMetadata") or "")
            except ValueError:
                info["metadata"] = None
            return dict(info)
    return None


def newest_metadata(
    lake: Lake, relative: str, key: str, look_back: int = 50
) -> tuple[int, dict[str, Any]] | None:
    """The newest commit whose JSON userMetadata has ``key``: (version, metadata), or None.

    Walks back at most ``look_back`` commits from the newest, reading log files without Spark.
    """
    newest = log_version(lake, relative)
    for version in range(newest, max(newest - look_back, -1), -1):
        metadata = (log_commit(lake, relative, version) or {}).get("metadata")
        if isinstance(metadata, dict) and key in metadata:
            return version, metadata
    return None


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
