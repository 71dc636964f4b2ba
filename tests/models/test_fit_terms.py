"""The fit's data terms, priors and the fast Anny evaluator (real Anny, no mocks)."""

import numpy as np
import pytest
import torch

from models.body_interface import ROLES
from models.body_model import AnnyBody, anny_body, anny_face_vertex_ids
from models.landmarks import BODY_LABELS, FACE_LABELS
from models.priors import (
    SilhouetteTerm,
    gmof,
    hinge_prior,
    joint_limit_prior,
    keypoint_term,
    pose_prior,
    shape_prior,
)


@pytest.fixture(scope="module")
def body(anny_model) -> AnnyBody:
    return anny_body()


def test_gmof_is_quadratic_near_zero_and_saturates():
    r2 = torch.tensor([1e-6, 1e-4, 1.0, 1e6])
    value = gmof(r2, rho=0.1)
    assert torch.allclose(value[:2], r2[:2], rtol=0.02)  # ~r^2 for small residuals
    assert 0.99 * 0.1**2 < value[3] <= 0.1**2 * (1 + 1e-6)  # bounded by rho^2
    assert torch.all(value[1:] > value[:-1])  # monotone


def test_keypoint_term_weights_and_normalises():
    targets = torch.tensor([[10.0, 10.0], [50.0, 50.0]])
    projected = targets + torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    weights = torch.tensor([1.0, 1.0])
    small = keypoint_term(projected, targets, weights, scale=100.0, rho=1.0)
    assert small == pytest.approx((0.02**2) / (0.02**2 + 1.0), rel=1e-5)
    # a zero weight ignores the point, a larger scale shrinks the residual
    assert keypoint_term(projected, targets, torch.tensor([0.0, 1.0]), 100.0, 1.0) == 0
    assert keypoint_term(projected, targets, weights, scale=200.0, rho=1.0) < small


def test_pose_shape_and_limit_priors():
    rotvec = torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert pose_prior(rotvec, torch.tensor([1.0, 2.0])) == pytest.approx(0.01 + 2.0)
    assert shape_prior(torch.tensor([1.0, -2.0])) == pytest.approx(5.0)
    limits = torch.tensor([0.5, 0.5])
    assert joint_limit_prior(rotvec, limits) == pytest.approx(0.25, rel=1e-4)  # only the 1 rad joint
    assert joint_limit_prior(rotvec * 0.1, limits) == 0


def test_hinge_prior_bends_one_way_about_one_axis():
    axes = torch.tensor([[1.0, 0.0, 0.0]])
    joints = torch.tensor([0])

    def cost(rotvec):
        return float(hinge_prior(torch.tensor([rotvec]), joints, axes))

    assert cost([0.8, 0.0, 0.0]) == 0  # natural flexion is free
    assert cost([-0.8, 0.0, 0.0]) > 1.0  # hyper-extension is expensive
    assert cost([3.0, 0.0, 0.0]) > 0  # beyond the flexion limit
    assert 0 < cost([0.0, 0.3, 0.0]) < cost([-0.3, 0.0, 0.0])  # off-axis costs, less than wrong-way


def test_silhouette_term_pulls_points_into_the_mask_and_covers_it():
    mask = np.zeros((100, 80), np.uint8)
    mask[20:80, 20:60] = 255
    term = SilhouetteTerm(mask, scale=60.0, rho=0.05)
    inside = torch.tensor([[30.0, 30.0], [50.0, 70.0]])
    outside = torch.tensor([[30.0, 30.0], [75.0, 70.0]])  # 15 px right of the mask
    off_image = torch.tensor([[30.0, 30.0], [500.0, 70.0]])  # unknown territory: free
    assert float(term.outside(inside)) == pytest.approx(0.0, abs=1e-4)
    assert float(term.outside(outside)) > 0.01
    assert float(term.outside(off_image)) == pytest.approx(0.0, abs=1e-4)
    # points spread over the whole rectangle cover its contour better than a cluster
    ys, xs = np.mgrid[20:80:4, 20:60:4]
    spread = torch.tensor(np.stack([xs.ravel(), ys.ravel()], 1), dtype=torch.float32)
    cluster = torch.tensor([[40.0, 50.0]] * 10)
    assert float(term.coverage(spread)) < float(term.coverage(cluster))
    # differentiable: the gradient moves an outside point towards the mask
    point = outside.clone().requires_grad_(True)
    term.outside(point).backward()
    assert point.grad[1, 0] > 0  # increasing x moves away: gradient points outward, descent inward


def test_silhouette_contour_ignores_the_image_border():
    mask = np.zeros((100, 80), np.uint8)
    mask[50:, 10:70] = 255  # a person cut by the bottom edge
    term = SilhouetteTerm(mask, scale=50.0)
    assert (term.contour[:, 1] < 97).all()


def test_fast_evaluator_matches_annys_own_forward(body, anny_model):
    import anny

    torch.manual_seed(1)
    state = body.initial_state()
    state.shape = torch.randn(6)
    state.joint_rotvec = torch.randn(len(body.joint_names), 3) * 0.3
    state.root_rotvec = torch.randn(3) * 0.2
    state.translation = torch.tensor([0.1, -0.2, 3.0])
    points = body.points(state, with_vertices=True)
    regressor = anny.KeypointsRegressor.coco(anny_model, labels=list(BODY_LABELS))
    with torch.no_grad():
        out = anny_model(pose_parameters=body.pose_parameters(state), phenotype_kwargs=torch.sigmoid(state.shape)[None])
    assert torch.allclose(points.body, regressor(out)[0], atol=1e-4)  # < 0.1 mm
    assert torch.allclose(points.vertices, out["vertices"][0, body.silhouette_vertex_ids], atol=1e-5)
    ids = anny_face_vertex_ids(anny_model)
    assert torch.allclose(points.face, out["vertices"][0, [ids[k] for k in FACE_LABELS]], atol=1e-5)
    wrist = list(body.bone_names).index("mixamorig:LeftHand")
    assert torch.allclose(points.hands[0, 0], out["bone_poses"][0, wrist, :3, 3], atol=1e-5)
    # the cached-shape path is the same function
    cached = body.points(state, body.shape_cache(state.shape))
    assert torch.allclose(cached.body, points.body, atol=1e-6)
    # and serialisation round-trips
    again = body.points(body.deserialise(body.serialise(state)))
    assert torch.allclose(again.body, points.body, atol=1e-4)


def test_every_anny_bone_has_a_role(body):
    assert set(body.joint_roles) <= set(ROLES) and len(body.joint_roles) == 51
    assert body.joint_roles.count("finger") == 30 and body.joint_roles.count("lower_leg") == 2


def test_hinge_axes_flex_elbows_forward_and_knees_backward(body):
    axes = body.hinge_axes()
    names = list(body.joint_names)
    rest = body.initial_state()
    rest.base_rotation = torch.eye(3)  # Anny's own frame: facing -Y
    base = body.points(rest).body
    for joint, end, forward in (("LeftForeArm", "left_wrist", True), ("LeftLeg", "left_ankle", False)):
        j = names.index(f"mixamorig:{joint}")
        bent = body.initial_state()
        bent.base_rotation = torch.eye(3)
        bent.joint_rotvec[j] = torch.as_tensor(axes[j] * 0.8, dtype=torch.float32)
        moved = body.points(bent).body[BODY_LABELS.index(end)] - base[BODY_LABELS.index(end)]
        assert (moved[1] < -0.02) if forward else (moved[1] > 0.02)  # -Y is Anny's front


def test_face_points_sit_where_a_face_has_them(anny_model):
    ids = anny_face_vertex_ids(anny_model)
    with torch.no_grad():
        rest = anny_model(phenotype_kwargs={})["rest_vertices"][0].numpy()
    p = {k: rest[v] for k, v in ids.items()}
    assert p["nose_tip"][1] < p["chin"][1] and p["nose_tip"][1] < p["left_eye_inner"][1]  # nose in front
    assert p["chin"][2] < p["mouth_left"][2] < p["nose_tip"][2] < p["left_eye_outer"][2]  # top to bottom
    assert p["left_eye_outer"][0] > p["left_eye_inner"][0] > 0 > p["right_eye_inner"][0] > p["right_eye_outer"][0]
    assert 0.04 < p["mouth_left"][0] - p["mouth_right"][0] < 0.08


def test_fit_config_reads_registry_parameters():
    from models.fitting import FitConfig

    params = FitConfig().to_params()
    assert isinstance(params["iters"], list)  # JSON-ready
    config = FitConfig.from_params(params)
    assert config == FitConfig() and isinstance(config.iters, tuple)
    with pytest.raises(TypeError, match="itres"):
        FitConfig.from_params({"itres": [1, 2, 3, 4]})
