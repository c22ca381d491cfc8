"""docs/deploy-aws.md covers what the deployment promises, and agrees with the code."""

from __future__ import annotations

import json
import re

from .conftest import CDK_DIR, REPO, WORKFLOWS_DIR

DOC = (REPO / "docs" / "deploy-aws.md").read_text()


def test_doc_covers_the_path_from_empty_account_to_teardown() -> None:
    for needle in (
        "bootstrap aws://",
        "deploy Raw2GoldCi",
        "git tag v0.1.0",
        "put-secret-value",
        "AWS-StartPortForwardingSession",
        "s3://$BUCKET/gold/",
        "## Monthly cost estimate",
        "## Tear down",
        "destroy Raw2Gold",
        "t2.micro",
        "SecretsManagerBackend",
        "built only in CI on GitHub",
    ):
        assert needle in DOC, needle


def test_doc_config_shape_matches_the_stack_output() -> None:
    assert "lake:\n  uri: s3://<LakeBucket>/\n  s3:\n    region: <region>" in DOC
    assert "No keys" in DOC


def test_doc_versions_match_the_code() -> None:
    cli = re.search(r'CDK_CLI_VERSION: "([^"]+)"', (WORKFLOWS_DIR / "deploy.yml").read_text())
    assert cli and f"aws-cdk@{cli.group(1)}" in DOC
    context = json.loads((CDK_DIR / "cdk.json").read_text())["context"]
    assert f"default **{context['instanceType']}**" in DOC


def test_doc_has_no_secret_values() -> None:
    assert not re.search(r"AKIA[0-9A-Z]{16}|hooks\.slack\.com/services/\w", DOC)
