"""Helpers for the ingest tests: pipelines in tmp folders and an independent reader of raw files."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from raw2gold.config import PipelineConfig, load_pipeline
from raw2gold.lake.layout import Lake

FAKE_CONNECTOR = Path(__file__).with_name("fake_connector.py")
FAKE_COMMAND = [sys.executable, str(FAKE_CONNECTOR)]
FAKER = {"package": "airbyte-source-faker", "version": "7.2.1"}
FILE = {"package": "airbyte-source-file", "version": "0.5.39"}

MakePipeline = Callable[[dict[str, Any]], PipelineConfig]


@pytest.fixture
def make_pipeline(tmp_path: Path) -> MakePipeline:
    """Write a pipeline.yaml with the given sources into tmp_path and load it (lake: tmp)."""

    def make(sources: dict[str, Any]) -> PipelineConfig:
        path = tmp_path / "pipeline.yaml"
        path.write_text(
            yaml.safe_dump({"name": "t", "lake": {"uri": "./lake"}, "sources": sources})
        )
        return load_pipeline(path)

    return make


def read_raw(config: PipelineConfig, files: list[str]) -> list[dict[str, Any]]:
    """Rows of raw files, read with DuckDB (independent of pyarrow's writer)."""
    if not files:
        return []
    lake = Lake(config.lake)
    paths = [lake.uri(f) for f in files]
    relation = duckdb.sql(f"SELECT * FROM read_parquet({paths!r}, hive_partitioning = false)")
    assert relation is not None
    names = relation.columns
    return [dict(zip(names, row, strict=True)) for row in relation.fetchall()]


def fake_source(config: dict[str, Any], **stream: Any) -> dict[str, Any]:
    """A source block for the fake connector (its command is injected by the tests)."""
    return {
        "connector": {"package": "fake-connector", "version": "1.0"},
        "config": config,
        "streams": [{"name": "items", **stream}],
    }
