"""cfn-lint and checkov on every synthesized template: no finding, no suppression unexplained."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .conftest import Synth
from .tools import checkov_command

#: The only checkov suppressions allowed; each carries its reason in the template metadata.
EXPECTED_CHECKOV_SKIPS = {"CKV_AWS_18", "CKV_AWS_88"}


def _all_templates(*synths: Synth) -> list[Path]:
    return sorted(p for s in synths for p in s.template_files.values())


def test_cfn_lint_reports_nothing(default_synth: Synth, full_synth: Synth) -> None:
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    files = _all_templates(default_synth, full_synth)
    proc = subprocess.run(
        [str(cfn_lint), "--format", "parseable", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


def test_cfn_lint_suppressions_have_reasons(default_synth: Synth, full_synth: Synth) -> None:
    for synth in (default_synth, full_synth):
        for template in synth.templates.values():
            for res in template["Resources"].values():
                meta = res.get("Metadata", {}).get("cfn-lint")
                if meta:
                    ignored = meta["config"]["ignore_checks"]
                    assert all(meta["reasons"].get(rule, "").strip() for rule in ignored)


def _checkov(files: list[Path]) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [
            *checkov_command(),
            "--framework",
            "cloudformation",
            "--skip-download",
            "--soft-fail",
            "--output",
            "json",
            *[arg for f in files for arg in ("--file", str(f))],
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={"BC_SKIP_MAPPING": "TRUE", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    return report if isinstance(report, list) else [report]


def test_checkov_passes_with_only_explained_skips(default_synth: Synth, full_synth: Synth) -> None:
    reports = _checkov(_all_templates(default_synth, full_synth))
    failed = [c for r in reports for c in r["results"]["failed_checks"]]
    passed = [c for r in reports for c in r["results"]["passed_checks"]]
    skipped = [c for r in reports for c in r["results"]["skipped_checks"]]
    assert not failed, [(c["check_id"], c["resource"]) for c in failed]
    assert len(passed) > 50
    assert {c["check_id"] for c in skipped} == EXPECTED_CHECKOV_SKIPS
    for check in skipped:
        assert len(check["check_result"].get("suppress_comment", "")) > 20, check["check_id"]
