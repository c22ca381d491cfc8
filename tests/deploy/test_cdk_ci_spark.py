"""Optional constructs: EMR Serverless Spark capacity and the GitHub OIDC deploy stack."""

from __future__ import annotations

import pytest
from aws_cdk.assertions import Match, Template

from .conftest import Synth


def test_spark_serverless_is_off_by_default(default_synth: Synth) -> None:
    t = Template.from_json(default_synth.templates["Raw2Gold"])
    t.resource_count_is("AWS::EMRServerless::Application", 0)


def test_spark_serverless_application_and_job_role(full_synth: Synth) -> None:
    t = Template.from_json(full_synth.templates["Raw2Gold"])
    t.has_resource_properties(
        "AWS::EMRServerless::Application",
        {
            "Type": "SPARK",
            "ReleaseLabel": Match.string_like_regexp(r"^emr-\d+\.\d+\.\d+$"),
            "AutoStopConfiguration": {"Enabled": True, "IdleTimeoutMinutes": 15},
            "MaximumCapacity": Match.object_like({"Cpu": "16 vCPU"}),
        },
    )
    t.has_resource_properties(
        "AWS::IAM::Role",
        {
            "AssumeRolePolicyDocument": {
                "Statement": [
                    Match.object_like({"Principal": {"Service": "emr-serverless.amazonaws.com"}})
                ]
            }
        },
    )
    # The orchestrator may pass exactly that role, to EMR Serverless only.
    t.has_resource_properties(
        "AWS::IAM::Policy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Sid": "PassSparkJobRole",
                                "Action": "iam:PassRole",
                                "Condition": {
                                    "StringEquals": {
                                        "iam:PassedToService": "emr-serverless.amazonaws.com"
                                    }
                                },
                            }
                        )
                    ]
                )
            }
        },
    )


def test_image_registry_is_immutable_scanned_encrypted(default_synth: Synth) -> None:
    t = Template.from_json(default_synth.templates["Raw2GoldCi"])
    t.has_resource_properties(
        "AWS::ECR::Repository",
        {
            "RepositoryName": "raw2gold-airflow",
            "ImageTagMutability": "IMMUTABLE",
            "ImageScanningConfiguration": {"ScanOnPush": True},
            "EncryptionConfiguration": {"EncryptionType": "KMS"},
        },
    )
    t.resource_count_is("AWS::IAM::Role", 0)


def test_github_oidc_role_for_tags_of_one_repo(full_synth: Synth) -> None:
    t = Template.from_json(full_synth.templates["Raw2GoldCi"])
    t.has_resource_properties(
        "AWS::IAM::OIDCProvider",
        {
            "Url": "https://token.actions.githubusercontent.com",
            "ClientIdList": ["sts.amazonaws.com"],
        },
    )
    t.has_resource_properties(
        "AWS::IAM::Role",
        {
            "MaxSessionDuration": 3600,
            "AssumeRolePolicyDocument": {
                "Statement": [
                    Match.object_like(
                        {
                            "Action": "sts:AssumeRoleWithWebIdentity",
                            "Condition": {
                                "StringEquals": {
                                    "token.actions.githubusercontent.com:aud": "sts.amazonaws.com"
                                },
                                "StringLike": {
                                    "token.actions.githubusercontent.com:sub": (
                                        "repo:acme/raw2gold:ref:refs/tags/v*"
                                    )
                                },
                            },
                        }
                    )
                ]
            },
        },
    )
    policies = full_synth.resources("Raw2GoldCi", "AWS::IAM::Policy")
    statements = [
        s for p in policies.values() for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    assume = [s for s in statements if s.get("Sid") == "UseCdkBootstrapRoles"]
    assert assume and ":role/cdk-hnb659fds-*-" in str(assume[0]["Resource"])
    assert not any(s["Action"] in ("*", "iam:*", "sts:*") for s in statements)
    iam_users = full_synth.resources("Raw2GoldCi", "AWS::IAM::AccessKey")
    assert not iam_users  # no long-lived keys anywhere


def test_existing_oidc_provider_can_be_reused(tmp_path_factory: pytest.TempPathFactory) -> None:
    from aws_cdk import App
    from raw2gold_infra.ci import Raw2GoldCiStack
    from raw2gold_infra.settings import DeploySettings

    app = App(outdir=str(tmp_path_factory.mktemp("cdk-oidc")))
    arn = "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com"
    settings = DeploySettings(github_repo="acme/raw2gold", github_oidc_provider_arn=arn)
    stack = Raw2GoldCiStack(app, "Ci", settings=settings)
    t = Template.from_stack(stack)
    t.resource_count_is("AWS::IAM::OIDCProvider", 0)
    t.has_resource_properties(
        "AWS::IAM::Role",
        {
            "AssumeRolePolicyDocument": {
                "Statement": [Match.object_like({"Principal": {"Federated": arn}})]
            }
        },
    )
