"""Raw fixtures in the exact shape the ingest writes: Parquet per stream + a run manifest."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from raw2gold.config.models import PipelineConfig
from raw2gold.lake.layout import Lake

USERS = {
    "id": pa.int64(),
    "name": pa.string(),
    "email": pa.string(),
    "age": pa.int64(),
    "nationality": pa.string(),
    "created_at": pa.string(),
    "updated_at": pa.string(),
}
PRODUCTS = {
    "id": pa.int64(),
    "make": pa.string(),
    "model": pa.string(),
    "year": pa.int64(),
    "price": pa.float64(),
    "created_at": pa.string(),
    "updated_at": pa.string(),
}
PURCHASES = {
    "id": pa.int64(),
    "user_id": pa.int64(),
    "product_id": pa.int64(),
    "created_at": pa.string(),
    "updated_at": pa.string(),
    "added_to_cart_at": pa.string(),
    "purchased_at": pa.string(),
    "returned_at": pa.string(),
}
CATEGORIES = {"make": pa.string(), "category": pa.string(), "country": pa.string()}
SCHEMAS = {
    ("faker", "users"): USERS,
    ("faker", "products"): PRODUCTS,
    ("faker", "purchases"): PURCHASES,
    ("catalog_csv", "make_categories"): CATEGORIES,
}
MAKES = [("Audi", "premium"), ("BMW", "premium"), ("Ford", "mainstream"), ("Ferrari", "sports")]


def ts(day: int, second: int = 0, offset: bool = True) -> str:
    """An ISO-8601 timestamp in UTC, with '+00:00' or without offset (both occur in raw)."""
    value = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day, seconds=second)
    if offset:
        return value.isoformat()
    return value.replace(tzinfo=None).isoformat(timespec="microseconds")


def write_raw_run(
    lake: Lake,
    source: str,
    run_id: str,
    streams: dict[str, list[dict[str, Any]]],
    extracted_at: datetime,
    finished_at: str | None = None,
    extra_fields: dict[str, pa.DataType] | None = None,
) -> dict[str, Any]:
    """Write one committed raw run (Parquet per stream, then the manifest) and return it.

    `extra_fields` adds columns to every stream's schema, as a connector whose schema grew would.
    """
    ingest_date = extracted_at.strftime("%Y-%m-%d")
    manifest_streams: dict[str, Any] = {}
    for stream, records in streams.items():
        schema = {**SCHEMAS[(source, stream)], **(extra_fields or {})}
        fields = [pa.field(name, kind) for name, kind in schema.items()] + [
            pa.field("_airbyte_raw_id", pa.string()),
            pa.field("_airbyte_extracted_at", pa.timestamp("us", tz="UTC")),
            pa.field("_airbyte_meta", pa.string()),
            pa.field("_raw2gold_run_id", pa.string()),
        ]
        rows = [
            {
                **{name: record.get(name) for name in schema},
                "_airbyte_raw_id": str(uuid.uuid4()),
                "_airbyte_extracted_at": extracted_at,
                "_airbyte_meta": '{"changes": []}',
                "_raw2gold_run_id": run_id,
            }
            for record in records
        ]
        table = pa.Table.from_pylist(rows, schema=pa.schema(fields))
        folder = Lake.raw_run_dir(source, stream, ingest_date, run_id)
        relative = f"{folder}/part-00000.parquet"
        lake.fs.create_dir(lake.path(folder), recursive=True)
        pq.write_table(table, lake.path(relative), filesystem=lake.fs)
        manifest_streams[stream] = {"files": [relative], "records": len(rows)}
    manifest = {
        "run_id": run_id,
        "source": source,
        "finished_at": finished_at or extracted_at.isoformat(),
        "ingest_date": ingest_date,
        "streams": manifest_streams,
        "state": {"streams": sorted(streams)},
    }
    lake.write_json(Lake.raw_manifest(source, run_id), manifest)
    return manifest


def purchase(i: int, user: int, product: int, day: int, returned: bool = False) -> dict[str, Any]:
    """One purchase of the shop's faker stream, on a January day (completed; returned the next
    day when asked)."""
    return {
        "id": i,
        "user_id": user,
        "product_id": product,
        "created_at": ts(day, i),
        "updated_at": ts(day, i + 60),
        "added_to_cart_at": ts(day, i),
        "purchased_at": ts(day, i + 30),
        "returned_at": ts(day + 1, i) if returned else None,
    }


def shop_records(seed: int = 7, users: int = 30, products: int = 12, purchases: int = 120) -> dict:
    """A deterministic first sync of the faker streams."""
    rng = random.Random(seed)
    user_rows = [
        {
            "id": i,
            "name": f"user {i}",
            "email": f"user{i}@example.com",
            "age": rng.randint(18, 80),
            "nationality": rng.choice(["ES", "DE", "FR"]),
            "created_at": ts(0, i),
            "updated_at": ts(1, i, offset=i % 2 == 0),
        }
        for i in range(1, users + 1)
    ]
    product_rows = [
        {
            "id": i,
            "make": MAKES[i % len(MAKES)][0] if i != products else "Lada",
            "model": f"model {i}",
            "year": 2000 + i,
            "price": round(rng.uniform(5, 500), 2),
            "created_at": ts(0, i),
            "updated_at": ts(1, i),
        }
        for i in range(1, products + 1)
    ]
    purchase_rows = []
    for i in range(1, purchases + 1):
        day = rng.randint(2, 6)
        purchased = ts(day, i * 37, offset=i % 3 != 0) if rng.random() < 0.85 else None
        returned = ts(day + 1, i) if purchased and rng.random() < 0.1 else None
        purchase_rows.append(
            {
                "id": i,
                "user_id": rng.randint(1, users),
                "product_id": rng.randint(1, products),
                "created_at": ts(day, i),
                "updated_at": ts(day, i + 1),
                "added_to_cart_at": ts(day, i),
                "purchased_at": purchased,
                "returned_at": returned,
            }
        )
    return {"users": user_rows, "products": product_rows, "purchases": purchase_rows}


def with_processed(config: Any, table: str, **update: Any) -> Any:
    """The pipeline config with processed `table`'s settings changed (e.g. extra_columns)."""
    model = config.processed[table].model_copy(update=update)
    return config.model_copy(update={"processed": {**config.processed, table: model}})


def with_gold(config: Any, table: str, **update: Any) -> Any:
    """The pipeline config with gold model `table`'s settings changed (e.g. partition_by)."""
    model = config.gold[table].model_copy(update=update)
    return config.model_copy(update={"gold": {**config.gold, table: model}})


def categories(rows: list[tuple[str, str, str]] | None = None) -> list[dict[str, Any]]:
    rows = rows or [(m, c, "X") for m, c in MAKES]
    return [{"make": m, "category": c, "country": k} for m, c, k in rows]


USERS_PIPELINE = """
name: {name}
lake: {uri: ./lake}
sources:
  faker:
    connector: {package: airbyte-source-faker, version: 7.2.1}
    streams:
      - {name: users, sync_mode: incremental, cursor_field: [updated_at], primary_key: [id]}
processed:
  users:
    source: faker.users
    primary_key: [id]
    cursor: updated_at
    columns: {id: bigint, email: string, age: int, nationality: string, updated_at: timestamp}
gold:
"""


def users_pipeline(name: str, gold: str) -> str:
    """A pipeline.yaml: the faker users stream, its processed table, and the given `gold:` body."""
    return USERS_PIPELINE.replace("{name}", name) + gold.lstrip("\n")


def csv_pipeline(
    folder: Path, csv_file: Path, table: str, primary_key: list[str], columns: dict[str, str]
) -> Path:
    """A pipeline.yaml in ``folder``: the CSV file through the real source-file connector (a
    full-refresh stream named ``table``) and the processed table ``table`` over it."""
    source = {"dataset_name": table, "format": "csv", "url": str(csv_file)}
    path = folder / "pipeline.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": f"{table}_csv",
                "lake": {"uri": "./lake"},
                "sources": {
                    "csv": {
                        "connector": {"package": "airbyte-source-file", "version": "0.5.39"},
                        "config": {**source, "provider": {"storage": "local"}},
                        "streams": [{"name": table, "sync_mode": "full_refresh"}],
                    }
                },
                "processed": {
                    table: {
                        "source": f"csv.{table}",
                        "primary_key": primary_key,
                        "columns": columns,
                    }
                },
            }
        )
    )
    return path


def daily_partitioned(shop: PipelineConfig) -> PipelineConfig:
    """The shop with daily_category_revenue partitioned by purchase_date, as a large table would
    be (the example leaves its few hundred rows unpartitioned): an incremental publish then
    replaces or appends whole days, and maintenance meets one small file per partition."""
    return with_gold(shop, "daily_category_revenue", partition_by=["purchase_date"])
