"""GitHub Actions workflows: actionlint, the workflow JSON schema, and what they must do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from .conftest import REPO, WORKFLOWS_DIR
from .tools import actionlint_command

WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.yml"))


def _load(name: str) -> dict[Any, Any]:
    data = yaml.safe_load((WORKFLOWS_DIR / name).read_text())
    assert isinstance(data, dict)
    return data


def test_workflows_exist() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "deploy.yml"}


def test_actionlint_clean() -> None:
    proc = subprocess.run(
        [*actionlint_command(), "-no-color", *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflows_match_the_schema() -> None:
    exe = Path(sys.executable).parent / "check-jsonschema"
    proc = subprocess.run(
        [str(exe), "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_runs_lint_types_and_make_test() -> None:
    text = (WORKFLOWS_DIR / "ci.yml").read_text()
    for needle in ("ruff check", "ruff format --check", "mypy", "make test", "docker build"):
        assert needle in text, needle
    assert _load("ci.yml")["permissions"] == {"contents": "read"}


def test_deploy_runs_on_tags_through_oidc_without_keys() -> None:
    wf = _load("deploy.yml")
    triggers = wf[True]  # YAML 1.1 reads the key `on` as True
    assert list(triggers) == ["push"] and triggers["push"] == {"tags": ["v*"]}
    assert wf["permissions"] == {"contents": "read"}
    job = wf["jobs"]["deploy"]
    assert job["permissions"]["id-token"] == "write"
    creds = next(s for s in job["steps"] if "configure-aws-credentials" in s.get("uses", ""))
    assert creds["with"]["role-to-assume"] == "${{ vars.AWS_DEPLOY_ROLE_ARN }}"
    text = (WORKFLOWS_DIR / "deploy.yml").read_text()
    for forbidden in ("aws-access-key-id", "aws-secret-access-key", "AWS_SECRET_ACCESS_KEY"):
        assert forbidden not in text
    assert 'aws-cdk@$CDK_CLI_VERSION" deploy Raw2Gold' in text
    assert wf["env"]["CDK_CLI_VERSION"].count(".") == 2  # pinned, not "latest"
    assert "imageTag=$TAG" in text
