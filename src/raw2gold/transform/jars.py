"""Pinned Maven artifacts for Spark (Delta, hadoop-aws), their Ivy cache, and a pairing check.

``python -m raw2gold.transform.jars [--s3]`` resolves the artifacts once (so later runs work from
the cache) by starting a session and writing and reading a tiny Delta table.

hadoop-aws pulls the 686 MB AWS SDK bundle, so it is only put on the classpath when the lake is
on S3; local lakes load Delta alone.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import sys
import tempfile
from pathlib import Path

from raw2gold.cache import cache_dir

DELTA_SPARK = "io.delta:delta-spark_4.2_2.13:4.4.0"
HADOOP_AWS = "org.apache.hadoop:hadoop-aws:3.5.0"

# Transitive dependencies that pyspark already ships in a newer version: keep them off the
# classpath so only one copy of each class exists (Delta pulls Hadoop 3.4.2, Parquet 1.16, ...).
EXCLUDES = (
    "org.apache.hadoop:hadoop-client-api",
    "org.apache.hadoop:hadoop-client-runtime",
    "org.apache.parquet:parquet-hadoop",
    "com.fasterxml.jackson.core:jackson-databind",
    "com.fasterxml.jackson.core:jackson-core",
    "com.fasterxml.jackson.core:jackson-annotations",
    "org.slf4j:slf4j-api",
    "org.apache.logging.log4j:log4j-api",
    "org.apache.logging.log4j:log4j-core",
    "org.apache.logging.log4j:log4j-slf4j2-impl",
)

MAVEN_CENTRAL = "https://repo1.maven.org/maven2/"

IVY_SETTINGS = """<ivysettings>
  <!-- Written by raw2gold: Maven Central only (Spark's default list adds spark-packages). -->
  <settings defaultResolver="raw2gold"/>
  <resolvers>
    <chain name="raw2gold" returnFirst="true">
      <ibiblio name="local-m2" m2compatible="true" root="file://{m2}"/>
      <ibiblio name="central" m2compatible="true" root="{central}"/>
    </chain>
  </resolvers>
</ivysettings>
"""


def ivy_dir() -> Path:
    """The Ivy home (cache + retrieved jars): $RAW2GOLD_IVY_DIR or <raw2gold cache>/ivy."""
    value = os.environ.get("RAW2GOLD_IVY_DIR")
    return Path(value).expanduser() if value else cache_dir() / "ivy"


def ivy_settings_file(ivy: Path | None = None) -> Path:
    """Write (when changed) and return the ivysettings.xml that resolves from Maven Central."""
    ivy = ivy or ivy_dir()
    ivy.mkdir(parents=True, exist_ok=True)
    central = os.environ.get("RAW2GOLD_MAVEN_REPO", MAVEN_CENTRAL)
    m2 = Path.home() / ".m2" / "repository"
    text = IVY_SETTINGS.format(m2=m2, central=central)
    path = ivy / "raw2gold-ivysettings.xml"
    if not path.is_file() or path.read_text() != text:
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        temporary.write_text(text)
        temporary.replace(path)
    return path


def packages(s3: bool) -> list[str]:
    """Maven coordinates to put on the classpath."""
    return [DELTA_SPARK, HADOOP_AWS] if s3 else [DELTA_SPARK]


def jar_conf(s3: bool) -> dict[str, str]:
    """Spark settings that resolve the pinned artifacts through the raw2gold Ivy cache."""
    ivy = ivy_dir()
    return {
        "spark.jars.packages": ",".join(packages(s3)),
        "spark.jars.ivy": str(ivy),
        "spark.jars.ivySettings": str(ivy_settings_file(ivy)),
        "spark.jars.excludes": ",".join(EXCLUDES),
    }


def _version(coordinate: str) -> str:
    return coordinate.rsplit(":", 1)[1]


def pyspark_jars_dir() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "jars"


def check_pairing(
    pyspark_version: str | None = None,
    jars_dir: Path | None = None,
    delta_pip_version: str | None = None,
) -> list[str]:
    """Problems with the pinned pairing (empty when pyspark, Hadoop and Delta fit together)."""
    problems: list[str] = []
    if pyspark_version is None:
        pyspark_version = importlib.metadata.version("pyspark")
    match = re.search(r"delta-spark_(\d+\.\d+)_", DELTA_SPARK)
    spark_suffix = match.group(1) if match else "?"
    if ".".join(pyspark_version.split(".")[:2]) != spark_suffix:
        problems.append(
            f"pyspark {pyspark_version} does not match {DELTA_SPARK} (built for Spark "
            f"{spark_suffix}): install pyspark=={spark_suffix}.*"
        )
    jars_dir = jars_dir or pyspark_jars_dir()
    hadoop = sorted(jars_dir.glob("hadoop-client-api-*.jar"))
    if not hadoop:
        problems.append(f"no hadoop-client-api-*.jar in {jars_dir}: is this a full pyspark?")
    else:
        found = hadoop[0].name.removeprefix("hadoop-client-api-").removesuffix(".jar")
        if found != _version(HADOOP_AWS):
            problems.append(
                f"pyspark ships Hadoop {found} but {HADOOP_AWS} is pinned: hadoop-aws must be "
                f"org.apache.hadoop:hadoop-aws:{found}"
            )
    if delta_pip_version is None:
        try:
            delta_pip_version = importlib.metadata.version("delta-spark")
        except importlib.metadata.PackageNotFoundError:
            delta_pip_version = "(not installed)"
    if delta_pip_version != _version(DELTA_SPARK):
        problems.append(
            f"delta-spark Python package {delta_pip_version} differs from the Maven artifact "
            f"{DELTA_SPARK}: install delta-spark=={_version(DELTA_SPARK)}"
        )
    return problems


def resolved_jar(coordinate: str, ivy: Path | None = None) -> Path | None:
    """The jar Ivy retrieved for a coordinate, if it is in the cache."""
    group, artifact, version = coordinate.split(":")
    path = (ivy or ivy_dir()) / "jars" / f"{group}_{artifact}-{version}.jar"
    return path if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    """Resolve and cache the artifacts by starting one session and using Delta once."""
    parser = argparse.ArgumentParser(prog="python -m raw2gold.transform.jars")
    parser.add_argument("--s3", action="store_true", help="also resolve hadoop-aws (+ AWS SDK)")
    args = parser.parse_args(argv)
    problems = check_pairing()
    if problems:
        for problem in problems:
            print(f"raw2gold: {problem}", file=sys.stderr)
        return 1

    from raw2gold.config.models import LakeConfig, PipelineConfig, SourceConfig, StreamConfig
    from raw2gold.transform.session import spark_session

    with tempfile.TemporaryDirectory(prefix="raw2gold-jars-") as tmp:
        lake_uri = "s3://raw2gold-resolve/lake" if args.s3 else tmp
        config = PipelineConfig(
            name="resolve",
            lake=LakeConfig(uri=lake_uri),
            sources={
                "none": SourceConfig(
                    airbyte={"connection_id": "none"},  # type: ignore[arg-type]
                    streams=[StreamConfig(name="none")],
                )
            },
        )
        spark = spark_session(config, "raw2gold-resolve-jars", include_s3_jars=args.s3)
        try:
            path = f"file:{tmp}/delta_probe"
            spark.range(3).write.format("delta").mode("overwrite").save(path)
            rows = spark.read.format("delta").load(path).count()
        finally:
            spark.stop()
    if rows != 3:
        print("raw2gold: Delta probe read back a wrong row count", file=sys.stderr)
        return 1
    for coordinate in packages(args.s3):
        jar = resolved_jar(coordinate)
        print(f"{coordinate} {jar if jar else '(resolved; jar name differs)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
