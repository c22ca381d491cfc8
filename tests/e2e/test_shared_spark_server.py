"""`spark.server: shared` through Airflow: two `raw2gold run`s of the shop example, one server.

Real components as in test_shop_pipeline.py (source-faker, source-file, Spark with Delta, Airflow's
`dags test`). The second run's Spark tasks run on the server the first run started, which
stays up after each run; that run is `raw2gold run --full-refresh` (connectors read from
scratch, processed tables rebuilt by overwrite); gold equals the independent DuckDB
computation. Both runs also maintain the Delta tables (OPTIMIZE, VACUUM) in a `maintain` task
on that server. The test stops the server through `raw2gold spark-server stop`; the fixture
kills it by PID if it is still up.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.e2e.reference import (
    RAW2GOLD,
    assert_faker_rebuilt_from_scratch,
    assert_shop_gold_matches_reference,
)
from tests.fixtures.paths import edit_pipeline
from tests.fixtures.spark import process_alive


def test_runs_share_one_spark_connect_server(shared_server_shop: Path, tmp_path: Path) -> None:
    env = {**os.environ, "RAW2GOLD_HOME": str(tmp_path / ".raw2gold")}

    def raw2gold(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*RAW2GOLD, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200
        )

    # with table maintenance: a `maintain` task after publish, on the same server
    edit_pipeline(
        shared_server_shop,
        lambda c: c.update(maintenance={"optimize_min_files": 2, "vacuum_every_hours": 0}),
    )
    lake = shared_server_shop.parent / "lake"
    for flags in ([], ["--full-refresh"]):  # the second rebuilds everything, on the same server
        result = raw2gold("run", str(shared_server_shop), *flags)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "✔ spark.stop success" in result.stdout
        assert "✔ maintain success" in result.stdout
    assert_faker_rebuilt_from_scratch(lake)

    runs = [json.loads(p.read_text()) for p in lake.glob("_state/runs/*/spark_server.json")]
    assert len(runs) == 2 and all(r["shared"] and r["stopped_at"] for r in runs)
    assert len({r["pid"] for r in runs}) == 1  # the second run used the first run's server
    pid = runs[0]["pid"]
    assert process_alive(pid)  # and it is still up for the next run
    logs = "".join(p.read_text() for p in (tmp_path / ".raw2gold" / "logs").glob("shop-*.log"))
    assert logs.count("reusing the shared Spark Connect server") == 1
    assert "starting Spark local" not in logs  # no task started a JVM of its own

    assert_shop_gold_matches_reference(lake)
    maintained = [json.loads(p.read_text()) for p in lake.glob("_state/runs/*/maintain.json")]
    assert len(maintained) == 2 and all(m["status"] == "succeeded" for m in maintained)
    assert set(maintained[0]["maintained"]) == {
        *(f"processed.{t}" for t in ("users", "products", "purchases", "make_categories")),
        "gold.daily_category_revenue",
        "gold.top_products",
    }
    assert all(r["vacuumed"] for m in maintained for r in m["maintained"].values())

    status = raw2gold("spark-server", "status", "-p", str(shared_server_shop))
    assert status.returncode == 0 and f"pid {pid}" in status.stdout, status.stdout
    assert raw2gold("spark-server", "stop", "-p", str(shared_server_shop)).returncode == 0
    assert not process_alive(pid)
