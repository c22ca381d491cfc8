"""The process the orchestrator runs for a Spark stage: one SparkSession per invocation.

``python -m raw2gold.transform.job --pipeline PATH --stage {transform,check,publish,maintain}
--run-id ID [--full-refresh] [--lake URI] [--verbose]``

* transform: processed tables (MERGE) + their checks + gold into this run's staging
* check: gold checks on the staged gold
* publish: make the staged gold visible (only when the check stage passed)
* maintain: OPTIMIZE and VACUUM the Delta tables (:mod:`raw2gold.transform.maintenance`)

Each stage writes ``_state/runs/<run_id>/<stage>.json`` and prints one final line
``RAW2GOLD_SUMMARY {json}``. On failure: exit code 1 and ``raw2gold: <message>`` on stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import time
import traceback
from functools import partial
from typing import TYPE_CHECKING, Any

from raw2gold.config.loader import load_pipeline
from raw2gold.config.models import PipelineConfig
from raw2gold.errors import Raw2GoldError, first_line, is_final
from raw2gold.lake.layout import Lake, utc_now
from raw2gold.process_exit import exit_now
from raw2gold.quality.checks import (
    CheckFailed,
    CheckResult,
    CheckScope,
    enforce,
    failure_message,
    run_checks,
)
from raw2gold.transform.connect import stop_session
from raw2gold.transform.delta import log_version, table_rows
from raw2gold.transform.gold import build_gold, make_ref, prospective, staged_exists
from raw2gold.transform.parallel import in_parallel
from raw2gold.transform.processed import build_processed, read_processed

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("raw2gold.transform.job")

# A run in one process: transform (= processed + gold), check, publish. The DAG runs the same
# work as one task per layer step: processed, gold, check, publish (LAYER_STAGES).
STAGES = ("transform", "check", "publish")
LAYER_STAGES = ("processed", "gold", "check", "publish")
ALL_STAGES = ("transform", "processed", "gold", "check", "publish", "maintain")
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SUMMARY_PREFIX = "RAW2GOLD_SUMMARY "


class StageError(Raw2GoldError):
    """A stage failed; ``summary`` is what was written to the lake."""

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary


# Processed checks whose result depends only on the table's version (not on other tables or
# on the clock): reused while the table and its checks are unchanged.
REUSABLE = ("not_null", "unique", "accepted_values", "expression", "row_count")


def _checks_hash(checks: list[Any]) -> str:
    return hashlib.sha256(
        json.dumps([c.model_dump() for c in checks], default=str).encode()
    ).hexdigest()[:16]


def _processed_checks(
    spark: SparkSession,
    config: PipelineConfig,
    run_id: str,
    tables: list[str],
    before: dict[str, int],
) -> list[CheckResult]:
    """Checks of processed tables; `before`: each table's Delta version before this run.

    A table whose version was already checked (by an earlier run, with the same checks) keeps
    those results for its version-only checks instead of reading the table again. Tables are
    checked side by side (:func:`~raw2gold.transform.parallel.in_parallel`).
    """
    lake = Lake(config.lake)

    def check_table(session: SparkSession, table: str) -> list[CheckResult]:
        model = config.processed[table]
        ref = make_ref(session, config, run_id)
        relative = lake.processed_table(table)
        version = log_version(lake, relative)
        digest = _checks_hash(model.checks)
        known = lake.read_record(lake.checked_version(table)) or {}
        stored: dict[str, dict[str, Any]] = {}
        if known.get("version") == version and known.get("checks_hash") == digest:
            stored = {r["check"]: r for r in known.get("results") or []}
        note = f"version {version} checked by run {known.get('run_id')}"
        reused = {
            label: CheckResult(
                **{**old, "message": "; ".join(filter(None, [old["message"], note]))}
            )
            for label, old in stored.items()
            if old.get("type") in REUSABLE
        }
        pending = [c for c in model.checks if c.label not in reused]
        previous_version = before.get(table, -1)
        scope = CheckScope(
            rows=partial(table_rows, session, lake, relative, version),
            previous_rows=(
                partial(table_rows, session, lake, relative, previous_version)
                if previous_version >= 0
                else lambda: None
            ),
        )
        df = read_processed(session, config, table)
        fresh = iter(run_checks(session, table, df, pending, ref, scope=scope))
        table_results = [reused.get(c.label) or next(fresh) for c in model.checks]
        record = [stored[r.check] if r.check in reused else r.as_dict() for r in table_results]
        lake.write_json(
            lake.checked_version(table),
            {
                "version": version,
                "checks_hash": digest,
                "run_id": known.get("run_id") if reused else run_id,
                "results": record,
            },
        )
        return table_results

    checked = in_parallel(spark, [t for t in tables if config.processed[t].checks], check_table)
    return [result for table in tables for result in checked.get(table, [])]


def _gold_scope(spark: SparkSession, config: PipelineConfig, run_id: str, table: str) -> CheckScope:
    """What a gold table's checks know: its rows, the published rows, an incremental build's
    rebuilt rows and groups, and the processed inputs that only had MERGEs since (stable)."""
    from raw2gold.publish.publisher import last_publish, read_gold
    from raw2gold.transform.gold import gold_exists, read_staged, staged_build, staged_is_whole

    lake = Lake(config.lake)
    build = staged_build(lake, run_id, table) or {}
    last = last_publish(lake, config, table)

    def previous_rows() -> int | None:
        if last and last.get("rows") is not None:
            return int(last["rows"])
        if not gold_exists(lake, config, table):
            return None
        return int(read_gold(spark, config, table).count())

    def rows() -> int:
        whole = build.get("mode") == "full" and staged_is_whole(lake, config, table)
        if whole and build.get("rows") is not None:
            return int(build["rows"])
        if build.get("mode") == "unchanged":
            known = previous_rows()
            if known is not None:
                return known
        return int(prospective(spark, config, run_id, table).count())

    scope = CheckScope(rows=rows, previous_rows=previous_rows)
    incremental = config.gold[table].incremental
    if build.get("mode") == "incremental" and incremental is not None:
        scope.changed = read_staged(spark, config, run_id, table, build)
        scope.group_by = tuple(incremental.by)
        # incremental means every processed input changed by MERGEs only: none lost a row
        scope.stable = frozenset(n for n in build.get("inputs") or {} if n in config.processed)
    return scope


def _gold_checks(
    spark: SparkSession, config: PipelineConfig, run_id: str, tables: list[str] | None = None
) -> tuple[list[CheckResult], dict[str, int]]:
    """Checks of gold as publishing this run would leave it (tables side by side), and the
    rows of each table a check counted."""
    lake = Lake(config.lake)
    names = [t for t in config.gold if tables is None or t in tables]
    for table in names:
        if not staged_exists(lake, run_id, table):
            raise RuntimeError(f"gold {table} is not staged in run {run_id}: run transform first")

    def check(session: SparkSession, table: str) -> tuple[list[CheckResult], int | None]:
        model = config.gold[table]
        if not model.checks:
            return [], None
        scope = _gold_scope(session, config, run_id, table)
        counted = scope.rows
        assert counted is not None
        memo: list[int] = []

        def remember() -> int:
            if not memo:
                memo.append(counted())
            return memo[0]

        scope.rows = remember
        df = prospective(session, config, run_id, table)
        ref = make_ref(session, config, run_id)
        results = run_checks(session, table, df, model.checks, ref, scope=scope)
        return results, memo[0] if memo else None  # publish records the rows counted here

    checked = in_parallel(spark, names, check)
    results = [r for t in names for r in checked[t][0]]
    rows = {t: n for t in names if (n := checked[t][1]) is not None}
    return results, rows


def _execute(
    spark: SparkSession,
    config: PipelineConfig,
    stage: str,
    run_id: str,
    full_refresh: bool,
    summary: dict[str, Any],
    tables: list[str] | None = None,
) -> None:
    if stage in ("transform", "processed"):
        processed = build_processed(spark, config, run_id, full_refresh, tables)
        for p in processed:
            summary["processed"][p.table] = p.as_dict()
        existing = [t for t in (tables or config.processed) if read_exists(config, t)]
        before = {p.table: p.previous_version for p in processed}
        summary["checks"] = [
            c.as_dict() for c in _processed_checks(spark, config, run_id, existing, before)
        ]
        enforce([CheckResult(**c) for c in summary["checks"]])
    if stage in ("transform", "gold"):
        for g in build_gold(spark, config, run_id, tables, full_refresh):
            summary["gold"][g.table] = {**g.as_dict(), "format": config.gold[g.table].format}
    elif stage == "check":
        results, rows = _gold_checks(spark, config, run_id, tables)
        summary["checks"] = [c.as_dict() for c in results]
        summary["rows"] = rows
        enforce(results)
    elif stage == "publish":
        from raw2gold.publish.publisher import lineage, publish

        for r in publish(spark, config, run_id):
            summary["gold"][r.table] = r.as_dict()
        summary["lineage"] = lineage(spark, config, run_id)
    elif stage == "maintain":
        from raw2gold.transform.maintenance import maintain

        summary["maintained"] = {r.table: r.as_dict() for r in maintain(spark, config, run_id)}
    elif stage not in ("transform", "processed"):
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(ALL_STAGES)}")


def record_name(stage: str, tables: list[str] | None = None) -> str:
    """The run record of a stage: ``gold``, or ``gold.<table>`` for a per-model task."""
    return f"{stage}.{'+'.join(tables)}" if tables else stage


def stage_record(lake: Lake, run_id: str, stage: str) -> dict[str, Any] | None:
    """What a stage recorded for a run: its own record, merged with its per-table records.

    Per-table records (``<stage>.<table>.json``, one per DAG task) add their tables and checks;
    the merged status is failed when any part failed.
    """
    folder = f"_state/runs/{run_id}"
    names = [f.rsplit("/", 1)[-1].removesuffix(".json") for f in lake.list_files(folder, ".json")]
    parts = [n for n in names if n == stage or n.startswith(f"{stage}.")]
    records = [r for n in sorted(parts) if (r := lake.read_record(f"{folder}/{n}.json"))]
    if not records:
        return None
    merged: dict[str, Any] = {
        **records[0],
        "processed": {},
        "gold": {},
        "checks": [],
        "parts": [],
        "rows": {},
    }
    for record in records:
        merged["processed"].update(record.get("processed") or {})
        merged["gold"].update(record.get("gold") or {})
        merged["rows"].update(record.get("rows") or {})
        merged["checks"] += record.get("checks") or []
        merged["parts"].append(record.get("tables") or "all")
        if record.get("status") != "succeeded":
            merged["status"] = record.get("status")
            merged["error"] = merged.get("error") or record.get("error")
    merged["duration_seconds"] = round(
        sum(float(r.get("duration_seconds") or 0) for r in records), 3
    )
    return merged


def read_exists(config: PipelineConfig, table: str) -> bool:
    from raw2gold.transform.delta import is_delta

    lake = Lake(config.lake)
    return is_delta(lake, lake.processed_table(table))


def run_stage(
    config: PipelineConfig,
    stage: str,
    run_id: str,
    full_refresh: bool = False,
    spark: SparkSession | None = None,
    tables: list[str] | None = None,
) -> dict[str, Any]:
    """Run one stage in-process and return its summary (also written to the lake).

    ``tables`` limits processed, gold and check to those tables (one DAG task per model).
    Raises :class:`StageError` (with the summary) when the stage fails.
    """
    if stage not in ALL_STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(ALL_STAGES)}")
    if not RUN_ID.match(run_id):
        raise ValueError(f"run id {run_id!r} is not path-safe (letters, digits, . _ -)")
    lake = Lake(config.lake)
    started = time.monotonic()
    summary: dict[str, Any] = {
        "pipeline": config.name,
        "run_id": run_id,
        "stage": stage,
        "tables": tables,
        "record": record_name(stage, tables),
        "full_refresh": full_refresh,
        "status": "running",
        "started_at": utc_now(),
        "finished_at": None,
        "duration_seconds": None,
        "processed": {},
        "gold": {},
        "checks": [],
        "error": None,
    }
    own_session = False
    try:
        if spark is None:
            from pyspark.sql import SparkSession

            from raw2gold.transform.session import spark_session

            own_session = SparkSession.getActiveSession() is None
            name = f"raw2gold-{config.name}-{record_name(stage, tables)}-{run_id}"
            spark = spark_session(config, name)
        _execute(spark, config, stage, run_id, full_refresh, summary, tables)
        summary["status"] = "succeeded"
    except Exception as exc:
        summary["status"] = "failed"
        message = first_line(exc)
        if isinstance(exc, CheckFailed):
            summary["checks"] = [r.as_dict() for r in exc.results]
            message = failure_message(exc.results) or message
        summary["error"] = message
        summary["final"] = is_final(exc)  # the task's retries cannot help: Airflow skips them
        _finish(lake, summary, started)
        raise StageError(message, summary) from exc
    finally:
        if own_session and spark is not None:
            stop_session(spark)
    _finish(lake, summary, started)
    return summary


def _finish(lake: Lake, summary: dict[str, Any], started: float) -> None:
    summary["finished_at"] = utc_now()
    summary["duration_seconds"] = round(time.monotonic() - started, 3)
    try:
        lake.write_json(lake.run_record(summary["run_id"], summary["record"]), summary)
    except Exception as exc:  # the summary is also printed; do not hide the stage's own error
        log.error("could not write the stage summary: %s", exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raw2gold.transform.job")
    parser.add_argument("--pipeline", required=True, help="path of pipeline.yaml")
    parser.add_argument("--stage", required=True, choices=ALL_STAGES)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--tables", default=None, help="comma-separated: only these tables")
    parser.add_argument("--full-refresh", action="store_true")
    parser.add_argument("--lake", default=None, help="override the lake URI")
    parser.add_argument("--verbose", action="store_true", help="full tracebacks")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    summary: dict[str, Any] | None = None
    try:
        config = load_pipeline(args.pipeline, args.lake)
        tables = [t for t in (args.tables or "").split(",") if t] or None
        unknown = [t for t in tables or [] if config.table_kind(t) is None]
        if unknown:
            raise ValueError(f"--tables: unknown table(s) {', '.join(unknown)}")
        summary = run_stage(config, args.stage, args.run_id, args.full_refresh, tables=tables)
        code = 0
    except Exception as exc:
        summary = getattr(exc, "summary", None)
        if args.verbose:
            traceback.print_exc()
        print(f"raw2gold: {exc}", file=sys.stderr)
        code = 1
    if summary is not None:
        print(SUMMARY_PREFIX + json.dumps(summary, sort_keys=True, default=str), flush=True)
    return code


if __name__ == "__main__":
    exit_now(main())
