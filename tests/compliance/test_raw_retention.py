"""Raw-photo retention on a real processed upload: raw bytes go, the avatar and reprocessing stay."""

import json
from datetime import timedelta

import pytest
from dagster import DagsterInstance

from ops.raw_retention import purge_raw_uploads
from orchestration.cli import ingest_photo, run_avatar_job, summarise
from orchestration.settings import Settings, prepare_environment
from storage.metadata_store import open_metadata_store, utcnow
from storage.object_store import LocalObjectStore


@pytest.fixture
def processed(avatar_home, standing_photo):
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
    summary = summarise(settings, ingested.upload_id, None)
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
