"""SMPLify-X-style fit of a parametric body model (Anny by default, SMPL-X when configured).

Camera: a fixed pinhole with the principal point at the image centre and focal length
`focal_scale` x the longer image side; the world frame is the OpenCV camera frame (R = I,
t = 0), so the body's root rotation and translation carry its placement.

Stages (L-BFGS with a strong-Wolfe line search, as SMPLify-X; seeded and single-threaded, so
the same input gives the same fit):

0. init: depth from the ratio of the model's 3D torso length to the 2D one (shoulder width or
   face size when the hips are out of view); facing the camera, or turned around when the
   left shoulder appears on the image left; both are tried when the shoulders nearly overlap.
1. global: root orientation + translation on the torso points.
2. body: + body pose and shape on every usable body keypoint, strong priors, and the limb
   directions of MediaPipe's metric 3D landmarks (robust), which pick the depth side of limbs.
3. refine: + the silhouette term against the person mask, weaker priors, a smaller robust
   scale (the Geman-McClure rho shrinks stage by stage: far-off limbs are pulled in first).
4. hands/face: finger, wrist, neck and head rotations on MediaPipe's hand and face landmarks,
   where they were detected.

The data term is a confidence-weighted Geman-McClure penalty on 2D residuals normalised by
the person's height in the image (hands and face: by their own size), so it is resolution
independent. Priors: per-role pose prior, joint-angle limits, elbow/knee hinge prior, shape
prior (see `models.priors`). Joints without evidence stay at the rest pose: legs out of view,
toes, fingers of undetected hands.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from models.body_model import BodyModel, BodyModelInfo, BodyState
from models.camera import Camera
from models.device import on_device
from models.errors import ErrorCode, PipelineError
from models.fit_config import FITTER_ID, FitConfig  # light: the catalogue imports it without torch
from models.hints import BodyHints  # light: the CLI validates hints without torch
from models.keypoints import POSE_INDEX, Keypoints
from models.landmarks import (
    BODY_LABELS,
    FACE_POINTS,
    HAND_LABELS,
    LEG_LABELS,
    LIMBS,
    MEDIAPIPE_BODY,
    TORSO_LABELS,
)
from models.phenotype import (
    PHENOTYPE_LABELS,
    PhenotypeEstimate,
    estimate_phenotype,
    measure_evidence,
    solve_height_value,
    typical_height_m,
)
from models.priors import (
    ROLE_ANGLE_LIMITS,
    SilhouetteTerm,
    gmof,
    hinge_prior,
    joint_limit_prior,
    keypoint_term,
    pose_prior,
    shape_prior,
)

STEP = "smplx_params"
STAGES = ("global", "body", "refine", "hands_face")
MIN_VISIBILITY = 0.3

# Pose prior weight per joint role, relative to the stage's pose prior weight.
ROLE_PRIOR: dict[str, float] = {
    "spine": 4.0, "neck": 2.0, "head": 1.0, "clavicle": 8.0, "upper_arm": 0.5, "forearm": 0.5,
    "hand": 2.0, "finger": 2.0, "upper_leg": 0.5, "lower_leg": 0.5, "foot": 2.0, "toe": 10.0,
    "jaw": 10.0, "eye": 10.0,
}  # fmt: skip


@dataclass
class BodyFit:
    body_model: BodyModelInfo
    phenotype: dict[str, float]  # Anny's six shape values ({} for SMPL-X: see `parameters`)
    pose_parameters: np.ndarray | None  # Anny: (J, 4, 4) local-ref, root = camera-frame pose
    bone_names: list[str]
    camera: Camera
    metrics: dict[str, float]
    loss_history: dict[str, list[float]]
    framing: str
    fitter: str = FITTER_ID
    config: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)  # model-specific (SMPL-X: betas, poses, transl)
    # per phenotype value: {"value", "source": "hint" | "estimated" | "prior", "confidence"}
    phenotype_estimate: dict[str, dict] = field(default_factory=dict)
    hints: dict = field(default_factory=dict)  # the uploader's hints the fit honoured

    def to_dict(self) -> dict:
        data = {
            "body_model": self.body_model.to_dict(),
            "fitter": self.fitter,
            "camera": self.camera.to_dict(),
            "phenotype": self.phenotype,
            "bone_names": self.bone_names,
            "metrics": self.metrics,
            "loss_history": self.loss_history,
            "framing": self.framing,
            "config": self.config,
        }
        if self.pose_parameters is not None:
            data["pose_parameterization"] = "local-ref"
            data["pose_parameters"] = np.round(self.pose_parameters, 6).tolist()
        if self.parameters:
            data["parameters"] = self.parameters
        if self.phenotype_estimate:
            data["phenotype_estimate"] = self.phenotype_estimate
        if self.hints:
            data["hints"] = self.hints
        return data

    @staticmethod
    def from_dict(data: dict) -> BodyFit:
        bm = data["body_model"]
        pose = data.get("pose_parameters")
        return BodyFit(
            body_model=BodyModelInfo(name=bm["name"], version=bm["version"], rig=bm["rig"]),
            phenotype={k: float(v) for k, v in data.get("phenotype", {}).items()},
            pose_parameters=None if pose is None else np.asarray(pose, dtype=np.float64),
            bone_names=list(data.get("bone_names", [])),
            camera=Camera.from_dict(data["camera"]),
            metrics=dict(data["metrics"]),
            loss_history={k: list(v) for k, v in data["loss_history"].items()},
            framing=data["framing"],
            fitter=data.get("fitter", FITTER_ID),
            config=data.get("config", {}),
            parameters=data.get("parameters", {}),
            phenotype_estimate=dict(data.get("phenotype_estimate", {})),
            hints=dict(data.get("hints", {})),
        )

    def model_parameters(self) -> dict:
        """What `BodyModel.deserialise` reads."""
        if self.body_model.name == "anny":
            return {"phenotype": self.phenotype, "pose_parameters": self.pose_parameters}
        return self.parameters


@dataclass
class FitTargets:
    """2D targets in pixels, in the label orders of `models.landmarks`."""

    body: torch.Tensor  # (23, 2)
    body_weights: torch.Tensor  # (23,) visibility * point weight, 0 where unusable
    person_height_px: float
    hands: torch.Tensor  # (2, 21, 2) left, right
    hand_weights: torch.Tensor  # (2, 21)
    hand_scale_px: torch.Tensor  # (2,)
    face: torch.Tensor  # (8, 2)
    face_weights: torch.Tensor  # (8,)
    face_scale_px: float
    world: torch.Tensor | None = None  # (23, 3) MediaPipe's metric 3D landmarks (camera axes)
    limb_weights: torch.Tensor | None = None  # (len(LIMBS),) 0 where a limb is not usable


def fit_body(
    keypoints: Keypoints,
    body: BodyModel,
    config: FitConfig = FitConfig(),
    hints: BodyHints | None = None,
) -> BodyFit:
    """Fit shape, pose and placement to the detected keypoints; deterministic for a given input.

    `body` is a `BodyModel` (see `models.body_model.load_body_model`).
    A fit that fails (too few confident keypoints, divergence, a body through the camera plane)
    is retried from the other initialisations of `FIT_ATTEMPTS` before FIT_FAILED is raised:
    portraits turned away from the camera have few confident landmarks and ambiguous facing.
    """
    hints = hints or BodyHints()
    failure: PipelineError | None = None
    for number, attempt in enumerate(FIT_ATTEMPTS, start=1):
        try:
            with on_device(body.device):  # the fit's tensors beside the body model's
                fit = _fit_once(keypoints, body, config, hints, attempt)
        except PipelineError as err:
            if err.code != ErrorCode.FIT_FAILED:
                raise
            failure = failure or err
            continue
        fit.metrics["fit_attempts"] = number
        return fit
    assert failure is not None
    raise failure


@dataclass(frozen=True)
class FitAttempt:
    """One initialisation of the fit: which keypoints count and which facings are tried."""

    min_visibility: float = MIN_VISIBILITY
    both_facings: bool = False  # try facing the camera and turned away, whatever the shoulders say


FIT_ATTEMPTS = (FitAttempt(), FitAttempt(both_facings=True), FitAttempt(min_visibility=0.1, both_facings=True))


def _fit_once(keypoints: Keypoints, body: BodyModel, config: FitConfig, hints: BodyHints, attempt: FitAttempt) -> BodyFit:
    w, h = keypoints.image_size
    camera = Camera.from_focal(config.focal_scale * max(w, h), w, h)
    targets = build_targets(keypoints, body, attempt.min_visibility)
    if float((targets.body_weights > 0).sum()) < 4:
        raise PipelineError(ErrorCode.FIT_FAILED, "too few body keypoints are visible to fit a body", STEP)
    is_anny = body.info.name == "anny"
    estimate = None
    if is_anny:
        evidence = measure_evidence(
            keypoints.pose, keypoints.pose_world, keypoints.face, keypoints.mask, keypoints.extra.get("face_attributes")
        )
        estimate = estimate_phenotype(evidence, hints.to_dict())
    with _single_thread():
        torch.manual_seed(config.seed)
        height_m = None if hints.height_cm is None else hints.height_cm / 100.0
        problem = _FitProblem(body, camera, targets, keypoints, config, estimate, attempt.both_facings, height_m)
        history = problem.run()
        state = problem.state.detached()
        if is_anny and height_m is not None:  # exact again after refine moved the other values
            state = _with_height(body, state, height_m)
        projected = problem.project(body.points(state).body)
    metrics = {
        "keypoint_reprojection_rel": reprojection_rel(projected, targets),
        "fit_seconds": round(problem.seconds, 3),
        "iterations": problem.evaluations,
        "final_loss": history[STAGES[2]][-1] if history.get(STAGES[2]) else float("nan"),
        "hands_fitted": int((targets.hand_weights.sum(dim=1) > 0).sum()),
        "face_fitted": bool(targets.face_weights.sum() > 0),
        "body_height_m": round(body.rest_height(state.shape), 4),
    }
    if not np.isfinite(metrics["keypoint_reprojection_rel"]) or not torch.isfinite(state.translation).all():
        raise PipelineError(ErrorCode.FIT_FAILED, "the body fit diverged", STEP)
    vertices = body.posed_vertices(state)
    if (vertices[:, 2] <= 0).any():
        raise PipelineError(ErrorCode.FIT_FAILED, "the fitted body crosses the camera plane", STEP)
    from models.surface import silhouette_iou

    metrics["silhouette_iou"] = round(silhouette_iou(vertices, body.faces, camera, keypoints.mask), 4)
    serialised = body.serialise(state)
    return BodyFit(
        body_model=body.info,
        phenotype=serialised["phenotype"] if is_anny else {},
        pose_parameters=serialised["pose_parameters"] if is_anny else None,
        bone_names=list(serialised.get("bone_names", body.joint_names)),
        camera=camera,
        metrics=metrics,
        loss_history=history,
        framing=keypoints.framing,
        config=config.to_params(),
        parameters={} if is_anny else serialised,
        phenotype_estimate=estimate.record(serialised["phenotype"]) if estimate is not None else {},
        hints=hints.to_dict(),
    )


def _with_height(body: BodyModel, state: BodyState, height_m: float) -> BodyState:
    """`state` with the `height` value solved for a rest body `height_m` tall, the other values
    kept; scaled about the camera centre (translation x the height ratio), so that its image
    barely changes."""
    index = PHENOTYPE_LABELS.index("height")
    before = body.rest_height(state.shape)

    def height_of(value: float) -> float:
        shape = state.shape.clone()
        shape[index] = _logit([value])[0]
        return body.rest_height(shape)

    shape = state.shape.clone()
    shape[index] = _logit([solve_height_value(height_of, height_m)])[0]
    ratio = body.rest_height(shape) / max(before, 1e-6)
    return BodyState(state.root_rotvec, state.translation * ratio, state.joint_rotvec, shape, state.base_rotation)


def fitted_state(body: BodyModel, fit: BodyFit) -> BodyState:
    with on_device(body.device):
        return body.deserialise(fit.model_parameters())


def posed_vertices(body: BodyModel, fit: BodyFit) -> np.ndarray:
    """Vertices (V, 3) of the fitted body in the photo's world (= camera) frame."""
    if body.info.name != fit.body_model.name:
        raise ValueError(f"the fit is of {fit.body_model.name}, the model is {body.info.name}")
    with on_device(body.device):
        return body.posed_vertices(body.deserialise(fit.model_parameters()))


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------


def build_targets(keypoints: Keypoints, body: BodyModel | None = None, min_visibility: float = MIN_VISIBILITY) -> FitTargets:
    """2D targets and weights from MediaPipe's landmarks (see `models.landmarks`)."""
    w, h = keypoints.image_size
    legs_visible = keypoints.framing == "full_body"
    points = np.zeros((len(BODY_LABELS), 2))
    weights = np.zeros(len(BODY_LABELS))
    for k, label in enumerate(BODY_LABELS):
        if label not in MEDIAPIPE_BODY:
            continue
        name, point_weight = MEDIAPIPE_BODY[label]
        x, y, _, vis = keypoints.pose[POSE_INDEX[name]]
        inside = 0 <= x < w and 0 <= y < h
        # legs: only from full-body photos, or a knee that is clearly in view
        leg_ok = legs_visible or (label in ("left_knee", "right_knee") and vis >= 0.5)
        if not inside or vis < min_visibility or (label in LEG_LABELS and not leg_ok):
            continue
        points[k] = (x, y)
        weights[k] = vis * point_weight
    _, y0, _, y1 = keypoints.person_bbox
    hands, hand_weights, hand_scale = _hand_targets(keypoints)
    face, face_weights, face_scale = _face_targets(keypoints)
    if body is not None:
        face_weights = face_weights * body.face_point_mask
    world, limb_weights = _world_targets(keypoints, weights)
    return FitTargets(
        body=torch.as_tensor(points, dtype=torch.float32),
        body_weights=torch.as_tensor(weights, dtype=torch.float32),
        person_height_px=max(float(y1 - y0), 1.0),
        hands=torch.as_tensor(hands, dtype=torch.float32),
        hand_weights=torch.as_tensor(hand_weights, dtype=torch.float32),
        hand_scale_px=torch.as_tensor(hand_scale, dtype=torch.float32),
        face=torch.as_tensor(face, dtype=torch.float32),
        face_weights=torch.as_tensor(face_weights, dtype=torch.float32),
        face_scale_px=face_scale,
        world=world,
        limb_weights=limb_weights,
    )


def _world_targets(keypoints: Keypoints, body_weights: np.ndarray) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """MediaPipe's 3D landmarks in label order, and a weight per limb: the smaller visibility of
    its ends, only for limbs whose ends are used as 2D targets."""
    if keypoints.pose_world is None or len(keypoints.pose_world) < 33:
        return None, None
    world = np.zeros((len(BODY_LABELS), 3))
    for k, label in enumerate(BODY_LABELS):
        if label in MEDIAPIPE_BODY:
            world[k] = keypoints.pose_world[POSE_INDEX[MEDIAPIPE_BODY[label][0]]]
    weights = []
    for a, b in LIMBS:
        ia, ib = BODY_LABELS.index(a), BODY_LABELS.index(b)
        used = body_weights[ia] > 0 and body_weights[ib] > 0
        vis = min(keypoints.pose[POSE_INDEX[MEDIAPIPE_BODY[a][0]], 3], keypoints.pose[POSE_INDEX[MEDIAPIPE_BODY[b][0]], 3])
        weights.append(float(vis) if used else 0.0)
    return torch.as_tensor(world, dtype=torch.float32), torch.as_tensor(weights, dtype=torch.float32)


def _inside(points: np.ndarray, w: int, h: int) -> np.ndarray:
    return (points[:, 0] >= 0) & (points[:, 0] < w) & (points[:, 1] >= 0) & (points[:, 1] < h)


def _hand_targets(keypoints: Keypoints) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w, h = keypoints.image_size
    points = np.zeros((2, len(HAND_LABELS), 2))
    weights = np.zeros((2, len(HAND_LABELS)))
    scale = np.ones(2)
    for side, (hand, wrist) in enumerate(
        ((keypoints.left_hand, "left_wrist"), (keypoints.right_hand, "right_wrist"))
    ):
        if hand is None or keypoints.pose[POSE_INDEX[wrist], 3] < MIN_VISIBILITY:
            continue
        points[side] = hand[:, :2]
        weights[side] = _inside(hand[:, :2], w, h).astype(float)
        scale[side] = max(float(np.ptp(hand[:, :2], axis=0).max()), 10.0)
    return points, weights, scale


def _face_targets(keypoints: Keypoints) -> tuple[np.ndarray, np.ndarray, float]:
    w, h = keypoints.image_size
    points = np.zeros((len(FACE_POINTS), 2))
    if keypoints.face is None or len(keypoints.face) <= max(i for i, _ in FACE_POINTS.values()):
        return points, np.zeros(len(FACE_POINTS)), 1.0
    idx = [i for i, _ in FACE_POINTS.values()]
    points = keypoints.face[idx, :2]
    scale = max(float(np.ptp(keypoints.face[:, 1])), 10.0)
    return points, _inside(points, w, h).astype(float), scale


def reprojection_rel(projected: torch.Tensor, targets: FitTargets) -> float:
    """Median 2D error of the used body keypoints / the person's height in the image."""
    used = targets.body_weights > 0
    if not bool(used.any()):
        return float("nan")
    err = torch.linalg.norm(projected[used] - targets.body[used], dim=-1)
    return round(float(err.median()) / targets.person_height_px, 5)


# ---------------------------------------------------------------------------------------------
# Optimisation
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Small tensors: one thread is faster than two and makes reductions reproducible."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _logit(values: list[float]) -> torch.Tensor:
    clipped = np.clip(np.asarray(values, dtype=np.float64), 1e-3, 1.0 - 1e-3)
    return torch.as_tensor(np.log(clipped / (1.0 - clipped)), dtype=torch.float32)


def _side(name: str) -> str:
    lower = name.lower().split(":")[-1]
    if lower.startswith("left"):
        return "left"
    if lower.startswith("right"):
        return "right"
    return ""


class _FitProblem:
    """The optimisation state and the staged schedule."""

    def __init__(
        self,
        body: BodyModel,
        camera: Camera,
        targets: FitTargets,
        keypoints: Keypoints,
        config: FitConfig,
        estimate: PhenotypeEstimate | None = None,
        both_facings: bool = False,
        height_target_m: float | None = None,
    ):
        self.body = body
        self.both_facings = both_facings
        self.targets = targets
        self.config = config
        self.estimate = estimate
        self.K = torch.as_tensor(camera.K, dtype=torch.float32)
        self.state = body.initial_state()
        # the shape prior: its centre (Anny: the estimated phenotype), a weight per value
        self.shape_centre = torch.zeros(body.shape_dim)
        self.shape_weights = torch.ones(body.shape_dim)
        free = torch.ones(body.shape_dim)
        if estimate is not None:
            self.shape_centre = _logit([estimate.centre[k] for k in PHENOTYPE_LABELS])
            self.shape_weights = torch.as_tensor(
                [1.0 + config.evidence_weight * estimate.pull.get(k, estimate.confidence[k]) for k in PHENOTYPE_LABELS],
                dtype=torch.float32,
            )
            free = torch.as_tensor([0.0 if estimate.fixed()[k] else 1.0 for k in PHENOTYPE_LABELS])
            self.state.shape = self.shape_centre.clone()
        for tensor in (self.state.root_rotvec, self.state.translation, self.state.joint_rotvec, self.state.shape):
            tensor.requires_grad_(True)
        # hinted values are held where the uploader put them (and the height once it is set)
        self.free = free
        self.state.shape.register_hook(lambda grad: grad * self.free)
        self.height_target_m = height_target_m
        roles = body.joint_roles
        self.role_weights = torch.as_tensor([ROLE_PRIOR[r] for r in roles], dtype=torch.float32)
        self.limits = torch.as_tensor([ROLE_ANGLE_LIMITS[r] for r in roles], dtype=torch.float32)
        hinges = body.hinge_axes()
        self.hinge_joints = torch.as_tensor(sorted(hinges), dtype=torch.long)
        self.hinge_axes = torch.as_tensor(np.array([hinges[j] for j in sorted(hinges)]).reshape(-1, 3), dtype=torch.float32)
        self.silhouette = SilhouetteTerm(keypoints.mask, targets.person_height_px, rho=config.gmof_rho)
        self.body_mask = self._body_joint_mask()
        self.detail_mask = self._detail_joint_mask()
        self.limb_ends = torch.as_tensor([[BODY_LABELS.index(a), BODY_LABELS.index(b)] for a, b in LIMBS])
        self.seconds = 0.0
        self.evaluations = 0

    # -- which joints move ---------------------------------------------------------------------

    def _used(self, label: str) -> bool:
        return bool(self.targets.body_weights[BODY_LABELS.index(label)] > 0)

    def _body_joint_mask(self) -> torch.Tensor:
        """Joints the body stages may move: no fingers, wrists or toes; a leg joint only when
        the keypoint at its far end is in view."""
        needs = {
            "upper_leg": ("knee",),
            "lower_leg": ("ankle", "heel"),
            "foot": ("big_toe", "heel"),
        }
        mask = []
        for name, role in zip(self.body.joint_names, self.body.joint_roles, strict=True):
            side = _side(name)
            if role in ("finger", "hand", "toe", "jaw", "eye"):
                mask.append(0.0)
            elif role in needs:
                mask.append(float(any(self._used(f"{side}_{end}") for end in needs[role])))
            else:
                mask.append(1.0)
        return torch.as_tensor(mask)[:, None]

    def _detail_joint_mask(self) -> torch.Tensor:
        """Joints of the hands/face stage: fingers and wrist of each detected hand; neck and
        head when face landmarks are available."""
        hand_seen = {"left": bool(self.targets.hand_weights[0].sum() > 0), "right": bool(self.targets.hand_weights[1].sum() > 0)}
        face_seen = bool(self.targets.face_weights.sum() > 0)
        mask = []
        for name, role in zip(self.body.joint_names, self.body.joint_roles, strict=True):
            if role in ("finger", "hand"):
                mask.append(float(hand_seen.get(_side(name), False)))
            elif role in ("neck", "head"):
                mask.append(float(face_seen))
            else:
                mask.append(0.0)
        return torch.as_tensor(mask)[:, None]

    # -- terms ---------------------------------------------------------------------------------

    def project(self, points: torch.Tensor) -> torch.Tensor:
        uvw = points @ self.K.T
        return uvw[..., :2] / uvw[..., 2:3].clamp(min=1e-3)

    def _masked_state(self, joint_mask: torch.Tensor) -> BodyState:
        s = self.state
        rotvec = s.joint_rotvec * joint_mask + s.joint_rotvec.detach() * (1.0 - joint_mask)
        return BodyState(s.root_rotvec, s.translation, rotvec, s.shape, s.base_rotation)

    def rho(self, stage: str) -> float:
        return self.config.gmof_rho * self.config.rho_schedule[STAGES.index(stage)]

    def body_term(self, body_points: torch.Tensor, weights: torch.Tensor, stage: str) -> torch.Tensor:
        t = self.targets
        rho = self.rho(stage)
        # in units of the base rho: the quadratic regime is the same at every stage
        unit = self.config.gmof_rho**2
        return keypoint_term(self.project(body_points), t.body, weights, t.person_height_px, rho) / unit

    def limb_term(self, body_points: torch.Tensor) -> torch.Tensor:
        """Squared distance between unit limb directions of the model and of MediaPipe's 3D
        landmarks (both in camera axes)."""
        t = self.targets
        if t.world is None or t.limb_weights is None or float(t.limb_weights.sum()) == 0:
            return body_points.new_zeros(())
        model = body_points[self.limb_ends[:, 1]] - body_points[self.limb_ends[:, 0]]
        seen = t.world[self.limb_ends[:, 1]] - t.world[self.limb_ends[:, 0]]
        model = model / model.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        seen = seen / seen.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        # robust: MediaPipe's depth is a guess that is sometimes wrong by far
        return (t.limb_weights * gmof(((model - seen) ** 2).sum(-1), self.config.limb_rho) / self.config.limb_rho**2).sum()

    def priors(self, state: BodyState, stage: int) -> torch.Tensor:
        c = self.config
        prior = c.pose_prior[stage] * pose_prior(state.joint_rotvec, self.role_weights)
        prior = prior + c.limit_prior * joint_limit_prior(state.joint_rotvec, self.limits)
        prior = prior + c.angle_prior * hinge_prior(state.joint_rotvec, self.hinge_joints, self.hinge_axes)
        return prior + c.shape_prior[stage] * shape_prior(state.shape, self.shape_centre, self.shape_weights)

    # -- schedule ------------------------------------------------------------------------------

    def run(self) -> dict[str, list[float]]:
        start = time.perf_counter()
        history: dict[str, list[float]] = {stage: [] for stage in STAGES}
        cache = self.body.shape_cache(self.state.shape.detach())
        history["global"] = self._global_stage(cache)
        everything = self.targets.body_weights

        def body_loss(stage: int, silhouette: bool) -> torch.Tensor:
            state = self._masked_state(self.body_mask)
            pts = self.body.points(state, with_vertices=silhouette)
            loss = self.body_term(pts.body, everything, STAGES[stage + 1]) + self.priors(state, stage)
            if not silhouette:  # MediaPipe's depth picks the limbs' direction; 2D and mask refine it
                loss = loss + self.config.limb_weight * self.limb_term(pts.body)
            if silhouette:
                loss = loss + self.config.silhouette_weight * self.silhouette(self.project(pts.vertices))
            return loss

        params = [self.state.root_rotvec, self.state.translation, self.state.joint_rotvec, self.state.shape]
        history["body"] = self._lbfgs(params, lambda: body_loss(0, False), self.config.iters[1])
        self._set_height()
        history["refine"] = self._lbfgs(params, lambda: body_loss(1, True), self.config.iters[2])
        if float(self.detail_mask.sum()) > 0:
            history["hands_face"] = self._detail_stage()
        self.seconds = time.perf_counter() - start
        return history

    @torch.no_grad()
    def _set_height(self) -> None:
        """Anny only: before the refine stage, the `height` value for the hinted height (or a
        typical adult height for the build so far), placement scaled to match; the value is then
        held, so the refine stage fits pose and placement to the body of that height."""
        if self.estimate is None:
            return
        target = self.height_target_m
        if target is None:
            target = typical_height_m(self.body.serialise(self.state.detached())["phenotype"])
        if target is None:
            return
        moved = _with_height(self.body, self.state.detached(), target)
        self.state.shape.copy_(moved.shape)
        self.state.translation.copy_(moved.translation)
        self.free[PHENOTYPE_LABELS.index("height")] = 0.0

    def _global_stage(self, cache: dict) -> list[float]:
        """Root orientation + translation on the torso, from each plausible initial facing."""
        torso = torch.as_tensor([1.0 if label in TORSO_LABELS else 0.0 for label in BODY_LABELS])
        weights = self.targets.body_weights * torso
        if float((weights > 0).sum()) < 3:  # head/shoulders: use the face points too
            head = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder")
            weights = self.targets.body_weights * torch.as_tensor([float(lb in head) for lb in BODY_LABELS])
        best: tuple[float, BodyState, list[float]] | None = None
        for base in self._initial_orientations():
            with torch.no_grad():
                self.state.base_rotation = torch.as_tensor(base, dtype=torch.float32)
                self.state.root_rotvec.zero_()
                self._initialise_translation(cache)

            def loss() -> torch.Tensor:
                pts = self.body.points(self.state, cache)
                return self.body_term(pts.body, weights, "global")

            losses = self._lbfgs([self.state.root_rotvec, self.state.translation], loss, self.config.iters[0])
            if best is None or losses[-1] < best[0]:
                best = (losses[-1], self.state.detached(), losses)
        assert best is not None
        with torch.no_grad():
            self.state.base_rotation = best[1].base_rotation
            self.state.root_rotvec.copy_(best[1].root_rotvec)
            self.state.translation.copy_(best[1].translation)
        return best[2]

    def _detail_stage(self) -> list[float]:
        t = self.targets
        cache = self.body.shape_cache(self.state.shape.detach())
        # hands and face are normalised by their own size, and MediaPipe's hand and face landmarks
        # are coherent shapes: nearly least squares, so that a wrongly turned hand is pulled round
        rho = self.config.detail_rho

        def loss() -> torch.Tensor:
            state = self._masked_state(self.detail_mask)
            pts = self.body.points(state, cache)
            value = self.body_term(pts.body, t.body_weights, "hands_face") + self.priors(state, 2)
            hands = self.project(pts.hands)
            for side in range(2):
                if float(t.hand_weights[side].sum()) > 0:
                    value = value + self.config.hand_weight / rho**2 * keypoint_term(
                        hands[side], t.hands[side], t.hand_weights[side], float(t.hand_scale_px[side]), rho
                    )
            if float(t.face_weights.sum()) > 0:
                value = value + self.config.face_weight / rho**2 * keypoint_term(
                    self.project(pts.face), t.face, t.face_weights, t.face_scale_px, rho
                )
            return value

        return self._lbfgs([self.state.joint_rotvec], loss, self.config.iters[3])

    def _lbfgs(self, params: list[torch.Tensor], loss_fn, iterations: int) -> list[float]:
        if iterations <= 0:
            return []
        optimiser = torch.optim.LBFGS(
            params, lr=self.config.lr, max_iter=iterations, max_eval=int(iterations * 1.5),
            history_size=20, line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9,
        )  # fmt: skip
        losses: list[float] = []

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            loss = loss_fn()
            loss.backward()
            self.evaluations += 1
            losses.append(round(float(loss.detach()), 6))
            return loss

        optimiser.step(closure)
        return losses

    # -- initialisation ------------------------------------------------------------------------

    def _initial_orientations(self) -> list[np.ndarray]:
        """Facing the camera, or turned around when the left shoulder is on the image left;
        both when the shoulders nearly overlap (a side view)."""
        facing = self.body.facing_camera
        turned = facing @ self.body.turn_around
        t = self.targets
        if self.both_facings:
            return [facing, turned]
        left, right = BODY_LABELS.index("left_shoulder"), BODY_LABELS.index("right_shoulder")
        if not (t.body_weights[left] > 0 and t.body_weights[right] > 0):
            return [facing]
        dx = float(t.body[left, 0] - t.body[right, 0])
        if abs(dx) < 0.06 * t.person_height_px:
            return [facing, turned]
        return [facing] if dx > 0 else [turned]

    @torch.no_grad()
    def _initialise_translation(self, cache: dict) -> None:
        """Depth from the ratio of 3D to 2D torso size; x, y from the torso centre's ray."""
        t = self.targets
        kp3d = self.body.points(self.state, cache).body
        pts2d, weights = t.body, t.body_weights
        idx = {label: BODY_LABELS.index(label) for label in BODY_LABELS}
        shoulders = [idx["left_shoulder"], idx["right_shoulder"]]
        hips = [idx["left_hip"], idx["right_hip"]]
        fx = float(self.K[0, 0])
        if bool((weights[shoulders] > 0).all() and (weights[hips] > 0).all()):
            length_2d = float(torch.linalg.norm(pts2d[shoulders].mean(0) - pts2d[hips].mean(0)))
            length_3d = float(torch.linalg.norm(kp3d[shoulders].mean(0) - kp3d[hips].mean(0)))
            anchor = shoulders + hips
        elif bool((weights[shoulders] > 0).all()):
            length_2d = float(torch.linalg.norm(pts2d[shoulders[0]] - pts2d[shoulders[1]]))
            length_3d = float(torch.linalg.norm(kp3d[shoulders[0]] - kp3d[shoulders[1]]))
            anchor = shoulders
        else:
            anchor = [int(i) for i in torch.nonzero(weights > 0).flatten()]
            length_2d = t.person_height_px
            length_3d = 0.35  # a head and neck
        anchor_2d = (pts2d[anchor] * weights[anchor, None]).sum(0) / weights[anchor].sum()
        anchor_3d = (kp3d[anchor] * weights[anchor, None]).sum(0) / weights[anchor].sum()
        depth = fx * length_3d / max(length_2d, 1.0)
        ray = torch.linalg.solve(self.K, torch.cat([anchor_2d, torch.ones(1)]))
        self.state.translation.copy_(ray * depth - (anchor_3d - self.state.translation))
