"""`avatarpipe fsck [--repair] [--json]` on a clean home and on a damaged one: every object has a
document (or is an upload's raw photo) and every document its objects."""

from __future__ import annotations

import os
import time

import pytest

from orchestration.app import execute_avatar_job, ingest_photo
from storage.lease import UploadLease
from storage.metadata_store import open_metadata_store
from storage.object_store import LocalObjectStore
from tests.reliability.helpers import cli_in_process, isolated_home, ledger

HOUR = 3600


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with isolated_home(tmp_path_factory.mktemp("fsck_home")) as settings:
        yield settings


@pytest.fixture
def upload(home, standing_photo) -> str:
    """An upload with photo and keypoints built by a real Dagster run (four objects, two documents)."""
    ingested = ingest_photo(home, standing_photo.read_bytes(), standing_photo.name, "fsck-subject")
    execute_avatar_job(home, ingested.upload_id, asset_selection=["photo", "keypoints"])
    return ingested.upload_id


def _put_old(store: LocalObjectStore, key: str, data: bytes = b"stray", age_s: float = HOUR) -> None:
    store.put_bytes(key, data)
    past = time.time() - age_s
    os.utime(store.local_path(key), (past, past))


def test_clean_home(home, upload, capfd):
    code, answer, _ = cli_in_process(["fsck", "--json"], capfd)
    assert code == 0 and answer["clean"] is True and answer["after"] is None
    before = answer["before"]
    assert before["findings"] == [] and before["counts"] == dict.fromkeys(before["counts"], 0)
    assert before["objects"] == 4 and before["documents"] == 2 and before["uploads"] == 1

    from orchestration.cli import main

    assert main(["fsck"]) == 0
    assert capfd.readouterr().out.strip().endswith("consistent")


def test_damaged_upload_is_found_and_repaired(home, upload, capfd):
    store = LocalObjectStore(home.objects_dir)
    state = ledger(home, upload)
    keypoints = state.current["keypoints"]
    prefix = f"subjects/fsck-subject/{upload}"
    # a document without its object: the person mask vanished behind the ledger's back
    assert store.delete(keypoints["extra_files"]["mask"])
    # objects without documents: what a run killed between write and record leaves
    _put_old(store, f"{prefix}/mesh/deadbeefdeadbeef.glb")
    _put_old(store, f"{prefix}/smplx_params/0123456789abcdef.json")
    # a write killed before its rename
    temp = store.root / prefix / "photo" / ".feedfacefeedface.png.x1y2.tmp"
    temp.write_bytes(b"half")
    os.utime(temp, (time.time() - HOUR, time.time() - HOUR))
    # an orphan written a moment ago may belong to a step about to record it: not judged yet
    store.put_bytes(f"{prefix}/mesh/0000000000000000.png", b"fresh")

    code, answer, _ = cli_in_process(["fsck", "--upload", upload, "--json"], capfd)
    assert code == 1 and answer["clean"] is False
    before = answer["before"]
    assert before["counts"] == {"orphan_object": 2, "missing_object": 1, "missing_raw": 0, "incomplete_write": 1}
    missing = next(f for f in before["findings"] if f["kind"] == "missing_object")
    assert missing["artifact_id"] == keypoints["_id"] and missing["current"] is True
    assert before["young_objects"] == 1

    code, answer, _ = cli_in_process(["fsck", "--upload", upload, "--repair", "--json"], capfd)
    assert code == 0 and answer["clean"] is True and answer["after"]["clean"] is True
    assert answer["before"]["repairs"] == {
        "objects_deleted": 3,  # two orphans + the keypoints JSON left without its document
        "temp_files_deleted": 1,
        "documents_deleted": 1,
        "uploads_marked_failed": 1,
    }
    after = ledger(home, upload)
    assert set(after.current) == {"photo"}  # the keypoints document went with its objects
    assert sorted(k.split("/")[3] for k in after.keys) == ["mesh", "photo", "raw"]  # + the young one
    assert after.upload["status"] == "failed" and after.upload["error"]["code"] == "ARTIFACT_MISSING"
    assert after.upload["error"]["step"] == "keypoints" and "resume" in after.upload["error"]["message"]
    assert not temp.exists()
    metadata = open_metadata_store(None, home.metadata_dir)
    repairs = [e for e in metadata.audit_events("fsck_repair") if e["upload_id"] == upload]
    metadata.close()
    assert len(repairs) == 1 and repairs[0]["details"]["artifacts_deleted"] == [keypoints["_id"]]

    # with no grace period the fresh orphan is judged too
    code, answer, _ = cli_in_process(["fsck", "--upload", upload, "--repair", "--grace-s", "0", "--json"], capfd)
    assert code == 0 and answer["before"]["counts"]["orphan_object"] == 1 and answer["after"]["clean"]


def test_upload_being_processed_is_left_alone(home, upload, capfd):
    store = LocalObjectStore(home.objects_dir)
    stray = f"subjects/fsck-subject/{upload}/mesh/abcdefabcdefabcd.glb"
    _put_old(store, stray)
    metadata = open_metadata_store(None, home.metadata_dir)
    try:
        with UploadLease(metadata, upload, purpose="test"):  # a live runner holds the upload
            code, answer, _ = cli_in_process(["fsck", "--repair", "--grace-s", "0", "--json"], capfd)
            assert code == 0 and answer["before"]["skipped_busy_uploads"] == [upload]
            assert store.exists(stray)
    finally:
        metadata.close()
    code, answer, _ = cli_in_process(["fsck", "--upload", upload, "--repair", "--json"], capfd)
    assert answer["before"]["counts"]["orphan_object"] == 1 and code == 0 and not store.exists(stray)


def test_lost_raw_photo_cannot_be_repaired(home, upload, capfd):
    store = LocalObjectStore(home.objects_dir)
    raw = ledger(home, upload).upload["photo_key"]
    assert store.delete(raw)
    code, answer, _ = cli_in_process(["fsck", "--upload", upload, "--repair", "--json"], capfd)
    assert code == 1 and answer["after"]["counts"]["missing_raw"] == 1  # reported, never invented


def test_whole_store_includes_objects_of_unknown_uploads(home, capfd):
    store = LocalObjectStore(home.objects_dir)
    ghost = "subjects/nobody/u_0000000000000000/raw/0123456789abcdef.jpg"
    _put_old(store, ghost)
    _code, answer, _ = cli_in_process(["fsck", "--repair", "--json"], capfd)
    found = [f for f in answer["before"]["findings"] if f["key"] == ghost]
    assert found and found[0]["kind"] == "orphan_object" and not store.exists(ghost)
