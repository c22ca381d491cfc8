"""Reading a published gold table without Spark (`raw2gold show`, `raw2gold history`) when its
Delta log is damaged: one line naming the log's folder and what to check, not a traceback; the
traceback with `--verbose`. The damaged log is written by hand: no Spark is needed here.
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
