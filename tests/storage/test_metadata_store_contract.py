"""One contract, two backends: embedded montydb (always) and real MongoDB (when MONGODB_URI is set)."""

import dataclasses
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from storage.metadata_store import (
    ArtifactRecord,
    InvalidTransition,
    MetadataStore,
    NotFound,
    artifact_id,
    open_metadata_store,
    utcnow,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Backend:
    name: str
    uri: str | None
    embedded_dir: Path
    db_name: str
    opened: list[MetadataStore]

    def open(self) -> MetadataStore:
        """A brand-new MetadataStore on the same data (new client, new connections)."""
        store = open_metadata_store(self.uri, self.embedded_dir, db_name=self.db_name)
        self.opened.append(store)
        return store

    def python(self, code: str, *args: str) -> subprocess.Popen[str]:
        """Start a fresh interpreter running ``code`` with ``store`` bound to this backend."""
        prelude = (
            "import json, sys\n"
            "from pathlib import Path\n"
            "from storage.metadata_store import open_metadata_store\n"
            f"store = open_metadata_store({self.uri!r}, Path({str(self.embedded_dir)!r}), db_name={self.db_name!r})\n"
        )
        pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        return subprocess.Popen(
            [sys.executable, "-c", prelude + code + "\nstore.close()\n", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": pythonpath},
            cwd=REPO_ROOT,
        )

    def run_in_subprocess(self, code: str) -> str:
        proc = self.python(code)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        return out


@pytest.fixture(params=["embedded", "mongodb"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    uri: str | None = None
    if request.param == "mongodb":
        uri = os.environ.get("MONGODB_URI")
        if not uri:
            pytest.skip("MONGODB_URI not set")
    b = Backend(
        request.param,
        uri,
        tmp_path / "metadata",
        f"avatarpipe_test_{uuid.uuid4().hex[:12]}",
        [],
    )
    yield b
    if uri:
        import pymongo

        with pymongo.MongoClient(uri) as client:
            client.drop_database(b.db_name)
    for store in b.opened:
        store.close()


@pytest.fixture
def store(backend: Backend) -> MetadataStore:
    s = backend.open()
    s.ensure_indexes()
    return s


def _record(**overrides: object) -> ArtifactRecord:
    base = {
        "upload_id": "u1",
        "subject_id": "s1",
        "asset_key": "keypoints",
        "uri": "file:///data/subjects/s1/u1/keypoints/aaaaaaaaaaaaaaaa.json",
        "key": "subjects/s1/u1/keypoints/aaaaaaaaaaaaaaaa.json",
        "sha256": "a" * 64,
        "bytes": 123,
        "code_version": "kp-1",
        "run_id": "run-1",
        "model_versions": {"mediapipe": "0.10.14"},
        "parent_ids": ["p1"],
        "metrics": {"n_keypoints": 33, "score": 0.97, "flags": ["ok"]},
        "extra_files": {"mask": "subjects/s1/u1/keypoints/mask.png"},
        "compute_seconds": 1.25,
    }
    base.update(overrides)
    return ArtifactRecord(**base)  # type: ignore[arg-type]


def _assert_utc(value: object) -> None:
    assert isinstance(value, datetime)
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0)


# -- subjects ---------------------------------------------------------------------------


def test_ensure_subject_is_idempotent(store: MetadataStore) -> None:
    first = store.ensure_subject("s1", consent={"processing": True, "version": "2024-01"})
    again = store.ensure_subject("s1")

    assert first["_id"] == "s1" and first["status"] == "active"
    assert again["consent"] == {
        "processing": True,
        "version": "2024-01",
    }  # not wiped by a consent-less call
    assert again["created_at"] == first["created_at"]
    _assert_utc(again["created_at"])
    _assert_utc(again["updated_at"])
    assert store.get_subject("s1") == again
    assert store.get_subject("nobody") is None

    updated = store.ensure_subject("s1", consent={"processing": False})
    assert updated["consent"] == {"processing": False}
    assert updated["created_at"] == first["created_at"]


def test_new_subject_without_consent_gets_empty_consent(store: MetadataStore) -> None:
    assert store.ensure_subject("s2")["consent"] == {}


def test_subject_status(store: MetadataStore) -> None:
    store.ensure_subject("s1")
    assert store.set_subject_status("s1", "erased")["status"] == "erased"
    assert store.ensure_subject("s1")["status"] == "erased"  # ensure never resurrects
    with pytest.raises(InvalidTransition):
        store.set_subject_status("s1", "active")
    with pytest.raises(ValueError):
        store.set_subject_status("s1", "deleted")
    with pytest.raises(NotFound):
        store.set_subject_status("nobody", "erased")


# -- uploads ----------------------------------------------------------------------------


def test_create_upload_is_idempotent_and_keeps_status(store: MetadataStore) -> None:
    created = store.create_upload("u1", "s1", "subjects/s1/u1/photo/abc.png", "pipe-1")
    assert created["status"] == "pending"
    assert created["error"] is None
    assert created["dagster_run_ids"] == []
    assert created["subject_id"] == "s1" and created["pipeline_version"] == "pipe-1"
    _assert_utc(created["created_at"])

    store.set_upload_status("u1", "running", run_id="run-1")
    again = store.create_upload("u1", "s1", "subjects/s1/u1/photo/abc.png", "pipe-1")
    assert again["status"] == "running"
    assert again["dagster_run_ids"] == ["run-1"]
    assert again["created_at"] == created["created_at"]
    assert len(store.list_uploads()) == 1


def test_create_upload_conflict(store: MetadataStore) -> None:
    store.create_upload("u1", "s1", "k1", "pipe-1")
    with pytest.raises(ValueError):
        store.create_upload("u1", "s2", "k1", "pipe-1")
    with pytest.raises(ValueError):
        store.create_upload("u1", "s1", "k2", "pipe-1")


def test_upload_status_transitions(store: MetadataStore) -> None:
    store.create_upload("u1", "s1", "k", "pipe-1")

    running = store.set_upload_status("u1", "running", run_id="run-1")
    assert running["status"] == "running" and running["dagster_run_ids"] == ["run-1"]

    error = {"code": "NO_PERSON", "message": "no person detected", "step": "keypoints"}
    failed = store.set_upload_status("u1", "failed", error=error, run_id="run-1")
    assert failed["status"] == "failed"
    assert failed["error"] == error
    assert failed["dagster_run_ids"] == ["run-1"]  # not duplicated
    assert failed["updated_at"] >= running["updated_at"]

    store.set_upload_status("u1", "running", run_id="run-2")
    ready = store.set_upload_status("u1", "ready", run_id="run-2")
    assert ready["status"] == "ready"
    assert ready["error"] is None  # cleared by a non-error status
    assert ready["dagster_run_ids"] == ["run-1", "run-2"]
    assert store.get_upload("u1") == ready


def test_upload_status_validation(store: MetadataStore) -> None:
    store.create_upload("u1", "s1", "k", "pipe-1")
    with pytest.raises(ValueError):
        store.set_upload_status("u1", "done")
    with pytest.raises(ValueError):
        store.set_upload_status("u1", "failed", error={"message": "missing code"})
    with pytest.raises(NotFound):
        store.set_upload_status("missing", "running")
    assert store.get_upload("u1")["status"] == "pending"
    assert store.get_upload("missing") is None

    partial = store.set_upload_status("u1", "failed", error={"code": "E", "message": "m"})
    assert partial["error"] == {"code": "E", "message": "m", "step": None}


def test_erased_upload_cannot_be_resurrected(store: MetadataStore) -> None:
    store.create_upload("u1", "s1", "k", "pipe-1")
    store.set_upload_status("u1", "erased")
    with pytest.raises(InvalidTransition):
        store.set_upload_status("u1", "ready", run_id="late-run")
    doc = store.get_upload("u1")
    assert doc["status"] == "erased" and doc["dagster_run_ids"] == []
    assert store.set_upload_status("u1", "erased")["status"] == "erased"


def test_list_uploads_filters(store: MetadataStore) -> None:
    store.create_upload("u1", "s1", "k1", "p")
    store.create_upload("u2", "s1", "k2", "p")
    store.create_upload("u3", "s2", "k3", "p")
    store.set_upload_status("u2", "ready")

    assert [u["_id"] for u in store.list_uploads()] == ["u1", "u2", "u3"]
    assert [u["_id"] for u in store.list_uploads(subject_id="s1")] == ["u1", "u2"]
    assert [u["_id"] for u in store.list_uploads(status="pending")] == ["u1", "u3"]
    assert [u["_id"] for u in store.list_uploads(subject_id="s1", status="ready")] == ["u2"]
    assert store.list_uploads(subject_id="nobody") == []


# -- artifacts --------------------------------------------------------------------------


def test_record_artifact_is_idempotent(store: MetadataStore) -> None:
    rec = _record()
    first = store.record_artifact(rec)
    second = store.record_artifact(rec)

    assert first == second == artifact_id("u1", "keypoints", "a" * 64, "kp-1") == rec.artifact_id
    assert len(first) == 24
    assert len(store.artifacts_for_upload("u1", include_superseded=True)) == 1

    doc = store.get_artifact(first)
    assert doc is not None
    for name, value in dataclasses.asdict(rec).items():
        assert doc[name] == value, name
    assert doc["_id"] == first
    assert doc["superseded_by"] is None
    _assert_utc(doc["created_at"])
    assert store.get_artifact("0" * 24) is None


def test_new_artifact_supersedes_previous(store: MetadataStore) -> None:
    old = store.record_artifact(_record())
    other_asset = store.record_artifact(_record(asset_key="mesh", sha256="c" * 64))
    other_upload = store.record_artifact(_record(upload_id="u2"))

    new = store.record_artifact(_record(sha256="b" * 64, code_version="kp-2", run_id="run-2"))

    assert new != old
    assert store.get_artifact(old)["superseded_by"] == new
    assert store.get_artifact(new)["superseded_by"] is None
    assert store.current_artifact("u1", "keypoints")["_id"] == new
    # Other assets and other uploads are untouched.
    assert store.current_artifact("u1", "mesh")["_id"] == other_asset
    assert store.current_artifact("u2", "keypoints")["_id"] == other_upload

    assert {a["_id"] for a in store.artifacts_for_upload("u1")} == {new, other_asset}
    assert {a["_id"] for a in store.artifacts_for_upload("u1", include_superseded=True)} == {
        old,
        new,
        other_asset,
    }

    # Re-recording the current artifact changes nothing.
    store.record_artifact(_record(sha256="b" * 64, code_version="kp-2", run_id="run-2"))
    assert store.get_artifact(old)["superseded_by"] == new
    assert store.current_artifact("u1", "keypoints")["_id"] == new


def test_rerecording_old_artifact_makes_it_current_again(store: MetadataStore) -> None:
    old = store.record_artifact(_record())
    new = store.record_artifact(_record(code_version="kp-2"))
    again = store.record_artifact(_record())

    assert again == old
    assert store.current_artifact("u1", "keypoints")["_id"] == old
    assert store.get_artifact(new)["superseded_by"] == old
    assert len(store.artifacts_for_upload("u1")) == 1
    assert len(store.artifacts_for_upload("u1", include_superseded=True)) == 2


def test_current_artifact_missing(store: MetadataStore) -> None:
    assert store.current_artifact("u1", "keypoints") is None
    store.record_artifact(_record())
    assert store.current_artifact("u1", "mesh") is None
    assert store.artifacts_for_upload("u-none") == []


# -- audit ------------------------------------------------------------------------------


def test_audit_log_ordering(store: MetadataStore) -> None:
    events = [f"event-{i}" for i in range(20)]
    for i, event in enumerate(events):
        store.append_audit(event, "s1", "u1" if i % 2 else None, {"i": i})
    store.append_audit("other-subject", "s2", None)
    store.append_audit("system", None, None)

    log = store.audit_for("s1")
    assert [e["event"] for e in log] == events
    assert [e["details"] for e in log] == [{"i": i} for i in range(20)]
    assert log[1]["upload_id"] == "u1" and log[0]["upload_id"] is None
    for entry in log:
        _assert_utc(entry["at"])
    assert [e["at"] for e in log] == sorted(e["at"] for e in log)
    assert [e["event"] for e in store.audit_for("s2")] == ["other-subject"]
    assert store.audit_for("nobody") == []


def test_timestamps_are_utc_and_ms_precision() -> None:
    now = utcnow()
    _assert_utc(now)
    assert now.microsecond % 1000 == 0


# -- persistence / multi-process ----------------------------------------------------------


def test_reopen_sees_same_data(backend: Backend) -> None:
    first = backend.open()
    first.ensure_subject("s1", consent={"ok": True})
    first.create_upload("u1", "s1", "k", "pipe-1")
    first.set_upload_status("u1", "failed", error={"code": "E", "message": "m", "step": "x"}, run_id="r1")
    art = first.record_artifact(_record())
    first.append_audit("upload.created", "s1", "u1")
    first.close()

    second = backend.open()
    assert second.get_subject("s1")["consent"] == {"ok": True}
    upload = second.get_upload("u1")
    assert upload["status"] == "failed" and upload["dagster_run_ids"] == ["r1"]
    _assert_utc(upload["updated_at"])
    assert second.current_artifact("u1", "keypoints")["_id"] == art
    assert [e["event"] for e in second.audit_for("s1")] == ["upload.created"]

    # Two live stores on the same data see each other's writes.
    third = backend.open()
    third.set_upload_status("u1", "ready", run_id="r2")
    assert second.get_upload("u1")["status"] == "ready"


def test_other_process_reads_and_writes(backend: Backend) -> None:
    store = backend.open()
    store.ensure_subject("s1")
    store.create_upload("u1", "s1", "subjects/s1/u1/photo/p.png", "pipe-1")
    art = store.record_artifact(_record())

    out = backend.run_in_subprocess(
        "u = store.get_upload('u1')\n"
        "a = store.current_artifact('u1', 'keypoints')\n"
        "store.set_upload_status('u1', 'ready', run_id='run-from-child')\n"
        "store.append_audit('child.done', 's1', 'u1', {'pid': 1})\n"
        "print(json.dumps({'status': u['status'], 'photo_key': u['photo_key'], 'artifact': a['_id'],"
        " 'tz': u['created_at'].utcoffset().total_seconds()}))\n"
    )
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen == {
        "status": "pending",
        "photo_key": "subjects/s1/u1/photo/p.png",
        "artifact": art,
        "tz": 0.0,
    }

    upload = store.get_upload("u1")
    assert upload["status"] == "ready" and upload["dagster_run_ids"] == ["run-from-child"]
    assert [e["event"] for e in store.audit_for("s1")] == ["child.done"]


def test_concurrent_processes_do_not_lose_updates(backend: Backend) -> None:
    """Several processes appending run ids to one upload at once: every id must survive."""
    store = backend.open()
    store.create_upload("u1", "s1", "k", "pipe-1")
    code = (
        "import sys\n"
        "for i in range(10):\n"
        "    store.set_upload_status('u1', 'running', run_id=f'{sys.argv[1]}-{i}')\n"
    )
    procs = [backend.python(code, name) for name in ["a", "b", "c"]]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    run_ids = store.get_upload("u1")["dagster_run_ids"]
    assert sorted(run_ids) == sorted(f"{p}-{i}" for p in "abc" for i in range(10))


def test_concurrent_first_open(backend: Backend) -> None:
    """Processes racing to create a fresh embedded repository (and its collections) all succeed."""
    code = "store.ensure_indexes()\nstore.ensure_subject(sys.argv[1])\nstore.append_audit('hello', sys.argv[1], None)\n"
    procs = [backend.python(code, f"s{i}") for i in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    store = backend.open()
    for i in range(4):
        assert store.get_subject(f"s{i}")["status"] == "active"
        assert [e["event"] for e in store.audit_for(f"s{i}")] == ["hello"]


def test_threads_sharing_one_store(store: MetadataStore) -> None:
    store.create_upload("u1", "s1", "k", "pipe-1")

    def work(name: str) -> None:
        for i in range(10):
            store.set_upload_status("u1", "running", run_id=f"{name}-{i}")
            store.append_audit("tick", "s1", "u1", {"who": name})

    threads = [threading.Thread(target=work, args=(name,)) for name in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.get_upload("u1")["dagster_run_ids"]) == 40
    assert len(store.audit_for("s1")) == 40


def test_ensure_indexes_is_idempotent(store: MetadataStore) -> None:
    store.ensure_indexes()
    store.ensure_indexes()
    store.ensure_subject("s1")
    assert store.get_subject("s1") is not None


def _bump_run_ids(store: MetadataStore, name: str) -> None:
    for i in range(10):
        store.set_upload_status("u1", "running", run_id=f"{name}-{i}")


def test_forked_children_stay_serialised(backend: Backend) -> None:
    """A store opened before fork (e.g. a cached resource) must still exclude its forked copies."""
    if backend.uri:
        pytest.skip("fork safety concerns the embedded backend's file lock")
    store = backend.open()
    store.create_upload("u1", "s1", "k", "pipe-1")  # the lock fd now exists and would be inherited
    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=_bump_run_ids, args=(store, name)) for name in "ab"]
    for child in children:
        child.start()
    _bump_run_ids(store, "parent")
    for child in children:
        child.join(timeout=120)
        assert child.exitcode == 0
    assert len(store.get_upload("u1")["dagster_run_ids"]) == 30
