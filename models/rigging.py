"""Anny + fitted parameters -> a rigged, textured, animated GLB.

Canonical placement (the choice every consumer of the GLB relies on):

- The bind pose is Anny's **rest mesh** (`rest_vertices`, the MakeHuman A-pose) for the fitted
  phenotype, with Anny's rest bone poses (`rest_bone_poses`) as bind matrices. The rest pose is
  what Anny's skin weights were authored for, so it skins best, and an A-pose retargets cleanly.
  The photo pose is not baked into the mesh; it is delivered as the `photo_pose` animation.
- One rigid transform C maps Anny's frame (Z up, facing -Y, subject's left +X) to glTF's (Y up,
  facing +Z, left +X): (x, y, z) -> (x, z, -y), then translates so that the rest mesh's feet are
  on y = 0 and the root (hips) is at x = z = 0. Mesh and bind matrices get the same C, so
  IBM_j = inv(C . rest_bone_pose_j).
- The fitted root delta (camera-frame global orientation and translation) is dropped: the
  avatar stays upright at the origin facing +Z. The photo pose keeps the root at its rest pose
  and only the bone rotations change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from models.body_model import anny_topology
from models.gltf_export import (
    MAX_INFLUENCES,
    AnimationClip,
    Skeleton,
    SkinnedMeshData,
    local_from_world,
    make_quaternions_continuous,
    matrices_from_trs,
    normalize_weights_float32,
    quaternions_from_matrices,
    rigid_inverse,
    world_from_local,
    write_glb,
)

PHENOTYPE_KEYS = ("gender", "age", "muscle", "weight", "height", "proportions")

# Anny (Z up, facing -Y) -> glTF (Y up, facing +Z): (x, y, z) -> (x, z, -y). det = +1.
ANNY_TO_GLTF_ROTATION = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

# Vertices whose dropped (5th) influence exceeds this are excluded from the reproduction check:
# their deviation from Anny is the pruning itself, not a conversion bug.
PRUNE_LOSS_TOLERANCE = 0.01

IDLE_SECONDS = 2.0
IDLE_KEYS = 31  # 15 keys/s; LINEAR interpolation of a slow sine is visually smooth


@dataclass(frozen=True)
class RiggedAvatar:
    glb: bytes
    joint_count: int
    vertex_count: int
    triangle_count: int
    max_influences: int
    max_weight_sum_error: float
    animation_names: list[str]
    height_m: float
    # How well the GLB's skinning of the `photo_pose` last key reproduces Anny (metres).
    skinning_error_mean_m: float = float("nan")
    skinning_error_max_m: float = float("nan")


@dataclass(frozen=True)
class AnnyPosedBody:
    """Anny outputs for one phenotype, in Anny's frame (float64 numpy)."""

    rest_vertices: np.ndarray  # (V,3)
    rest_bone_poses: np.ndarray  # (J,4,4)
    posed_vertices: np.ndarray  # (V,3) photo pose, root kept at its rest pose
    posed_bone_poses: np.ndarray  # (J,4,4)


# ---------------------------------------------------------------------------------------------
# Anny evaluation
# ---------------------------------------------------------------------------------------------


def _phenotype_kwargs(phenotype: dict[str, float]) -> dict[str, torch.Tensor]:
    unknown = set(phenotype) - set(PHENOTYPE_KEYS)
    if unknown:
        raise ValueError(f"unknown phenotype keys: {sorted(unknown)}")
    return {k: torch.tensor([float(np.clip(v, 0.0, 1.0))], dtype=torch.float32) for k, v in phenotype.items()}


def _orthonormalize(rot: np.ndarray) -> np.ndarray:
    """Nearest rotation matrices (..., 3, 3) (SVD, det +1)."""
    u, _, vt = np.linalg.svd(rot)
    d = np.sign(np.linalg.det(u @ vt))
    u[..., :, 2] *= d[..., None]
    return u @ vt


def canonical_pose_parameters(pose_parameters: np.ndarray) -> np.ndarray:
    """The fitted local-ref deltas made representable by a rotation-only glTF animation:
    root delta -> identity (camera orientation/translation dropped), other bones keep only their
    (orthonormalised) rotation, their translation part is zeroed (bone lengths stay at bind)."""
    p = np.array(pose_parameters, dtype=np.float64, copy=True)
    if p.ndim != 3 or p.shape[1:] != (4, 4):
        raise ValueError(f"pose_parameters must be (J,4,4), got {p.shape}")
    p[:, :3, :3] = _orthonormalize(p[:, :3, :3])
    p[:, :3, 3] = 0.0
    p[:, 3, :] = (0.0, 0.0, 0.0, 1.0)
    p[0] = np.eye(4)
    return p


def evaluate_anny(model, phenotype: dict[str, float], pose_parameters: np.ndarray) -> AnnyPosedBody:
    """One Anny forward pass: rest model and the photo pose with the root held at its rest pose.

    With an identity root delta (local-ref) Anny puts the root at the origin with identity
    orientation, and every bone follows from the root: left-multiplying the whole posed result by
    the rest root pose P0 is therefore exactly the pose whose root sits where it rests."""
    p = canonical_pose_parameters(pose_parameters)
    if p.shape[0] != len(model.bone_labels):
        raise ValueError(f"pose_parameters has {p.shape[0]} bones, the model {len(model.bone_labels)}")
    with torch.no_grad():
        out = model(
            pose_parameters=torch.as_tensor(p, dtype=torch.float32)[None],
            phenotype_kwargs=_phenotype_kwargs(phenotype),
        )
    rest_vertices = out["rest_vertices"][0].double().numpy()
    rest_bones = out["rest_bone_poses"][0].double().numpy()
    root_rest = rest_bones[0]
    posed_bones = root_rest[None] @ out["bone_poses"][0].double().numpy()
    posed_vertices = _apply(root_rest, out["vertices"][0].double().numpy())
    return AnnyPosedBody(rest_vertices, rest_bones, posed_vertices, posed_bones)


# ---------------------------------------------------------------------------------------------
# Frame conversion and mesh preparation
# ---------------------------------------------------------------------------------------------


def _apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ m[:3, :3].T + m[:3, 3]


def canonical_transform(rest_vertices: np.ndarray, root_head: np.ndarray) -> np.ndarray:
    """C (4x4): Anny -> glTF axes, feet on y=0, root at x=z=0."""
    c = np.eye(4)
    c[:3, :3] = ANNY_TO_GLTF_ROTATION
    rotated_root = ANNY_TO_GLTF_ROTATION @ root_head
    min_y = (rest_vertices @ ANNY_TO_GLTF_ROTATION.T)[:, 1].min()
    c[:3, 3] = (-rotated_root[0], -min_y, -rotated_root[2])
    return c


def split_uv_seams(
    faces: np.ndarray, face_uv_idx: np.ndarray, uv: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-corner UVs -> per-vertex UVs by duplicating vertices on UV seams.

    Returns (source_vertex (N,), uv_gltf (N,2) with v flipped to a top-left origin,
    faces (F,3) into the split vertices)."""
    corner_vertex = faces.reshape(-1)
    corner_uv = uv[face_uv_idx.reshape(-1)].astype(np.float32)
    # Key on the exact float bits so equal UVs with different indices merge too.
    keys = np.column_stack([corner_vertex, corner_uv.view(np.int32).astype(np.int64)])
    unique_keys, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    source_vertex = unique_keys[:, 0]
    uv_split = corner_uv[first]
    uv_gltf = np.column_stack([uv_split[:, 0], 1.0 - uv_split[:, 1]]).astype(np.float32)
    return source_vertex, uv_gltf, inverse.reshape(faces.shape).astype(np.uint32)


def top_influences(
    indices: np.ndarray, weights: np.ndarray, k: int = MAX_INFLUENCES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the k largest influences per vertex, renormalised.

    Returns (joints (V,k) uint16, weights (V,k) float64, dropped weight fraction (V,))."""
    order = np.argsort(-weights, axis=1, kind="stable")[:, :k]
    kept_w = np.take_along_axis(weights, order, axis=1)
    kept_j = np.take_along_axis(indices, order, axis=1)
    total = weights.sum(axis=1)
    loss = 1.0 - kept_w.sum(axis=1) / total
    kept_w = kept_w / kept_w.sum(axis=1, keepdims=True)
    kept_j = np.where(kept_w > 0, kept_j, 0)
    if kept_w.shape[1] < k:  # pad to exactly k slots
        pad = k - kept_w.shape[1]
        kept_w = np.pad(kept_w, ((0, 0), (0, pad)))
        kept_j = np.pad(kept_j, ((0, 0), (0, pad)))
    return kept_j.astype(np.uint16), kept_w, loss


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted smooth normals of the unsplit mesh (so UV seams stay invisible)."""
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    n = np.asarray(mesh.vertex_normals, dtype=np.float64)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------------------------
# Animation clips
# ---------------------------------------------------------------------------------------------


def clip_from_world_poses(
    name: str, times: np.ndarray, world: np.ndarray, parents: list[int]
) -> AnimationClip:
    """An AnimationClip from world joint matrices (T,J,4,4) in the glTF frame."""
    local = local_from_world(world, parents)
    quats = make_quaternions_continuous(quaternions_from_matrices(local[..., :3, :3]))
    return AnimationClip(
        name=name,
        times=np.asarray(times, dtype=np.float32),
        local_rotations=quats.astype(np.float32),
        root_translations=local[:, 0, :3, 3].astype(np.float32),
    )


def photo_pose_clip(bind_world: np.ndarray, posed_world: np.ndarray, parents: list[int]) -> AnimationClip:
    """Two keys: t=0 the bind pose, t=1 the photo pose."""
    world = np.stack([bind_world, posed_world])
    return clip_from_world_poses("photo_pose", np.array([0.0, 1.0]), world, parents)


def _axis_angle(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    theta = np.deg2rad(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * (k @ k)


# (bone name without "mixamorig:", world axis in glTF frame, amplitude in degrees, waveform)
# Waveforms over phase phi in [0, 2pi]: "sin" sways both ways, "breath" = (1 - cos)/2 in [0, 1].
# +X is the subject's left, +Y up, +Z forward.
_IDLE_MOTIONS: tuple[tuple[str, tuple[float, float, float], float, str], ...] = (
    ("Spine", (0.0, 0.0, 1.0), 1.5, "sin"),  # lateral sway
    ("Spine1", (1.0, 0.0, 0.0), -1.0, "breath"),  # chest lifts on the in-breath
    ("Spine2", (1.0, 0.0, 0.0), -1.0, "breath"),
    ("Neck", (0.0, 0.0, 1.0), -1.0, "sin"),  # keeps the head roughly level
    ("Neck", (1.0, 0.0, 0.0), 1.5, "breath"),
    ("LeftArm", (0.0, 0.0, 1.0), 3.0, "breath"),  # arms drift out with the breath
    ("RightArm", (0.0, 0.0, 1.0), -3.0, "breath"),
    ("LeftForeArm", (1.0, 0.0, 0.0), -2.0, "breath"),
    ("RightForeArm", (1.0, 0.0, 0.0), -2.0, "breath"),
)


def _bone_index(names: list[str], short: str) -> int | None:
    for i, n in enumerate(names):
        if n.split(":")[-1] == short:
            return i
    return None


def idle_clip(bind_world: np.ndarray, names: list[str], parents: list[int]) -> AnimationClip:
    """A seamless 2 s breathing/sway loop: small world-axis rotations about bone heads added to
    the bind pose. A world rotation D at bone j becomes the local change B_j^T D B_j (B_j the
    bind world rotation), so it reads as intended whatever the bone's own axes are."""
    times = np.linspace(0.0, IDLE_SECONDS, IDLE_KEYS)
    phase = 2.0 * np.pi * times / IDLE_SECONDS
    waves = {"sin": np.sin(phase), "breath": 0.5 - 0.5 * np.cos(phase)}
    bind_local = local_from_world(bind_world, parents)
    local = np.repeat(bind_local[None], len(times), axis=0)
    for bone, axis, amplitude, wave in _IDLE_MOTIONS:
        j = _bone_index(names, bone)
        if j is None:
            continue
        b = bind_world[j, :3, :3]
        for t, w in enumerate(waves[wave]):
            d = _axis_angle(axis, amplitude * w)
            local[t, j, :3, :3] = local[t, j, :3, :3] @ (b.T @ d @ b)
    world = world_from_local(local, parents)
    return clip_from_world_poses("idle", times, world, parents)


# ---------------------------------------------------------------------------------------------
# Verification: skin the glTF data exactly as a viewer would
# ---------------------------------------------------------------------------------------------


def clip_world_matrices(clip: AnimationClip, key: int, skeleton: Skeleton) -> np.ndarray:
    """Global joint matrices at one key of a clip: animated rotations (+ root translation), the
    other joints' translations staying at their bind-local values (as in the GLB)."""
    bind_local = local_from_world(np.asarray(skeleton.bind_world, np.float64), skeleton.parents)
    translations = bind_local[:, :3, 3].copy()
    translations[0] = clip.root_translations[key]
    local = matrices_from_trs(translations, clip.local_rotations[key].astype(np.float64))
    return world_from_local(local, skeleton.parents)


def linear_blend_skinning(
    positions: np.ndarray, joints: np.ndarray, weights: np.ndarray, joint_world: np.ndarray, ibm: np.ndarray
) -> np.ndarray:
    """glTF skinning: v' = sum_i w_i (globalJoint_i . IBM_i) v."""
    skin = joint_world @ ibm  # (J,4,4)
    per_vertex = np.einsum("vk,vkij->vij", weights, skin[joints.astype(np.int64)])
    return np.einsum("vij,vj->vi", per_vertex[:, :3, :3], positions) + per_vertex[:, :3, 3]


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def bone_hierarchy(model) -> tuple[list[str], list[int]]:
    """Anny's bone labels ("mixamorig:Hips", ...) and parent indices (root -1, parents first)."""
    names = [str(n) for n in model.bone_labels]
    raw = model.bone_parents
    parents = [int(p) for p in (raw.tolist() if torch.is_tensor(raw) else raw)]
    if parents[0] >= 0 or any(not 0 <= p < j for j, p in enumerate(parents[1:], 1)):
        raise ValueError("expected Anny bones in topological order with a single root at 0")
    return names, [-1] + parents[1:]


def build_rigged_avatar(
    model, phenotype: dict[str, float], pose_parameters: np.ndarray, texture_png: bytes
) -> RiggedAvatar:
    """Rigged, textured GLB of the fitted body (see the module docstring for the placement).

    Animations: `photo_pose` (bind -> fitted photo pose over 1 s) and `idle` (2 s loop)."""
    body = evaluate_anny(model, phenotype, np.asarray(pose_parameters))
    topo = anny_topology(model)
    c = canonical_transform(body.rest_vertices, body.rest_bone_poses[0, :3, 3])

    names, parents = bone_hierarchy(model)
    skeleton = Skeleton(names=names, parents=parents, bind_world=c[None] @ body.rest_bone_poses)

    rest = _apply(c, body.rest_vertices)
    normals = vertex_normals(rest, topo["faces"])
    src, uvs, faces = split_uv_seams(topo["faces"], topo["face_uv_idx"], topo["uv"])
    joints, weights, loss = top_influences(topo["skin_indices"], topo["skin_weights"])
    mesh = SkinnedMeshData(
        positions=rest[src].astype(np.float32),
        normals=normals[src].astype(np.float32),
        uvs=uvs,
        indices=faces,
        joints=joints[src],
        weights=weights[src].astype(np.float32),
        texture_png=texture_png,
    )
    photo = photo_pose_clip(skeleton.bind_world, c[None] @ body.posed_bone_poses, parents)
    clips = [photo, idle_clip(skeleton.bind_world, names, parents)]
    glb = write_glb(mesh, skeleton, clips)

    errors = _reproduction_errors(mesh, skeleton, photo, _apply(c, body.posed_vertices)[src], loss[src])
    return RiggedAvatar(
        glb=glb,
        joint_count=len(names),
        vertex_count=int(mesh.positions.shape[0]),
        triangle_count=int(mesh.indices.shape[0]),
        max_influences=int((mesh.weights > 0).sum(axis=1).max()),
        max_weight_sum_error=_max_weight_sum_error(mesh.weights),
        animation_names=[clip.name for clip in clips],
        height_m=float(mesh.positions[:, 1].max() - mesh.positions[:, 1].min()),
        skinning_error_mean_m=float(errors.mean()),
        skinning_error_max_m=float(errors.max()),
    )


def _max_weight_sum_error(weights: np.ndarray) -> float:
    """As the writer stores them (float32, renormalised), summed in float64 like the validator."""
    stored = normalize_weights_float32(weights)
    return float(np.abs(stored.astype(np.float64).sum(axis=1) - 1.0).max())


def _reproduction_errors(
    mesh: SkinnedMeshData, skeleton: Skeleton, clip: AnimationClip, expected: np.ndarray, loss: np.ndarray
) -> np.ndarray:
    """Per-vertex distance between the GLB's skinning at the clip's last key and Anny's pose,
    over the vertices that pruning to 4 influences did not change materially."""
    world = clip_world_matrices(clip, len(clip.times) - 1, skeleton)
    ibm = rigid_inverse(np.asarray(skeleton.bind_world, np.float64)).astype(np.float32).astype(np.float64)
    skinned = linear_blend_skinning(
        mesh.positions.astype(np.float64), mesh.joints, mesh.weights.astype(np.float64), world, ibm
    )
    keep = loss <= PRUNE_LOSS_TOLERANCE
    return np.linalg.norm(skinned[keep] - expected[keep], axis=1)
