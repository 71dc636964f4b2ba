"""The ARKit expression fit (models/expression.py) on Anny's real facial targets, and on the
face landmarks MediaPipe finds in development photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.body_model import anny_topology, load_anny
from models.expression import (
    FITTED,
    LANDMARKS,
    anny_face_points,
    anny_facial_targets,
    apply_expression,
    fit_anny_expression,
    fit_expression,
    posed_expression_offsets,
)
from models.texture import face_part_labels, part_names
from tests.conftest import SHARED_PHOTOS


@pytest.fixture(scope="module")
def anny():
    model = load_anny()
    topo = anny_topology(model)
    with torch.no_grad():
        rest = model(pose_parameters=None, phenotype_kwargs=None)["rest_vertices"][0].numpy().astype(np.float64)
    targets = anny_facial_targets(model)
    labels = face_part_labels(topo["uv"], topo["face_uv_idx"])
    return model, rest, targets, anny_face_points(rest, topo["faces"], labels, part_names(), targets)


def test_targets_are_the_52_arkit_shapes_on_anny_vertices(anny):
    _, rest, targets, _ = anny
    assert len(targets.names) == 52 and targets.names[0] == "browDownLeft" and "jawOpen" in targets.names
    assert targets.offsets.shape == (52, len(rest), 3)
    jaw = targets.offsets[targets.names.index("jawOpen")]
    moved = np.linalg.norm(jaw, axis=1) > 0.005
    assert moved.any() and (jaw[moved, 2] < 0).mean() > 0.9  # the jaw drops (Anny is Z up)
    blink = np.linalg.norm(targets.offsets[targets.names.index("eyeBlinkLeft")], axis=1)
    assert rest[blink.argmax(), 0] > 0.02  # ARKit's and Anny's left: the subject's, +X
    assert (blink * rest[:, 0]).sum() / blink.sum() > 0.015


def test_face_points_are_where_they_belong(anny):
    _, rest, _, index = anny
    p = {k: rest[v] for k, v in index.items()}
    assert set(index) == set(LANDMARKS)
    for side, sign in (("L", 1), ("R", -1)):
        assert sign * p[f"mouth_corner.{side}"][0] > 0.01
        assert p[f"lid_upper.{side}"][2] > p[f"lid_lower.{side}"][2]
        assert sign * (p[f"eye_outer.{side}"][0] - p[f"eye_inner.{side}"][0]) > 0.015
        assert p[f"brow_mid.{side}"][2] > p[f"lid_upper.{side}"][2]
    assert p["lid_upper.L"][2] > p["nose_tip"][2] > p["lip_upper_inner"][2] >= p["lip_lower_inner"][2] > p["chin"][2]
    assert p["nose_tip"][1] == min(v[1] for v in p.values())  # most forward (Anny faces -Y)


def _landmarks_of(vertices: np.ndarray, index: dict[str, int]) -> np.ndarray:
    """A 478-point landmark array (pixels, y down) of Anny's points seen from the front: the
    subject's left (+X) on the image right."""
    out = np.zeros((478, 3))
    for name, i in LANDMARKS.items():
        x, z = vertices[index[name], 0], vertices[index[name], 2]
        out[i] = (500.0 + 4000.0 * x, 500.0 - 4000.0 * z, 0.0)
    return out


def test_weights_are_recovered_from_an_expressive_anny(anny):
    _, rest, targets, index = anny
    truth = {"jawOpen": 0.6, "mouthSmileRight": 0.5, "browInnerUp": 1.0}
    landmarks = _landmarks_of(apply_expression(rest, targets, truth), index)
    fit = fit_expression(landmarks, rest, targets, index)
    assert set(fit.weights) == set(targets.names)
    assert all(0.0 <= w <= 1.0 for w in fit.weights.values())
    assert abs(fit.weights["jawOpen"] - 0.6) < 0.2
    assert fit.weights["mouthSmileRight"] > fit.weights["mouthSmileLeft"] + 0.2
    # brows are weighted down and dead-zoned (their height is mostly who the person is): a full
    # raise, and only its sign
    assert fit.weights["browInnerUp"] > max(fit.weights["browDownLeft"], fit.weights["browDownRight"])
    assert fit.residual < 0.08  # the dead zones (calibrate_weights) trade a little misfit for neutral faces


def test_no_face_gives_the_neutral_expression(anny):
    _, rest, targets, index = anny
    fit = fit_expression(None, rest, targets, index)
    assert set(fit.weights) == set(targets.names) and not any(fit.weights.values())


def test_posed_offsets_follow_the_head_rotation(anny):
    _, rest, targets, _ = anny
    angle = np.radians(30)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    posed = rest @ rot.T + [0.1, 2.0, 0.3]
    offsets = posed_expression_offsets(rest, posed, targets, {"jawOpen": 1.0})
    expected = targets.offsets[targets.names.index("jawOpen")] @ rot.T
    np.testing.assert_allclose(offsets, expected, atol=1e-9)


@pytest.mark.skipif(not SHARED_PHOTOS.is_dir(), reason="development photos not present")
def test_open_and_closed_mouths_on_real_photos(anny):
    """fullbody_01: the mouth is open; halfbody_01: closed. The fitted Anny agrees."""
    from models.expression import anny_points, face_features
    from models.keypoints import DetectorConfig, detect_keypoints
    from models.photo import normalise_photo

    model, rest, targets, index = anny
    opening = {}
    for name in ("fullbody_01.png", "halfbody_01.png"):
        photo = normalise_photo((SHARED_PHOTOS / name).read_bytes())
        face = detect_keypoints(photo.image, DetectorConfig()).face
        assert face is not None
        fit = fit_anny_expression(model, {}, face)
        assert set(FITTED) <= set(fit.weights)
        moved = apply_expression(rest, targets, fit.weights)
        opening[name] = face_features(anny_points(moved, index))["mouth_open"]
    assert opening["fullbody_01.png"] > 0.12
    assert opening["halfbody_01.png"] < 0.06


def _photo_fit(model, name: str):
    from models.keypoints import DetectorConfig, detect_keypoints
    from models.photo import normalise_photo

    photo = normalise_photo((SHARED_PHOTOS / name).read_bytes())
    face = detect_keypoints(photo.image, DetectorConfig()).face
    assert face is not None, name
    return fit_anny_expression(model, {}, face).weights


EXPRESSIVE = ("jawOpen", "mouthClose", "mouthSmileLeft", "mouthSmileRight", "eyeBlinkLeft", "eyeBlinkRight")


@pytest.mark.skipif(not SHARED_PHOTOS.is_dir(), reason="development photos not present")
def test_neutral_faces_are_not_given_an_expression(anny):
    """Neutral, closed-mouth development photos (fullbody_08 looks down, so it may blink): no
    pucker, frown or mouth pulled aside - before calibration fullbody_08 had mouthPucker 0.42
    and mouthLeft 0.28. A turned head (halfbody_05, three-quarter view) is left neutral."""
    model = anny[0]
    for name in ("fullbody_08.png", "halfbody_01.png", "multi_01.jpg", "occlusion_02.jpg", "halfbody_05.png"):
        weights = _photo_fit(model, name)
        identity = {k: v for k, v in weights.items() if k not in EXPRESSIVE + ("browInnerUp",) and v > 0.1}
        assert not identity, (name, identity)
        assert weights["browInnerUp"] < 0.2, name
        assert max(weights["mouthSmileLeft"], weights["mouthSmileRight"]) < 0.1, name  # the jaw: see above


@pytest.mark.skipif(not SHARED_PHOTOS.is_dir(), reason="development photos not present")
def test_smiles_and_laughs_still_show(anny):
    model = anny[0]
    smile = _photo_fit(model, "halfbody_02.jpg")  # broad smile, teeth showing
    assert max(smile["mouthSmileLeft"], smile["mouthSmileRight"]) > 0.1 and smile["jawOpen"] > 0.2
    laugh = _photo_fit(model, "child_02.jpg")  # laughing, mouth wide open
    assert laugh["jawOpen"] > 0.5 and max(laugh["mouthSmileLeft"], laugh["mouthSmileRight"]) > 0.1
