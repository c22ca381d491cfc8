"""Airflow connections in AWS Secrets Manager, read by Airflow's SecretsManagerBackend.

The template never holds a secret value: each secret starts with a random placeholder that
Secrets Manager generates, and the operator puts the real connection JSON with
``aws secretsmanager put-secret-value`` (docs/deploy-aws.md).
"""

from __future__ import annotations

from aws_cdk import ArnFormat, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as sm
from constructs import Construct

from .settings import CONNECTION_SECRETS, SECRETS_PREFIX

CONNECTIONS_PREFIX = f"{SECRETS_PREFIX}/connections"
VARIABLES_PREFIX = f"{SECRETS_PREFIX}/variables"


class ConnectionSecrets(Construct):
    """One secret per Airflow connection, encrypted with the deployment's KMS key."""

    def __init__(self, scope: Construct, id: str, *, key: kms.IKey) -> None:
        super().__init__(scope, id)
        self.key = key
        self.secrets: dict[str, sm.Secret] = {}
        for conn_id, description in CONNECTION_SECRETS.items():
            secret = sm.Secret(
                self,
                conn_id,
                secret_name=f"{CONNECTIONS_PREFIX}/{conn_id}",
                description=f"raw2gold Airflow connection {conn_id}: {description}. "
                "Placeholder until put-secret-value.",
                encryption_key=key,
                generate_secret_string=sm.SecretStringGenerator(
                    exclude_punctuation=True, password_length=32
                ),
                removal_policy=RemovalPolicy.DESTROY,
            )
            self.secrets[conn_id] = secret

    def grant_read_prefixes(self, grantee: iam.IGrantable) -> None:
        """Allow reading raw2gold's connection and variable secrets, and nothing else."""
        stack = Stack.of(self)
        arns = [
            stack.format_arn(
                service="secretsmanager",
                resource="secret",
                resource_name=f"{prefix}/*",
                arn_format=ArnFormat.COLON_RESOURCE_NAME,
            )
            for prefix in (CONNECTIONS_PREFIX, VARIABLES_PREFIX)
        ]
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ReadRaw2goldSecrets",
                actions=["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                resources=arns,
            )
        )
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                sid="DecryptRaw2goldSecrets",
                actions=["kms:Decrypt"],
                resources=[self.key.key_arn],
                conditions={
                    "StringEquals": {
                        "kms:ViaService": f"secretsmanager.{stack.region}.amazonaws.com"
                    }
                },
            )
        )
