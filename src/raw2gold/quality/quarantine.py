"""What a processed table sent to quarantine, read back without Spark (`raw2gold quarantine`).

``quarantine/<table>`` (Delta) holds a row per raw record the processed table could not type:
its raw run, Airbyte record id, the reasons (``column age: cannot cast abc to int``, joined by
``; ``), the raw record as JSON and the run that quarantined it. A report groups the rows by
problem (a reason without the value that failed, so a thousand bad ages are one line) with the
raw runs they came from, and shows the first rows whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from raw2gold.config.models import PipelineConfig
from raw2gold.lake.layout import Lake
from raw2gold.transform.delta import is_delta

CAST_FAILED = re.compile(r"column (?P<column>.+?): cannot cast .* to (?P<type>.+)", re.DOTALL)
# reasons are joined by "; ", which a value that failed may hold too
NEXT_REASON = re.compile(r"; (?=column |primary key )")
SAMPLE_COLUMNS = ["raw_run_id", "_airbyte_raw_id", "reason", "record", "quarantined_by_run"]


@dataclass
class Problem:
    """One kind of failure: how many rows had it, from which raw runs."""

    problem: str
    rows: int = 0
    raw_runs: set[str] = field(default_factory=set)


@dataclass
class QuarantineReport:
    """A processed table's quarantined rows: how many, grouped by problem, the first few."""

    table: str
    rows: int
    problems: list[Problem]
    sample: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "rows": self.rows,
            "problems": [
                {"problem": p.problem, "rows": p.rows, "raw_runs": sorted(p.raw_runs)}
                for p in self.problems
            ],
            "sample": self.sample,
        }


def problem_of(reason: str) -> str:
    """A reason without the value that failed: ``column age: cannot cast abc to int`` ->
    ``column age: cannot cast to int`` (other reasons, such as a null key, as they are)."""
    from raw2gold.transform.processed import EPOCH_HINT

    base, hint, _ = reason.partition(EPOCH_HINT)
    match = CAST_FAILED.fullmatch(base)
    if match is None:
        return reason
    epoch = " (a number outside years 1 to 9999: epoch milliseconds?)" if hint else ""
    return f"column {match['column']}: cannot cast to {match['type']}{epoch}"


def read_quarantine(
    config: PipelineConfig, table: str, run: str | None = None, limit: int = 10
) -> QuarantineReport:
    """The quarantine of processed ``table`` (no rows: it has none); ``run`` keeps the rows of
    that raw run or quarantined by that run; ``limit`` rows in the sample.

    Read batch by batch, each batch's rows counted per distinct (raw run, reason) first, so a
    large quarantine is neither held whole in memory nor parsed row by row.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from raw2gold.publish.publisher import delta_table

    lake = Lake(config.lake)
    relative = lake.quarantine_table(table)
    if not is_delta(lake, relative):
        return QuarantineReport(table, 0, [], [])
    where = None
    if run is not None:
        where = (pc.field("raw_run_id") == run) | (pc.field("quarantined_by_run") == run)
    rows = 0
    problems: dict[str, Problem] = {}
    with delta_table(lake, relative, f"quarantine of processed {table}") as delta:
        dataset = delta.to_pyarrow_dataset()
        for batch in dataset.to_batches(columns=["raw_run_id", "reason"], filter=where):
            rows += batch.num_rows
            counted = (
                pa.Table.from_batches([batch])
                .group_by(["raw_run_id", "reason"])
                .aggregate([([], "count_all")])
            )
            for group in counted.to_pylist():
                for reason in NEXT_REASON.split(group["reason"] or ""):
                    kind = problem_of(reason)
                    problem = problems.setdefault(kind, Problem(kind))
                    problem.rows += group["count_all"]
                    problem.raw_runs.add(group["raw_run_id"])
        sample = dataset.head(limit, columns=SAMPLE_COLUMNS, filter=where).to_pylist()
    ranked = sorted(problems.values(), key=lambda p: (-p.rows, p.problem))
    return QuarantineReport(table, rows, ranked, sample)
