"""The shop example end to end: `raw2gold run` through Airflow into a temporary lake.

Real components only: Airbyte's source-faker and source-file from PyPI, Spark in local mode with
Delta Lake, and Airflow's `dags test`. Every gold table is checked against an independent DuckDB
computation over the raw Parquet (tests/e2e/reference.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.reference import (
    GOLD_FORMATS,
    RAW2GOLD,
    assert_shop_gold_matches_reference,
    read_gold,
)
from tests.fixtures.paths import shop_copy


def raw2gold_run(
    pipeline: Path, lake: Path, work: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """`raw2gold run PIPELINE --lake LAKE ARGS…` from the folder ``work``, output captured."""
    return subprocess.run(
        [*RAW2GOLD, "run", str(pipeline), "--lake", str(lake), *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )


def raw2gold_start(
    pipeline: Path, lake: Path, work: Path, env: dict[str, str], *args: str, **popen: Any
) -> subprocess.Popen[str]:
    """`raw2gold run PIPELINE --lake LAKE ARGS…` started from ``work``, its output piped."""
    return subprocess.Popen(
        [*RAW2GOLD, "run", str(pipeline), "--lake", str(lake), *args],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


@pytest.fixture(scope="module")
def shop_run(tmp_path_factory, shop_pipeline: Path) -> dict:
    work = tmp_path_factory.mktemp("shop")
    # no COLUMNS: the CLI's tables are captured as a log would be, and must come out whole
    env = {**os.environ, "RAW2GOLD_HOME": str(work / ".raw2gold")}
    env.pop("COLUMNS", None)
    result = raw2gold_run(shop_pipeline, work / "lake", work, env)
    return {"work": work, "lake": work / "lake", "env": env, "result": result}


def test_run_succeeds_and_prints_a_summary(shop_run: dict) -> None:
    result = shop_run["result"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    processed = [f"processed.{t}" for t in ("users", "products", "purchases", "make_categories")]
    models = ("daily_category_revenue", "customer_lifetime_value", "top_products")
    builds = [f"gold.build.{m}" for m in models]
    checks = [f"gold.check.{m}" for m in models]
    tasks = ["ingest.faker", "ingest.catalog_csv", "spark.start", *processed, *builds, *checks]
    for task in (*tasks, "gold.publish", "spark.stop", "done"):
        assert f"✔ {task} success" in out, out

    def at(task: str) -> int:
        return out.index(f"✔ {task} success")

    # Layer by layer: a processed table after its source, a model after its tables, checks
    # after the model, publish after every check; the Spark server stops after the last task.
    assert at("ingest.catalog_csv") < at("processed.make_categories")
    assert at("ingest.faker") < min(at(t) for t in processed[:3])
    assert at("spark.start") < min(at(t) for t in processed)
    assert max(at(t) for t in processed) < min(at(t) for t in builds)
    for model in models:
        assert at(f"gold.build.{model}") < at(f"gold.check.{model}") < at("gold.publish")
    assert at("gold.publish") < at("spark.stop")
    assert at("gold.publish") < at("done")
    # One Spark Connect server served the run's Spark tasks, and it is gone.
    (record,) = shop_run["lake"].glob("_state/runs/*/spark_server.json")
    server = json.loads(record.read_text())
    assert server["url"].startswith("sc://127.0.0.1:") and server["stopped_at"]
    with pytest.raises(ProcessLookupError):
        os.kill(server["pid"], 0)
    # A task's session is released once the server has the client's releases of its results:
    # before, releases still in flight met a closed session, an ERROR and a stack trace each.
    (server_log,) = (shop_run["work"] / ".raw2gold" / "logs").glob("spark-connect-*.log")
    errors = [
        line for line in server_log.read_text().splitlines() if "during: releaseExecute" in line
    ]
    assert not errors, errors[:5]
    assert "rows per layer" in out and "time per task" in out
    assert "gold.daily_category_revenue" in out
    # the summary's rows are whole in captured output (no terminal): names and note unabridged
    assert re.search(r"gold\s+│ customer_lifetime_value\s+│\s+1000 │ parquet, full\b", out), out
    assert re.search(r"gold.build.customer_lifetime_value\s+│\s+\d+\.\d", out), out


def test_gold_matches_an_independent_computation(shop_run: dict) -> None:
    assert_shop_gold_matches_reference(shop_run["lake"])


def test_show_prints_a_gold_table(shop_run: dict, shop_pipeline: Path) -> None:
    result = subprocess.run(
        [
            *RAW2GOLD,
            "show",
            "top_products",
            "-p",
            str(shop_pipeline),
            "--lake",
            str(shop_run["lake"]),
        ],
        env=shop_run["env"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "gold.top_products: 10 rows" in result.stdout


def test_second_run_is_incremental_and_gold_is_unchanged(
    shop_run: dict, shop_pipeline: Path
) -> None:
    """A second run lands no new faker records (its state is honoured) and the full-refresh
    CSV again with the same rows: processed writes nothing (every table keeps its Delta
    version), so no gold model is rebuilt or republished and gold is unchanged."""
    lake = shop_run["lake"]
    processed = ("users", "products", "purchases", "make_categories")
    versions = {
        t: sorted((lake / "processed" / t / "_delta_log").glob("*.json")) for t in processed
    }
    before = {
        table: sorted(map(repr, read_gold(lake, table, fmt))) for table, fmt in GOLD_FORMATS.items()
    }
    runs_before = set((lake / "raw" / "faker" / "_runs").glob("*.json"))
    runs_before_csv = set((lake / "raw" / "catalog_csv" / "_runs").glob("*.json"))
    logs_before = set((shop_run["work"] / ".raw2gold" / "logs").glob("*.log"))
    result = raw2gold_run(shop_pipeline, lake, shop_run["work"], shop_run["env"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (new_run,) = set((lake / "raw" / "faker" / "_runs").glob("*.json")) - runs_before
    (run_log,) = [
        p
        for p in set((shop_run["work"] / ".raw2gold" / "logs").glob("*.log")) - logs_before
        if not p.name.startswith("spark-connect-")
    ]
    log = run_log.read_text()
    manifest = json.loads(new_run.read_text())
    assert {s: v["records"] for s, v in manifest["streams"].items()} == {
        "users": 0,
        "products": 0,
        "purchases": 0,
    }
    (csv_run,) = {p.stem for p in (lake / "raw" / "catalog_csv" / "_runs").glob("*.json")} - {
        p.stem for p in runs_before_csv
    }
    after = {
        table: sorted(map(repr, read_gold(lake, table, fmt))) for table, fmt in GOLD_FORMATS.items()
    }
    assert after == before
    assert {
        t: sorted((lake / "processed" / t / "_delta_log").glob("*.json")) for t in processed
    } == versions
    assert f"raw run {csv_run} holds the 34 rows the table has: nothing written" in log
    for model in GOLD_FORMATS:
        assert f"gold {model} unchanged (inputs unchanged since run " in log


def test_history_shows_each_publish_with_its_lineage(shop_run: dict, shop_pipeline: Path) -> None:
    """`raw2gold history TABLE` after the module's two runs (the second published nothing):
    the publish with its run, rows, checks, build and the processed inputs with the raw runs
    they applied, as JSON and as one table row."""
    lake = shop_run["lake"]
    raw_runs = {
        p.stem
        for s in ("faker", "catalog_csv")
        for p in (lake / "raw" / s / "_runs").glob("*.json")
    }
    where = ["-p", str(shop_pipeline), "--lake", str(lake)]
    env = shop_run["env"]
    for table, inputs in (
        ("daily_category_revenue", {"make_categories", "products", "purchases"}),
        ("customer_lifetime_value", {"products", "purchases", "users"}),
    ):
        result = subprocess.run(
            [*RAW2GOLD, "history", table, *where, "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        (entry,) = json.loads(result.stdout)
        assert entry["build"] == "full"
        assert set(entry["inputs"]) == inputs
        assert all(c["passed"] for c in entry["checks"]) and entry["checks"]
        for source in entry["inputs"].values():
            assert isinstance(source["delta_version"], int) and source["raw_runs"]
            assert set(source["raw_runs"]) <= raw_runs
        assert entry["rows"] == len(read_gold(lake, table, GOLD_FORMATS[table]))
        text = subprocess.run(
            [*RAW2GOLD, "history", table, *where],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"history of gold.{table}" in text and "passed" in text
        (row,) = [line for line in text.splitlines() if "│" in line]  # whole, not folded
        assert entry["run_id"] in row and entry["published_at"] in row
        purchases = entry["inputs"]["purchases"]
        raw = len(purchases["raw_runs"])
        assert f"purchases v{purchases['delta_version']} (+{raw} raw)" in row
    empty = subprocess.run(
        [
            *RAW2GOLD,
            "history",
            "top_products",
            "-p",
            str(shop_pipeline),
            "--lake",
            str(lake / "nothing-here"),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert empty.stdout.startswith("gold.top_products has not been published in ")


def test_sources_check_and_discover_ask_the_real_connectors(
    shop_run: dict, shop_pipeline: Path
) -> None:
    """`raw2gold sources check|discover SOURCE` run the connector's own verbs (source-faker
    and source-file from PyPI, installed by the run) with the pipeline's config."""
    where = ["-p", str(shop_pipeline)]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*RAW2GOLD, "sources", *args, *where],
            env=shop_run["env"],
            capture_output=True,
            text=True,
            timeout=300,
        )

    checked = cli("check", "faker")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("ok faker")
    found = cli("discover", "faker")
    assert found.returncode == 0, found.stdout + found.stderr
    for stream in ("users", "products", "purchases"):
        assert re.search(
            rf"{stream}\s+│\s+full_refresh, incremental\s+│\s+\['updated_at'\]", found.stdout
        ), found.stdout
    csv = cli("discover", "catalog_csv")
    assert csv.returncode == 0 and "make_categories" in csv.stdout, csv.stdout + csv.stderr
    unknown = cli("check", "nosuch")
    assert unknown.returncode == 1
    assert "no source 'nosuch'; known: faker, catalog_csv" in unknown.stderr


def test_a_run_without_ingest_rebuilds_an_edited_model_from_raw_as_it_is(
    shop_run: dict, shop_pipeline: Path, tmp_path: Path
) -> None:
    """Iterating on a model without syncing sources again: `raw2gold run --no-ingest` of a copy
    of the shop whose top_products keeps 5 products, on a copy of the module's lake in another
    folder. No connector runs and no raw run is added, the processed tables keep their Delta
    versions, the edited model alone is rebuilt and published (the first 5 of the 10 it
    published before), and the other gold tables stay as they were. The run shares its
    Airflow home with the module's runs on the first lake (before, their gold assets stayed
    the active ones and this run's publish failed: inactive assets). `--sources` names only
    the pipeline's sources."""
    work, env = shop_run["work"], shop_run["env"]
    lake = tmp_path / "lake"
    shutil.copytree(shop_run["lake"], lake)
    edited = shop_copy(tmp_path / "shop")
    model = edited.parent / "models" / "top_products.py"
    model.write_text(model.read_text().replace(".limit(10)", ".limit(5)"))
    raw_runs = sorted(lake.glob("raw/*/_runs/*.json"))
    processed_log = sorted(lake.glob("processed/*/_delta_log/*.json"))
    before = {table: read_gold(lake, table, fmt) for table, fmt in GOLD_FORMATS.items()}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return raw2gold_run(edited, lake, work, env, *args)

    unknown = run("--sources", "faker", "nosuch")
    assert unknown.returncode == 1 and "Airflow" not in unknown.stderr
    assert f"no source 'nosuch' in {edited}; known: faker, catalog_csv" in unknown.stderr

    result = run("--no-ingest")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for source in ("faker", "catalog_csv"):
        assert f"– ingest.{source} skipped" in result.stdout, result.stdout
    assert "✔ gold.publish success" in result.stdout, result.stdout
    assert sorted(lake.glob("raw/*/_runs/*.json")) == raw_runs
    assert sorted(lake.glob("processed/*/_delta_log/*.json")) == processed_log
    for table in ("daily_category_revenue", "customer_lifetime_value"):
        after = read_gold(lake, table, GOLD_FORMATS[table])
        assert sorted(map(repr, after)) == sorted(map(repr, before[table]))
    ranked = sorted(before["top_products"], key=lambda r: (-r["revenue"], r["product_id"]))
    top = read_gold(lake, "top_products", "delta")
    assert sorted(top, key=lambda r: r["product_id"]) == sorted(
        ranked[:5], key=lambda r: r["product_id"]
    )
    history = subprocess.run(
        [*RAW2GOLD, "history", "top_products", "-p", str(edited), "--lake", str(lake), "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    newest = json.loads(history.stdout)[0]
    assert newest["build"] == "full" and newest["rows"] == 5


def test_a_run_that_cannot_succeed_fails_at_once_without_spending_retries(
    shop_run: dict, shop_pipeline: Path, tmp_path: Path
) -> None:
    """`raw2gold run --no-ingest` on a lake no source ever landed in: the processed tasks have
    nothing to do, each gold build finds its processed table missing. Such an error is final
    (every try would meet it), so each build task fails on its first try instead of spending
    the shop's `retries: 2`, 30 s apart; the run's last line says what is missing and what to
    do, without the exception's type."""
    lake = tmp_path / "empty"
    result = raw2gold_run(shop_pipeline, lake, shop_run["work"], shop_run["env"], "--no-ingest")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    for table in GOLD_FORMATS:
        assert f"✘ gold.build.{table} failed" in result.stdout, result.stdout
    assert "(try 2)" not in result.stdout and "up_for_retry" not in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert "failed: gold " in last and "ProcessedError" not in last, last
    assert re.search(
        r"processed table (users|purchases) does not exist yet: ingest its source "
        r"\(faker\.(users|purchases)\) and run the transform stage",
        last,
    ), last
    log = Path(re.findall(r"full log: (\S+)\)", last)[0]).read_text()
    assert log.count("(not retried: a retry would fail the same way)") == len(GOLD_FORMATS)
    assert not (lake / "gold").exists()


def test_two_runs_started_together_on_a_new_raw2gold_home_both_run(
    shop_pipeline: Path, tmp_path: Path
) -> None:
    """Two `raw2gold run`s started at once on a new RAW2GOLD_HOME (two terminals in a new
    checkout): both created its Airflow DB, then both wrote the DAG into it, and one failed
    ("airflow db migrate failed", then "UNIQUE constraint failed: dag.dag_id"). Now one waits
    for the other's set-up and their tasks run side by side. Each runs `--no-ingest` on an empty
    lake of its own, so each ends the way such a run does: its gold builds find no processed
    table."""
    env = {**os.environ, "RAW2GOLD_HOME": str(tmp_path / ".raw2gold")}
    runs = [
        raw2gold_start(shop_pipeline, tmp_path / lake, tmp_path, env, "--no-ingest")
        for lake in ("lake-a", "lake-b")
    ]
    for run in runs:
        out, err = run.communicate(timeout=600)
        last = err.strip().splitlines()[-1]
        assert run.returncode == 1 and "does not exist yet" in last, out[-2000:] + err[-2000:]
        assert "✔ spark.start success" in out, out


def _ctrl_c_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as in a terminal, whatever pytest set


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_run_leaves_no_process_behind(
    shop_pipeline: Path, tmp_path: Path, how: str
) -> None:
    """Ctrl-C in the terminal (SIGINT to `raw2gold run`'s process group) or SIGTERM to
    `raw2gold run` alone, while a processed task runs. The run's Spark Connect server lives in
    its own session, so that it outlives each task: Ctrl-C never reached it and `spark.stop`
    never ran, so it stayed up holding its memory until its time limit, 22 hours. Now `raw2gold
    run` stops `dags test` (Airflow calls the running task's on_kill first), then the server by
    PID, says so in its last line and exits 130."""
    env = {**os.environ, "RAW2GOLD_HOME": str(tmp_path / ".raw2gold")}
    lake = tmp_path / "lake"
    run = raw2gold_start(
        shop_pipeline, lake, tmp_path, env, start_new_session=True, preexec_fn=_ctrl_c_default
    )
    assert run.stdout is not None
    seen = []
    for line in run.stdout:
        seen.append(line)
        if re.search(r"processed\.\w+ started", line):
            break
    else:
        pytest.fail("no processed task started:\n" + "".join(seen) + run.stderr.read())
    if how == "ctrl-c":
        os.killpg(run.pid, signal.SIGINT)
    else:
        run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 130, "".join(seen) + out + err
    [record_file] = lake.glob("_state/runs/*/spark_server.json")
    server = json.loads(record_file.read_text())
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(
        r"raw2gold: interrupted: run \S+ stopped during processed\.\w+, and its Spark Connect "
        rf"server \(pid {server['pid']}\)",
        last,
    ), last
    assert server.get("stopped_at"), server
    deadline = time.monotonic() + 30
    while _alive(server["pid"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(server["pid"]), f"the run's Spark Connect server {server['pid']} is up"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
