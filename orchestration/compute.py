"""Compute launcher: where each step runs, chosen by configuration, never by code edits.

* ``inprocess`` — in the Dagster step's own process (`ops.steps.execute_step`);
* ``subprocess`` — `python -m ops.worker` through Dagster's `PipesSubprocessClient`
  (the embedded default: a crash or OOM in the science cannot take the run worker down);
* ``warm`` — a pool of long-lived Pipes workers on this machine (`orchestration.compute_warm`,
  `ops.warm_worker`): the models are loaded once per worker and serve many steps; the same
  Pipes session and `ops.worker.run` as ``subprocess``, the same isolation (a worker that dies
  fails its step with WORKER_LOST), without an interpreter start and torch import per step.
  Every step named in ``warm_steps`` (default: all five) goes there, so the run process
  imports no torch or MediaPipe;
* ``ecs`` — the same worker as an ECS task through `dagster_aws.pipes.PipesECSClient`: a GPU
  task (`resourceRequirements` GPU=1) on the GPU capacity provider, or, with ``ecs_gpu``
  off, the CPU fallback. Pipes messages come back through CloudWatch Logs (`awslogs`).
* ``ecs_service`` — the step goes on an SQS queue to the warm ECS service of GPU workers
  (`ops.queue_worker`); Pipes context and messages through S3
  (`orchestration/compute_ecs_service.py`).

Any of the five steps (`ops.steps.STEPS`) can be named in ``heavy_steps`` (default: the fit
and the mesh; ``warm_steps`` in the warm mode) and then leaves the process; the others run in-process through the same
`execute_step`.
Every mode returns the same `StepResult`: the outputs are already in the object store, and the
caller records the `artifacts` document.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource, MaterializeResult
from pydantic import Field

from models.errors import ErrorCode, PipelineError
from ops.steps import StepRequest, StepResult, execute_step, step_spec, thumbnail_png
from ops.worker import ERROR_MESSAGE, RESULT_MESSAGE
from storage.keys import ObjectStore
from storage.object_store import object_store_from_config

MODES = ("inprocess", "subprocess", "warm", "ecs", "ecs_service")
DEFAULT_HEAVY_STEPS = ["smplx_params", "mesh"]
DEFAULT_WARM_STEPS = ["photo", "keypoints", "smplx_params", "mesh", "rigged_glb"]
WORKER_MODULE = "ops.worker"


class ComputeLauncherResource(ConfigurableResource):
    """Runs a step in-process, as a Pipes subprocess, in a warm Pipes worker, or as a Pipes ECS
    (GPU) task."""

    mode: str = Field(default="subprocess", description="inprocess | subprocess | warm | ecs | ecs_service")
    heavy_steps: list[str] = Field(default_factory=lambda: list(DEFAULT_HEAVY_STEPS))
    # subprocess and warm modes
    worker_python: str = Field(default_factory=lambda: sys.executable)
    worker_env: dict[str, str] = Field(default_factory=dict)
    # warm mode (orchestration.compute_warm.WarmPool)
    warm_dir: str | None = None  # the pool's sockets and state; default $AVATARPIPE_HOME/worker
    warm_steps: list[str] = Field(default_factory=lambda: list(DEFAULT_WARM_STEPS))
    warm_workers: int = 2  # worker processes = steps at once (match max_concurrent_runs)
    warm_idle_s: float = 600.0  # a worker exits after this long without a request
    warm_start_timeout_s: float = 900.0
    warm_quality: bool = True  # the quality gates' metrics and GX validation too
    # ecs mode
    region: str | None = None
    endpoint_url: str | None = None
    ecs_cluster: str | None = None
    ecs_task_definition: str | None = None  # the GPU worker task definition
    ecs_cpu_task_definition: str | None = None  # CPU fallback (default: the same definition)
    ecs_container: str = "worker"
    ecs_command: list[str] = Field(default_factory=lambda: ["python", "-m", WORKER_MODULE])
    ecs_gpu: bool = True
    ecs_gpu_capacity_provider: str | None = None
    ecs_cpu_capacity_provider: str | None = None  # None with ecs_gpu off = Fargate
    ecs_subnets: list[str] = Field(default_factory=list)
    ecs_security_groups: list[str] = Field(default_factory=list)
    ecs_poll_seconds: int = 6
    ecs_max_polls: int = 1200  # 2 h at 6 s: a fit takes minutes, a stuck task must not hang forever
    # ecs_service mode (orchestration/compute_ecs_service.py): the warm GPU worker service
    ecs_service_queue_url: str | None = None
    ecs_service_pipes_bucket: str | None = None  # None: the request's S3 object-store bucket
    ecs_service_pickup_s: int = 900
    ecs_service_stall_s: int = 300
    ecs_service_poll_s: float = 2.0

    # -- what runs where -------------------------------------------------------------------

    def is_heavy(self, step: str) -> bool:
        if self.mode == "warm":
            return step in self.warm_steps
        return self.mode != "inprocess" and step in self.heavy_steps

    def placement(self, step: str) -> str:
        return self.mode if self.is_heavy(step) else "inprocess"

    def run_step(
        self, context: Any, request: StepRequest, store: ObjectStore | None = None
    ) -> tuple[StepResult, dict[str, Any]]:
        """Run one step for one upload; returns its result and the materialisation metadata the
        worker reported (empty in-process). A bad input raises `PipelineError` with its code.
        ``store``: the caller's object store for an in-process step (default: the request's)."""
        if self.mode not in MODES:
            raise ValueError(f"unknown compute mode {self.mode!r}; expected one of {MODES}")
        step_spec(request.step)  # unknown steps fail before anything is launched
        placement = self.placement(request.step)
        context.log.info(f"compute: step {request.step} runs {placement}")
        if placement == "inprocess":
            return execute_step(request, store or object_store_from_config(request.object_store)), {}
        if placement == "subprocess":
            invocation = self._run_subprocess(context, request)
        elif placement == "warm":
            invocation = self._run_warm(context, request)
        elif placement == "ecs_service":
            invocation = self._run_ecs_service(context, request)
        else:
            invocation = self._run_ecs(context, request)
        result, metadata = _parse_invocation(invocation, request)
        return _with_preview(result, request), metadata

    # -- subprocess ------------------------------------------------------------------------

    def worker_command(self) -> list[str]:
        return [self.worker_python, "-m", WORKER_MODULE]

    def _run_subprocess(self, context: Any, request: StepRequest):
        from dagster import PipesSubprocessClient

        client = PipesSubprocessClient(env=dict(self.worker_env))
        return client.run(context=context, command=self.worker_command(), extras=request.to_dict())

    # -- warm ------------------------------------------------------------------------------

    def warm_pool(self):
        """The pool of warm workers this launcher hands steps to (`orchestration.compute_warm`)."""
        from orchestration.compute_warm import WarmPool

        directory = self.warm_dir or str(_default_home() / "worker")
        return WarmPool(
            directory=Path(directory), size=self.warm_workers, idle_s=self.warm_idle_s, python=self.worker_python,
            env=dict(self.worker_env), start_timeout_s=self.warm_start_timeout_s,
        )  # fmt: skip

    def quality_in_worker(self) -> bool:
        """Whether the quality gates' metrics and GX validation go to the warm workers."""
        return self.mode == "warm" and self.warm_quality

    def run_quality(self, request: dict[str, Any]) -> dict[str, Any]:
        """One quality gate's metrics and validation in a warm worker (`assets.checks`)."""
        return self.warm_pool().run_quality(request)

    def _run_warm(self, context: Any, request: StepRequest):
        from orchestration.compute_warm import PipesWarmWorkerClient

        client = PipesWarmWorkerClient(self.warm_pool())
        return client.run(context=context, extras=request.to_dict(), step=request.step)

    # -- ecs -------------------------------------------------------------------------------

    def ecs_api(self) -> Any:
        """The boto3 ECS client (tests substitute one that also runs the container locally)."""
        import boto3

        return boto3.client("ecs", region_name=self.region, endpoint_url=self.endpoint_url)

    def logs_api(self) -> Any:
        import boto3

        return boto3.client("logs", region_name=self.region, endpoint_url=self.endpoint_url)

    def run_task_params(self, request: StepRequest) -> dict[str, Any]:
        """`ecs.run_task` arguments for one step (PipesECSClient adds the Pipes env vars and tags)."""
        if not self.ecs_cluster or not self.ecs_task_definition:
            raise ValueError("ecs mode needs ecs_cluster and ecs_task_definition")
        override: dict[str, Any] = {
            "name": self.ecs_container,
            "command": list(self.ecs_command),
            "environment": [
                {"name": "AVATARPIPE_STEP", "value": request.step},
                {"name": "AVATARPIPE_UPLOAD_ID", "value": request.upload_id},
            ],
        }
        params: dict[str, Any] = {
            "cluster": self.ecs_cluster,
            "count": 1,
            "startedBy": f"avatarpipe/{request.step}",
            "overrides": {"containerOverrides": [override]},
            "tags": [
                {"key": "avatarpipe:step", "value": request.step},
                {"key": "avatarpipe:upload_id", "value": request.upload_id},
            ],
        }
        if self.ecs_gpu:
            params["taskDefinition"] = self.ecs_task_definition
            override["resourceRequirements"] = [{"type": "GPU", "value": "1"}]
            provider = self.ecs_gpu_capacity_provider
        else:
            params["taskDefinition"] = self.ecs_cpu_task_definition or self.ecs_task_definition
            provider = self.ecs_cpu_capacity_provider
        if provider:
            params["capacityProviderStrategy"] = [{"capacityProvider": provider, "weight": 1, "base": 0}]
        elif self.ecs_gpu:
            raise ValueError("GPU tasks need ecs_gpu_capacity_provider (Fargate has no GPUs)")
        else:
            params["launchType"] = "FARGATE"
        if self.ecs_subnets:
            params["networkConfiguration"] = {
                "awsvpcConfiguration": {
                    "subnets": list(self.ecs_subnets),
                    "securityGroups": list(self.ecs_security_groups),
                    "assignPublicIp": "DISABLED",
                }
            }
        return params

    def _run_ecs(self, context: Any, request: StepRequest):
        from dagster_aws.pipes import PipesCloudWatchMessageReader, PipesECSClient
        from dagster_aws.pipes.clients.utils import WaiterConfig

        client = PipesECSClient(
            client=self.ecs_api(),
            message_reader=PipesCloudWatchMessageReader(client=self.logs_api()),
        )
        return client.run(
            context=context,
            run_task_params=self.run_task_params(request),  # ty: ignore[invalid-argument-type]
            extras=request.to_dict(),
            pipes_container_name=self.ecs_container,
            waiter_config=WaiterConfig(Delay=self.ecs_poll_seconds, MaxAttempts=self.ecs_max_polls),
        )


    def _run_ecs_service(self, context: Any, request: StepRequest):
        import boto3

        from orchestration.compute_ecs_service import ServiceTarget, run_on_service

        bucket = self.ecs_service_pipes_bucket or request.object_store.get("bucket")
        if not self.ecs_service_queue_url or not bucket:
            raise ValueError("ecs_service mode needs ecs_service_queue_url and a pipes bucket (or an S3 object store)")
        target = ServiceTarget(self.ecs_service_queue_url, bucket, self.ecs_service_pickup_s,
                               self.ecs_service_stall_s, self.ecs_service_poll_s)  # fmt: skip
        clients = {name: boto3.client(name, region_name=self.region, endpoint_url=self.endpoint_url) for name in ("sqs", "s3")}
        return run_on_service(context, request, target, clients["sqs"], clients["s3"])


def _parse_invocation(invocation: Any, request: StepRequest) -> tuple[StepResult, dict[str, Any]]:
    """The worker's answer: a typed error becomes `PipelineError`; otherwise its `StepResult`."""
    messages = [m for m in invocation.get_custom_messages() if isinstance(m, dict)]
    for message in messages:
        if ERROR_MESSAGE in message:
            error = message[ERROR_MESSAGE]
            try:
                code = ErrorCode(error.get("code"))
            except ValueError:
                code = ErrorCode.INTERNAL_ERROR
            raise PipelineError(code, str(error.get("message")), error.get("step") or request.step)
    results = [m[RESULT_MESSAGE] for m in messages if RESULT_MESSAGE in m]
    if len(results) != 1:
        raise PipelineError(
            ErrorCode.INTERNAL_ERROR,
            f"the worker for {request.step} finished without reporting a result",
            request.step,
        )
    metadata: dict[str, Any] = {}
    for reported in invocation.get_results():
        if isinstance(reported, MaterializeResult) and reported.metadata:
            metadata.update(reported.metadata)
    metadata.update(invocation.metadata)  # e.g. "AWS ECS Task URL"
    return StepResult.from_dict(results[0]), metadata


def _with_preview(result: StepResult, request: StepRequest) -> StepResult:
    """Remote steps do not ship pictures through Pipes: thumbnail the stored preview source."""
    extra = step_spec(request.step).preview_extra
    if not extra or extra not in result.extra_files:
        return result
    from dataclasses import replace

    from models.photo import decode_png

    store = object_store_from_config(request.object_store)
    png = store.get_bytes(result.extra_files[extra])
    return replace(result, preview_png=thumbnail_png(decode_png(png)))


# ComputeLauncherResource field -> AwsSettings field, where the names differ
_SETTINGS_NAMES = {"mode": "compute_mode"}


def _default_home() -> Path:
    from orchestration.config import load_config

    return load_config().resolved_home


def warm_values(config: Any, home: Path) -> dict[str, Any]:
    """The warm pool's launcher fields from the configuration (`AVATARPIPE_WARM_*`)."""
    steps = [s.strip() for s in config.warm_steps.split(",") if s.strip()]
    return {
        "warm_dir": str(home / "worker"),
        "warm_steps": steps,
        "warm_workers": config.warm_workers,
        "warm_idle_s": config.warm_idle_s,
    }


def launcher_from_settings(settings: Any) -> ComputeLauncherResource:
    """The launcher the environment asks for (`AVATARPIPE_COMPUTE_MODE`, `AVATARPIPE_ECS_*`,
    `AVATARPIPE_WARM_*`): every launcher field that `orchestration.settings.AwsSettings` has,
    under the same name (`_SETTINGS_NAMES` for the one that differs), and the warm pool's
    (`warm_values`); the rest keep their defaults."""
    aws = settings.aws
    values: dict[str, Any] = {}
    for name in ComputeLauncherResource.model_fields:
        source = _SETTINGS_NAMES.get(name, name)
        if hasattr(aws, source):
            value = getattr(aws, source)
            values[name] = list(value) if isinstance(value, tuple) else value
    values |= warm_values(settings.app, settings.home)
    return ComputeLauncherResource(**values)
