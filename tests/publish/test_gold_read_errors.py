"""Reading a gold table without Spark (`raw2gold show`, `raw2gold history`) when its Delta log
is damaged, or when no run has published it yet: one line saying so and what to do, not a
traceback (with `--verbose`, the traceback). The damaged log is written by hand: no Spark is
needed here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from raw2gold.cli import main


def test_a_damaged_delta_log_is_one_line_naming_its_folder(
    tmp_path: Path, shop_pipeline: Path, capsys: pytest.CaptureFixture
) -> None:
    log = tmp_path / "lake" / "gold" / "top_products" / "_delta_log"
    log.mkdir(parents=True)
    (log / "00000000000000000000.json").write_text('{"commitInfo": {"timestamp": 1, \n')
    where = ["-p", str(shop_pipeline), "--lake", str(tmp_path / "lake")]
    for command in (["history", "top_products"], ["show", "top_products"]):
        assert main([*command, *where]) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert f"gold table top_products: its Delta log {log} cannot be read (" in err
        assert "check the lake's credentials" in err and "Traceback" not in err

        assert main(["--verbose", *command, *where]) == 1
        assert "Traceback" in capsys.readouterr().err


def test_a_gold_table_no_run_published_yet_is_one_line_saying_so(
    tmp_path: Path, shop_pipeline: Path, capsys: pytest.CaptureFixture
) -> None:
    where = ["-p", str(shop_pipeline), "--lake", str(tmp_path / "lake")]
    for table in ("daily_category_revenue", "customer_lifetime_value"):  # Delta, Parquet
        assert main(["show", table, *where]) == 1
        assert capsys.readouterr().err.strip() == (
            f"raw2gold: gold table {table} has not been published yet: a run publishes it "
            "(raw2gold run, or the pipeline's DAG in Airflow)"
        )
