"""Clips authored in Mixamo's convention from X Bot's bind axes alone (nothing of the avatar),
as three.js keyframe tracks bound by name (`mixamorig:Hips` -> `mixamorigHips`).

A clip's local rotation for bone b is R_parent(b)^T R_b of X Bot's world rotations; motions are
world-axis rotations D layered on X Bot's T-pose (local change R_b^T D R_b), parents first.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from models.mixamo_skeleton import xbot_bind_rotations, xbot_parents

X_AXIS, Z_AXIS, Y_AXIS = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0)


def _track_name(bone: str) -> str:
    return f"mixamorig{bone}.quaternion"  # three.js strips ':' from node names


def _axis_angle(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    return Rotation.from_rotvec(np.deg2rad(degrees) * np.asarray(axis)).as_matrix()


def mixamo_clip(name: str, times: np.ndarray, motions: list[tuple[str, tuple, np.ndarray]]) -> dict:
    """Tracks for all 65 X Bot bones: T-pose locals with world-axis motions layered on."""
    rot, parent = xbot_bind_rotations(), xbot_parents()
    tracks = []
    for bone, r in rot.items():
        p = parent[bone]
        base = rot[p].T @ r if p else r
        keys = np.repeat(base[None], len(times), axis=0)
        for moved, axis, degrees in motions:
            if moved != bone:
                continue
            for t, angle in enumerate(np.broadcast_to(degrees, times.shape)):
                keys[t] = keys[t] @ (r.T @ _axis_angle(axis, float(angle)) @ r)
        quats = Rotation.from_matrix(keys).as_quat()
        for t in range(1, len(quats)):  # same hemisphere key to key
            if np.dot(quats[t], quats[t - 1]) < 0:
                quats[t] *= -1
        tracks.append({"name": _track_name(bone), "type": "quaternion", "times": times.tolist(),
                       "values": quats.reshape(-1).tolist()})  # fmt: skip
    return {"name": name, "tracks": tracks}


def xbot_tpose_clip() -> dict:
    """X Bot's bind pose held for 1 s."""
    return mixamo_clip("mixamo_tpose", np.array([0.0, 1.0]), [])


def mixamo_walk_clip(seconds: float = 1.1, keys: int = 34) -> dict:
    """An in-place walk from the T-pose: arms lowered to the sides and swinging against the legs,
    hips swinging +-25 deg, knees flexing up to 55 deg in swing."""
    times = np.linspace(0.0, seconds, keys)
    phase = 2.0 * np.pi * times / seconds
    left, right = np.sin(phase), np.sin(phase + np.pi)
    left_swing = np.clip(np.cos(phase), 0.0, None) ** 2
    right_swing = np.clip(np.cos(phase + np.pi), 0.0, None) ** 2
    motions = [
        ("LeftArm", Z_AXIS, -75.0 * np.ones_like(times)),  # arms down from the T-pose
        ("RightArm", Z_AXIS, 75.0 * np.ones_like(times)),
        ("LeftArm", X_AXIS, 18.0 * right),
        ("RightArm", X_AXIS, 18.0 * left),
        ("LeftForeArm", Y_AXIS, 15.0 + 0 * times),
        ("LeftUpLeg", X_AXIS, -25.0 * left),
        ("RightUpLeg", X_AXIS, -25.0 * right),
        ("LeftLeg", X_AXIS, 5.0 + 50.0 * left_swing),
        ("RightLeg", X_AXIS, 5.0 + 50.0 * right_swing),
        ("LeftFoot", X_AXIS, -10.0 * left_swing),
        ("RightFoot", X_AXIS, -10.0 * right_swing),
        ("Spine1", Y_AXIS, 4.0 * left),
    ]
    return mixamo_clip("mixamo_walk", times, motions)
