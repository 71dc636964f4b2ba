"""Warm queue worker: `python -m ops.queue_worker`, the long-running process of the ECS GPU
worker *service* (compute mode ``ecs_service``, `orchestration/compute_ecs_service.py`).

Instead of one cold ECS task per step (compute mode ``ecs``: image pull, container start, torch
and Anny loaded again, every time), a few workers stay up and take step requests off an SQS
queue; the models they load stay loaded between steps (`models.body_model.load_anny` caches
per process). The service's desired count follows the queue (infra/stacks/compute.py).

One request = one Dagster Pipes session that the orchestrator opened:

    {"kind": "avatarpipe.step/1", "request_id": "…", "step": "smplx_params", "upload_id": "u_…",
     "pickup_deadline": 1796140000.0,
     "bootstrap": {"DAGSTER_PIPES_CONTEXT": "…", "DAGSTER_PIPES_MESSAGES": "…"}}

The bootstrap parameters point at S3: the Pipes context (with the step request as extras, so no
subject id travels through SQS) is read with `PipesS3ContextLoader`, and every message goes back
through `PipesS3MessageWriter` to the prefix the orchestrator's `PipesS3MessageReader` reads. The
step itself is `ops.worker.run`, exactly what the one-shot worker runs.

Delivery is at most once per Pipes session: while a step runs, a heartbeat thread keeps the SQS
message invisible (`ChangeMessageVisibility`) and sends a Pipes `{"heartbeat": …}` custom message
(the orchestrator's stall detector); the message is deleted when the step has answered. A worker
that dies leaves its message to reappear, and the queue's redrive policy (maxReceiveCount 1)
moves it to the DLQ instead of running a half-reported session twice; the orchestrator sees the
heartbeats stop, fails the step with WORKER_UNAVAILABLE and Dagster's retry sends a fresh request.
A request whose pickup deadline has passed (the orchestrator stopped waiting) is dropped unrun.
While it runs a step the worker protects its ECS task from scale-in (task protection endpoint).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from dagster_pipes import PipesContext, PipesMappingParamsLoader, PipesS3ContextLoader, PipesS3MessageWriter

REQUEST_KIND = "avatarpipe.step/1"
HEARTBEAT_MESSAGE = "heartbeat"

_log = logging.getLogger("avatarpipe.queue_worker")


@dataclass(frozen=True)
class QueueWorkerConfig:
    queue_url: str
    region: str | None = None
    endpoint_url: str | None = None
    visibility_s: int = 120  # a taken request stays invisible this long after each heartbeat
    heartbeat_s: float = 30.0  # < visibility_s / 2: one missed beat does not release the message
    wait_s: int = 20  # SQS long poll
    message_interval_s: float = 5.0  # how often buffered Pipes messages go up to S3

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_s * 2 <= self.visibility_s:
            raise ValueError("heartbeat_s must be at most half of visibility_s")


@dataclass(frozen=True)
class Outcome:
    """What the worker did with one queue message (for its own log and the tests)."""

    request_id: str
    action: str  # ran | expired | redelivered | malformed
    step: str = ""
    heartbeats: int = 0  # visibility extensions sent while the step ran


def parse_request(body: str) -> dict[str, Any]:
    """The request in a queue message; ValueError when it is not one."""
    request = json.loads(body)
    if not isinstance(request, dict) or request.get("kind") != REQUEST_KIND:
        raise ValueError(f"not an {REQUEST_KIND} message")
    for name in ("request_id", "step", "bootstrap", "pickup_deadline"):
        if name not in request:
            raise ValueError(f"step request without {name!r}")
    return request


@contextlib.contextmanager
def heartbeat(beat: Callable[[], None], every_s: float) -> Iterator[None]:
    """Call ``beat`` every ``every_s`` seconds in a thread while the block runs. A failing beat
    is logged, not raised: the step goes on, and a lost message surfaces as a stall."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            try:
                beat()
            except Exception as exc:  # noqa: BLE001 - a heartbeat must never kill the step
                _log.warning("heartbeat failed: %s", type(exc).__name__)

    thread = threading.Thread(target=loop, name="queue-worker-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def set_task_protection(enabled: bool, agent_uri: str | None, minutes: int = 180) -> bool:
    """ECS task scale-in protection while a step runs (the queue may look empty to the scaler
    while this task is busy). No-op outside ECS (no ``ECS_AGENT_URI``)."""
    if not agent_uri:
        return False
    payload = {"ProtectionEnabled": enabled} | ({"ExpiresInMinutes": minutes} if enabled else {})
    request = urllib.request.Request(
        f"{agent_uri}/task-protection/v1/state", data=json.dumps(payload).encode(), method="PUT",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=5):  # the ECS agent's local URI
            return True
    except OSError as exc:
        _log.warning("task protection %s failed: %s", "on" if enabled else "off", exc)
        return False


class QueueWorker:
    """Long-polls the step queue and runs each request as one Pipes session."""

    def __init__(self, config: QueueWorkerConfig, sqs: Any, s3: Any, agent_uri: str | None = None):
        self.config = config
        self.sqs = sqs
        self.s3 = s3
        self.agent_uri = agent_uri
        self.handled: list[Outcome] = []  # every message this worker took, in order

    def receive(self) -> list[dict]:
        response = self.sqs.receive_message(
            QueueUrl=self.config.queue_url,
            MaxNumberOfMessages=1,  # one step at a time per worker: one GPU
            WaitTimeSeconds=self.config.wait_s,
            VisibilityTimeout=self.config.visibility_s,
            AttributeNames=["ApproximateReceiveCount"],
        )
        return response.get("Messages", [])

    def handle(self, message: dict, now: Callable[[], float] = time.time) -> Outcome:
        receipt = message["ReceiptHandle"]
        try:
            request = parse_request(message["Body"])
        except ValueError as exc:  # left in flight: the redrive policy moves it to the DLQ
            _log.error("malformed message %s: %s", message.get("MessageId"), exc)
            return Outcome(message.get("MessageId", ""), "malformed")
        request_id, step = str(request["request_id"]), str(request["step"])
        if int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1")) > 1:
            # an earlier worker took it and vanished mid-session: never run a session twice
            _log.warning("request %s (%s) was delivered again; left for the DLQ", request_id, step)
            return Outcome(request_id, "redelivered", step)
        if float(request["pickup_deadline"]) < now():
            self._delete(receipt)  # the orchestrator stopped waiting (WORKER_UNAVAILABLE)
            _log.warning("request %s (%s) expired before pickup; dropped", request_id, step)
            return Outcome(request_id, "expired", step)
        _log.info("request %s: step %s", request_id, step)
        protected = set_task_protection(True, self.agent_uri)
        beats: list[float] = []
        try:
            self.run_session(request["bootstrap"], receipt, beats)
        except Exception as exc:  # noqa: BLE001 - reported to the orchestrator by the Pipes close
            _log.error("request %s (%s) failed: %s", request_id, step, type(exc).__name__)
        finally:
            self._delete(receipt)
            if protected:
                set_task_protection(False, self.agent_uri)
        return Outcome(request_id, "ran", step, heartbeats=len(beats))

    def run_session(self, bootstrap: dict[str, str], receipt: str, beats: list[float]) -> None:
        """`ops.worker.run` inside the orchestrator's Pipes session (context and messages in S3).
        A fresh `PipesContext` per request: `open_dagster_pipes` would hand back the process's
        first (closed) context to every later one."""
        from ops.worker import run

        pipes = PipesContext(
            PipesMappingParamsLoader(bootstrap),
            PipesS3ContextLoader(self.s3),
            PipesS3MessageWriter(self.s3, interval=self.config.message_interval_s),
        )

        def beat() -> None:
            self.sqs.change_message_visibility(
                QueueUrl=self.config.queue_url, ReceiptHandle=receipt, VisibilityTimeout=self.config.visibility_s
            )
            beats.append(time.time())
            pipes.report_custom_message({HEARTBEAT_MESSAGE: round(beats[-1], 3)})

        with pipes, heartbeat(beat, self.config.heartbeat_s):
            run(pipes)

    def serve(self, stop: threading.Event, max_requests: int | None = None) -> list[Outcome]:
        """Until ``stop`` is set (SIGTERM from ECS on scale-in or deploy) or ``max_requests``
        requests are handled. The step in progress always finishes first."""
        start = len(self.handled)
        while not stop.is_set() and (max_requests is None or len(self.handled) - start < max_requests):
            for message in self.receive():
                self.handled.append(self.handle(message))
        return self.handled[start:]

    def _delete(self, receipt: str) -> None:
        self.sqs.delete_message(QueueUrl=self.config.queue_url, ReceiptHandle=receipt)


def main(argv: list[str] | None = None) -> int:
    import boto3

    from orchestration.config import load_config  # the one reader of the environment

    parser = argparse.ArgumentParser(description="avatarpipe warm GPU queue worker (compute mode ecs_service)")
    parser.add_argument("--visibility-s", type=int, default=QueueWorkerConfig.visibility_s)
    parser.add_argument("--heartbeat-s", type=float, default=QueueWorkerConfig.heartbeat_s)
    parser.add_argument("--message-interval-s", type=float, default=QueueWorkerConfig.message_interval_s,
                        help="how often buffered Pipes messages go up to S3 (seconds)")
    parser.add_argument("--max-requests", type=int, default=None, help="exit after N requests (default: run forever)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = load_config()
    if not app.ecs_service_queue_url:
        parser.error("AVATARPIPE_ECS_SERVICE_QUEUE_URL is not set")
    config = QueueWorkerConfig(
        queue_url=app.ecs_service_queue_url, region=app.aws_region, endpoint_url=app.aws_endpoint_url,
        visibility_s=args.visibility_s, heartbeat_s=args.heartbeat_s, message_interval_s=args.message_interval_s,
    )  # fmt: skip
    sqs = boto3.client("sqs", region_name=config.region, endpoint_url=config.endpoint_url)
    s3 = boto3.client("s3", region_name=config.region, endpoint_url=config.endpoint_url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = QueueWorker(config, sqs, s3, agent_uri=app.ecs_agent_uri)
    _log.info("serving %s", config.queue_url.rsplit("/", 1)[-1])
    worker.serve(stop, args.max_requests)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
