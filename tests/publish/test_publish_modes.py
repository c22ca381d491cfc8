"""Delta gold publish modes beyond overwrite: MERGE on keys, and replacing only the partitions
a run produced. Each run's gold holds only the users its raw run brought (an incremental model)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from raw2gold.config import ConfigError, load_pipeline
from raw2gold.lake.layout import Lake
from raw2gold.publish.publisher import gold_arrow_table, publish_history
from raw2gold.transform.job import STAGES, run_stage
from tests.transform.rawdata import shop_records, ts, users_pipeline, write_raw_run

PIPELINE = users_pipeline(
    "modes",
    """
  user_emails:
    sql: latest.sql
    format: delta
    mode: merge
    keys: [id]
  users_per_nationality:
    sql: per_nationality.sql
    format: delta
    mode: replace_partitions
    partition_by: [nationality]
""",
)
LATEST_RUN = "(SELECT MAX(_raw2gold_run_id) FROM {{ ref('users') }})"


def _run(config: Any, run_id: str, spark: Any) -> None:
    for stage in STAGES:
        assert run_stage(config, stage, run_id, spark=spark)["status"] == "succeeded"


def test_merge_and_replace_partitions_keep_what_the_run_did_not_touch(
    tmp_path: Path, spark: Any
) -> None:
    (tmp_path / "pipeline.yaml").write_text(PIPELINE)
    (tmp_path / "latest.sql").write_text(
        f"SELECT id, email, age FROM {{{{ ref('users') }}}} WHERE _raw2gold_run_id = {LATEST_RUN}"
    )
    (tmp_path / "per_nationality.sql").write_text(
        "SELECT nationality, COUNT(*) AS users, SUM(age) AS total_age FROM {{ ref('users') }} "
        f"WHERE _raw2gold_run_id = {LATEST_RUN} GROUP BY nationality"
    )
    config = load_pipeline(tmp_path / "pipeline.yaml")
    lake = Lake(config.lake)
    users = shop_records(users=30)["users"]
    write_raw_run(lake, "faker", "r1", {"users": users}, datetime(2026, 4, 1, tzinfo=UTC))
    _run(config, "run1", spark)
    first_counts = {
        r["nationality"]: (r["users"], r["total_age"])
        for r in gold_arrow_table(config, "users_per_nationality").to_pylist()
    }
    assert sum(n for n, _ in first_counts.values()) == 30 and len(first_counts) == 3

    # Run 2 brings three changed users and a new one, all Spanish.
    changed = [
        {**u, "email": f"new{u['id']}@example.com", "nationality": "ES", "updated_at": ts(9, 1)}
        for u in users[:3]
    ] + [{**users[0], "id": 31, "nationality": "ES", "age": 40, "updated_at": ts(9, 2)}]
    write_raw_run(lake, "faker", "r2", {"users": changed}, datetime(2026, 4, 2, tzinfo=UTC))
    _run(config, "run2", spark)

    emails = {r["id"]: r["email"] for r in gold_arrow_table(config, "user_emails").to_pylist()}
    expected = {u["id"]: u["email"] for u in users} | {c["id"]: c["email"] for c in changed}
    assert emails == expected  # merged: 27 untouched + 3 updated + 1 inserted

    counts = {
        r["nationality"]: (r["users"], r["total_age"])
        for r in gold_arrow_table(config, "users_per_nationality").to_pylist()
    }
    assert counts["ES"] == (4, sum(c["age"] for c in changed))  # the partition run 2 produced
    for nationality in set(first_counts) - {"ES"}:
        assert counts[nationality] == first_counts[nationality]  # untouched partitions
    for table in config.gold:
        assert [e["run_id"] for e in publish_history(config, table)] == ["run2", "run1"]


def test_modes_need_their_settings(tmp_path: Path) -> None:
    bad = PIPELINE.replace("    partition_by: [nationality]\n", "").replace("    keys: [id]\n", "")
    (tmp_path / "pipeline.yaml").write_text(bad)
    (tmp_path / "latest.sql").write_text("SELECT 1 AS id")
    (tmp_path / "per_nationality.sql").write_text("SELECT 'ES' AS nationality")
    with pytest.raises(ConfigError) as caught:
        load_pipeline(tmp_path / "pipeline.yaml")
    text = "\n".join(str(p) for p in caught.value.problems)
    assert "mode merge needs format delta and keys" in text
    assert "mode replace_partitions needs format delta and partition_by" in text
