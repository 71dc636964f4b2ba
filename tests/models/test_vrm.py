"""The VRM export's T-pose rest (models.vrm.rebind_to_t_pose) on a real Anny avatar GLB: the arms
bind horizontal, the mesh is the GLB's own skinning of that pose, and the GLB's clips still
deform the body as they do on the A-pose GLB."""

from __future__ import annotations

import numpy as np
import pytest

from models.body_model import PHENOTYPE_LABELS, load_anny
from models.mixamo_skeleton import bone_directions
from models.rigging import build_rigged_avatar, mesh_edges
from models.vrm import rebind_to_t_pose, to_vrm
from tests.models.test_mixamo_skeleton import _skeleton
from tests.models.test_rigging import ParsedGlb, _animated_world, _png, _primitive, _skin, _test_pose


@pytest.fixture(scope="module")
def glb() -> bytes:
    model = load_anny()
    return build_rigged_avatar(model, {k: 0.5 for k in PHENOTYPE_LABELS}, _test_pose(model), _png()).glb


@pytest.fixture(scope="module")
def glbs(glb) -> tuple[ParsedGlb, ParsedGlb]:
    return ParsedGlb(glb), ParsedGlb(rebind_to_t_pose(glb))


def test_the_arms_bind_horizontal_the_rest_stays(glbs):
    a_pose, t_pose = glbs
    names, _, bind_a = _skeleton(a_pose)
    _, _, bind_t = _skeleton(t_pose)
    da, dt = bone_directions(bind_a, names), bone_directions(bind_t, names)
    for side, sign in (("Left", 1.0), ("Right", -1.0)):
        for bone in ("Arm", "ForeArm", "Hand"):
            assert dt[f"{side}{bone}"] @ [sign, 0.0, 0.0] > np.cos(np.radians(3.0)), (side, bone)
        assert da[f"{side}Arm"][1] < -0.5  # the GLB keeps its A-pose
    for bone in ("Hips", "Spine", "Spine2", "Neck", "Head", "LeftUpLeg", "RightLeg", "LeftShoulder"):
        np.testing.assert_allclose(
            bind_t[names.index(f"mixamorig:{bone}")], bind_a[names.index(f"mixamorig:{bone}")], atol=1e-6
        )


def test_the_t_pose_mesh_is_the_skinned_pose_without_tearing(glbs):
    a_pose, t_pose = glbs
    pa = a_pose.accessor(_primitive(a_pose).attributes.POSITION).astype(np.float64)
    pt = t_pose.accessor(_primitive(t_pose).attributes.POSITION).astype(np.float64)
    # the bind key of every clip skins the T-pose mesh onto itself (inverse binds match)
    positions, skinned = _skin(t_pose, _skeleton(t_pose)[2])
    assert np.abs(skinned - positions).max() < 1e-4
    edges = mesh_edges(a_pose.accessor(_primitive(a_pose).indices).reshape(-1, 3))
    ratio = np.linalg.norm(pt[edges[:, 0]] - pt[edges[:, 1]], axis=1) / np.maximum(
        np.linalg.norm(pa[edges[:, 0]] - pa[edges[:, 1]], axis=1), 1e-6
    )
    assert ratio.max() < 3.0 and ratio.min() > 1 / 3.0
    hands = pt[:, 0].max() - pt[:, 0].min()
    assert hands > 1.3 * (pa[:, 0].max() - pa[:, 0].min())  # arm span: arms out sideways


@pytest.mark.parametrize("clip", ["wave", "walk", "photo_pose"])
def test_the_glb_clips_play_as_before(glbs, clip):
    """Clips hold absolute local rotations: on the re-bound mesh they give the same pose, up to
    the blend of the two skinnings in the crease vertices (millimetres)."""
    a_pose, t_pose = glbs
    key = 1 if clip == "photo_pose" else 8
    _, before = _skin(a_pose, _animated_world(a_pose, clip, key))
    _, after = _skin(t_pose, _animated_world(t_pose, clip, key))
    err = np.linalg.norm(after - before, axis=1)
    assert np.median(err) < 1e-4 and np.percentile(err, 99) < 0.02, (np.median(err), np.percentile(err, 99))


def test_the_vrm_carries_the_t_pose(glb):
    vrm = ParsedGlb(to_vrm(glb))
    names, _, bind = _skeleton(vrm)
    assert bone_directions(bind, names)["LeftArm"] @ [1.0, 0.0, 0.0] > 0.99
    assert "VRMC_vrm" in vrm.gltf.extensionsUsed
