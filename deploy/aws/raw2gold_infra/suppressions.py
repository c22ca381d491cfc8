"""Checker suppressions, each with its written reason, stored in the template's metadata."""

from __future__ import annotations

from aws_cdk import CfnResource
from constructs import IConstruct


def _cfn(construct: IConstruct) -> CfnResource:
    """The CloudFormation resource behind a construct (itself if it already is one)."""
    if isinstance(construct, CfnResource):
        return construct
    child = construct.node.default_child
    if not isinstance(child, CfnResource):
        raise TypeError(f"{construct.node.path} has no CloudFormation resource")
    return child


def skip_checkov(construct: IConstruct, reasons: dict[str, str]) -> None:
    """Skip checkov checks on one resource; every id needs a reason."""
    if any(not reason.strip() for reason in reasons.values()):
        raise ValueError("every checkov suppression needs a written reason")
    resource = _cfn(construct)
    existing = resource.get_metadata("checkov") or {"skip": []}
    existing["skip"].extend({"id": key, "comment": why} for key, why in sorted(reasons.items()))
    resource.add_metadata("checkov", existing)


def skip_cfn_lint(construct: IConstruct, reasons: dict[str, str]) -> None:
    """Ignore cfn-lint rules on one resource; every rule needs a reason (kept beside it)."""
    if any(not reason.strip() for reason in reasons.values()):
        raise ValueError("every cfn-lint suppression needs a written reason")
    resource = _cfn(construct)
    resource.add_metadata(
        "cfn-lint", {"config": {"ignore_checks": sorted(reasons)}, "reasons": dict(reasons)}
    )
