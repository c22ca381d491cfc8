"""AWS CDK v2 app for raw2gold: lake bucket, orchestrator host, secrets, CI role."""

from __future__ import annotations

from aws_cdk import App, Environment, Tags

from .ci import Raw2GoldCiStack
from .settings import DeploySettings
from .stack import Raw2GoldStack

__all__ = ["DeploySettings", "Raw2GoldCiStack", "Raw2GoldStack", "build_app"]


def build_app(app: App, env: Environment | None = None) -> tuple[Raw2GoldCiStack, Raw2GoldStack]:
    """Add raw2gold's two stacks to ``app``, configured from its context."""
    settings = DeploySettings.from_node(app.node)
    ci = Raw2GoldCiStack(
        app,
        "Raw2GoldCi",
        settings=settings,
        env=env,
        description="raw2gold delivery: image registry and GitHub OIDC deploy role",
    )
    main = Raw2GoldStack(
        app,
        "Raw2Gold",
        settings=settings,
        env=env,
        description="raw2gold: S3 lake, Airflow orchestrator host, secrets, optional Spark",
    )
    for stack in (ci, main):
        Tags.of(stack).add("project", "raw2gold")
    return ci, main
