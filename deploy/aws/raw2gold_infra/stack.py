"""The raw2gold stack: lake, secrets, orchestrator host and (optionally) EMR Serverless."""

from __future__ import annotations

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from .lake import Lake
from .orchestrator import UI_PORT, Network, Orchestrator
from .secrets import CONNECTIONS_PREFIX, VARIABLES_PREFIX, ConnectionSecrets
from .settings import DeploySettings
from .spark import SparkServerless


class Raw2GoldStack(Stack):
    """Everything that runs the pipeline on AWS."""

    def __init__(self, scope: Construct, id: str, *, settings: DeploySettings, **kwargs: object):
        super().__init__(scope, id, **kwargs)  # type: ignore[arg-type]
        self.settings = settings
        self.lake = Lake(self, "Lake", settings=settings)
        self.secrets = ConnectionSecrets(self, "Connections", key=self.lake.key)
        self.network = Network(self, "Network", lake=self.lake)
        self.orchestrator = Orchestrator(
            self,
            "Orchestrator",
            settings=settings,
            network=self.network,
            lake=self.lake,
            secrets=self.secrets,
        )
        self.spark: SparkServerless | None = None
        if settings.spark_serverless:
            self.spark = SparkServerless(
                self,
                "Spark",
                settings=settings,
                lake=self.lake,
                orchestrator_role=self.orchestrator.role,
            )
            CfnOutput(self, "EmrApplicationId", value=self.spark.application.attr_application_id)
            CfnOutput(self, "EmrJobRoleArn", value=self.spark.job_role.role_arn)

        bucket = self.lake.bucket.bucket_name
        CfnOutput(self, "LakeBucket", value=bucket)
        CfnOutput(self, "LakeUri", value=f"s3://{bucket}/")
        CfnOutput(
            self,
            "PipelineLakeConfig",
            description="The lake: section of a pipeline config for this deployment",
            value=f"lake: {{uri: 's3://{bucket}/', s3: {{region: {self.region}}}}}",
        )
        CfnOutput(self, "InstanceId", value=self.orchestrator.instance.instance_id)
        CfnOutput(
            self,
            "UiTunnelCommand",
            value=(
                f"aws ssm start-session --target {self.orchestrator.instance.instance_id} "
                "--document-name AWS-StartPortForwardingSession "
                f'--parameters \'{{"portNumber":["{UI_PORT}"],"localPortNumber":["{UI_PORT}"]}}\''
            ),
        )
        CfnOutput(self, "ConnectionsPrefix", value=CONNECTIONS_PREFIX)
        CfnOutput(self, "VariablesPrefix", value=VARIABLES_PREFIX)
