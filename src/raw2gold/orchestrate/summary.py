"""A run's summary: rows per layer and time per stage, read back from the lake's bookkeeping."""

from __future__ import annotations

from typing import Any

from raw2gold.config import load_pipeline
from raw2gold.lake import Lake
from raw2gold.transform.job import stage_record


def run_summary(pipeline_path: str, run_id: str, lake_uri: str | None = None) -> dict[str, Any]:
    """Collect what each stage recorded for ``run_id``: raw manifests and stage summaries."""
    config = load_pipeline(pipeline_path, lake_uri=lake_uri)
    lake = Lake(config.lake)
    raw: dict[str, Any] = {}
    for source in config.sources:
        relative = Lake.raw_manifest(source, run_id)
        if lake.exists(relative):
            manifest = lake.read_json(relative)
            raw[source] = {
                name: {"records": s.get("records", 0), "quarantined": s.get("quarantined", 0)}
                for name, s in manifest.get("streams", {}).items()
            }
    stages = {}
    for stage in ("transform", "processed", "gold", "check", "publish", "maintain"):
        record = stage_record(lake, run_id, stage)  # with the per-model tasks' records
        if record is not None:
            stages[stage] = record
    return {"pipeline": config.name, "run_id": run_id, "raw": raw, "stages": stages}


def processed_note(stats: dict[str, Any]) -> str:
    """What a processed table's row count does not say: rows quarantined, keys deleted by CDC
    deletion records, columns the source added ("" when none)."""
    parts = []
    if stats.get("quarantined"):
        parts.append(f"{stats['quarantined']} quarantined")
    if stats.get("rows_deleted"):
        parts.append(f"{stats['rows_deleted']} deleted")
    if stats.get("columns_added"):
        parts.append(f"new columns {', '.join(stats['columns_added'])}")
    return ", ".join(parts)
