"""One SparkSession per stage invocation, configured from the pipeline (Delta, S3A, tuning)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from raw2gold.config.models import PipelineConfig
from raw2gold.errors import Raw2GoldError
from raw2gold.lake.layout import Lake
from raw2gold.transform.connect import REMOTE_ENV
from raw2gold.transform.jars import jar_conf

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

JAVA_FIX = "install OpenJDK 17: apt-get install openjdk-17-jre-headless"

# Good defaults for small data on a few cores; anything in config.spark.conf wins.
LOCAL_TUNING = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "4",
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.adaptive.coalescePartitions.enabled": "true",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "4",
    # A run generates ~200 distinct whole-stage-codegen classes; Spark keeps 100, so a JVM that
    # serves several runs (a shared Spark Connect server) compiled them all again every run.
    "spark.sql.codegen.cache.maxEntries": "2000",
}


def local_driver_memory() -> str:
    """Heap for a local-mode Spark (driver and executor in one JVM): half this machine's memory,
    between 1 GiB and 8 GiB. Spark's own default (1 GiB) runs out of heap on a few million rows.
    It is a maximum, not a reservation; `spark.driver.memory` in config.spark.conf wins."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return "1g"
    return f"{max(1, min(8, total // 2**31))}g"


ALWAYS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}
SECRET_MARKERS = ("secret", "access.key", "session.token", "password")


class SparkSetupError(Raw2GoldError):
    """Spark cannot start here (no Java, bad jar pairing, ...); the message says what to do."""


def java_available() -> bool:
    """Whether a `java` executable is reachable (JAVA_HOME or PATH)."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return True
    return shutil.which("java") is not None


def _ssl_enabled(endpoint: str | None) -> bool:
    return not (endpoint or "").startswith("http://")


def s3a_conf(config: PipelineConfig) -> dict[str, str]:
    """fs.s3a.* settings (with credentials) for an S3 lake; empty for a local lake."""
    if not config.lake.is_s3:
        return {}
    creds = Lake(config.lake).credentials
    assert creds is not None
    conf = {
        "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.path.style.access": str(creds.path_style).lower(),
        "spark.hadoop.fs.s3a.endpoint.region": creds.region,
        "spark.hadoop.fs.s3a.connection.ssl.enabled": str(_ssl_enabled(creds.endpoint)).lower(),
    }
    if creds.endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = creds.endpoint
    if creds.access_key and creds.secret_key:
        if creds.session_token:
            conf["spark.hadoop.fs.s3a.aws.credentials.provider"] = (
                "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider"
            )
            conf["spark.hadoop.fs.s3a.session.token"] = creds.session_token
        else:
            conf["spark.hadoop.fs.s3a.aws.credentials.provider"] = (
                "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
            )
        conf["spark.hadoop.fs.s3a.access.key"] = creds.access_key
        conf["spark.hadoop.fs.s3a.secret.key"] = creds.secret_key
    return conf


def spark_conf(config: PipelineConfig, include_s3_jars: bool | None = None) -> dict[str, str]:
    """Every Spark setting raw2gold applies, in order; the user's spark.conf comes last.

    Contains credentials for S3 lakes: log it only through :func:`redact`.
    """
    s3 = config.lake.is_s3 if include_s3_jars is None else include_s3_jars
    conf: dict[str, str] = {}
    conf.update(jar_conf(s3))
    conf.update(ALWAYS)
    if config.spark.master.startswith("local"):
        conf.update(LOCAL_TUNING)
        conf["spark.driver.memory"] = local_driver_memory()
        # Tables are path-based Delta; keep Spark's unused warehouse out of the working dir.
        conf["spark.sql.warehouse.dir"] = str(Path(tempfile.gettempdir()) / "raw2gold-warehouse")
    conf.update(s3a_conf(config))
    conf.update(config.spark.conf)
    return conf


def redact(conf: dict[str, str]) -> dict[str, str]:
    """The settings with secret values replaced by ***."""
    return {
        k: "***" if any(marker in k.lower() for marker in SECRET_MARKERS) else v
        for k, v in conf.items()
    }


# PySpark logs each query error it raises as an ERROR holding the JVM's stack trace (~70 lines
# of JSON), also the ones raw2gold handles or reports as one line naming the model or table.
QUERY_ERROR_LOGGERS = ("SQLQueryContextLogger", "DataFrameQueryContextLogger")


def quiet_query_error_logs() -> None:
    """Keep PySpark's logs of query errors out of the output: raw2gold reports those errors
    (``--verbose`` or the task log's traceback for the details)."""
    from pyspark.logger import PySparkLogger

    for name in QUERY_ERROR_LOGGERS:
        PySparkLogger.getLogger(name).setLevel(logging.CRITICAL)


def spark_session(
    config: PipelineConfig, app_name: str, include_s3_jars: bool | None = None
) -> SparkSession:
    """Start (or reuse) the SparkSession for a pipeline.

    Under spark-submit (a JVM already exists) the master and jars given to spark-submit win.
    With ``RAW2GOLD_SPARK_REMOTE`` set (``sc://host:port``, the run's Spark Connect server), it
    is a Spark Connect client session on that server instead: no JVM starts here.
    """
    quiet_query_error_logs()
    remote = os.environ.get(REMOTE_ENV)
    if remote:
        from pyspark.sql import SparkSession as Session

        log.info("connecting to the run's Spark Connect server %s", remote.split("/;")[0])
        return Session.builder.remote(remote).appName(app_name).getOrCreate()
    if not java_available() and "PYSPARK_GATEWAY_PORT" not in os.environ:
        raise SparkSetupError(f"Java was not found (JAVA_HOME/PATH): {JAVA_FIX}")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    conf = spark_conf(config, include_s3_jars)
    builder = SparkSession.builder.appName(app_name)
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        builder = builder.master(config.spark.master)
    for key, value in conf.items():
        builder = builder.config(key, value)
    log.info("starting Spark %s with %s", config.spark.master, redact(conf))
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # the JVM did not start: turn the usual cause into one line
        if "JAVA_HOME" in str(exc) or "Java gateway process exited" in str(exc):
            raise SparkSetupError(f"Spark could not start Java ({exc}): {JAVA_FIX}") from exc
        raise
    try:
        spark.sparkContext.setLogLevel("WARN")
    except Exception:  # Spark Connect has no SparkContext
        log.debug("could not set the log level")
    return spark
