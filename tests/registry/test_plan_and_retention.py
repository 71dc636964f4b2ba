"""Reprocess planning from the `artifacts` ledger, and the retention of superseded artifacts,
on the real embedded metadata store and object store (artifact bytes are small stand-ins)."""

from datetime import timedelta

import pytest

from ops.reprocess import plan_reprocess
from ops.retention import purge_superseded, retention_job
from ops.steps import ASSET_MODELS
from orchestration.resources import MetadataStoreResource, ObjectStoreResource
from storage.metadata_store import ArtifactRecord, open_metadata_store, utcnow
from storage.object_store import LocalObjectStore, artifact_key, sha256_hex

ORDER = tuple(ASSET_MODELS)
V1 = {"keypoint_detector": "1", "body_model": "1", "body_fitter": "1", "reconstructor": "1", "rigger": "1"}
PARENTS = {"keypoints": ["photo"], "smplx_params": ["keypoints"], "mesh": ["smplx_params", "photo"],
           "rigged_glb": ["mesh", "smplx_params"]}  # fmt: skip


@pytest.fixture
def stores(tmp_path):
    metadata = open_metadata_store(None, tmp_path / "metadata")
    yield metadata, LocalObjectStore(tmp_path / "objects")
    metadata.close()


def _record(metadata, objects, upload, asset, data: bytes, versions, extra=None, subject="s1") -> str:
    """Write an object and its artifact document the way assets/steps.py does."""
    extra_keys = {}
    for name, blob in (extra or {}).items():
        extra_keys[name] = objects.put_bytes(artifact_key(subject, upload, asset, sha256_hex(blob), "png"), blob).key
    obj = objects.put_bytes(artifact_key(subject, upload, asset, sha256_hex(data), "bin"), data)
    parents = [metadata.current_artifact(upload, p)["_id"] for p in PARENTS.get(asset, [])]
    return metadata.record_artifact(
        ArtifactRecord(
            upload_id=upload, subject_id=subject, asset_key=asset, uri=obj.uri, key=obj.key,
            sha256=obj.sha256, bytes=obj.bytes, code_version="|".join(f"{m}@{versions[m]}" for m in ASSET_MODELS[asset]),
            run_id="run", model_versions={m: versions[m] for m in ASSET_MODELS[asset]},
            parent_ids=parents, extra_files=extra_keys,
        )
    )  # fmt: skip


def _build(metadata, objects, upload, versions=V1, status="ready", subject="s1", tag="") -> dict[str, str]:
    metadata.ensure_subject(subject)
    metadata.create_upload(upload, subject, f"subjects/{subject}/{upload}/raw/x.png", "0")
    ids = {}
    for asset in ORDER:
        extra = {"mask": b"mask-" + upload.encode()} if asset == "keypoints" else None
        ids[asset] = _record(metadata, objects, upload, asset, f"{upload}-{asset}{tag}".encode(), versions, extra, subject)
    metadata.set_upload_status(upload, status)
    return ids


def test_plan_selects_uploads_and_first_affected_asset_from_the_ledger(stores):
    metadata, objects = stores
    _build(metadata, objects, "u_a")
    _build(metadata, objects, "u_b", V1 | {"body_fitter": "2"})  # already rebuilt with fitter 2
    _build(metadata, objects, "u_c", status="erased")
    _build(metadata, objects, "u_d", status="running")

    plan = plan_reprocess(metadata, V1 | {"body_fitter": "2"}, ASSET_MODELS, ORDER)
    assert [(t.upload_id, t.first_asset, t.model_labels()) for t in plan.targets] == [
        ("u_a", "smplx_params", ["body_fitter@1->2"])
    ]
    assert [(s.upload_id, s.reason) for s in plan.skipped] == [("u_c", "upload erased"), ("u_d", "upload in flight")]

    # Two upgrades at once: the earliest affected asset wins, every outdated artifact is listed.
    both = plan_reprocess(metadata, V1 | {"body_fitter": "2", "reconstructor": "2"}, ASSET_MODELS, ORDER)
    firsts = {t.upload_id: t.first_asset for t in both.targets}
    assert firsts == {"u_a": "smplx_params", "u_b": "mesh"}
    assert [o.asset_key for o in both.targets[0].outdated] == ["smplx_params", "mesh"]

    # Restricted to one model, or to one upload.
    only_recon = plan_reprocess(metadata, V1 | {"body_fitter": "2", "reconstructor": "2"}, ASSET_MODELS, ORDER,
                                models=["reconstructor"])  # fmt: skip
    assert {t.upload_id: t.first_asset for t in only_recon.targets} == {"u_a": "mesh", "u_b": "mesh"}
    one = plan_reprocess(metadata, V1 | {"keypoint_detector": "2"}, ASSET_MODELS, ORDER, uploads=["u_b"])
    assert [(t.upload_id, t.first_asset) for t in one.targets] == [("u_b", "keypoints")]
    # Rolling back to fitter 1 makes the upload rebuilt with fitter 2 the outdated one.
    rollback = plan_reprocess(metadata, V1, ASSET_MODELS, ORDER)
    assert [(t.upload_id, t.model_labels()) for t in rollback.targets] == [("u_b", ["body_fitter@2->1"])]
    # Nothing is outdated when production matches what was built.
    assert plan_reprocess(metadata, V1 | {"body_fitter": "2"}, ASSET_MODELS, ORDER, uploads=["u_b"]).targets == ()
    with pytest.raises(ValueError, match="unknown model"):
        plan_reprocess(metadata, V1, ASSET_MODELS, ORDER, models=["texturer"])


def test_retention_deletes_only_expired_unreferenced_superseded_artifacts(stores):
    metadata, objects = stores
    old = _build(metadata, objects, "u_a")
    # Reprocess from smplx_params: three new current docs, three superseded ones.
    new = {a: _record(metadata, objects, "u_a", a, f"u_a-{a}-v2".encode(), V1 | {"body_fitter": "2"})
           for a in ("smplx_params", "mesh")}  # fmt: skip
    # rigged_glb rebuilt by a new rigger version with identical bytes: another code version, but
    # the content-addressed object key is shared with the superseded doc.
    new["rigged_glb"] = _record(metadata, objects, "u_a", "rigged_glb", b"u_a-rigged_glb", V1 | {"rigger": "2"})
    assert new["rigged_glb"] != old["rigged_glb"]
    superseded = {old[a] for a in ("smplx_params", "mesh", "rigged_glb")}
    assert {d["_id"] for d in metadata.artifacts_for_upload("u_a", include_superseded=True)
            if d["superseded_by"]} == superseded  # fmt: skip
    # A current doc whose parent was superseded (e.g. a reprocess that failed midway) keeps it.
    keep_parent = metadata.get_artifact(old["smplx_params"])
    old_smplx_key = keep_parent["key"]

    # Nothing is old enough yet.
    report = purge_superseded(metadata, objects, older_than=timedelta(days=30))
    assert report.artifacts_deleted == [] and objects.exists(old_smplx_key)

    # A dry run 31 days later reports and deletes nothing.
    later = utcnow() + timedelta(days=31)
    dry = purge_superseded(metadata, objects, older_than=timedelta(days=30), now=later, dry_run=True)
    assert sorted(dry.artifacts_deleted) == sorted(superseded)
    assert all(metadata.get_artifact(i) for i in superseded) and objects.exists(old_smplx_key)

    report = purge_superseded(metadata, objects, older_than=timedelta(days=30), now=later)
    assert sorted(report.artifacts_deleted) == sorted(superseded)
    assert not any(metadata.get_artifact(i) for i in superseded)
    assert not objects.exists(old_smplx_key)
    shared_key = metadata.get_artifact(new["rigged_glb"])["key"]
    assert report.objects_kept_shared == [shared_key] and objects.exists(shared_key)
    assert len(report.objects_deleted) == 2 and report.bytes_freed > 0
    # Every current artifact and its objects are intact; the purge is audited.
    for doc in metadata.artifacts_for_upload("u_a"):
        assert objects.exists(doc["key"]) and all(objects.exists(k) for k in doc["extra_files"].values())
    events = [e for e in metadata.audit_for("s1") if e["event"] == "purge_superseded"]
    assert len(events) == 1 and sorted(events[0]["details"]["artifact_ids"]) == sorted(superseded)


def test_retention_keeps_superseded_parents_of_current_artifacts(stores):
    metadata, objects = stores
    old = _build(metadata, objects, "u_b")
    # smplx_params rebuilt, but the run failed before mesh: the current mesh still names the old fit.
    _record(metadata, objects, "u_b", "smplx_params", b"u_b-smplx-v2", V1 | {"body_fitter": "2"})
    report = purge_superseded(metadata, objects, older_than=timedelta(0), now=utcnow() + timedelta(seconds=1))
    assert report.artifacts_deleted == [] and report.artifacts_kept_as_parents == [old["smplx_params"]]
    assert metadata.get_artifact(old["smplx_params"]) is not None


def test_retention_job_runs_in_dagster(stores, tmp_path):
    metadata, objects = stores
    old = _build(metadata, objects, "u_c")
    _record(metadata, objects, "u_c", "rigged_glb", b"u_c-rigged-v2", V1 | {"rigger": "1"} | {"body_model": "1"})
    resources = {
        "metadata": MetadataStoreResource(embedded_dir=str(tmp_path / "metadata")),
        "object_store": ObjectStoreResource(root=str(tmp_path / "objects")),
    }
    config = {"ops": {"purge_superseded_artifacts": {"config": {"older_than_days": 0, "dry_run": False}}}}
    result = retention_job.execute_in_process(run_config=config, resources=resources)
    assert result.success
    summary = result.output_for_node("purge_superseded_artifacts")
    assert summary["artifacts_deleted"] == 1 and summary["objects_deleted"] == 1
    assert metadata.get_artifact(old["rigged_glb"]) is None
