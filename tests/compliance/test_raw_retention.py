"""Raw-photo retention on a real processed upload: raw bytes go, the avatar and reprocessing stay.

Default policy: the raw upload is deleted the moment the upload is `ready`. Opt-in policy
(`AVATARPIPE_RAW_RETENTION_DAYS=N`): kept N days, then deleted by `purge_raw_uploads`.
"""

import json
from datetime import timedelta

import pytest
from dagster import DagsterInstance

from ops.fsck import check
from ops.raw_retention import (
    DELETED_WHEN_READY,
    RawRetentionPolicy,
    purge_raw_uploads,
    raw_retention_policy,
    raw_retention_schedule,
)
from orchestration.app import ingest_photo, run_avatar_job, summarise
from orchestration.settings import Settings, prepare_environment
from storage.metadata_store import open_metadata_store, utcnow
from storage.object_store import LocalObjectStore


@pytest.fixture
def processed(avatar_home, standing_photo, monkeypatch):
    monkeypatch.setenv("AVATARPIPE_RAW_RETENTION_DAYS", "30")  # the opt-in: keep raw uploads 30 days
    settings = Settings.from_env()
    prepare_environment(settings)
    ingested = ingest_photo(settings, standing_photo.read_bytes(), standing_photo.name, "retained")
    run_avatar_job(settings, ingested.upload_id)
    return settings, ingested


def test_raw_photo_retention_keeps_the_avatar_and_refuses_photo_rerun(processed):
    settings, ingested = processed
    store = LocalObjectStore(settings.objects_dir)
    metadata = open_metadata_store(None, settings.metadata_dir)
    raw_key = metadata.get_upload(ingested.upload_id)["photo_key"]
    assert store.exists(raw_key)

    # Not yet old enough: nothing happens. Dry run: reported, nothing deleted.
    assert purge_raw_uploads(metadata, store, timedelta(days=30)).deleted_uploads == []
    dry = purge_raw_uploads(metadata, store, timedelta(0), now=utcnow() + timedelta(seconds=1), dry_run=True)
    assert dry.deleted_uploads == [ingested.upload_id] and store.exists(raw_key)

    report = purge_raw_uploads(metadata, store, timedelta(0), now=utcnow() + timedelta(seconds=1))
    assert report.deleted_uploads == [ingested.upload_id] and report.bytes_freed > 0
    assert not store.exists(raw_key)
    upload = metadata.get_upload(ingested.upload_id)
    assert upload["raw_deleted_at"] is not None and upload["status"] == "ready"
    assert "raw_photo_deleted" in [e["event"] for e in metadata.audit_for("retained")]
    # idempotent
    again = purge_raw_uploads(metadata, store, timedelta(0), now=utcnow() + timedelta(seconds=1))
    assert again.deleted_uploads == []
    metadata.close()

    # Every artifact is still there and readable.
    summary = summarise(settings, ingested.upload_id, None).to_dict()
    assert summary["status"] == "ready"
    for artifact in summary["artifacts"].values():
        assert store.exists(store.key_for_uri(artifact["uri"]))

    # Re-running the whole job must fail at `photo` with a clear, typed answer.
    run_id = run_avatar_job(settings, ingested.upload_id)
    assert not DagsterInstance.get().get_run_by_id(run_id).is_success
    metadata = open_metadata_store(None, settings.metadata_dir)
    error = metadata.get_upload(ingested.upload_id)["error"]
    metadata.close()
    assert error["code"] == "RAW_PHOTO_EXPIRED" and "retention" in error["message"]
    json.dumps(error)


def test_default_policy_deletes_the_raw_upload_when_the_avatar_is_ready(avatar_home, standing_photo, monkeypatch):
    monkeypatch.delenv("AVATARPIPE_RAW_RETENTION_DAYS", raising=False)
    settings = Settings.from_env()
    prepare_environment(settings)
    ingested = ingest_photo(settings, standing_photo.read_bytes(), standing_photo.name, "minimised")
    run_avatar_job(settings, ingested.upload_id)
    store = LocalObjectStore(settings.objects_dir)
    metadata = open_metadata_store(None, settings.metadata_dir)
    try:
        upload = metadata.get_upload(ingested.upload_id)
        assert upload["status"] == "ready" and upload["raw_deleted_at"] is not None
        assert not store.exists(ingested.photo_key)  # gone as soon as the avatar was ready
        deleted = [e for e in metadata.audit_for("minimised") if e["event"] == "raw_photo_deleted"]
        assert len(deleted) == 1 and deleted[0]["details"]["reason"] == DELETED_WHEN_READY
        assert check(store, metadata).clean  # a raw deleted by policy is not a missing raw
        keys = {k.split("/")[3] for k in store.list_keys(f"subjects/minimised/{ingested.upload_id}/")}
        assert "raw" not in keys and {"photo", "keypoints", "smplx_params", "mesh", "rigged_glb"} <= keys
    finally:
        metadata.close()
    # Reprocessing starts from the normalised photo: the model steps still run.
    from orchestration.app import execute_avatar_job

    run_id = execute_avatar_job(settings, ingested.upload_id, asset_selection=["keypoints"])
    assert DagsterInstance.get().get_run_by_id(run_id).is_success


def _policy_of(environ: dict) -> RawRetentionPolicy:
    """The policy as the pipeline builds it: the typed configuration's value, passed down."""
    from orchestration.config import load_config

    return raw_retention_policy(load_config(environ).raw_retention_days)


def test_policy_is_read_from_the_environment():
    assert _policy_of({}) == RawRetentionPolicy(days=None)
    assert _policy_of({}).delete_when_ready
    assert _policy_of({"AVATARPIPE_RAW_RETENTION_DAYS": ""}).delete_when_ready
    assert _policy_of({"AVATARPIPE_RAW_RETENTION_DAYS": "0"}).delete_when_ready
    kept = _policy_of({"AVATARPIPE_RAW_RETENTION_DAYS": "7"})
    assert not kept.delete_when_ready and kept.days == 7.0 and "7 days" in kept.describe()
    assert kept.to_dict() == {"delete_when_ready": False, "keep_days": 7.0, "policy": kept.describe()}
    for bad in ("-1", "a week"):
        with pytest.raises(ValueError, match="AVATARPIPE_RAW_RETENTION_DAYS"):
            _policy_of({"AVATARPIPE_RAW_RETENTION_DAYS": bad})


def _older_than_days(schedule) -> float:
    from dagster import build_schedule_context

    request = schedule.evaluate_tick(build_schedule_context()).run_requests[0]
    return request.run_config["ops"]["purge_raw_uploads_op"]["config"]["older_than_days"]


def test_the_daily_schedule_runs_under_either_policy():
    for days, expected in ((None, 0.0), (30.0, 30.0)):  # default: a sweep; opt-in: N days after ready
        schedule = raw_retention_schedule(days)
        assert schedule.default_status.value == "RUNNING"
        assert _older_than_days(schedule) == expected
