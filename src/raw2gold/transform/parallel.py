"""Independent table steps of one stage, run at the same time on one Spark application.

The DAG gives each processed table and gold model its own task, so Airflow runs independent
updates, builds, checks and publishes side by side. A stage run in one process
(``raw2gold.transform.job`` for a whole layer, cluster and SSH mode, the benchmark) does the
same here: each step gets its own Spark session of the same application (its own SQL
settings, temporary views and Delta commit metadata), so one step's driver-side work (planning,
Delta log reads, commits, file listing) overlaps another's Spark jobs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

T = TypeVar("T")
WORKERS_ENV = "RAW2GOLD_PARALLEL_STEPS"
DEFAULT_WORKERS = 3


def workers() -> int:
    """How many table steps run at once (``RAW2GOLD_PARALLEL_STEPS``; 1 = one after another)."""
    value = os.environ.get(WORKERS_ENV, "")
    return max(int(value), 1) if value.isdigit() else DEFAULT_WORKERS


def step_session(spark: SparkSession) -> SparkSession:
    """A session of the same application for one step, with the parent's SQL settings."""
    session = spark.newSession()
    for key, value in spark.conf.getAll.items():
        if key.startswith("spark.sql.") and spark.conf.isModifiable(key):
            session.conf.set(key, value)
    return session


def in_parallel(
    spark: SparkSession,
    names: list[str],
    step: Callable[[SparkSession, str], T],
    after: Mapping[str, set[str]] | None = None,
) -> dict[str, T]:
    """Run ``step(session, name)`` for each name, a name only once the names ``after[name]``
    finished, at most :func:`workers` at once; the results by name.

    After a failure no further step starts; the running ones finish, then the first failure
    in ``names`` order is raised. Spark Connect sessions (one per DAG task already) and a
    single step run one after another in the given session.
    """
    after = after or {}
    parallel = workers()
    if parallel == 1 or len(names) <= 1 or type(spark).__module__.startswith("pyspark.sql.connect"):
        return {name: step(spark, name) for name in names}
    results: dict[str, T] = {}
    errors: dict[str, BaseException] = {}
    waiting = list(names)
    running: dict[Future[T], str] = {}
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="raw2gold-step") as pool:
        while waiting or running:
            if not errors:
                for name in list(waiting):
                    if len(running) >= parallel:
                        break
                    if after.get(name, set()) & set(waiting + list(running.values())):
                        continue
                    waiting.remove(name)
                    running[pool.submit(_run, spark, name, step)] = name
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                error = future.exception()
                if error is not None:
                    errors[name] = error
                else:
                    results[name] = future.result()
    if errors:
        raise next(errors[n] for n in names if n in errors)
    return results


def _run(spark: SparkSession, name: str, step: Callable[[SparkSession, str], T]) -> T:
    session = step_session(spark)
    return step(session, name)
