"""The warm GPU worker service (compute mode ``ecs_service``, issue 17).

Instead of one cold `run_task` per heavy step, an ECS service of GPU workers
(`python -m ops.queue_worker`) long-polls a step queue; the orchestrator
(`orchestration/compute_ecs_service.py`) puts each step's Pipes bootstrap on it and reads the
worker's Pipes messages back from S3 (`pipes/` of the artifacts bucket).

* Step queue (KMS, TLS only) with a DLQ after ONE receive: a worker that died mid-step leaves a
  half-reported Pipes session, which must not run twice (the orchestrator's stall timeout fails
  the step and Dagster's retry sends a fresh request); the DLQ keeps the evidence 14 days.
* Service on the GPU capacity provider (the same ASG of GPU hosts, managed scaling brings a host
  up for each task), desired count scaled on the queue's backlog: messages visible + in flight.
  In flight counts because a busy worker's message is invisible: scaling on visible messages
  alone would scale in the workers that are running steps. The workers also turn on ECS task
  scale-in protection while a step runs.
* Minimum tasks: 1 by default (`avatarpipe:workerServiceMinTasks`). One warm GPU worker costs a
  g4dn.xlarge around the clock (~0.5 USD/h on demand), and a step then starts in seconds with
  Anny already loaded. With 0 the service costs nothing while idle, but the first step after a
  quiet spell waits for a cold start: the ASG launches a GPU host (~2-4 min), ECS pulls the
  multi-GB CUDA image (~2-5 min) and the worker loads torch and Anny (~0.5 min), well inside
  the default pickup timeout (`AVATARPIPE_ECS_SERVICE_PICKUP_S`, 900 s) but minutes per burst.
"""

from __future__ import annotations

from aws_cdk import Aws, Duration
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from stacks.compute import WORKER_CONTAINER, WORKER_OUTPUT_PREFIXES, Compute
from stacks.config import InfraConfig
from stacks.storage import DataStores

QUEUE_WORKER_COMMAND = ["python", "-m", "ops.queue_worker"]
PIPES_PREFIX = "pipes/"  # orchestration/compute_ecs_service.PIPES_PREFIX
# the worker extends its message's visibility every heartbeat (ops/queue_worker.py defaults)
VISIBILITY_S = 120
# backlog (visible + in flight) -> exact number of tasks; clamped to [min, max]
BACKLOG_STEPS = ((0, 0), (1, 1), (3, 2), (8, 4))


class WorkerService(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: InfraConfig,
        compute: Compute,
        data: DataStores,
        platform_key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)
        self.dead_letters = sqs.Queue(
            self, "StepRequestsDLQ", encryption=sqs.QueueEncryption.KMS, encryption_master_key=platform_key,
            retention_period=Duration.days(14), enforce_ssl=True,
        )  # fmt: skip
        self.queue = sqs.Queue(
            self,
            "StepRequests",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=platform_key,
            data_key_reuse=Duration.hours(1),
            retention_period=Duration.days(1),  # the orchestrator stops waiting long before
            visibility_timeout=Duration.seconds(VISIBILITY_S),
            dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=1, queue=self.dead_letters),
            enforce_ssl=True,
        )
        self.role = self._worker_role(compute, data, platform_key)
        self.task = ecs.Ec2TaskDefinition(
            self, "GpuTask", family=f"{config.prefix}-worker-service-gpu", network_mode=ecs.NetworkMode.AWS_VPC,
            task_role=self.role, execution_role=compute.worker_exec_role,
        )  # fmt: skip
        self._container(compute, data)
        gpu = ecs.CapacityProviderStrategy(capacity_provider=compute.gpu_capacity.capacity_provider_name, weight=1)
        self.service = ecs.Ec2Service(
            self, "Service", cluster=compute.cluster, task_definition=self.task, capacity_provider_strategies=[gpu],
            service_name=f"{config.prefix}-gpu-workers", desired_count=config.worker_service_min_tasks,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            security_groups=[compute.worker_sg],
            min_healthy_percent=0,  # one GPU per host: a deploy replaces tasks, never doubles hosts
            max_healthy_percent=100,
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
        )  # fmt: skip
        self._scale_on_backlog(config)
        self._orchestrator_access(compute, data, platform_key)

    def backlog(self) -> cloudwatch.MathExpression:
        """Steps waiting plus steps running: what the service must have workers for."""
        period = Duration.minutes(1)
        return cloudwatch.MathExpression(
            expression="visible + inflight",
            using_metrics={
                "visible": self.queue.metric_approximate_number_of_messages_visible(period=period, statistic="Maximum"),
                "inflight": self.queue.metric_approximate_number_of_messages_not_visible(period=period, statistic="Maximum"),
            },
            label="step backlog (visible + in flight)",
            period=period,
        )

    def _scale_on_backlog(self, config: InfraConfig) -> None:
        scaling = self.service.auto_scale_task_count(
            min_capacity=config.worker_service_min_tasks, max_capacity=config.worker_service_max_tasks
        )
        steps = [
            appscaling.ScalingInterval(lower=lower, upper=upper, change=change)
            for (lower, change), (upper, _) in zip(BACKLOG_STEPS, [*BACKLOG_STEPS[1:], (None, None)], strict=True)
        ]
        scaling.scale_on_metric(
            "ScaleOnStepBacklog",
            metric=self.backlog(),
            scaling_steps=steps,
            adjustment_type=appscaling.AdjustmentType.EXACT_CAPACITY,
            cooldown=Duration.minutes(1),
            evaluation_periods=1,
        )

    def _container(self, compute: Compute, data: DataStores) -> None:
        self.task.add_volume(name="tmp")
        self.task.add_volume(name="scratch")
        container = self.task.add_container(
            WORKER_CONTAINER,
            image=ecs.ContainerImage.from_ecr_repository(compute.repository, compute.config.image_tag),
            command=QUEUE_WORKER_COMMAND,
            essential=True,
            gpu_count=1,
            memory_limit_mib=compute.config.worker_gpu_memory_mib,
            readonly_root_filesystem=True,
            environment={
                "AVATARPIPE_S3_BUCKET": data.artifacts.bucket_name,
                "AVATARPIPE_S3_KMS_KEY_ID": data.artifacts_key.key_arn,
                "AVATARPIPE_ECS_SERVICE_QUEUE_URL": self.queue.queue_url,
                "AWS_REGION": Aws.REGION,
                "HOME": "/scratch",
                "TMPDIR": "/tmp",
            },
            logging=ecs.LogDrivers.aws_logs(stream_prefix="service", log_group=compute.worker_logs),
            stop_timeout=Duration.seconds(120),  # SIGTERM: the step in progress finishes first
        )
        container.add_mount_points(
            ecs.MountPoint(container_path="/tmp", source_volume="tmp", read_only=False),
            ecs.MountPoint(container_path="/scratch", source_volume="scratch", read_only=False),
        )

    def _worker_role(self, compute: Compute, data: DataStores, platform_key: kms.IKey) -> iam.Role:
        """The one-shot worker's data access, plus the queue, the Pipes prefix and its own task's
        scale-in protection; nothing else."""
        role = iam.Role(
            self, "WorkerServiceTaskRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="Warm GPU worker: step queue, Pipes context/messages, step inputs and outputs",
        )  # fmt: skip
        statements = {
            "ReadStepInputs": (["s3:GetObject"], [data.artifacts.arn_for_objects("subjects/*")]),
            "WriteStepOutputs": (["s3:PutObject", "s3:AbortMultipartUpload"],
                                 [data.artifacts.arn_for_objects(p) for p in WORKER_OUTPUT_PREFIXES]),
            "PipesContextAndMessages": (["s3:GetObject", "s3:PutObject"],
                                        [data.artifacts.arn_for_objects(f"{PIPES_PREFIX}*")]),
            "ArtifactsKey": (["kms:Decrypt", "kms:GenerateDataKey"], [data.artifacts_key.key_arn]),
            "TakeStepRequests": (["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                                  "sqs:GetQueueAttributes"], [self.queue.queue_arn]),
            "QueueKey": (["kms:Decrypt"], [platform_key.key_arn]),
            "ProtectOwnTask": (["ecs:UpdateTaskProtection", "ecs:GetTaskProtection"],
                               [f"arn:{Aws.PARTITION}:ecs:{Aws.REGION}:{Aws.ACCOUNT_ID}:task/{compute.cluster.cluster_name}/*"]),
        }  # fmt: skip
        for sid, (actions, resources) in statements.items():
            role.add_to_policy(iam.PolicyStatement(sid=sid, actions=actions, resources=resources))
        return role

    def _orchestrator_access(self, compute: Compute, data: DataStores, platform_key: kms.IKey) -> None:
        """The Dagster tasks send step requests and own the Pipes session objects; their compute
        mode becomes ``ecs_service`` (the per-step ECS task stays available as ``ecs``)."""
        role = compute.orchestrator_role
        role.add_to_policy(
            iam.PolicyStatement(sid="SendStepRequests", actions=["sqs:SendMessage"], resources=[self.queue.queue_arn])
        )
        role.add_to_policy(
            iam.PolicyStatement(sid="StepQueueKey", actions=["kms:GenerateDataKey", "kms:Decrypt"],
                                resources=[platform_key.key_arn])
        )  # fmt: skip
        role.add_to_policy(
            iam.PolicyStatement(
                sid="PipesSessions",
                actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                resources=[data.artifacts.arn_for_objects(f"{PIPES_PREFIX}*")],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ListPipesSessions",
                actions=["s3:ListBucket"],
                resources=[data.artifacts.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{PIPES_PREFIX}*"]}},
            )
        )
        for task in (compute.run_task, compute.daemon_task, compute.webserver_task):
            container = task.default_container
            container.add_environment("AVATARPIPE_COMPUTE_MODE", compute.config.compute_mode)
            container.add_environment("AVATARPIPE_ECS_SERVICE_QUEUE_URL", self.queue.queue_url)
            container.add_environment("AVATARPIPE_ECS_SERVICE_PIPES_BUCKET", data.artifacts.bucket_name)
