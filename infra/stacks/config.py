"""Deployment settings, read from CDK context (`cdk.json` or `-c key=value`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from constructs import Node


@dataclass(frozen=True)
class InfraConfig:
    prefix: str = "avatarpipe"
    image_tag: str = "0.1.0"  # worker/orchestrator image tag in ECR (tags are immutable)
    raw_retention_days: int | None = 30  # delete raw photos N days after upload; None = keep
    gpu_instance_type: str = "g4dn.xlarge"  # g4dn / g5 class: one NVIDIA T4 / A10G
    gpu_max_instances: int = 4
    nat_gateways: int = 1
    web_origins: tuple[str, ...] = ()  # browser origins allowed to PUT presigned uploads (CORS)
    glb_domain: str = ""  # optional custom domain for the GLB distribution ...
    glb_certificate_arn: str = ""  # ... with its ACM certificate (us-east-1)
    log_retention_days: int = 365
    # The avatar service (stacks/service.py): its ALB's HTTPS listener needs an ACM certificate
    # (same region as the stack) for api_domain, a DNS name you point at the ALB. Both empty: the
    # API tier is left out of the template (synth warns); the SPA's bucket/CDN are still made.
    api_domain: str = ""
    api_certificate_arn: str = ""
    service_desired_count: int = 2
    web_domain: str = ""  # optional custom domain for the SPA's distribution ...
    web_certificate_arn: str = ""  # ... with its ACM certificate (us-east-1)
    web_acl_arn: str = ""  # optional WAF web ACL (scope CLOUDFRONT, us-east-1) for the SPA/API CDN
    worker_gpu_memory_mib: int = 14_336  # g4dn.xlarge: 16 GiB, leave room for the ECS agent
    worker_cpu_vcpu: int = 4  # CPU fallback on Fargate
    worker_cpu_memory_mib: int = 16_384
    # The warm GPU worker service (stacks/worker_service.py): the Dagster tasks' compute mode
    # (ecs_service: steps go to the service through SQS; ecs: one cold task per step) and the
    # service's task count range (min 1: one warm worker; 0: nothing while idle, cold starts)
    compute_mode: str = "ecs_service"
    worker_service_min_tasks: int = 1
    worker_service_max_tasks: int = 4

    @staticmethod
    def from_context(node: Node) -> InfraConfig:
        def get(name: str, default: Any) -> Any:
            value = node.try_get_context(f"avatarpipe:{name}")
            return default if value is None else value

        retention = get("rawRetentionDays", 30)
        origins = get("webOrigins", [])
        if isinstance(origins, str):
            origins = [o for o in origins.split(",") if o]
        return InfraConfig(
            prefix=str(get("prefix", "avatarpipe")),
            image_tag=str(get("imageTag", "0.1.0")),
            raw_retention_days=int(retention) if retention not in ("", 0, "0", "none") else None,
            gpu_instance_type=str(get("gpuInstanceType", "g4dn.xlarge")),
            gpu_max_instances=int(get("gpuMaxInstances", 4)),
            nat_gateways=int(get("natGateways", 1)),
            web_origins=tuple(origins),
            glb_domain=str(get("glbDomain", "")),
            glb_certificate_arn=str(get("glbCertificateArn", "")),
            api_domain=str(get("apiDomain", "")),
            api_certificate_arn=str(get("apiCertificateArn", "")),
            service_desired_count=int(get("serviceDesiredCount", 2)),
            web_domain=str(get("webDomain", "")),
            web_certificate_arn=str(get("webCertificateArn", "")),
            web_acl_arn=str(get("webAclArn", "")),
            compute_mode=str(get("computeMode", "ecs_service")),
            worker_service_min_tasks=int(get("workerServiceMinTasks", 1)),
            worker_service_max_tasks=int(get("workerServiceMaxTasks", int(get("gpuMaxInstances", 4)))),
        )
