"""Small Delta helpers shared by the stages, written against SQL/DataFrame APIs only."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from raw2gold.lake.layout import Lake

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"
# Delta's idempotent writes: a commit records (app id, version); a later write of the same app
# id with a version not above it is skipped, and two at once conflict
TXN_APP_ID = "spark.databricks.delta.write.txnAppId"
TXN_VERSION = "spark.databricks.delta.write.txnVersion"
TXN_APP = "raw2gold"
# Error classes of a commit that lost to another writer's (conflicts Delta does not resolve)
CONCURRENT = ("DELTA_CONCURRENT", "DELTA_METADATA_CHANGED", "DELTA_PROTOCOL_CHANGED")

# Commits that rewrite or delete files without changing rows (their actions have
# dataChange=false): table maintenance (raw2gold.transform.maintenance) or a user's own.
NO_DATA_CHANGE = ("OPTIMIZE", "VACUUM START", "VACUUM END")


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


COMMIT_FILE = re.compile(r"^(\d{20})\.json$")


def commit_versions(lake: Lake, relative: str) -> list[int]:
    """The versions whose commit files ``_delta_log/<20 digits>.json`` exist, oldest first."""
    prefix = f"{relative}/_delta_log/"
    found = (
        COMMIT_FILE.match(name.removeprefix(prefix))
        for name in lake.list_files(prefix.rstrip("/"), ".json")
    )
    return sorted(int(m.group(1)) for m in found if m)


def log_version(lake: Lake, relative: str) -> int:
    """The newest version of a Delta table from its log listing (-1 when there is none)."""
    return max(commit_versions(lake, relative), default=-1)


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
    lake: Lake,
    relative: str,
    key: str,
    look_back: int | None = 50,
    value: Any = None,
    at_most: int | None = None,
) -> tuple[int, dict[str, Any]] | None:
    """The newest commit whose JSON userMetadata has ``key`` (equal to ``value`` when given):
    (version, metadata), or None.

    Reads the log's commit files without Spark, newest first: at most ``look_back`` of them
    (None: every commit the log still holds), of versions up to ``at_most`` when given.
    """
    versions = [v for v in commit_versions(lake, relative)[::-1] if at_most is None or v <= at_most]
    for version in versions[:look_back]:
        metadata = (log_commit(lake, relative, version) or {}).get("metadata")
        if isinstance(metadata, dict) and key in metadata:
            if value is None or metadata[key] == value:
                return version, metadata
    return None


def commits_since_newest(
    lake: Lake, relative: str, key: str
) -> tuple[tuple[int, dict[str, Any]] | None, list[dict[str, Any]]]:
    """The newest commit whose JSON userMetadata has ``key`` — (version, metadata), or None —
    and the commitInfo of every commit after it, newest first (each with its ``version``): what
    other writers did since (OPTIMIZE, a RESTORE or DELETE by hand). One listing of the log."""
    later: list[dict[str, Any]] = []
    for version in commit_versions(lake, relative)[::-1]:
        commit = log_commit(lake, relative, version) or {}
        metadata = commit.get("metadata")
        if isinstance(metadata, dict) and key in metadata:
            return (version, metadata), later
        later.append({**commit, "version": version})
    return None, later


def restored_to(commits: list[dict[str, Any]]) -> int | None:
    """The version the newest ``RESTORE`` among these commits took the table back to (-1:
    restored to a timestamp, not resolved here); None when there is none."""
    for commit in commits:
        if commit.get("operation") == "RESTORE":
            target = str((commit.get("operationParameters") or {}).get("version"))
            return int(target) if target.isdigit() else -1
    return None


def _file_key(action: dict[str, Any]) -> tuple[str, str]:
    """A file's identity in a snapshot: its path and its deletion vector, if any."""
    vector = action.get("deletionVector")
    if not isinstance(vector, dict):
        return action["path"], ""
    return action[
        "path"
    ], f"{vector.get('storageType')}{vector.get('pathOrInlineDv')}@{vector.get('offset')}"


def _live_rows(files: list[dict[str, Any]]) -> int | None:
    """Rows of a snapshot's add actions: stats numRecords less deletion-vector rows."""
    total = 0
    for add in files:
        stats = file_stats(add)
        if stats is None or stats.get("numRecords") is None:
            return None
        total += int(stats["numRecords"])
        vector = add.get("deletionVector")
        if isinstance(vector, dict):
            total -= int(vector.get("cardinality") or 0)
    return total


CHECKPOINT_MAPS = ("partitionValues", "tags")  # the map-typed fields of an add action


def _checkpoint_adds(
    lake: Lake, log_dir: str, version: int
) -> dict[tuple[str, str], dict[str, Any]] | None:
    """The add actions of a classic single-file checkpoint (None when it is not one)."""
    import pyarrow.parquet as pq

    path = f"{log_dir}/{version:020d}.checkpoint.parquet"
    if not lake.exists(path):
        return None
    table = pq.read_table(lake.path(path), columns=["add"], filesystem=lake.fs)
    adds = [a for a in table.column("add").to_pylist() if a is not None]
    for add in adds:  # Parquet maps come back as (key, value) pairs; the JSON log has objects
        for field in CHECKPOINT_MAPS:
            if isinstance(add.get(field), list):
                add[field] = dict(add[field])
    return {_file_key(a): a for a in adds}


def live_files(
    lake: Lake, relative: str, version: int | None = None
) -> list[dict[str, Any]] | None:
    """The add actions of a Delta table's files at a version (default: the newest), from its
    log without Spark: the version's checksum file when it lists them, else the newest classic
    checkpoint replayed with the commits after it. None when the log does not allow it
    (multi-part or v2 checkpoints, log files cleaned up); callers then ask Spark.
    """
    log_dir = f"{relative}/_delta_log"
    names = [n.removeprefix(f"{log_dir}/") for n in lake.list_files(log_dir)]
    newest = max((int(m.group(1)) for n in names if (m := COMMIT_FILE.match(n))), default=-1)
    version = newest if version is None else version
    if version < 0 or version > newest:
        return None
    if f"{version:020d}.crc" in names:
        with lake.fs.open_input_stream(lake.path(f"{log_dir}/{version:020d}.crc")) as stream:
            checksum = json.loads(stream.read().decode("utf-8"))
        files = checksum.get("allFiles")
        if isinstance(files, list) and len(files) == checksum.get("numFiles"):
            return [dict(f) for f in files]
    checkpoints = [
        int(n[:20]) for n in names if n.endswith(".checkpoint.parquet") and n[:20].isdigit()
    ]
    start = max((c for c in checkpoints if c <= version), default=-1)
    adds = _checkpoint_adds(lake, log_dir, start) if start >= 0 else {}
    if adds is None:
        return None
    for commit in range(start + 1, version + 1):
        path = f"{log_dir}/{commit:020d}.json"
        if not lake.exists(path):
            return None
        with lake.fs.open_input_stream(lake.path(path)) as stream:
            lines = stream.read().decode("utf-8").splitlines()
        for line in lines:
            action = json.loads(line) if line.strip() else {}
            if "add" in action:
                adds[_file_key(action["add"])] = action["add"]
            elif "remove" in action:
                adds.pop(_file_key(action["remove"]), None)
    return list(adds.values())


def file_stats(add: dict[str, Any]) -> dict[str, Any] | None:
    """The parsed statistics of an add action (numRecords, minValues, maxValues, nullCount)."""
    stats = add.get("stats")
    if isinstance(stats, str):
        stats = json.loads(stats) if stats else None
    return stats if isinstance(stats, dict) else None


def log_row_count(lake: Lake, relative: str, version: int | None = None) -> int | None:
    """Rows of a Delta table at a version (default: the newest), from its log without Spark.

    Sums the ``numRecords`` statistics of the live files, less deletion-vector rows. None when
    :func:`live_files` cannot read the log or a file has no statistics.
    """
    files = live_files(lake, relative, version)
    return None if files is None else _live_rows(files)


def table_rows(spark: SparkSession, lake: Lake, relative: str, version: int | None = None) -> int:
    """Rows of a Delta table at a version: from its log (:func:`log_row_count`), else counted."""
    rows = log_row_count(lake, relative, version)
    if rows is not None:
        return rows
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return int(reader.load(lake.spark_uri(relative)).count())


@contextmanager
def commit_metadata(
    spark: SparkSession, payload: dict[str, Any], read_version: int | None = None
) -> Iterator[None]:
    """Attach ``payload`` (JSON) as userMetadata to the Delta commits made inside the block.

    With ``read_version`` (the table's version when the writer read it; -1: no table yet) the
    commit also records Delta's transaction id ``raw2gold`` at ``read_version + 1``. A writer
    that read the same version as one that committed since is then skipped by Delta, or fails
    with a concurrent-transaction conflict, instead of writing the same rows again (two runs
    at once: blind appends never conflict). :func:`written_by` tells which happened.
    """
    spark.conf.set(USER_METADATA, json.dumps(payload, sort_keys=True, default=str))
    if read_version is not None:
        spark.conf.set(TXN_APP_ID, TXN_APP)
        spark.conf.set(TXN_VERSION, str(read_version + 1))
    try:
        yield
    finally:
        spark.conf.unset(USER_METADATA)
        if read_version is not None:
            spark.conf.unset(TXN_APP_ID)
            spark.conf.unset(TXN_VERSION)
