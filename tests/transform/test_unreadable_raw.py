"""A raw file Spark cannot read: one line naming the file, its run and the way out."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from raw2gold.config.loader import load_pipeline
from raw2gold.lake.layout import Lake
from raw2gold.transform.delta import log_version
from raw2gold.transform.job import StageError, run_stage
from tests.transform.rawdata import shop_records, ts, write_raw_run

T1 = datetime(2026, 2, 1, 6, tzinfo=UTC)
T2 = datetime(2026, 2, 2, 6, tzinfo=UTC)
T3 = datetime(2026, 2, 3, 6, tzinfo=UTC)


def _damage(path: Path, how: str) -> str:
    """Damage a raw file as a disk, a cut-off upload or a careless hand would; Spark's error
    class for it."""
    data = path.read_bytes()
    if how == "not parquet":
        path.write_bytes(b"id,name\n1,someone\n")
        return "FAILED_READ_FILE.CANNOT_READ_FILE_FOOTER"
    if how == "cut short":
        path.write_bytes(data[: len(data) // 2])
        return "FAILED_READ_FILE.CANNOT_READ_FILE_FOOTER"
    path.unlink()
    return "PATH_NOT_FOUND"


@pytest.mark.parametrize("how", ["not parquet", "cut short", "missing"])
def test_an_unreadable_raw_file_names_itself_and_leaving_its_run_out_recovers(
    tmp_path: Path, spark: Any, shop_pipeline: Path, how: str
) -> None:
    lake_dir = tmp_path / "lake"
    config = load_pipeline(shop_pipeline, str(lake_dir))
    lake = Lake(config.lake)
    users = shop_records(users=3)["users"]
    write_raw_run(lake, "faker", "r1", {"users": users}, T1)
    run_stage(config, "processed", "run1", spark=spark, tables=["users"])
    version = log_version(lake, "processed/users")

    newer = [{**users[0], "email": "new@example.com", "updated_at": ts(5, 1)}]
    manifest = write_raw_run(lake, "faker", "r2", {"users": newer}, T2)
    [relative] = manifest["streams"]["users"]["files"]
    error_class = _damage(lake_dir / relative, how)
    with pytest.raises(StageError) as excinfo:
        run_stage(config, "processed", "run2", spark=spark, tables=["users"])
    message = str(excinfo.value)
    assert message == excinfo.value.summary["error"]  # what the task log and notices show
    assert excinfo.value.summary["final"] is False  # a store's hiccup can read so: retried
    assert "\n" not in message
    assert message.startswith(f"processed users: raw file {relative} (raw run r2 of faker.users)")
    assert f"cannot be read ({error_class}: " in message
    assert "restore it, or delete raw/faker/_runs/r2.json to leave that run out" in message
    assert log_version(lake, "processed/users") == version  # nothing written

    # The way out the message gives: the run's manifest removed, the next ingest lands the
    # records again (a new raw run), and processing goes on.
    (lake_dir / Lake.raw_manifest("faker", "r2")).unlink()
    write_raw_run(lake, "faker", "r3", {"users": newer}, T3)
    summary = run_stage(config, "processed", "run3", spark=spark, tables=["users"])
    assert summary["processed"]["users"]["raw_runs"] == ["r3"]
    rows = spark.read.format("delta").load(str(lake_dir / "processed/users")).collect()
    assert {row["id"]: row["email"] for row in rows} == {
        1: "new@example.com",
        2: users[1]["email"],
        3: users[2]["email"],
    }
