"""Store hiccups are retried with backoff; stores that stay down fail the step cleanly.

Faults are injected *around the real stores* (tests/reliability/helpers.py): a wrapper makes
chosen calls raise the error the real backend raises when it hiccups (`OSError(EIO)` for the
object store, pymongo's `AutoReconnect` for the metadata store) before - or, for a lost
acknowledgement, after - the real store does the work. The retry layer (storage/retry.py)
sits above the wrapper exactly as it sits above the real client in production.
"""

from __future__ import annotations

import uuid

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, Definitions

from models.errors import ErrorCode
from orchestration.app import ingest_photo
from orchestration.definitions import AVATAR_JOB, build_definitions
from storage.metadata_store import ArtifactRecord
from storage.object_store import LocalObjectStore, ObjectNotFound
from storage.retry import RetryingObjectStore, RetryPolicy, StoreUnavailable, is_transient
from tests.reliability.helpers import (
    PLANS,
    FaultPlan,
    FaultyMetadataStoreResource,
    FaultyObjectStore,
    FaultyObjectStoreResource,
    faulty_metadata_store,
    fsck_report,
    isolated_home,
    ledger,
    run_events,
)

FAST = RetryPolicy(max_tries=5, base_delay_s=0.001, max_delay_s=0.01)
KEY = "subjects/s1/u1/photo/0123456789abcdef.png"


# -- the retry layer on its own, over the real stores ------------------------------------------


def test_object_store_retries_transient_errors_and_writes_once(tmp_path):
    plan = FaultPlan(transient_every=3)  # every operation fails twice, then succeeds
    store = RetryingObjectStore(FaultyObjectStore(LocalObjectStore(tmp_path), plan), FAST)
    stored = store.put_bytes(KEY, b"avatar bytes")
    assert store.get_bytes(KEY) == b"avatar bytes" and store.exists(KEY)
    assert stored.sha256 == store.stat(KEY).sha256
    assert list(store.list_keys("subjects/")) == [KEY]  # retried writes left one object, no temp files
    assert LocalObjectStore(tmp_path).incomplete_writes() == []
    assert plan.injected["put_bytes"] == 2 and plan.calls["put_bytes"] == 3


def test_object_store_gives_up_on_persistent_errors_and_not_on_missing_keys(tmp_path):
    plan = FaultPlan(persistent=lambda op, key: op == "put_bytes")
    store = RetryingObjectStore(FaultyObjectStore(LocalObjectStore(tmp_path), plan), FAST)
    with pytest.raises(StoreUnavailable) as info:
        store.put_bytes(KEY, b"x")
    assert plan.calls["put_bytes"] == FAST.max_tries and info.value.attempts == FAST.max_tries
    assert "s1" not in str(info.value)  # the message names the operation, not the key
    with pytest.raises(ObjectNotFound):  # not transient: one call, no retry
        store.get_bytes(KEY)
    assert plan.calls["get_bytes"] == 1


def test_classification():
    import sqlite3

    import pymongo.errors
    from botocore.exceptions import ClientError, EndpointConnectionError

    assert is_transient(pymongo.errors.AutoReconnect("x"))
    assert is_transient(pymongo.errors.NetworkTimeout("x"))
    assert not is_transient(pymongo.errors.DuplicateKeyError("x"))
    assert is_transient(sqlite3.OperationalError("database is locked"))
    assert is_transient(EndpointConnectionError(endpoint_url="http://s3"))
    assert is_transient(ClientError({"Error": {"Code": "SlowDown"}}, "PutObject"))
    assert is_transient(ClientError({"Error": {"Code": "X"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "Get"))
    assert not is_transient(ClientError({"Error": {"Code": "AccessDenied"}}, "PutObject"))
    assert is_transient(OSError(5, "EIO")) and is_transient(TimeoutError())
    assert not is_transient(FileNotFoundError(2, "no")) and not is_transient(PermissionError(13, "no"))
    assert not is_transient(ValueError("bad key"))


def _record(upload_id: str) -> ArtifactRecord:
    return ArtifactRecord(
        upload_id=upload_id, subject_id="s1", asset_key="photo", uri="file:///x", key=KEY,
        sha256="0123456789abcdef" * 4, bytes=3, code_version="c1", run_id="r1",
    )  # fmt: skip


def test_metadata_store_retries_and_never_duplicates(tmp_path):
    # every operation fails once; the audit insert is also written once without an acknowledgement
    plan = FaultPlan(transient_every=2, lost_ack=lambda op, doc: op.endswith("insert_one"))
    store = faulty_metadata_store(tmp_path / "metadata", plan)
    store.db = type(store.db)(store.db.inner, FAST)  # fast backoff for the test
    store.ensure_subject("s1")
    store.create_upload("u1", "s1", "subjects/s1/u1/raw/0123456789abcdef.png", "1")
    first = store.record_artifact(_record("u1"))
    second = store.record_artifact(_record("u1"))  # a retried step records the same artifact
    store.append_audit("materialise", "s1", "u1", {"asset": "photo"})  # insert acknowledged late
    store.set_upload_status("u1", "running", run_id="r1")
    store.set_upload_status("u1", "running", run_id="r1")

    assert first == second
    assert len(store.artifacts_for_upload("u1", include_superseded=True)) == 1
    assert [e["event"] for e in store.audit_for("s1")] == ["materialise"]  # once, despite the lost ack
    assert store.get_upload("u1")["dagster_run_ids"] == ["r1"]
    assert plan.injected["audit_log.insert_one:lost_ack"] >= 1
    assert sum(v for k, v in plan.injected.items() if not k.endswith("lost_ack")) >= 8


def test_metadata_store_gives_up_when_the_server_stays_away(tmp_path):
    # status updates (their filter guards against leaving "erased") never get through
    plan = FaultPlan(persistent=lambda op, query: op == "uploads.update_one" and "status" in query)
    store = faulty_metadata_store(tmp_path / "metadata", plan)
    store.db = type(store.db)(store.db.inner, FAST)
    store.create_upload("u1", "s1", "subjects/s1/u1/raw/0123456789abcdef.png", "1")
    with pytest.raises(StoreUnavailable):
        store.set_upload_status("u1", "failed", error={"code": "X", "message": "y"})
    assert store.get_upload("u1")["status"] == "pending"


# -- in a real Dagster run ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    env = {
        "AVATARPIPE_STORE_RETRY_BASE_S": "0.001",
        "AVATARPIPE_STORE_RETRY_MAX_S": "0.01",
        "AVATARPIPE_STEP_RETRY_DELAY_S": "0.05",
    }
    with isolated_home(tmp_path_factory.mktemp("transient_home"), **env) as settings:
        yield settings


def _run_with_faults(settings, photo_bytes: bytes, object_plan: FaultPlan, metadata_plan: FaultPlan | None):
    ingested = ingest_photo(settings, photo_bytes, "photo.png", "flaky")
    object_id, metadata_id = f"obj-{uuid.uuid4().hex}", f"meta-{uuid.uuid4().hex}"
    PLANS[object_id] = object_plan
    resources = {"object_store": FaultyObjectStoreResource(root=str(settings.objects_dir), plan_id=object_id)}
    if metadata_plan is not None:
        PLANS[metadata_id] = metadata_plan
        resources["metadata"] = FaultyMetadataStoreResource(embedded_dir=str(settings.metadata_dir), plan_id=metadata_id)
    real = build_definitions(settings)
    # the same code location with the faulty stores bound instead of the plain ones
    defs = Definitions(
        assets=real.assets, asset_checks=real.asset_checks, jobs=real.jobs, resources={**real.resources, **resources}
    )
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions("uploads", [ingested.upload_id])
    result = defs.resolve_job_def(AVATAR_JOB).execute_in_process(
        partition_key=ingested.upload_id,
        instance=instance,
        raise_on_error=False,
        asset_selection=[AssetKey("photo"), AssetKey("keypoints")],
    )
    return ingested, result.run_id


def test_flaky_stores_during_a_run_change_nothing(home, standing_photo):
    object_plan = FaultPlan(transient_every=3)
    metadata_plan = FaultPlan(transient_every=2, lost_ack=lambda op, doc: op == "audit_log.insert_one")
    ingested, run_id = _run_with_faults(home, standing_photo.read_bytes(), object_plan, metadata_plan)

    assert DagsterInstance.get().get_run_by_id(run_id).status == DagsterRunStatus.SUCCESS
    events = run_events(run_id)
    assert "STEP_UP_FOR_RETRY" not in events  # the store layer absorbed every hiccup
    assert sum(object_plan.injected.values()) >= 6 and sum(metadata_plan.injected.values()) >= 6
    state = ledger(home, ingested.upload_id)
    assert [d["asset_key"] for d in state.docs] == ["photo", "keypoints"]  # no duplicate documents
    assert sorted(k.split("/")[3] for k in state.keys) == ["keypoints", "keypoints", "photo", "raw"]
    from storage.metadata_store import open_metadata_store

    metadata = open_metadata_store(None, home.metadata_dir)
    events = [e["event"] for e in metadata.audit_for("flaky") if e["upload_id"] == ingested.upload_id]
    metadata.close()
    assert events == ["ingest", "materialise", "materialise"]  # lost acks did not duplicate
    assert fsck_report(home, ingested.upload_id).clean


def test_object_store_down_fails_the_step_cleanly_after_dagster_retries(home, standing_photo):
    plan = FaultPlan(persistent=lambda op, key: op == "put_bytes" and "/keypoints/" in str(key))
    ingested, run_id = _run_with_faults(home, standing_photo.read_bytes(), plan, None)

    assert DagsterInstance.get().get_run_by_id(run_id).status == DagsterRunStatus.FAILURE
    events = run_events(run_id)
    assert events.count("STEP_UP_FOR_RETRY") == 2  # RetryPolicy(max_retries=2): three attempts
    assert events.count("STEP_FAILURE") == 1
    assert plan.injected["put_bytes"] == 3 * 5  # each attempt: five tries with backoff
    state = ledger(home, ingested.upload_id)
    assert state.upload["status"] == "failed"
    assert state.upload["error"]["code"] == ErrorCode.STORE_UNAVAILABLE.value
    assert state.upload["error"]["step"] == "keypoints"
    assert [d["asset_key"] for d in state.docs] == ["photo"]  # the valid artifact stays, nothing else
    assert fsck_report(home, ingested.upload_id).clean
