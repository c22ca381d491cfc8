"""Delivery: the image registry, and (optionally) the role GitHub Actions assumes through OIDC.

The deploy role holds no long-lived key: GitHub's OIDC token for a tag of the configured
repository is exchanged for it. It may push images to the registry and assume the CDK bootstrap
roles (which perform the actual deployment); nothing else.
"""

from __future__ import annotations

from aws_cdk import CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from constructs import Construct

from .settings import DeploySettings

GITHUB_OIDC_URL = "https://token.actions.githubusercontent.com"
GITHUB_OIDC_HOST = "token.actions.githubusercontent.com"
CDK_QUALIFIER = "hnb659fds"


class Raw2GoldCiStack(Stack):
    """ECR repository for the Airflow image, plus the GitHub OIDC deploy role if configured."""

    def __init__(self, scope: Construct, id: str, *, settings: DeploySettings, **kwargs: object):
        super().__init__(scope, id, **kwargs)  # type: ignore[arg-type]
        self.repository = ecr.Repository(
            self,
            "Images",
            repository_name=settings.image_repository,
            image_tag_mutability=ecr.TagMutability.IMMUTABLE,
            image_scan_on_push=True,
            encryption=ecr.RepositoryEncryption.KMS,
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[ecr.LifecycleRule(max_image_count=10)],
        )
        CfnOutput(self, "ImageRepositoryUri", value=self.repository.repository_uri)
        self.deploy_role: iam.Role | None = None
        if settings.github_repo:
            self.deploy_role = self._github_deploy_role(settings)
            CfnOutput(self, "GithubDeployRoleArn", value=self.deploy_role.role_arn)

    def _github_deploy_role(self, settings: DeploySettings) -> iam.Role:
        """The role a tag build of ``settings.github_repo`` may assume."""
        if settings.github_oidc_provider_arn:
            provider_arn = settings.github_oidc_provider_arn
        else:
            provider = iam.CfnOIDCProvider(
                self,
                "GithubOidc",
                url=GITHUB_OIDC_URL,
                client_id_list=["sts.amazonaws.com"],
            )
            provider_arn = provider.attr_arn
        role = iam.Role(
            self,
            "GithubDeployRole",
            description=f"GitHub Actions deploys of {settings.github_repo} (tags only)",
            max_session_duration=Duration.hours(1),
            assumed_by=iam.FederatedPrincipal(
                provider_arn,
                conditions={
                    "StringEquals": {f"{GITHUB_OIDC_HOST}:aud": "sts.amazonaws.com"},
                    "StringLike": {
                        f"{GITHUB_OIDC_HOST}:sub": f"repo:{settings.github_repo}:ref:refs/tags/v*"
                    },
                },
                assume_role_action="sts:AssumeRoleWithWebIdentity",
            ),
        )
        self.repository.grant_push(role)
        role.add_to_policy(
            iam.PolicyStatement(
                sid="UseCdkBootstrapRoles",
                actions=["sts:AssumeRole"],
                resources=[
                    self.format_arn(
                        service="iam",
                        region="",
                        resource="role",
                        resource_name=f"cdk-{CDK_QUALIFIER}-*-{self.account}-{self.region}",
                    )
                ],
            )
        )
        return role
