"""The `validations` collection and the `failed_quality` upload status, on both backends
(embedded montydb always, a real MongoDB when MONGODB_URI is set)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from storage.metadata_store import (
    COLLECTIONS,
    UPLOAD_STATUSES,
    MetadataStore,
    ValidationRecord,
    utcnow,
)
from tests.storage import test_metadata_store_contract as contract
from tests.storage.test_metadata_store_contract import Backend

# The same backend fixtures as the metadata store contract: embedded always, MongoDB when set.
backend = contract.backend
store = contract.store


def _validation(**overrides: object) -> ValidationRecord:
    base: dict = {
        "upload_id": "u1",
        "subject_id": "s1",
        "asset_key": "rigged_glb",
        "artifact_id": "a1",
        "check_name": "rigged_glb_quality",
        "suite_name": "rigged_glb_quality",
        "suite_sha": "0123456789ab",
        "run_id": "run-1",
        "passed": False,
        "severity": "ERROR",
        "failed_expectations": [
            {"name": "weights_sum_to_one", "severity": "ERROR", "column": "max_weight_sum_error", "observed": 0.2}
        ],
        "results": [
            {"name": "weights_sum_to_one", "severity": "ERROR", "success": False, "observed": 0.2},
            {"name": "has_skin", "severity": "ERROR", "success": True, "observed": 1},
        ],
        "statistics": {"evaluated": 2, "failed_error": 1, "failed_warn": 0},
        "metrics": {"max_weight_sum_error": 0.2, "joint_count": 52, "parse_ok": True, "note": None},
        "gx_result_json": '{"success": false}',
        "duration_s": 1.5,
    }
    base.update(overrides)
    return ValidationRecord(**base)


def test_failed_quality_is_an_upload_status(store: MetadataStore) -> None:
    assert "failed_quality" in UPLOAD_STATUSES and "validations" in COLLECTIONS
    store.create_upload("u1", "s1", "subjects/s1/u1/raw/x.png", "0.1.0")
    error = {"code": "QUALITY_GATE_FAILED", "message": "mesh: no_holes", "step": "mesh"}
    doc = store.set_upload_status("u1", "failed_quality", error=error, run_id="run-1")
    assert doc["status"] == "failed_quality" and doc["error"] == error
    assert [u["_id"] for u in store.list_uploads(status="failed_quality")] == ["u1"]


def test_record_validation_round_trips(store: MetadataStore) -> None:
    rec = _validation()
    vid = store.record_validation(rec)
    (doc,) = store.find_validations(upload_id="u1")
    assert doc["_id"] == vid
    for key, value in dataclasses.asdict(rec).items():
        assert doc[key] == value, key
    assert doc["created_at"].utcoffset() == timedelta(0)


def test_each_check_run_is_its_own_document(store: MetadataStore) -> None:
    first = store.record_validation(_validation(run_id="run-1"))
    second = store.record_validation(_validation(run_id="run-2", passed=True, severity=None, failed_expectations=[]))
    assert first != second
    docs = store.find_validations(upload_id="u1")
    assert [d["_id"] for d in docs] == [first, second]  # oldest first
    latest = store.latest_validations("u1")
    assert latest["rigged_glb_quality"]["_id"] == second
    assert store.latest_validations("u1", run_id="run-1")["rigged_glb_quality"]["_id"] == first


def test_find_validations_filters(store: MetadataStore) -> None:
    store.record_validation(_validation())
    store.record_validation(_validation(upload_id="u2", subject_id="s2", passed=True, severity=None))
    store.record_validation(
        _validation(upload_id="u3", asset_key="mesh", check_name="mesh_quality", severity="WARN", artifact_id="a3")
    )

    def ids(**filters: object) -> list[str]:
        return sorted(d["upload_id"] for d in store.find_validations(**filters))

    assert ids() == ["u1", "u2", "u3"]
    assert ids(asset_key="rigged_glb") == ["u1", "u2"]
    assert ids(asset_key="rigged_glb", passed=False) == ["u1"]
    assert ids(severity="WARN") == ["u3"]
    assert ids(subject_id="s2") == ["u2"]
    assert ids(check_name="mesh_quality") == ["u3"]
    assert ids(artifact_id="a3") == ["u3"]
    assert ids(run_id="run-1") == ["u1", "u2", "u3"]
    assert ids(run_id="nope") == []


def test_time_window_is_one_find(store: MetadataStore, backend: Backend) -> None:
    """"All avatars whose GLB failed validation last week" is one `find` on the collection."""
    store.record_validation(_validation(upload_id="old"))
    now = utcnow()
    store.db["validations"].update_one({"upload_id": "old"}, {"$set": {"created_at": now - timedelta(days=10)}})
    store.record_validation(_validation(upload_id="recent"))
    store.record_validation(_validation(upload_id="recent-ok", passed=True, severity=None))

    week_ago = now - timedelta(days=7)
    helper = store.find_validations(asset_key="rigged_glb", passed=False, since=week_ago)
    assert [d["upload_id"] for d in helper] == ["recent"]
    # the same question asked of the collection directly, from a fresh connection
    fresh = backend.open()
    raw = fresh.db["validations"].find(
        {"asset_key": "rigged_glb", "passed": False, "created_at": {"$gte": week_ago}}
    )
    assert [d["upload_id"] for d in raw] == ["recent"]
    assert [d["upload_id"] for d in store.find_validations(until=week_ago)] == ["old"]


@pytest.mark.parametrize(
    ("passed", "severity"),
    [(True, "ERROR"), (False, None), (False, "FATAL")],
)
def test_record_validation_rejects_inconsistent_severity(store: MetadataStore, passed: bool, severity) -> None:
    with pytest.raises(ValueError, match="severity"):
        store.record_validation(_validation(passed=passed, severity=severity))
    assert store.find_validations() == []


def test_validations_survive_reopen(backend: Backend) -> None:
    first = backend.open()
    vid = first.record_validation(_validation())
    first.close()
    again = backend.open()
    assert [d["_id"] for d in again.find_validations(asset_key="rigged_glb")] == [vid]
