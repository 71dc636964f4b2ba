"""Object storage and the upload event queue.

* `uploads` bucket: raw photos (`subjects/{s}/{u}/raw/…`), written by browsers through presigned
  PUTs; `ObjectCreated` → SQS. Raw photos are deleted N days after upload when a retention is
  configured (the avatar and its lineage stay).
* `artifacts` bucket: everything the pipeline derives; CloudFront serves the GLBs from it.
* both: SSE-KMS with their own customer-managed key, S3 Bucket Keys, Block Public Access, a
  TLS-only bucket policy, versioning (noncurrent versions expire after 30 days, so erasure by
  delete markers is final then; the application deletes all versions at once anyway), access
  logs to a dedicated log bucket.
"""

from __future__ import annotations

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from stacks.checkov import skip_checks
from stacks.config import InfraConfig

RAW_PREFIX = "subjects/"  # raw upload keys: subjects/{subject}/{upload}/raw/{name}


class DataStores(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, config: InfraConfig) -> None:
        super().__init__(scope, construct_id)
        self.uploads_key = kms.Key(
            self,
            "UploadsKey",
            description="avatarpipe: raw photo uploads and their event queue",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.artifacts_key = kms.Key(
            self,
            "ArtifactsKey",
            description="avatarpipe: pipeline artifacts",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )

        self.log_bucket = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            # CloudFront standard logs are delivered with an ACL: bucket owner preferred.
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-logs",
                    expiration=Duration.days(config.log_retention_days),
                    noncurrent_version_expiration=Duration.days(7),
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                )
            ],
            removal_policy=RemovalPolicy.RETAIN,
        )
        skip_checks(
            self.log_bucket,
            {"CKV_AWS_18": "This is the access-log target bucket; logging it into itself would loop."},
        )

        # Fixed names, so that the queue policy and the notification can name the uploads bucket
        # without referencing it (S3 checks the queue policy when it creates the notification).
        uploads_name = f"{config.prefix}-uploads-{Aws.ACCOUNT_ID}-{Aws.REGION}"
        self.uploads_bucket_arn = f"arn:{Aws.PARTITION}:s3:::{uploads_name}"

        self.dead_letters = sqs.Queue(
            self,
            "UploadEventsDLQ",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=self.uploads_key,
            retention_period=Duration.days(14),
            enforce_ssl=True,
        )
        self.upload_events = sqs.Queue(
            self,
            "UploadEvents",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=self.uploads_key,
            data_key_reuse=Duration.hours(1),
            retention_period=Duration.days(4),
            visibility_timeout=Duration.minutes(2),
            dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=5, queue=self.dead_letters),
            enforce_ssl=True,
        )
        self.upload_events.add_to_resource_policy(
            iam.PolicyStatement(
                sid="S3UploadEvents",
                principals=[iam.ServicePrincipal("s3.amazonaws.com")],
                actions=["sqs:SendMessage"],
                resources=[self.upload_events.queue_arn],
                conditions={
                    "ArnEquals": {"aws:SourceArn": self.uploads_bucket_arn},
                    "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
                },
            )
        )
        # S3 encrypts the event messages with the queue's key.
        self.uploads_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="S3EventsToEncryptedQueue",
                principals=[iam.ServicePrincipal("s3.amazonaws.com")],
                actions=["kms:GenerateDataKey", "kms:Decrypt"],
                resources=["*"],
                conditions={"ArnEquals": {"aws:SourceArn": self.uploads_bucket_arn}},
            )
        )

        # Pipes sessions of the GPU worker service (stacks/worker_service.py) are removed by the
        # orchestrator when they end; a crashed orchestrator's leftovers go after a day.
        pipes_sessions_expire = s3.LifecycleRule(
            id="expire-pipes-sessions", prefix="pipes/", expiration=Duration.days(1),
            noncurrent_version_expiration=Duration.days(1),
        )  # fmt: skip
        lifecycle = [
            s3.LifecycleRule(
                id="abort-incomplete-multipart",
                abort_incomplete_multipart_upload_after=Duration.days(1),
            ),
            s3.LifecycleRule(id="expire-noncurrent-versions", noncurrent_version_expiration=Duration.days(30)),
        ]
        uploads_lifecycle = list(lifecycle)
        if config.raw_retention_days:
            uploads_lifecycle.append(
                s3.LifecycleRule(
                    id="delete-raw-photos",
                    prefix=RAW_PREFIX,
                    expiration=Duration.days(config.raw_retention_days),
                )
            )
        uploads_lifecycle.append(s3.LifecycleRule(id="remove-expired-delete-markers", expired_object_delete_marker=True))
        cors = None
        if config.web_origins:
            cors = [
                s3.CorsRule(
                    allowed_methods=[s3.HttpMethods.PUT],
                    allowed_origins=list(config.web_origins),
                    allowed_headers=["content-type", "x-amz-server-side-encryption*"],
                    max_age=600,
                )
            ]
        self.uploads = s3.Bucket(
            self,
            "Uploads",
            bucket_name=uploads_name,
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.uploads_key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            versioned=True,
            lifecycle_rules=uploads_lifecycle,
            cors=cors,
            server_access_logs_bucket=self.log_bucket,
            server_access_logs_prefix="s3/uploads/",
            removal_policy=RemovalPolicy.RETAIN,
        )
        # The notification as plain CloudFormation (CDK's helper would add a custom-resource Lambda).
        cfn_uploads: s3.CfnBucket = self.uploads.node.default_child  # type: ignore[assignment]
        cfn_uploads.notification_configuration = s3.CfnBucket.NotificationConfigurationProperty(
            queue_configurations=[
                s3.CfnBucket.QueueConfigurationProperty(
                    event="s3:ObjectCreated:*",
                    queue=self.upload_events.queue_arn,
                    filter=s3.CfnBucket.NotificationFilterProperty(
                        s3_key=s3.CfnBucket.S3KeyFilterProperty(
                            rules=[s3.CfnBucket.FilterRuleProperty(name="prefix", value=RAW_PREFIX)]
                        )
                    ),
                )
            ]
        )
        queue_policy = self.upload_events.node.find_child("Policy").node.default_child
        cfn_uploads.node.add_dependency(queue_policy)

        self.artifacts = s3.Bucket(
            self,
            "Artifacts",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.artifacts_key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            versioned=True,
            lifecycle_rules=[*lifecycle, pipes_sessions_expire],
            server_access_logs_bucket=self.log_bucket,
            server_access_logs_prefix="s3/artifacts/",
            removal_policy=RemovalPolicy.RETAIN,
        )
