"""Each check type on a small in-memory table: what passes, what fails, and the sample."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from raw2gold.config.models import CheckConfig
from raw2gold.quality.checks import (
    CheckFailed,
    CheckResult,
    CheckScope,
    enforce,
    failure_message,
    run_checks,
)


@pytest.fixture(scope="module")
def tables(spark: Any) -> dict[str, Any]:
    orders = spark.createDataFrame(
        [(i, i % 4 if i != 7 else 99, "ok" if i % 5 else "bad", float(i)) for i in range(1, 11)]
        + [(10, 1, None, -1.0)],
        "id bigint, customer bigint, status string, amount double",
    ).cache()
    customers = spark.createDataFrame([(0,), (1,), (2,), (3,)], "id bigint")
    return {"orders": orders, "customers": customers}


def test_every_check_type(spark: Any, tables: dict[str, Any]) -> None:
    checks = [
        CheckConfig(type="not_null", columns=["id", "status"]),
        CheckConfig(type="unique", columns=["id"]),
        CheckConfig(type="accepted_values", columns=["status"], values=["ok"], severity="warn"),
        CheckConfig(type="relationships", columns=["customer"], to="customers.id"),
        CheckConfig(type="row_count", min=1, max=5),
        CheckConfig(type="row_count", min=1),
        CheckConfig(type="expression", expression="amount >= 0"),
        CheckConfig(type="sql", sql="SELECT * FROM {{ ref('orders') }} WHERE amount > 8"),
        CheckConfig(type="expression", expression="no_such_column > 0"),
    ]
    results = run_checks(spark, "orders", tables["orders"], checks, tables.__getitem__)
    got = {(r.check, r.passed, r.failing_rows) for r in results}
    assert got == {
        ("not_null(id,status)", False, 1),
        ("unique(id)", False, 2),
        ("accepted_values(status)", False, 2),
        ("relationships(customer)", False, 1),
        ("row_count", False, 11),
        ("row_count", True, 0),
        ("expression(amount >= 0)", False, 1),
        ("sql", False, 2),
        ("expression(no_such_column > 0)", False, -1),
    }
    by_check = {r.check: r for r in results}
    assert by_check["relationships(customer)"].sample == [
        {"id": 7, "customer": 99, "status": "ok", "amount": 7.0}
    ]
    assert by_check["unique(id)"].sample == [{"id": 10, "_count": 2}]
    assert len(by_check["sql"].sample) == 2
    assert by_check["expression(no_such_column > 0)"].message.startswith("check could not run")

    with pytest.raises(CheckFailed) as failure:
        enforce(results)
    assert str(failure.value) == (
        "check not_null(id,status) on orders failed: 1 failing row(s) (+6 more failed checks)"
    )


def test_row_checks_on_the_same_rows_are_one_pass(spark: Any, tables: dict[str, Any]) -> None:
    """not_null, accepted_values and expression over the same rows are counted by one query:
    three passing row checks start as many Spark jobs as one of them does."""
    sc = spark.sparkContext

    def jobs(label: str, checks: list[CheckConfig]) -> tuple[list[bool], int]:
        sc.setJobGroup(label, label)
        try:
            results = run_checks(spark, "orders", tables["orders"], checks, tables.__getitem__)
        finally:
            sc.setJobGroup("", "")
        return [r.passed for r in results], len(sc.statusTracker().getJobIdsForGroup(label))

    one = [CheckConfig(type="not_null", columns=["id"])]
    three = [
        *one,
        CheckConfig(type="accepted_values", columns=["customer"], values=[0, 1, 2, 3, 99]),
        CheckConfig(type="expression", expression="amount >= -1"),
    ]
    passed_one, jobs_one = jobs("one-row-check", one)
    passed_three, jobs_three = jobs("three-row-checks", three)
    assert passed_one == [True] and passed_three == [True, True, True]
    # (at most: under load the first measurement can count a job a lazily warmed part of the
    # session starts; three checks in separate queries would take three times as many)
    assert jobs_three <= jobs_one


def test_warn_failures_do_not_stop_the_stage(spark: Any, tables: dict[str, Any]) -> None:
    checks = [
        CheckConfig(type="accepted_values", columns=["status"], values=["ok"], severity="warn"),
        CheckConfig(type="not_null", columns=["id"]),
    ]
    results = run_checks(spark, "orders", tables["orders"], checks, tables.__getitem__)
    assert [r.passed for r in results] == [False, True]
    assert len(results[0].sample) == 2
    enforce(results)


def test_row_count_change_against_the_previous_version(spark: Any, tables: dict[str, Any]) -> None:
    orders = tables["orders"]  # 11 rows
    checks = [
        CheckConfig(type="row_count", max_change_percent=50),
        CheckConfig(type="row_count", max_change_percent=5, severity="warn"),
    ]
    previous = CheckScope(previous_rows=lambda: 8)  # 11 vs 8 rows: 37.5 % more
    results = run_checks(spark, "orders", orders, checks, tables.__getitem__, previous)
    assert [r.passed for r in results] == [True, False]
    assert "37.5% change vs previous 8 rows (over 5%)" in results[1].message
    assert results[1].sample == [{"row_count": 11, "previous_row_count": 8, "change_percent": 37.5}]
    first = run_checks(spark, "orders", orders, checks[:1], tables.__getitem__, CheckScope())
    assert first[0].passed and "no previous version" in first[0].message


def test_freshness_of_the_newest_value(spark: Any) -> None:
    now = datetime.now(UTC)
    events = spark.createDataFrame(
        [(1, now - timedelta(hours=30)), (2, now - timedelta(hours=2))], "id int, at timestamp"
    )
    stale = events.where("id = 1")
    empty = events.where("id = 0")
    check = CheckConfig(type="freshness", columns=["at"], max_age_hours=6)
    fresh, old, none = (
        run_checks(spark, "events", df, [check], {}.__getitem__)[0] for df in (events, stale, empty)
    )
    assert fresh.passed and fresh.message.startswith("newest at is 2.0 h old (max 6 h)")
    assert not old.passed and old.message == "newest at is 30.0 h old (max 6 h)"
    assert old.sample[0]["age_hours"] == pytest.approx(30, abs=0.1)
    assert not none.passed and none.message == "no at value: the table is empty"


def test_an_incremental_build_checks_only_what_its_rebuilt_groups_can_break(
    spark: Any, tables: dict[str, Any]
) -> None:
    """The rows outside the rebuilt groups were published after passing the same checks: row
    checks, unique on columns that include the groups' columns, and relationships to a table
    that only gained rows read just the rebuilt rows; the rest still reads the whole table."""
    orders = tables["orders"]
    rebuilt = orders.where("customer = 1")  # ids 1, 5, 9 and the extra (10, 1, NULL, -1.0)
    checks = [
        CheckConfig(type="not_null", columns=["status"]),
        CheckConfig(type="accepted_values", columns=["status"], values=["ok"]),
        CheckConfig(type="expression", expression="amount >= 0"),
        CheckConfig(type="unique", columns=["customer", "id"]),
        CheckConfig(type="unique", columns=["id"]),  # not per group: the whole table
        CheckConfig(type="relationships", columns=["customer"], to="customers.id"),
        CheckConfig(type="row_count", max_change_percent=10),
    ]
    scope = CheckScope(
        rows=lambda: 42,
        previous_rows=lambda: 40,
        changed=rebuilt,
        group_by=("customer",),
        stable=frozenset({"customers"}),
    )
    results = run_checks(spark, "orders", orders, checks, tables.__getitem__, scope=scope)
    got = [(r.check, r.passed, r.failing_rows) for r in results]
    assert got == [
        ("not_null(status)", False, 1),
        ("accepted_values(status)", False, 1),  # id 10 'bad' is outside: published before
        ("expression(amount >= 0)", False, 1),
        ("unique(customer,id)", True, 0),
        ("unique(id)", False, 2),
        ("relationships(customer)", True, 0),  # the orphan (customer 99) was published before
        ("row_count", True, 0),
    ]
    assert results[1].sample == [{"id": 5, "customer": 1, "status": "bad", "amount": 5.0}]
    assert "rebuilt groups checked" in results[0].message
    assert "rebuilt groups checked" not in results[4].message
    assert "42" in results[6].message and "5.0% change vs previous 40 rows" in results[6].message

    # a relationships target that may have lost rows is checked in full
    unstable = CheckScope(changed=rebuilt, group_by=("customer",))
    orphan = run_checks(spark, "orders", orders, checks[5:6], tables.__getitem__, scope=unstable)
    assert (orphan[0].passed, orphan[0].failing_rows) == (False, 1)


def test_a_failed_whole_table_check_says_what_it_measured() -> None:
    """A row_count or freshness failure is about the table, not rows: the run's error said
    "check row_count on top_products failed: 10 failing row(s)" for 10 rows over a max of 3."""
    rows = CheckResult(
        "top", "row_count", "row_count", "error", False, 10, [], "row count 10 outside [1, 3]"
    )
    fresh = CheckResult(
        "orders",
        "freshness(at)",
        "freshness",
        "error",
        False,
        1,
        [],
        "newest at is 30.0 h old (max 24 h)",
    )
    broken = CheckResult(
        "orders",
        "expression(nope > 0)",
        "expression",
        "error",
        False,
        -1,
        [],
        "check could not run: [UNRESOLVED_COLUMN] `nope` cannot be resolved.",
    )
    assert failure_message([rows]) == "check row_count on top failed: row count 10 outside [1, 3]"
    assert failure_message([fresh, rows]) == (
        "check freshness(at) on orders failed: newest at is 30.0 h old (max 24 h) "
        "(+1 more failed checks)"
    )
    assert failure_message([broken]) == (
        "check expression(nope > 0) on orders failed: could not run: "
        "[UNRESOLVED_COLUMN] `nope` cannot be resolved."
    )
