"""The Pipes worker run for real: a Dagster asset materialised in a real instance launches
`python -m ops.worker` through `PipesSubprocessClient` (ComputeLauncherResource, mode
"subprocess"); the worker reads real MediaPipe keypoints from the object store, runs the
body fit / mesh reconstruction with the real models, writes the outputs, and reports back."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from dagster import (
    AssetExecutionContext,
    Config,
    DagsterInstance,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    materialize,
)

from models.errors import PipelineError
from ops.steps import StepRequest, StepResult
from orchestration.compute import ComputeLauncherResource
from storage.object_store import LocalObjectStore
from tests.ops.inputs import (
    RealInputs,
    invisible_keypoints,
    quick_params,
    real_inputs,
    store_fit_inputs,
    store_mesh_inputs,
)


class StepRun(Config):
    request_json: str


@asset
def heavy_step(context: AssetExecutionContext, config: StepRun, compute: ComputeLauncherResource) -> MaterializeResult:
    """Test-only asset: what the avatar assets do around the launcher, minus the metadata store."""
    request = StepRequest.from_dict(json.loads(config.request_json))
    try:
        result, worker_metadata = compute.run_step(context, request)
    except PipelineError as exc:
        raise Failure(description=exc.message, metadata={"error_code": exc.code.value}) from exc
    return MaterializeResult(
        metadata={
            **worker_metadata,
            "placement": compute.placement(request.step),
            "result": MetadataValue.json(result.to_dict()),
            "preview_bytes": len(result.preview_png or b""),
        }
    )


@pytest.fixture(scope="module")
def inputs(standing_photo: Path) -> RealInputs:
    return real_inputs(standing_photo)


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


def _request(store: LocalObjectStore, step: str, keys: dict[str, str]) -> StepRequest:
    return StepRequest(
        step=step,
        upload_id="u_test",
        subject_id="s_test",
        inputs=keys,
        params=quick_params(),
        object_store={"kind": "local", "root": str(store.root)},
    )


def _materialize(launcher: ComputeLauncherResource, request: StepRequest):
    instance = DagsterInstance.ephemeral()
    result = materialize(
        [heavy_step],
        instance=instance,
        resources={"compute": launcher},
        run_config={"ops": {"heavy_step": {"config": {"request_json": json.dumps(request.to_dict())}}}},
        raise_on_error=False,
    )
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    return result, logs


def _metadata(result) -> dict:
    (mat,) = result.asset_materializations_for_node("heavy_step")
    return {k: v.value for k, v in mat.metadata.items()}


def _failure_metadata(result) -> dict:
    failure = next(e for e in result.all_events if e.is_step_failure)
    return failure.step_failure_data


def test_fit_runs_in_the_pipes_worker_and_matches_in_process(store, inputs) -> None:
    request = _request(store, "smplx_params", store_fit_inputs(store, "s_test", "u_test", inputs))

    remote, logs = _materialize(ComputeLauncherResource(mode="subprocess"), request)

    assert remote.success
    meta = _metadata(remote)
    assert meta["placement"] == "subprocess" and meta["worker"] == "ops.worker"
    assert meta["device"] == "cpu"  # no GPU here; the same worker picks CUDA when present
    assert 0 < meta["metric/keypoint_reprojection_rel"] < 0.2
    worker_result = StepResult.from_dict(meta["result"])
    assert worker_result.key.startswith("subjects/s_test/u_test/smplx_params/")
    assert meta["object"] == worker_result.key.removeprefix("subjects/s_test/")  # no subject id in Dagster
    stored = store.stat(worker_result.key)
    assert stored.sha256 == meta["sha256"] == worker_result.sha256
    fit = json.loads(store.get_bytes(worker_result.key))
    assert len(fit["pose_parameters"]) == len(fit["bone_names"]) and fit["camera"]["K"]
    assert fit["config"]["iters"] == quick_params()["body_fitter"]["iters"]  # the params travelled
    assert any("worker: step smplx_params for upload u_test on cpu" in line for line in logs)
    assert any("compute: step smplx_params runs subprocess" in line for line in logs)

    # The in-process path runs the same function on the same inputs: the same (seeded) fit.
    local, local_logs = _materialize(ComputeLauncherResource(mode="inprocess"), request)
    assert local.success
    local_meta = _metadata(local)
    assert local_meta["placement"] == "inprocess" and "worker" not in local_meta
    local_fit = json.loads(store.get_bytes(local_meta["result"]["key"]))
    assert local_fit["phenotype"] == fit["phenotype"]
    assert np.allclose(local_fit["pose_parameters"], fit["pose_parameters"], atol=1e-5)
    assert not any("worker:" in line for line in local_logs)


def test_mesh_runs_in_the_pipes_worker(store, inputs) -> None:
    fit = _request(store, "smplx_params", store_fit_inputs(store, "s_test", "u_test", inputs))
    fit_result, _ = _materialize(ComputeLauncherResource(mode="inprocess"), fit)
    fit_key = _metadata(fit_result)["result"]["key"]
    request = _request(store, "mesh", store_mesh_inputs(store, "s_test", "u_test", inputs, fit_key))

    result, _ = _materialize(ComputeLauncherResource(mode="subprocess"), request)

    assert result.success
    meta = _metadata(result)
    assert meta["placement"] == "subprocess" and meta["metric/texture_size"] == 256
    mesh = trimesh.load(io.BytesIO(store.get_bytes(meta["result"]["key"])), file_type="glb", force="mesh")
    assert len(mesh.faces) == meta["metric/face_count"] > 20_000
    extra = meta["result"]["extra_files"]
    assert set(extra) == {"texture", "overlay", "offsets"}
    assert all(store.exists(key) for key in extra.values())
    assert meta["preview_bytes"] > 1000  # thumbnailed from the stored overlay after the worker ran


def test_bad_input_comes_back_as_a_typed_error_and_writes_nothing(store, inputs) -> None:
    bad = RealInputs(inputs.photo_png, invisible_keypoints(inputs.keypoints_json), inputs.mask_png)
    request = _request(store, "smplx_params", store_fit_inputs(store, "s_test", "u_bad", bad))

    result, logs = _materialize(ComputeLauncherResource(mode="subprocess"), request)

    assert not result.success
    failure = _failure_metadata(result)
    assert failure.user_failure_data.metadata["error_code"].value == "FIT_FAILED"
    assert "too few body keypoints" in failure.user_failure_data.description
    assert any("worker: FIT_FAILED" in line for line in logs)
    assert list(store.list_keys("subjects/s_test/u_bad/smplx_params/")) == []


def test_worker_crash_fails_the_step(store, inputs) -> None:
    keys = store_fit_inputs(store, "s_test", "u_test", inputs)
    keys["keypoints"] = "subjects/s_test/u_test/keypoints/0000000000000000.json"  # no such object
    result, logs = _materialize(ComputeLauncherResource(mode="subprocess"), _request(store, "smplx_params", keys))
    assert not result.success
    assert "External execution process failed with code 1" in _failure_metadata(result).error.to_string()
    assert any("external process pipes closed with exception" in line for line in logs)
    assert list(store.list_keys("subjects/s_test/u_test/smplx_params/")) == []


def test_light_steps_stay_in_process(store, inputs) -> None:
    launcher = ComputeLauncherResource(mode="subprocess", heavy_steps=["mesh"])
    assert launcher.placement("mesh") == "subprocess" and launcher.placement("smplx_params") == "inprocess"
    request = _request(store, "smplx_params", store_fit_inputs(store, "s_test", "u_test", inputs))
    result, logs = _materialize(launcher, request)
    assert result.success and _metadata(result)["placement"] == "inprocess"
    assert not any("worker:" in line for line in logs)
    assert ComputeLauncherResource(mode="inprocess").placement("mesh") == "inprocess"


def test_worker_refuses_to_run_outside_pipes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ops.worker"], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "must be launched by Dagster Pipes" in done.stderr


def test_every_step_can_leave_the_process(store, standing_photo) -> None:
    """Where a step runs is configuration for all five: the photo and keypoints steps, which
    run in-process by default, run in the Pipes worker when `heavy_steps` names them, and give
    the same bytes as in-process."""
    from ops.steps import RAW
    from storage.object_store import raw_upload_key, sha256_hex

    raw = standing_photo.read_bytes()
    raw_key = store.put_bytes(raw_upload_key("s_test", "u_test", "png", sha256_hex(raw)), raw).key
    outside = ComputeLauncherResource(mode="subprocess", heavy_steps=["photo", "keypoints"])
    inside = ComputeLauncherResource(mode="inprocess")

    photo, _ = _materialize(outside, _request(store, "photo", {RAW: raw_key}))
    assert photo.success
    meta = _metadata(photo)
    assert meta["placement"] == "subprocess" and meta["worker"] == "ops.worker"
    assert meta["metric/width"] > 0 and meta["metric/original_format"] == "PNG"
    photo_key = meta["result"]["key"]
    local_photo, _ = _materialize(inside, _request(store, "photo", {RAW: raw_key}))
    assert _metadata(local_photo)["result"]["sha256"] == meta["sha256"]  # the same normalised PNG

    keypoints, _ = _materialize(outside, _request(store, "keypoints", {"photo": photo_key}))
    assert keypoints.success
    kp_meta = _metadata(keypoints)
    assert kp_meta["placement"] == "subprocess" and kp_meta["metric/people_count"] == 1
    assert set(kp_meta["result"]["extra_files"]) == {"mask"}
    assert json.loads(store.get_bytes(kp_meta["result"]["key"]))["pose"]
