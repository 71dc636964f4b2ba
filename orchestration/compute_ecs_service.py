"""Compute mode ``ecs_service``: the step goes to the warm ECS GPU worker service through SQS.

The orchestrator's side of `ops/queue_worker.py`. For one step it opens a Dagster Pipes session
whose context and messages live in S3 (`PipesS3ContextInjector`, `PipesS3MessageReader`, both
under ``pipes/`` of the pipes bucket), puts the session's bootstrap parameters on the step queue,
and waits, reading the worker's messages, until the worker closes the session. Two timeouts turn
a missing worker into a typed, retried error (WORKER_UNAVAILABLE) instead of a hung run:

* pickup: no worker opened the session within ``pickup_s`` (service scaled to 0 and the GPU
  instance did not come up, queue misconfigured). The request carries the same deadline, so a
  worker that takes it later drops it unrun;
* stall: a worker opened it and then went quiet (no message, heartbeats included, for
  ``stall_s``): it died mid-step; its message goes to the DLQ (`ops.queue_worker`).

The answer is the same `PipesClientCompletedInvocation` the other modes give, so
`orchestration.compute._parse_invocation` turns it into the step's `StepResult`.
"""

from __future__ import annotations

import json
import random
import string
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from models.errors import ErrorCode, PipelineError
from ops.queue_worker import REQUEST_KIND
from ops.steps import StepRequest

PIPES_PREFIX = "pipes/"  # what the worker role may read and write in the pipes bucket


@dataclass(frozen=True)
class ServiceTarget:
    """Where the step requests go and how long to wait for the service."""

    queue_url: str  # the step queue the service's workers long-poll
    pipes_bucket: str  # Pipes context and messages, under PIPES_PREFIX
    pickup_s: float = 900.0  # longest wait for a worker to open the session (cold start included)
    stall_s: float = 300.0  # longest silence of an opened session (>> heartbeat + chunk interval)
    poll_s: float = 2.0  # how often the S3 message chunks are read


def _prefixed_reader_class():
    from dagster_aws.pipes import PipesS3MessageReader

    class PrefixedS3MessageReader(PipesS3MessageReader):
        """`PipesS3MessageReader` with its chunks under ``pipes/`` (the stock reader writes at the
        bucket root), removed again when the session ends: the worker role is scoped to the
        prefix and nothing of a session outlives it."""

        @contextmanager
        def get_params(self) -> Iterator[dict]:
            key_prefix = PIPES_PREFIX + "messages/" + "".join(random.choices(string.ascii_letters, k=30))
            with super().get_params() as params:
                params = dict(params) | {"key_prefix": key_prefix}
            try:
                yield params
            finally:
                _delete_prefix(self.client, self.bucket, key_prefix + "/")

    return PrefixedS3MessageReader


def _context_injector_class():
    from dagster_aws.pipes import PipesS3ContextInjector

    class CleanS3ContextInjector(PipesS3ContextInjector):
        """`PipesS3ContextInjector` that removes the context object also when the session ends
        in an error (the stock one deletes it only after a clean exit): the context holds the
        step request, subject id included."""

        @contextmanager
        def inject_context(self, context: Any) -> Iterator[dict]:
            key = None
            try:
                with super().inject_context(context) as params:
                    key = params["key"]
                    yield params
            finally:
                if key:
                    self.client.delete_object(Bucket=self.bucket, Key=key)

    return CleanS3ContextInjector


def _delete_prefix(s3: Any, bucket: str, prefix: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def step_message(request: StepRequest, bootstrap: dict[str, str], pickup_deadline: float) -> dict[str, Any]:
    """The queue message: routing fields and the Pipes bootstrap; the request itself (with the
    subject id) travels in the S3 context, not through SQS."""
    return {
        "kind": REQUEST_KIND,
        "request_id": uuid.uuid4().hex,
        "step": request.step,
        "upload_id": request.upload_id,
        "pickup_deadline": round(pickup_deadline, 3),
        "bootstrap": dict(bootstrap),
    }


def wait_for_worker(
    handler: Any, target: ServiceTarget, step: str, clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:  # fmt: skip
    """Until the worker closes the Pipes session; WORKER_UNAVAILABLE when nobody opens it within
    ``pickup_s`` or it goes silent for ``stall_s``. ``handler``: the session's message handler."""
    start = clock()
    last_count, last_change = -1, start
    while not handler.received_closed_message:
        now = clock()
        count = len(handler.get_custom_messages()) + len(handler.get_reported_results())
        if handler.received_opened_message and count != last_count:
            last_count, last_change = count, now
        if not handler.received_opened_message and now - start > target.pickup_s:
            raise PipelineError(
                ErrorCode.WORKER_UNAVAILABLE,
                f"no GPU worker took step {step} off the queue within {target.pickup_s:.0f}s",
                step,
            )
        if handler.received_opened_message and now - last_change > target.stall_s:
            raise PipelineError(
                ErrorCode.WORKER_UNAVAILABLE,
                f"the GPU worker running step {step} sent no heartbeat for {target.stall_s:.0f}s",
                step,
            )
        sleep(min(target.poll_s, 1.0))


def run_on_service(context: Any, request: StepRequest, target: ServiceTarget, sqs: Any, s3: Any):
    """One step through the warm service; returns the completed Pipes invocation."""
    from dagster import PipesClientCompletedInvocation, open_pipes_session
    reader = _prefixed_reader_class()(bucket=target.pipes_bucket, client=s3, interval=target.poll_s)
    injector = _context_injector_class()(bucket=target.pipes_bucket, client=s3, key_prefix=PIPES_PREFIX + "context/")
    with open_pipes_session(
        context=context, context_injector=injector, message_reader=reader, extras=request.to_dict()
    ) as session:
        message = step_message(request, session.get_bootstrap_env_vars(), time.time() + target.pickup_s)
        sqs.send_message(
            QueueUrl=target.queue_url,
            MessageBody=json.dumps(message),
            MessageAttributes={"step": {"DataType": "String", "StringValue": request.step}},
        )
        context.log.info(f"compute: step {request.step} queued for the GPU worker service ({message['request_id']})")
        wait_for_worker(session.message_handler, target, request.step)
    return PipesClientCompletedInvocation(session)
