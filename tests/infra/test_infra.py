"""infra/: synthesise the CDK app offline, lint the template (cfn-lint), scan it and the worker
Dockerfile (checkov: zero failed checks; every suppression explicit and justified), and check
the properties the production path relies on in the synthesised CloudFormation itself."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
CDK = INFRA / "node_modules" / ".bin" / "cdk"
CHECKOV = Path(os.environ.get("CHECKOV_BIN") or REPO / ".venv" / "tools" / "checkov" / "bin" / "checkov")
CFN_LINT = Path(sys.executable).with_name("cfn-lint")
# The suppressions the stack declares, and nothing else may be skipped.
EXPECTED_SKIPS = {"CKV_AWS_18", "CKV_AWS_68", "CKV_AWS_174", "CKV_AWS_260"}
# The production shape: the API tier needs its domain and a certificate (stacks/avatarpipe_stack.py).
API_DOMAIN = "api.avatars.example.com"
API_CERTIFICATE = "arn:aws:acm:eu-west-1:123456789012:certificate/00000000-0000-4000-8000-000000000000"
API_CONTEXT = ["-c", f"avatarpipe:apiDomain={API_DOMAIN}", "-c", f"avatarpipe:apiCertificateArn={API_CERTIFICATE}"]


def _require(path: Path | None, what: str) -> None:
    if path is not None and path.exists():
        return
    message = f"{what} is not installed: run `make infra-tools`"
    if os.environ.get("AVATARPIPE_REQUIRE_INFRA") or os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def cdk_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`cdk synth` into a fresh directory (offline: the stack is environment-agnostic)."""
    _require(Path(shutil.which("node") or "/nonexistent"), "node")
    _require(CDK, "the CDK CLI (infra/node_modules)")
    out = tmp_path_factory.mktemp("cdk.out")
    env = {**os.environ, "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1", "CDK_DISABLE_CLI_TELEMETRY": "true"}
    done = subprocess.run(
        [str(CDK), "synth", "--app", f"{sys.executable} app.py", "--output", str(out), "--quiet", "--no-notices",
         *API_CONTEXT],
        cwd=INFRA, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def template(cdk_out: Path) -> dict[str, Any]:
    return json.loads((cdk_out / "Avatarpipe.template.json").read_text())


def _resources(template: dict, kind: str) -> dict[str, dict]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def _one(template: dict, kind: str, path_part: str) -> dict:
    found = [r for r in _resources(template, kind).values() if path_part in r.get("Metadata", {}).get("aws:cdk:path", "")]
    assert len(found) == 1, f"{kind} {path_part}: {len(found)} found"
    return found[0]


def _statements(template: dict) -> list[dict]:
    statements = []
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for resource in _resources(template, kind).values():
            statements += resource["Properties"]["PolicyDocument"]["Statement"]
    return statements


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def test_template_passes_cfn_lint(cdk_out: Path) -> None:
    _require(CFN_LINT, "cfn-lint")
    done = subprocess.run(
        [str(CFN_LINT), str(cdk_out / "Avatarpipe.template.json")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def _checkov(target: Path, framework: str) -> dict:
    _require(CHECKOV, "checkov")
    done = subprocess.run(
        # --skip-download: no calls to the vendor's API; the scan is fully offline.
        [str(CHECKOV), "-f", str(target), "--framework", framework, "--skip-download", "-o", "json"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    report = json.loads(done.stdout)
    return report[0] if isinstance(report, list) else report


def test_checkov_finds_no_failed_checks_and_every_skip_is_justified(cdk_out: Path) -> None:
    report = _checkov(cdk_out / "Avatarpipe.template.json", "cloudformation")
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["passed"] > 150
    skipped = report["results"]["skipped_checks"]
    assert {c["check_id"] for c in skipped} == EXPECTED_SKIPS
    for check in skipped:
        assert len(check["check_result"]["suppress_comment"]) > 40, check["check_id"]  # a reason, not a shrug


def test_checkov_passes_the_worker_dockerfile() -> None:
    report = _checkov(INFRA / "Dockerfile", "dockerfile")
    assert report["results"]["failed_checks"] == []
    assert [c["check_id"] for c in report["results"]["skipped_checks"]] == ["CKV_DOCKER_2"]


def test_buckets_are_encrypted_private_tls_only_and_versioned(template: dict) -> None:
    for path_part, key_part in (("Data/Uploads/", "UploadsKey"), ("Data/Artifacts/", "ArtifactsKey")):
        bucket = _one(template, "AWS::S3::Bucket", path_part)["Properties"]
        (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
        assert key_part in json.dumps(rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"])
        assert rule["BucketKeyEnabled"] is True
        assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
        assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
        assert "LoggingConfiguration" in bucket
    for policy in _resources(template, "AWS::S3::BucketPolicy").values():
        deny = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
        assert any(s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in deny)
    for key in _resources(template, "AWS::KMS::Key").values():
        assert key["Properties"]["EnableKeyRotation"] is True


def test_raw_photos_expire_and_uploads_notify_the_queue(template: dict) -> None:
    uploads = _one(template, "AWS::S3::Bucket", "Data/Uploads/")
    rules = {r["Id"]: r for r in uploads["Properties"]["LifecycleConfiguration"]["Rules"]}
    assert rules["delete-raw-photos"]["ExpirationInDays"] == 30  # cdk.json avatarpipe:rawRetentionDays
    assert rules["delete-raw-photos"]["Prefix"] == "subjects/"
    (notification,) = uploads["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert notification["Event"] == "s3:ObjectCreated:*"
    assert notification["Filter"]["S3Key"]["Rules"] == [{"Name": "prefix", "Value": "subjects/"}]
    queue_name = notification["Queue"]["Fn::GetAtt"][0]
    queue = template["Resources"][queue_name]["Properties"]
    assert "UploadsKey" in json.dumps(queue["KmsMasterKeyId"])
    assert queue["RedrivePolicy"]["maxReceiveCount"] == 5
    assert "DLQ" in queue["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
    # The queue policy exists before S3 validates the notification destination.
    policies = [n for n, r in _resources(template, "AWS::SQS::QueuePolicy").items() if queue_name in json.dumps(r)]
    assert set(policies) & set(uploads["DependsOn"])
    # No custom-resource Lambdas anywhere (the usual source of unscannable, unpinned code).
    assert not _resources(template, "AWS::Lambda::Function")


def test_worker_task_requests_a_gpu_on_the_gpu_capacity_provider(template: dict) -> None:
    gpu = _one(template, "AWS::ECS::TaskDefinition", "Compute/WorkerGpuTask/")["Properties"]
    assert gpu["Family"] == "avatarpipe-worker-gpu" and gpu["RequiresCompatibilities"] == ["EC2"]
    (container,) = gpu["ContainerDefinitions"]
    assert container["Name"] == "worker" and container["Command"] == ["python", "-m", "ops.worker"]
    assert container["ResourceRequirements"] == [{"Type": "GPU", "Value": "1"}]
    assert container["ReadonlyRootFilesystem"] is True
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    cpu = _one(template, "AWS::ECS::TaskDefinition", "Compute/WorkerCpuTask/")["Properties"]
    assert cpu["RequiresCompatibilities"] == ["FARGATE"]
    assert "ResourceRequirements" not in cpu["ContainerDefinitions"][0]

    template_data = _one(template, "AWS::EC2::LaunchTemplate", "GpuHostTemplate")["Properties"]["LaunchTemplateData"]
    assert template_data["InstanceType"] == "g4dn.xlarge"
    assert template_data["MetadataOptions"]["HttpTokens"] == "required"
    assert template_data["BlockDeviceMappings"][0]["Ebs"]["Encrypted"] is True
    assert "gpu" in json.dumps(template["Parameters"]).lower()  # the ECS GPU-optimised AMI
    provider = _one(template, "AWS::ECS::CapacityProvider", "GpuCapacity")["Properties"]
    assert provider["Name"] == "avatarpipe-gpu"
    assert provider["AutoScalingGroupProvider"]["ManagedScaling"]["Status"] == "ENABLED"
    (association,) = _resources(template, "AWS::ECS::ClusterCapacityProviderAssociations").values()
    providers = association["Properties"]["CapacityProviders"]
    assert {"FARGATE", "FARGATE_SPOT"} <= {p for p in providers if isinstance(p, str)}
    assert any("GpuCapacity" in json.dumps(p) for p in providers) and len(providers) == 3


def test_dagster_tasks_get_the_secrets_and_the_production_path_config(template: dict) -> None:
    for name in ("DaemonTask", "WebserverTask", "RunTask"):
        (container,) = _one(template, "AWS::ECS::TaskDefinition", f"Compute/{name}/")["Properties"]["ContainerDefinitions"]
        secrets = {s["Name"] for s in container["Secrets"]}
        assert secrets == {"MONGODB_URI", "DAGSTER_PG_URL", "AVATARPIPE_MLFLOW_URI"}
        env = {e["Name"] for e in container["Environment"]}
        assert {"AVATARPIPE_S3_BUCKET", "AVATARPIPE_SQS_QUEUE_URL", "AVATARPIPE_COMPUTE_MODE",
                "AVATARPIPE_ECS_TASK_DEFINITION", "AVATARPIPE_ECS_GPU_CAPACITY_PROVIDER",
                "AVATARPIPE_MLFLOW_ARTIFACT_ROOT"} <= env  # fmt: skip
    assert len(_resources(template, "AWS::SecretsManager::Secret")) == 5  # + the API's signing secret and key drop


def test_a_production_task_uses_the_images_postgres_instance_and_a_real_registry(template: dict, tmp_path, monkeypatch) -> None:
    """The daemon task's environment (secrets filled in), with the image's DAGSTER_HOME holding
    infra/dagster.production.yaml: avatarpipe validates it, keeps that instance (Postgres, not a
    throwaway sqlite under /tmp) and points MLflow at Postgres with artifacts on S3."""
    from orchestration.config import load_config
    from orchestration.settings import Settings, prepare_environment

    (daemon,) = _one(template, "AWS::ECS::TaskDefinition", "Compute/DaemonTask/")["Properties"]["ContainerDefinitions"]
    env = {e["Name"]: e["Value"] if isinstance(e["Value"], str) else "from-the-stack" for e in daemon["Environment"]}
    artifact_root = next(e["Value"] for e in daemon["Environment"] if e["Name"] == "AVATARPIPE_MLFLOW_ARTIFACT_ROOT")
    assert "mlflow" in json.dumps(artifact_root) and json.dumps(artifact_root).startswith('{"Fn::Join": ["", ["s3://"')
    dagster_home = tmp_path / "opt-dagster-home"
    dagster_home.mkdir()
    shutil.copyfile(INFRA / "dagster.production.yaml", dagster_home / "dagster.yaml")
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert f"COPY infra/dagster.production.yaml {env['DAGSTER_HOME']}/dagster.yaml" in dockerfile
    env.update(DAGSTER_HOME=str(dagster_home), AVATARPIPE_HOME=str(tmp_path / "tmp-avatarpipe"),
               AVATARPIPE_MLFLOW_ARTIFACT_ROOT="s3://artifacts-bucket/mlflow",
               DAGSTER_PG_URL="postgresql://dagster:pw@db:5432/dagster",
               AVATARPIPE_MLFLOW_URI="postgresql://mlflow:pw@db:5432/mlflow", MONGODB_URI="mongodb://db:27017")  # fmt: skip
    for key in ("AVATARPIPE_DERIVED_DAGSTER_HOME", "AVATARPIPE_MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = load_config()
    settings = Settings.from_config(config)
    prepare_environment(settings)
    assert settings.dagster_home == dagster_home.resolve() and config.dagster_storage() == "postgres"
    assert (dagster_home / "dagster.yaml").read_bytes() == (INFRA / "dagster.production.yaml").read_bytes()
    from orchestration.registry import RegistryLocation

    location = RegistryLocation.for_settings(settings)
    assert location.tracking_uri.startswith("postgresql://") and location.artifact_location == "s3://artifacts-bucket/mlflow"
    assert location.local_dir is None


def test_iam_is_least_privilege(template: dict) -> None:
    unscoped_ok = {
        "ecr:GetAuthorizationToken", "ecs:DiscoverPollEndpoint", "ecs:Poll", "ecs:StartTelemetrySession",
        "ecs:DescribeTaskDefinition", "ecs:ListAccountSettings", "ec2:DescribeNetworkInterfaces",
    }  # fmt: skip
    for statement in _statements(template):
        actions = set(_as_list(statement["Action"]))
        assert not any(a == "*" or a.endswith(":*") for a in actions), statement
        if "*" in _as_list(statement["Resource"]):
            assert actions <= unscoped_ok or "Condition" in statement, statement

    worker = _one(template, "AWS::IAM::Policy", "WorkerTaskRole/DefaultPolicy")["Properties"]["PolicyDocument"]
    by_sid = {s["Sid"]: s for s in worker["Statement"]}
    assert by_sid["ReadStepInputs"]["Action"] == "s3:GetObject"
    writes = json.dumps(by_sid["WriteStepOutputs"]["Resource"])
    assert "smplx_params/*" in writes and "mesh/*" in writes and "rigged_glb" not in writes
    assert not any("Delete" in a for s in worker["Statement"] for a in _as_list(s["Action"]))
    # The container agent may only write the worker's log group.
    host = _one(template, "AWS::IAM::Policy", "GpuHostRole/DefaultPolicy")["Properties"]["PolicyDocument"]
    logs = [s for s in host["Statement"] if "logs:PutLogEvents" in _as_list(s["Action"])]
    assert len(logs) == 1 and "WorkerLogs" in json.dumps(logs[0]["Resource"])
    signer = _one(template, "AWS::IAM::ManagedPolicy", "UploadUrlSigner")["Properties"]["PolicyDocument"]
    assert "subjects/*/*/raw/*" in json.dumps(signer["Statement"][0]["Resource"])


def test_cloudfront_serves_only_glbs_through_origin_access_control(template: dict) -> None:
    distribution = _one(template, "AWS::CloudFront::Distribution", "Glbs/Distribution")
    config = distribution["Properties"]["DistributionConfig"]
    (origin,) = config["Origins"]
    assert "GlbsOac" in json.dumps(origin["OriginAccessControlId"])
    assert config["DefaultCacheBehavior"]["ViewerProtocolPolicy"] == "https-only"
    oac = _one(template, "AWS::CloudFront::OriginAccessControl", "Glbs/Oac")
    assert oac["Properties"]["OriginAccessControlConfig"]["SigningBehavior"] == "always"
    artifacts_policy = _one(template, "AWS::S3::BucketPolicy", "Data/Artifacts/Policy")
    cloudfront = [
        s for s in artifacts_policy["Properties"]["PolicyDocument"]["Statement"]
        if s.get("Principal") == {"Service": "cloudfront.amazonaws.com"}
    ]  # fmt: skip
    assert len(cloudfront) == 1 and cloudfront[0]["Action"] == "s3:GetObject"
    assert "subjects/*/*/rigged_glb/*" in json.dumps(cloudfront[0]["Resource"])
    assert "AWS:SourceArn" in cloudfront[0]["Condition"]["StringEquals"]


def _env_refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        refs = {node["env"]} if set(node) == {"env"} else set()
        return refs.union(*(_env_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_env_refs(v) for v in node))
    return set()


def test_production_dagster_yaml_is_valid_and_fed_by_the_task_definitions(
    template: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config_schema
    from dagster_aws.ecs import EcsRunLauncher

    config = yaml.safe_load((INFRA / "dagster.production.yaml").read_text())
    # Every variable the file reads is set on the daemon's task (environment or secret).
    (daemon,) = _one(template, "AWS::ECS::TaskDefinition", "Compute/DaemonTask/")["Properties"]["ContainerDefinitions"]
    provided = {e["Name"] for e in daemon["Environment"]} | {s["Name"] for s in daemon["Secrets"]}
    needed = _env_refs(config)
    assert needed == {"DAGSTER_PG_URL", "DAGSTER_RUN_TASK_DEFINITION", "AVATARPIPE_S3_BUCKET"}
    assert needed <= provided
    for name in needed:
        monkeypatch.setenv(name, "value-from-the-task-definition")
    result = process_config(dagster_instance_config_schema(), config)
    assert result.success, [e.message for e in result.errors]
    assert config["run_launcher"]["class"] == "EcsRunLauncher" and "postgres" in config["storage"]
    launcher = process_config(EcsRunLauncher.config_type(), config["run_launcher"]["config"])
    assert launcher.success, [e.message for e in launcher.errors]


def test_dockerfile_and_package_pins() -> None:
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11\.\d+-slim", dockerfile, re.MULTILINE)
    assert "pip install torch==2.13.0" in dockerfile and "USER app" in dockerfile
    package = json.loads((INFRA / "package.json").read_text())
    lock = json.loads((INFRA / "package-lock.json").read_text())
    assert package["devDependencies"]["aws-cdk"] == lock["packages"]["node_modules/aws-cdk"]["version"]


# -- the avatar service (issue 18): ALB + ECS Fargate, the SPA on S3 + CloudFront ------------------


def test_api_alb_terminates_tls_1_2_plus_and_redirects_http(template: dict) -> None:
    alb = _one(template, "AWS::ElasticLoadBalancingV2::LoadBalancer", "Api/Alb/")["Properties"]
    assert alb["Scheme"] == "internet-facing"
    attributes = {a["Key"]: a["Value"] for a in alb["LoadBalancerAttributes"]}
    assert attributes["deletion_protection.enabled"] == "true"
    assert attributes["routing.http.drop_invalid_header_fields.enabled"] == "true"
    assert attributes["access_logs.s3.enabled"] == "true" and attributes["access_logs.s3.prefix"] == "alb/api"
    assert "DataAccessLogs" in json.dumps(attributes["access_logs.s3.bucket"])
    log_policy = _one(template, "AWS::S3::BucketPolicy", "Data/AccessLogs/Policy")["Properties"]["PolicyDocument"]
    (grant,) = [s for s in log_policy["Statement"] if s.get("Sid") == "AlbAccessLogs"]
    assert grant["Principal"] == {"Service": "logdelivery.elasticloadbalancing.amazonaws.com"}
    listeners = {
        r["Properties"]["Port"]: r["Properties"]
        for r in _resources(template, "AWS::ElasticLoadBalancingV2::Listener").values()
    }
    assert set(listeners) == {80, 443}
    https = listeners[443]
    assert https["Protocol"] == "HTTPS" and https["SslPolicy"] == "ELBSecurityPolicy-TLS13-1-2-2021-06"
    assert https["Certificates"] == [{"CertificateArn": API_CERTIFICATE}]
    (redirect,) = listeners[80]["DefaultActions"]
    assert redirect["Type"] == "redirect"
    assert redirect["RedirectConfig"] == {"Port": "443", "Protocol": "HTTPS", "StatusCode": "HTTP_301"}
    group = _one(template, "AWS::ElasticLoadBalancingV2::TargetGroup", "Api/Alb/Https/ApiGroup")["Properties"]
    assert group["HealthCheckPath"] == "/healthz" and group["Port"] == 8080 and group["TargetType"] == "ip"
    rule = _one(template, "AWS::ElasticLoadBalancingV2::ListenerRule", "NoPublicMetrics")["Properties"]
    assert rule["Conditions"][0]["PathPatternConfig"]["Values"] == ["/metrics", "/metrics/*"]
    assert rule["Actions"][0]["Type"] == "fixed-response"
    # A regional WAF in front, logging without the credentials.
    (association,) = _resources(template, "AWS::WAFv2::WebACLAssociation").values()
    assert "ApiAlb" in json.dumps(association["Properties"]["ResourceArn"])
    acl = _one(template, "AWS::WAFv2::WebACL", "Api/WebAcl")["Properties"]
    assert acl["Scope"] == "REGIONAL"
    names = {r["Name"] for r in acl["Rules"]}
    assert {"PerIpRateLimit", "AWSManagedRulesCommonRuleSet", "AWSManagedRulesKnownBadInputsRuleSet"} == names
    (logging,) = _resources(template, "AWS::WAFv2::LoggingConfiguration").values()
    redacted = {f["SingleHeader"]["Name"] for f in logging["Properties"]["RedactedFields"]}
    assert redacted == {"authorization", "x-api-key"}


def test_api_tasks_are_private_and_reachable_only_from_the_alb(template: dict) -> None:
    service = _one(template, "AWS::ECS::Service", "Api/Service/")["Properties"]
    assert service["LaunchType"] == "FARGATE" and service["PlatformVersion"] == "LATEST"
    network = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "DISABLED"
    private = {n for n, r in _resources(template, "AWS::EC2::Subnet").items() if "private" in n.lower()}
    assert {s["Ref"] for s in network["Subnets"]} == private and private
    (group_ref,) = network["SecurityGroups"]
    service_sg = group_ref["Fn::GetAtt"][0]
    sg = template["Resources"][service_sg]["Properties"]
    assert "SecurityGroupIngress" not in sg  # no inline rule: the one below is all
    ingress = [
        r["Properties"] for r in _resources(template, "AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] == {"Fn::GetAtt": [service_sg, "GroupId"]}
    ]  # fmt: skip
    assert len(ingress) == 1
    assert ingress[0]["FromPort"] == ingress[0]["ToPort"] == 8080
    assert "ApiAlbSg" in ingress[0]["SourceSecurityGroupId"]["Fn::GetAtt"][0]
    assert "CidrIp" not in ingress[0]
    # The ALB's group: 80/443 in from anywhere, out only to the tasks' port.
    alb_sg = _one(template, "AWS::EC2::SecurityGroup", "Api/AlbSg/")["Properties"]
    assert {(r["FromPort"], r["CidrIp"]) for r in alb_sg["SecurityGroupIngress"]} == {(443, "0.0.0.0/0"), (80, "0.0.0.0/0")}
    egress = _one(template, "AWS::EC2::SecurityGroupEgress", "Api/AlbSg/")["Properties"]
    assert egress["FromPort"] == 8080 and egress["DestinationSecurityGroupId"] == {"Fn::GetAtt": [service_sg, "GroupId"]}


def test_api_task_runs_serve_in_sensors_mode_with_its_secrets(template: dict) -> None:
    task = _one(template, "AWS::ECS::TaskDefinition", "Api/Task/")["Properties"]
    assert task["Family"] == "avatarpipe-api" and task["RequiresCompatibilities"] == ["FARGATE"]
    (container,) = task["ContainerDefinitions"]
    assert container["Command"] == ["avatarpipe", "serve", "--host", "0.0.0.0", "--port", "8080"]
    assert container["PortMappings"][0]["ContainerPort"] == 8080
    assert container["ReadonlyRootFilesystem"] is True
    worker_image = _one(template, "AWS::ECS::TaskDefinition", "Compute/WorkerGpuTask/")["Properties"]
    assert container["Image"] == worker_image["ContainerDefinitions"][0]["Image"]  # the same image
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env["AVATARPIPE_SERVICE_DISPATCH"] == "sensors"
    assert "WebDistribution" in json.dumps(env["AVATARPIPE_CORS_ORIGINS"])
    assert json.dumps(env["AVATARPIPE_CORS_ORIGINS"]).startswith('{"Fn::Join": ["", ["https://"')
    assert {"AVATARPIPE_S3_BUCKET", "AVATARPIPE_S3_UPLOADS_BUCKET", "AVATARPIPE_S3_KMS_KEY_ID", "DAGSTER_HOME",
            "DAGSTER_RUN_TASK_DEFINITION"} <= set(env)  # fmt: skip
    secrets = {s["Name"]: json.dumps(s["ValueFrom"]) for s in container["Secrets"]}
    assert set(secrets) == {"MONGODB_URI", "DAGSTER_PG_URL", "AVATARPIPE_MLFLOW_URI", "AVATARPIPE_SERVICE_SECRET"}
    assert "ApiServiceSecret" in secrets["AVATARPIPE_SERVICE_SECRET"]
    secret = _one(template, "AWS::SecretsManager::Secret", "Api/ServiceSecret")["Properties"]
    assert secret["GenerateSecretString"]["PasswordLength"] == 64 and "SecretString" not in secret
    assert "PlatformKey" in json.dumps(secret["KmsKeyId"])
    # Every variable the production dagster.yaml reads reaches the API task too (it registers partitions).
    needed = _env_refs(yaml.safe_load((INFRA / "dagster.production.yaml").read_text()))
    assert needed <= set(env) | set(secrets)


def test_api_task_role_is_scoped_to_what_the_service_does(template: dict) -> None:
    policy = _one(template, "AWS::IAM::Policy", "Api/TaskRole/DefaultPolicy")["Properties"]["PolicyDocument"]
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert set(by_sid) == {"PutRawPhotos", "ReadAvatars", "EraseSubjects", "ListForErasure", "EncryptRawPhotos",
                           "DecryptObjects", "InstanceRunLauncher"}  # fmt: skip
    assert by_sid["InstanceRunLauncher"]["Action"] == "ecs:DescribeTaskDefinition"
    put = by_sid["PutRawPhotos"]
    assert "s3:PutObject" in _as_list(put["Action"])
    assert "DataUploads" in json.dumps(put["Resource"]) and "subjects/*/*/raw/*" in json.dumps(put["Resource"])
    assert "Artifacts" not in json.dumps(put["Resource"])  # the service never writes derived artifacts
    read = by_sid["ReadAvatars"]
    assert read["Action"] == "s3:GetObject" and "subjects/*/*/rigged_glb/*" in json.dumps(read["Resource"])
    assert "DataArtifacts" in json.dumps(read["Resource"])
    assert by_sid["EncryptRawPhotos"]["Action"] == "kms:GenerateDataKey"
    assert "UploadsKey" in json.dumps(by_sid["EncryptRawPhotos"]["Resource"])
    assert "Condition" in by_sid["ListForErasure"]
    every_action = {a for s in policy["Statement"] for a in _as_list(s["Action"])}
    assert not any(a.startswith(("sqs:", "iam:", "secretsmanager:")) for a in every_action)
    assert {a for a in every_action if a.startswith("ecs:")} == {"ecs:DescribeTaskDefinition"}  # no RunTask
    # The secrets are read by the execution role (at task start), never by the task's code.
    execution = _one(template, "AWS::IAM::Policy", "Api/ExecutionRole/DefaultPolicy")["Properties"]["PolicyDocument"]
    reads = [s for s in execution["Statement"] if "secretsmanager:GetSecretValue" in _as_list(s["Action"])]
    assert reads and "*" not in json.dumps([s["Resource"] for s in reads])


def test_web_app_is_private_s3_behind_cloudfront_sharing_the_api_origin(template: dict) -> None:
    bucket = _one(template, "AWS::S3::Bucket", "Web/Bucket/")["Properties"]
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert "LoggingConfiguration" in bucket and "BucketEncryption" in bucket
    distribution = _one(template, "AWS::CloudFront::Distribution", "Web/Distribution/")["Properties"]
    config = distribution["DistributionConfig"]
    assert config["DefaultRootObject"] == "index.html"
    assert config["Logging"]["Prefix"] == "cloudfront-web/"
    s3_origin, api_origin = config["Origins"]
    oac = _one(template, "AWS::CloudFront::OriginAccessControl", "Web/Distribution/")
    assert "WebDistributionOrigin1S3OriginAccessControl" in json.dumps(s3_origin["OriginAccessControlId"])
    assert oac["Properties"]["OriginAccessControlConfig"]["SigningBehavior"] == "always"
    assert api_origin["DomainName"] == API_DOMAIN
    custom = api_origin["CustomOriginConfig"]
    assert custom["OriginProtocolPolicy"] == "https-only" and custom["OriginSSLProtocols"] == ["TLSv1.2"]
    default = config["DefaultCacheBehavior"]
    assert default["ViewerProtocolPolicy"] == "redirect-to-https"
    security_headers = "67f7725c-6f97-4210-82d7-5512b31e9d03"  # CloudFront's managed SecurityHeadersPolicy
    assert default["ResponseHeadersPolicyId"] == security_headers
    behaviours = {b["PathPattern"]: b for b in config["CacheBehaviors"]}
    assert set(behaviours) == {"/v1/*", "/healthz", "/openapi.json"}
    for behaviour in behaviours.values():
        assert behaviour["TargetOriginId"] == api_origin["Id"] and behaviour["ViewerProtocolPolicy"] == "https-only"
        assert "POST" in behaviour["AllowedMethods"] and behaviour["ResponseHeadersPolicyId"] == security_headers
    cache = _one(template, "AWS::CloudFront::CachePolicy", "Web/ApiCachePolicy")["Properties"]["CachePolicyConfig"]
    assert cache["DefaultTTL"] == 0 and cache["MaxTTL"] <= 1
    headers = cache["ParametersInCacheKeyAndForwardedToOrigin"]["HeadersConfig"]["Headers"]
    assert set(headers) == {"Authorization", "X-API-Key"}  # forwarded, and one key's answer is never another's
    # Only this distribution may read the web bucket, and only objects.
    policy = _one(template, "AWS::S3::BucketPolicy", "Web/Bucket/Policy")["Properties"]["PolicyDocument"]
    (read,) = [s for s in policy["Statement"] if s.get("Principal") == {"Service": "cloudfront.amazonaws.com"}]
    assert read["Action"] == "s3:GetObject" and "AWS:SourceArn" in json.dumps(read["Condition"])
    assert "WebDistribution" in json.dumps(read["Condition"])
    # GLB downloads are redirects to presigned S3 GETs, fetched by the SPA cross-origin.
    artifacts = _one(template, "AWS::S3::Bucket", "Data/Artifacts/")["Properties"]
    (cors,) = artifacts["CorsConfiguration"]["CorsRules"]
    assert cors["AllowedMethods"] == ["GET", "HEAD"] and "WebDistribution" in json.dumps(cors["AllowedOrigins"])
    outputs = template["Outputs"]
    assert {"WebBucket", "WebDistributionDomain", "WebDistributionId", "ApiLoadBalancerDns", "ApiServiceSecretArn"} <= set(outputs)


def test_without_an_api_certificate_synth_leaves_the_api_out_and_says_so(tmp_path: Path) -> None:
    """cdk.json's defaults (no apiDomain/certificate): a valid template with the web app and no
    ALB or API service, and a synth warning naming the two settings."""
    _require(CDK, "the CDK CLI (infra/node_modules)")
    _require(CFN_LINT, "cfn-lint")
    env = {**os.environ, "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1", "CDK_DISABLE_CLI_TELEMETRY": "true"}
    done = subprocess.run(
        [str(CDK), "synth", "--app", f"{sys.executable} app.py", "--output", str(tmp_path), "--no-notices"],
        cwd=INFRA, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "avatarpipe:apiDomain and avatarpipe:apiCertificateArn" in done.stdout + done.stderr
    template = json.loads((tmp_path / "Avatarpipe.template.json").read_text())
    assert not _resources(template, "AWS::ElasticLoadBalancingV2::LoadBalancer")
    services = [r["Metadata"]["aws:cdk:path"] for r in _resources(template, "AWS::ECS::Service").values()]
    assert services == ["Avatarpipe/GpuWorkers/Service/Service"]  # the GPU workers only, no API service
    web = _one(template, "AWS::CloudFront::Distribution", "Web/Distribution/")["Properties"]["DistributionConfig"]
    assert "CacheBehaviors" not in web and len(web["Origins"]) == 1
    lint = subprocess.run([str(CFN_LINT), str(tmp_path / "Avatarpipe.template.json")],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_api_tier_needs_domain_and_certificate_together() -> None:
    """Without both the API tier is left out (an ALB has no default certificate); one alone is an error."""
    sys.path.insert(0, str(INFRA))
    try:
        from stacks.avatarpipe_stack import api_tier_enabled
        from stacks.config import InfraConfig
    finally:
        sys.path.remove(str(INFRA))
    assert api_tier_enabled(InfraConfig()) is False
    assert api_tier_enabled(InfraConfig(api_domain=API_DOMAIN, api_certificate_arn=API_CERTIFICATE)) is True
    for half in (InfraConfig(api_domain=API_DOMAIN), InfraConfig(api_certificate_arn=API_CERTIFICATE)):
        with pytest.raises(ValueError, match="set together"):
            api_tier_enabled(half)


def test_image_holds_every_package_the_project_installs() -> None:
    """`pip install -e .` in the image needs every listed package (the API's `service/` too)."""
    import tomllib

    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    dockerfile = (INFRA / "Dockerfile").read_text()
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
    install = dockerfile.index("RUN pip install -e")
    for package in packages:
        assert dockerfile.find(f"COPY {package} {package}\n") in range(install), package
        assert f"!{package}/**" in ignore, package
    assert "service" in packages


def test_keys_task_puts_the_new_key_in_its_secret_not_on_stdout(template: dict, tmp_path, monkeypatch, capsys) -> None:
    """The keys task's program, run for real (`avatarpipe keys create` in a throwaway home); only
    the Secrets Manager call is recorded instead of sent. The dropped key authenticates."""
    import types

    sys.path.insert(0, str(INFRA))
    try:
        from stacks.service import KEY_DROP_ENV, KEY_DROP_SCRIPT
    finally:
        sys.path.remove(str(INFRA))
    task = _one(template, "AWS::ECS::TaskDefinition", "Api/KeysTask/")["Properties"]
    (container,) = task["ContainerDefinitions"]
    assert container["Command"] == ["python", "-c", KEY_DROP_SCRIPT]
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert "ApiApiKeyDrop" in json.dumps(env[KEY_DROP_ENV]) and env["KEY_ROLE"] == "uploader"
    assert {s["Name"] for s in container["Secrets"]} >= {"MONGODB_URI", "AVATARPIPE_SERVICE_SECRET"}
    keys_policy = _one(template, "AWS::IAM::Policy", "Api/KeysTaskRole/DefaultPolicy")["Properties"]["PolicyDocument"]
    drop = next(s for s in keys_policy["Statement"] if s["Sid"] == "DropNewKey")
    assert drop["Action"] == "secretsmanager:PutSecretValue" and "ApiApiKeyDrop" in json.dumps(drop["Resource"])

    home = tmp_path / "home"
    pepper = "a-test-pepper-of-sufficient-length-0123456789"
    monkeypatch.setenv("AVATARPIPE_HOME", str(home))
    monkeypatch.setenv("AVATARPIPE_SERVICE_SECRET", pepper)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KEY_ROLE", "compliance")
    monkeypatch.setenv("KEY_NAME", "auditor")
    monkeypatch.setenv(KEY_DROP_ENV, "arn:aws:secretsmanager:eu-west-1:123456789012:secret:drop")
    for name in ("MONGODB_URI", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    calls: list[dict] = []

    class Recorder:
        def put_secret_value(self, **kwargs: Any) -> None:
            calls.append(kwargs)

    monkeypatch.setitem(sys.modules, "boto3", types.SimpleNamespace(client=lambda service: Recorder()))
    exec(compile(KEY_DROP_SCRIPT, "key-drop", "exec"), {"__name__": "__main__"})  # noqa: S102 - the task's program
    (call,) = calls
    assert call["SecretId"].endswith(":secret:drop")
    dropped = json.loads(call["SecretString"])
    assert dropped["role"] == "compliance" and dropped["name"] == "auditor"
    printed = capsys.readouterr()
    assert dropped["key"] not in printed.out + printed.err and dropped["key_id"] in printed.err

    from orchestration.settings import Settings
    from service.keys import authenticate
    from storage.metadata_store import open_metadata_store

    settings = Settings.from_env()
    with open_metadata_store(settings.mongodb_uri, settings.metadata_dir) as metadata:
        key = authenticate(metadata, pepper.encode(), dropped["key"])
    assert key is not None and key.role == "compliance" and key.key_id == dropped["key_id"]


def test_gpu_worker_service_takes_steps_from_a_queue_and_scales_on_its_backlog(template: dict) -> None:
    """Compute mode ecs_service (stacks/worker_service.py): a warm ECS service of GPU queue workers."""
    queue = _one(template, "AWS::SQS::Queue", "GpuWorkers/StepRequests/")["Properties"]
    assert queue["RedrivePolicy"]["maxReceiveCount"] == 1 and "KmsMasterKeyId" in queue
    assert "StepRequestsDLQ" in json.dumps(queue["RedrivePolicy"]["deadLetterTargetArn"])

    task = _one(template, "AWS::ECS::TaskDefinition", "GpuWorkers/GpuTask/")["Properties"]
    (container,) = task["ContainerDefinitions"]
    assert container["Command"] == ["python", "-m", "ops.queue_worker"]
    assert container["ResourceRequirements"] == [{"Type": "GPU", "Value": "1"}]
    assert "AVATARPIPE_ECS_SERVICE_QUEUE_URL" in {e["Name"] for e in container["Environment"]}
    service = _one(template, "AWS::ECS::Service", "GpuWorkers/Service/")["Properties"]
    assert "GpuCapacity" in json.dumps(service["CapacityProviderStrategy"]) and service["DesiredCount"] == 1

    target = _one(template, "AWS::ApplicationAutoScaling::ScalableTarget", "GpuWorkers/")["Properties"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 4)
    policies = [r["Properties"] for r in _resources(template, "AWS::ApplicationAutoScaling::ScalingPolicy").values()
                if "GpuWorkers" in r["Metadata"]["aws:cdk:path"]]  # fmt: skip
    configs = [p["StepScalingPolicyConfiguration"] for p in policies]
    assert {c["AdjustmentType"] for c in configs} == {"ExactCapacity"} and len(configs) == 2  # out and in
    alarms = [r["Properties"] for r in _resources(template, "AWS::CloudWatch::Alarm").values()
              if "ScaleOnStepBacklog" in r["Metadata"]["aws:cdk:path"]]  # fmt: skip
    assert alarms and all("visible + inflight" in json.dumps(a["Metrics"]) for a in alarms)
    metrics = json.dumps([a["Metrics"] for a in alarms])
    assert "ApproximateNumberOfMessagesVisible" in metrics and "ApproximateNumberOfMessagesNotVisible" in metrics

    role = _one(template, "AWS::IAM::Policy", "WorkerServiceTaskRole/DefaultPolicy")["Properties"]["PolicyDocument"]
    by_sid = {s["Sid"]: s for s in role["Statement"]}
    assert set(_as_list(by_sid["TakeStepRequests"]["Action"])) == {
        "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"}
    assert "pipes/*" in json.dumps(by_sid["PipesContextAndMessages"]["Resource"])
    assert not any("Delete" in a for s in role["Statement"] for a in _as_list(s["Action"]) if a.startswith("s3:"))
    orchestrator = _one(template, "AWS::IAM::Policy", "OrchestratorTaskRole/DefaultPolicy")["Properties"]["PolicyDocument"]
    sends = [s for s in orchestrator["Statement"] if s.get("Sid") == "SendStepRequests"]
    assert len(sends) == 1 and "StepRequests" in json.dumps(sends[0]["Resource"])
    (daemon,) = _one(template, "AWS::ECS::TaskDefinition", "Compute/DaemonTask/")["Properties"]["ContainerDefinitions"]
    env = {e["Name"]: e["Value"] for e in daemon["Environment"]}
    assert env["AVATARPIPE_COMPUTE_MODE"] == "ecs_service" and "AVATARPIPE_ECS_SERVICE_QUEUE_URL" in env
    rules = _one(template, "AWS::S3::Bucket", "Data/Artifacts/")["Properties"]["LifecycleConfiguration"]["Rules"]
    assert any(r.get("Prefix") == "pipes/" and r["ExpirationInDays"] == 1 for r in rules)
