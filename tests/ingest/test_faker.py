"""source-faker 7.2.1 from PyPI: full sync, then what it really does with state.

Measured behaviour of source-faker 7.2.1 (see source_faker/streams.py):
- with the default ``always_updated: true`` it ignores the state and re-emits all ``count`` records
  (ids 1..count, same seed -> same values) with ``updated_at`` = now: a second run lands everything
  again, and raising ``count`` lands old and new ids alike (dedupe by primary key downstream);
- with ``always_updated: false`` a stream with state emits nothing at all, even after ``count``
  was raised; only a run with ``full_refresh=True`` (no state; tested with the scripted
  connector) brings records back.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from raw2gold.config.models import ConnectorSpec
from raw2gold.ingest import ingest_source, install_connector
from raw2gold.lake.layout import Lake
from tests.ingest.conftest import FAKER, MakePipeline, read_raw

DAY = "2026-11-26"
STREAMS = [
    {
        "name": name,
        "sync_mode": "incremental",
        "cursor_field": ["updated_at"],
        "primary_key": ["id"],
    }
    for name in ("users", "products", "purchases")
]


def faker_source(count: int, **extra: Any) -> dict[str, Any]:
    config = {"count": count, "seed": 42, "records_per_slice": 1000, "parallelism": 1, **extra}
    return {"faker": {"connector": FAKER, "config": config, "streams": STREAMS}}


def ids(config: Any, manifest: dict[str, Any], stream: str) -> list[int]:
    return sorted(row["id"] for row in read_raw(config, manifest["streams"][stream]["files"]))


def test_faker_full_then_incremental(make_pipeline: MakePipeline) -> None:
    config = make_pipeline(faker_source(20))
    lake = Lake(config.lake)
    first = ingest_source(config, "faker", "r1", DAY)
    assert first["state_in"] is False
    assert first["connector"] == {"package": "airbyte-source-faker", "version": "7.2.1"}
    assert {name: s["records"] for name, s in first["streams"].items()} == {
        "users": 20,
        "products": 20,
        "purchases": first["streams"]["purchases"]["records"],
    }
    assert first["streams"]["purchases"]["records"] > 0
    assert all(s["quarantined"] == 0 for s in first["streams"].values())
    assert ids(config, first, "users") == list(range(1, 21))
    assert first["streams"]["users"]["columns"]["address"] == "json"
    assert {s["stream"]["stream_descriptor"]["name"] for s in first["state"]} == {
        "users",
        "products",
        "purchases",
    }

    # Independent check: the connector's own output, parsed with json, equals the raw rows.
    exe = install_connector(ConnectorSpec(**FAKER)).executable
    config_file = config.base_dir / "faker.json"
    config_file.write_text(json.dumps(config.sources["faker"].config))
    catalog = {
        "streams": [
            {
                "stream": {
                    "name": "users",
                    "json_schema": first["streams"]["users"]["schema"],
                    "supported_sync_modes": ["full_refresh", "incremental"],
                },
                "sync_mode": "full_refresh",
                "destination_sync_mode": "append",
            }
        ]
    }
    catalog_file = config.base_dir / "catalog.json"
    catalog_file.write_text(json.dumps(catalog))
    out = subprocess.run(
        [str(exe), "read", "--config", str(config_file), "--catalog", str(catalog_file)],
        capture_output=True,
        check=True,
    ).stdout
    expected = [
        m["record"]["data"]
        for m in map(json.loads, out.splitlines())
        if m["type"] == "RECORD" and m["record"]["stream"] == "users"
    ]
    landed = {row["id"]: row for row in read_raw(config, first["streams"]["users"]["files"])}
    assert len(expected) == 20
    for record in expected:
        row = landed[record["id"]]
        for key, value in record.items():
            if key == "updated_at":  # "now" for every record
                continue
            landed_value = json.loads(row[key]) if key == "address" else row[key]
            assert landed_value == value, (record["id"], key)

    # Second run, same config, with the committed state: faker re-emits everything.
    second = ingest_source(config, "faker", "r2", DAY)
    assert second["state_in"] is True
    assert ids(config, second, "users") == list(range(1, 21))
    assert second["streams"]["products"]["records"] == 20

    # count raised (always_updated default): old and new ids alike.
    config = make_pipeline(faker_source(30))
    third = ingest_source(config, "faker", "r3", DAY)
    assert ids(config, third, "users") == list(range(1, 31))

    # always_updated: false honours the state: nothing at all, even with count raised.
    config = make_pipeline(faker_source(40, always_updated=False))
    fourth = ingest_source(config, "faker", "r4", DAY)
    assert {name: s["records"] for name, s in fourth["streams"].items()} == {
        "users": 0,
        "products": 0,
        "purchases": 0,
    }
    assert all(s["files"] == [] for s in fourth["streams"].values())
    assert fourth["state"]  # the state is carried on

    assert [m["run_id"] for m in lake.committed_raw_runs("faker")] == ["r1", "r2", "r3", "r4"]
    assert lake.read_json(Lake.source_state_file("faker")) == fourth["state"]
