"""An upload still being processed: the erasure fences the subject, waits for the runner's lease,
reports "busy" if it does not stop, and completes when re-run after the runner is gone."""

from __future__ import annotations

import pytest

from ops.erasure import ErasureEnv, erase_subject
from storage.lease import UploadBusy, UploadLease
from storage.metadata_store import InvalidTransition, open_metadata_store
from storage.object_store import LocalObjectStore, artifact_key, sha256_hex

SUBJECT = "busy-subj-3e8b"


def test_running_upload_is_waited_for_then_erased(tmp_path) -> None:
    home = tmp_path / "home"
    metadata = open_metadata_store(None, home / "metadata")
    store = LocalObjectStore(home / "objects")
    raw = b"raw photo bytes"
    key = artifact_key(SUBJECT, "u_busy1", "raw", sha256_hex(raw), "jpg")
    store.put_bytes(key, raw)
    metadata.ensure_subject(SUBJECT)
    metadata.create_upload("u_busy1", SUBJECT, key, "test")
    metadata.set_upload_status("u_busy1", "running")
    env = ErasureEnv(home=home, metadata=metadata, object_store=store, lease_wait_s=0.5)
    try:
        with UploadLease(metadata, "u_busy1", purpose="run", ttl_s=60):  # a live runner holds it
            with pytest.raises(UploadBusy):
                erase_subject(env, SUBJECT, operator="test")
            # fenced already: nothing can bring the subject back while the runner finishes
            assert metadata.get_subject(SUBJECT)["status"] == "erased"
        with pytest.raises(InvalidTransition):  # the runner's final status write is refused
            metadata.set_upload_status("u_busy1", "ready")
        result = erase_subject(env, SUBJECT, operator="test")
        assert result.status == "completed" and result.resumed
        assert result.certificate["attempts"] == 2
        assert not list(store.list_keys("")) and metadata.get_upload("u_busy1") is None
    finally:
        metadata.close()
