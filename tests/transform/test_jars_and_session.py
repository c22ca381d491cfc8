"""Pinned artifacts, their pairing with pyspark, and the Spark settings (no JVM needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from raw2gold.config.models import PipelineConfig
from raw2gold.transform import jars
from raw2gold.transform.session import SparkSetupError, redact, spark_conf, spark_session


def _config(uri: str, **lake: Any) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "t",
            "lake": {"uri": uri, **lake},
            "spark": {"conf": {"spark.sql.shuffle.partitions": "8"}},
            "sources": {"s": {"airbyte": {"connection_id": "c"}, "streams": [{"name": "x"}]}},
        }
    )


def test_installed_versions_pair_with_the_pinned_artifacts() -> None:
    assert jars.check_pairing() == []


def test_pairing_mismatches_are_named(tmp_path: Path) -> None:
    (tmp_path / "hadoop-client-api-3.4.1.jar").touch()
    problems = jars.check_pairing("4.1.1", tmp_path, "4.4.1")
    assert len(problems) == 3
    assert "pyspark 4.1.1" in problems[0]
    assert "Hadoop 3.4.1" in problems[1] and "hadoop-aws:3.4.1" in problems[2 - 1]
    assert "delta-spark==4.4.0" in problems[2]


def test_ivy_settings_use_maven_central_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAW2GOLD_IVY_DIR", str(tmp_path / "ivy"))
    conf = jars.jar_conf(s3=False)
    assert conf["spark.jars.packages"] == jars.DELTA_SPARK
    assert conf["spark.jars.ivy"] == str(tmp_path / "ivy")
    text = Path(conf["spark.jars.ivySettings"]).read_text()
    assert "repo1.maven.org" in text and "spark-packages" not in text.replace("spark-packages)", "")
    assert jars.jar_conf(s3=True)["spark.jars.packages"].endswith(jars.HADOOP_AWS)


def test_local_conf_has_delta_tuning_and_user_conf_last() -> None:
    conf = spark_conf(_config("/tmp/lake"))
    assert conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert conf["spark.sql.shuffle.partitions"] == "8"
    assert "hadoop-aws" not in conf["spark.jars.packages"]
    assert not any(k.startswith("spark.hadoop.fs.s3a") for k in conf)
    # Local mode gets a heap sized for the machine (Spark's 1 GiB default runs out on 5M rows).
    heap = int(conf["spark.driver.memory"].removesuffix("g"))
    assert 1 <= heap <= 8


def test_s3_conf_sets_s3a_and_never_shows_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("K_SECRET", "sekrit-value")
    config = _config(
        "s3://bucket/lake",
        s3={
            "endpoint": "http://127.0.0.1:8333",
            "path_style": True,
            "access_key": "${K_ID}",
            "secret_key": "${K_SECRET}",
        },
    )
    conf = spark_conf(config)
    assert conf["spark.jars.packages"].endswith(jars.HADOOP_AWS)
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:8333"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.aws.credentials.provider"].endswith(
        "SimpleAWSCredentialsProvider"
    )
    assert conf["spark.hadoop.fs.s3a.secret.key"] == "sekrit-value"
    shown = str(redact(conf))
    assert "sekrit-value" not in shown and "AKIDEXAMPLE" not in shown


def test_missing_java_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("raw2gold.transform.session.java_available", lambda: False)
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    with pytest.raises(SparkSetupError, match="apt-get install openjdk-17-jre-headless"):
        spark_session(_config("/tmp/lake"), "x")


def test_the_test_session_loaded_the_pinned_delta_jar(spark: Any) -> None:
    loaded = spark.sparkContext._jsc.sc().listJars().toString()
    assert "io.delta_delta-spark_4.2_2.13-4.4.0.jar" in loaded
    assert "hadoop-aws" not in loaded


def test_generated_code_of_a_run_stays_compiled(spark: Any) -> None:
    """More generated classes than Spark's default codegen cache (100) holds (each query here
    compiles two): the first query's are still cached when it comes again, as a shared
    server's next run finds its queries (with the default, this test compiles two again)."""
    compiled = spark._jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME()

    def shape(i: int) -> None:
        spark.range(3).selectExpr(f"id * {i + 7} + {i} AS v{i}").collect()

    for i in range(60):
        shape(i)
    before = compiled.getCount()
    shape(0)
    assert compiled.getCount() == before
