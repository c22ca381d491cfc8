"""Grouping quarantined rows by problem: a reason without the value that failed.

The report itself is read from a real quarantine table in
tests/transform/test_shop_stages.py (`raw2gold quarantine`)."""

from __future__ import annotations

from raw2gold.quality.quarantine import NEXT_REASON, problem_of
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
