"""The shop example under a real Airflow: `raw2gold airflow up --pipelines …` (api-server,
scheduler, dag-processor, triggerer on 127.0.0.1, the package's DAG folder) and runs started
by its schedule and with `raw2gold trigger <pipeline.yaml>`, through the scheduler and
LocalExecutor, to gold; a run whose connector task is killed from Airflow while the connector
is reading; and one whose gold model task is killed while its query runs on the Spark server.

Real components only: Airbyte's source-faker and source-file, Spark in local mode with Delta
Lake (the run's Spark Connect server), Airflow 3. Gold is checked against the independent DuckDB
computation over raw (tests/e2e/reference.py).
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from tests.e2e.reference import (
    RAW2GOLD,
    assert_faker_rebuilt_from_scratch,
    assert_shop_gold_matches_reference,
    read_gold,
)
from tests.fixtures.airflow import ShopAirflow
from tests.fixtures.paths import edit_pipeline

DAG = "raw2gold_shop"


def _trigger(
    shop: ShopAirflow, *params: str, wait: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [*RAW2GOLD, "trigger", str(shop.pipeline), *([] if wait else ["--no-wait"])]
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


def _runs(shop: ShopAirflow, **params: Any) -> list[dict[str, Any]]:
    reply = shop.client.call("GET", f"/api/v2/dags/{DAG}/dagRuns", params=params)
    return list(reply["dag_runs"])


def _wait(what: str, condition: Any, seconds: float = 180) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)
    return value


def _task_ids(shop: ShopAirflow) -> set[str]:
    """The DAG's task ids as the api-server knows them."""
    reply = shop.client.call("GET", f"/api/v2/dags/{DAG}/tasks")
    return {task["task_id"] for task in reply["tasks"]}


def _dag(shop: ShopAirflow) -> dict[str, Any]:
    """The DAG as the api-server knows it, once the dag-processor has parsed the pipeline."""
    reply = _wait(
        f"{DAG} to be parsed",
        lambda: (r := shop.client.request("GET", f"/api/v2/dags/{DAG}")).status_code == 200 and r,
    )
    return dict(reply.json())


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


def test_the_scheduled_run_reaches_gold_and_a_triggered_one_takes_params(
    shop_airflow: ShopAirflow,
) -> None:
    """Unpaused (the UI's toggle, here over REST), the DAG gets the run of its latest @daily
    interval from the scheduler (catchup off: that one only), which lands gold equal to the
    independent computation; a gold model added to the pipeline while Airflow runs (a SQL file
    and its lines in pipeline.yaml) becomes tasks of the DAG; then `raw2gold trigger` runs it by
    hand with params, and the new model's table is published with the CSV's counts."""
    _dag(shop_airflow)
    shop_airflow.client.call("PATCH", f"/api/v2/dags/{DAG}", json={"is_paused": False})
    scheduled = _wait(
        "the scheduled run to end",
        lambda: [r for r in _runs(shop_airflow) if r["state"] in ("success", "failed")],
        900,
    )
    (run,) = _runs(shop_airflow)  # no backfill of earlier intervals
    assert scheduled == [run] and run["run_type"] == "scheduled", run
    states = _task_states(shop_airflow, run["dag_run_id"])
    assert run["state"] == "success" and set(states.values()) == {"success"}, states
    assert {"ingest.faker", "ingest.catalog_csv", "gold.publish", "spark.stop", "done"} <= set(
        states
    )
    lake = shop_airflow.pipeline.parent / "lake"
    assert_shop_gold_matches_reference(lake)

    # A bad param is refused by Airflow before any run starts.
    refused = _trigger(shop_airflow, 'sources=["nosuch"]')
    assert refused.returncode != 0
    assert "nosuch" in refused.stdout + refused.stderr

    # A gold table added while Airflow runs: a SQL model and its lines in pipeline.yaml, no DAG
    # code. The dag-processor parses the pipeline again and the DAG gains the model's tasks.
    folder = shop_airflow.pipeline.parent
    (folder / "models" / "makes_per_category.sql").write_text(
        "SELECT category, COUNT(*) AS makes FROM {{ ref('make_categories') }} GROUP BY category\n"
    )
    model = {"sql": "models/makes_per_category.sql", "format": "parquet"}
    edit_pipeline(shop_airflow.pipeline, lambda config: config["gold"].update(makes=model))
    _wait("the DAG to gain gold.build.makes", lambda: "gold.build.makes" in _task_ids(shop_airflow))

    # `sources` ingests only those: the CSV source's task is skipped; `full_refresh` reads the
    # faker source from scratch and rebuilds the processed tables from every raw run.
    again = _trigger(shop_airflow, 'sources=["faker"]', "full_refresh=true")
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    states = _task_states(shop_airflow, _run_id(out))
    assert states["ingest.catalog_csv"] == "skipped", states
    assert states["ingest.faker"] == states["gold.publish"] == states["done"] == "success"
    assert states["gold.build.makes"] == states["gold.check.makes"] == "success", states
    assert_faker_rebuilt_from_scratch(lake)
    assert_shop_gold_matches_reference(lake)
    with (folder / "data" / "make_categories.csv").open() as csv_file:
        expected = Counter(row["category"] for row in csv.DictReader(csv_file))
    published = read_gold(lake, "makes", "parquet")
    assert {r["category"]: r["makes"] for r in published} == expected


def _pids(shop: ShopAirflow, matches: Callable[[list[bytes]], bool]) -> list[int]:
    """PIDs of the processes this Airflow started (descendants of its components, which may
    have left their process groups) whose command line ``matches``; other tests' processes
    running at the same time are not counted."""
    components = {c.pid for c in shop.state.components}
    pids = []
    for proc in psutil.process_iter():
        try:
            argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
            if matches(argv) and components & {p.pid for p in proc.parents()}:
                pids.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return pids


def _connector_pids(shop: ShopAirflow, package: str) -> list[int]:
    """PIDs of connector processes reading (`<entrypoint> read --config …`)."""
    return _pids(
        shop, lambda argv: any(a.endswith(package.encode()) for a in argv[:2]) and b"read" in argv
    )


def _fail_task(shop: ShopAirflow, run_id: str, task: str) -> str:
    """Mark the running ``task`` failed, as a user does in the UI; the run must then fail
    before publish, with spark.stop still run. Returns the task's log."""
    path = f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task}"
    assert shop.client.call("GET", path)["state"] == "running"
    shop.client.call("PATCH", path, json={"new_state": "failed"})
    run_path = f"/api/v2/dags/{DAG}/dagRuns/{run_id}"
    run = _wait(
        "the run to end",
        lambda: (r := shop.client.call("GET", run_path))["state"] != "running" and r,
    )
    assert run["state"] == "failed"
    states = _task_states(shop, run_id)
    assert states[task] == "failed", states
    assert states["gold.publish"] == "upstream_failed", states
    assert states["spark.stop"] == "success", states
    return str(shop.client.call("GET", f"{path}/logs/1", params={"full_content": True}))


def _running(shop: ShopAirflow, task: str) -> str | None:
    """The run whose ``task`` is running, if any."""
    for run in _runs(shop, state=["running"]):
        path = f"/api/v2/dags/{DAG}/dagRuns/{run['dag_run_id']}/taskInstances/{task}"
        if shop.client.call("GET", path)["state"] == "running":
            return str(run["dag_run_id"])
    return None


def test_a_connector_task_killed_from_airflow_stops_its_connector_and_commits_nothing(
    shop_airflow: ShopAirflow,
) -> None:
    """Marking the running ingest task failed (as a user does in the UI) makes Airflow SIGTERM
    it; its on_kill stops the connector's process group, the raw run is never committed, the
    run's Spark server is stopped by spark.stop, and gold stays as it was."""
    lake = shop_airflow.pipeline.parent / "lake"
    _wait("earlier runs to end", lambda: not _runs(shop_airflow, state=["queued", "running"]))
    # from scratch, 5 M users: reads for minutes
    edit_pipeline(
        shop_airflow.pipeline, lambda c: c["sources"]["faker"]["config"].update(count=5_000_000)
    )
    manifests = sorted((lake / "raw" / "faker" / "_runs").glob("*.json"))
    gold_before = {p: p.read_bytes() for p in (lake / "gold").rglob("*") if p.is_file()}

    started = _trigger(shop_airflow, 'sources=["faker"]', "full_refresh=true", wait=False)
    assert started.returncode == 0, started.stdout + started.stderr
    _run_id(started.stdout)  # triggered
    # the run reading (run alone, this test's trigger unpauses the DAG: the scheduled run of
    # the latest interval may come first)
    run_id = _wait("ingest.faker to run", lambda: _running(shop_airflow, "ingest.faker"))
    _wait("source-faker to read", lambda: _connector_pids(shop_airflow, "source-faker"))
    time.sleep(3)
    pids = _connector_pids(shop_airflow, "source-faker")  # still reading, with its worker processes
    assert pids
    log = _fail_task(shop_airflow, run_id, "ingest.faker")

    assert "stopped 1 connector process(es)" in log  # on_kill: the group, workers too
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()
    # nothing committed to raw; gold byte for byte as it was
    assert sorted((lake / "raw" / "faker" / "_runs").glob("*.json")) == manifests
    assert {p: p.read_bytes() for p in (lake / "gold").rglob("*") if p.is_file()} == gold_before


SLOW_MODEL = """
from pyspark.sql import functions as F


def build(spark, ref):
    \"\"\"Hours of work on the server: a sum over 10^13 generated rows (of 0s and 1s, so
    that it cannot overflow).\"\"\"
    print("slow model: the query goes to the server", flush=True)
    return spark.range(0, 10**13, numPartitions=4).agg(F.sum(F.col("id") % 2).alias("n"))
"""


def test_a_spark_task_killed_from_airflow_interrupts_its_query_and_gold_stays(
    shop_airflow: ShopAirflow,
) -> None:
    """A gold model's build task marked failed while its query runs on the run's Spark Connect
    server: on_kill stops the job's process and interrupts its session's operations on the
    server, the run fails before publish, spark.stop stops the server, and gold stays as it
    was byte for byte. (Runs last: it makes the copy's top_products model a slow one.)"""
    lake = shop_airflow.pipeline.parent / "lake"
    _wait("earlier runs to end", lambda: not _runs(shop_airflow, state=["queued", "running"]))
    (shop_airflow.pipeline.parent / "models" / "top_products.py").write_text(SLOW_MODEL)
    gold_before = {p: p.read_bytes() for p in (lake / "gold").rglob("*") if p.is_file()}
    servers_before = set(lake.glob("_state/runs/*/spark_server.json"))

    task = "gold.build.top_products"
    # the same CSV and no new faker run: processed and the other models are unchanged; the
    # changed model is rebuilt
    started = _trigger(shop_airflow, 'sources=["catalog_csv"]', wait=False)
    assert started.returncode == 0, started.stdout + started.stderr
    run_id = _wait(f"{task} to run", lambda: _running(shop_airflow, task), 300)
    logs = Path(shop_airflow.state.airflow_home) / "logs"
    _wait(
        "the model's query to start",
        lambda: any(
            "slow model: the query goes to the server" in f.read_text()
            for f in logs.glob(f"**/task_id={task}/*.log")
            if run_id in str(f)
        ),
        120,
    )
    time.sleep(3)  # the write is on the server, summing
    # the local job (`python -m raw2gold.transform.job … --stage gold …`)
    jobs = _pids(shop_airflow, lambda argv: b"raw2gold.transform.job" in argv and b"gold" in argv)
    assert jobs
    log = _fail_task(shop_airflow, run_id, task)

    assert re.search(r"interrupted [1-9]\d* Spark operation\(s\) on the server", log), log[-3000:]
    for pid in jobs:
        assert not Path(f"/proc/{pid}").exists()
    (server,) = set(lake.glob("_state/runs/*/spark_server.json")) - servers_before
    record = json.loads(server.read_text())
    assert record["stopped_at"] and not Path(f"/proc/{record['pid']}").exists()
    # the server cancelled the operation's job and killed its tasks (not its shutdown later)
    server_log = Path(record["log"]).read_text()
    assert "[OPERATION_CANCELED]" in server_log
    cancelled = r"Executor killed task .*SPARK_JOB_CANCELLED.* same tag SparkConnect_OperationTag"
    assert re.search(cancelled, server_log)
    assert {p: p.read_bytes() for p in (lake / "gold").rglob("*") if p.is_file()} == gold_before
