"""The heavy step as an ECS GPU task through `PipesECSClient`, against a moto server.

moto holds the cluster, the GPU container instance, the capacity provider, the task definition
and the task; the container command (`python -m ops.worker`) runs locally (see local_ecs.py)
with its output in CloudWatch Logs on moto, which is where Dagster reads the Pipes messages.
The worker reads its inputs from S3 (moto, SSE-KMS) and writes its outputs there.
"""

import json
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from ops.steps import StepRequest
from orchestration.compute import ComputeLauncherResource
from storage.s3_store import S3ObjectStore, S3StoreConfig
from tests.aws.conftest import REGION, client, make_bucket, unique
from tests.aws.local_ecs import LocalContainerECS
from tests.ops.inputs import RealInputs, quick_params, real_inputs, store_fit_inputs
from tests.ops.test_worker_pipes import heavy_step

CONTAINER = "worker"
_LOCAL_ECS: dict[str, LocalContainerECS] = {}


class MotoECSLauncher(ComputeLauncherResource):
    """The production launcher; only the ECS client is the moto one that also runs containers."""

    def ecs_api(self):
        return _LOCAL_ECS["client"]


@pytest.fixture(scope="module")
def inputs(standing_photo: Path) -> RealInputs:
    return real_inputs(standing_photo)


@pytest.fixture
def ecs_setup(aws_env: str) -> dict[str, str]:
    """Cluster + GPU capacity provider (ASG of g4dn instances) + a registered container instance +
    the worker task definition (GPU=1, awslogs), as infra/ declares them."""
    endpoint = aws_env
    ec2, ecs, autoscaling = client("ec2", endpoint), client("ecs", endpoint), client("autoscaling", endpoint)
    cluster = unique("cluster")
    ecs.create_cluster(clusterName=cluster)
    template = ec2.create_launch_template(
        LaunchTemplateName=unique("gpu"),
        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "g4dn.xlarge"},
    )["LaunchTemplate"]
    asg_name = unique("gpu-asg")
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=asg_name,
        LaunchTemplate={"LaunchTemplateId": template["LaunchTemplateId"]},
        MinSize=0, MaxSize=2, DesiredCapacity=1,
        AvailabilityZones=[f"{REGION}a"],
    )  # fmt: skip
    asg_arn = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[asg_name])["AutoScalingGroups"][0][
        "AutoScalingGroupARN"
    ]
    provider = unique("gpu-provider")
    ecs.create_capacity_provider(
        name=provider,
        autoScalingGroupProvider={"autoScalingGroupArn": asg_arn, "managedScaling": {"status": "ENABLED"}},
    )
    ecs.put_cluster_capacity_providers(
        cluster=cluster, capacityProviders=[provider], defaultCapacityProviderStrategy=[]
    )
    instance_id = ec2.run_instances(ImageId="ami-12c6146b", InstanceType="g4dn.xlarge", MinCount=1, MaxCount=1)[
        "Instances"
    ][0]["InstanceId"]
    ecs.register_container_instance(cluster=cluster, instanceIdentityDocument=json.dumps({"instanceId": instance_id}))
    log_group = unique("/avatarpipe/worker")
    family = unique("avatarpipe-worker-gpu")
    ecs.register_task_definition(
        family=family,
        requiresCompatibilities=["EC2"],
        networkMode="bridge",
        containerDefinitions=[
            {
                "name": CONTAINER,
                "image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/avatarpipe-worker:latest",
                "command": ["python", "-m", "ops.worker"],
                "essential": True,
                "cpu": 1024,
                "memory": 2048,
                "resourceRequirements": [{"type": "GPU", "value": "1"}],
                "environment": [{"name": "AVATARPIPE_WORKER_IMAGE", "value": "test"}],
                "logConfiguration": {
                    "logDriver": "awslogs",
                    "options": {"awslogs-group": log_group, "awslogs-region": REGION, "awslogs-stream-prefix": "step"},
                },
            }
        ],
    )
    return {"cluster": cluster, "provider": provider, "family": family, "log_group": log_group}


@pytest.fixture
def s3_store(aws_env: str, kms_key: str) -> S3ObjectStore:
    config = S3StoreConfig(
        bucket=make_bucket(aws_env, versioned=True), region=REGION, endpoint_url=aws_env, kms_key_id=kms_key
    )
    return S3ObjectStore(config)


def test_heavy_step_runs_as_an_ecs_gpu_task(aws_env, ecs_setup, s3_store, inputs) -> None:
    local_ecs = LocalContainerECS(client("ecs", aws_env), client("logs", aws_env))
    _LOCAL_ECS["client"] = local_ecs
    launcher = MotoECSLauncher(
        mode="ecs",
        region=REGION,
        endpoint_url=aws_env,
        ecs_cluster=ecs_setup["cluster"],
        ecs_task_definition=ecs_setup["family"],
        ecs_gpu_capacity_provider=ecs_setup["provider"],
        ecs_poll_seconds=1,
        ecs_max_polls=300,
    )
    request = StepRequest(
        step="smplx_params",
        upload_id="u_ecs",
        subject_id="s_ecs",
        inputs=store_fit_inputs(s3_store, "s_ecs", "u_ecs", inputs),
        params=quick_params(),
        object_store=s3_store.config.to_dict(),
    )
    instance = DagsterInstance.ephemeral()

    result = materialize(
        [heavy_step],
        instance=instance,
        resources={"compute": launcher},
        run_config={"ops": {"heavy_step": {"config": {"request_json": json.dumps(request.to_dict())}}}},
        raise_on_error=False,
    )
    local_ecs.wait_all()

    container_lines = next(iter(local_ecs.containers.values())).lines
    assert result.success, [line for line in container_lines if "__dagster_pipes_version" in line or "Error" in line]
    # What went to ECS: the GPU worker task on the GPU capacity provider, the worker command,
    # the GPU requirement, and the Pipes bootstrap variables in the container override.
    (call,) = local_ecs.run_task_calls
    assert call["cluster"] == ecs_setup["cluster"] and call["taskDefinition"] == ecs_setup["family"]
    assert call["capacityProviderStrategy"] == [{"capacityProvider": ecs_setup["provider"], "weight": 1, "base": 0}]
    assert "launchType" not in call and call["count"] == 1
    (override,) = call["overrides"]["containerOverrides"]
    assert override["name"] == CONTAINER
    assert override["command"] == ["python", "-m", "ops.worker"]
    assert override["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    env = {e["name"]: e["value"] for e in override["environment"]}
    assert {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"} <= set(env)
    assert env["AVATARPIPE_STEP"] == "smplx_params" and env["AVATARPIPE_UPLOAD_ID"] == "u_ecs"
    tags = {t["key"]: t["value"] for t in call["tags"]}
    assert tags["avatarpipe:step"] == "smplx_params" and tags["dagster/run-id"] == result.run_id

    # moto's own record of the task agrees, and it ran on the registered GPU container instance.
    ecs = client("ecs", aws_env)
    task_arn = next(iter(local_ecs.containers))
    (task,) = ecs.describe_tasks(cluster=ecs_setup["cluster"], tasks=[task_arn])["tasks"]
    assert task["lastStatus"] == "STOPPED" and task["containerInstanceArn"]
    assert task["overrides"]["containerOverrides"][0]["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    definition = ecs.describe_task_definition(taskDefinition=ecs_setup["family"])["taskDefinition"]
    assert definition["containerDefinitions"][0]["resourceRequirements"] == [{"type": "GPU", "value": "1"}]

    # The answer came back through CloudWatch Logs and the outputs are in S3, KMS-encrypted.
    (mat,) = result.asset_materializations_for_node("heavy_step")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["placement"] == "ecs" and meta["worker"] == "ops.worker" and meta["device"] == "cpu"
    assert "AWS ECS Task URL" in meta
    key = meta["result"]["key"]
    assert meta["result"]["uri"] == f"s3://{s3_store.config.bucket}/{key}"
    assert meta["object"] == key.split("/", 2)[2]  # the key without its subject segment
    assert s3_store.head(key)["ServerSideEncryption"] == "aws:kms"
    assert s3_store.stat(key).sha256 == meta["sha256"]
    stream = next(iter(local_ecs.containers.values())).log_stream
    events = client("logs", aws_env).get_log_events(logGroupName=ecs_setup["log_group"], logStreamName=stream)
    messages = [e["message"] for e in events["events"]]
    assert any('"method": "report_custom_message"' in m or '"method":"report_custom_message"' in m for m in messages)
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("worker: step smplx_params for upload u_ecs on cpu" in line for line in logs)


def test_cpu_fallback_run_task_params() -> None:
    request = StepRequest("mesh", "u_1", "s_1", {}, {}, {"kind": "local", "root": "/tmp"})
    gpu = ComputeLauncherResource(
        mode="ecs", ecs_cluster="c", ecs_task_definition="worker-gpu", ecs_gpu_capacity_provider="gpu",
        ecs_subnets=["subnet-1"], ecs_security_groups=["sg-1"],
    )  # fmt: skip
    params = gpu.run_task_params(request)
    assert params["overrides"]["containerOverrides"][0]["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    assert params["networkConfiguration"]["awsvpcConfiguration"]["assignPublicIp"] == "DISABLED"

    cpu = gpu.model_copy(update={"ecs_gpu": False, "ecs_cpu_task_definition": "worker-cpu"})
    params = cpu.run_task_params(request)
    assert params["taskDefinition"] == "worker-cpu" and params["launchType"] == "FARGATE"
    assert "resourceRequirements" not in params["overrides"]["containerOverrides"][0]
    assert "capacityProviderStrategy" not in params
    on_ec2 = cpu.model_copy(update={"ecs_cpu_capacity_provider": "cpu"})
    assert on_ec2.run_task_params(request)["capacityProviderStrategy"][0]["capacityProvider"] == "cpu"
    with pytest.raises(ValueError, match="Fargate has no GPUs"):
        gpu.model_copy(update={"ecs_gpu_capacity_provider": None}).run_task_params(request)
