"""The SMPL-X path: the real `smplx` loader on a small SMPL-X-format file the test writes."""

import numpy as np
import pytest
import torch

from models.body_interface import ROLES
from models.body_model import configured_body_model_name, load_body_model
from models.fitting import BodyFit, fit_body, fitted_state, posed_vertices
from models.smplx_model import SmplxBody, load_smplx_body, resolve_model_file, write_tiny_smplx_model


@pytest.fixture(scope="module")
def smplx_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("smplx_models")
    write_tiny_smplx_model(root / "smplx" / "SMPLX_NEUTRAL.npz")  # the layout smplx.create expects
    return root


@pytest.fixture(scope="module")
def tiny(smplx_dir) -> SmplxBody:
    return load_smplx_body(str(smplx_dir))


def test_tiny_file_has_the_smplx_layout(smplx_dir):
    data = np.load(resolve_model_file(smplx_dir))
    v = data["v_template"].shape[0]
    assert data["shapedirs"].shape == (v, 3, 20) and data["posedirs"].shape == (v, 3, 486)
    assert data["J_regressor"].shape == (55, v) and data["weights"].shape == (v, 55)
    assert data["kintree_table"].shape == (2, 55) and data["f"].shape[1] == 3
    assert data["lmk_faces_idx"].shape == (51,) and data["lmk_bary_coords"].shape == (51, 3)
    assert data["hands_componentsl"].shape == (45, 45) and data["hands_meanr"].shape == (45,)


def test_loader_builds_smplx_and_restores_the_vertex_ids(tiny):
    from smplx.vertex_ids import vertex_ids

    assert vertex_ids["smplx"]["nose"] == 9120  # the patch for the small mesh was undone
    assert tiny.info.name == "smplx" and len(tiny.joint_names) == 52
    assert set(tiny.joint_roles) <= set(ROLES) and sorted(tiny.hinge_axes()) == [3, 4, 17, 18]
    assert tiny.faces.shape[1] == 3 and tiny.faces.max() < 400
    state = tiny.initial_state()
    state.translation = torch.tensor([0.0, 0.0, 3.0])
    points = tiny.points(state, with_vertices=True)
    assert points.body.shape == (23, 3) and points.hands.shape == (2, 21, 3) and points.face.shape == (8, 3)
    # facing the camera, upright: head above the feet in OpenCV's y-down frame, subject's left on +x
    nose, ankle = points.body[0], points.body[15]
    assert nose[1] < ankle[1] and points.body[5, 0] > points.body[6, 0]
    # the nose is the file's own landmark vertex, carried by the head
    assert float(points.body[0, 2]) < 3.0  # in front of the pelvis, towards the camera
    assert tiny.rest_height(torch.zeros(10)) == pytest.approx(1.7, abs=0.05)
    taller = torch.zeros(10)
    taller[0] = 2.0
    assert tiny.rest_height(taller) > tiny.rest_height(torch.zeros(10))


def test_parameters_round_trip(tiny):
    torch.manual_seed(0)
    state = tiny.initial_state()
    state.joint_rotvec = torch.randn(len(tiny.joint_names), 3) * 0.2
    state.shape = torch.randn(10) * 0.5
    state.root_rotvec = torch.tensor([0.1, 0.2, 0.0])
    state.translation = torch.tensor([0.1, 0.0, 3.0])
    params = tiny.serialise(state)
    assert set(params) >= {"betas", "global_orient", "transl", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose"}
    assert np.asarray(params["body_pose"]).shape == (21, 3)
    again = tiny.points(tiny.deserialise(params)).body
    assert torch.allclose(again, tiny.points(state).body, atol=1e-4)


def test_fitter_recovers_a_known_smplx_pose(tiny):
    from models.camera import Camera
    from models.surface import project_silhouette
    from models.synthetic import keypoints_from_points

    state = tiny.initial_state()
    names = list(tiny.joint_names)
    state.joint_rotvec[names.index("left_shoulder")] = torch.tensor([0.0, 0.0, -0.6])
    state.joint_rotvec[names.index("right_elbow")] = torch.tensor([0.0, 0.8, 0.0])
    state.root_rotvec = torch.tensor([0.0, 0.3, 0.0])
    state.translation = torch.tensor([0.0, -0.2, 3.2])
    camera = Camera.from_focal(1.2 * 640, 480, 640)
    mask = project_silhouette(tiny.posed_vertices(state), tiny.faces, camera)
    keypoints = keypoints_from_points(tiny, state, camera, mask)
    fit = fit_body(keypoints, tiny)
    assert fit.body_model.name == "smplx" and fit.pose_parameters is None and fit.phenotype == {}
    assert fit.metrics["keypoint_reprojection_rel"] < 0.01
    restored = BodyFit.from_dict(fit.to_dict())
    assert restored.parameters == fit.parameters
    vertices = posed_vertices(tiny, restored)
    assert np.allclose(vertices, tiny.posed_vertices(fitted_state(tiny, fit)), atol=1e-5)


def test_pipeline_uses_smplx_when_configured(smplx_dir):
    from ops.steps import WorkerRuntime
    from orchestration.config import load_config

    assert configured_body_model_name(WorkerRuntime.from_config(load_config({})).smplx_model_dir) == "anny"
    runtime = WorkerRuntime.from_config(load_config({"SMPLX_MODEL_DIR": str(smplx_dir)}))
    assert configured_body_model_name(runtime.smplx_model_dir) == "smplx"
    assert load_body_model(runtime.smplx_model_dir).info.name == "smplx"


def test_missing_smplx_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="SMPLX_NEUTRAL.npz"):
        resolve_model_file(tmp_path)
