"""No edge of a clothed avatar made from a real photo stretches more than 3x in any clip — the
bundled ones and a Mixamo-convention walk applied by bone name — and the photo's pose stands on
the ground. Real models on real photos (the development photos, `../shared/data/photos`;
skipped where absent): a skirt (fullbody_08) and a deep lunge (pose_01).

Measured (worst clip): fullbody_08 2.33 (wave), pose_01 2.32 (photo_pose); before the weights
were smoothed and pruned continuously 3.28 and 4.69, the Mixamo walk by name 3.49 and 6.06. A squat
(pose_03) whose fit bends the spine ~110 deg is held at the joint limits (x3.03 -> x2.71).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from models.body_model import load_anny
from models.gltf_export import AnimationClip, local_from_world
from models.rigging import (
    SPINE_LIMITS_DEG,
    build_rigged_avatar,
    clip_edge_stretch,
    clip_world_matrices,
    on_the_ground,
    within_joint_limits,
)
from tests.clients.mixamo_clips import mixamo_walk_clip
from tests.models.test_garments import _clothing, _fit

MAX_STRETCH = 3.0


def _by_name(spec: dict, names: list[str], bind_world: np.ndarray, parents: list[int]) -> AnimationClip:
    """A three.js-style clip (tracks by node name) as the rig's clip: every bone's track by its
    name, a bone the clip has no track for (the eyes: X Bot has none) at its bind rotation, the
    root's translation at its bind value (a Mixamo in-place clip moves none)."""
    tracks = {t["name"].split(".")[0]: t for t in spec["tracks"]}
    times = np.array(spec["tracks"][0]["times"], np.float32)
    bind_local = local_from_world(np.asarray(bind_world), parents)
    bind_quats = Rotation.from_matrix(bind_local[:, :3, :3]).as_quat()

    def track(j: int, name: str) -> np.ndarray:
        if (t := tracks.get(name.replace(":", ""))) is not None:
            return np.array(t["values"]).reshape(len(times), 4)
        return np.repeat(bind_quats[j][None], len(times), axis=0)

    quats = np.stack([track(j, n) for j, n in enumerate(names)], axis=1)
    root = bind_local[0, :3, 3]
    return AnimationClip(spec["name"], times, quats.astype(np.float32), np.repeat(root[None], len(times), 0))


@pytest.mark.parametrize("name", ["fullbody_08.png", "pose_01.jpg"])
def test_no_edge_stretches_3x_on_a_clothed_real_avatar(name):
    fit = _fit(name)[0]
    clothing = _clothing(name)
    texture = cv2.imencode(".png", np.full((8, 8, 3), 128, np.uint8))[1].tobytes()
    avatar = build_rigged_avatar(
        load_anny(), fit.phenotype, fit.pose_parameters, texture, clothing.offsets, garment=clothing.garment
    )
    assert max(avatar.max_edge_stretch.values()) <= MAX_STRETCH, avatar.max_edge_stretch
    skeleton = avatar.skeleton
    walk = _by_name(mixamo_walk_clip(), skeleton.names, skeleton.bind_world, skeleton.parents)
    assert clip_edge_stretch(avatar.mesh, skeleton, walk) <= MAX_STRETCH
    # the photo pose's lowest point is on the floor (the lunge floated 18 cm)
    photo = next(c for c in avatar.clips if c.name == "photo_pose")
    assert abs(on_the_ground(avatar.mesh, skeleton, clip_world_matrices(photo, 0, skeleton))) < 1e-4


def test_within_joint_limits_turns_back_only_an_implausible_spine_bend():
    labels = ["mixamorig:Hips", "mixamorig:Spine", "mixamorig:Spine1", "mixamorig:Neck", "mixamorig:LeftArm"]
    pose = np.tile(np.eye(4), (len(labels), 1, 1))
    axis = np.array([1.0, 0.2, 0.0]) / np.linalg.norm([1.0, 0.2, 0.0])
    for j, degrees in ((1, 60.0), (2, 20.0), (3, 50.0), (4, 120.0)):
        pose[j, :3, :3] = Rotation.from_rotvec(np.radians(degrees) * axis).as_matrix()
    limited, names = within_joint_limits(pose, labels)
    assert names == ("Spine", "Neck")
    for j, degrees in ((1, SPINE_LIMITS_DEG["Spine"]), (2, 20.0), (3, SPINE_LIMITS_DEG["Neck"]), (4, 120.0)):
        rotvec = Rotation.from_matrix(limited[j, :3, :3]).as_rotvec()
        assert np.degrees(np.linalg.norm(rotvec)) == pytest.approx(degrees, abs=1e-6)
        np.testing.assert_allclose(rotvec / np.linalg.norm(rotvec), axis, atol=1e-9)  # same axis


def test_a_squat_fit_with_an_implausible_spine_bend_stays_under_3x():
    """pose_03 (a squat) with its fitted spine bend raised to the ~110 deg an earlier fit gave:
    the belly's fold stretched an edge x3.03 in photo_pose; held at the joint limits the photo
    pose stays under 3x and still follows Anny's own skinning of the (limited) pose."""
    fit = _fit("pose_03.jpg")[0]
    clothing = _clothing("pose_03.jpg")
    model = load_anny()
    names = [str(b).split(":")[-1] for b in model.bone_labels]
    pose = np.array(fit.pose_parameters, np.float64, copy=True)
    for bone in ("Spine", "Spine1", "Spine2"):
        j = names.index(bone)
        pose[j, :3, :3] = Rotation.from_rotvec(
            1.27 * Rotation.from_matrix(pose[j, :3, :3]).as_rotvec()
        ).as_matrix()
    texture = cv2.imencode(".png", np.full((8, 8, 3), 128, np.uint8))[1].tobytes()
    avatar = build_rigged_avatar(
        model, fit.phenotype, pose, texture, clothing.offsets, garment=clothing.garment
    )
    assert {"Spine", "Spine1", "Spine2"} <= set(avatar.limited_bones)
    assert avatar.max_edge_stretch["photo_pose"] <= MAX_STRETCH, avatar.max_edge_stretch
    assert avatar.skinning_error_mean_m < 3e-3  # pose_03's crouch: 2.3 mm, as without the limit
