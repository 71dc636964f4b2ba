"""Real MediaPipe and real Anny on real photos."""

import numpy as np
import pytest

from models.body_model import anny_topology
from models.errors import ErrorCode, PipelineError
from models.fitting import BodyFit, fit_body, posed_vertices
from models.keypoints import POSE_INDEX, Keypoints, detect_keypoints
from models.photo import normalise_photo


@pytest.fixture(scope="module")
def standing(standing_photo):
    photo = normalise_photo(standing_photo.read_bytes())
    return photo, detect_keypoints(photo.image)


@pytest.fixture(scope="module")
def standing_fit(standing, anny_fitter_body):
    return fit_body(standing[1], anny_fitter_body)


def test_holistic_finds_a_full_body(standing):
    photo, kp = standing
    assert kp.pose.shape == (33, 4) and kp.framing == "full_body"
    assert kp.face is not None and kp.face.shape == (478, 3)
    assert kp.mask.shape == photo.image.shape[:2] and 0.05 < (kp.mask >= 128).mean() < 0.6
    # left shoulder appears on the image right for a person facing the camera
    assert kp.pose[POSE_INDEX["left_shoulder"], 0] > kp.pose[POSE_INDEX["right_shoulder"], 0]
    x0, y0, x1, y1 = kp.person_bbox
    assert 0 <= x0 < x1 <= photo.size[0] and 0 <= y0 < y1 <= photo.size[1]


def test_keypoints_roundtrip_through_json(standing):
    kp = standing[1]
    again = Keypoints.from_dict(kp.to_dict(), kp.mask)
    assert np.allclose(again.pose, kp.pose, atol=1e-3) and again.framing == kp.framing


def test_blank_image_has_no_person():
    with pytest.raises(PipelineError) as info:
        detect_keypoints(np.full((480, 360, 3), 127, dtype=np.uint8))
    assert info.value.code is ErrorCode.NO_PERSON


def test_fit_reprojects_keypoints_and_overlays_the_mask(standing, standing_fit, anny_model, anny_fitter_body):
    _, kp = standing
    fit = standing_fit
    assert fit.metrics["keypoint_reprojection_rel"] < 0.02
    assert 0.7 < fit.metrics["silhouette_iou"] <= 1.0  # the naked body inside a hoodie
    assert set(fit.loss_history) == {"global", "body", "refine", "hands_face"}
    assert all(len(v) > 0 for k, v in fit.loss_history.items() if k != "hands_face")
    assert fit.loss_history["refine"][-1] < fit.loss_history["refine"][0]
    assert set(fit.phenotype) == {"gender", "age", "muscle", "weight", "height", "proportions"}
    assert all(0.0 <= v <= 1.0 for v in fit.phenotype.values())
    vertices = posed_vertices(anny_fitter_body, fit)
    pixels = fit.camera.project(vertices)
    ix = np.clip(pixels[:, 0].astype(int), 0, kp.mask.shape[1] - 1)
    iy = np.clip(pixels[:, 1].astype(int), 0, kp.mask.shape[0] - 1)
    assert (kp.mask[iy, ix] >= 128).mean() > 0.7  # the body lands on the person
    # OpenCV convention: the body is in front of the camera, head above feet (y down)
    assert (vertices[:, 2] > 0).all()
    assert np.allclose(fit.camera.R, np.eye(3)) and fit.camera.K[0, 2] == kp.image_size[0] / 2
    faces = anny_topology(anny_model)["faces"]
    assert faces.shape[1] == 3


def test_fit_is_deterministic_and_serialisable(standing, standing_fit, anny_fitter_body):
    again = fit_body(standing[1], anny_fitter_body)
    assert np.allclose(again.pose_parameters, standing_fit.pose_parameters, atol=1e-5)
    restored = BodyFit.from_dict(standing_fit.to_dict())
    assert restored.camera.image_size == standing_fit.camera.image_size
    assert np.allclose(restored.pose_parameters, standing_fit.pose_parameters, atol=1e-5)
    assert restored.loss_history == standing_fit.loss_history
    assert restored.metrics == standing_fit.metrics and restored.body_model.name == "anny"
    # the serialised parameters rebuild the same body
    assert np.allclose(posed_vertices(anny_fitter_body, restored), posed_vertices(anny_fitter_body, standing_fit), atol=1e-5)
