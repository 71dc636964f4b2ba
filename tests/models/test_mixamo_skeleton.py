"""The avatar's skeleton follows Mixamo's convention, checked the way clients use it: X Bot's
T-pose applied by bone name to the GLB's own nodes (real Anny, real GLB)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from models.body_model import PHENOTYPE_LABELS, anny_topology, load_anny
from models.mixamo_skeleton import (
    END_BONES,
    EYE_BONES,
    bone_directions,
    extend_pose,
    posed_world,
    reframe_world,
    short_name,
    xbot_bind_rotations,
    xbot_parents,
    xbot_tpose,
)
from models.rigging import (
    _apply,
    bone_hierarchy,
    build_rigged_avatar,
    canonical_transform,
    evaluate_anny,
    export_skin_weights,
    linear_blend_skinning,
    mixamo_bind,
)
from tests.models.test_rigging import ParsedGlb, _png, _primitive, _test_pose


@pytest.fixture(scope="module")
def model():
    return load_anny()


@pytest.fixture(scope="module", params=[0.5, 0.9], ids=["average", "tall-heavy"])
def phenotype(request):
    return {k: request.param for k in PHENOTYPE_LABELS}


@pytest.fixture(scope="module")
def parsed(model, phenotype) -> ParsedGlb:
    return ParsedGlb(build_rigged_avatar(model, phenotype, _test_pose(model), _png()).glb)


def _skeleton(parsed: ParsedGlb) -> tuple[list[str], list[int], np.ndarray]:
    """Names, parents and bind world matrices read from the GLB's joint nodes."""
    gltf = parsed.gltf
    joints = gltf.skins[0].joints
    parent_node = {c: p for p, n in enumerate(gltf.nodes) for c in (n.children or [])}
    parents = [joints.index(parent_node[j]) if j in parent_node else -1 for j in joints]
    world = np.tile(np.eye(4), (len(joints), 1, 1))
    for i, j in enumerate(joints):
        local = np.eye(4)
        local[:3, :3] = Rotation.from_quat(gltf.nodes[j].rotation).as_matrix()
        local[:3, 3] = gltf.nodes[j].translation
        world[i] = local if parents[i] < 0 else world[parents[i]] @ local
    return [gltf.nodes[j].name for j in joints], parents, world


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def test_the_65_bone_mixamo_hierarchy(parsed):
    """X Bot's 65 bones, plus the two eye bones under the head (Mixamo Fuse's and Ready Player
    Me's `LeftEye`/`RightEye`; X Bot has no eyes)."""
    names, parents, _ = _skeleton(parsed)
    assert len(names) == 65 + len(EYE_BONES) and all(n.startswith("mixamorig:") for n in names)
    expected_parent = xbot_parents() | dict(EYE_BONES)
    assert {short_name(n) for n in names} == set(expected_parent)
    for name, p in zip(names, parents, strict=True):
        assert (short_name(names[p]) if p >= 0 else None) == expected_parent[short_name(name)], name
    # End bones exist for clips to bind to; they deform nothing.
    prim = _primitive(parsed)
    joints = parsed.accessor(prim.attributes.JOINTS_0)
    weights = parsed.accessor(prim.attributes.WEIGHTS_0)
    end = [names.index("mixamorig:" + e) for e, _ in END_BONES]
    assert not np.isin(joints[weights > 0], end).any()


def test_xbot_tpose_applied_by_name_gives_xbot_bone_directions(parsed):
    """Every bone within 10 deg of X Bot's, the body facing +Z, the toes forward."""
    names, parents, bind = _skeleton(parsed)
    world = posed_world(bind, names, parents, xbot_tpose())
    xbot = xbot_bind_rotations()
    directions = bone_directions(world, names)
    assert len(directions) == 52  # every bone but the 13 end bones has a child to point at
    # the feet take X Bot's frame (XBOT_FRAMED): their sole, not their ankle-to-ball line, follows
    errors = {bone: _angle_deg(d, xbot[bone][:, 1]) for bone, d in directions.items() if "Foot" not in bone}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 10.0, f"{worst}: {errors[worst]:.1f} deg"
    rest = bone_directions(bind, names)
    for side in ("Left", "Right"):  # flat foot, straight toes: as in the bind (it was 29 deg off)
        assert _angle_deg(directions[f"{side}Foot"], rest[f"{side}Foot"]) < 3.0
        assert _angle_deg(directions[f"{side}ToeBase"], rest[f"{side}ToeBase"]) < 3.0
    hips = names.index("mixamorig:Hips")
    assert _angle_deg(world[hips, :3, 2], np.array([0.0, 0.0, 1.0])) < 10.0  # facing +Z
    for side in ("Left", "Right"):
        assert directions[f"{side}ToeBase"][2] > 0.95  # toes forward
        assert directions[f"{side}Arm"][0] * (1 if side == "Left" else -1) > 0.98  # arms out sideways


def test_bind_is_a_clean_a_pose(parsed):
    """Straight elbows, knees, wrists and fingers; upper arms ~45 deg below horizontal."""
    names, _, bind = _skeleton(parsed)
    d = bone_directions(bind, names)
    for side in ("Left", "Right"):
        assert _angle_deg(d[f"{side}Arm"], d[f"{side}ForeArm"]) < 1.0
        assert _angle_deg(d[f"{side}ForeArm"], d[f"{side}Hand"]) < 1.0
        assert _angle_deg(d[f"{side}UpLeg"], d[f"{side}Leg"]) < 1.0
        for finger in ("Index", "Middle", "Ring", "Pinky", "Thumb"):
            assert _angle_deg(d[f"{side}Hand{finger}2"], d[f"{side}Hand{finger}1"]) < 1.0
            assert _angle_deg(d[f"{side}Hand{finger}3"], d[f"{side}Hand{finger}2"]) < 1.0
        below_horizontal = np.degrees(np.arcsin(-d[f"{side}Arm"][1]))
        assert 35.0 < below_horizontal < 55.0
        assert abs(d[f"{side}Arm"][2]) < 0.15  # in the frontal plane
    # the skull's top end bone sits on the top of the mesh, straight above the head joint
    positions = parsed.accessor(_primitive(parsed).attributes.POSITION)
    top = bind[names.index("mixamorig:HeadTop_End"), :3, 3]
    assert abs(top[1] - positions[:, 1].max()) < 1e-3


def test_reframing_changes_inverse_binds_not_the_deformation(model):
    """Skinning with Anny's joint frames and with Mixamo's gives the same rest and posed
    vertices: the re-framing is absorbed by the inverse bind matrices."""
    phenotype = {k: 0.5 for k in PHENOTYPE_LABELS}
    body = evaluate_anny(model, phenotype, _test_pose(model))
    topo = anny_topology(model)
    c = canonical_transform(body.rest_vertices, body.rest_bone_poses[0, :3, 3])
    names, parents = bone_hierarchy(model)
    bind = mixamo_bind(_apply(c, body.rest_vertices), c[None] @ body.rest_bone_poses, names, parents, topo)
    heads = {
        short_name(n): m[:3, 3] for n, m in zip(bind.skeleton.names, bind.skeleton.bind_world, strict=True)
    }
    joints, weights, _ = export_skin_weights(topo, bind.vertices, heads)
    mixamo = np.asarray(bind.skeleton.bind_world)
    anny_posed = extend_pose(c[None] @ body.posed_bone_poses, bind.anny_frames, bind.skeleton.parents)
    assert not np.allclose(mixamo[:, :3, :3], bind.anny_frames[:, :3, :3], atol=0.1)  # frames did change
    for anny_world in (bind.anny_frames, anny_posed):  # rest, photo pose
        old = linear_blend_skinning(
            bind.vertices, joints, weights, anny_world, np.linalg.inv(bind.anny_frames)
        )
        new = linear_blend_skinning(
            bind.vertices,
            joints,
            weights,
            reframe_world(anny_world, bind.anny_frames, mixamo),
            np.linalg.inv(mixamo),
        )
        assert np.abs(new - old).max() < 1e-9
