"""Event-driven ingestion: a new raw photo in the object store becomes one upload partition
and one run of the avatar job.

* **SQS sensor** (production): S3 `ObjectCreated` on the uploads bucket → SQS → this sensor.
  Per event it registers the dynamic partition, creates the `uploads` document if the web tier
  did not, and requests a run keyed on *object key + version* (so a duplicate delivery can
  never start a second run). A message is deleted only once the sensor can see the run the
  daemon recorded for it (or when it needs no run): a message whose run was just requested is
  made visible again at once, comes back on the next tick, finds its run and is deleted.
  At-least-once delivery, exactly-once runs. Unparseable messages are left alone and reach
  the dead-letter queue after the queue's `maxReceiveCount`.
* **Folder sensor** (embedded default): the same for the local object store, watching
  `objects/subjects/*/*/raw/*` by modification time with a cursor.

Raw keys are `subjects/{subject}/{upload}/raw/{name}` (`storage.object_store.raw_upload_key`).
The uploader's optional body hints (`--build`, `--height-cm`, `--age-group` of `avatarpipe
run`) travel beside the photo as a sidecar object `subjects/{subject}/{upload}/hints.json`
(`write_hints_sidecar`; the web tier writes it with the photo's presigned URL, a folder drop
puts the file next to `raw/`). Admission reads it, validates it exactly as the CLI does
(`models.hints.BodyHints`) and stores the hints on the upload; an invalid sidecar fails the
upload with `INVALID_HINT` and requests no run.
A run is requested only for an upload still `pending` with no run of its partition yet: an
upload that `avatarpipe run` is already processing in-process, or that is ready, failed or
erased, is left alone. Requests per tick are capped; the rest wait for the next tick.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from dagster import (
    AddDynamicPartitionsRequest,
    ConfigurableResource,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from models.catalogue import PIPELINE_VERSION
from orchestration.resources import MetadataStoreResource, ObjectStoreResource
from storage.metadata_store import MetadataStore
from storage.object_store import (
    ObjectNotFound,
    ObjectStore,
    RawUploadRef,
    parse_raw_upload_key,
    upload_prefix,
)

PARTITIONS_NAME = "uploads"
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SQS_SENSOR = "s3_uploads_sqs_sensor"
FOLDER_SENSOR = "local_uploads_folder_sensor"
_RUN_KEY_TAG, _SENSOR_TAG, _PARTITION_TAG = "dagster/run_key", "dagster/sensor_name", "dagster/partition"


@dataclass(frozen=True)
class NewObject:
    """One created object, as an S3 event or a file in the local store reports it."""

    key: str
    version: str  # S3 versionId (else ETag / sequencer); local: mtime in ns
    bucket: str | None = None

    @property
    def run_key(self) -> str:
        return f"{self.key}@{self.version}"


@dataclass(frozen=True)
class Decision:
    """What to do about one object: request a run, nothing (done), or wait for the next tick."""

    obj: NewObject
    action: str  # "request" | "done" | "retry"
    reason: str
    ref: RawUploadRef | None = None


# -- parsing ---------------------------------------------------------------------------------


def parse_s3_event(body: str) -> list[NewObject]:
    """`ObjectCreated:*` records of an S3 notification body (S3 → SQS format).

    Raises ValueError/TypeError when the body is not an S3 notification at all. S3's `s3:TestEvent`
    (sent when the notification is configured) yields nothing.
    """
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"message is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise TypeError("message is not an S3 notification")
    if data.get("Event") == "s3:TestEvent":
        return []
    records = data.get("Records")
    if not isinstance(records, list):
        raise TypeError("message has no S3 Records")
    objects = []
    for record in records:
        if record.get("eventSource") != "aws:s3" or not str(record.get("eventName", "")).startswith("ObjectCreated:"):
            continue
        s3 = record["s3"]
        obj = s3["object"]
        version = obj.get("versionId") or obj.get("eTag") or obj.get("sequencer") or ""
        # Keys in S3 events are URL-encoded with "+" for spaces.
        objects.append(NewObject(key=unquote_plus(obj["key"]), version=str(version), bucket=s3["bucket"]["name"]))
    return objects


# -- the uploader's body hints ------------------------------------------------------------------

HINTS_SIDECAR = "hints.json"
MAX_SIDECAR_BYTES = 4096


def hints_sidecar_key(subject_id: str, upload_id: str) -> str:
    return upload_prefix(subject_id, upload_id) + HINTS_SIDECAR


def validated_hints(data: Any) -> dict:
    """The sidecar's hints as the upload stores them; raises PipelineError(INVALID_HINT) for
    anything that is not a JSON object of known, valid hints."""
    from models.errors import ErrorCode, PipelineError
    from models.hints import BodyHints

    if not isinstance(data, dict):
        raise PipelineError(ErrorCode.INVALID_HINT, "the hints sidecar must be a JSON object", "ingest")
    unknown = sorted(set(data) - {"build", "height_cm", "age_group"})
    if unknown:
        raise PipelineError(ErrorCode.INVALID_HINT, f"unknown hints: {', '.join(unknown)}", "ingest")
    try:
        return BodyHints.from_dict(data).to_dict()
    except (TypeError, ValueError):
        raise PipelineError(ErrorCode.INVALID_HINT, "height must be a number of centimetres", "ingest") from None


def write_hints_sidecar(store: ObjectStore, subject_id: str, upload_id: str, hints: dict) -> str:
    """Validate the hints and store them beside the upload (before its photo arrives)."""
    key = hints_sidecar_key(subject_id, upload_id)
    store.put_bytes(key, json.dumps(validated_hints(hints)).encode(), content_type="application/json")
    return key


def read_hints_sidecar(store: ObjectStore, ref: RawUploadRef) -> dict | None:
    """The validated hints of the upload's sidecar, None when it has none; raises
    PipelineError(INVALID_HINT) when the sidecar is not valid hints."""
    from models.errors import ErrorCode, PipelineError

    try:
        raw = store.get_bytes(hints_sidecar_key(ref.subject_id, ref.upload_id))
    except (ObjectNotFound, FileNotFoundError):
        return None
    if len(raw) > MAX_SIDECAR_BYTES:
        raise PipelineError(ErrorCode.INVALID_HINT, "the hints sidecar is too large", "ingest")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PipelineError(ErrorCode.INVALID_HINT, "the hints sidecar is not JSON", "ingest") from None
    return validated_hints(data)


@dataclass(frozen=True)
class HintsSidecars:
    """The hints sidecars of an object store: read at admission, then discarded (the hints
    live on in the upload's document, erased with it; `ops.fsck` would call a sidecar left
    behind an orphan)."""

    store: ObjectStore

    def read(self, ref: RawUploadRef) -> dict | None:
        return read_hints_sidecar(self.store, ref)

    def discard(self, ref: RawUploadRef) -> None:
        self.store.delete(hints_sidecar_key(ref.subject_id, ref.upload_id))


def _admit_hints(metadata: MetadataStore, upload: dict, ref: RawUploadRef, sidecars: HintsSidecars | None) -> str | None:
    """Store the sidecar's hints on a pending upload that has none yet; the reason to fail the
    upload when they are invalid (None otherwise)."""
    from models.errors import PipelineError

    if sidecars is None or upload.get("body_hints"):
        return None
    try:
        hints = sidecars.read(ref)
    except PipelineError as err:
        error = {"code": err.code.value, "message": err.message, "step": "ingest"}
        metadata.set_upload_status(ref.upload_id, "failed", error=error)
        sidecars.discard(ref)
        return err.message
    if hints:
        metadata.set_upload_body_hints(ref.upload_id, hints)
        sidecars.discard(ref)
    return None


# -- the shared admission rule ----------------------------------------------------------------


def _run_exists(context: SensorEvaluationContext, tags: dict[str, str]) -> bool:
    return bool(context.instance.get_runs(filters=RunsFilter(tags=tags), limit=1))


def decide(
    context: SensorEvaluationContext,
    metadata: MetadataStore,
    obj: NewObject,
    trigger: str,
    min_age: timedelta = timedelta(0),
    hints: HintsSidecars | None = None,
) -> Decision:
    """Register the upload if needed and decide whether this object needs a run.

    `hints` gives the uploader's body hints from the upload's sidecar: stored on a pending
    upload that has none; invalid ones fail it (`INVALID_HINT`).

    Idempotent: deciding twice about the same object gives "done" the second time once the
    daemon has recorded the run requested the first time (run key = object key + version).
    """
    ref = parse_raw_upload_key(obj.key)
    if ref is None:
        return Decision(obj, "done", "not a raw upload key")
    if not (ID_PATTERN.match(ref.subject_id) and ID_PATTERN.match(ref.upload_id)):
        return Decision(obj, "done", "subject or upload id is not a valid id")
    if _run_exists(context, {_RUN_KEY_TAG: obj.run_key, _SENSOR_TAG: context.sensor_name}):
        return Decision(obj, "done", "run already recorded", ref)
    subject = metadata.get_subject(ref.subject_id)
    if subject is not None and subject.get("status") == "erased":
        return Decision(obj, "done", "subject is erased", ref)
    upload = metadata.get_upload(ref.upload_id)
    registered_here = upload is None
    if upload is None:
        metadata.ensure_subject(ref.subject_id)
        try:
            upload = metadata.create_upload(ref.upload_id, ref.subject_id, obj.key, PIPELINE_VERSION)
        except ValueError as exc:  # lost a race with a different registration of this id
            return Decision(obj, "done", str(exc), ref)
        metadata.append_audit(
            "ingest", ref.subject_id, ref.upload_id, {"key": obj.key, "version": obj.version, "trigger": trigger}
        )
    elif upload.get("photo_key") != obj.key:
        return Decision(obj, "done", f"upload is registered with another photo ({upload.get('photo_key')})", ref)
    if upload.get("status") != "pending":
        return Decision(obj, "done", f"upload is {upload.get('status')}", ref)
    if _run_exists(context, {_PARTITION_TAG: ref.upload_id}):
        return Decision(obj, "done", "a run of this partition exists", ref)
    invalid = _admit_hints(metadata, upload, ref, hints)
    if invalid is not None:
        return Decision(obj, "done", f"invalid body hints: {invalid}", ref)
    created = upload.get("created_at")
    if min_age and not registered_here and isinstance(created, datetime):
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        if datetime.now(UTC) - created < min_age:
            return Decision(obj, "retry", "registered moments ago; its own run may be starting", ref)
    return Decision(obj, "request", "new upload", ref)


def _result(decisions: list[Decision], trigger: str, job_name: str, cursor: str | None = None) -> SensorResult:
    requests, partitions = [], []
    for d in decisions:
        if d.action != "request" or d.ref is None:
            continue
        if d.ref.upload_id in partitions:  # one run per upload per tick (e.g. the event of its minimised re-store)
            continue
        partitions.append(d.ref.upload_id)
        requests.append(
            RunRequest(
                run_key=d.obj.run_key,
                partition_key=d.ref.upload_id,
                job_name=job_name,
                tags={
                    "avatarpipe/upload_id": d.ref.upload_id,
                    "avatarpipe/trigger": trigger,
                    "avatarpipe/object_version": d.obj.version[:63],
                },
            )
        )
    dynamic = [AddDynamicPartitionsRequest(PARTITIONS_NAME, sorted(set(partitions)))] if partitions else []
    return SensorResult(run_requests=requests, dynamic_partitions_requests=dynamic, cursor=cursor)


def _minimise(object_store: ObjectStoreResource, metadata: MetadataStore, obj: NewObject) -> None:
    """Strip identifying metadata from a new raw upload in place (`ops/upload_minimisation.py`)."""
    from ops.upload_minimisation import minimise_stored_upload

    if parse_raw_upload_key(obj.key) is not None:
        minimise_stored_upload(object_store.store(), obj.key, metadata)


# -- SQS ----------------------------------------------------------------------------------------


class UploadQueueResource(ConfigurableResource):
    """The SQS queue that receives the uploads bucket's `ObjectCreated` notifications."""

    queue_url: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    uploads_bucket: str | None = None  # events from other buckets are ignored
    max_messages_per_tick: int = 100

    def client(self) -> Any:
        import boto3

        return boto3.client("sqs", region_name=self.region, endpoint_url=self.endpoint_url)


@dataclass
class _Message:
    receipt: str
    objects: list[NewObject]


def _receive(sqs: Any, queue_url: str, limit: int) -> list[dict]:
    """Up to `limit` distinct messages, 10 per call (SQS's maximum), received before any is
    processed; stops when the queue looks empty or only hands back messages already received.

    A message whose visibility timeout runs out during the tick comes back with a new receipt
    handle (the one a delete needs) and a higher receive count: it is kept once, with the newest
    handle, so a slow tick does not spend the redrive budget of good messages."""
    by_id: dict[str, dict] = {}
    while len(by_id) < limit:
        batch = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=min(10, limit - len(by_id)),
            WaitTimeSeconds=0,
            AttributeNames=["ApproximateReceiveCount"],
        ).get("Messages", [])
        fresh = [m for m in batch if m["MessageId"] not in by_id]
        by_id.update((m["MessageId"], m) for m in batch)
        if not fresh:
            break
    return list(by_id.values())


def build_sqs_sensor(job_name: str, minimum_interval_seconds: int = 30) -> SensorDefinition:
    @sensor(
        name=SQS_SENSOR,
        job_name=job_name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="S3 ObjectCreated (uploads bucket) → SQS → one upload partition and one run per object version.",
    )
    def s3_uploads_sqs_sensor(
        context: SensorEvaluationContext,
        upload_queue: UploadQueueResource,
        metadata: MetadataStoreResource,
        object_store: ObjectStoreResource,
    ) -> SensorResult | SkipReason:
        if not upload_queue.queue_url:
            return SkipReason("AVATARPIPE_SQS_QUEUE_URL is not set")
        sqs = upload_queue.client()
        store = metadata.store()
        messages: list[_Message] = []
        decisions: list[Decision] = []
        for raw in _receive(sqs, upload_queue.queue_url, upload_queue.max_messages_per_tick):
            try:
                objects = parse_s3_event(raw["Body"])
            except (ValueError, KeyError, TypeError) as exc:
                # Left on the queue: after maxReceiveCount receives it moves to the DLQ.
                context.log.warning(f"ignoring malformed message {raw.get('MessageId')}: {exc}")
                continue
            if upload_queue.uploads_bucket:
                objects = [o for o in objects if o.bucket == upload_queue.uploads_bucket]
            messages.append(_Message(raw["ReceiptHandle"], objects))
            for obj in objects:  # data minimisation first: nothing reads the object as uploaded
                _minimise(object_store, store, obj)
            sidecars = HintsSidecars(object_store.store())
            decisions += [decide(context, store, obj, "sqs", hints=sidecars) for obj in objects]
        by_key = {d.obj.run_key: d for d in decisions}
        for message in messages:
            if all(by_key[o.run_key].action == "done" for o in message.objects):
                sqs.delete_message(QueueUrl=upload_queue.queue_url, ReceiptHandle=message.receipt)
            else:  # back on the queue now; deleted on the tick that sees its run recorded
                sqs.change_message_visibility(
                    QueueUrl=upload_queue.queue_url, ReceiptHandle=message.receipt, VisibilityTimeout=0
                )
        for d in decisions:
            context.log.info(f"{d.obj.run_key}: {d.action} ({d.reason})")
        if not messages:
            return SkipReason("no messages")
        return _result(decisions, "sqs", job_name)

    return s3_uploads_sqs_sensor


# -- local folder ---------------------------------------------------------------------------------


def _raw_files(root: Path) -> Iterator[tuple[int, str]]:
    """(mtime_ns, key) of every raw upload under a local store root; temp files skipped."""
    for path in root.glob("subjects/*/*/raw/*"):
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:  # erased meanwhile
            continue
        yield mtime, path.relative_to(root).as_posix()


def build_folder_sensor(
    job_name: str, minimum_interval_seconds: int = 30, max_per_tick: int = 100, settle_seconds: int = 60
) -> SensorDefinition:
    @sensor(
        name=FOLDER_SENSOR,
        job_name=job_name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="New raw photos in the local object store → one upload partition and one run each.",
    )
    def local_uploads_folder_sensor(
        context: SensorEvaluationContext, object_store: ObjectStoreResource, metadata: MetadataStoreResource
    ) -> SensorResult | SkipReason:
        config = object_store.config()
        if config["kind"] != "local":
            return SkipReason("the object store is S3: the SQS sensor ingests uploads")
        root = Path(config["root"])
        cursor = json.loads(context.cursor) if context.cursor else {"mtime_ns": 0, "keys": []}
        after, seen = int(cursor["mtime_ns"]), set(cursor["keys"])
        fresh = sorted((m, k) for m, k in _raw_files(root) if m > after or (m == after and k not in seen))
        batch = fresh[:max_per_tick]
        if not batch:
            return SkipReason("no new raw uploads")
        store = metadata.store()
        settle = timedelta(seconds=settle_seconds)
        for _m, key in batch:  # data minimisation first: nothing reads the file as dropped
            _minimise(object_store, store, NewObject(key, ""))
        sidecars = HintsSidecars(object_store.store())
        decisions = [decide(context, store, NewObject(k, str(m)), "folder", settle, sidecars) for m, k in batch]
        # Advance past everything decided; stop before the first object that must be retried.
        done = []
        for (mtime, key), decision in zip(batch, decisions, strict=True):
            if decision.action == "retry":
                break
            done.append((mtime, key))
        if done:
            last = done[-1][0]
            keys = sorted({k for m, k in done if m == last} | (seen if last == after else set()))
            cursor = {"mtime_ns": last, "keys": keys}
        for d in decisions:
            context.log.info(f"{d.obj.run_key}: {d.action} ({d.reason})")
        return _result([d for d in decisions if d.action == "request"], "folder", job_name, json.dumps(cursor))

    return local_uploads_folder_sensor


def build_ingest_sensors(job_name: str) -> list[SensorDefinition]:
    return [build_sqs_sensor(job_name), build_folder_sensor(job_name)]


def upload_queue_from_settings(settings: Any) -> UploadQueueResource:
    aws = settings.aws
    return UploadQueueResource(
        queue_url=aws.sqs_queue_url,
        region=aws.region,
        endpoint_url=aws.endpoint_url,
        uploads_bucket=aws.s3_uploads_bucket or aws.s3_bucket,
        max_messages_per_tick=settings.app.sqs_max_per_tick,
    )
