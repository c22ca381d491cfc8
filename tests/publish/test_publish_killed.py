"""A publish killed mid-write leaves gold exactly as it was; publishing the run again completes it.

The publish stage runs as its own process (`python -m raw2gold.transform.job`, the local runner's
command) and is SIGKILLed, with its Spark JVM, as soon as its first gold file exists: the way an
OOM killer, a lost node or a `kill -9` stops a job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from raw2gold.config.loader import load_pipeline
from raw2gold.lake.layout import Lake
from raw2gold.publish.publisher import gold_arrow_table, publish_history
from raw2gold.transform.job import STAGES, run_stage
from tests.publish.digest import tree_digest
from tests.transform.rawdata import categories, shop_records, write_raw_run
from tests.transform.reference import assert_gold_matches_reference

T1 = datetime(2026, 3, 1, 6, tzinfo=UTC)
T2 = datetime(2026, 3, 2, 6, tzinfo=UTC)


def _files(root: Path) -> set[str]:
    found = set()
    for folder, _, names in os.walk(root):
        found.update(os.path.join(folder, name) for name in names)
    return found


def _gold_contents(config: Any) -> dict[str, list[str]]:
    return {t: sorted(map(repr, gold_arrow_table(config, t).to_pylist())) for t in config.gold}


def _scratch_in(folder: Path) -> dict[str, str]:
    """The job's environment with its JVM's scratch space in ``folder``: a SIGKILLed JVM
    cannot delete its block manager and temporary folders, so they go with the test's
    tmp_path instead of piling up in /tmp."""
    folder.mkdir()
    java_options = f"{os.environ.get('JDK_JAVA_OPTIONS', '')} -Djava.io.tmpdir={folder}"
    return {**os.environ, "SPARK_LOCAL_DIRS": str(folder), "JDK_JAVA_OPTIONS": java_options}


def test_publish_killed_mid_write_leaves_gold_unchanged_and_a_rerun_completes(
    tmp_path: Path, spark: Any, shop_pipeline: Path
) -> None:
    lake_dir = tmp_path / "lake"
    config = load_pipeline(shop_pipeline, str(lake_dir))
    lake = Lake(config.lake)
    write_raw_run(lake, "faker", "r1-faker", shop_records(), T1)
    write_raw_run(lake, "catalog_csv", "r1-csv", {"make_categories": categories()}, T1)
    for stage in STAGES:
        run_stage(config, stage, "run1", spark=spark)
    # Run 2 changes every faker stream, so every gold table gets new content to publish.
    write_raw_run(lake, "faker", "r2-faker", shop_records(seed=99, purchases=150), T2)
    run_stage(config, "transform", "run2", spark=spark)
    run_stage(config, "check", "run2", spark=spark)

    gold = lake_dir / "gold"
    before = tree_digest(gold)
    contents = _gold_contents(config)
    history_before = {t: publish_history(config, t) for t in config.gold}
    log = tmp_path / "publish.log"
    with log.open("w") as out:
        job = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "raw2gold.transform.job",
                "--pipeline",
                str(shop_pipeline),
                "--lake",
                str(lake_dir),
                "--stage",
                "publish",
                "--run-id",
                "run2",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=_scratch_in(tmp_path / "jvm-scratch"),
        )
        known = _files(gold)
        deadline = time.monotonic() + 300
        first_new: set[str] = set()
        while job.poll() is None and time.monotonic() < deadline:
            first_new = _files(gold) - known
            if first_new:
                os.killpg(job.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL, (
        f"publish ended ({job.returncode}) before it wrote a gold file:\n{log.read_text()[-2000:]}"
    )
    assert first_new, "the kill came before any gold file was written"
    # The whole process group (the job and its Spark JVM) is gone: nothing writes any more.
    gone_by = time.monotonic() + 60
    while subprocess.run(["pgrep", "-g", str(job.pid)], capture_output=True).returncode == 0:
        assert time.monotonic() < gone_by, "the killed job's JVM is still running"
        time.sleep(0.2)

    after = tree_digest(gold)
    # Every file of the published tables is byte-for-byte as it was; what the killed job left
    # (uncommitted Delta files, a half-written Parquet version) is invisible to readers.
    assert {path: after.get(path) for path in before} == before
    leftovers = set(after) - set(before)
    assert not [p for p in leftovers if "/_delta_log/" in p or p.endswith("_current.json")]
    assert _gold_contents(config) == contents
    assert {t: publish_history(config, t) for t in config.gold} == history_before

    results = run_stage(config, "publish", "run2", spark=spark)["gold"]
    assert {r["action"] for r in results.values()} == {"published"}
    assert_gold_matches_reference(config)
    for table, model in config.gold.items():
        if model.format == "delta":
            # Delta's own history (Spark), not raw2gold's log reader
            uri = lake.spark_uri(f"gold/{table}")
            commits = spark.sql(f"DESCRIBE HISTORY delta.`{uri}`").orderBy(
                "version", ascending=False
            )
            runs = [json.loads(c["userMetadata"])["raw2gold_run_id"] for c in commits.take(2)]
            assert runs == ["run2", "run1"]
        else:
            assert publish_history(config, table)[0]["run_id"] == "run2"
