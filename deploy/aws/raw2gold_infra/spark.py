"""Optional Spark capacity: an EMR Serverless application and its job role (``sparkServerless``).

The orchestrator may start job runs on the application and pass the job role to it; the job
role reaches the same lake prefixes as the host, plus ``_emr/`` for scripts and logs.
"""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_emrserverless as emrs
from aws_cdk import aws_iam as iam
from constructs import Construct

from .lake import Lake
from .settings import EMR_PREFIX, LAKE_PREFIXES, DeploySettings


class SparkServerless(Construct):
    """EMR Serverless Spark application with auto-stop and a capacity ceiling."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: DeploySettings,
        lake: Lake,
        orchestrator_role: iam.IRole,
    ) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        self.application = emrs.CfnApplication(
            self,
            "Application",
            name="raw2gold-spark",
            release_label=settings.emr_release_label,
            type="SPARK",
            auto_start_configuration=emrs.CfnApplication.AutoStartConfigurationProperty(
                enabled=True
            ),
            auto_stop_configuration=emrs.CfnApplication.AutoStopConfigurationProperty(
                enabled=True, idle_timeout_minutes=15
            ),
            maximum_capacity=emrs.CfnApplication.MaximumAllowedResourcesProperty(
                cpu="16 vCPU", memory="64 GB", disk="400 GB"
            ),
        )
        self.job_role = iam.Role(
            self,
            "JobRole",
            assumed_by=iam.ServicePrincipal(
                "emr-serverless.amazonaws.com",
                conditions={"StringEquals": {"aws:SourceAccount": stack.account}},
            ),
            description="raw2gold Spark jobs on EMR Serverless: lake prefixes only",
        )
        lake.allow_prefixes(self.job_role, read_write=(*LAKE_PREFIXES, EMR_PREFIX))
        orchestrator_role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="RunSparkJobs",
                actions=[
                    "emr-serverless:StartJobRun",
                    "emr-serverless:GetJobRun",
                    "emr-serverless:CancelJobRun",
                    "emr-serverless:GetDashboardForJobRun",
                    "emr-serverless:GetApplication",
                ],
                resources=[self.application.attr_arn, f"{self.application.attr_arn}/jobruns/*"],
            )
        )
        orchestrator_role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="PassSparkJobRole",
                actions=["iam:PassRole"],
                resources=[self.job_role.role_arn],
                conditions={
                    "StringEquals": {"iam:PassedToService": "emr-serverless.amazonaws.com"}
                },
            )
        )
