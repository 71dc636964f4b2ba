"""The whole chain through a real Dagster instance, real object store and metadata store (the main
test on both backends: Dagster's storage and MLflow's backend store on sqlite, and on PostgreSQL)."""

import numpy as np
import pygltflib
import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus

from models.gltf_read import read_accessor
from orchestration.app import ASSET_ORDER, ingest_photo, run_avatar_job, summarise
from orchestration.settings import Settings, prepare_environment
from storage.metadata_store import open_metadata_store
from tests.backends.fixtures import BACKENDS, use_backend

PARENTS = {
    "photo": set(),
    "keypoints": {"photo"},
    "smplx_params": {"keypoints"},
    "mesh": {"smplx_params", "photo", "keypoints"},
    "rigged_glb": {"mesh", "smplx_params"},
}


@pytest.fixture
def settings(avatar_home, monkeypatch, request) -> Settings:
    backend = use_backend(getattr(request, "param", "sqlite"), request, monkeypatch)
    settings = Settings.from_env()
    prepare_environment(settings)
    yield settings
    if backend.server is not None:  # the run really went to Postgres
        assert backend.server.execute("SELECT count(*) FROM runs", backend.databases["dagster"]) == [(1,)]
    backend.drop()


@pytest.mark.parametrize("settings", BACKENDS, indirect=True)
def test_photo_to_rigged_glb_through_dagster(settings, standing_photo):
    ingested = ingest_photo(settings, standing_photo.read_bytes(), standing_photo.name, "subject-a")
    run_id = run_avatar_job(settings, ingested.upload_id)

    # Dagster: one successful run for this partition, five materialisations of it.
    instance = DagsterInstance.get()
    run = instance.get_run_by_id(run_id)
    assert run.status == DagsterRunStatus.SUCCESS
    assert run.tags["dagster/partition"] == ingested.upload_id
    assert ingested.upload_id in instance.get_dynamic_partitions("uploads")
    for asset in ASSET_ORDER:
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[ingested.upload_id]), limit=5
        ).records
        assert len(records) == 1, asset
        assert records[0].run_id == run_id
        if asset in ("smplx_params", "mesh"):  # heavy steps: a Dagster Pipes worker process by default
            assert records[0].asset_materialization.metadata["placement"].value == "subprocess"

    # Metadata store: upload ready, five current artifacts with the right parents.
    metadata = open_metadata_store(None, settings.metadata_dir)
    upload = metadata.get_upload(ingested.upload_id)
    assert upload["status"] == "ready" and upload["error"] is None
    docs = {d["asset_key"]: d for d in metadata.artifacts_for_upload(ingested.upload_id)}
    assert set(docs) == set(ASSET_ORDER)
    by_id = {d["_id"]: d["asset_key"] for d in docs.values()}
    for asset, doc in docs.items():
        assert {by_id[p] for p in doc["parent_ids"]} == PARENTS[asset]
        assert doc["run_id"] == run_id and doc["code_version"]
        assert doc["key"].startswith(f"subjects/subject-a/{ingested.upload_id}/{asset}/")
    assert docs["smplx_params"]["model_versions"] == {"body_model": "1", "body_fitter": "1"}
    events = [e["event"] for e in metadata.audit_for("subject-a")]
    assert events.count("ingest") == 1 and events.count("materialise") == 5
    metadata.close()

    # The GLB: one skin with a real skeleton, 4 normalised influences, texture, animations.
    summary = summarise(settings, ingested.upload_id, run_id).to_dict()
    assert summary["status"] == "ready"
    glb_path = summary["artifacts"]["rigged_glb"]["path"]
    gltf = pygltflib.GLTF2().load(glb_path)
    blob = gltf.binary_blob()
    assert len(gltf.skins) == 1 and len(gltf.skins[0].joints) >= 20
    ibm = read_accessor(gltf, blob, gltf.skins[0].inverseBindMatrices)
    assert len(ibm) == len(gltf.skins[0].joints)
    prim = gltf.meshes[0].primitives[0]
    joints = read_accessor(gltf, blob, prim.attributes.JOINTS_0)
    weights = read_accessor(gltf, blob, prim.attributes.WEIGHTS_0)
    assert joints.shape[1] == 4 and joints.max() < len(gltf.skins[0].joints)
    assert np.allclose(weights.sum(axis=1), 1.0, atol=1e-6) and (weights >= 0).all()
    assert len(gltf.images) == 1 and gltf.images[0].mimeType == "image/png"
    image_view = gltf.bufferViews[gltf.images[0].bufferView]
    start = image_view.byteOffset or 0
    assert blob[start : start + 8] == b"\x89PNG\r\n\x1a\n"
    assert len(gltf.animations) >= 1 and "photo_pose" in [a.name for a in gltf.animations]
    positions = read_accessor(gltf, blob, prim.attributes.POSITION)
    assert abs(positions[:, 1].min()) < 1e-3 and 1.3 < positions[:, 1].max() < 2.2  # feet on y=0

    # The mesh artifact is readable by trimesh and overlays the person in the photo.
    import trimesh

    mesh = trimesh.load(summary["artifacts"]["mesh"]["path"], force="mesh")
    assert len(mesh.faces) == 27420 and mesh.visual.uv is not None
    assert summary["metrics"]["smplx_params"]["silhouette_iou"] > 0.6

    # Clothing offsets bring the surface closer to the person mask than the naked fit.
    mesh_metrics = summary["metrics"]["mesh"]
    assert mesh_metrics["silhouette_iou"] > mesh_metrics["silhouette_iou_naked"]
    assert 0.2 < mesh_metrics["texture_coverage"] < 0.7
    # A front + side preview rendered from the GLB is stored next to it.
    metadata = open_metadata_store(None, settings.metadata_dir)
    glb_doc = metadata.current_artifact(ingested.upload_id, "rigged_glb")
    metadata.close()
    assert "preview" in glb_doc["extra_files"]

    # Both GLBs pass the Khronos glTF validator with zero errors.
    from pathlib import Path

    from tests.clients import harness

    harness.assert_valid(Path(glb_path), Path(summary["artifacts"]["mesh"]["path"]))


def test_bad_upload_fails_cleanly_and_keeps_nothing(settings, tmp_path):
    ingested = ingest_photo(settings, b"definitely not a photo", "notes.txt", "subject-b")
    run_id = run_avatar_job(settings, ingested.upload_id)
    instance = DagsterInstance.get()
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE
    summary = summarise(settings, ingested.upload_id, run_id).to_dict()
    assert summary["status"] == "failed"
    assert summary["error"]["code"] == "NOT_AN_IMAGE" and summary["error"]["step"] == "photo"
    assert summary["artifacts"] == {}
    keys = list((settings.objects_dir / "subjects" / "subject-b").rglob("*"))
    assert [p.parent.name for p in keys if p.is_file()] == ["raw"]  # only the upload itself
