"""Compute mode ``ecs_service``: the warm GPU worker service, end to end against a moto server.

The orchestrator side is the production launcher (`ComputeLauncherResource(mode="ecs_service")`
inside a real Dagster materialisation); the worker side is the production queue worker
(`ops.queue_worker.QueueWorker`, a thread here, or `python -m ops.queue_worker` as a process
that is killed mid-step). Between them only moto's SQS (step queue + DLQ, redrive after one
receive) and S3 (Pipes context, Pipes messages, the step's inputs and outputs under SSE-KMS).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from ops.queue_worker import QueueWorker, QueueWorkerConfig
from ops.steps import StepRequest
from orchestration.compute import ComputeLauncherResource
from storage.s3_store import S3ObjectStore, S3StoreConfig
from tests.aws.conftest import REGION, client, make_bucket, unique
from tests.ops.inputs import RealInputs, quick_params, real_inputs, store_fit_inputs
from tests.ops.test_worker_pipes import heavy_step

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def inputs(standing_photo: Path) -> RealInputs:
    return real_inputs(standing_photo)


@pytest.fixture
def queues(aws_env: str) -> dict[str, str]:
    """The step queue and its DLQ as infra/ declares them: a message received once and not
    deleted (its worker died) goes to the DLQ on its next receive."""
    sqs = client("sqs", aws_env)
    dlq = sqs.create_queue(QueueName=unique("steps-dlq"))["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(
        QueueName=unique("steps"),
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "1"})},
    )["QueueUrl"]
    return {"url": url, "dlq": dlq}


@pytest.fixture
def s3_store(aws_env: str, kms_key: str) -> S3ObjectStore:
    config = S3StoreConfig(bucket=make_bucket(aws_env), region=REGION, endpoint_url=aws_env, kms_key_id=kms_key)
    return S3ObjectStore(config)


def _request(store: S3ObjectStore, inputs: RealInputs, upload: str) -> StepRequest:
    return StepRequest(
        step="smplx_params", upload_id=upload, subject_id="s_svc", inputs=store_fit_inputs(store, "s_svc", upload, inputs),
        params=quick_params(), object_store=store.config.to_dict(),
    )  # fmt: skip


def _launcher(aws_env: str, queue_url: str, **overrides) -> ComputeLauncherResource:
    return ComputeLauncherResource(
        mode="ecs_service", region=REGION, endpoint_url=aws_env, ecs_service_queue_url=queue_url,
        ecs_service_poll_s=0.5, **overrides,
    )  # fmt: skip


def _materialize(launcher: ComputeLauncherResource, request: StepRequest):
    instance = DagsterInstance.ephemeral()
    result = materialize(
        [heavy_step], instance=instance, resources={"compute": launcher},
        run_config={"ops": {"heavy_step": {"config": {"request_json": json.dumps(request.to_dict())}}}},
        raise_on_error=False,
    )  # fmt: skip
    return result, instance


def _depth(aws_env: str, url: str) -> dict[str, int]:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = client("sqs", aws_env).get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return {name: int(attributes[name]) for name in names}


def _pipes_objects(aws_env: str, bucket: str) -> list[str]:
    listing = client("s3", aws_env).list_objects_v2(Bucket=bucket, Prefix="pipes/")
    return [item["Key"] for item in listing.get("Contents", [])]


@pytest.fixture
def worker_thread(aws_env: str, queues: dict[str, str]) -> Iterator[QueueWorker]:
    """The production queue worker, in a thread, with short timings so heartbeats happen."""
    # a 2 s visibility, extended every 0.5 s: a step of a few seconds outlasts it (how much depends
    # on the machine's speed, which the test does not assume)
    config = QueueWorkerConfig(queue_url=queues["url"], visibility_s=2, heartbeat_s=0.5, wait_s=1, message_interval_s=0.5)
    worker = QueueWorker(config, client("sqs", aws_env), client("s3", aws_env))
    stop = threading.Event()
    thread = threading.Thread(target=worker.serve, args=(stop,), daemon=True)
    thread.start()
    yield worker
    stop.set()
    thread.join(timeout=30)


def handled(worker: QueueWorker, count: int, timeout_s: float = 120.0) -> list:
    """The worker's outcomes once it has finished `count` requests. The step's answer reaches the
    orchestrator when the Pipes session closes, a moment before the worker deletes the message
    and records the outcome: asserting at once races the worker thread."""
    deadline = time.monotonic() + timeout_s
    while len(worker.handled) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return worker.handled


def failure_code(result) -> str | None:
    for event in result.all_events:
        if event.is_step_failure:
            metadata = event.step_failure_data.user_failure_data.metadata if event.step_failure_data.user_failure_data else {}
            return metadata["error_code"].value if "error_code" in metadata else None
    return None


def test_step_round_trips_through_the_queue_and_s3_pipes(aws_env, queues, s3_store, inputs, worker_thread) -> None:
    seen_visible, done = [], threading.Event()

    def watch_queue() -> None:
        while not done.wait(0.1):
            depth = _depth(aws_env, queues["url"])
            seen_visible.append((depth["ApproximateNumberOfMessages"], depth["ApproximateNumberOfMessagesNotVisible"]))

    watcher = threading.Thread(target=watch_queue, daemon=True)
    watcher.start()
    result, instance = _materialize(_launcher(aws_env, queues["url"]), _request(s3_store, inputs, "u_svc"))
    done.set()
    watcher.join()

    assert result.success
    (mat,) = result.asset_materializations_for_node("heavy_step")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["placement"] == "ecs_service" and meta["worker"] == "ops.worker" and meta["device"] == "cpu"
    key = meta["result"]["key"]
    assert s3_store.head(key)["ServerSideEncryption"] == "aws:kms" and s3_store.stat(key).sha256 == meta["sha256"]
    assert meta["result"]["metrics"]["keypoint_reprojection_rel"] < 0.05
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("queued for the GPU worker service" in line for line in logs)
    assert any("worker: step smplx_params for upload u_svc on cpu" in line for line in logs)  # through S3 Pipes
    # the worker took it once, heartbeated while the fit ran, and deleted it; nothing left anywhere
    outcomes = handled(worker_thread, 1)
    assert [(o.action, o.step) for o in outcomes] == [("ran", "smplx_params")]
    # heartbeats kept the taken message invisible for the whole fit: it never reappeared
    assert outcomes[0].heartbeats >= 2
    first = next(i for i, (_, in_flight) in enumerate(seen_visible) if in_flight)
    assert [visible for visible, _ in seen_visible[first:]] == [0] * (len(seen_visible) - first)
    assert _depth(aws_env, queues["url"]) == {"ApproximateNumberOfMessages": 0, "ApproximateNumberOfMessagesNotVisible": 0}
    assert _depth(aws_env, queues["dlq"])["ApproximateNumberOfMessages"] == 0
    assert _pipes_objects(aws_env, s3_store.config.bucket) == []


def test_a_second_request_reuses_the_warm_worker(aws_env, queues, s3_store, inputs, worker_thread) -> None:
    for upload in ("u_warm1", "u_warm2"):
        result, _ = _materialize(_launcher(aws_env, queues["url"]), _request(s3_store, inputs, upload))
        assert result.success
    assert [o.action for o in handled(worker_thread, 2)] == ["ran", "ran"]  # one process, two Pipes sessions


def test_no_worker_is_a_typed_error_and_the_late_request_is_dropped(aws_env, queues, s3_store, inputs) -> None:
    start = time.monotonic()
    result, _ = _materialize(_launcher(aws_env, queues["url"], ecs_service_pickup_s=2), _request(s3_store, inputs, "u_none"))
    assert not result.success and failure_code(result) == "WORKER_UNAVAILABLE"
    assert time.monotonic() - start < 120  # it gave up; it did not wait for the run's own timeout

    # a worker that comes up later drops the expired request instead of running it
    worker = QueueWorker(QueueWorkerConfig(queue_url=queues["url"], wait_s=1), client("sqs", aws_env), client("s3", aws_env))
    outcomes = worker.serve(threading.Event(), max_requests=1)
    assert [o.action for o in outcomes] == ["expired"]
    assert _depth(aws_env, queues["url"])["ApproximateNumberOfMessages"] == 0
    assert _pipes_objects(aws_env, s3_store.config.bucket) == []


def test_a_worker_killed_mid_step_fails_the_step_and_its_message_goes_to_the_dlq(
    aws_env, queues, s3_store, inputs, tmp_path
) -> None:
    """A real `python -m ops.queue_worker` process, SIGKILLed once it has taken the request."""
    env = os.environ | {"AVATARPIPE_ECS_SERVICE_QUEUE_URL": queues["url"], "AWS_ENDPOINT_URL": aws_env,
                        "AVATARPIPE_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "ops.queue_worker", "--visibility-s", "4", "--heartbeat-s", "1",
         "--message-interval-s", "0.2"],  # "opened" reaches S3 well before the ~4 s fit ends
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    def kill_once_taken() -> None:
        deadline = time.monotonic() + 240
        opened = False  # the worker's first Pipes chunk ("opened") is in S3: it is mid-session
        while time.monotonic() < deadline and not opened:
            opened = any("/messages/" in key for key in _pipes_objects(aws_env, s3_store.config.bucket))
            time.sleep(0.2)
        process.kill()

    killer = threading.Thread(target=kill_once_taken, daemon=True)
    killer.start()
    try:
        result, _ = _materialize(
            _launcher(aws_env, queues["url"], ecs_service_stall_s=6, ecs_service_pickup_s=240),
            _request(s3_store, inputs, "u_killed"),
        )
    finally:
        killer.join(timeout=300)
        process.kill()
        process.wait()
    assert not result.success and failure_code(result) == "WORKER_UNAVAILABLE"
    # the dead worker's message reappears after its visibility timeout; the next receive moves
    # it to the DLQ (redrive after one receive) instead of running the session a second time
    time.sleep(5)
    sqs = client("sqs", aws_env)
    assert sqs.receive_message(QueueUrl=queues["url"], WaitTimeSeconds=1).get("Messages", []) == []
    (dead,) = sqs.receive_message(QueueUrl=queues["dlq"], WaitTimeSeconds=1)["Messages"]
    assert json.loads(dead["Body"])["upload_id"] == "u_killed"
