"""The eyes the animation ecosystem drives (real Anny, the GLB read back as a client reads it).

Anny's mesh carries both eyeballs as closed spheres of their own behind the eyelids (their front,
the iris, painted by models.texture). The rig gives each its joint, `mixamorig:LeftEye` /
`RightEye` under the head (Mixamo Fuse's and Ready Player Me's names), at the sphere's centre, and
skins the eyeball wholly to it: turning the joint (VRM lookAt of type "bone", an eye track) turns
the eye in its socket, as the ARKit eyeLook* targets turn it; eyeBlink closes the lids over it."""

from __future__ import annotations

import numpy as np
import pygltflib
import pytest
import trimesh
from scipy.spatial.transform import Rotation
from trimesh.ray.ray_pyembree import RayMeshIntersector

from models.body_model import PHENOTYPE_LABELS, load_anny
from models.mixamo_skeleton import eye_centre
from models.rigging import build_rigged_avatar
from models.vrm import eye_look_degrees, to_vrm
from tests.models.test_mixamo_skeleton import _skeleton
from tests.models.test_rigging import ParsedGlb, _png, _primitive, _test_pose


@pytest.fixture(scope="module")
def parsed() -> ParsedGlb:
    model = load_anny()
    # a bigger, older head than the template: the eye joints must follow the fitted eyeballs
    phenotype = {k: 0.5 for k in PHENOTYPE_LABELS} | {"age": 0.9, "height": 0.8, "weight": 0.7}
    return ParsedGlb(build_rigged_avatar(model, phenotype, _test_pose(model), _png()).glb)


def _eyeballs(parsed: ParsedGlb) -> dict[str, np.ndarray]:
    """Vertices skinned wholly to each eye joint, by its short name."""
    prim = _primitive(parsed)
    joints = parsed.accessor(prim.attributes.JOINTS_0).astype(np.int64)
    weights = parsed.accessor(prim.attributes.WEIGHTS_0).astype(np.float64)
    names, _, _ = _skeleton(parsed)
    return {
        side: np.flatnonzero(((joints == names.index(f"mixamorig:{side}")) & (weights > 0.999)).any(axis=1))
        for side in ("LeftEye", "RightEye")
    }


def _target(parsed: ParsedGlb, name: str) -> np.ndarray:
    """A morph target's offsets (N,3) from its sparse accessor."""
    prim = _primitive(parsed)
    acc = parsed.gltf.accessors[
        prim.targets[parsed.gltf.meshes[0].extras["targetNames"].index(name)]["POSITION"]
    ]
    out = np.zeros((acc.count, 3))
    index_dtype = {5123: np.uint16, 5125: np.uint32}[acc.sparse.indices.componentType]
    idx = parsed.accessor_like(acc.sparse.indices.bufferView, index_dtype, acc.sparse.count, 1).astype(
        np.int64
    )
    out[idx] = parsed.accessor_like(acc.sparse.values.bufferView, np.float32, acc.sparse.count, 3)
    return out


def test_each_eyeball_hangs_on_its_eye_joint_at_its_centre(parsed):
    names, parents, bind = _skeleton(parsed)
    positions = parsed.accessor(_primitive(parsed).attributes.POSITION).astype(np.float64)
    head = names.index("mixamorig:Head")
    for side, ids in _eyeballs(parsed).items():
        j = names.index(f"mixamorig:{side}")
        assert parents[j] == head and len(ids) >= 72, (side, len(ids))  # Anny's 72, UV seams split some
        centre = bind[j, :3, 3]
        assert np.linalg.norm(centre - eye_centre(positions[ids])) < 5e-4
        radius = np.linalg.norm(positions[ids] - centre, axis=1)
        assert 0.010 < radius.mean() < 0.022 and radius.std() < 1e-3  # a sphere about the joint
        assert np.sign(centre[0]) == (1.0 if side == "LeftEye" else -1.0)  # the subject's left is +X
        np.testing.assert_allclose(bind[j, :3, :3], bind[head, :3, :3], atol=1e-9)  # the head's frame
    # no other vertex follows the eye joints
    prim = _primitive(parsed)
    joints = parsed.accessor(prim.attributes.JOINTS_0).astype(np.int64)
    weights = parsed.accessor(prim.attributes.WEIGHTS_0).astype(np.float64)
    on_eyes = np.isin(joints, [names.index("mixamorig:LeftEye"), names.index("mixamorig:RightEye")]) & (
        weights > 0
    )
    assert set(np.flatnonzero(on_eyes.any(axis=1))) == set(np.concatenate(list(_eyeballs(parsed).values())))


def _kabsch(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """The rotation (3x3) that best maps `before` (N,3) onto `after`, both about their centroids."""
    u, _, vt = np.linalg.svd((before - before.mean(axis=0)).T @ (after - after.mean(axis=0)))
    return (u @ vt).T


def test_turning_the_eye_joint_moves_the_eyeball_as_the_eyelook_target_does(parsed):
    """The joint's local Y turns the eye sideways, its local X up and down: a client turning the
    joint by the target's angle gives the eyeball the orientation the ARKit target gives it (the
    target, a linear morph authored about a centre a few mm behind the sphere's, also shifts the
    ball by ~2 mm, so the positions agree to 3 mm)."""
    names, _, bind = _skeleton(parsed)
    positions = parsed.accessor(_primitive(parsed).attributes.POSITION).astype(np.float64)
    ids = _eyeballs(parsed)["LeftEye"]
    j = names.index("mixamorig:LeftEye")
    node = parsed.gltf.skins[0].joints[j]
    mesh_node = next(i for i, n in enumerate(parsed.gltf.nodes) if n.mesh is not None)
    degrees = eye_look_degrees(parsed.gltf, node, mesh_node, parsed.gltf.meshes[0].extras["targetNames"])
    assert all(8.0 < d < 16.0 for d in degrees.values()), degrees
    frame, centre = bind[j, :3, :3], bind[j, :3, 3]
    # (target, the joint's local axis, the way the eye's front turns): +X is the subject's left
    for target, axis, towards in (
        ("eyeLookOutLeft", [0, 1, 0], [1, 0, 0]),
        ("eyeLookUpLeft", [1, 0, 0], [0, 1, 0]),
    ):
        morphed = positions[ids] + _target(parsed, target)[ids]
        by_target = _kabsch(positions[ids], morphed)
        assert (by_target @ [0.0, 0.0, 1.0]) @ towards > 0.1, target  # the target turns it the named way
        local = Rotation.from_matrix(frame.T @ by_target @ frame).as_rotvec()
        assert abs(local @ axis) / np.linalg.norm(local) > np.cos(np.radians(10.0)), (target, local)
        turn = frame @ Rotation.from_rotvec((local @ axis) * np.array(axis, float)).as_matrix() @ frame.T
        turned = (positions[ids] - centre) @ turn.T + centre
        gap = Rotation.from_matrix(turn @ by_target.T).magnitude()
        assert np.degrees(gap) < 2.0, (target, np.degrees(gap))
        assert np.linalg.norm(turned - morphed, axis=1).max() < 3e-3, target


def test_the_blink_closes_the_lids_over_the_eyeballs(parsed):
    """Rays from in front of the face hit the eyeballs with the eyes open, and none does with
    both eyeBlink targets at 1: the lids cover the eyes (nothing is painted on a closed surface)."""
    prim = _primitive(parsed)
    positions = parsed.accessor(prim.attributes.POSITION).astype(np.float64)
    faces = parsed.accessor(prim.indices).astype(np.int64).reshape(-1, 3)
    balls = np.concatenate(list(_eyeballs(parsed).values()))
    ball_faces = np.isin(faces, balls).all(axis=1)
    centre = positions[balls].mean(axis=0)
    grid = np.mgrid[-0.05:0.05:0.001, -0.02:0.02:0.001].reshape(2, -1).T
    origins = np.c_[centre[0] + grid[:, 0], centre[1] + grid[:, 1], np.full(len(grid), centre[2] + 0.5)]
    directions = np.tile([0.0, 0.0, -1.0], (len(origins), 1))

    def eye_hits(weights: dict[str, float]) -> int:
        moved = positions + sum(w * _target(parsed, name) for name, w in weights.items())
        tri, _ = RayMeshIntersector(trimesh.Trimesh(moved, faces, process=False)).intersects_id(
            origins, directions, multiple_hits=False
        )[:2]
        return int(ball_faces[tri].sum())

    assert eye_hits({}) > 100  # open: the eyes show (1 mm rays)
    assert eye_hits({"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0}) == 0


def test_the_vrm_looks_with_the_eye_bones(parsed):
    vrm = pygltflib.GLTF2.load_from_bytes(to_vrm(b"".join(parsed.gltf.save_to_bytes())))
    ext = vrm.extensions["VRMC_vrm"]
    bones = ext["humanoid"]["humanBones"]
    assert vrm.nodes[bones["leftEye"]["node"]].name == "mixamorig:LeftEye"
    assert vrm.nodes[bones["rightEye"]["node"]].name == "mixamorig:RightEye"
    look = ext["lookAt"]
    assert look["type"] == "bone"
    for key in (
        "rangeMapHorizontalInner",
        "rangeMapHorizontalOuter",
        "rangeMapVerticalDown",
        "rangeMapVerticalUp",
    ):
        assert 8.0 < look[key]["outputScale"] < 16.0, (key, look[key])
    offset = np.array(look["offsetFromHeadBone"])
    assert (
        abs(offset[0]) < 0.005 and 0.03 < offset[1] < 0.15 and offset[2] > 0.05
    )  # between the eyes, in front
