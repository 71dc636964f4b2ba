"""VRM 1.0 (`VRMC_vrm`) from the avatar GLB: humanoid bone map, meta with the licence fields,
expressions mapped from the ARKit morph targets, and lookAt.

The GLB already follows VRM 1.0's frame (Y up, +Z forward, metres) and keeps its Mixamo skeleton
and clips; VRM only adds the extension on top. What VRM readers use:

- humanoid: VRM bone name -> node (`HUMAN_BONES`, from the Mixamo names). Mixamo's Thumb1-3 are
  VRM's thumbMetacarpal/Proximal/Distal; the end bones have no VRM counterpart.
- expressions: each preset is a weighted sum of ARKit morph targets (`EXPRESSION_BINDS`), a common
  ARKit -> VRM mapping (visemes from jaw and lip shapes, emotions from brow/eye/mouth shapes).
- lookAt: type "expression" (the rig has no eye bones): lookUp/Down/Left/Right from the
  eyeLook* targets, the eyes' position as the offset from the head bone.
- The rest pose is the GLB's clean A-pose, not VRM's recommended T-pose: three-vrm's normalised
  humanoid takes the rest pose as identity, so VRM animations authored for a T-pose (VRMA) play
  with the arms ~45 deg lower than intended.
"""

from __future__ import annotations

import numpy as np
import pygltflib

from models.gltf_export import drop_orphan_byte_offsets
from models.mixamo_skeleton import MIXAMO_PREFIX, short_name

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
    gltf = pygltflib.GLTF2.load_from_bytes(glb)
    by_name = {
        short_name(n.name): i for i, n in enumerate(gltf.nodes) if n.name and n.name.startswith(MIXAMO_PREFIX)
    }
    missing = sorted(set(HUMAN_BONES.values()) - set(by_name))
    if missing:
        raise ValueError(f"the GLB lacks humanoid bones: {missing}")
    mesh_node = next(i for i, n in enumerate(gltf.nodes) if n.mesh is not None)
    names = list((gltf.meshes[gltf.nodes[mesh_node].mesh].extras or {}).get("targetNames", []))
    head = _world_positions(gltf)[by_name["Head"]]
    eyes = _eye_centre(gltf, mesh_node, names)
    offset = (eyes - head).tolist() if eyes is not None else [0.0, 0.06, 0.08]
    vrm = {
        "specVersion": VRM_SPEC_VERSION,
        "meta": default_meta() | (meta or {}),
        "humanoid": {"humanBones": {vrm: {"node": by_name[mixamo]} for vrm, mixamo in HUMAN_BONES.items()}},
        "expressions": {
            "preset": {p: _expression(b, mesh_node, names, p) for p, b in EXPRESSION_BINDS.items()}
            if names
            else {}
        },
        "lookAt": {
            "type": "expression",
            "offsetFromHeadBone": offset,
            "rangeMapHorizontalInner": {"inputMaxValue": 90.0, "outputScale": 1.0},
            "rangeMapHorizontalOuter": {"inputMaxValue": 90.0, "outputScale": 1.0},
            "rangeMapVerticalDown": {"inputMaxValue": 90.0, "outputScale": 1.0},
            "rangeMapVerticalUp": {"inputMaxValue": 90.0, "outputScale": 1.0},
        },
    }
    gltf.extensions = dict(gltf.extensions or {}, VRMC_vrm=vrm)
    gltf.extensionsUsed = sorted(set(gltf.extensionsUsed or []) | {"VRMC_vrm"})
    drop_orphan_byte_offsets(gltf)
    return b"".join(gltf.save_to_bytes())


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
    from models.render import _accessor

    blob = gltf.binary_blob()
    prim = gltf.meshes[gltf.nodes[mesh_node].mesh].primitives[0]
    positions = _accessor(gltf, blob, prim.attributes.POSITION).astype(np.float64)
    centres = []
    for target in ("eyeBlinkLeft", "eyeBlinkRight"):
        acc = gltf.accessors[prim.targets[names.index(target)]["POSITION"]]
        if acc.sparse is None:
            offsets = _accessor(gltf, blob, prim.targets[names.index(target)]["POSITION"]).astype(np.float64)
        else:
            offsets = np.zeros((acc.count, 3))
            iv, vv = (
                gltf.bufferViews[acc.sparse.indices.bufferView],
                gltf.bufferViews[acc.sparse.values.bufferView],
            )
            index_dtype = {5121: np.uint8, 5123: np.uint16, 5125: np.uint32}[acc.sparse.indices.componentType]
            idx = np.frombuffer(blob, index_dtype, acc.sparse.count, iv.byteOffset or 0)
            offsets[idx] = np.frombuffer(blob, np.float32, acc.sparse.count * 3, vv.byteOffset or 0).reshape(
                -1, 3
            )
        size = np.linalg.norm(offsets, axis=1)
        centres.append(positions[size > 0.5 * size.max()].mean(axis=0))
    return np.mean(centres, axis=0)
