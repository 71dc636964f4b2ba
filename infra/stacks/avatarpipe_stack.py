"""The avatarpipe production stack: storage, ingestion queue, network, ECS GPU compute,
Dagster task definitions, secrets, the GLB CDN, and the web tier's upload policy."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, RemovalPolicy, Stack, Tags
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from stacks.compute import Compute
from stacks.config import InfraConfig
from stacks.delivery import GlbDelivery
from stacks.network import Network
from stacks.storage import DataStores


class AvatarpipeStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: InfraConfig, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        Tags.of(self).add("project", config.prefix)
        platform_key = kms.Key(
            self,
            "PlatformKey",
            description="avatarpipe: logs, secrets, container images",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        platform_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchLogs",
                principals=[iam.ServicePrincipal(f"logs.{self.region}.amazonaws.com")],
                actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
                resources=["*"],
                conditions={
                    "ArnLike": {
                        "kms:EncryptionContext:aws:logs:arn": f"arn:{self.partition}:logs:{self.region}:{self.account}:log-group:*"
                    }
                },
            )
        )
        data = DataStores(self, "Data", config=config)
        network = Network(self, "Network", config=config, logs_key=platform_key)
        compute = Compute(self, "Compute", config=config, network=network, data=data, platform_key=platform_key)
        delivery = GlbDelivery(self, "Glbs", config=config, data=data)

        # What the web tier needs to hand out presigned upload URLs, and nothing more.
        upload_signer = iam.ManagedPolicy(
            self,
            "UploadUrlSigner",
            description="Attach to the web tier: sign presigned PUTs of raw photos",
            statements=[
                iam.PolicyStatement(
                    sid="PutRawPhotos",
                    actions=["s3:PutObject"],
                    resources=[data.uploads.arn_for_objects("subjects/*/*/raw/*")],
                ),
                iam.PolicyStatement(
                    sid="EncryptRawPhotos", actions=["kms:GenerateDataKey"], resources=[data.uploads_key.key_arn]
                ),
            ],
        )

        outputs = {
            "UploadsBucket": data.uploads.bucket_name,
            "ArtifactsBucket": data.artifacts.bucket_name,
            "ArtifactsKeyArn": data.artifacts_key.key_arn,
            "UploadEventsQueueUrl": data.upload_events.queue_url,
            "UploadEventsDlqUrl": data.dead_letters.queue_url,
            "ClusterName": compute.cluster.cluster_name,
            "GpuCapacityProvider": compute.gpu_capacity.capacity_provider_name,
            "WorkerGpuTaskDefinition": compute.worker_gpu.family,
            "WorkerCpuTaskDefinition": compute.worker_cpu.family,
            "DagsterRunTaskDefinition": compute.run_task.family,
            "ImageRepositoryUri": compute.repository.repository_uri,
            "MongoDbUriSecretArn": compute.mongodb_uri.secret_arn,
            "DagsterPostgresUrlSecretArn": compute.postgres_url.secret_arn,
            "MlflowBackendStoreUriSecretArn": compute.mlflow_uri.secret_arn,
            "GlbDistributionDomain": delivery.distribution.distribution_domain_name,
            "UploadUrlSignerPolicyArn": upload_signer.managed_policy_arn,
        }
        for name, value in outputs.items():
            CfnOutput(self, name, value=value)
