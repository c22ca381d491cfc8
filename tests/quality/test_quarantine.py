"""Grouping quarantined rows by problem: a reason without the value that failed.

The command on a quarantine Spark wrote: tests/transform/test_shop_stages.py."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from raw2gold.config.loader import load_pipeline
from raw2gold.publish.publisher import PublishError
from raw2gold.quality.quarantine import NEXT_REASON, problem_of, read_quarantine
from raw2gold.transform.processed import EPOCH_HINT


def test_a_reason_loses_its_value_so_rows_that_failed_alike_group_together() -> None:
    assert problem_of("column age: cannot cast abc to int") == "column age: cannot cast to int"
    # a value holding " to " or "; " is still the value
    assert (
        problem_of("column note: cannot cast 1 to 2 to decimal(12,2)")
        == "column note: cannot cast to decimal(12,2)"
    )
    joined = "column a: cannot cast x; y to int; primary key id is null"
    assert NEXT_REASON.split(joined) == [
        "column a: cannot cast x; y to int",
        "primary key id is null",
    ]
    assert problem_of("primary key id is null") == "primary key id is null"
    epoch = f"column seen_at: cannot cast 1767225600000 to timestamp{EPOCH_HINT}"
    assert problem_of(epoch) == (
        "column seen_at: cannot cast to timestamp (a number outside years 1 to 9999: epoch "
        "milliseconds?)"
    )


def test_rows_are_counted_per_problem_and_raw_run(tmp_path: Path, shop_pipeline: Path) -> None:
    """A quarantine table shaped as processed writes it (here with delta-rs): two rows with
    the same bad value, one with another, one with two reasons; --run keeps one raw run."""
    config = load_pipeline(shop_pipeline, str(tmp_path / "lake"))
    reasons = [
        ("r1", "column age: cannot cast abc to int"),
        ("r1", "column age: cannot cast abc to int"),
        ("r2", "column age: cannot cast 1.5 to int"),
        ("r2", "column age: cannot cast x to int; primary key id is null"),
    ]
    write_deltalake(
        str(tmp_path / "lake" / "quarantine" / "users"),
        pa.table(
            {
                "table": ["users"] * 4,
                "raw_run_id": [r for r, _ in reasons],
                "_airbyte_raw_id": [f"id{i}" for i in range(4)],
                "reason": [reason for _, reason in reasons],
                "record": ['{"age": "abc"}'] * 4,
                "quarantined_by_run": [r for r, _ in reasons],
            }
        ),
    )
    report = read_quarantine(config, "users", limit=2)
    assert report.rows == 4 and len(report.sample) == 2
    assert [(p.problem, p.rows, sorted(p.raw_runs)) for p in report.problems] == [
        ("column age: cannot cast to int", 4, ["r1", "r2"]),
        ("primary key id is null", 1, ["r2"]),
    ]
    only = read_quarantine(config, "users", run="r1")
    assert only.rows == 2 and [p.rows for p in only.problems] == [2]
    assert read_quarantine(config, "products").rows == 0  # no quarantine table at all


def test_a_damaged_quarantine_log_is_one_line_naming_its_folder(
    tmp_path: Path, shop_pipeline: Path
) -> None:
    """As for gold tables (tests/publish/test_gold_read_errors.py): delta-rs's error becomes one
    line naming the table and its log's folder, with what to check."""
    config = load_pipeline(shop_pipeline, str(tmp_path / "lake"))
    table = tmp_path / "lake" / "quarantine" / "users"
    write_deltalake(str(table), pa.table({"raw_run_id": ["r1"], "reason": ["x"]}))
    (table / "_delta_log" / "00000000000000000000.json").write_text('{"commitInfo": {\n')
    with pytest.raises(PublishError) as caught:
        read_quarantine(config, "users")
    assert str(caught.value).startswith(
        f"quarantine of processed users: its Delta log {table}/_delta_log cannot be read ("
    )
