"""The lake bucket, its log bucket, KMS key and secrets, asserted on the synthesized template."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_cdk.assertions import Match, Template

from .conftest import Synth


def _lake_bucket(t: Template) -> Mapping[str, Mapping[str, Any]]:
    """The bucket that logs to another bucket (the lake), by logical id."""
    found = t.find_resources(
        "AWS::S3::Bucket", {"Properties": {"LoggingConfiguration": Match.any_value()}}
    )
    assert len(found) == 1
    return found


def test_one_lake_bucket_plus_a_log_bucket(default_synth: Synth) -> None:
    t = Template.from_json(default_synth.templates["Raw2Gold"])
    t.resource_count_is("AWS::S3::Bucket", 2)
    _lake_bucket(t)


def test_lake_is_kms_encrypted_with_a_rotating_key(default_synth: Synth) -> None:
    t = Template.from_json(default_synth.templates["Raw2Gold"])
    t.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})
    t.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [
                    {
                        "BucketKeyEnabled": True,
                        "ServerSideEncryptionByDefault": {
                            "SSEAlgorithm": "aws:kms",
                            "KMSMasterKeyID": Match.any_value(),
                        },
                    }
                ]
            },
            "LoggingConfiguration": Match.any_value(),
        },
    )


def test_every_bucket_is_versioned_private_and_encrypted(default_synth: Synth) -> None:
    buckets = default_synth.resources("Raw2Gold", "AWS::S3::Bucket")
    for props in (b["Properties"] for b in buckets.values()):
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]


def test_every_bucket_denies_plain_http(default_synth: Synth) -> None:
    buckets = set(default_synth.resources("Raw2Gold", "AWS::S3::Bucket"))
    policies = default_synth.resources("Raw2Gold", "AWS::S3::BucketPolicy").values()
    covered = set()
    for policy in policies:
        props = policy["Properties"]
        for st in props["PolicyDocument"]["Statement"]:
            if st.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}:
                assert st["Effect"] == "Deny" and st["Action"] == "s3:*"
                assert st["Principal"] == {"AWS": "*"}
                covered.add(props["Bucket"]["Ref"])
    assert covered == buckets


def test_lake_lifecycle_raw_to_ia_and_old_versions_expire(default_synth: Synth) -> None:
    t = Template.from_json(default_synth.templates["Raw2Gold"])
    t.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "LoggingConfiguration": Match.any_value(),
            "LifecycleConfiguration": {
                "Rules": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Prefix": "raw/",
                                "Status": "Enabled",
                                "Transitions": [
                                    {"StorageClass": "STANDARD_IA", "TransitionInDays": 30}
                                ],
                            }
                        ),
                        Match.object_like(
                            {
                                "Status": "Enabled",
                                "NoncurrentVersionExpiration": {"NoncurrentDays": 30},
                                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
                            }
                        ),
                    ]
                )
            },
        },
    )


def test_lake_access_logs_go_to_the_log_bucket(default_synth: Synth) -> None:
    t = Template.from_json(default_synth.templates["Raw2Gold"])
    lake = next(iter(_lake_bucket(t).values()))
    target = lake["Properties"]["LoggingConfiguration"]["DestinationBucketName"]["Ref"]
    log_bucket = default_synth.templates["Raw2Gold"]["Resources"][target]
    assert log_bucket["Type"] == "AWS::S3::Bucket"
    rules = log_bucket["Properties"]["LifecycleConfiguration"]["Rules"]
    assert any("ExpirationInDays" in r for r in rules)
    # The log sink is the one checkov suppression on buckets, with its reason.
    skips = log_bucket["Metadata"]["checkov"]["skip"]
    assert [s["id"] for s in skips] == ["CKV_AWS_18"] and skips[0]["comment"]


def test_data_is_retained_when_the_stack_is_deleted(default_synth: Synth) -> None:
    t = Template.from_json(default_synth.templates["Raw2Gold"])
    for type_ in ("AWS::S3::Bucket", "AWS::KMS::Key"):
        for res in t.find_resources(type_).values():
            assert res["DeletionPolicy"] == "Retain"


def test_connection_secrets_hold_no_value_and_use_the_key(default_synth: Synth) -> None:
    secrets = default_synth.resources("Raw2Gold", "AWS::SecretsManager::Secret")
    names = sorted(s["Properties"]["Name"] for s in secrets.values())
    assert names == [
        "raw2gold/connections/raw2gold_airbyte",
        "raw2gold/connections/raw2gold_slack",
        "raw2gold/connections/raw2gold_smtp",
    ]
    for s in secrets.values():
        props = s["Properties"]
        assert "SecretString" not in props
        assert "GenerateSecretString" in props
        assert "KmsKeyId" in props
