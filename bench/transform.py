"""Benchmark: the shop's raw -> processed -> gold in Spark, against DuckDB computing the same gold.

    .venv/bin/python bench/transform.py --orders 1000000 [--orders 5000000] [--untuned]
                                           [--fresh-jvm] [--shared-server N] [--warm-runs N]
                                           [--raw json]

For each size it generates raw Parquet runs shaped like the connectors' (purchases = orders,
users = orders/10, 1,000 products, the categories CSV), then prints side by side:

* Spark full load: the processed, gold, check and publish stages of the shop pipeline (local[2],
  raw2gold's one-machine tuning), in one JVM here (the DAG gives each stage its own);
* DuckDB: the same three gold tables from the same raw Parquet (dedup by key, latest cursor);
* Spark incremental: a second raw run with 1 % new orders (and the categories CSV again,
  unchanged, as every DAG run lands it), its cost as a share of the full load,
  and how each gold table was built (incremental models rebuild only the changed groups);
* with ``--fresh-jvm``: the same incremental run in a new process and JVM, on a copy of the lake
  as the full load left it. The DAG starts a Spark Connect server per run, so its incremental
  runs pay the JVM's first-time costs (class loading, JIT, code generation) that the run above,
  in the JVM the full load warmed, does not;
* with ``--shared-server N``: on a lake of its own, the full load and then N runs of +1 % new
  orders, each in a new client process of one Spark Connect server that outlives the runs
  (``spark.server: shared``): runs after the first find the server's JVM warm;
* with ``--warm-runs N``: N more runs of +1 % in the same JVM, each with the CPU time the JVM's
  JIT compilers spent during it and how many classes Spark generated (code generation) — what
  a JVM that serves many runs (``spark.server: shared``) converges to;
* with ``--untuned``: the full load again on a fresh lake with Spark's own defaults for the
  settings raw2gold tunes (shuffle partitions 200, Delta snapshot partitions 50);
* with ``--raw json``: the orders, users and products arrive as JSON lines, as an Airbyte
  server's S3 destination writes them (``_airbyte_data`` objects, 1M-row files), and raw2gold
  lands them into raw Parquet (:func:`register_destination_files`, what the DAG's ingest task
  does for an ``airbyte:`` source) before Spark runs; the landing is timed on its own, and
  DuckDB computes its gold straight from the JSON files.

Gold from Spark and from DuckDB is compared row by row after each load; a difference fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raw2gold.config import load_pipeline
from raw2gold.config.models import AirbyteServerSpec, PipelineConfig
from raw2gold.ingest.airbyte_server import register_destination_files
from raw2gold.lake.layout import Lake
from raw2gold.publish.publisher import gold_arrow_table
from raw2gold.transform.connect import REMOTE_ENV, start_server, stop_shared_server
from raw2gold.transform.job import LAYER_STAGES as STAGES
from raw2gold.transform.job import run_stage
from raw2gold.transform.session import spark_session

ROOT = Path(__file__).resolve().parents[1]
SHOP = ROOT / "examples" / "shop" / "pipeline.yaml"
PRODUCTS = 1000
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
MAKES = [
    ("Audi", "premium"),
    ("BMW", "premium"),
    ("Ford", "truck"),
    ("Ferrari", "sports"),
    ("Jaguar", "luxury"),
    ("Toyota", "mainstream"),
    ("Lada", None),  # no category: 'unknown' in gold
]
UNTUNED = {"spark.sql.shuffle.partitions": "200", "spark.databricks.delta.snapshotPartitions": "50"}


def iso(seconds: np.ndarray) -> pa.Array:
    """ISO-8601 UTC strings ('...+00:00'), as the faker connector writes them."""
    stamps = pa.array((EPOCH.timestamp() + seconds).astype("int64") * 1_000_000, pa.int64())
    stamps = stamps.cast(pa.timestamp("us", tz="UTC"))
    return pc.strftime(stamps, format="%Y-%m-%dT%H:%M:%S+00:00")


def texts(seconds: np.ndarray) -> np.ndarray:
    return np.asarray(iso(seconds).to_numpy(zero_copy_only=False), dtype=object)


def with_meta(table: pa.Table, run_id: str, extracted_at: datetime) -> pa.Table:
    n = table.num_rows
    return (
        table.append_column("_airbyte_raw_id", pa.array([f"{run_id}-{i}" for i in range(n)]))
        .append_column(
            "_airbyte_extracted_at",
            pa.array([extracted_at] * n, pa.timestamp("us", tz="UTC")),
        )
        .append_column("_airbyte_meta", pa.array(['{"changes": []}'] * n))
        .append_column("_raw2gold_run_id", pa.array([run_id] * n))
    )


def write_run(
    lake: Lake, source: str, run_id: str, streams: dict[str, pa.Table], extracted_at: datetime
) -> None:
    """One committed raw run: Parquet per stream (1M-row files), then its manifest."""
    ingest_date = extracted_at.strftime("%Y-%m-%d")
    manifest_streams = {}
    for stream, table in streams.items():
        table = with_meta(table, run_id, extracted_at)
        folder = Lake.raw_run_dir(source, stream, ingest_date, run_id)
        lake.fs.create_dir(lake.path(folder), recursive=True)
        files = []
        for part, offset in enumerate(range(0, max(table.num_rows, 1), 1_000_000)):
            relative = f"{folder}/part-{part:05d}.parquet"
            pq.write_table(table.slice(offset, 1_000_000), lake.path(relative), filesystem=lake.fs)
            files.append(relative)
        manifest_streams[stream] = {"files": files, "records": table.num_rows}
    lake.write_json(
        Lake.raw_manifest(source, run_id),
        {
            "run_id": run_id,
            "source": source,
            "finished_at": extracted_at.isoformat(),
            "ingest_date": ingest_date,
            "streams": manifest_streams,
            "state": {"streams": sorted(streams)},
        },
    )


# write_run's signature: (lake, source, run_id, streams, extracted_at)
RunWriter = Callable[[Lake, str, str, dict[str, pa.Table], datetime], None]


class JsonRaw:
    """The faker streams as JSON lines in an Airbyte server's destination folder, landed into
    raw Parquet by raw2gold (other sources: Parquet, as without ``--raw json``)."""

    def __init__(self, config: PipelineConfig, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        self.folder = folder
        spec = AirbyteServerSpec(connection_id="bench", format="jsonl", destination_uri=str(folder))
        faker = config.sources["faker"].model_copy(update={"airbyte": spec, "connector": None})
        self.config = config.model_copy(update={"sources": {**config.sources, "faker": faker}})
        self.landing_seconds = 0.0
        self.json_seconds = 0.0

    def files(self, stream: str) -> list[str]:
        return sorted(str(p) for p in (self.folder / stream).glob("*.jsonl"))

    def __call__(
        self,
        lake: Lake,
        source: str,
        run_id: str,
        streams: dict[str, pa.Table],
        extracted_at: datetime,
    ) -> None:
        if source != "faker":
            write_run(lake, source, run_id, streams, extracted_at)
            return
        started = time.perf_counter()
        stamp = int(extracted_at.timestamp() * 1000)  # epoch ms, as Airbyte writes it
        for stream, table in streams.items():
            (self.folder / stream).mkdir(parents=True, exist_ok=True)
            for part, offset in enumerate(range(0, max(table.num_rows, 1), 1_000_000)):
                path = self.folder / stream / f"{run_id}-{part:05d}.jsonl"
                with path.open("wb") as out:
                    rows = table.slice(offset, 1_000_000).to_pylist()
                    for i, row in enumerate(rows, start=offset):
                        record = {
                            "_airbyte_raw_id": f"{run_id}-{i}",
                            "_airbyte_extracted_at": stamp,
                            "_airbyte_meta": {"changes": []},
                            "_airbyte_data": row,
                        }
                        out.write(orjson.dumps(record) + b"\n")
        self.json_seconds = time.perf_counter() - started
        started = time.perf_counter()
        ingest_date = extracted_at.strftime("%Y-%m-%d")
        register_destination_files(self.config, "faker", run_id, ingest_date, log=lambda _: None)
        self.landing_seconds = time.perf_counter() - started


def purchases(rng: np.random.Generator, ids: np.ndarray, users: int, day0: float) -> pa.Table:
    n = len(ids)
    created = day0 + rng.uniform(0, 86400 * 30, n)
    purchased = created + rng.uniform(0, 86400, n)
    bought = rng.random(n) < 0.85
    returned = bought & (rng.random(n) < 0.1)
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "user_id": pa.array(rng.integers(1, users + 1, n), pa.int64()),
            "product_id": pa.array(rng.integers(1, PRODUCTS + 1, n), pa.int64()),
            "created_at": iso(created),
            "updated_at": iso(purchased + 60),
            "added_to_cart_at": iso(created),
            "purchased_at": pa.array(texts(purchased), pa.string(), mask=~bought),
            "returned_at": pa.array(texts(purchased + 86400), pa.string(), mask=~returned),
        }
    )


def first_load(lake: Lake, orders: int, seed: int = 1, write: RunWriter = write_run) -> None:
    rng = np.random.default_rng(seed)
    users = max(orders // 10, 1)
    user_ids = np.arange(1, users + 1)
    created = rng.uniform(0, 86400 * 365, users)
    user_table = pa.table(
        {
            "id": pa.array(user_ids, pa.int64()),
            "name": pa.array([f"user {i}" for i in user_ids]),
            "email": pa.array([f"user{i}@example.com" for i in user_ids]),
            "age": pa.array(rng.integers(18, 90, users), pa.int64()),
            "nationality": pa.array(rng.choice(["ES", "DE", "FR", "US"], users)),
            "created_at": iso(created),
            "updated_at": iso(created + 3600),
        }
    )
    product_ids = np.arange(1, PRODUCTS + 1)
    cents = rng.integers(500, 5_000_000, PRODUCTS)
    product_table = pa.table(
        {
            "id": pa.array(product_ids, pa.int64()),
            "make": pa.array([MAKES[i % len(MAKES)][0] for i in product_ids]),
            "model": pa.array([f"model {i}" for i in product_ids]),
            "year": pa.array(rng.integers(1990, 2026, PRODUCTS), pa.int64()),
            "price": pa.array(cents / 100.0, pa.float64()),
            "created_at": iso(np.zeros(PRODUCTS)),
            "updated_at": iso(np.full(PRODUCTS, 60.0)),
        }
    )
    at = datetime(2026, 1, 1, tzinfo=UTC)
    streams = {
        "users": user_table,
        "products": product_table,
        "purchases": purchases(rng, np.arange(1, orders + 1), users, 86400 * 400),
    }
    write(lake, "faker", "bench-full", streams, at)
    write(lake, "catalog_csv", "bench-csv", {"make_categories": categories()}, at)


def categories() -> pa.Table:
    """The categories CSV's rows (a full-refresh stream: every run lands all of them)."""
    return pa.table(
        {
            "make": [m for m, c in MAKES if c],
            "category": [c for m, c in MAKES if c],
            "country": ["X"] * sum(1 for _, c in MAKES if c),
        }
    )


def one_percent_more(
    lake: Lake, orders: int, round_: int = 0, write: RunWriter = write_run
) -> None:
    """1 % new orders, after the existing ids (the incremental case the pipeline is built for);
    ``round_`` n > 0 adds the n+1-th such run, a day later than the one before. The categories
    CSV lands again too, unchanged, as in every run of the DAG (its source is read in full)."""
    rng = np.random.default_rng(2 + round_)
    users = max(orders // 10, 1)
    new = max(orders // 100, 1)
    new_ids = np.arange(orders + 1 + round_ * new, orders + 1 + (round_ + 1) * new)
    table = purchases(rng, new_ids, users, 86400 * (440 + round_))
    at = datetime(2026, 1, 2, tzinfo=UTC) + timedelta(days=round_, hours=1)
    write(lake, "faker", f"bench-incr{round_ or ''}", {"purchases": table}, at)
    write(
        lake, "catalog_csv", f"bench-csv-incr{round_ or ''}", {"make_categories": categories()}, at
    )


LATEST = """
CREATE OR REPLACE TEMP VIEW {name} AS
SELECT * EXCLUDE (rn) FROM (
  SELECT *, row_number() OVER (
    PARTITION BY {key} ORDER BY {order} _airbyte_extracted_at DESC, _airbyte_raw_id DESC) AS rn
  FROM read_parquet({files}, union_by_name = true)
) WHERE rn = 1
"""


JSON_NOTE = "an Airbyte destination's files: _airbyte_data objects, 1M rows a file"
LAND_NOTE = "raw2gold: JSON lines -> typed raw Parquet + manifest (the ingest task)"
LATEST_JSON = """
CREATE OR REPLACE TEMP VIEW {name} AS
SELECT * EXCLUDE (rn) FROM (
  SELECT *, row_number() OVER (
    PARTITION BY {key} ORDER BY {order} _airbyte_extracted_at DESC, _airbyte_raw_id DESC) AS rn
  FROM (SELECT _airbyte_data.*, _airbyte_extracted_at, _airbyte_raw_id
        FROM read_json({files}, format = 'newline_delimited'))
) WHERE rn = 1
"""


def duckdb_gold(
    lake: Lake, json_raw: JsonRaw | None = None
) -> tuple[dict[str, list[tuple[Any, ...]]], float]:
    """The three gold tables computed by DuckDB straight from raw Parquet (or from the JSON
    files for the faker streams, with ``json_raw``), and the seconds."""
    started = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")

    def files(source: str, stream: str) -> list[str]:
        runs = lake.committed_raw_runs(source)
        if stream == "make_categories":
            runs = runs[-1:]  # a full-refresh stream: the newest snapshot is the table
        return [lake.path(f) for m in runs for f in m["streams"].get(stream, {}).get("files", [])]

    order = "CAST(updated_at AS TIMESTAMPTZ) DESC NULLS LAST,"
    for name, source, key, cursor in [
        ("users", "faker", "id", order),
        ("products", "faker", "id", order),
        ("purchases", "faker", "id", order),
        ("make_categories", "catalog_csv", "make", ""),
    ]:
        if json_raw is not None and source == "faker":
            read = LATEST_JSON.format(
                name=f"raw_{name}", key=key, order=cursor, files=json_raw.files(name)
            )
        else:
            read = LATEST.format(
                name=f"raw_{name}", key=key, order=cursor, files=files(source, name)
            )
        con.execute(read)
    con.execute("""
        CREATE TEMP TABLE p AS SELECT id, user_id, product_id,
          CAST(purchased_at AS TIMESTAMPTZ) AS purchased_at,
          CAST(returned_at AS TIMESTAMPTZ) AS returned_at FROM raw_purchases;
        CREATE TEMP TABLE pr AS SELECT id, make, CAST(price AS DECIMAL(12, 2)) AS price
          FROM raw_products;
        CREATE TEMP TABLE u AS SELECT id, email FROM raw_users;
        CREATE TEMP TABLE c AS SELECT make, category FROM raw_make_categories;
    """)
    daily = con.execute("""
        SELECT CAST(p.purchased_at AS DATE), COALESCE(c.category, 'unknown'), COUNT(*),
               CAST(SUM(pr.price) AS DECIMAL(18, 2))
        FROM p JOIN pr ON pr.id = p.product_id LEFT JOIN c ON c.make = pr.make
        WHERE p.purchased_at IS NOT NULL AND p.returned_at IS NULL GROUP BY 1, 2
    """).fetchall()
    clv = con.execute("""
        SELECT u.id, u.email, COUNT(p.id), CAST(COALESCE(SUM(pr.price), 0) AS DECIMAL(18, 2)),
               MIN(p.purchased_at), MAX(p.purchased_at)
        FROM u LEFT JOIN p ON p.user_id = u.id AND p.purchased_at IS NOT NULL
                          AND p.returned_at IS NULL
        LEFT JOIN pr ON pr.id = p.product_id GROUP BY u.id, u.email
    """).fetchall()
    top = con.execute("""
        SELECT pr.id, pr.make, COUNT(*), CAST(SUM(pr.price) AS DECIMAL(18, 2)),
               COALESCE(ANY_VALUE(c.category), 'unknown')
        FROM p JOIN pr ON p.product_id = pr.id LEFT JOIN c ON c.make = pr.make
        WHERE p.purchased_at IS NOT NULL AND p.returned_at IS NULL
        GROUP BY pr.id, pr.make ORDER BY 4 DESC, 1 LIMIT 10
    """).fetchall()
    seconds = time.perf_counter() - started
    con.close()
    return {"daily": daily, "clv": clv, "top": top}, seconds


def spark_gold(config: PipelineConfig) -> dict[str, list[tuple[Any, ...]]]:
    def rows(table: str, columns: list[str]) -> list[tuple[Any, ...]]:
        return [tuple(r[c] for c in columns) for r in gold_arrow_table(config, table).to_pylist()]

    return {
        "daily": rows(
            "daily_category_revenue", ["purchase_date", "category", "purchases", "revenue"]
        ),
        "clv": rows(
            "customer_lifetime_value",
            [
                "user_id",
                "email",
                "purchases",
                "lifetime_value",
                "first_purchase_at",
                "last_purchase_at",
            ],
        ),
        "top": rows("top_products", ["product_id", "make", "purchases", "revenue", "category"]),
    }


def normalise(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    def value(v: Any) -> Any:
        if isinstance(v, datetime):
            return v.astimezone(UTC).replace(tzinfo=None)
        if isinstance(v, Decimal):
            return v.quantize(Decimal("0.01"))
        return v

    return sorted((tuple(value(v) for v in row) for row in rows), key=repr)


def compare(spark_rows: dict[str, list[Any]], duck_rows: dict[str, list[Any]], what: str) -> str:
    for name in duck_rows:
        if normalise(spark_rows[name]) != normalise(duck_rows[name]):
            raise SystemExit(f"{what}: gold {name} differs between Spark and DuckDB")
    return "equal (" + ", ".join(f"{k} {len(v)} rows" for k, v in duck_rows.items()) + ")"


def spark_run(spark: Any, config: PipelineConfig, run_id: str) -> dict[str, float]:
    times = {}
    for stage in STAGES:
        started = time.perf_counter()
        run_stage(config, stage, run_id, spark=spark)
        times[stage] = time.perf_counter() - started
    times["total"] = sum(times.values())
    return times


def stage_detail(times: dict[str, float]) -> str:
    """Each stage's time, in the order the stages run."""
    return ", ".join(f"{stage} {times[stage]:.1f}s" for stage in STAGES)


def gold_builds(lake: Lake, run_id: str) -> str:
    """How the gold stage built each table in a run (full, incremental with its groups, ...)."""
    gold = lake.read_json(lake.run_record(run_id, "gold"))["gold"]
    return ", ".join(
        f"{t} {g['build']}" + (f" ({g['groups']} groups)" if g["groups"] >= 0 else "")
        for t, g in gold.items()
    )


def child_times(args: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run this benchmark with ``args`` in a new Python process; the stage times it prints."""
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env
    )
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    last = [line for line in done.stdout.splitlines() if line.startswith("{")][-1]
    times: dict[str, float] = json.loads(last)
    return times


def load_shop(lake_uri: str) -> PipelineConfig:
    """The shop example on ``lake_uri``, with daily_category_revenue partitioned by day as the
    figures in docs/benchmarks.md were measured (a million orders span years of days; the
    example itself, a few hundred rows a year, leaves it unpartitioned)."""
    shop = load_pipeline(SHOP, lake_uri)
    daily = shop.gold["daily_category_revenue"]
    partitioned = daily.model_copy(update={"partition_by": ["purchase_date"]})
    return shop.model_copy(update={"gold": {**shop.gold, "daily_category_revenue": partitioned}})


def fresh_jvm_incremental(lake_dir: Path, orders: int) -> dict[str, float]:
    """The +1 % run on ``lake_dir`` in a new Python process and JVM; its stage times."""
    return child_times(["--incremental-only", str(lake_dir), "--orders", str(orders)])


def incremental_only(lake_dir: Path, orders: int) -> None:
    """Add 1 % new orders to ``lake_dir``, start Spark, run the stages; print the times as JSON."""
    config = load_shop(str(lake_dir))
    one_percent_more(Lake(config.lake), orders)
    started = time.perf_counter()
    spark = spark_session(config, "raw2gold-bench-fresh-jvm")
    spark.range(1).count()
    start = time.perf_counter() - started
    times = spark_run(spark, config, "incr")
    spark.stop()
    print(json.dumps({**times, "start": start}))


def client_run(lake_dir: Path, run_id: str, url: str) -> dict[str, float]:
    """The stages of one run in a new Python process, as a client of the server at ``url``."""
    env = {**os.environ, REMOTE_ENV: url}
    return child_times(["--client-run", str(lake_dir), "--run-id", run_id], env)


def client_only(lake_dir: Path, run_id: str) -> None:
    """Run the stages on the Spark Connect server in RAW2GOLD_SPARK_REMOTE; times as JSON."""
    config = load_shop(str(lake_dir))
    spark = spark_session(config, "raw2gold-bench-client")
    times = spark_run(spark, config, run_id)
    spark.stop()
    print(json.dumps(times))


def server_rss(server: dict[str, Any]) -> float:
    """Resident memory of the server's processes (``timeout``, the JVM), in MiB."""
    import psutil

    root = psutil.Process(int(server["pid"]))
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def shared_server_runs(orders: int, work: Path, rounds: int) -> list[tuple[str, str, str]]:
    """A full load, then ``rounds`` runs of +1 %, each in a new client process of one shared
    Spark Connect server (``spark.server: shared``), as the DAG's runs use it."""
    lines: list[tuple[str, str, str]] = []
    lake_dir = work / f"lake-{orders}-shared-server"
    shutil.rmtree(lake_dir, ignore_errors=True)
    shop = load_shop(str(lake_dir))
    config = shop.model_copy(update={"spark": shop.spark.model_copy(update={"server": "shared"})})
    lake = Lake(config.lake)
    first_load(lake, orders)
    started = time.perf_counter()
    server = start_server(config, "full", ttl_seconds=7200, say=lambda _: None)
    lines.append(("shared server start", f"{time.perf_counter() - started:.1f}s", "once"))
    try:
        full = client_run(lake_dir, "full", server["url"])
        detail = stage_detail(full)
        lines.append(("Spark full load (client)", f"{full['total']:.1f}s", detail))
        for round_ in range(rounds):
            one_percent_more(lake, orders, round_)
            incr = client_run(lake_dir, f"incr{round_}", server["url"])
            share = 100 * incr["total"] / full["total"]
            detail = stage_detail(incr)
            lines.append(
                (
                    f"  +1% run {round_ + 1}, same server",
                    f"{incr['total']:.1f}s",
                    f"{share:.0f}% of full; {detail}; server RSS {server_rss(server):.0f} MiB",
                )
            )
    finally:
        stop_shared_server(config, say=lambda _: None)
    duck, _ = duckdb_gold(lake)
    lines.append(("", "", "gold " + compare(spark_gold(config), duck, "shared server")))
    return lines


def jvm_work(spark: Any) -> tuple[float, int]:
    """The in-process JVM's JIT compilation time so far (s, all compiler threads) and the
    number of classes Spark's code generation has compiled."""
    jvm = spark._jvm
    jit = jvm.java.lang.management.ManagementFactory.getCompilationMXBean()
    generated = jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME()
    return jit.getTotalCompilationTime() / 1000, int(generated.getCount())


def measured_run(spark: Any, config: PipelineConfig, run_id: str) -> tuple[dict[str, float], str]:
    """The stages of one run in this process: their times, and what the JVM compiled meanwhile."""
    before = jvm_work(spark)
    times = spark_run(spark, config, run_id)
    after = jvm_work(spark)
    return times, f"JIT {after[0] - before[0]:.1f}s CPU, {after[1] - before[1]} classes generated"


def bench(
    orders: int,
    work: Path,
    untuned: bool,
    fresh_jvm: bool = False,
    warm_runs: int = 0,
    raw: str = "parquet",
) -> list[tuple[str, str, str]]:
    lines: list[tuple[str, str, str]] = []
    lake_dir = work / f"lake-{orders}"
    shutil.rmtree(lake_dir, ignore_errors=True)
    config = load_shop(str(lake_dir))
    lake = Lake(config.lake)
    json_raw = JsonRaw(config, work / f"json-{orders}") if raw == "json" else None
    write: RunWriter = json_raw or write_run
    started = time.perf_counter()
    first_load(lake, orders, write=write)
    if json_raw is None:
        lines.append(("generate raw Parquet", f"{time.perf_counter() - started:.1f}s", ""))
    else:
        lines.append(("generate JSON lines", f"{json_raw.json_seconds:.1f}s", JSON_NOTE))
        landed_full = json_raw.landing_seconds
        lines.append(("land JSON into raw", f"{landed_full:.1f}s", LAND_NOTE))

    spark = spark_session(config, "raw2gold-bench")
    started = time.perf_counter()
    spark.range(1).count()
    lines.append(("Spark JVM start", f"{time.perf_counter() - started:.1f}s", "once per run"))

    full = spark_run(spark, config, "full")
    duck, duck_seconds = duckdb_gold(lake, json_raw)
    same = compare(spark_gold(config), duck, "full load")
    detail = stage_detail(full)
    lines.append(("Spark full load", f"{full['total']:.1f}s", detail))
    source = "" if json_raw is None else " (from the JSON)"
    lines.append((f"DuckDB same gold{source}", f"{duck_seconds:.1f}s", f"gold {same}"))
    fresh_dir = work / f"lake-{orders}-fresh-jvm"
    if fresh_jvm:
        shutil.rmtree(fresh_dir, ignore_errors=True)
        shutil.copytree(lake_dir, fresh_dir)

    one_percent_more(lake, orders, write=write)
    if json_raw is not None:
        landed = json_raw.landing_seconds
        with_landing = 100 * landed / landed_full
        lines.append(("land +1% JSON into raw", f"{landed:.1f}s", f"{with_landing:.0f}% of full"))
    incr, work_done = measured_run(spark, config, "incr")
    duck, duck_seconds = duckdb_gold(lake, json_raw)
    same = compare(spark_gold(config), duck, "incremental")
    share = 100 * incr["total"] / full["total"]
    detail = stage_detail(incr)
    lines.append(
        (
            "Spark +1% incremental",
            f"{incr['total']:.1f}s",
            f"{share:.0f}% of full; {detail}; {work_done}",
        )
    )
    if json_raw is not None:
        both = 100 * (landed + incr["total"]) / (landed_full + full["total"])
        lines.append(("  landing + Spark", "", f"{both:.0f}% of landing + Spark full"))
    lines.append(("  gold builds", "", gold_builds(lake, "incr")))
    lines.append(("DuckDB recompute all", f"{duck_seconds:.1f}s", f"gold {same}"))
    for round_ in range(1, warm_runs + 1):
        one_percent_more(lake, orders, round_, write=write)
        warm, work_done = measured_run(spark, config, f"warm{round_}")
        note = f"{100 * warm['total'] / full['total']:.0f}% of full; {work_done}"
        lines.append((f"  +1% run {round_ + 1}, same JVM", f"{warm['total']:.1f}s", note))
    if warm_runs:
        duck, _ = duckdb_gold(lake, json_raw)
        lines.append(("", "", "gold " + compare(spark_gold(config), duck, "warm runs")))

    if untuned:
        before = {k: spark.conf.get(k) for k in UNTUNED}
        for key, value in UNTUNED.items():
            spark.conf.set(key, value)
        lake_untuned = work / f"lake-{orders}-untuned"
        shutil.rmtree(lake_untuned, ignore_errors=True)
        config_untuned = load_shop(str(lake_untuned))
        first_load(Lake(config_untuned.lake), orders)
        plain = spark_run(spark, config_untuned, "full")
        for key, old in before.items():
            spark.conf.unset(key) if old is None else spark.conf.set(key, old)
        settings = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in UNTUNED.items())
        lines.append(("Spark full, untuned", f"{plain['total']:.1f}s", settings))
    spark.stop()

    if fresh_jvm:
        fresh = fresh_jvm_incremental(fresh_dir, orders)
        config_fresh = load_shop(str(fresh_dir))
        duck, _ = duckdb_gold(Lake(config_fresh.lake))
        same = compare(spark_gold(config_fresh), duck, "incremental in a fresh JVM")
        share = 100 * fresh["total"] / full["total"]
        detail = stage_detail(fresh)
        lines.append(
            (
                "Spark +1% in a fresh JVM",
                f"{fresh['total']:.1f}s",
                f"{share:.0f}% of full (session start {fresh['start']:.1f}s, JVM launch included, "
                f"not counted); {detail}",
            )
        )
        lines.append(("", "", f"gold {same}"))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, action="append", help="orders (repeatable)")
    parser.add_argument("--untuned", action="store_true", help="also run with Spark defaults")
    parser.add_argument("--work", default=None, help="work folder (default: a temp folder)")
    parser.add_argument(
        "--fresh-jvm", action="store_true", help="also run the incremental load in a new JVM"
    )
    parser.add_argument(
        "--shared-server",
        type=int,
        default=0,
        metavar="N",
        help="also: a full load and N +1 %% runs through one shared Spark Connect server",
    )
    parser.add_argument(
        "--warm-runs",
        type=int,
        default=0,
        metavar="N",
        help="also: N more +1 %% runs in the same JVM, with its JIT and code generation work",
    )
    parser.add_argument(
        "--raw",
        choices=["parquet", "json"],
        default="parquet",
        help="how the orders, users and products arrive (json: an Airbyte destination's files)",
    )
    parser.add_argument("--incremental-only", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--client-run", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run-id", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.incremental_only:  # the fresh-JVM run, in its own process (fresh_jvm_incremental)
        incremental_only(Path(args.incremental_only), (args.orders or [1_000_000])[0])
        return
    if args.client_run:  # a run on the shared server, in its own process (client_run)
        client_only(Path(args.client_run), args.run_id)
        return
    if args.raw == "json" and (args.untuned or args.fresh_jvm or args.shared_server):
        parser.error("--raw json goes with --warm-runs only")
    work = Path(args.work or tempfile.mkdtemp(prefix="raw2gold-bench-"))
    for orders in args.orders or [1_000_000]:
        # The shared server's runs first, before this process starts a JVM of its own.
        shared = shared_server_runs(orders, work, args.shared_server) if args.shared_server else []
        lines = bench(orders, work, args.untuned, args.fresh_jvm, args.warm_runs, args.raw)
        lines += shared
        print(f"\n== {orders:,} orders ({orders // 10:,} users, {PRODUCTS} products), local[2]")
        width = max(len(what) for what, _, _ in lines)
        for what, seconds, note in lines:
            print(f"{what:<{width}}  {seconds:>8}  {note}")


if __name__ == "__main__":
    main()
