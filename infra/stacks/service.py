"""The avatar service (`avatarpipe serve`) on ECS Fargate behind an internet-facing ALB with TLS.

* ALB in the public subnets: HTTPS listener (ACM certificate for `avatarpipe:apiDomain`,
  TLS 1.2+ policy), HTTP answered only with a redirect to HTTPS, access logs to the log bucket,
  deletion protection, invalid header fields dropped, a regional WAF web ACL (AWS managed
  common + known-bad-input rules, a per-IP rate limit) logging to encrypted CloudWatch.
  `/metrics` is refused at the ALB (Prometheus scrapes the tasks inside the VPC).
* The service: Fargate tasks in the private subnets, the workers' image with
  `avatarpipe serve --host 0.0.0.0 --port 8080`, health check `/healthz`; its security group
  accepts only the ALB, on 8080. `AVATARPIPE_SERVICE_DISPATCH=sensors`: it ingests (raw photo to
  the uploads bucket, the upload into the metadata store, the Dagster partition) and the S3/SQS
  sensors + daemon run the avatars, exactly as for any other upload.
* The signing secret (`AVATARPIPE_SERVICE_SECRET`: share links, API-key hash pepper) is a
  generated Secrets Manager secret under the platform key.

IAM: the task role may put raw photos (`subjects/*/*/raw/*`) with the uploads key, read the
rigged GLBs (presigned GETs, VRM export), and — because erasure requests run in the service
(`service/dispatch.py`: "Erasure always runs here") — what erasure touches: delete/list under
`subjects/*` of both buckets, the compute logs and the registry's artifacts. Nothing else.
"""

from __future__ import annotations

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct

from stacks.checkov import skip_checks
from stacks.compute import COMPUTE_LOG_PREFIX, MLFLOW_ARTIFACT_PREFIX, Compute
from stacks.config import InfraConfig
from stacks.delivery import GLB_OBJECTS
from stacks.network import Network
from stacks.storage import DataStores

SERVICE_CONTAINER = "service"
SERVICE_PORT = 8080
SERVICE_COMMAND = ["avatarpipe", "serve", "--host", "0.0.0.0", "--port", str(SERVICE_PORT)]  # all interfaces of its own task
HEALTH_PATH = "/healthz"
KEYS_CONTAINER = "keys"
KEY_DROP_ENV = "AVATARPIPE_KEY_DROP_SECRET"
# The keys task's program: the CLI makes the key (stored hashed in the metadata store) and its
# one-time answer goes straight into the drop secret; stdout, hence the logs, only get the id.
KEY_DROP_SCRIPT = """\
import json, os, subprocess, sys
import boto3
args = ["avatarpipe", "keys", "create", "--role", os.environ["KEY_ROLE"], "--json"]
if os.environ.get("KEY_NAME"):
    args += ["--name", os.environ["KEY_NAME"]]
answer = subprocess.run(args, check=True, stdout=subprocess.PIPE, text=True).stdout
secret = os.environ["AVATARPIPE_KEY_DROP_SECRET"]
boto3.client("secretsmanager").put_secret_value(SecretId=secret, SecretString=answer)
print(f"API key {json.loads(answer)['key_id']} stored in {secret}", file=sys.stderr)
"""
ALB_LOG_PREFIX = "alb/api"
RAW_OBJECTS = "subjects/*/*/raw/*"
TLS_POLICY = elbv2.SslPolicy.RECOMMENDED_TLS  # ELBSecurityPolicy-TLS13-1-2-2021-06: TLS 1.2 and 1.3 only
SSE_IDLE_TIMEOUT = Duration.seconds(120)  # an SSE stream may be quiet between two step changes


def secret_for_service(scope: Construct, platform_key: kms.IKey) -> secretsmanager.Secret:
    """`AVATARPIPE_SERVICE_SECRET`: 64 generated characters, never in the template or logs."""
    return secretsmanager.Secret(
        scope,
        "ServiceSecret",
        description="avatarpipe AVATARPIPE_SERVICE_SECRET: signs share links, peppers API-key hashes",
        encryption_key=platform_key,
        generate_secret_string=secretsmanager.SecretStringGenerator(password_length=64, exclude_punctuation=True),
        removal_policy=RemovalPolicy.RETAIN,
    )


class ApiService(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: InfraConfig,
        network: Network,
        data: DataStores,
        compute: Compute,
        platform_key: kms.IKey,
        web_origin: str,
    ) -> None:
        super().__init__(scope, construct_id)
        self.secret = secret_for_service(self, platform_key)
        self.task_role = self._task_role(data)
        self.task = self._task_definition(config, compute, platform_key, web_origin)
        self.keys_task = self._keys_task(config, compute, platform_key)

        self.alb_sg = ec2.SecurityGroup(
            self, "AlbSg", vpc=network.vpc, allow_all_outbound=False,
            description="avatarpipe API load balancer: HTTPS (and the HTTP redirect) from the internet",
        )  # fmt: skip
        skip_checks(
            self.alb_sg,
            {
                "CKV_AWS_260": "Port 80 is open only so that the ALB can answer plain-HTTP visitors with a "
                "301 to HTTPS (the listener has no other action); nothing is served over HTTP.",
            },
        )
        self.service_sg = network.https_only_group(
            "ServiceSg", "avatarpipe API tasks: only the ALB may connect", extra_tcp_ports=(5432, 27017)
        )
        self.service = ecs.FargateService(
            self,
            "Service",
            cluster=compute.cluster,
            task_definition=self.task,
            service_name=f"{config.prefix}-api",
            desired_count=config.service_desired_count,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            security_groups=[self.service_sg],
            assign_public_ip=False,
            platform_version=ecs.FargatePlatformVersion.LATEST,
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            health_check_grace_period=Duration.seconds(60),
            min_healthy_percent=100,
            max_healthy_percent=200,
        )

        self.alb = elbv2.ApplicationLoadBalancer(
            self,
            "Alb",
            vpc=network.vpc,
            internet_facing=True,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
            security_group=self.alb_sg,
            deletion_protection=True,
            drop_invalid_header_fields=True,
            idle_timeout=SSE_IDLE_TIMEOUT,
            http2_enabled=True,
        )
        self._access_logs(data)
        certificate = acm.Certificate.from_certificate_arn(self, "Certificate", config.api_certificate_arn)
        self.https = self.alb.add_listener(
            "Https",
            port=443,
            protocol=elbv2.ApplicationProtocol.HTTPS,
            certificates=[elbv2.ListenerCertificate.from_certificate_manager(certificate)],
            ssl_policy=TLS_POLICY,
            open=True,
        )
        self.https.add_targets(
            "Api",
            port=SERVICE_PORT,
            protocol=elbv2.ApplicationProtocol.HTTP,  # inside the VPC, ALB -> task
            targets=[self.service],
            health_check=elbv2.HealthCheck(
                path=HEALTH_PATH, healthy_http_codes="200", interval=Duration.seconds(15),
                timeout=Duration.seconds(5), healthy_threshold_count=2, unhealthy_threshold_count=3,
            ),
            deregistration_delay=Duration.seconds(30),
        )  # fmt: skip
        self.https.add_action(
            "NoPublicMetrics",
            priority=10,
            conditions=[elbv2.ListenerCondition.path_patterns(["/metrics", "/metrics/*"])],
            action=elbv2.ListenerAction.fixed_response(
                404, content_type="application/json",
                message_body='{"error": {"code": "NOT_FOUND", "message": "no such route"}}',
            ),
        )  # fmt: skip
        self.alb.add_redirect(source_port=80, target_port=443)
        # CDK makes the service DependsOn its listener's parts, the target group among them, which
        # it also Refs; cfn-lint's W3005 ("dependency already enforced") is only that redundancy.
        self.service.node.default_child.add_metadata("cfn-lint", {"config": {"ignore_checks": ["W3005"]}})
        self._firewall(platform_key)

    # -- parts ----------------------------------------------------------------------------------

    def _access_logs(self, data: DataStores) -> None:
        """ALB access logs into the log bucket (SSE-S3: the only encryption ALB delivery takes).

        CDK's `log_access_logs` needs the stack's region to name the regional ELB account, and this
        stack is environment-agnostic; the log-delivery service principal is the region-independent
        grant. (In a region opened before August 2022 that still refuses it, add the regional ELB
        account from the ELB documentation to the log bucket's policy.)"""
        self.alb.set_attribute("access_logs.s3.enabled", "true")
        self.alb.set_attribute("access_logs.s3.bucket", data.log_bucket.bucket_name)
        self.alb.set_attribute("access_logs.s3.prefix", ALB_LOG_PREFIX)
        data.log_bucket.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AlbAccessLogs",
                principals=[iam.ServicePrincipal("logdelivery.elasticloadbalancing.amazonaws.com")],
                actions=["s3:PutObject"],
                resources=[data.log_bucket.arn_for_objects(f"{ALB_LOG_PREFIX}/AWSLogs/{Aws.ACCOUNT_ID}/*")],
            )
        )
        self.alb.node.add_dependency(data.log_bucket.policy)  # ELB checks the grant when enabling logs

    def _task_role(self, data: DataStores) -> iam.Role:
        role = iam.Role(
            self, "TaskRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="avatarpipe API: put raw photos, read avatars, run erasure requests",
        )  # fmt: skip
        role.add_to_policy(
            iam.PolicyStatement(
                sid="PutRawPhotos",
                actions=["s3:PutObject", "s3:AbortMultipartUpload"],
                resources=[data.uploads.arn_for_objects(RAW_OBJECTS)],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(sid="ReadAvatars", actions=["s3:GetObject"], resources=[data.artifacts.arn_for_objects(GLB_OBJECTS)])
        )
        # Erasure (`avatarpipe erase`, run by the service's dispatcher) removes every object of
        # the subject from both buckets, its compute logs and registry artifacts, then verifies.
        erasable = [b.arn_for_objects("subjects/*") for b in (data.uploads, data.artifacts)] + [
            data.artifacts.arn_for_objects(f"{COMPUTE_LOG_PREFIX}*"),
            data.artifacts.arn_for_objects(f"{MLFLOW_ARTIFACT_PREFIX}/*"),
        ]
        role.add_to_policy(
            iam.PolicyStatement(
                sid="EraseSubjects",
                actions=["s3:GetObject", "s3:GetObjectVersion", "s3:DeleteObject", "s3:DeleteObjectVersion"],
                resources=erasable,
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ListForErasure",
                actions=["s3:ListBucket", "s3:ListBucketVersions"],
                resources=[data.uploads.bucket_arn, data.artifacts.bucket_arn],
                conditions={"StringLike": {"s3:prefix": ["subjects/*", COMPUTE_LOG_PREFIX + "*", MLFLOW_ARTIFACT_PREFIX + "/*"]}},
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                # The Dagster instance (partitions, erasure's run scan) builds its EcsRunLauncher,
                # which reads the run task definition; the call has no resource-level permissions.
                sid="InstanceRunLauncher",
                actions=["ecs:DescribeTaskDefinition"],
                resources=["*"],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(sid="EncryptRawPhotos", actions=["kms:GenerateDataKey"], resources=[data.uploads_key.key_arn])
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="DecryptObjects", actions=["kms:Decrypt"], resources=[data.uploads_key.key_arn, data.artifacts_key.key_arn]
            )
        )
        return role

    def _task_definition(
        self, config: InfraConfig, compute: Compute, platform_key: kms.IKey, web_origin: str
    ) -> ecs.FargateTaskDefinition:
        self.exec_role = iam.Role(
            self, "ExecutionRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="Pull the image, write the API's logs, read the API's secrets",
        )  # fmt: skip
        self.logs = logs.LogGroup(
            self, "Logs", encryption_key=platform_key, retention=logs.RetentionDays.ONE_YEAR,
            removal_policy=RemovalPolicy.RETAIN,
        )  # fmt: skip
        task = ecs.FargateTaskDefinition(
            self,
            "Task",
            family=f"{config.prefix}-api",
            cpu=1024,
            memory_limit_mib=4096,  # the VRM export and uploads' decoding run in the service
            task_role=self.task_role,
            execution_role=self.exec_role,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.X86_64, operating_system_family=ecs.OperatingSystemFamily.LINUX
            ),
        )
        task.add_volume(name="tmp")
        environment = {
            **compute.dagster_env,  # buckets, queue, key, DAGSTER_HOME with the production dagster.yaml
            "DAGSTER_RUN_TASK_DEFINITION": compute.run_task.family,
            "AVATARPIPE_SERVICE_DISPATCH": "sensors",
            "AVATARPIPE_CORS_ORIGINS": web_origin,
        }
        self.environment = environment
        self.secrets = {
            "MONGODB_URI": ecs.Secret.from_secrets_manager(compute.mongodb_uri),
            "DAGSTER_PG_URL": ecs.Secret.from_secrets_manager(compute.postgres_url),
            "AVATARPIPE_MLFLOW_URI": ecs.Secret.from_secrets_manager(compute.mlflow_uri),  # erasure's registry scan
            "AVATARPIPE_SERVICE_SECRET": ecs.Secret.from_secrets_manager(self.secret),
        }
        container = task.add_container(
            SERVICE_CONTAINER,
            image=ecs.ContainerImage.from_ecr_repository(compute.repository, config.image_tag),
            command=SERVICE_COMMAND,
            essential=True,
            readonly_root_filesystem=True,
            environment=environment,
            secrets=self.secrets,
            logging=ecs.LogDrivers.aws_logs(stream_prefix="api", log_group=self.logs),
            port_mappings=[ecs.PortMapping(container_port=SERVICE_PORT)],
            stop_timeout=Duration.seconds(30),
        )
        container.add_mount_points(ecs.MountPoint(container_path="/tmp", source_volume="tmp", read_only=False))
        return task

    def _keys_task(self, config: InfraConfig, compute: Compute, platform_key: kms.IKey) -> ecs.FargateTaskDefinition:
        """`avatarpipe keys create` as a one-off task whose new key goes into a Secrets Manager
        secret (`ApiKeyDrop`), never to stdout: the task's log stream only names the key id."""
        self.key_drop = secretsmanager.Secret(
            self,
            "ApiKeyDrop",
            description="avatarpipe: the last API key made by the avatarpipe-api-keys task "
            '({"key_id", "role", "name", "key"}); copy it to its user, then overwrite or delete',
            encryption_key=platform_key,
            removal_policy=RemovalPolicy.RETAIN,
        )
        role = iam.Role(
            self, "KeysTaskRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="avatarpipe API keys task: store the new key in its secret",
        )  # fmt: skip
        role.add_to_policy(
            iam.PolicyStatement(sid="DropNewKey", actions=["secretsmanager:PutSecretValue"], resources=[self.key_drop.secret_arn])
        )
        role.add_to_policy(iam.PolicyStatement(sid="EncryptNewKey", actions=["kms:GenerateDataKey"], resources=[platform_key.key_arn]))
        task = ecs.FargateTaskDefinition(
            self,
            "KeysTask",
            family=f"{config.prefix}-api-keys",
            cpu=512,
            memory_limit_mib=2048,
            task_role=role,
            execution_role=self.exec_role,
        )
        task.add_volume(name="tmp")
        container = task.add_container(
            KEYS_CONTAINER,
            image=ecs.ContainerImage.from_ecr_repository(compute.repository, config.image_tag),
            command=["python", "-c", KEY_DROP_SCRIPT],
            essential=True,
            readonly_root_filesystem=True,
            environment={**self.environment, "KEY_ROLE": "uploader", "KEY_NAME": "", KEY_DROP_ENV: self.key_drop.secret_arn},
            secrets=dict(self.secrets),
            logging=ecs.LogDrivers.aws_logs(stream_prefix="keys", log_group=self.logs),
        )
        container.add_mount_points(ecs.MountPoint(container_path="/tmp", source_volume="tmp", read_only=False))
        return task

    def _firewall(self, platform_key: kms.IKey) -> None:
        """Regional WAF on the ALB: AWS's common and known-bad-input rule groups, a per-IP rate
        limit. The common group's 8 KB body-size rule only counts: photo uploads are larger (the
        service enforces its own size and pixel limits before storing anything)."""

        def managed(name: str, priority: int, count_only: tuple[str, ...] = ()) -> wafv2.CfnWebACL.RuleProperty:
            return wafv2.CfnWebACL.RuleProperty(
                name=name,
                priority=priority,
                override_action=wafv2.CfnWebACL.OverrideActionProperty(none={}),
                statement=wafv2.CfnWebACL.StatementProperty(
                    managed_rule_group_statement=wafv2.CfnWebACL.ManagedRuleGroupStatementProperty(
                        vendor_name="AWS",
                        name=name,
                        rule_action_overrides=[
                            wafv2.CfnWebACL.RuleActionOverrideProperty(
                                name=rule, action_to_use=wafv2.CfnWebACL.RuleActionProperty(count={})
                            )
                            for rule in count_only
                        ]
                        or None,
                    )
                ),
                visibility_config=_visibility(name),
            )

        rate_limit = wafv2.CfnWebACL.RuleProperty(
            name="PerIpRateLimit",
            priority=0,
            action=wafv2.CfnWebACL.RuleActionProperty(block={}),
            statement=wafv2.CfnWebACL.StatementProperty(
                rate_based_statement=wafv2.CfnWebACL.RateBasedStatementProperty(limit=2000, aggregate_key_type="IP")
            ),
            visibility_config=_visibility("PerIpRateLimit"),
        )
        self.web_acl = wafv2.CfnWebACL(
            self,
            "WebAcl",
            scope="REGIONAL",
            default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
            visibility_config=_visibility("avatarpipe-api"),
            rules=[
                rate_limit,
                managed("AWSManagedRulesCommonRuleSet", 1, count_only=("SizeRestrictions_BODY",)),
                managed("AWSManagedRulesKnownBadInputsRuleSet", 2),
            ],
        )
        wafv2.CfnWebACLAssociation(
            self, "WebAclAlb", resource_arn=self.alb.load_balancer_arn, web_acl_arn=self.web_acl.attr_arn
        )
        waf_logs = logs.LogGroup(
            self,
            "WafLogs",
            log_group_name=f"aws-waf-logs-{Aws.STACK_NAME}-api",  # WAF requires the aws-waf-logs- prefix
            encryption_key=platform_key,
            retention=logs.RetentionDays.ONE_YEAR,
            removal_policy=RemovalPolicy.RETAIN,
        )
        wafv2.CfnLoggingConfiguration(
            self,
            "WafLogging",
            resource_arn=self.web_acl.attr_arn,
            # The group's ARN without CloudFormation's trailing ":*" (WAF refuses that form).
            log_destination_configs=[
                f"arn:{Aws.PARTITION}:logs:{Aws.REGION}:{Aws.ACCOUNT_ID}:log-group:{waf_logs.log_group_name}"
            ],
            redacted_fields=[
                wafv2.CfnLoggingConfiguration.FieldToMatchProperty(single_header={"Name": "authorization"}),
                wafv2.CfnLoggingConfiguration.FieldToMatchProperty(single_header={"Name": "x-api-key"}),
            ],
        )


def _visibility(name: str) -> wafv2.CfnWebACL.VisibilityConfigProperty:
    return wafv2.CfnWebACL.VisibilityConfigProperty(
        cloud_watch_metrics_enabled=True, metric_name=name.replace("-", ""), sampled_requests_enabled=True
    )
