"""Typed models of a pipeline.yaml.

The models only describe shape and local constraints; checks that need the whole file (SQL files
exist, references resolve, no cycles) live in :mod:`raw2gold.config.loader`.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
RUNS_FOLDER = "_runs"  # raw/<source>/_runs/: the source's run manifests (raw2gold.lake.layout)
STREAM_RENAME_HINT = (
    "name the stream otherwise where the connector's config names it, e.g. source-file's "
    "dataset_name"
)
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
ENV_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")
# A connector config key naming a credential holds an ${ENV} reference, never the value itself.
SECRET_KEY_PARTS = ("password", "secret", "token", "api_key", "apikey", "access_key", "private")
# ... unless the key names where or how a credential is used (token_url, api_key_header, ...).
NOT_SECRET_SUFFIXES = (
    "_url",
    "_uri",
    "_path",
    "_file",
    "_endpoint",
    "_type",
    "_method",
    "_name",
    "_header",
    "_field",
    "_param",
    "_location",
)


class Strict(BaseModel):
    """Base model: unknown keys are errors, so typos are caught."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class S3Settings(Strict):
    """How to reach an S3 (or S3-compatible) lake. Credentials are never inline."""

    endpoint: str | None = None
    region: str = "us-east-1"
    path_style: bool = False
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    conn_id: str | None = Field(
        default=None, description="Airflow connection id holding the credentials (aws type)."
    )

    @field_validator("access_key", "secret_key", "session_token")
    @classmethod
    def _env_reference_only(cls, value: str | None) -> str | None:
        if value is not None and not ENV_REF.match(value):
            raise ValueError(
                "credentials are never written inline: use an environment reference such as "
                "${AWS_SECRET_ACCESS_KEY} or an Airflow connection (conn_id)"
            )
        return value


class LakeConfig(Strict):
    """Where the lake lives: a local folder (default) or s3://bucket/prefix."""

    uri: str = "./lake"
    s3: S3Settings = S3Settings()

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith(("s3://", "s3a://"))


class ConnectorSpec(Strict):
    """An Airbyte connector run by raw2gold itself, installed from PyPI into its own venv."""

    package: str = Field(description="PyPI distribution, e.g. airbyte-source-faker")
    version: str = Field(pattern=r"^\d+(\.\d+)*([a-z0-9.+-]*)$", description="pinned version")
    entrypoint: str | None = Field(
        default=None, description="console script; default: the package name without 'airbyte-'"
    )
    manifest: str | None = Field(
        default=None, description="low-code manifest YAML (run with source-declarative-manifest)"
    )

    @property
    def command(self) -> str:
        if self.entrypoint:
            return self.entrypoint
        if self.manifest:
            return "source-declarative-manifest"
        return self.package.removeprefix("airbyte-")


class AirbyteServerSpec(Strict):
    """A sync run by an Airbyte server (OSS or Cloud) whose S3 destination writes into raw."""

    connection_id: str
    conn_id: str = "airbyte_default"
    path_pattern: str = Field(
        default="{stream}/",
        description="where the destination writes each stream, relative to destination_uri",
    )
    destination_uri: str | None = None
    format: Literal["parquet", "jsonl", "csv"] = "parquet"


class StreamConfig(Strict):
    """One stream of a source."""

    name: str
    sync_mode: Literal["full_refresh", "incremental"] = "full_refresh"
    cursor_field: list[str] = []
    primary_key: list[str] = []

    @field_validator("name")
    @classmethod
    def _name_stays_in_its_folder(cls, name: str) -> str:
        segments = name.split("/")
        if any(s in ("", ".", "..") for s in segments) or "\\" in name:
            raise ValueError(
                f"stream {name!r}: its raw files go to raw/<source>/<stream>/, and an empty, "
                "'.' or '..' part of the name or a backslash would put them in another folder "
                f"of the lake (hint: {STREAM_RENAME_HINT})"
            )
        if segments[0] == RUNS_FOLDER:
            raise ValueError(
                f"stream {name!r}: raw/<source>/{RUNS_FOLDER}/ holds the source's run manifests "
                f"(hint: {STREAM_RENAME_HINT})"
            )
        return name

    @model_validator(mode="after")
    def _incremental_needs_cursor(self) -> StreamConfig:
        if self.sync_mode == "incremental" and not self.cursor_field:
            raise ValueError(f"stream {self.name!r}: incremental sync needs a cursor_field")
        return self

    @property
    def table_name(self) -> str:
        return re.sub(r"[^a-z0-9_]", "_", self.name.lower())


class SourceConfig(Strict):
    """A source: either an embedded connector or an Airbyte server connection."""

    connector: ConnectorSpec | None = None
    airbyte: AirbyteServerSpec | None = None
    config: dict[str, Any] = {}
    streams: list[StreamConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _exactly_one_runner(self) -> SourceConfig:
        if (self.connector is None) == (self.airbyte is None):
            raise ValueError("give exactly one of 'connector' (embedded) or 'airbyte' (server)")
        names = [s.name for s in self.streams]
        if len(set(names)) != len(names):
            raise ValueError("stream names must be unique within a source")
        return self

    def stream(self, name: str) -> StreamConfig:
        for stream in self.streams:
            if stream.name == name:
                return stream
        raise KeyError(name)


class CheckConfig(Strict):
    """A quality check on a table; `error` blocks publishing, `warn` only reports."""

    type: Literal[
        "not_null",
        "unique",
        "accepted_values",
        "relationships",
        "row_count",
        "expression",
        "sql",
        "freshness",
    ]
    columns: list[str] = []
    values: list[Any] = []
    to: str | None = Field(default=None, description="relationships: table.column referenced")
    min: int | None = None
    max: int | None = None
    max_change_percent: float | None = Field(
        default=None,
        ge=0,
        description="row_count: largest change in rows vs the previous version, in percent",
    )
    max_age_hours: float | None = Field(
        default=None, gt=0, description="freshness: the newest value of the column may be this old"
    )
    expression: str | None = Field(default=None, description="expression: must hold on every row")
    sql: str | None = Field(default=None, description="sql: returns the offending rows")
    severity: Literal["error", "warn"] = "error"

    @model_validator(mode="after")
    def _arguments(self) -> CheckConfig:
        needs = {
            "not_null": bool(self.columns),
            "unique": bool(self.columns),
            "accepted_values": len(self.columns) == 1 and bool(self.values),
            "relationships": len(self.columns) == 1 and bool(self.to and "." in self.to),
            "row_count": self.min is not None
            or self.max is not None
            or self.max_change_percent is not None,
            "expression": bool(self.expression),
            "sql": bool(self.sql),
            "freshness": len(self.columns) == 1 and self.max_age_hours is not None,
        }
        if not needs[self.type]:
            hints = {
                "not_null": "columns: [..]",
                "unique": "columns: [..]",
                "accepted_values": "one column and values: [..]",
                "relationships": "one column and to: table.column",
                "row_count": "min, max and/or max_change_percent",
                "expression": "expression: <SQL boolean>",
                "sql": "sql: <query returning offending rows>",
                "freshness": "one timestamp column and max_age_hours",
            }
            raise ValueError(f"check {self.type} needs {hints[self.type]}")
        return self

    @property
    def label(self) -> str:
        detail = ",".join(self.columns) or self.expression or self.to or ""
        return f"{self.type}({detail})" if detail else self.type


# Airflow's cron presets (airflow.sdk.definitions.timetables._cron.CRON_PRESETS)
AIRFLOW_PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 */3 *",
    "@yearly": "0 0 1 1 *",
}
# Characters Delta refuses in a column name (without column mapping): processed writes _ instead.
DELTA_REFUSED = re.compile(r"[ ,;{}()\n\t=]")


def processed_name(column: str) -> str:
    """The name a raw column has in processed: Delta's refused characters (space, ``,;{}()=``,
    tab, newline) become ``_`` — a CSV header ``Unit Price`` is the column ``Unit_Price``."""
    return DELTA_REFUSED.sub("_", column)


QUOTED_NAME = re.compile(r"`((?:[^`]|``)*)`")


def processed_type(spark_type: str) -> str:
    """A declared Spark type with the struct field names Delta refuses renamed as
    :func:`processed_name` renames columns (such names can only be written backtick-quoted):
    ``struct<`Zip Code`: string>`` is stored as ``struct<`Zip_Code`: string>``."""

    def renamed(match: re.Match[str]) -> str:
        name = match.group(1).replace("``", "`")
        return "`" + processed_name(name).replace("`", "``") + "`"

    return QUOTED_NAME.sub(renamed, spark_type)


SPARK_TYPES = re.compile(
    r"^(string|boolean|tinyint|smallint|int|integer|bigint|long|float|double|date|timestamp|"
    r"timestamp_ntz|binary|decimal\(\d+,\s*\d+\)|array<.+>|map<.+>|struct<.+>)$"
)


class ProcessedModel(Strict):
    """A processed table built from one raw stream: typed, deduplicated, MERGEd into Delta."""

    source: str = Field(description="<source>.<stream> in raw")
    primary_key: list[str] = Field(min_length=1)
    cursor: str | None = Field(default=None, description="ordering column: latest row wins")
    columns: dict[str, str] = Field(min_length=1, description="column -> Spark SQL type")
    partition_by: list[str] = []
    extra_columns: Literal["keep", "drop", "fail"] = Field(
        default="keep",
        description="raw columns not declared in columns: keep them with their raw type (a new "
        "source column appears in processed), drop them, or fail the run",
    )
    deleted_when: str | None = Field(
        default=None,
        description="SQL condition over a raw record that makes it a deletion of its key: when "
        "a key's latest record is one, the key's row leaves processed. Default: Airbyte's CDC "
        "marker (`_ab_cdc_deleted_at IS NOT NULL`) when the stream has that column; 'false' "
        "keeps such records as rows",
    )
    checks: list[CheckConfig] = []

    @field_validator("columns")
    @classmethod
    def _known_types(cls, columns: dict[str, str]) -> dict[str, str]:
        bad = [f"{c}: {t}" for c, t in columns.items() if not SPARK_TYPES.match(t.strip().lower())]
        if bad:
            raise ValueError(f"unknown Spark SQL type for {', '.join(bad)}")
        refused = [c for c in columns if DELTA_REFUSED.search(c)]
        if refused:
            names = ("column " if len(refused) == 1 else "columns ") + ", ".join(
                repr(c) for c in refused
            )
            raise ValueError(
                f"{names}: Delta refuses spaces and ',;{{}}()=' in column names, so "
                "processed names such a raw column with _ in their place; declare "
                f"{', '.join(processed_name(c) for c in refused)}"
            )
        return columns

    @model_validator(mode="after")
    def _keys_are_columns(self) -> ProcessedModel:
        missing = [
            c
            for c in [
                *self.primary_key,
                *([self.cursor] if self.cursor else []),
                *self.partition_by,
            ]
            if c not in self.columns
        ]
        if missing:
            raise ValueError(f"not declared in columns: {', '.join(missing)}")
        source, _, stream = self.source.partition(".")
        if not source or not stream:  # a stream's own name may hold dots (a sheet "Q1.2026")
            raise ValueError("source must be <source>.<stream>")
        return self


class IncrementalGold(Strict):
    """How a gold model is rebuilt for only the groups its changed inputs touch.

    ``by`` names the gold columns of a group (e.g. ``[purchase_date]``); ``inputs`` gives, per
    processed table the model refers to, the SQL expression(s) over that table's rows that yield
    the group (e.g. ``purchases: CAST(purchased_at AS DATE)``). Contract: every gold row of a
    group is computed only from the rows of each listed input whose expression equals that group
    (other tables are read whole). A change in any table not listed rebuilds the whole model.
    """

    by: list[str] = Field(min_length=1, description="gold columns that identify a group")
    inputs: dict[str, str | list[str]] = Field(
        min_length=1, description="processed table -> expression(s) giving `by` from its rows"
    )

    @model_validator(mode="after")
    def _one_expression_per_column(self) -> IncrementalGold:
        for table, expressions in self.inputs.items():
            count = 1 if isinstance(expressions, str) else len(expressions)
            if count != len(self.by):
                raise ValueError(
                    f"inputs.{table} gives {count} expression(s) for {len(self.by)} `by` column(s)"
                )
        return self

    def expressions(self, table: str) -> list[str]:
        """The expressions of one input, one per `by` column."""
        value = self.inputs[table]
        return [value] if isinstance(value, str) else list(value)


class GoldModel(Strict):
    """A gold table: a SQL file (with {{ ref('table') }}) or a PySpark function."""

    sql: str | None = Field(default=None, description="path of a .sql file, relative to the yaml")
    python: str | None = Field(default=None, description="module.py:function, relative to yaml")
    format: Literal["delta", "parquet"] = "delta"
    mode: Literal["overwrite", "merge", "replace_partitions"] = Field(
        default="overwrite",
        description="delta: overwrite the table, merge rows on keys, or replace only the "
        "partitions the run's output holds (partition_by); parquet: overwrite",
    )
    keys: list[str] = []
    partition_by: list[str] = []
    incremental: IncrementalGold | None = Field(
        default=None,
        description="rebuild only the groups (`by`) that changed rows of `inputs` touch",
    )
    checks: list[CheckConfig] = []

    @model_validator(mode="after")
    def _one_body(self) -> GoldModel:
        if (self.sql is None) == (self.python is None):
            raise ValueError("give exactly one of 'sql' or 'python'")
        if self.mode == "merge" and (self.format != "delta" or not self.keys):
            raise ValueError("mode merge needs format delta and keys: [..]")
        if self.mode == "replace_partitions" and (self.format != "delta" or not self.partition_by):
            raise ValueError("mode replace_partitions needs format delta and partition_by: [..]")
        if self.incremental and self.mode != "overwrite":
            raise ValueError(
                "incremental replaces the changed groups itself: leave mode at overwrite"
            )
        return self


class SparkConfig(Strict):
    """Where and how Spark runs: local (embedded JVM), cluster (spark-submit) or ssh."""

    mode: Literal["local", "cluster", "ssh"] = "local"
    master: str = "local[2]"
    conf: dict[str, str] = {}
    ssh_conn_id: str | None = None
    spark_conn_id: str | None = None
    deploy_mode: Literal["client", "cluster"] = Field(
        default="client",
        description="cluster mode: where the driver runs (a spark_conn_id's deploy-mode wins)",
    )
    remote_python: str = Field(
        default="python3",
        description="ssh mode: the python on the remote host that has raw2gold installed",
    )
    remote_pipeline: str | None = Field(
        default=None,
        description="ssh mode: path of this pipeline.yaml on the remote host (default: same path)",
    )
    server: Literal["per_run", "shared"] = Field(
        default="per_run",
        description="local mode: a Spark Connect server per run (stopped at the run's end), or "
        "one shared by the pipeline's runs on this host (stays up: runs after the first find "
        "its JVM warm)",
    )
    server_hours: float = Field(
        default=24.0,
        gt=0,
        description="shared server: how long runs keep reusing it; the first run after that "
        "starts a new one",
    )


class MaintenanceConfig(Strict):
    """Upkeep of the pipeline's Delta tables (processed, Delta gold): a ``maintain`` task after
    each publish compacts small files (OPTIMIZE) and deletes files no retained version needs
    (VACUUM)."""

    optimize_min_files: int = Field(
        default=32,
        ge=0,
        description="OPTIMIZE a table once this many of its live files are smaller than "
        "small_file_mb and share a partition with another (Delta compacts within each "
        "partition); 0 = never",
    )
    small_file_mb: float = Field(default=32, gt=0)
    vacuum_retain_hours: float | None = Field(
        default=168,
        ge=0,
        description="VACUUM: delete files that no version of the last this many hours needs "
        "(time travel and change feeds reach back this far, no further); null = never",
    )
    vacuum_every_hours: float = Field(
        default=24, ge=0, description="VACUUM a table at most this often (it lists every file)"
    )
    deleted_keys_retain_days: float | None = Field(
        default=None,
        gt=0,
        description="forget a key deleted by a CDC deletion record this many days after the "
        "record was extracted (from _state/deleted/<table>): a record older than the deletion "
        "that arrives later than that brings the key back; null = remember every deleted key",
    )


class NotificationsConfig(Strict):
    """Failure and success notifications; credentials live in Airflow connections."""

    slack_conn_id: str | None = None
    email_conn_id: str | None = None
    email_to: list[str] = []
    webhook_conn_id: str | None = None
    on_success: bool = False
    on_retry: bool = False


class OrchestrationConfig(Strict):
    """Schedule and reliability settings of the generated DAG."""

    schedule: str | None = None
    timezone: str = "UTC"
    start_date: str = "2026-01-01"
    catchup: bool = False
    retries: int = Field(default=2, ge=0, le=20)
    retry_delay_seconds: int = Field(default=30, ge=0)
    max_retry_delay_seconds: int = Field(default=600, ge=0)
    ingest_timeout_minutes: int = Field(default=60, ge=1)
    transform_timeout_minutes: int = Field(default=120, ge=1)
    expected_duration_minutes: float | None = Field(
        default=None,
        gt=0,
        description="notify when a run is still going this long after it was queued "
        "(an Airflow deadline alert); null = off",
    )
    tags: list[str] = []

    @field_validator("schedule")
    @classmethod
    def _known_schedule(cls, schedule: str | None) -> str | None:
        if schedule is None or schedule in ("@once", "@continuous"):
            return schedule
        from croniter import croniter

        hint = (
            "a cron expression of 5 fields (minute hour day month weekday: '0 5 * * *' is 05:00 "
            f"every day) or a preset ({', '.join(AIRFLOW_PRESETS)}, @once, @continuous); "
            "null for manual runs only"
        )
        try:
            fields = croniter(AIRFLOW_PRESETS.get(schedule, schedule)).expanded
        except Exception as exc:  # croniter's errors for a bad expression vary in type
            raise ValueError(f"schedule {schedule!r} is not {hint}") from exc
        if len(fields) > 5:
            raise ValueError(f"schedule {schedule!r} has {len(fields)} fields: give {hint}")
        return schedule

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, timezone: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(timezone)
        except (KeyError, ValueError, OSError) as exc:  # ZoneInfoNotFoundError is a KeyError
            raise ValueError(
                f"unknown time zone {timezone!r}: give an IANA name such as UTC or Europe/Madrid"
            ) from exc
        return timezone

    @field_validator("start_date", mode="before")
    @classmethod
    def _a_date(cls, value: Any) -> Any:
        if isinstance(value, date):  # YAML reads an unquoted 2026-01-01 as a date
            return value.isoformat()
        if isinstance(value, str):
            try:
                datetime.fromisoformat(value)
            except ValueError as exc:
                raise ValueError(
                    f"start_date {value!r} is not a date: give YYYY-MM-DD or an ISO 8601 "
                    "date-time (2026-01-01T05:00)"
                ) from exc
        return value


class PipelineConfig(Strict):
    """A whole pipeline.yaml."""

    name: Name
    description: str = ""
    lake: LakeConfig = LakeConfig()
    spark: SparkConfig = SparkConfig()
    sources: dict[Name, SourceConfig] = Field(min_length=1)
    processed: dict[Name, ProcessedModel] = {}
    gold: dict[Name, GoldModel] = {}
    orchestration: OrchestrationConfig = OrchestrationConfig()
    notifications: NotificationsConfig = NotificationsConfig()
    maintenance: MaintenanceConfig | None = None

    # Set by the loader: the folder the yaml lives in (model paths are relative to it).
    base_dir: Path = Field(default=Path("."), exclude=True)
    path: Path = Field(default=Path("pipeline.yaml"), exclude=True)

    def table_kind(self, name: str) -> Literal["processed", "gold"] | None:
        if name in self.processed:
            return "processed"
        if name in self.gold:
            return "gold"
        return None

    @property
    def dag_id(self) -> str:
        return f"raw2gold_{self.name}"
