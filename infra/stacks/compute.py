"""ECS: the cluster, GPU capacity for the Pipes worker, and the Dagster task definitions.

* GPU worker: EC2 capacity provider over an Auto Scaling group of g4dn/g5 hosts (ECS GPU AMI,
  IMDSv2 only, encrypted root volume), scaling from zero; task definition `…-worker-gpu`
  requests one GPU (`resourceRequirements` GPU=1). Command `python -m ops.worker`.
* CPU fallback: `…-worker-cpu` on Fargate, same image and command, no GPU.
* Dagster: webserver and daemon task definitions, and the run task definition the daemon's
  `EcsRunLauncher` starts one task of per run (infra/dagster.production.yaml).
* MLflow model registry: backend store on PostgreSQL (secret `AVATARPIPE_MLFLOW_URI`, a
  database on the same server as Dagster's or another), artifacts under `mlflow/` of the
  artifacts bucket (`AVATARPIPE_MLFLOW_ARTIFACT_ROOT`), given to every Dagster task. The
  Pipes workers get neither: they receive the model versions as Pipes extras.

IAM is one role per job, each limited to the prefixes and actions that job uses.
"""

from __future__ import annotations

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from stacks.config import InfraConfig
from stacks.network import Network
from stacks.storage import DataStores

WORKER_CONTAINER = "worker"
DAGSTER_CONTAINER = "dagster"
WORKER_COMMAND = ["python", "-m", "ops.worker"]
# Heavy steps write only their own asset's prefix.
WORKER_OUTPUT_PREFIXES = ("subjects/*/*/smplx_params/*", "subjects/*/*/mesh/*")
COMPUTE_LOG_PREFIX = "dagster/compute-logs/"
MLFLOW_ARTIFACT_PREFIX = "mlflow"  # the registry's artifacts (model/config.json per version)


class Compute(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: InfraConfig,
        network: Network,
        data: DataStores,
        platform_key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)
        self.config = config
        vpc = network.vpc
        private = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)

        self.repository = ecr.Repository(
            self,
            "Images",
            repository_name=f"{config.prefix}",
            image_scan_on_push=True,
            image_tag_mutability=ecr.TagMutability.IMMUTABLE,
            encryption=ecr.RepositoryEncryption.KMS,
            encryption_key=platform_key,
            lifecycle_rules=[ecr.LifecycleRule(max_image_count=30, description="keep the last 30 images")],
            removal_policy=RemovalPolicy.RETAIN,
        )
        image = ecs.ContainerImage.from_ecr_repository(self.repository, config.image_tag)

        # -- secrets ------------------------------------------------------------------------------
        secrets = {  # construct id -> description; values are set after deploying
            "MongoDbUri": "avatarpipe MONGODB_URI (MongoDB Atlas / DocumentDB); set the value after deploying",
            "MlflowBackendStoreUri": "MLflow backend store (model registry): postgresql://user:password@host:5432/mlflow",
            "DagsterPostgresUrl": "Dagster instance storage: postgresql://user:password@host:5432/dagster",
        }
        made = {
            name: secretsmanager.Secret(
                self, name, description=text, encryption_key=platform_key, removal_policy=RemovalPolicy.RETAIN
            )
            for name, text in secrets.items()
        }
        self.mongodb_uri, self.mlflow_uri, self.postgres_url = (made[n] for n in secrets)

        # -- logs ---------------------------------------------------------------------------------
        self.worker_logs = logs.LogGroup(
            self, "WorkerLogs", encryption_key=platform_key, retention=logs.RetentionDays.ONE_YEAR,
            removal_policy=RemovalPolicy.RETAIN,
        )  # fmt: skip
        self.dagster_logs = logs.LogGroup(
            self, "DagsterLogs", encryption_key=platform_key, retention=logs.RetentionDays.ONE_YEAR,
            removal_policy=RemovalPolicy.RETAIN,
        )  # fmt: skip
        exec_logs = logs.LogGroup(
            self, "ExecLogs", encryption_key=platform_key, retention=logs.RetentionDays.ONE_YEAR,
            removal_policy=RemovalPolicy.RETAIN,
        )  # fmt: skip

        # -- cluster and capacity -----------------------------------------------------------------
        self.cluster = ecs.Cluster(
            self,
            "Cluster",
            vpc=vpc,
            cluster_name=f"{config.prefix}",
            container_insights_v2=ecs.ContainerInsights.ENABLED,
            execute_command_configuration=ecs.ExecuteCommandConfiguration(
                kms_key=platform_key,
                logging=ecs.ExecuteCommandLogging.OVERRIDE,
                log_configuration=ecs.ExecuteCommandLogConfiguration(
                    cloud_watch_log_group=exec_logs, cloud_watch_encryption_enabled=True
                ),
            ),
        )
        self.cluster.enable_fargate_capacity_providers()
        self.worker_sg = network.https_only_group("WorkerSg", "avatarpipe Pipes worker tasks")
        self.dagster_sg = network.https_only_group(
            "DagsterSg", "avatarpipe Dagster webserver/daemon/runs", extra_tcp_ports=(5432, 27017)
        )
        hosts_sg = network.https_only_group("GpuHostsSg", "avatarpipe GPU container instances")
        host_role = iam.Role(self, "GpuHostRole", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"))
        launch_template = ec2.LaunchTemplate(
            self,
            "GpuHostTemplate",
            instance_type=ec2.InstanceType(config.gpu_instance_type),
            machine_image=ecs.EcsOptimizedImage.amazon_linux2(ecs.AmiHardwareType.GPU),
            require_imdsv2=True,
            http_put_response_hop_limit=1,
            security_group=hosts_sg,
            role=host_role,
            user_data=ec2.UserData.for_linux(),
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(100, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3),
                )
            ],
        )
        gpu_hosts = autoscaling.AutoScalingGroup(
            self,
            "GpuHosts",
            vpc=vpc,
            vpc_subnets=private,
            launch_template=launch_template,
            min_capacity=0,
            max_capacity=config.gpu_max_instances,
            new_instances_protected_from_scale_in=True,
        )
        self.gpu_capacity = ecs.AsgCapacityProvider(
            self,
            "GpuCapacity",
            capacity_provider_name=f"{config.prefix}-gpu",
            auto_scaling_group=gpu_hosts,
            enable_managed_scaling=True,
            enable_managed_termination_protection=True,
            target_capacity_percent=100,
        )
        self.cluster.add_asg_capacity_provider(self.gpu_capacity)
        self._scope_agent_logs(host_role)

        # -- roles --------------------------------------------------------------------------------
        self.worker_role = iam.Role(
            self, "WorkerTaskRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="Pipes worker: read step inputs, write its own step's outputs",
        )  # fmt: skip
        self.worker_role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadStepInputs",
                actions=["s3:GetObject"],
                resources=[data.artifacts.arn_for_objects("subjects/*")],
            )
        )
        self.worker_role.add_to_policy(
            iam.PolicyStatement(
                sid="WriteStepOutputs",
                actions=["s3:PutObject", "s3:AbortMultipartUpload"],
                resources=[data.artifacts.arn_for_objects(p) for p in WORKER_OUTPUT_PREFIXES],
            )
        )
        self.worker_role.add_to_policy(
            iam.PolicyStatement(
                sid="ArtifactsKey",
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=[data.artifacts_key.key_arn],
            )
        )
        self.worker_exec_role = iam.Role(
            self, "WorkerExecutionRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="Pull the worker image, write the worker's logs",
        )  # fmt: skip

        self.dagster_exec_role = iam.Role(
            self, "DagsterExecutionRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="Pull the image, write Dagster logs, read the Dagster/MongoDB/MLflow secrets",
        )  # fmt: skip
        self.webserver_role = iam.Role(
            self, "WebserverTaskRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="Dagster webserver: read captured compute logs",
        )  # fmt: skip
        self.webserver_role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadComputeLogs",
                actions=["s3:GetObject"],
                resources=[data.artifacts.arn_for_objects(f"{COMPUTE_LOG_PREFIX}*")],
            )
        )
        self.webserver_role.add_to_policy(
            iam.PolicyStatement(
                sid="ListComputeLogs",
                actions=["s3:ListBucket"],
                resources=[data.artifacts.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{COMPUTE_LOG_PREFIX}*"]}},
            )
        )
        self.webserver_role.add_to_policy(
            iam.PolicyStatement(  # the code location reads the registry (model/config.json of a version)
                sid="ReadRegistryArtifacts",
                actions=["s3:GetObject"],
                resources=[data.artifacts.arn_for_objects(f"{MLFLOW_ARTIFACT_PREFIX}/*")],
            )
        )
        self.webserver_role.add_to_policy(
            iam.PolicyStatement(sid="DecryptComputeLogs", actions=["kms:Decrypt"], resources=[data.artifacts_key.key_arn])
        )
        self.orchestrator_role = iam.Role(
            self, "OrchestratorTaskRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="Dagster daemon and run tasks: the pipeline's own storage, queue and workers",
        )  # fmt: skip

        # -- task definitions ---------------------------------------------------------------------
        worker_env = {
            "AVATARPIPE_S3_BUCKET": data.artifacts.bucket_name,
            "AVATARPIPE_S3_KMS_KEY_ID": data.artifacts_key.key_arn,
            "AWS_REGION": Aws.REGION,
            "HOME": "/scratch",
            "TMPDIR": "/tmp",
        }
        self.worker_gpu = ecs.Ec2TaskDefinition(
            self,
            "WorkerGpuTask",
            family=f"{config.prefix}-worker-gpu",
            network_mode=ecs.NetworkMode.AWS_VPC,
            task_role=self.worker_role,
            execution_role=self.worker_exec_role,
        )
        self._worker_container(self.worker_gpu, image, worker_env, gpu=True)
        self.worker_cpu = ecs.FargateTaskDefinition(
            self,
            "WorkerCpuTask",
            family=f"{config.prefix}-worker-cpu",
            cpu=config.worker_cpu_vcpu * 1024,
            memory_limit_mib=config.worker_cpu_memory_mib,
            task_role=self.worker_role,
            execution_role=self.worker_exec_role,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.X86_64, operating_system_family=ecs.OperatingSystemFamily.LINUX
            ),
        )
        self._worker_container(self.worker_cpu, image, worker_env, gpu=False)

        subnets = ",".join(s.subnet_id for s in vpc.private_subnets)
        self.dagster_env = {
            "DAGSTER_HOME": "/opt/dagster/dagster_home",
            "AVATARPIPE_HOME": "/tmp/avatarpipe",
            "AVATARPIPE_S3_BUCKET": data.artifacts.bucket_name,
            "AVATARPIPE_S3_UPLOADS_BUCKET": data.uploads.bucket_name,
            "AVATARPIPE_S3_KMS_KEY_ID": data.artifacts_key.key_arn,
            "AVATARPIPE_SQS_QUEUE_URL": data.upload_events.queue_url,
            "AVATARPIPE_MLFLOW_ARTIFACT_ROOT": f"s3://{data.artifacts.bucket_name}/{MLFLOW_ARTIFACT_PREFIX}",
            "AVATARPIPE_COMPUTE_MODE": "ecs",
            "AVATARPIPE_ECS_CLUSTER": self.cluster.cluster_name,
            "AVATARPIPE_ECS_TASK_DEFINITION": self.worker_gpu.family,
            "AVATARPIPE_ECS_CPU_TASK_DEFINITION": self.worker_cpu.family,
            "AVATARPIPE_ECS_CONTAINER": WORKER_CONTAINER,
            "AVATARPIPE_ECS_GPU_CAPACITY_PROVIDER": self.gpu_capacity.capacity_provider_name,
            "AVATARPIPE_ECS_SUBNETS": subnets,
            "AVATARPIPE_ECS_SECURITY_GROUPS": self.worker_sg.security_group_id,
            "DAGSTER_ECS_SUBNETS": subnets,
            "DAGSTER_ECS_SECURITY_GROUPS": self.dagster_sg.security_group_id,
            "AWS_REGION": Aws.REGION,
            "HOME": "/tmp",
        }
        self.run_task = self._dagster_task("RunTask", "run", self.orchestrator_role, command=None, port=None)
        self.dagster_env["DAGSTER_RUN_TASK_DEFINITION"] = self.run_task.family
        self.daemon_task = self._dagster_task(
            "DaemonTask", "daemon", self.orchestrator_role,
            command=["dagster-daemon", "run", "-m", "orchestration.definitions"], port=None,
        )  # fmt: skip
        self.webserver_task = self._dagster_task(
            "WebserverTask", "webserver", self.webserver_role,
            command=["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-m", "orchestration.definitions"],
            port=3000,
        )  # fmt: skip
        self._orchestrator_policy(data)

    # -- helpers ------------------------------------------------------------------------------

    def _scope_agent_logs(self, host_role: iam.Role) -> None:
        """CDK gives the container agent `logs:CreateLogStream/PutLogEvents` on `*`; on EC2 the
        awslogs driver only ever writes the worker's log group, so scope it to that group.

        CDK emits the agent's statements in a fixed order (cluster-scoped register/submit,
        cluster-conditioned poll/telemetry, then the unscopable ones); tests/infra asserts the
        result, so a CDK upgrade that changes the order fails loudly instead of silently.
        """
        policy = host_role.node.find_child("DefaultPolicy").node.default_child
        policy.add_property_override(
            "PolicyDocument.Statement.2",
            {"Action": ["ecr:GetAuthorizationToken", "ecs:DiscoverPollEndpoint"], "Effect": "Allow", "Resource": "*"},
        )
        policy.add_property_override(
            "PolicyDocument.Statement.3",
            {
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Effect": "Allow",
                "Resource": self.worker_logs.log_group_arn,  # "…:log-group:NAME:*": its streams
            },
        )

    def _worker_container(
        self, task: ecs.TaskDefinition, image: ecs.ContainerImage, env: dict[str, str], *, gpu: bool
    ) -> None:
        task.add_volume(name="tmp")
        task.add_volume(name="scratch")
        container = task.add_container(
            WORKER_CONTAINER,
            image=image,
            command=WORKER_COMMAND,
            essential=True,
            gpu_count=1 if gpu else None,
            memory_limit_mib=self.config.worker_gpu_memory_mib if gpu else None,
            readonly_root_filesystem=True,
            environment=env,
            logging=ecs.LogDrivers.aws_logs(stream_prefix="step", log_group=self.worker_logs),
            stop_timeout=Duration.seconds(30),
        )
        container.add_mount_points(
            ecs.MountPoint(container_path="/tmp", source_volume="tmp", read_only=False),
            ecs.MountPoint(container_path="/scratch", source_volume="scratch", read_only=False),
        )

    def _dagster_task(
        self, construct_id: str, name: str, role: iam.IRole, *, command: list[str] | None, port: int | None
    ) -> ecs.FargateTaskDefinition:
        task = ecs.FargateTaskDefinition(
            self,
            construct_id,
            family=f"{self.config.prefix}-dagster-{name}",
            cpu=1024 if name != "run" else 4096,
            memory_limit_mib=4096 if name != "run" else 16384,
            task_role=role,
            execution_role=self.dagster_exec_role,
        )
        task.add_volume(name="tmp")
        container = task.add_container(
            DAGSTER_CONTAINER,
            image=ecs.ContainerImage.from_ecr_repository(self.repository, self.config.image_tag),
            command=command,
            essential=True,
            readonly_root_filesystem=True,
            environment=dict(self.dagster_env),
            secrets={
                "MONGODB_URI": ecs.Secret.from_secrets_manager(self.mongodb_uri),
                "DAGSTER_PG_URL": ecs.Secret.from_secrets_manager(self.postgres_url),
                "AVATARPIPE_MLFLOW_URI": ecs.Secret.from_secrets_manager(self.mlflow_uri),
            },
            logging=ecs.LogDrivers.aws_logs(stream_prefix=name, log_group=self.dagster_logs),
            port_mappings=[ecs.PortMapping(container_port=port)] if port else None,
        )
        container.add_mount_points(ecs.MountPoint(container_path="/tmp", source_volume="tmp", read_only=False))
        return task

    def _orchestrator_policy(self, data: DataStores) -> None:
        role = self.orchestrator_role
        buckets = (data.uploads, data.artifacts)
        role.add_to_policy(
            iam.PolicyStatement(
                sid="PipelineObjects",
                actions=[
                    "s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "s3:AbortMultipartUpload",
                    "s3:DeleteObject", "s3:DeleteObjectVersion",
                ],
                resources=[b.arn_for_objects("subjects/*") for b in buckets]
                + [data.artifacts.arn_for_objects(f"{COMPUTE_LOG_PREFIX}*")]
                + [data.artifacts.arn_for_objects(f"{MLFLOW_ARTIFACT_PREFIX}/*")],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ListForErasure",
                actions=["s3:ListBucket", "s3:ListBucketVersions"],
                resources=[b.bucket_arn for b in buckets],
                conditions={"StringLike": {"s3:prefix": ["subjects/*", COMPUTE_LOG_PREFIX + "*", MLFLOW_ARTIFACT_PREFIX + "/*"]}},
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="DataKeys",
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=[data.uploads_key.key_arn, data.artifacts_key.key_arn],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="UploadEvents",
                actions=[
                    "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes",
                ],
                resources=[data.upload_events.queue_arn],
            )
        )
        task_definitions = [
            f"arn:{Aws.PARTITION}:ecs:{Aws.REGION}:{Aws.ACCOUNT_ID}:task-definition/{family}:*"
            for family in (self.worker_gpu.family, self.worker_cpu.family, self.run_task.family)
        ]
        role.add_to_policy(
            iam.PolicyStatement(
                sid="LaunchWorkersAndRuns",
                actions=["ecs:RunTask"],
                resources=task_definitions,
                conditions={"ArnEquals": {"ecs:cluster": self.cluster.cluster_arn}},
            )
        )
        tasks = f"arn:{Aws.PARTITION}:ecs:{Aws.REGION}:{Aws.ACCOUNT_ID}:task/{self.cluster.cluster_name}/*"
        role.add_to_policy(
            iam.PolicyStatement(
                sid="WatchWorkersAndRuns",
                actions=["ecs:DescribeTasks", "ecs:StopTask", "ecs:TagResource"],
                resources=[tasks],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                # Read-only calls without resource-level permissions: PipesECSClient reads the
                # worker's task definition; EcsRunLauncher reads its own task's network setup.
                sid="DescribeWithoutResourceLevel",
                actions=["ecs:DescribeTaskDefinition", "ecs:ListAccountSettings", "ec2:DescribeNetworkInterfaces"],
                resources=["*"],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="PassTaskRoles",
                actions=["iam:PassRole"],
                resources=[
                    self.worker_role.role_arn, self.worker_exec_role.role_arn,
                    self.orchestrator_role.role_arn, self.dagster_exec_role.role_arn,
                ],
                conditions={"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}},
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadWorkerPipesMessages",
                actions=["logs:GetLogEvents", "logs:DescribeLogStreams"],
                resources=[self.worker_logs.log_group_arn],  # "…:log-group:NAME:*" covers its streams
            )
        )
