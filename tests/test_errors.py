"""One line of an error: Spark's own message, not Py4J's "An error occurred while calling"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from raw2gold.config.loader import ConfigError
from raw2gold.errors import Raw2GoldError, described, error_class, first_line, is_final, root_cause
from raw2gold.orchestrate.notify import one_line


def test_a_py4j_error_gives_its_java_exception_message_class_and_cause(
    tmp_path: Path, spark: Any
) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(Exception) as excinfo:
        spark.read.parquet(str(bad)).schema  # noqa: B018 - the read is what fails
    exc = excinfo.value
    assert str(exc).startswith("An error occurred while calling")  # Py4J's own first line
    assert first_line(exc).startswith("[FAILED_READ_FILE.CANNOT_READ_FILE_FOOTER] ")
    assert str(bad) in first_line(exc)
    assert error_class(exc) == "FAILED_READ_FILE.CANNOT_READ_FILE_FOOTER"
    assert f"{bad} is not a Parquet file. Expected magic number at tail" in root_cause(exc)
    assert one_line(exc) == first_line(exc)
    assert not is_final(exc)  # a store can fail a read once: worth a retry


def test_final_errors_are_the_ones_a_retry_meets_again(spark: Any) -> None:
    """Which errors skip Airflow's retries (see raw2gold.orchestrate.operators.task_failure)."""
    from raw2gold.orchestrate.operators import task_failure
    from raw2gold.publish.publisher import PublishError
    from raw2gold.quality.checks import CheckFailed
    from raw2gold.transform.gold import GoldError
    from raw2gold.transform.processed import ProcessedError
    from raw2gold.transform.runners import StageRunError

    with pytest.raises(Exception) as unresolved:
        spark.sql("SELECT no_such_column FROM range(1)").schema  # noqa: B018
    with pytest.raises(Exception) as syntax:
        spark.sql("SELEC 1").schema  # noqa: B018
    assert is_final(unresolved.value) and is_final(syntax.value)  # Spark's analysis errors
    for final in [
        CheckFailed("check not_null(id) on users failed", []),
        ProcessedError("processed users: raw data of faker.users has no column(s) id"),
        GoldError("gold top: cannot import models/top.py"),
        PublishError("gold top: another run (r2) published the table after this run built it"),
        ConfigError([]),
        StageRunError("SSH key authentication failed", final=True),
        KeyError("USD"),  # a model's code mistake
    ]:
        assert is_final(final), final
    for retried in [
        Raw2GoldError("anything not marked"),
        ProcessedError("processed users: another run wrote the table", final=False),
        StageRunError("Spark stage transform failed locally (exit 137): killed"),
        OSError("connection reset by peer"),
        RuntimeError("py4j: answer from Java side is empty"),
    ]:
        assert not is_final(retried), retried
    failing = task_failure(CheckFailed("check unique(id) on users failed: 2 failing row(s)", []))
    assert type(failing).__name__ == "AirflowFailException"
    assert str(failing) == (
        "check unique(id) on users failed: 2 failing row(s) "
        "(not retried: a retry would fail the same way)"
    )
    retry = task_failure(OSError("connection reset by peer"))
    assert type(retry).__name__ == "AirflowException" and str(retry) == "connection reset by peer"


def test_other_errors_give_their_first_non_empty_line_or_their_type() -> None:
    assert first_line(ValueError("\n  first\nsecond")) == "first"
    assert first_line(KeyError()) == "KeyError"
    assert error_class(RuntimeError("[PATH_NOT_FOUND] Path does not exist: x. SQLSTATE: 42K03"))
    assert root_cause(RuntimeError("[PATH_NOT_FOUND] Path does not exist: x. SQLSTATE: 42K03")) == (
        "Path does not exist: x."
    )
    assert error_class(ValueError("no class [here]")) is None
    assert one_line(None) == ""


def test_an_error_from_user_code_is_led_by_its_type_and_names_its_line(tmp_path: Path) -> None:
    model = tmp_path / "model.py"
    model.write_text("def build():\n    rates = {}\n    return rates['USD']\n")
    namespace: dict[str, Any] = {}
    exec(compile(model.read_text(), str(model), "exec"), namespace)
    with pytest.raises(KeyError) as excinfo:
        namespace["build"]()
    assert described(excinfo.value, str(model)) == "KeyError: 'USD' (at model.py:3)"
    assert described(excinfo.value) == "KeyError: 'USD'"
    assert described(KeyError()) == "KeyError"
    spark_error = RuntimeError("[PATH_NOT_FOUND] Path does not exist: x. SQLSTATE: 42K03")
    assert described(spark_error) == str(spark_error)
    own = Raw2GoldError("processed table users does not exist yet: ingest its source first")
    assert described(own) == str(own)  # written for people: not led by its type
