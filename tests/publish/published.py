"""Small published pipelines for the publish tests: the faker users, processed, and gold
tables by_nationality (Delta) and ages (Parquet)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from raw2gold.config.loader import load_pipeline
from raw2gold.lake.layout import Lake
from raw2gold.transform.job import STAGES, run_stage
from tests.transform.rawdata import shop_records, ts, users_pipeline, write_raw_run

GOLD = {
    "by_nationality": "  by_nationality: {sql: by_nationality.sql, format: delta}\n",
    "ages": "  ages: {sql: ages.sql, format: parquet}\n",
}


def published(tmp_path: Path, spark: Any, tables: list[str]) -> Any:
    """A pipeline with these gold tables, which its first run published."""
    gold = "".join(GOLD[t] for t in tables)
    (tmp_path / "pipeline.yaml").write_text(users_pipeline("published", gold))
    (tmp_path / "by_nationality.sql").write_text(
        "SELECT nationality, COUNT(*) AS users FROM {{ ref('users') }} GROUP BY nationality"
    )
    (tmp_path / "ages.sql").write_text("SELECT id, age FROM {{ ref('users') }}")
    config = load_pipeline(tmp_path / "pipeline.yaml")
    lake = Lake(config.lake)
    users = shop_records(users=20)["users"]
    write_raw_run(lake, "faker", "r1", {"users": users}, datetime(2026, 2, 1, tzinfo=UTC))
    for stage in STAGES:
        run_stage(config, stage, "run1", spark=spark)
    return config


def new_users(lake: Lake, raw_run: str, first_id: int, day: int) -> None:
    """A raw run of three new users (ids from ``first_id``) on February ``day``."""
    template = shop_records(users=1)["users"][0]
    users = [{**template, "id": first_id + i, "updated_at": ts(day, i)} for i in range(3)]
    write_raw_run(lake, "faker", raw_run, {"users": users}, datetime(2026, 2, day, tzinfo=UTC))
