"""Data quality checks of pipeline.yaml, run on processed tables and on staged gold.

Each check turns into a DataFrame of offending rows; its count and up to five sample rows make
the :class:`CheckResult`. ``error`` failures stop the stage (:func:`enforce`); ``warn`` failures
are only reported.
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from raw2gold.config.loader import REF_IN_SQL
from raw2gold.config.models import CheckConfig
from raw2gold.errors import Raw2GoldError, first_line
from raw2gold.transform.delta import sql_literal

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

SAMPLE_SIZE = 5
# Checks that look at each row on its own: on an incremental build, the rebuilt rows suffice.
ROW_CHECKS = ("not_null", "accepted_values", "expression")


@dataclass
class CheckScope:
    """What a table's checks may take as known instead of reading the whole table.

    ``rows`` gives the table's row count without a scan (the Delta log, a build record), and
    ``previous_rows`` the previous version's (None: there is none), which ``row_count``'s
    ``max_change_percent`` compares with;
    ``changed`` is an incremental build's rebuilt rows: the rest of the table was published
    after passing the same checks (its model and checks are unchanged), so row checks,
    ``unique`` on columns that include every ``group_by`` column, and ``relationships`` to a
    ``stable`` table (one that only gained or updated rows since) need only those rows.
    """

    rows: Callable[[], int] | None = None
    previous_rows: Callable[[], int | None] | None = None
    changed: DataFrame | None = None
    group_by: tuple[str, ...] = ()
    stable: frozenset[str] = frozenset()

    def rows_to_check(self, check: CheckConfig) -> DataFrame | None:
        """The rebuilt rows when they suffice for `check`, else None (the whole table)."""
        if self.changed is None:
            return None
        if check.type in ROW_CHECKS:
            return self.changed
        if check.type == "unique" and set(self.group_by) <= set(check.columns):
            return self.changed
        if check.type == "relationships" and (check.to or "").partition(".")[0] in self.stable:
            return self.changed
        return None


class CheckFailed(Raw2GoldError):
    """An error-severity check failed; ``results`` holds every result of the stage. Final: the
    run's data fails it on every try."""

    final = True

    def __init__(self, message: str, results: list[CheckResult]):
        super().__init__(message)
        self.results = results


@dataclass
class CheckResult:
    """The outcome of one check on one table."""

    table: str
    check: str
    type: str
    severity: str
    passed: bool
    failing_rows: int
    sample: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def row_violation(check: CheckConfig) -> Column | None:
    """For a check of each row on its own (ROW_CHECKS): the condition a violating row meets."""
    from pyspark.sql import functions as F

    cols = [F.col(f"`{c}`") for c in check.columns]
    if check.type == "not_null":
        condition = cols[0].isNull()
        for col in cols[1:]:
            condition = condition | col.isNull()
        return condition
    if check.type == "accepted_values":
        values = ", ".join(sql_literal(v) for v in check.values)
        return cols[0].isNotNull() & ~F.expr(f"`{check.columns[0]}` IN ({values})")
    if check.type == "expression":
        return ~F.coalesce(F.expr(f"({check.expression})"), F.lit(False))
    return None


def _row_check_counts(df: DataFrame, checks: list[CheckConfig]) -> list[int] | None:
    """The violating rows of several row checks, counted in one pass over `df`; None when
    that query fails (each check then runs, and fails, on its own with its message)."""
    from pyspark.sql import functions as F

    counts = []
    for check in checks:
        violates = row_violation(check)
        assert violates is not None
        counts.append(F.count(F.when(violates, F.lit(1))))
    try:
        row = df.agg(*counts).collect()[0]
    except Exception:
        return None
    return [int(row[i]) for i in range(len(checks))]


def offending_rows(
    spark: SparkSession,
    table: str,
    df: DataFrame,
    check: CheckConfig,
    ref: Callable[[str], DataFrame],
) -> DataFrame | None:
    """The rows violating a check (None for row_count, which is about the whole table)."""
    from pyspark.sql import functions as F

    cols = [F.col(f"`{c}`") for c in check.columns]
    violates = row_violation(check)
    if violates is not None:
        return df.where(violates)
    if check.type == "unique":
        keyed = df
        for col in cols:
            keyed = keyed.where(col.isNotNull())
        return keyed.groupBy(*cols).agg(F.count(F.lit(1)).alias("_count")).where("_count > 1")
    if check.type == "relationships":
        assert check.to is not None
        target_table, _, target_column = check.to.partition(".")
        keys = ref(target_table).select(F.col(f"`{target_column}`").alias("_r2g_key"))
        return df.where(cols[0].isNotNull()).join(keys, cols[0] == F.col("_r2g_key"), "left_anti")
    if check.type == "sql":
        assert check.sql is not None
        view = f"__r2g_check_{table}"
        df.createOrReplaceTempView(view)

        def replace(match: Any) -> str:
            name = match.group(1)
            if name == table:
                return view
            ref_view = f"__r2g_ref_{name}"
            ref(name).createOrReplaceTempView(ref_view)
            return ref_view

        return spark.sql(REF_IN_SQL.sub(replace, check.sql.strip().rstrip(";")))
    return None


def _row_count(table: str, df: DataFrame, check: CheckConfig, scope: CheckScope) -> CheckResult:
    count = scope.rows() if scope.rows else df.count()
    low = check.min if check.min is not None else 0
    high = check.max
    passed = count >= low and (high is None or count <= high)
    bounds = f"[{low}, {'inf' if high is None else high}]"
    message = f"row count {count} {'within' if passed else 'outside'} {bounds}"
    sample: dict[str, Any] = {"row_count": count}
    if check.max_change_percent is not None:
        before_rows = scope.previous_rows() if scope.previous_rows else None
        if before_rows is None:
            message += "; no previous version to compare"
        else:
            before = before_rows
            change = abs(count - before) * 100.0 / before if before else (100.0 if count else 0.0)
            within = change <= check.max_change_percent
            passed = passed and within
            sample.update(previous_row_count=before, change_percent=round(change, 2))
            message += (
                f"; {change:.1f}% change vs previous {before} rows "
                f"({'within' if within else 'over'} {check.max_change_percent:g}%)"
            )
    return CheckResult(
        table,
        check.label,
        check.type,
        check.severity,
        passed,
        0 if passed else count,
        [] if passed else [sample],
        message,
    )


def _freshness(table: str, df: DataFrame, check: CheckConfig) -> CheckResult:
    """The newest value of the column must be at most max_age_hours old."""
    from pyspark.sql import functions as F

    assert check.max_age_hours is not None
    column = check.columns[0]
    row = df.agg(
        F.max(F.col(f"`{column}`")).alias("newest"),
        F.max(F.col(f"`{column}`").cast("timestamp").cast("double")).alias("epoch"),
    ).collect()[0]
    limit = check.max_age_hours
    if row["epoch"] is None:
        passed, message, sample = False, f"no {column} value: the table is empty", []
    else:
        age = (dt.datetime.now(dt.UTC).timestamp() - float(row["epoch"])) / 3600
        passed = age <= limit
        message = f"newest {column} is {age:.1f} h old (max {limit:g} h)"
        sample = [] if passed else [{column: _json_safe(row["newest"]), "age_hours": round(age, 2)}]
    return CheckResult(
        table, check.label, check.type, check.severity, passed, 0 if passed else 1, sample, message
    )


def run_check(
    spark: SparkSession,
    table: str,
    df: DataFrame,
    check: CheckConfig,
    ref: Callable[[str], DataFrame],
    scope: CheckScope | None = None,
    failing: int | None = None,
) -> CheckResult:
    """Run one check; a check that cannot run (bad SQL, unknown column) fails with a message.

    ``scope``: what is known without reading the whole table; ``failing``: the violating rows
    when already counted (the offending rows are then read only for a sample).
    """
    label = check.label
    scope = scope or CheckScope()
    try:
        if check.type == "row_count":
            return _row_count(table, df, check, scope)
        if check.type == "freshness":
            return _freshness(table, df, check)
        rebuilt = scope.rows_to_check(check)
        bad = offending_rows(spark, table, df if rebuilt is None else rebuilt, check, ref)
        assert bad is not None
        if failing is None:
            failing = bad.count()
        if check.type == "unique" and failing:
            failing = int(bad.agg({"_count": "sum"}).collect()[0][0])
        sample = (
            [_json_safe(r.asDict(recursive=True)) for r in bad.limit(SAMPLE_SIZE).collect()]
            if failing
            else []
        )
        return CheckResult(
            table,
            label,
            check.type,
            check.severity,
            failing == 0,
            failing,
            sample,
            ("" if failing == 0 else f"{failing} offending row(s)")
            + ("" if rebuilt is None else f"{'; ' if failing else ''}rebuilt groups checked"),
        )
    except Exception as exc:
        first = first_line(exc)
        return CheckResult(
            table, label, check.type, check.severity, False, -1, [], f"check could not run: {first}"
        )


def run_checks(
    spark: SparkSession,
    table: str,
    df: DataFrame,
    checks: list[CheckConfig],
    ref: Callable[[str], DataFrame],
    scope: CheckScope | None = None,
) -> list[CheckResult]:
    """Run a table's checks; log every failure with its sample.

    The row checks (not_null, accepted_values, expression) that read the same rows are counted
    together, in one pass.
    """
    scope = scope or CheckScope()
    counted: dict[int, int] = {}
    rows_read: dict[int, tuple[DataFrame, list[int]]] = {}
    for index, check in enumerate(checks):
        if check.type in ROW_CHECKS:
            target = scope.rows_to_check(check)
            source = df if target is None else target
            rows_read.setdefault(id(source), (source, []))[1].append(index)
    for source, indexes in rows_read.values():
        if len(indexes) > 1:
            counts = _row_check_counts(source, [checks[i] for i in indexes])
            counted.update(zip(indexes, counts or [], strict=False))
    results = [
        run_check(spark, table, df, check, ref, scope, counted.get(index))
        for index, check in enumerate(checks)
    ]
    for result in results:
        if not result.passed:
            level = logging.ERROR if result.severity == "error" else logging.WARNING
            log.log(
                level,
                "check %s on %s failed (%s): %s; sample: %s",
                result.check,
                result.table,
                result.severity,
                result.message,
                result.sample,
            )
    return results


# checks about the table as a whole: their failing_rows is no count of offending rows
WHOLE_TABLE_CHECKS = ("row_count", "freshness")


def failure_message(results: list[CheckResult]) -> str | None:
    """One line naming the error-severity failures, or None when none failed."""
    failed = [r for r in results if r.severity == "error" and not r.passed]
    if not failed:
        return None
    first = failed[0]
    if first.failing_rows < 0 or first.type in WHOLE_TABLE_CHECKS:
        # "could not run: [UNRESOLVED_COLUMN…] …", "row count 10 outside [1, 3]"
        detail = first.message.removeprefix("check ")
    else:
        detail = f"{first.failing_rows} failing row(s)"
    more = f" (+{len(failed) - 1} more failed checks)" if len(failed) > 1 else ""
    return f"check {first.check} on {first.table} failed: {detail}{more}"


def enforce(results: list[CheckResult]) -> None:
    """Raise :class:`CheckFailed` when an error-severity check failed."""
    message = failure_message(results)
    if message:
        raise CheckFailed(message, results)
