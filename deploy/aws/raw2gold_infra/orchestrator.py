"""The orchestrator host: one EC2 instance running the compose stack (Airflow + PostgreSQL).

Reached through SSM Session Manager (shell and port forwarding) by default: no inbound rule at
all. An admin CIDR opens the UI port to that network only; SSH is off unless asked for, and then
only from the same CIDR.
"""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct

from . import user_data
from .lake import Lake
from .secrets import ConnectionSecrets
from .settings import DEPLOY_PREFIX, LAKE_PREFIXES, DeploySettings
from .suppressions import skip_checkov

UI_PORT = 8080
UBUNTU_AMI_PARAMETER = (
    "/aws/service/canonical/ubuntu/server/24.04/stable/current/{arch}/hvm/ebs-gp3/ami-id"
)


class Network(Construct):
    """A small VPC: public subnets in two AZs, no NAT gateway, an S3 gateway endpoint, flow logs."""

    def __init__(self, scope: Construct, id: str, *, lake: Lake) -> None:
        super().__init__(scope, id)
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr("10.42.0.0/16"),
            max_azs=2,
            nat_gateways=0,
            restrict_default_security_group=False,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="public",
                    subnet_type=ec2.SubnetType.PUBLIC,
                    cidr_mask=24,
                    map_public_ip_on_launch=False,
                )
            ],
            gateway_endpoints={
                "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3)
            },
        )
        self.vpc.add_flow_log(
            "FlowLogs",
            destination=ec2.FlowLogDestination.to_s3(lake.log_bucket, "vpc-flow-logs/"),
            traffic_type=ec2.FlowLogTrafficType.REJECT,
        )


class Orchestrator(Construct):
    """The EC2 host, its security group and its instance profile."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: DeploySettings,
        network: Network,
        lake: Lake,
        secrets: ConnectionSecrets,
    ) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="raw2gold orchestrator host: lake prefixes, its secrets, SSM, ECR pull",
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore")
            ],
        )
        lake.allow_prefixes(self.role, read_write=LAKE_PREFIXES, read_only=(DEPLOY_PREFIX,))
        secrets.grant_read_prefixes(self.role)
        repository_arn = stack.format_arn(
            service="ecr", resource="repository", resource_name=settings.image_repository
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="PullImage",
                actions=[
                    "ecr:BatchGetImage",
                    "ecr:GetDownloadUrlForLayer",
                    "ecr:BatchCheckLayerAvailability",
                ],
                resources=[repository_arn],
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="EcrLogin",
                actions=["ecr:GetAuthorizationToken"],
                resources=["*"],  # the action supports no resource-level permission
            )
        )

        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=network.vpc,
            description="raw2gold orchestrator: no inbound unless an admin CIDR is set",
            allow_all_outbound=False,
        )
        for port in settings.egress_ports:
            self.security_group.add_egress_rule(
                ec2.Peer.any_ipv4(), ec2.Port.tcp(port), f"egress tcp/{port}"
            )
        if settings.admin_cidr:
            self.security_group.add_ingress_rule(
                ec2.Peer.ipv4(settings.admin_cidr),
                ec2.Port.tcp(UI_PORT),
                "Airflow UI from the admin network only",
            )
            if settings.enable_ssh:
                self.security_group.add_ingress_rule(
                    ec2.Peer.ipv4(settings.admin_cidr),
                    ec2.Port.tcp(22),
                    "SSH from the admin network only (SSM is the default access)",
                )

        instance_type = ec2.InstanceType(settings.instance_type)
        arch = "arm64" if instance_type.architecture == ec2.InstanceArchitecture.ARM_64 else "amd64"
        machine_image = ec2.MachineImage.from_ssm_parameter(
            UBUNTU_AMI_PARAMETER.format(arch=arch), os=ec2.OperatingSystemType.LINUX
        )
        registry = f"{stack.account}.dkr.ecr.{stack.region}.{stack.url_suffix}"
        boot = ec2.UserData.for_linux(shebang="")
        boot.add_commands(
            user_data.render(
                bucket=lake.bucket.bucket_name,
                region=stack.region,
                registry=registry,
                image_uri=f"{registry}/{settings.image_repository}:{settings.image_tag}",
                ui_on_private_ip=settings.admin_cidr is not None,
            )
        )
        self.instance = ec2.Instance(
            self,
            "Host",
            vpc=network.vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
            associate_public_ip_address=True,
            instance_type=instance_type,
            machine_image=machine_image,
            role=self.role,
            security_group=self.security_group,
            user_data=boot,
            user_data_causes_replacement=True,
            http_tokens=ec2.HttpTokens.REQUIRED,  # IMDSv2 only
            http_endpoint=True,
            # Containers sit one network hop behind the host: they need a hop limit of 2 to
            # reach IMDS (and so the instance profile's credentials).
            http_put_response_hop_limit=2,
            detailed_monitoring=True,
            ebs_optimized=True,
            key_pair=(
                ec2.KeyPair.from_key_pair_name(self, "KeyPair", settings.ssh_key_name)
                if settings.enable_ssh and settings.ssh_key_name
                else None
            ),
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/sda1",
                    volume=ec2.BlockDeviceVolume.ebs(
                        settings.root_volume_gib,
                        encrypted=True,
                        volume_type=ec2.EbsDeviceVolumeType.GP3,
                        delete_on_termination=True,
                    ),
                )
            ],
        )
        skip_checkov(
            self.instance,
            {
                "CKV_AWS_88": "Public address for outbound traffic (SSM, ECR, package mirrors) "
                "without a NAT gateway; the security group allows no inbound traffic unless "
                "an admin CIDR is configured.",
            },
        )
