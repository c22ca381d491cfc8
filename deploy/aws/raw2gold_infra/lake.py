"""The S3 lake: one KMS-encrypted, versioned bucket with raw/, processed/ and gold/ prefixes.

One bucket (not one per layer) because raw2gold addresses the lake as a single root URI
(``s3://<bucket>/``) with its layers as prefixes (src/raw2gold/lake/layout.py), Delta and the
run bookkeeping (``_state/``, ``_staging/``) move data between layers, and IAM, lifecycle and
logging can all be scoped per prefix. A second bucket only receives the access logs.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from .settings import DeploySettings
from .suppressions import skip_checkov


class Lake(Construct):
    """Lake bucket, its access-log bucket and the customer managed KMS key."""

    def __init__(self, scope: Construct, id: str, *, settings: DeploySettings) -> None:
        super().__init__(scope, id)
        self.key = kms.Key(
            self,
            "Key",
            description="raw2gold: lake objects, secrets and EMR job data",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.log_bucket = s3.Bucket(
            self,
            "AccessLogs",
            # S3 server access logging can only deliver to SSE-S3 buckets.
            encryption=s3.BucketEncryption.S3_MANAGED,
            versioned=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-logs",
                    expiration=Duration.days(settings.access_log_expire_days),
                    noncurrent_version_expiration=Duration.days(1),
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                )
            ],
        )
        skip_checkov(
            self.log_bucket,
            {"CKV_AWS_18": "This is the access-log sink; logging it into itself would loop."},
        )
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,
            versioned=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.log_bucket,
            server_access_logs_prefix="s3-access/lake/",
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="raw-to-infrequent-access",
                    prefix="raw/",
                    transitions=[
                        s3.Transition(
                            storage_class=s3.StorageClass.INFREQUENT_ACCESS,
                            transition_after=Duration.days(settings.lake_ia_after_days),
                        )
                    ],
                ),
                s3.LifecycleRule(
                    id="expire-old-versions",
                    noncurrent_version_expiration=Duration.days(settings.noncurrent_expire_days),
                    expired_object_delete_marker=True,
                    abort_incomplete_multipart_upload_after=Duration.days(7),
                ),
                s3.LifecycleRule(
                    id="expire-staging",
                    prefix="_staging/",
                    expiration=Duration.days(14),
                ),
            ],
        )

    def allow_prefixes(
        self,
        grantee: iam.IGrantable,
        *,
        read_write: tuple[str, ...],
        read_only: tuple[str, ...] = (),
    ) -> None:
        """Grant object access on the given prefixes only (plus KMS use through S3)."""
        bucket = self.bucket
        if read_write:
            grantee.grant_principal.add_to_principal_policy(
                iam.PolicyStatement(
                    sid="LakeReadWrite",
                    actions=[
                        "s3:GetObject",
                        "s3:PutObject",
                        "s3:DeleteObject",
                        "s3:AbortMultipartUpload",
                        "s3:ListMultipartUploadParts",
                    ],
                    resources=[bucket.arn_for_objects(f"{p}/*") for p in read_write],
                )
            )
        if read_only:
            grantee.grant_principal.add_to_principal_policy(
                iam.PolicyStatement(
                    sid="LakeReadOnly",
                    actions=["s3:GetObject"],
                    resources=[bucket.arn_for_objects(f"{p}/*") for p in read_only],
                )
            )
        listed = [*read_write, *read_only]
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                sid="LakeList",
                actions=["s3:ListBucket"],
                resources=[bucket.bucket_arn],
                conditions={
                    "StringLike": {"s3:prefix": [v for p in listed for v in (p, f"{p}/*")]}
                },
            )
        )
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                sid="LakeLocation",
                actions=["s3:GetBucketLocation"],
                resources=[bucket.bucket_arn],
            )
        )
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                sid="LakeKms",
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=[self.key.key_arn],
                conditions={
                    "StringEquals": {
                        "kms:ViaService": f"s3.{bucket.stack.region}.amazonaws.com",
                    }
                },
            )
        )
