"""The lake's layout, in one place, for a local folder and S3 alike.

```
raw/<source>/<stream>/ingest_date=YYYY-MM-DD/run_id=<id>/part-*.parquet
raw/<source>/_runs/<run_id>.json          run manifest, written last: readers see only these
processed/<table>/                        Delta
gold/<table>/                             Delta, or Parquet: version=<run_id>/ + _current.json
quarantine/<table>/                       Delta: rejected rows with the reason
_state/sources/<source>.json              connector state of the last committed run
_state/runs/<run_id>/                     run bookkeeping (stage summaries)
_state/checks/processed/<table>.json      check results of a processed table's newest version
_state/deleted/<table>/                   Delta: keys deleted by CDC records, with their cursor
_state/leases/<kind>/<table>.json         the run writing that Delta table (lake/lease.py)
_staging/<run_id>/gold/<table>/           gold built and checked, not yet published
_staging/<run_id>/builds/<table>.json      how it was built (full | incremental | unchanged)
_staging/<run_id>/affected/<table>/       the groups an incremental build recomputed
```
See docs/lake-layout.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

if TYPE_CHECKING:
    import pyarrow as pa

from raw2gold.config.loader import resolve_env
from raw2gold.config.models import RUNS_FOLDER, LakeConfig

log = logging.getLogger(__name__)

RUN_ID_PATTERN = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")


def make_run_id(orchestrator_run_id: str | None = None, when: datetime | None = None) -> str:
    """A path-safe run id, stable for a given orchestrator run id (so re-runs are idempotent).

    Airflow run ids contain ':' and '+', which Hadoop paths reject, so they are not used as is.
    """
    when = (when or datetime.now(UTC)).astimezone(UTC)
    seed = orchestrator_run_id or uuid.uuid4().hex
    digest = hashlib.sha256(seed.encode()).hexdigest()[:8]
    return f"{when:%Y%m%dT%H%M%S}Z-{digest}"


@dataclass(frozen=True)
class S3Credentials:
    """Resolved S3 access settings (never logged)."""

    endpoint: str | None
    region: str
    path_style: bool
    access_key: str | None
    secret_key: str | None
    session_token: str | None

    def __repr__(self) -> str:
        return f"S3Credentials(endpoint={self.endpoint!r}, region={self.region!r}, keys=***)"

    @property
    def endpoint_url(self) -> str | None:
        """The endpoint with its scheme (https when it names none); None: AWS's own."""
        if self.endpoint and "://" not in self.endpoint:
            return f"https://{self.endpoint}"
        return self.endpoint


def s3_credentials(config: LakeConfig) -> S3Credentials:
    """Resolve ${ENV} references (and an Airflow connection, when configured) for the lake."""
    s3 = config.s3
    access_key = resolve_env(s3.access_key) if s3.access_key else None
    secret_key = resolve_env(s3.secret_key) if s3.secret_key else None
    token = resolve_env(s3.session_token) if s3.session_token else None
    endpoint = s3.endpoint
    if s3.conn_id and not access_key:
        from raw2gold.lake.connections import aws_connection_credentials

        access_key, secret_key, token, endpoint = aws_connection_credentials(s3.conn_id, endpoint)
    return S3Credentials(endpoint, s3.region, s3.path_style, access_key, secret_key, token)


# Stores that answer conditional writes with 501 Not Implemented, warned about once a process.
_UNCONDITIONAL_WARNED: list[bool] = []


class ConcurrentWriteError(RuntimeError):
    """Another writer replaced a lake file between this writer's read and its write."""


class Lake:
    """Paths and small-file I/O over the lake, local or on S3."""

    def __init__(self, config: LakeConfig):
        self.config = config
        uri = config.uri
        if config.is_s3:
            parsed = urlparse(uri)
            self.scheme = "s3"
            self.root = f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
            self.credentials: S3Credentials | None = s3_credentials(config)
        else:
            self.scheme = "file"
            self.root = uri.removeprefix("file://").rstrip("/") or "/"
            self.credentials = None
        self._fs: pafs.FileSystem | None = None

    # ---- file system -------------------------------------------------------------------------
    @property
    def fs(self) -> pafs.FileSystem:
        """A pyarrow file system rooted nowhere: paths are ``self.path(...)``."""
        if self._fs is None:
            if self.credentials is None:
                self._fs = pafs.LocalFileSystem()
            else:
                c = self.credentials
                scheme, _, endpoint = (c.endpoint_url or "https://").partition("://")
                self._fs = pafs.S3FileSystem(
                    access_key=c.access_key,
                    secret_key=c.secret_key,
                    session_token=c.session_token,
                    region=c.region,
                    endpoint_override=endpoint or None,
                    scheme=scheme,
                    force_virtual_addressing=not c.path_style,
                    allow_bucket_creation=False,
                )
        return self._fs

    def path(self, *parts: str) -> str:
        """A path inside the lake, for ``self.fs`` (no scheme)."""
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def uri(self, *parts: str) -> str:
        """A full URI (s3://... or a local absolute path) for humans, DuckDB and delta-rs."""
        path = self.path(*parts)
        return f"s3://{path}" if self.scheme == "s3" else path

    def spark_uri(self, *parts: str) -> str:
        """The URI Spark reads and writes: s3a://... or file:/abs/path."""
        path = self.path(*parts)
        return f"s3a://{path}" if self.scheme == "s3" else f"file:{path}"

    # ---- layout ------------------------------------------------------------------------------
    @staticmethod
    def raw_run_dir(source: str, stream: str, ingest_date: str, run_id: str) -> str:
        return f"raw/{source}/{stream}/ingest_date={ingest_date}/run_id={run_id}"

    @staticmethod
    def raw_manifest(source: str, run_id: str) -> str:
        return f"raw/{source}/{RUNS_FOLDER}/{run_id}.json"

    @staticmethod
    def processed_table(table: str) -> str:
        return f"processed/{table}"

    @staticmethod
    def gold_table(table: str) -> str:
        return f"gold/{table}"

    @staticmethod
    def quarantine_table(table: str) -> str:
        return f"quarantine/{table}"

    @staticmethod
    def deleted_keys(table: str) -> str:
        """Delta: the keys deletion records removed from a processed table, with their cursor."""
        return f"_state/deleted/{table}"

    @staticmethod
    def source_state_file(source: str) -> str:
        return f"_state/sources/{source}.json"

    @staticmethod
    def run_record(run_id: str, name: str) -> str:
        return f"_state/runs/{run_id}/{name}.json"

    @staticmethod
    def checked_version(table: str) -> str:
        """The newest check results of a processed table, with the Delta version they checked."""
        return f"_state/checks/processed/{table}.json"

    @staticmethod
    def staging_run(run_id: str) -> str:
        """Everything a run staged (its gold, build records and affected groups)."""
        return f"_staging/{run_id}"

    def staged_runs(self) -> list[str]:
        """The runs that have a staging folder."""
        return sorted(self.folders("_staging"))

    @staticmethod
    def staging_gold(run_id: str, table: str) -> str:
        return f"{Lake.staging_run(run_id)}/gold/{table}"

    @staticmethod
    def staging_build(run_id: str, table: str) -> str:
        """What the gold stage decided for a table (full, incremental or unchanged build)."""
        return f"{Lake.staging_run(run_id)}/builds/{table}.json"

    @staticmethod
    def staging_affected(run_id: str, table: str) -> str:
        """The groups an incremental gold build recomputed (Parquet, one column per `by`)."""
        return f"{Lake.staging_run(run_id)}/affected/{table}"

    # ---- small files -------------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        info = self.fs.get_file_info(self.path(*parts))
        return bool(info.type != pafs.FileType.NotFound)

    def write_json(self, relative: str, payload: Any) -> None:
        """Write JSON so that readers see the old file or the whole new one, never a part.

        Local: write a temporary file and rename it. S3: one PUT is atomic.
        """
        data = json.dumps(payload, indent=2, sort_keys=True, default=str).encode()
        target = self.path(relative)
        if self.scheme == "s3":
            with self.fs.open_output_stream(target) as out:
                out.write(data)
            return
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        temporary = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open_output_stream(temporary) as out:
            out.write(data)
        self.fs.move(temporary, target)

    def swap_json(self, relative: str, replace: Callable[[Any | None], Any]) -> Any:
        """Replace a JSON file with ``replace(what it holds)`` (None when absent), unless another
        writer replaced it in between; what was written. ``replace`` may raise to write nothing.

        The read and the write are one compare-and-swap: local lakes hold an exclusive lock on
        ``<file>.lock`` beside it (a second writer waits, then reads the new file); S3 writes
        with ``If-Match`` on the ETag it read (``If-None-Match: *`` for a new file), and a file
        replaced meanwhile raises :class:`ConcurrentWriteError`.
        """
        if self.scheme == "s3":
            return self._swap_s3_json(relative, replace)
        target = self.path(relative)
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with open(f"{target}.lock", "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                payload = replace(self.read_record(relative))
                self.write_json(relative, payload)
                return payload
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _swap_s3_json(self, relative: str, replace: Callable[[Any | None], Any]) -> Any:
        from botocore.exceptions import ClientError

        client = self.s3_client()
        bucket, _, key = self.path(relative).partition("/")
        try:
            found = client.get_object(Bucket=bucket, Key=key)
            current, condition = json.loads(found["Body"].read()), {"IfMatch": found["ETag"]}
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                raise
            current, condition = None, {"IfNoneMatch": "*"}
        payload = replace(current)
        data = json.dumps(payload, indent=2, sort_keys=True, default=str).encode()
        try:
            client.put_object(Bucket=bucket, Key=key, Body=data, **condition)
        except ClientError as exc:
            # 412: replaced (or created) since it was read; 409: a conditional write at once
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (409, 412):
                raise ConcurrentWriteError(self.uri(relative)) from exc
            if status != 501:
                raise
            # a store without conditional writes: the write as before them, said once
            if not _UNCONDITIONAL_WARNED:
                _UNCONDITIONAL_WARNED.append(True)
                log.warning(
                    "the S3 store at %s does not support conditional writes (If-Match): %s is "
                    "replaced without compare-and-swap, so two runs publishing it at the same "
                    "instant are not told apart",
                    (self.credentials and self.credentials.endpoint_url) or "AWS S3",
                    self.uri(relative),
                )
            client.put_object(Bucket=bucket, Key=key, Body=data)
        return payload

    def s3_client(self) -> Any:
        """A boto3 S3 client with the lake's endpoint, region, addressing and credentials."""
        import boto3
        from botocore.config import Config

        c = self.credentials
        assert c is not None, "not an S3 lake"
        return boto3.client(
            "s3",
            endpoint_url=c.endpoint_url,
            region_name=c.region,
            aws_access_key_id=c.access_key,
            aws_secret_access_key=c.secret_key,
            aws_session_token=c.session_token,
            config=Config(s3={"addressing_style": "path" if c.path_style else "virtual"}),
        )

    def read_json(self, relative: str) -> Any:
        with self.fs.open_input_stream(self.path(relative)) as stream:
            return json.loads(stream.read())

    def read_record(self, relative: str) -> dict[str, Any] | None:
        """A JSON object file, or None when it does not exist."""
        if not self.exists(relative):
            return None
        record: dict[str, Any] = self.read_json(relative)
        return record

    def list_files(self, relative: str, suffix: str = "") -> list[str]:
        """Lake-relative paths of the files below a folder (none when it does not exist)."""
        selector = pafs.FileSelector(self.path(relative), recursive=True, allow_not_found=True)
        prefix = self.root + "/"
        return sorted(
            info.path.removeprefix(prefix)
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and info.path.endswith(suffix)
        )

    def folders(self, relative: str) -> list[str]:
        """Names of the folders directly below a folder (none when it does not exist)."""
        selector = pafs.FileSelector(self.path(relative), allow_not_found=True)
        return [
            info.base_name
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.Directory
        ]

    def delete_dir(self, relative: str) -> None:
        """Delete a folder and what it holds, if it exists; another writer deleting some of it
        at the same time (a publish pruning old versions) is no error."""
        path = self.path(relative)
        for attempt in range(20):
            if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
                return
            try:
                self.fs.delete_dir(path)
                return
            except FileNotFoundError:  # a file it listed was gone when it got there
                time.sleep(0.02 * (attempt + 1))
        if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
            self.fs.delete_dir(path)

    def replace_parquet(self, relative: str, table: pa.Table) -> None:
        """Replace a folder with one Parquet file of `table`, written from this process."""
        import pyarrow.parquet as pq

        self.delete_dir(relative)
        self.fs.create_dir(self.path(relative), recursive=True)
        pq.write_table(table, self.path(f"{relative}/part-00000.parquet"), filesystem=self.fs)

    def delete_file(self, relative: str) -> None:
        """Delete one file if it exists."""
        path = self.path(relative)
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            self.fs.delete_file(path)

    # ---- runs ---------------------------------------------------------------------------------
    def committed_raw_runs(self, source: str) -> list[dict[str, Any]]:
        """Manifests of the source's committed runs, oldest first."""
        manifests = [
            self.read_json(p) for p in self.list_files(f"raw/{source}/{RUNS_FOLDER}", ".json")
        ]
        return sorted(manifests, key=lambda m: (m.get("finished_at", ""), m["run_id"]))

    def source_state(self, source: str) -> Any:
        """Connector state of the newest committed run (the manifest is the source of truth)."""
        runs = self.committed_raw_runs(source)
        for manifest in reversed(runs):
            if manifest.get("state") is not None:
                return manifest["state"]
        return None

    def source_state_messages(self, source: str) -> list[dict[str, Any]] | None:
        """Airbyte STATE messages of the newest committed run that has state (for ``--state``).

        Embedded-connector manifests keep ``state`` as the list of the last STATE message per
        stream (or one GLOBAL message), which is what a connector's ``--state`` file takes.
        """
        for manifest in reversed(self.committed_raw_runs(source)):
            state = manifest.get("state")
            if isinstance(state, list):
                return state
            if isinstance(state, dict):  # a single (legacy or global) state object
                return [state]
        return None


def lake_for(config: LakeConfig) -> Lake:
    """The lake of a pipeline config."""
    return Lake(config)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
