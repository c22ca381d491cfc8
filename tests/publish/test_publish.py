"""Publishing: Delta commit with lineage, Parquet pointer, idempotency, and no change on failure."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from deltalake import DeltaTable

from raw2gold.config.loader import load_pipeline
from raw2gold.lake.layout import Lake
from raw2gold.publish.publisher import (
    PublishError,
    current_pointer,
    gold_arrow_table,
    publish,
    publish_history,
    read_gold,
)
from raw2gold.transform.job import STAGES, StageError, main, run_stage
from tests.publish.digest import tree_digest
from tests.transform.rawdata import shop_records, ts, users_pipeline, write_raw_run

PIPELINE = users_pipeline(
    "mini",
    """
  by_nationality:
    sql: by_nationality.sql
    format: delta
    partition_by: [nationality]
    checks:
      - {type: row_count, min: 1}
  ages:
    sql: ages.sql
    format: parquet
    checks:
      - {type: expression, expression: "age < 200"}
      - {type: not_null, columns: [email], severity: warn}
""",
)


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory, spark: Any) -> Any:
    base = tmp_path_factory.mktemp("mini")
    (base / "pipeline.yaml").write_text(PIPELINE)
    (base / "by_nationality.sql").write_text(
        "SELECT nationality, COUNT(*) AS users, SUM(age) AS total_age\n"
        "FROM {{ ref('users') }} GROUP BY nationality\n"
    )
    (base / "ages.sql").write_text("SELECT id, email, age FROM {{ ref('users') }}")
    config = load_pipeline(base / "pipeline.yaml")
    lake = Lake(config.lake)
    users = shop_records()["users"]
    write_raw_run(lake, "faker", "r1", {"users": users}, datetime(2026, 1, 8, tzinfo=UTC))
    summaries = {stage: run_stage(config, stage, "run1", spark=spark) for stage in STAGES}
    return SimpleNamespace(base=base, config=config, lake=lake, users=users, summaries=summaries)


def test_delta_gold_read_back_with_delta_rs(mini: Any) -> None:
    table = DeltaTable(mini.lake.uri("gold/by_nationality"))
    rows = table.to_pyarrow_table().to_pylist()
    expected: dict[str, list[int]] = {}
    for u in mini.users:
        expected.setdefault(u["nationality"], [0, 0])
        expected[u["nationality"]][0] += 1
        expected[u["nationality"]][1] += u["age"]
    assert {r["nationality"]: [r["users"], r["total_age"]] for r in rows} == expected
    assert table.metadata().partition_columns == ["nationality"]
    lineage = json.loads(table.history(1)[0]["userMetadata"])
    assert lineage["raw2gold_run_id"] == "run1"
    assert lineage["processed"]["users"]["last_raw_runs"] == ["r1"]
    assert lineage["checks"] == [{"table": "by_nationality", "check": "row_count", "passed": True}]
    record = mini.lake.read_json("_state/runs/run1/publish.json")
    assert record["status"] == "succeeded"
    assert record["lineage"]["processed"]["users"]["last_raw_runs"] == ["r1"]


def test_parquet_pointer_publish(spark: Any, mini: Any) -> None:
    pointer = current_pointer(mini.lake, "ages")
    assert pointer is not None
    assert pointer["version"] == "run1" and pointer["path"] == "gold/ages/version=run1"
    assert pointer["versions"] == ["run1"]
    assert [(e["run_id"], e["rows"]) for e in publish_history(mini.config, "ages")] == [
        ("run1", len(mini.users))
    ]
    delta_history = publish_history(mini.config, "by_nationality")
    assert [(e["version"], e["run_id"]) for e in delta_history] == [(0, "run1")]
    arrow = gold_arrow_table(mini.config, "ages")
    assert sorted(arrow.column("id").to_pylist()) == [u["id"] for u in mini.users]
    assert read_gold(spark, mini.config, "ages").count() == len(mini.users)


def test_publishing_the_same_run_twice_changes_nothing(spark: Any, mini: Any) -> None:
    gold = Path(mini.lake.path("gold"))
    before = tree_digest(gold)
    results = publish(spark, mini.config, "run1")
    assert {r.action for r in results} == {"already_published"}
    assert tree_digest(gold) == before


def test_failed_check_leaves_gold_byte_for_byte_unchanged(
    spark: Any, mini: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    gold = Path(mini.lake.path("gold"))
    before = tree_digest(gold)
    bad_user = {**mini.users[0], "age": 250, "updated_at": ts(9, 1)}
    write_raw_run(mini.lake, "faker", "r2", {"users": [bad_user]}, datetime(2026, 1, 9, tzinfo=UTC))
    run_stage(mini.config, "transform", "run2", spark=spark)

    # The job entry point (in-process; it reuses the active session and leaves it running).
    code = main(
        ["--pipeline", str(mini.base / "pipeline.yaml"), "--stage", "check", "--run-id", "run2"]
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert "raw2gold: check expression(age < 200) on ages failed: 1 failing row(s)" in err
    summary_line = [line for line in out.splitlines() if line.startswith("RAW2GOLD_SUMMARY ")]
    summary = json.loads(summary_line[-1].removeprefix("RAW2GOLD_SUMMARY "))
    assert summary["status"] == "failed"
    assert summary["final"] is True  # the run's data fails it again: its task is not retried
    failed = [c for c in summary["checks"] if not c["passed"]]
    assert [(c["table"], c["failing_rows"]) for c in failed] == [("ages", 1)]
    assert failed[0]["sample"][0]["age"] == 250
    assert mini.lake.read_json("_state/runs/run2/check.json")["status"] == "failed"

    with pytest.raises(StageError, match="no passed check stage") as refused:
        run_stage(mini.config, "publish", "run2", spark=spark)
    assert refused.value.summary["final"] is True
    with pytest.raises(PublishError):
        publish(spark, mini.config, "run2")
    assert tree_digest(gold) == before


def test_job_reports_a_bad_pipeline_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--pipeline", "/nonexistent/pipeline.yaml", "--stage", "check", "--run-id", "x"])
    _, err = capsys.readouterr()
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("raw2gold: /nonexistent/pipeline.yaml")


def test_parquet_keeps_the_newest_versions(spark: Any, mini: Any, tmp_path: Path) -> None:
    from raw2gold.config.models import LakeConfig
    from raw2gold.publish.publisher import KEEP_VERSIONS, _publish_parquet

    config = mini.config.model_copy(update={"lake": LakeConfig(uri=str(tmp_path / "lake"))})
    lake = Lake(config.lake)
    runs = ["a1", "a2", "a3", "a4"]
    for index, run in enumerate(runs):
        df = spark.range(index + 1).selectExpr("id", "'x' AS email", "1 AS age")
        assert _publish_parquet(config, lake, "ages", run, df, {"rows": index + 1}) == (
            "published",
            run,
            index + 1,
        )
    # a retry finds its version and reads the rows from its files, also after a later publish
    assert _publish_parquet(config, lake, "ages", "a4", df, {}) == ("already_published", "a4", 4)
    assert _publish_parquet(config, lake, "ages", "a3", df, {}) == ("already_published", "a3", 3)
    pointer = current_pointer(lake, "ages")
    assert pointer is not None and pointer["version"] == "a4"
    assert pointer["lineage"]["publish_number"] == 4  # the table's fourth publish
    kept = runs[-KEEP_VERSIONS:][::-1]
    assert pointer["versions"] == kept
    assert sorted(p.name for p in (tmp_path / "lake/gold/ages").glob("version=*")) == sorted(
        f"version={r}" for r in kept
    )
    assert gold_arrow_table(config, "ages").num_rows == 4
    assert [e["run_id"] for e in publish_history(config, "ages")] == kept
