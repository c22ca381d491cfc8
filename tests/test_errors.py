"""One line of an error: Spark's own message, not Py4J's "An error occurred while calling"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from raw2gold.errors import described, error_class, first_line, root_cause
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
