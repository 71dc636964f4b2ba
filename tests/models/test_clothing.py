"""Clothing offsets (SMPL+D) with the real Anny model and synthetic masks of known truth.

The "photo" mask is the silhouette of Anny dressed with known offsets (a loose garment and
hair, half of each vertex's limit) in front of the camera; the fit starts from the naked body
and must recover a surface whose silhouette matches, without touching hands and face.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.body_model import PHENOTYPE_LABELS, anny_topology, load_anny
from models.camera import Camera
from models.clothing import ClothingConfig, evaluate_body, fit_clothing, offset_limits
from models.surface import project_silhouette, silhouette_iou
from models.texture import face_part_labels, part_names

WIDTH, HEIGHT = 512, 768
# Anny's rest frame (Z up, facing -Y) into the OpenCV camera frame, facing the camera
FACING_CAMERA = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


@pytest.fixture(scope="module")
def model():
    return load_anny()


@pytest.fixture(scope="module")
def topo(model):
    return anny_topology(model)


@pytest.fixture(scope="module")
def scene(model, topo):
    """Pose (root in front of the camera, left arm lowered), camera, naked body, limits."""
    names = [n.split(":")[-1] for n in model.bone_labels]
    pose = np.tile(np.eye(4), (len(names), 1, 1))
    pose[0, :3, :3] = FACING_CAMERA
    pose[0, :3, 3] = (0.0, 0.1, 2.8)
    phenotype = {k: 0.5 for k in PHENOTYPE_LABELS}
    camera = Camera.from_focal(1.2 * HEIGHT, WIDTH, HEIGHT)
    body = evaluate_body(model, phenotype, pose, topo["faces"])
    inward, outward = offset_limits(body.rest, body.rest_normals, topo["faces"], topo["uv"], topo["face_uv_idx"])
    return {"pose": pose, "phenotype": phenotype, "camera": camera, "body": body,
            "inward": inward, "outward": outward}  # fmt: skip


def _vertex_parts(topo, parts: tuple[str, ...]) -> np.ndarray:
    names = part_names()
    labels = face_part_labels(topo["uv"], topo["face_uv_idx"])
    faces = topo["faces"][np.isin(labels, [names.index(p) for p in parts])]
    out = np.zeros(int(topo["faces"].max()) + 1, bool)
    out[faces.ravel()] = True
    return out


def test_body_evaluation_is_anny_skinning(model, topo, scene):
    """posed == Anny's own output, and a normal offset moves the posed vertex along posed_dirs."""
    import torch

    with torch.no_grad():
        out = model(pose_parameters=torch.as_tensor(scene["pose"], dtype=torch.float32)[None],
                    phenotype_kwargs=scene["phenotype"])  # fmt: skip
    np.testing.assert_allclose(scene["body"].posed, out["vertices"][0].double().numpy(), atol=1e-5)
    lengths = np.linalg.norm(scene["body"].posed_dirs, axis=1)
    assert np.abs(lengths - 1.0).max() < 0.05  # rigid-ish skinning keeps unit normals near unit


def test_limits_keep_hands_and_face_clean(topo, scene):
    inward, outward = scene["inward"], scene["outward"]
    config = ClothingConfig()
    assert (inward >= 0).all() and (outward >= 0).all()
    assert outward.max() <= max(config.body_out_m, config.legs_out_m, config.scalp_out_m) + 1e-12
    hands = _vertex_parts(topo, ("hand.L", "hand.R"))
    assert outward[hands].max() == 0.0 and inward[hands].max() == 0.0
    # the face: head vertices facing forward, well below the crown
    rest, normals = scene["body"].rest, scene["body"].rest_normals
    head = _vertex_parts(topo, ("head",))
    face = head & (normals[:, 1] < -0.6) & (rest[:, 2] < rest[:, 2].max() - 0.12) & (rest[:, 2] > rest[:, 2].max() - 0.2)
    assert face.sum() > 50 and outward[face].max() == 0.0
    crown = head & (rest[:, 2] > rest[:, 2].max() - 0.03)
    torso = _vertex_parts(topo, ("body",)) & (np.abs(rest[:, 2] - np.median(rest[:, 2]) - 0.3) < 0.1)
    assert outward[crown].min() > 0.05  # room for hair
    assert np.median(outward[torso]) == pytest.approx(config.body_out_m, abs=1e-3)


def test_the_face_pockets_take_no_offset(topo, scene):
    """The undersides of the nose (normals facing down) are face, not scalp: with hair volume
    there they hung as flaps under the nose on real photos."""
    rest, normals = scene["body"].rest, scene["body"].rest_normals
    head = _vertex_parts(topo, ("head",))
    front = rest[head, 1].min()  # the nose tip: Anny faces -Y
    under_nose = head & (np.abs(rest[:, 0]) < 0.02) & (rest[:, 1] < front + 0.03) & (normals[:, 2] < -0.3)
    assert under_nose.sum() >= 5 and scene["outward"][under_nose].max() == 0.0
    back = head & (rest[:, 1] > front + 0.15) & (rest[:, 2] < rest[:, 2].max() - 0.1)
    assert back.sum() > 50 and np.median(scene["outward"][back]) > 0.05  # the back of the head keeps room for hair


def test_recovers_a_clothed_silhouette(model, topo, scene):
    body, camera = scene["body"], scene["camera"]
    truth = 0.5 * scene["outward"]
    dressed = body.posed + truth[:, None] * body.posed_dirs
    mask = project_silhouette(dressed, topo["faces"], camera).astype(np.uint8) * 255
    fit = fit_clothing(model, scene["phenotype"], scene["pose"], camera, mask, topo)
    m = fit.metrics
    assert m["silhouette_iou_naked"] < 0.93
    assert m["silhouette_iou"] > 0.965
    assert m["silhouette_iou"] == pytest.approx(silhouette_iou(fit.posed_vertices, topo["faces"], camera, mask), abs=1e-4)
    s = fit.normal_offsets.astype(np.float64)
    assert (s <= scene["outward"] + 1e-6).all() and (s >= -scene["inward"] - 1e-6).all()
    hands = _vertex_parts(topo, ("hand.L", "hand.R"))
    assert np.abs(s[hands]).max() == 0.0
    # the garment grew the whole cross-section, not just the outline
    torso = _vertex_parts(topo, ("body",))
    assert np.median(s[torso]) > 0.01
    # SMPL+D: rest + D posed by Anny's skinning is the posed clothed surface
    np.testing.assert_allclose(fit.rest_vertices - body.rest, fit.offsets, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(fit.offsets, axis=1), np.abs(s), atol=1e-6)


def test_matching_mask_leaves_the_body_alone(model, topo, scene):
    body, camera = scene["body"], scene["camera"]
    mask = project_silhouette(body.posed, topo["faces"], camera)
    fit = fit_clothing(model, scene["phenotype"], scene["pose"], camera, mask, topo)
    assert fit.metrics["silhouette_iou"] >= fit.metrics["silhouette_iou_naked"] - 0.005
    assert np.percentile(np.abs(fit.normal_offsets), 99) < 0.005


def test_a_thinner_mask_shrinks_within_the_limit(model, topo, scene):
    body, camera = scene["body"], scene["camera"]
    naked = project_silhouette(body.posed, topo["faces"], camera).astype(np.uint8)
    thin = cv2.erode(naked, np.ones((7, 7), np.uint8))
    fit = fit_clothing(model, scene["phenotype"], scene["pose"], camera, thin * 255, topo)
    assert fit.metrics["silhouette_iou"] > fit.metrics["silhouette_iou_naked"]
    assert fit.normal_offsets.min() >= -ClothingConfig().inward_m - 1e-6
    assert fit.normal_offsets.min() < -0.005


def test_disabled_or_empty_mask_gives_the_naked_body(model, topo, scene):
    camera = scene["camera"]
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    for config, m in ((ClothingConfig(), mask), (ClothingConfig(enabled=False), mask + 255)):
        fit = fit_clothing(model, scene["phenotype"], scene["pose"], camera, m, topo, config)
        assert not fit.normal_offsets.any()
        np.testing.assert_allclose(fit.posed_vertices, scene["body"].posed)


def test_deterministic(model, topo, scene):
    body, camera = scene["body"], scene["camera"]
    dressed = body.posed + (0.3 * scene["outward"])[:, None] * body.posed_dirs
    mask = project_silhouette(dressed, topo["faces"], camera)
    a = fit_clothing(model, scene["phenotype"], scene["pose"], camera, mask, topo)
    b = fit_clothing(model, scene["phenotype"], scene["pose"], camera, mask, topo)
    assert np.array_equal(a.normal_offsets, b.normal_offsets)
