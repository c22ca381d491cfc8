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
from raw2gold.transform.job import STAGES, StageError, run_stage
from tests.transform.rawdata import shop_records, ts, users_pipeline, write_raw_run

PIPELINE = users_pipeline(
    "modes",
    """
  user_emails:
    sql: latest.sql
    format: delta
    mode: merge
    keys: [id]
    checks:
      - {type: row_count, min: 30}
      - {type: unique, columns: [email]}
  users_per_nationality:
    sql: per_nationality.sql
    format: delta
    mode: replace_partitions
    partition_by: [nationality]
    checks:
      - {type: row_count, min: 3}
  totals:
    sql: totals.sql
    format: delta
""",
)
# A model reading both: it must see them as their publish leaves them (all rows), not only the
# rows this run's build of them produced.
TOTALS = (
    "SELECT (SELECT COUNT(*) FROM {{ ref('user_emails') }}) AS emails, "
    "(SELECT SUM(users) FROM {{ ref('users_per_nationality') }}) AS users"
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
    (tmp_path / "totals.sql").write_text(TOTALS)
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
    # Read by another model, counted by checks and history: the whole tables (31 rows, and
    # the users of every partition), not the 4 rows run 2 built (checks min 30 and min 3 pass).
    totals = gold_arrow_table(config, "totals").to_pylist()
    assert totals == [{"emails": len(expected), "users": sum(u for u, _ in counts.values())}]
    assert publish_history(config, "user_emails")[0]["rows"] == len(expected) == 31
    assert publish_history(config, "users_per_nationality")[0]["rows"] == len(counts)


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


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("latest.sql", "SELECT id % 5 AS id, email FROM {{ ref('users') }}"),
            "gold user_emails: mode merge needs one row per key (id), but 25 row(s) repeat a key "
            "(e.g. id=",
        ),
        (
            ("latest.sql", "SELECT IF(id = 3, NULL, id) AS id, email FROM {{ ref('users') }}"),
            "gold user_emails: mode merge needs a key in every row, but 1 row(s) have a NULL in "
            "id (a NULL key never matches: such a row would be added again every run)",
        ),
        (
            ("latest.sql", "SELECT id AS user_id, email FROM {{ ref('users') }}"),
            "gold user_emails: keys names id, which the model's output does not have (its "
            "columns: user_id, email); fix gold.user_emails.keys in pipeline.yaml or the model",
        ),
        (
            ("per_nationality.sql", "SELECT COUNT(*) AS users FROM {{ ref('users') }}"),
            "gold users_per_nationality: partition_by names nationality, which the model's "
            "output does not have (its columns: users)",
        ),
    ],
)
def test_a_model_its_publish_mode_cannot_take_stops_at_its_build(
    tmp_path: Path, spark: Any, change: tuple[str, str], message: str
) -> None:
    """Keys and partitions a model does not output, and repeated or NULL merge keys, stop the
    build with one line: they failed at publish after the checks, or (a first publish, NULL
    keys) published rows the next MERGE fails on or adds again."""
    (tmp_path / "pipeline.yaml").write_text(PIPELINE)
    (tmp_path / "latest.sql").write_text("SELECT id, email FROM {{ ref('users') }}")
    (tmp_path / "per_nationality.sql").write_text(
        "SELECT nationality, COUNT(*) AS users FROM {{ ref('users') }} GROUP BY nationality"
    )
    (tmp_path / "totals.sql").write_text(TOTALS)
    name, body = change
    (tmp_path / name).write_text(body)
    config = load_pipeline(tmp_path / "pipeline.yaml")
    users = shop_records(users=30)["users"]
    write_raw_run(
        Lake(config.lake), "faker", "r1", {"users": users}, datetime(2026, 4, 1, tzinfo=UTC)
    )
    run_stage(config, "processed", "run1", spark=spark)
    model = "user_emails" if name == "latest.sql" else "users_per_nationality"
    with pytest.raises(StageError) as caught:
        run_stage(config, "gold", "run1", spark=spark, tables=[model])
    assert str(caught.value).startswith(message)


def test_a_model_switched_to_the_other_format_stops_until_its_folder_is_cleared(
    tmp_path: Path, spark: Any
) -> None:
    """Published as Delta, then format: parquet: the Parquet versions and pointer went into the
    Delta table's folder, and Delta readers went on reading the old table (the other way round
    likewise). The build now stops first; once the folder is deleted, the run rebuilds it."""
    import shutil

    from tests.publish.digest import tree_digest

    text = users_pipeline("switch", "  ages:\n    sql: ages.sql\n    format: delta\n")
    (tmp_path / "pipeline.yaml").write_text(text)
    (tmp_path / "ages.sql").write_text("SELECT id, age FROM {{ ref('users') }}")
    config = load_pipeline(tmp_path / "pipeline.yaml")
    lake = Lake(config.lake)
    users = shop_records(users=5)["users"]
    write_raw_run(lake, "faker", "r1", {"users": users}, datetime(2026, 5, 1, tzinfo=UTC))
    _run(config, "run1", spark)
    folder = tmp_path / "lake" / "gold" / "ages"
    for before, after in (("delta", "parquet"), ("parquet", "delta")):
        (tmp_path / "pipeline.yaml").write_text(
            text.replace(f"format: {before}", f"format: {after}")
        )
        config = load_pipeline(tmp_path / "pipeline.yaml")
        digest = tree_digest(folder)
        with pytest.raises(StageError) as caught:
            run_stage(config, "transform", f"to-{after}", spark=spark)
        assert str(caught.value) == (
            f"gold ages: {folder} holds the table as format: {before} published it, and the "
            f"model now says format: {after}; to switch, delete that folder (the next run "
            f"rebuilds the table from processed), or keep format: {before}"
        )
        assert tree_digest(folder) == digest
        shutil.rmtree(folder)
        _run(config, f"to-{after}-again", spark)
        assert sorted(r["id"] for r in gold_arrow_table(config, "ages").to_pylist()) == sorted(
            u["id"] for u in users
        )


def test_a_merge_model_rekeyed_or_repartitioned_stops_until_its_folder_is_moved(
    tmp_path: Path, spark: Any
) -> None:
    """A merge model's keys changed from [id] to [email] MERGEd by email into rows merged by id:
    a user whose email changed kept the old row beside the new one. A replace_partitions
    model's new partition_by failed every publish (Delta keeps a table's partitioning). The
    build now stops with one line and gold stays as it was; keys that keep every old key
    column merge as before, and once the folder is moved aside the next run builds it anew."""
    import shutil

    from tests.publish.digest import tree_digest

    text = PIPELINE.replace("  totals:\n    sql: totals.sql\n    format: delta\n", "")
    (tmp_path / "pipeline.yaml").write_text(text)
    (tmp_path / "latest.sql").write_text("SELECT id, email, age FROM {{ ref('users') }}")
    (tmp_path / "per_nationality.sql").write_text(
        "SELECT nationality, age >= 40 AS older, COUNT(*) AS users FROM {{ ref('users') }} "
        "GROUP BY nationality, age >= 40"
    )
    config = load_pipeline(tmp_path / "pipeline.yaml")
    lake = Lake(config.lake)
    users = shop_records(users=30)["users"]
    write_raw_run(lake, "faker", "r1", {"users": users}, datetime(2026, 4, 1, tzinfo=UTC))
    _run(config, "run1", spark)
    moved = [{**users[0], "email": "moved@example.com", "updated_at": ts(9, 1)}]
    write_raw_run(lake, "faker", "r2", {"users": moved}, datetime(2026, 4, 2, tzinfo=UTC))
    gold = tmp_path / "lake" / "gold"

    def edited(old: str, new: str) -> Any:
        path = tmp_path / "pipeline.yaml"
        path.write_text(path.read_text().replace(old, new))
        return load_pipeline(tmp_path / "pipeline.yaml")

    digest = tree_digest(gold)
    config = edited("keys: [id]", "keys: [email]")
    run_stage(config, "processed", "run2", spark=spark)
    with pytest.raises(StageError) as caught:
        run_stage(config, "gold", "run2", spark=spark, tables=["user_emails"])
    assert str(caught.value) == (
        "gold user_emails: keys changed from [id] to [email] since run run1 published the "
        "table, which its mode cannot apply to the rows it holds; to re-key it, move "
        f"{gold / 'user_emails'} aside (the next run builds the table anew from the model's "
        "output), or set gold.user_emails.keys back to [id]"
    )
    assert tree_digest(gold) == digest

    # Rows unique by id are unique by (id, email): merged by both, the moved email is a new row.
    config = edited("keys: [email]", "keys: [id, email]")
    _run(config, "run3", spark)
    pairs = [(r["id"], r["email"]) for r in gold_arrow_table(config, "user_emails").to_pylist()]
    assert sorted(pairs) == sorted([(u["id"], u["email"]) for u in users + moved])

    config = edited("partition_by: [nationality]", "partition_by: [nationality, older]")
    digest = tree_digest(gold)
    with pytest.raises(StageError) as caught:
        run_stage(config, "transform", "run4", spark=spark)
    assert str(caught.value).startswith(
        "gold users_per_nationality: partition_by changed from [nationality] to [nationality, "
        "older] since run run3 published the table"
    )
    assert tree_digest(gold) == digest
    shutil.move(gold / "users_per_nationality", tmp_path / "aside")
    _run(config, "run5", spark)
    assert sorted(p.name for p in (gold / "users_per_nationality").glob("nationality=ES/*")) == [
        "older=false",
        "older=true",
    ]
    counts = gold_arrow_table(config, "users_per_nationality").to_pylist()
    assert sum(r["users"] for r in counts) == 30
