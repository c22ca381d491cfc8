"""Benchmark: landing source-faker into raw Parquet vs the connector writing to /dev/null.

    .venv/bin/python bench/ingest.py --count 1000000 [--streams users] [--lake /tmp/bench-lake]

Prints records/s of (a) ``source-faker read`` with stdout to /dev/null (the connector alone) and
(b) ``ingest_source`` (connector + parsing + Parquet), and the peak RSS of this process (the
landing side) and of the connector processes.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from raw2gold.config import load_pipeline
from raw2gold.config.models import ConnectorSpec
from raw2gold.ingest import ingest_source, install_connector
from raw2gold.ingest.runner import configured_catalog, discover_source

FAKER = {"package": "airbyte-source-faker", "version": "7.2.1"}


def peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--streams", default="users", help="comma-separated faker streams")
    parser.add_argument("--lake", default=None, help="lake folder (default: a temp folder)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="raw2gold-bench-"))
    lake = args.lake or str(folder / "lake")
    streams = [
        {"name": name, "sync_mode": "incremental", "cursor_field": ["updated_at"]}
        for name in args.streams.split(",")
    ]
    source_config = {"count": args.count, "seed": 42, "records_per_slice": 1000, "parallelism": 1}
    pipeline = {
        "name": "bench",
        "lake": {"uri": lake},
        "sources": {"faker": {"connector": FAKER, "config": source_config, "streams": streams}},
    }
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    config = load_pipeline(folder / "pipeline.yaml")
    exe = install_connector(ConnectorSpec(**FAKER)).executable

    # (a) the connector alone, stdout to /dev/null
    catalog = configured_catalog(
        "faker",
        config.sources["faker"].streams,
        [
            {
                "name": s["name"],
                "json_schema": s["json_schema"],
                "supported_sync_modes": s["supported_sync_modes"],
            }
            for s in discover_source(config, "faker")
        ],
    )
    (folder / "config.json").write_text(json.dumps(source_config))
    (folder / "catalog.json").write_text(json.dumps(catalog))
    started = time.perf_counter()
    subprocess.run(
        [str(exe), "read", "--config", str(folder / "config.json")]
        + ["--catalog", str(folder / "catalog.json")],
        stdout=subprocess.DEVNULL,
        check=True,
    )
    alone = time.perf_counter() - started

    # (b) the whole landing
    started = time.perf_counter()
    manifest = ingest_source(config, "faker", "bench", "2026-01-01", full_refresh=True)
    landed = time.perf_counter() - started
    records = sum(s["records"] for s in manifest["streams"].values())

    print(f"records landed:          {records:,} ({args.streams})")
    print(f"connector -> /dev/null:  {alone:7.1f} s  {records / alone:9,.0f} records/s")
    print(f"ingest_source (total):   {landed:7.1f} s  {records / landed:9,.0f} records/s")
    print(f"peak RSS, this process:  {peak_mb(resource.RUSAGE_SELF):7.0f} MiB")
    print(f"peak RSS, connectors:    {peak_mb(resource.RUSAGE_CHILDREN):7.0f} MiB")
    if args.lake is None:
        shutil.rmtree(folder, ignore_errors=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
