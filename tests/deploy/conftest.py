"""Fixtures for the deployment tests: one offline CDK synth per variant and session."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CDK_DIR = REPO / "deploy" / "aws"
COMPOSE_DIR = REPO / "deploy" / "compose"
WORKFLOWS_DIR = REPO / ".github" / "workflows"

# jsii prints a banner for Node 20 (end of life) on every start; the runtime still works.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "1")
if str(CDK_DIR) not in sys.path:
    sys.path.insert(0, str(CDK_DIR))

#: Every option switched on: admin CIDR, SSH, EMR Serverless, GitHub OIDC role.
FULL_CONTEXT: dict[str, Any] = {
    "adminCidr": "203.0.113.0/24",
    "enableSsh": "true",
    "sshKeyName": "ops",
    "sparkServerless": "true",
    "githubRepo": "acme/raw2gold",
    "imageTag": "v1.2.3",
}


@dataclass(frozen=True)
class Synth:
    """The synthesized cloud assembly of one variant."""

    outdir: Path
    templates: dict[str, dict[str, Any]]
    template_files: dict[str, Path]

    def resources(self, stack: str, type_: str) -> dict[str, dict[str, Any]]:
        """Resources of a CloudFormation type in one stack, by logical id."""
        res = self.templates[stack]["Resources"]
        return {k: v for k, v in res.items() if v["Type"] == type_}

    def one(self, stack: str, type_: str) -> dict[str, Any]:
        """The single resource of a type in one stack."""
        found = list(self.resources(stack, type_).values())
        assert len(found) == 1, f"expected one {type_} in {stack}, found {len(found)}"
        return found[0]


def cdk_context() -> dict[str, Any]:
    """The context committed in deploy/aws/cdk.json (defaults and feature flags)."""
    return dict(json.loads((CDK_DIR / "cdk.json").read_text())["context"])


def synth(outdir: Path, extra: dict[str, Any]) -> Synth:
    """Synthesize the app offline, as `cdk synth` would, with extra context."""
    from aws_cdk import App
    from raw2gold_infra import build_app

    app = App(context={**cdk_context(), **extra}, outdir=str(outdir))
    build_app(app)
    app.synth()
    files = {p.name.removesuffix(".template.json"): p for p in outdir.glob("*.template.json")}
    return Synth(outdir, {k: json.loads(p.read_text()) for k, p in files.items()}, files)


@pytest.fixture(scope="session")
def default_synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """The app with cdk.json defaults only (SSM access, no inbound, no options)."""
    return synth(tmp_path_factory.mktemp("cdk-default"), {})


@pytest.fixture(scope="session")
def full_synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """The app with every option on."""
    return synth(tmp_path_factory.mktemp("cdk-full"), FULL_CONTEXT)
