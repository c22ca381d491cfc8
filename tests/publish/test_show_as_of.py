"""`raw2gold show TABLE --as-of RUN`: a gold table as one run's publish left it, read without
Spark (a Delta commit of that run, a kept Parquet version), and one line when that publish can
no longer be read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from raw2gold.cli import main
from raw2gold.lake.layout import Lake
from raw2gold.transform.job import STAGES, run_stage
from tests.publish.published import new_users, published


def test_show_a_gold_table_as_an_earlier_run_published_it(
    tmp_path: Path, spark: Any, capsys: pytest.CaptureFixture
) -> None:
    config = published(tmp_path, spark, ["by_nationality", "ages"])
    lake = Lake(config.lake)
    new_users(lake, "r2", 100, 2)
    for stage in STAGES:
        run_stage(config, stage, "run2", spark=spark)

    where = ["-p", str(tmp_path / "pipeline.yaml")]
    for table in ("by_nationality", "ages"):
        assert main(["show", table, "--limit", "0", *where]) == 0
        assert f"gold.{table}: " in capsys.readouterr().out
        assert main(["show", table, "--as-of", "run1", "--limit", "50", *where]) == 0
        out = capsys.readouterr().out
        assert f"gold.{table} as run run1 published it: " in out
        if table == "ages":
            assert "ages as run run1 published it: 20 rows" in out and "100" not in out

        assert main(["show", table, "--as-of", "run9", *where]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"raw2gold: gold table {table}: ")
        assert "run run9" in err or "run9's version is not kept" in err

    # run1's Delta files removed (as VACUUM does once they are old enough): one line saying so
    uri = lake.uri(lake.gold_table("by_nationality"))
    live = {Path(f).name for f in DeltaTable(uri).file_uris()}
    for part in Path(uri).glob("*.parquet"):
        if part.name not in live:
            part.unlink()
    assert main(["show", "by_nationality", "--as-of", "run1", *where]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("raw2gold: gold table by_nationality: run run1's version (0) can no ")
    assert "maintenance.vacuum_retain_hours" in err and len(err.splitlines()) == 1
