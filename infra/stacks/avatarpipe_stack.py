"""The avatarpipe production stack: storage, ingestion queue, network, ECS GPU compute,
Dagster task definitions, secrets, the GLB CDN, the avatar service (ECS behind an ALB with TLS)
and the web app (S3 + CloudFront, one origin with the API)."""

from __future__ import annotations

from typing import Any

from aws_cdk import Annotations, CfnOutput, RemovalPolicy, Stack, Tags
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from stacks.compute import Compute
from stacks.config import InfraConfig
from stacks.delivery import GlbDelivery
from stacks.network import Network
from stacks.service import ApiService
from stacks.storage import DataStores
from stacks.web import WebApp
from stacks.worker_service import WorkerService


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
        workers = WorkerService(self, "GpuWorkers", config=config, compute=compute, data=data, platform_key=platform_key)
        delivery = GlbDelivery(self, "Glbs", config=config, data=data)
        api_enabled = api_tier_enabled(config)
        web = WebApp(self, "Web", config=config, data=data, api_domain=config.api_domain if api_enabled else None)
        # The API answers a GLB download with a redirect to a presigned S3 GET; the SPA's fetch
        # follows it cross-origin, so the artifacts bucket must allow the SPA's origins to GET.
        data.artifacts.add_cors_rule(
            allowed_methods=[s3.HttpMethods.GET, s3.HttpMethods.HEAD],
            allowed_origins=web.origins(config),
            max_age=600,
        )
        api = None
        if api_enabled:
            api = ApiService(
                self, "Api", config=config, network=network, data=data, compute=compute,
                platform_key=platform_key, web_origin=",".join(web.origins(config)),
            )  # fmt: skip
        else:
            Annotations.of(self).add_warning(
                "avatarpipe: no API tier synthesised (ALB + ECS service): set avatarpipe:apiDomain and "
                "avatarpipe:apiCertificateArn (an ACM certificate for that name, in the stack's region)"
            )

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
            "WorkerServiceName": workers.service.service_name,
            "StepRequestQueueUrl": workers.queue.queue_url,
            "StepRequestDeadLetterQueueUrl": workers.dead_letters.queue_url,
            "ImageRepositoryUri": compute.repository.repository_uri,
            "MongoDbUriSecretArn": compute.mongodb_uri.secret_arn,
            "DagsterPostgresUrlSecretArn": compute.postgres_url.secret_arn,
            "MlflowBackendStoreUriSecretArn": compute.mlflow_uri.secret_arn,
            "GlbDistributionDomain": delivery.distribution.distribution_domain_name,
            "UploadUrlSignerPolicyArn": upload_signer.managed_policy_arn,
        }
        outputs["WebBucket"] = web.bucket.bucket_name
        outputs["WebDistributionDomain"] = web.distribution.distribution_domain_name
        outputs["WebDistributionId"] = web.distribution.distribution_id
        if api is not None:
            outputs["ApiLoadBalancerDns"] = api.alb.load_balancer_dns_name
            outputs["ApiServiceName"] = api.service.service_name
            outputs["ApiTaskDefinition"] = api.task.family
            outputs["ApiServiceSecretArn"] = api.secret.secret_arn
            outputs["ApiServiceSecurityGroup"] = api.service_sg.security_group_id
            outputs["ApiKeysTaskDefinition"] = api.keys_task.family
            outputs["ApiKeyDropSecretArn"] = api.key_drop.secret_arn
        for name, value in outputs.items():
            CfnOutput(self, name, value=value)


def api_tier_enabled(config: InfraConfig) -> bool:
    """The API tier needs a TLS certificate for its domain (an ALB has no default one, and an
    HTTP-only API would carry API keys in clear). Neither set: left out, with a synth warning.
    Only one set is a configuration error."""
    if bool(config.api_domain) != bool(config.api_certificate_arn):
        raise ValueError("avatarpipe:apiDomain and avatarpipe:apiCertificateArn must be set together")
    return bool(config.api_domain)
