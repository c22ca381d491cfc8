"""Deployment settings, read from CDK context (``cdk.json`` or ``-c key=value``)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from constructs import Node

#: Prefixes of the lake (see src/raw2gold/lake/layout.py); the host may touch only these.
LAKE_PREFIXES: tuple[str, ...] = (
    "raw",
    "processed",
    "gold",
    "quarantine",
    "_state",
    "_staging",
)
#: Read-only prefix holding DAG files and pipeline configs synced to the host.
DEPLOY_PREFIX = "_deploy"
#: Prefix for EMR Serverless scripts and logs (optional Spark capacity).
EMR_PREFIX = "_emr"

#: Airflow connections kept in Secrets Manager under ``<SECRETS_PREFIX>/connections/<conn id>``.
SECRETS_PREFIX = "raw2gold"
CONNECTION_SECRETS: dict[str, str] = {
    "raw2gold_slack": "Slack incoming webhook (conn_type slackwebhook)",
    "raw2gold_smtp": "SMTP server for failure e-mails (conn_type smtp)",
    "raw2gold_airbyte": "Airbyte server API client id and secret (conn_type airbyte)",
}


def _flag(value: Any) -> bool:
    """A context value as a boolean (``-c x=true`` arrives as the string 'true')."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def _cidr(value: str | None) -> str | None:
    """Validate an IPv4 CIDR; refuse the whole internet."""
    if value in (None, ""):
        return None
    net = ipaddress.ip_network(str(value), strict=True)
    if net.prefixlen == 0:
        raise ValueError("adminCidr must not be 0.0.0.0/0: give your own network, e.g. a /32")
    return str(net)


@dataclass(frozen=True)
class DeploySettings:
    """Every knob of the deployment, with defaults that really run Airflow 3 and Spark local."""

    instance_type: str = "m7i.xlarge"
    root_volume_gib: int = 60
    admin_cidr: str | None = None
    enable_ssh: bool = False
    ssh_key_name: str | None = None
    image_repository: str = "raw2gold-airflow"
    image_tag: str = "v0.1.0"
    spark_serverless: bool = False
    emr_release_label: str = "emr-7.9.0"
    github_repo: str | None = None
    github_oidc_provider_arn: str | None = None
    lake_ia_after_days: int = 30
    noncurrent_expire_days: int = 30
    access_log_expire_days: int = 365
    egress_ports: tuple[int, ...] = field(default=(80, 443, 587))

    def __post_init__(self) -> None:
        if self.enable_ssh and not self.admin_cidr:
            raise ValueError("enableSsh needs adminCidr: SSH is never opened to the world")
        if self.enable_ssh and not self.ssh_key_name:
            raise ValueError("enableSsh needs sshKeyName (an existing EC2 key pair)")
        if self.github_repo is not None and self.github_repo.count("/") != 1:
            raise ValueError("githubRepo must look like owner/name")

    @classmethod
    def from_node(cls, node: Node) -> DeploySettings:
        """Read the settings from a construct node's context."""

        def get(key: str) -> Any:
            return node.try_get_context(key)

        defaults = cls()
        return cls(
            instance_type=str(get("instanceType") or defaults.instance_type),
            root_volume_gib=int(get("rootVolumeGiB") or defaults.root_volume_gib),
            admin_cidr=_cidr(get("adminCidr")),
            enable_ssh=_flag(get("enableSsh") or False),
            ssh_key_name=get("sshKeyName") or None,
            image_repository=str(get("imageRepository") or defaults.image_repository),
            image_tag=str(get("imageTag") or defaults.image_tag),
            spark_serverless=_flag(get("sparkServerless") or False),
            emr_release_label=str(get("emrReleaseLabel") or defaults.emr_release_label),
            github_repo=get("githubRepo") or None,
            github_oidc_provider_arn=get("githubOidcProviderArn") or None,
        )
