"""Pipes worker: `python -m ops.worker`, launched by Dagster to run one step out of process
(any of the five in `ops.steps.STEPS` that `AVATARPIPE_HEAVY_STEPS` names). The warm worker
(`ops.warm_worker`) runs the same `run` for each step it serves, in a long-lived process.

Locally Dagster starts it with `PipesSubprocessClient`; in AWS it is the command of the ECS
GPU task (`PipesECSClient`), the same code in the worker image. Dagster injects the Pipes
context through environment variables; the step request travels as Pipes *extras*:

    {"step": "smplx_params", "upload_id": "u_…", "subject_id": "s_…",
     "inputs": {"keypoints": "subjects/…/keypoints/….json", "keypoints:mask": "…png"},
     "params": {"body_model": {...}, "body_fitter": {...}},
     "object_store": {"kind": "s3", "bucket": "…", ...}}

The worker reads the inputs from the object store, runs the step (`ops.steps`, which calls
`models/`), writes the outputs, and reports back through Pipes: log lines, the asset
materialisation (metadata: key, sha256, metrics, device) and a custom message carrying the
machine-readable `StepResult`. A bad input (a `PipelineError`, e.g. FIT_FAILED) is reported
as a custom message `{"error": {...}}` and the process exits 0: the step ran and gave a typed
answer, which the orchestrator turns into a failed upload. Anything else exits non-zero.

Progress lines of the `avatarpipe.progress` logger (the one-off Anny cache build,
`models.body_model`) written while a step runs are forwarded as Pipes log messages
(:class:`PipesLogForwarder`), so they reach the run's Dagster log as they do for an in-process
step, not only the worker's stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from dagster_pipes import PipesContext, PipesEnvVarParamsLoader, open_dagster_pipes

from models.errors import PipelineError
from ops.steps import StepRequest, StepResult, WorkerRuntime, execute_step
from storage.object_store import key_without_subject, object_store_from_config

EXIT_NOT_PIPES = 2
RESULT_MESSAGE = "result"
ERROR_MESSAGE = "error"
PROGRESS_LOGGER = "avatarpipe.progress"  # `models.body_model.PROGRESS_LOGGER` (models is not imported here)


class PipesLogForwarder(logging.Handler):
    """Each record of a Python logger, as a Pipes log message of the step's context."""

    def __init__(self, pipes: PipesContext):
        super().__init__(level=logging.INFO)
        self.pipes = pipes

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.pipes.log.log(record.levelno, record.getMessage())
        except Exception:  # noqa: BLE001 - a closed channel must not fail the step
            self.handleError(record)


@contextlib.contextmanager
def progress_to_pipes(pipes: PipesContext, logger_name: str = PROGRESS_LOGGER) -> Iterator[None]:
    """Forward ``logger_name``'s records to the Dagster log through ``pipes`` for the duration."""
    logger = logging.getLogger(logger_name)
    handler = PipesLogForwarder(pipes)
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def select_device() -> str:
    """"cuda" when a GPU is usable, else "cpu" (the same image runs on GPU and CPU capacity)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency of the models
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def materialization_metadata(result: StepResult) -> dict[str, Any]:
    """Pipes metadata for the Dagster UI: where the artifact is, its digest, its metrics."""
    metadata: dict[str, Any] = {
        "object": key_without_subject(result.key),
        "sha256": result.sha256,
        "bytes": result.bytes,
        "compute_seconds": result.compute_seconds,
        "device": result.device,
        "worker": "ops.worker",
        "worker_pid": os.getpid(),  # a warm worker serves many steps: which process this was
    }
    for name, value in result.metrics.items():
        if isinstance(value, (bool, int, float, str)):
            metadata[f"metric/{name}"] = value
    return metadata


def run(pipes: PipesContext) -> int:
    request = StepRequest.from_dict(pipes.extras)
    device = select_device()
    pipes.log.info(f"worker: step {request.step} for upload {request.upload_id} on {device}")
    store = object_store_from_config(request.object_store)
    try:
        # the worker's own machine: its model cache and SMPL-X files (see WorkerRuntime)
        with progress_to_pipes(pipes):
            result = execute_step(request, store, device=device, runtime=WorkerRuntime.configured())
    except PipelineError as exc:
        exc.step = exc.step or request.step
        pipes.log.warning(f"worker: {exc.code.value}: {exc.message}")
        pipes.report_custom_message({ERROR_MESSAGE: exc.to_dict() | {"permanent": exc.permanent}})
        return 0
    pipes.log.info(
        f"worker: wrote {key_without_subject(result.key)} ({result.bytes} bytes) in {result.compute_seconds:.2f}s compute"
    )
    if pipes.is_asset_step:
        pipes.report_asset_materialization(metadata=materialization_metadata(result), data_version=result.sha256)
    pipes.report_custom_message({RESULT_MESSAGE: result.to_dict()})
    return 0


def main() -> int:
    if not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        print(
            "ops.worker must be launched by Dagster Pipes (PipesSubprocessClient or PipesECSClient)",
            file=sys.stderr,
        )
        return EXIT_NOT_PIPES
    with open_dagster_pipes() as pipes:
        return run(pipes)


if __name__ == "__main__":
    raise SystemExit(main())
