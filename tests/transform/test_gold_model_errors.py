"""A PySpark gold model that fails: one line naming the model, the Python error's type and the
line of the model's file it came from, not a bare "'price'"."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from raw2gold.config.loader import load_pipeline
from raw2gold.lake.layout import Lake
from raw2gold.transform.job import StageError, run_stage
from tests.transform.rawdata import shop_records, users_pipeline, write_raw_run

MODELS = {
    "key_error.py": (
        "def build(spark, ref):\n"
        "    prices = {'EUR': 1.0}\n"
        "    return ref('users').withColumn('rate', prices['USD'])\n",
        "gold users_out failed: KeyError: 'USD' (at key_error.py:3)",
    ),
    "bad_column.py": (
        "def build(spark, ref):\n    users = ref('users')\n    return users.select('price')\n",
        "gold users_out failed: [UNRESOLVED_COLUMN.WITH_SUGGESTION] A column, variable, or "
        "function parameter with name `price` cannot be resolved.",
    ),
    "syntax_error.py": (
        "def build(spark, ref)\n    return ref('users')\n",
        "gold users_out failed: SyntaxError: expected ':' (syntax_error.py, line 1)",
    ),
    "not_a_frame.py": (
        "def build(spark, ref):\n    return ref('users').collect()\n",
        "gold users_out: not_a_frame.py:build must return a DataFrame",
    ),
}


def test_a_failing_python_model_names_the_error_and_its_line(
    tmp_path: Path, spark: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    """Also: PySpark's own ERROR log of each query error (a JSON line holding the JVM's stack
    trace, ~70 lines) no longer comes before raw2gold's line."""
    lake_dir = tmp_path / "lake"
    for name, (body, expected) in MODELS.items():
        (tmp_path / name).write_text(body)
        (tmp_path / "pipeline.yaml").write_text(
            users_pipeline("errors", f"  users_out:\n    python: {name}:build\n")
        )
        config = load_pipeline(tmp_path / "pipeline.yaml", str(lake_dir))
        if not (lake_dir / "processed" / "users").exists():
            users = shop_records(users=4)["users"]
            write_raw_run(
                Lake(config.lake), "faker", "r1", {"users": users}, datetime(2026, 6, 1, tzinfo=UTC)
            )
            run_stage(config, "processed", "run1", spark=spark)
        capfd.readouterr()
        with pytest.raises(StageError) as caught:
            run_stage(config, "gold", "run1", spark=spark)
        logged = capfd.readouterr().err
        assert "QueryContextLogger" not in logged and "\tat org.apache.spark" not in logged
        message = str(caught.value)
        assert message.startswith(expected), (name, message)
        assert "\n" not in message
        assert caught.value.summary["final"] is True, name  # the same on every try
        if name == "bad_column.py":
            assert message.endswith("(at bad_column.py:3)")
