"""The shop example under a real Airflow: `raw2gold airflow up --pipelines …` (api-server,
scheduler, dag-processor, triggerer on 127.0.0.1, the package's DAG folder) and runs started
with `raw2gold trigger <pipeline.yaml>`, through the scheduler and LocalExecutor, to gold.

Real components only: Airbyte's source-faker and source-file, Spark in local mode with Delta
Lake (the run's Spark Connect server), Airflow 3. Gold is checked against the independent DuckDB
computation over raw (tests/e2e/reference.py).
"""

from __future__ import annotations

import re
import subprocess
import time
from typing import Any

from tests.e2e.reference import RAW2GOLD, assert_shop_gold_matches_reference
from tests.fixtures.airflow import ShopAirflow

DAG = "raw2gold_shop"


def _trigger(shop: ShopAirflow, *params: str) -> subprocess.CompletedProcess[str]:
    command = [*RAW2GOLD, "trigger", str(shop.pipeline)]
    for param in params:
        command += ["--param", param]
    return subprocess.run(
        command, env=shop.env, capture_output=True, text=True, timeout=1200, check=False
    )


def _run_id(output: str) -> str:
    match = re.search(rf"triggered {DAG} run (\S+) at", output)
    assert match, output
    return match.group(1)


def _task_states(shop: ShopAirflow, run_id: str) -> dict[str, Any]:
    reply = shop.client.call("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances")
    return {ti["task_id"]: ti["state"] for ti in reply["task_instances"]}


def _dag(shop: ShopAirflow) -> dict[str, Any]:
    """The DAG as the api-server knows it, once the dag-processor has parsed the pipeline."""
    deadline = time.monotonic() + 180
    while True:
        reply = shop.client.request("GET", f"/api/v2/dags/{DAG}")
        if reply.status_code == 200:
            return dict(reply.json())
        assert time.monotonic() < deadline, f"{DAG} never appeared: {reply.text[:300]}"
        time.sleep(2)


def test_up_prints_the_address_and_login_and_the_pipeline_dag_starts_paused(
    shop_airflow: ShopAirflow,
) -> None:
    state = shop_airflow.state
    out = shop_airflow.up_output
    assert f"Airflow is up at {state.url}" in out and state.url.startswith("http://127.0.0.1:")
    assert f"user: admin  password: {state.password()}" in out
    assert str(shop_airflow.pipeline) in out
    dag = _dag(shop_airflow)
    assert dag["is_paused"] is True  # new DAGs start paused; `trigger` unpauses
    assert dag["timetable_summary"] == "0 0 * * *"  # `@daily` in orchestration.timezone
    pool = shop_airflow.client.call("GET", "/api/v2/pools/raw2gold_connectors")
    assert pool["slots"] == 2
    task = shop_airflow.client.call("GET", f"/api/v2/dags/{DAG}/tasks/ingest.faker")
    assert task["pool"] == "raw2gold_connectors"


def test_a_triggered_run_goes_through_the_scheduler_to_gold(shop_airflow: ShopAirflow) -> None:
    _dag(shop_airflow)
    result = _trigger(shop_airflow)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    run_id = _run_id(out)
    states = _task_states(shop_airflow, run_id)
    assert set(states.values()) == {"success"}, states
    assert {"ingest.faker", "ingest.catalog_csv", "gold.publish", "spark.stop", "done"} <= set(
        states
    )
    lake = shop_airflow.pipeline.parent / "lake"
    assert_shop_gold_matches_reference(lake)

    # A bad param is refused by Airflow before any run starts.
    refused = _trigger(shop_airflow, 'sources=["nosuch"]')
    assert refused.returncode != 0
    assert "nosuch" in refused.stdout + refused.stderr

    # `sources` ingests only those: the CSV source's task is skipped, gold is built again.
    again = _trigger(shop_airflow, 'sources=["faker"]')
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    states = _task_states(shop_airflow, _run_id(out))
    assert states["ingest.catalog_csv"] == "skipped", states
    assert states["ingest.faker"] == states["gold.publish"] == states["done"] == "success"
    assert_shop_gold_matches_reference(lake)
