"""Event-driven ingestion end to end: a photo PUT through a presigned URL → S3 ObjectCreated →
SQS (moto) → the SQS sensor, evaluated by Dagster's own sensor daemon iteration against a real
instance → exactly one run requested, even when the message is delivered twice. And the same
for the local object store through the folder sensor."""

import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.instance_for_test import instance_for_test
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.sensor import execute_sensor_iteration

from orchestration.sensors_ingest import _receive, parse_s3_event
from storage.metadata_store import open_metadata_store
from storage.object_store import artifact_key, raw_upload_key, sha256_hex
from storage.s3_store import S3ObjectStore, S3StoreConfig, create_upload_ticket
from tests.aws.conftest import REGION, client, make_bucket, unique
from tests.aws.ingest_code_location import SETTLE_SECONDS

REPO = Path(__file__).resolve().parents[2]
CODE_LOCATION = Path(__file__).with_name("ingest_code_location.py")
QUEUED = {"run_coordinator": {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"}}


@contextmanager
def sensor_daemon(instance: DagsterInstance) -> Iterator:
    # Dagster caches a loaded file by module name; each test configures it anew from its env.
    sys.modules.pop(CODE_LOCATION.stem, None)
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, python_file=str(CODE_LOCATION), working_directory=str(REPO)),
        location_name="ingest_test",
    )
    with create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), instance) as workspace:
        yield workspace


def tick(workspace) -> None:
    """One iteration of the sensor daemon (respecting the sensors' 1 s minimum interval)."""
    time.sleep(1.1)
    list(execute_sensor_iteration(workspace, logging.getLogger("sensor-test"), None, None))


def runs_for(instance: DagsterInstance, upload_id: str):
    return instance.get_runs(filters=RunsFilter(tags={"dagster/partition": upload_id}))


def queue_depth(sqs, url: str) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


@pytest.fixture
def aws_ingest(aws_env: str, kms_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Uploads + artifacts buckets (versioned, KMS), an SQS queue with a DLQ, the bucket notification."""
    endpoint = aws_env
    sqs, s3 = client("sqs", endpoint), client("s3", endpoint)
    uploads, artifacts = make_bucket(endpoint, versioned=True), make_bucket(endpoint, versioned=True)
    dlq_url = sqs.create_queue(QueueName=unique("uploads-dlq"))["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(
        QueueName=unique("uploads"),
        Attributes={
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "4"}),
            "VisibilityTimeout": "1",  # production uses minutes; 1 s lets the test see redelivery
        },
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=uploads,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": queue_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "subjects/"}]}},
                }
            ]
        },
    )
    env = {
        "AVATARPIPE_HOME": str(tmp_path / "home"),
        "AVATARPIPE_S3_BUCKET": artifacts,
        "AVATARPIPE_S3_UPLOADS_BUCKET": uploads,
        "AVATARPIPE_S3_KMS_KEY_ID": kms_key,
        "AVATARPIPE_SQS_QUEUE_URL": queue_url,
        "AWS_REGION": REGION,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MONGODB_URI", raising=False)
    store = S3ObjectStore(
        S3StoreConfig(bucket=artifacts, uploads_bucket=uploads, kms_key_id=kms_key, region=REGION, endpoint_url=endpoint)
    )
    return {"sqs": sqs, "queue": queue_url, "dlq": dlq_url, "store": store, "env": env, "home": tmp_path / "home"}


def test_a_tick_receives_each_message_once_even_when_its_visibility_runs_out(aws_env: str) -> None:
    """A message that becomes visible again while the tick is still receiving (visibility 0 here,
    a slow tick in life) is kept once, with its newest receipt handle, and the tick stops there:
    re-receiving it would spend its redrive budget and send good uploads to the DLQ."""
    sqs = client("sqs", aws_env)
    queue = sqs.create_queue(QueueName=unique("uploads"), Attributes={"VisibilityTimeout": "0"})["QueueUrl"]
    for n in range(5):
        sqs.send_message(QueueUrl=queue, MessageBody=f"m{n}")
    received = _receive(sqs, queue, limit=100)
    assert sorted(m["Body"] for m in received) == [f"m{n}" for n in range(5)]
    counts = [int(m["Attributes"]["ApproximateReceiveCount"]) for m in received]
    assert max(counts) <= 2  # the second call only gave back known messages: stop, not 20 rounds
    for message in received:  # the kept handle is current: the delete takes effect
        sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    assert queue_depth(sqs, queue) == 0


def test_object_put_requests_exactly_one_run_even_if_delivered_twice(aws_ingest, standing_photo) -> None:
    sqs, queue, store = aws_ingest["sqs"], aws_ingest["queue"], aws_ingest["store"]
    # The web tier's flow: a presigned PUT, the browser uploads with plain HTTP.
    ticket = create_upload_ticket(store, "s_web", "png", content_type="image/png")
    request = urllib.request.Request(
        ticket.request.url, data=standing_photo.read_bytes(), method="PUT", headers=ticket.request.headers
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    head = store.head(ticket.key)
    # Deliver the ObjectCreated message twice (SQS and S3 are at-least-once), add noise:
    # an artifact written to the uploads bucket (not a raw key) and a message that is not JSON.
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, VisibilityTimeout=0)["Messages"]
    created = [m for m in messages if parse_s3_event(m["Body"])]
    assert len(created) == 1
    # S3 puts the versionId of a versioned bucket's object in the event; moto only the ETag.
    version = parse_s3_event(created[0]["Body"])[0].version
    assert version in (head["VersionId"], head["ETag"].strip('"'))
    sqs.send_message(QueueUrl=queue, MessageBody=created[0]["Body"])
    client("s3", os.environ["AWS_ENDPOINT_URL"]).put_object(
        Bucket=store.config.uploads_bucket, Key="subjects/s_web/notes/readme.txt", Body=b"not a photo"
    )
    sqs.send_message(QueueUrl=queue, MessageBody="this is not an S3 event")

    with instance_for_test(overrides=QUEUED) as instance, sensor_daemon(instance) as workspace:
        tick(workspace)
        runs = runs_for(instance, ticket.upload_id)
        assert len(runs) == 1
        run = runs[0]
        assert run.status == DagsterRunStatus.QUEUED and run.job_name == "avatar_job"
        assert run.tags["dagster/run_key"] == f"{ticket.key}@{version}"
        assert run.tags["avatarpipe/trigger"] == "sqs"
        assert instance.has_dynamic_partition("uploads", ticket.upload_id)
        # Not deleted yet: the run request is recorded by the daemon after the tick.
        assert queue_depth(sqs, queue) >= 2

        tick(workspace)
        assert len(runs_for(instance, ticket.upload_id)) == 1  # the duplicate requested nothing
        assert len(instance.get_runs()) == 1
        for _ in range(4):  # the malformed message is retried until the redrive policy moves it
            tick(workspace)
        assert queue_depth(sqs, queue) == 0
        dead = sqs.receive_message(QueueUrl=aws_ingest["dlq"], MaxNumberOfMessages=10)["Messages"]
        assert [m["Body"] for m in dead] == ["this is not an S3 event"]
        assert len(instance.get_runs()) == 1

    with open_metadata_store(None, aws_ingest["home"] / "metadata") as metadata:
        upload = metadata.get_upload(ticket.upload_id)
        assert upload["status"] == "pending" and upload["subject_id"] == "s_web"
        assert upload["photo_key"] == ticket.key
        assert metadata.get_subject("s_web")["status"] == "active"
        events = [e for e in metadata.audit_for("s_web") if e["event"] == "ingest"]
        assert len(events) == 1 and events[0]["details"]["trigger"] == "sqs"


def test_cli_ingest_uses_a_presigned_put_and_the_sensor_runs_it(aws_ingest, standing_photo) -> None:
    env = {**os.environ, **aws_ingest["env"]}
    done = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "ingest", str(standing_photo), "--subject", "s_cli", "--json"],
        check=False, capture_output=True, text=True, env=env, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)  # exactly one JSON object on stdout
    assert answer["via"] == "presigned-put" and answer["store"] == "s3" and answer["status"] == "pending"
    store = aws_ingest["store"]
    assert answer["photo_key"] == raw_upload_key("s_cli", answer["upload_id"], "png", sha256_hex(standing_photo.read_bytes()))
    head = store.head(answer["photo_key"])
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == aws_ingest["env"]["AVATARPIPE_S3_KMS_KEY_ID"]
    assert store.uri_for(answer["photo_key"]).startswith(f"s3://{store.config.uploads_bucket}/")

    with instance_for_test(overrides=QUEUED) as instance, sensor_daemon(instance) as workspace:
        tick(workspace)
        tick(workspace)
        runs = runs_for(instance, answer["upload_id"])
        assert len(runs) == 1 and runs[0].tags["avatarpipe/trigger"] == "sqs"
    assert queue_depth(aws_ingest["sqs"], aws_ingest["queue"]) == 0
    with open_metadata_store(None, aws_ingest["home"] / "metadata") as metadata:
        events = [e for e in metadata.audit_for("s_cli") if e["event"] == "ingest"]
        assert len(events) == 1 and events[0]["details"]["via"] == "presigned-put"  # registered once, by the CLI


def test_cli_ingest_usage_errors(tmp_path: Path) -> None:
    env = {**os.environ, "AVATARPIPE_HOME": str(tmp_path / "home")}
    for name in ("AVATARPIPE_S3_BUCKET", "AVATARPIPE_SQS_QUEUE_URL"):
        env.pop(name, None)
    missing = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "ingest", str(tmp_path / "nope.jpg"), "--json"],
        check=False, capture_output=True, text=True, env=env, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert missing.returncode == 2 and missing.stdout == "" and "no such file" in missing.stderr
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"bytes")
    bad = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "ingest", str(photo), "--subject", "no spaces!", "--json"],
        check=False, capture_output=True, text=True, env=env, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == "" and "subject ids" in bad.stderr


def test_folder_sensor_ingests_local_uploads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, standing_photo) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("AVATARPIPE_HOME", str(home))
    for name in ("AVATARPIPE_S3_BUCKET", "AVATARPIPE_S3_UPLOADS_BUCKET", "AVATARPIPE_SQS_QUEUE_URL", "MONGODB_URI"):
        monkeypatch.delenv(name, raising=False)
    data = standing_photo.read_bytes()
    # A photo dropped straight into the store under a raw key, with no registration at all,
    # and the uploader's body hints beside it.
    dropped_key = artifact_key("s_drop", "u_dropped0001", "raw", sha256_hex(data), "png")
    (home / "objects" / dropped_key).parent.mkdir(parents=True)
    (home / "objects" / dropped_key).write_bytes(data)
    sidecar = home / "objects" / "subjects" / "s_drop" / "u_dropped0001" / "hints.json"
    sidecar.write_text(json.dumps({"build": "feminine", "age_group": "child"}))

    with instance_for_test(overrides=QUEUED) as instance, sensor_daemon(instance) as workspace:
        tick(workspace)
        assert len(runs_for(instance, "u_dropped0001")) == 1  # registered and requested in one tick

        # `avatarpipe ingest` with the local store: stored, registered (pending), no run of its own.
        done = subprocess.run(
            [sys.executable, "-m", "orchestration.cli", "ingest", str(standing_photo), "--subject", "s_local", "--json"],
            check=False, capture_output=True, text=True, env={**os.environ}, timeout=300, cwd=REPO,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        cli_upload = json.loads(done.stdout)
        assert cli_upload["store"] == "local" and (home / "objects" / cli_upload["photo_key"]).is_file()
        tick(workspace)
        # Registered moments ago by someone else: left alone for the settle time, in case that
        # someone (`avatarpipe run`) is about to start its own run in-process.
        assert runs_for(instance, cli_upload["upload_id"]) == []
        with open_metadata_store(None, home / "metadata") as metadata:
            created = metadata.get_upload(cli_upload["upload_id"])["created_at"]
        time.sleep(max(0.0, SETTLE_SECONDS + 0.5 - (datetime.now(UTC) - created).total_seconds()))
        tick(workspace)
        tick(workspace)
        assert len(runs_for(instance, cli_upload["upload_id"])) == 1
        assert len(runs_for(instance, "u_dropped0001")) == 1
        assert len(instance.get_runs()) == 2
        assert {r.tags["avatarpipe/trigger"] for r in instance.get_runs()} == {"folder"}

    with open_metadata_store(None, home / "metadata") as metadata:
        dropped = metadata.get_upload("u_dropped0001")
        assert dropped["status"] == "pending" and dropped["subject_id"] == "s_drop" and dropped["photo_key"] == dropped_key
        assert dropped["body_hints"] == {"build": "feminine", "age_group": "child"}
    assert not sidecar.exists()


def _put_through_ticket(ticket, data: bytes) -> None:
    request = urllib.request.Request(ticket.request.url, data=data, method="PUT", headers=ticket.request.headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_presigned_upload_with_a_hints_sidecar_gets_its_hints(aws_ingest, standing_photo) -> None:
    """The web tier stores the form's hints beside the upload, then hands out the presigned PUT;
    the SQS sensor stores them on the upload (the fit reads them there) and drops the sidecar.
    An invalid sidecar fails its upload with INVALID_HINT and requests no run."""
    from orchestration.sensors_ingest import hints_sidecar_key, write_hints_sidecar

    store = aws_ingest["store"]
    good = create_upload_ticket(store, "s_hints", "png", content_type="image/png")
    write_hints_sidecar(store, "s_hints", good.upload_id, {"build": "masculine", "height_cm": 181, "age_group": "adult"})
    bad = create_upload_ticket(store, "s_hints", "png", content_type="image/png")
    store.put_bytes(hints_sidecar_key("s_hints", bad.upload_id), json.dumps({"height_cm": 400}).encode())
    for ticket in (good, bad):
        _put_through_ticket(ticket, standing_photo.read_bytes())

    with instance_for_test(overrides=QUEUED) as instance, sensor_daemon(instance) as workspace:
        tick(workspace)
        tick(workspace)
        assert len(runs_for(instance, good.upload_id)) == 1
        assert runs_for(instance, bad.upload_id) == []
    with open_metadata_store(None, aws_ingest["home"] / "metadata") as metadata:
        upload = metadata.get_upload(good.upload_id)
        assert upload["body_hints"] == {"build": "masculine", "height_cm": 181.0, "age_group": "adult"}
        failed = metadata.get_upload(bad.upload_id)
        assert failed["status"] == "failed" and failed["error"]["code"] == "INVALID_HINT"
        assert "between 50 and 250" in failed["error"]["message"]
    assert not store.exists(hints_sidecar_key("s_hints", good.upload_id))
    assert not store.exists(hints_sidecar_key("s_hints", bad.upload_id))


def test_writing_invalid_hints_is_refused() -> None:
    from models.errors import ErrorCode, PipelineError
    from orchestration.sensors_ingest import validated_hints

    for hints in ({"build": "stocky"}, {"age_group": "teen"}, {"height_cm": "tall"}, {"weight": 80}, ["build"]):
        with pytest.raises(PipelineError) as err:
            validated_hints(hints)
        assert err.value.code == ErrorCode.INVALID_HINT
    assert validated_hints({"height_cm": "172.5"}) == {"height_cm": 172.5}


def test_admission_stores_valid_hints_and_fails_invalid_ones(aws_ingest, tmp_path: Path) -> None:
    """The admission rule itself, without the sensor daemon's timing: on the S3 store (moto) and
    on the local store, a valid sidecar ends up on the upload and is deleted; an invalid one
    fails the upload with INVALID_HINT; an upload without a sidecar keeps no hints."""
    from orchestration.sensors_ingest import (
        HintsSidecars,
        _admit_hints,
        hints_sidecar_key,
        write_hints_sidecar,
    )
    from storage.object_store import LocalObjectStore, RawUploadRef

    for store in (aws_ingest["store"], LocalObjectStore(tmp_path / "objects")):
        with open_metadata_store(None, tmp_path / f"metadata-{type(store).__name__}") as metadata:
            refs = {}
            for name in ("good", "bad", "none"):
                upload_id = unique(f"u_{name}")
                key = raw_upload_key("s_admit", upload_id, "png")
                metadata.ensure_subject("s_admit")
                metadata.create_upload(upload_id, "s_admit", key, "test")
                refs[name] = RawUploadRef(subject_id="s_admit", upload_id=upload_id, key=key)
            write_hints_sidecar(store, "s_admit", refs["good"].upload_id, {"build": "neutral", "height_cm": 150})
            store.put_bytes(hints_sidecar_key("s_admit", refs["bad"].upload_id), b"{not json")
            sidecars = HintsSidecars(store)
            for name, ref in refs.items():
                reason = _admit_hints(metadata, metadata.get_upload(ref.upload_id), ref, sidecars)
                assert (reason is None) == (name != "bad")
            assert metadata.get_upload(refs["good"].upload_id)["body_hints"] == {"build": "neutral", "height_cm": 150.0}
            failed = metadata.get_upload(refs["bad"].upload_id)
            assert failed["status"] == "failed" and failed["error"]["code"] == "INVALID_HINT"
            untouched = metadata.get_upload(refs["none"].upload_id)
            assert untouched["status"] == "pending" and not untouched.get("body_hints")
            for ref in refs.values():
                assert not store.exists(hints_sidecar_key("s_admit", ref.upload_id))
