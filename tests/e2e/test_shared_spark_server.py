"""`spark.server: shared` through Airflow: two `raw2gold run`s of the shop example, one server.

Real components as in test_shop_pipeline.py (source-faker, source-file, Spark with Delta, Airflow's
`dags test`). The second run's Spark tasks run on the server the first run started, which
stays up after each run; gold equals the independent DuckDB computation. The test stops the
server through `raw2gold spark-server stop` and, whatever happened, by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.reference import assert_shop_gold_matches_reference

RAW2GOLD = [sys.executable, "-m", "raw2gold.cli"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def shared_shop(tmp_path: Path, shop_pipeline: Path) -> Iterator[Path]:
    """The shop example in a temporary folder with ``spark.server: shared``."""
    folder = tmp_path / "shop"
    shutil.copytree(shop_pipeline.parent, folder, ignore=shutil.ignore_patterns("lake"))
    config = yaml.safe_load((folder / "pipeline.yaml").read_text())
    config["spark"]["server"] = "shared"
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        yield folder / "pipeline.yaml"
    finally:
        for record in (folder / "lake" / "_state" / "spark_server").glob("*.json"):
            pid = json.loads(record.read_text())["pid"]
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)


def test_runs_share_one_spark_connect_server(shared_shop: Path, tmp_path: Path) -> None:
    env = {**os.environ, "RAW2GOLD_HOME": str(tmp_path / ".raw2gold")}

    def raw2gold(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*RAW2GOLD, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200
        )

    for _ in range(2):
        result = raw2gold("run", str(shared_shop))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "✔ spark.stop success" in result.stdout

    lake = shared_shop.parent / "lake"
    runs = [json.loads(p.read_text()) for p in lake.glob("_state/runs/*/spark_server.json")]
    assert len(runs) == 2 and all(r["shared"] and r["stopped_at"] for r in runs)
    assert len({r["pid"] for r in runs}) == 1  # the second run used the first run's server
    pid = runs[0]["pid"]
    assert _alive(pid)  # and it is still up for the next run
    logs = "".join(p.read_text() for p in (tmp_path / ".raw2gold" / "logs").glob("shop-*.log"))
    assert logs.count("reusing the shared Spark Connect server") == 1
    assert "starting Spark local" not in logs  # no task started a JVM of its own

    assert_shop_gold_matches_reference(lake)

    status = raw2gold("spark-server", "status", "-p", str(shared_shop))
    assert status.returncode == 0 and f"pid {pid}" in status.stdout, status.stdout
    assert raw2gold("spark-server", "stop", "-p", str(shared_shop)).returncode == 0
    assert not _alive(pid)
