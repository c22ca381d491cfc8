"""The orchestrator host: size, IMDSv2, disks, access, IAM scope and boot script."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template
from raw2gold_infra.settings import DeploySettings
from raw2gold_infra.user_data import USER_DATA_LIMIT

from .conftest import Synth


def _policy_statements(synth: Synth, role_prefix: str) -> list[dict[str, Any]]:
    """All inline policy statements attached to roles whose logical id starts with a prefix."""
    out: list[dict[str, Any]] = []
    for policy in synth.resources("Raw2Gold", "AWS::IAM::Policy").values():
        roles = [r["Ref"] for r in policy["Properties"]["Roles"]]
        if any(r.startswith(role_prefix) for r in roles):
            out.extend(policy["Properties"]["PolicyDocument"]["Statement"])
    return out


def _user_data_text(synth: Synth) -> str:
    """The user data script with CloudFormation references shown as <Ref>."""
    host = synth.one("Raw2Gold", "AWS::EC2::Instance")
    parts = host["Properties"]["UserData"]["Fn::Base64"]
    if isinstance(parts, str):
        return parts
    return "".join(p if isinstance(p, str) else "<Ref>" for p in parts["Fn::Join"][1])


def test_default_instance_size_runs_airflow_and_spark(default_synth: Synth) -> None:
    host = default_synth.one("Raw2Gold", "AWS::EC2::Instance")
    assert host["Properties"]["InstanceType"] == "m7i.xlarge"
    assert host["Properties"]["EbsOptimized"] is True
    assert host["Properties"]["Monitoring"] is True


def test_instance_size_is_configurable(tmp_path_factory: pytest.TempPathFactory) -> None:
    assert DeploySettings(instance_type="t3.xlarge").instance_type == "t3.xlarge"
    from aws_cdk import App
    from raw2gold_infra.settings import DeploySettings as S

    app = App(context={"instanceType": "t3.xlarge"})
    assert S.from_node(app.node).instance_type == "t3.xlarge"


def test_imdsv2_required_with_hop_limit_for_containers(default_synth: Synth) -> None:
    t = Template.from_json(default_synth.templates["Raw2Gold"])
    t.has_resource_properties(
        "AWS::EC2::Instance",
        {"MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 2}},
    )


def test_root_volume_is_encrypted_gp3(default_synth: Synth) -> None:
    t = Template.from_json(default_synth.templates["Raw2Gold"])
    t.has_resource_properties(
        "AWS::EC2::Instance",
        {
            "BlockDeviceMappings": [
                {
                    "DeviceName": "/dev/sda1",
                    "Ebs": Match.object_like(
                        {"Encrypted": True, "VolumeType": "gp3", "VolumeSize": 60}
                    ),
                }
            ]
        },
    )


def test_ubuntu_ami_from_public_ssm_parameter(default_synth: Synth) -> None:
    params = default_synth.templates["Raw2Gold"]["Parameters"]
    defaults = [p.get("Default", "") for p in params.values()]
    assert any("canonical/ubuntu/server/24.04" in d and "amd64" in d for d in defaults)


def test_default_access_is_ssm_only_no_inbound(default_synth: Synth) -> None:
    sg = default_synth.one("Raw2Gold", "AWS::EC2::SecurityGroup")["Properties"]
    assert "SecurityGroupIngress" not in sg
    assert not default_synth.resources("Raw2Gold", "AWS::EC2::SecurityGroupIngress")
    host = default_synth.one("Raw2Gold", "AWS::EC2::Instance")["Properties"]
    assert "KeyName" not in host
    t = Template.from_json(default_synth.templates["Raw2Gold"])
    t.has_resource_properties(
        "AWS::IAM::Role",
        {
            "ManagedPolicyArns": Match.array_with(
                [
                    {
                        "Fn::Join": [
                            "",
                            Match.array_with([":iam::aws:policy/AmazonSSMManagedInstanceCore"]),
                        ]
                    }
                ]
            )
        },
    )
    # Egress is limited to the ports the host needs.
    ports = sorted(rule["FromPort"] for rule in sg["SecurityGroupEgress"])
    assert ports == [80, 443, 587]


def test_admin_cidr_opens_ui_and_optional_ssh_to_that_cidr_only(full_synth: Synth) -> None:
    sg = full_synth.one("Raw2Gold", "AWS::EC2::SecurityGroup")["Properties"]
    ingress = {(r["FromPort"], r["CidrIp"]) for r in sg["SecurityGroupIngress"]}
    assert ingress == {(8080, "203.0.113.0/24"), (22, "203.0.113.0/24")}
    host = full_synth.one("Raw2Gold", "AWS::EC2::Instance")["Properties"]
    assert host["KeyName"] == "ops"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"enable_ssh": True, "ssh_key_name": "k"}, "adminCidr"),
        ({"enable_ssh": True, "admin_cidr": "10.0.0.0/8"}, "sshKeyName"),
        ({"github_repo": "no-slash"}, "owner/name"),
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeploySettings(**kwargs)


def test_world_open_admin_cidr_is_refused() -> None:
    from aws_cdk import App

    app = App(context={"adminCidr": "0.0.0.0/0"})
    with pytest.raises(ValueError, match="0.0.0.0/0"):
        DeploySettings.from_node(app.node)


def test_instance_role_reaches_only_the_lake_prefixes(default_synth: Synth) -> None:
    statements = _policy_statements(default_synth, "OrchestratorRole")
    by_sid = {s["Sid"]: s for s in statements}
    rw = by_sid["LakeReadWrite"]["Resource"]
    prefixes = sorted(r["Fn::Join"][1][1] for r in rw)
    assert prefixes == sorted(
        f"/{p}/*" for p in ("raw", "processed", "gold", "quarantine", "_state", "_staging")
    )
    assert by_sid["LakeReadOnly"]["Resource"]["Fn::Join"][1][1] == "/_deploy/*"
    assert by_sid["LakeReadOnly"]["Action"] == "s3:GetObject"
    listed = by_sid["LakeList"]["Condition"]["StringLike"]["s3:prefix"]
    assert "raw/*" in listed and "" not in listed and "*" not in listed
    # No statement grants S3 or Secrets Manager on "*".
    for st in statements:
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        if st.get("Resource") == "*":
            assert actions == ["ecr:GetAuthorizationToken"], st
        assert not any(a in ("*", "s3:*", "secretsmanager:*") for a in actions)


def test_instance_role_reads_only_raw2gold_secrets(default_synth: Synth) -> None:
    by_sid = {s["Sid"]: s for s in _policy_statements(default_synth, "OrchestratorRole")}
    read = by_sid["ReadRaw2goldSecrets"]
    tails = sorted(r["Fn::Join"][1][-1] for r in read["Resource"])
    assert tails == [":secret:raw2gold/connections/*", ":secret:raw2gold/variables/*"]
    assert sorted(read["Action"]) == [
        "secretsmanager:DescribeSecret",
        "secretsmanager:GetSecretValue",
    ]
    kms = by_sid["DecryptRaw2goldSecrets"]
    assert "kms:ViaService" in kms["Condition"]["StringEquals"]


def test_user_data_installs_and_starts_the_stack(default_synth: Synth) -> None:
    text = _user_data_text(default_synth)
    for needle in (
        "apt-get install -y -q docker.io docker-compose-v2",
        "cat > /opt/raw2gold/compose.yaml",
        "/opt/raw2gold/bin/init-secrets.sh /opt/raw2gold",
        "systemctl enable --now raw2gold.service",
        "systemctl enable --now raw2gold-sync.timer",
        "docker compose up -d",
        "AIRFLOW_UI_BIND=%s",
        "uri: s3://<Ref>/",
    ):
        assert needle in text, needle
    # The default publishes the UI on loopback only (reach it through SSM port forwarding).
    assert '"<Ref>/raw2gold-airflow:v0.1.0" "<Ref>" 127.0.0.1' in text.replace(
        "<Ref>.dkr.ecr.<Ref>.<Ref>", "<Ref>"
    )
    assert len(text.encode()) + 300 < USER_DATA_LIMIT


def test_user_data_with_admin_cidr_binds_the_private_address(full_synth: Synth) -> None:
    text = _user_data_text(full_synth)
    assert '"$(imds local-ipv4)"' in text
    assert "raw2gold-airflow:v1.2.3" in text


def test_no_secret_values_in_templates(default_synth: Synth, full_synth: Synth) -> None:
    blob = json.dumps([default_synth.templates, full_synth.templates])
    for pattern in (
        r"AKIA[0-9A-Z]{16}",
        r"hooks\.slack\.com/services",
        r"(?i)password\s*[:=]\s*\w",
        r"(?i)secret_?key\s*[:=]\s*\w",
        r"POSTGRES_PASSWORD:",
    ):
        assert not re.search(pattern, blob), pattern


def test_vpc_has_no_nat_but_flow_logs_and_s3_endpoint(default_synth: Synth) -> None:
    t = Template.from_json(default_synth.templates["Raw2Gold"])
    t.resource_count_is("AWS::EC2::NatGateway", 0)
    t.has_resource_properties("AWS::EC2::FlowLog", {"LogDestinationType": "s3"})
    t.has_resource_properties("AWS::EC2::VPCEndpoint", {"VpcEndpointType": "Gateway"})
    for subnet in default_synth.resources("Raw2Gold", "AWS::EC2::Subnet").values():
        assert subnet["Properties"]["MapPublicIpOnLaunch"] is False


def test_outputs_give_the_pipeline_lake_config(default_synth: Synth) -> None:
    outputs = default_synth.templates["Raw2Gold"]["Outputs"]
    parts = outputs["PipelineLakeConfig"]["Value"]["Fn::Join"][1]
    assert parts[0] == "lake: {uri: 's3://"
    assert parts[2] == "/', s3: {region: "
    assert parts[3] == {"Ref": "AWS::Region"}
    assert "key" not in json.dumps(parts).lower()
    assert "AWS-StartPortForwardingSession" in json.dumps(outputs["UiTunnelCommand"])
