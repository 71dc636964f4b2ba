"""SMPLify-X-style fit of the Anny body model to 2D keypoints.

Unknowns: 6 phenotype values (through a sigmoid, so they stay in Anny's [0, 1] range),
the root orientation and translation in the camera frame, and axis-angle rotations of the
non-finger bones in Anny's `local-ref` parameterisation. The camera is a fixed pinhole with
the principal point at the image centre (world frame = OpenCV camera frame, R = I, t = 0).

Stages, as in SMPLify-X: (1) depth from torso size, (2) root orientation + translation on
torso points, (3) body pose + shape with strong priors, (4) refinement with weaker priors.
The data term is a confidence-weighted Geman-McClure penalty on pixel residuals normalised
by the person's height in the image, so it is resolution independent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import roma
import torch

from models.body_model import PHENOTYPE_LABELS, BodyModelInfo
from models.camera import Camera
from models.errors import ErrorCode, PipelineError
from models.keypoints import POSE_INDEX, Keypoints

STEP = "smplx_params"
FITTER_ID = "smplifyx-anny-adam"

# Anny's COCO-style regressor label -> MediaPipe Pose landmark name, and a per-point weight.
# MediaPipe hips sit higher and wider than anatomical hip joints: down-weighted.
ANNY_TO_MEDIAPIPE: dict[str, tuple[str, float]] = {
    "nose": ("nose", 1.0),
    "left_eye": ("left_eye", 0.5),
    "right_eye": ("right_eye", 0.5),
    "left_ear": ("left_ear", 0.5),
    "right_ear": ("right_ear", 0.5),
    "left_shoulder": ("left_shoulder", 1.0),
    "right_shoulder": ("right_shoulder", 1.0),
    "left_elbow": ("left_elbow", 1.0),
    "right_elbow": ("right_elbow", 1.0),
    "left_wrist": ("left_wrist", 1.0),
    "right_wrist": ("right_wrist", 1.0),
    "left_hip": ("left_hip", 0.3),
    "right_hip": ("right_hip", 0.3),
    "left_knee": ("left_knee", 1.0),
    "right_knee": ("right_knee", 1.0),
    "left_ankle": ("left_ankle", 1.0),
    "right_ankle": ("right_ankle", 1.0),
    "left_big_toe": ("left_foot_index", 0.5),
    "right_big_toe": ("right_foot_index", 0.5),
    "left_heel": ("left_heel", 0.5),
    "right_heel": ("right_heel", 0.5),
}
TORSO_POINTS = ("left_shoulder", "right_shoulder", "left_hip", "right_hip")
LEG_POINTS = (
    "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_big_toe", "right_big_toe", "left_heel", "right_heel",
)  # fmt: skip

# Anny faces -Y with Z up; the camera looks along +Z with y down. A person facing the camera
# is Anny's rest frame rotated +90 degrees about X.
FACING_CAMERA = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
TORSO_HEIGHT_M = 0.50  # mid-shoulder to mid-hip of an average adult


@dataclass(frozen=True)
class FitConfig:
    focal_scale: float = 1.2  # focal length = focal_scale * max(image w, h)
    iters: tuple[int, int, int] = (40, 110, 60)  # stage 2, 3, 4
    lr: float = 0.03
    gmof_rho: float = 0.05  # fraction of person height
    pose_prior: tuple[float, float, float] = (0.0, 2e-2, 5e-3)
    shape_prior: tuple[float, float, float] = (0.0, 1e-2, 2e-3)
    hand_prior_scale: float = 20.0
    seed: int = 0


@dataclass
class BodyFit:
    body_model: BodyModelInfo
    phenotype: dict[str, float]
    pose_parameters: np.ndarray  # (J, 4, 4) Anny local-ref, root holds camera-frame pose
    bone_names: list[str]
    camera: Camera
    metrics: dict[str, float]
    loss_history: dict[str, list[float]]
    framing: str
    fitter: str = FITTER_ID
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "body_model": self.body_model.to_dict(),
            "fitter": self.fitter,
            "camera": self.camera.to_dict(),
            "phenotype": self.phenotype,
            "pose_parameterization": "local-ref",
            "bone_names": self.bone_names,
            "pose_parameters": np.round(self.pose_parameters, 6).tolist(),
            "metrics": self.metrics,
            "loss_history": self.loss_history,
            "framing": self.framing,
            "config": self.config,
        }

    @staticmethod
    def from_dict(data: dict) -> BodyFit:
        bm = data["body_model"]
        return BodyFit(
            body_model=BodyModelInfo(name=bm["name"], version=bm["version"], rig=bm["rig"]),
            phenotype={k: float(v) for k, v in data["phenotype"].items()},
            pose_parameters=np.asarray(data["pose_parameters"], dtype=np.float64),
            bone_names=list(data["bone_names"]),
            camera=Camera.from_dict(data["camera"]),
            metrics=dict(data["metrics"]),
            loss_history={k: list(v) for k, v in data["loss_history"].items()},
            framing=data["framing"],
            fitter=data.get("fitter", FITTER_ID),
            config=data.get("config", {}),
        )


@dataclass
class _Targets:
    points: torch.Tensor  # (K, 2) pixels, in Anny regressor order
    weights: torch.Tensor  # (K,) confidence * point weight, 0 where unusable
    labels: list[str]
    person_height_px: float


def fit_body(
    keypoints: Keypoints, model: torch.nn.Module, info: BodyModelInfo, config: FitConfig = FitConfig()
) -> BodyFit:
    """Fit shape, pose and placement to the detected keypoints; deterministic for a given input."""
    import anny

    torch.manual_seed(config.seed)
    w, h = keypoints.image_size
    camera = Camera.from_focal(config.focal_scale * max(w, h), w, h)
    regressor = anny.KeypointsRegressor.coco(model)
    targets = _build_targets(keypoints, list(regressor.labels))
    if float((targets.weights > 0).sum()) < 4:
        raise PipelineError(
            ErrorCode.FIT_FAILED, "too few body keypoints are visible to fit a body", STEP
        )
    problem = _FitProblem(model, regressor, camera, targets, keypoints.framing, config)
    history = problem.run()
    fit_params = problem.pose_parameters().detach()
    with torch.no_grad():
        out = model(pose_parameters=fit_params, phenotype_kwargs=problem.phenotype())
        projected = problem.project(regressor(out))[0]
    metrics = {
        "keypoint_reprojection_rel": _reprojection_rel(projected, targets),
        "fit_seconds": round(problem.seconds, 3),
        "iterations": int(sum(config.iters)),
        "final_loss": float(history["stage4"][-1]) if history.get("stage4") else float("nan"),
    }
    if not np.isfinite(metrics["keypoint_reprojection_rel"]):
        raise PipelineError(ErrorCode.FIT_FAILED, "the body fit diverged", STEP)
    phenotype = problem.phenotype()[0].detach().numpy()
    return BodyFit(
        body_model=info,
        phenotype={label: round(float(v), 5) for label, v in zip(PHENOTYPE_LABELS, phenotype)},
        pose_parameters=fit_params[0].numpy().astype(np.float64),
        bone_names=list(model.bone_labels),
        camera=camera,
        metrics=metrics,
        loss_history=history,
        framing=keypoints.framing,
        config={"focal_scale": config.focal_scale, "iters": list(config.iters), "lr": config.lr},
    )


def posed_vertices(model: torch.nn.Module, fit: BodyFit) -> np.ndarray:
    """Vertices (V, 3) of the fitted body in the photo's world (= camera) frame."""
    with torch.no_grad():
        out = model(
            pose_parameters=torch.as_tensor(fit.pose_parameters, dtype=torch.float32)[None],
            phenotype_kwargs={k: float(v) for k, v in fit.phenotype.items()},
        )
    return out["vertices"][0].numpy().astype(np.float64)


def _build_targets(keypoints: Keypoints, labels: list[str]) -> _Targets:
    points = np.zeros((len(labels), 2))
    weights = np.zeros(len(labels))
    legs_visible = keypoints.framing == "full_body"
    w, h = keypoints.image_size
    for k, label in enumerate(labels):
        if label not in ANNY_TO_MEDIAPIPE:
            continue
        mp_name, point_weight = ANNY_TO_MEDIAPIPE[label]
        x, y, _, vis = keypoints.pose[POSE_INDEX[mp_name]]
        inside = 0 <= x < w and 0 <= y < h
        if not inside or vis < 0.3 or (label in LEG_POINTS and not legs_visible):
            continue
        points[k] = (x, y)
        weights[k] = vis * point_weight
    _, y0, _, y1 = keypoints.person_bbox
    return _Targets(
        points=torch.as_tensor(points, dtype=torch.float32),
        weights=torch.as_tensor(weights, dtype=torch.float32),
        labels=labels,
        person_height_px=max(float(y1 - y0), 1.0),
    )


def _reprojection_rel(projected: torch.Tensor, targets: _Targets) -> float:
    used = targets.weights > 0
    if not bool(used.any()):
        return float("nan")
    err = torch.linalg.norm(projected[used] - targets.points[used], dim=-1)
    return round(float(err.median()) / targets.person_height_px, 5)


def _gmof(residual_sq: torch.Tensor, rho: float) -> torch.Tensor:
    return residual_sq * rho**2 / (residual_sq + rho**2)


class _FitProblem:
    """The optimisation state and the staged schedule."""

    def __init__(self, model, regressor, camera: Camera, targets: _Targets, framing: str, config: FitConfig):
        self.model = model
        self.regressor = regressor
        self.targets = targets
        self.config = config
        self.framing = framing
        self.K = torch.as_tensor(camera.K, dtype=torch.float32)
        n_bones = len(model.bone_labels)
        self.body_rotvec = torch.zeros(n_bones - 1, 3, requires_grad=True)
        self.root_rotvec = torch.zeros(3, requires_grad=True)
        self.translation = torch.zeros(3, requires_grad=True)
        self.shape_logits = torch.zeros(len(PHENOTYPE_LABELS), requires_grad=True)
        self.base_rotation = torch.as_tensor(_initial_orientation(targets), dtype=torch.float32)
        self.prior_weights = self._bone_prior_weights(list(model.bone_labels)[1:])
        self.seconds = 0.0

    def _bone_prior_weights(self, names: list[str]) -> torch.Tensor:
        weights = []
        for name in names:
            weight = 1.0
            if "Hand" in name and not name.endswith("Hand"):
                weight = self.config.hand_prior_scale * 10  # fingers: no evidence, keep rest
            elif name.endswith("Hand") or "Toe" in name or "Foot" in name or self.framing != "full_body" and ("Leg" in name or "UpLeg" in name):
                weight = self.config.hand_prior_scale
            weights.append(weight)
        return torch.as_tensor(weights, dtype=torch.float32)

    def phenotype(self) -> torch.Tensor:
        return torch.sigmoid(self.shape_logits)[None]

    def pose_parameters(self) -> torch.Tensor:
        n = self.body_rotvec.shape[0] + 1
        params = torch.eye(4).repeat(1, n, 1, 1)
        root = self.base_rotation @ roma.rotvec_to_rotmat(self.root_rotvec)
        params[0, 0, :3, :3] = root
        params[0, 0, :3, 3] = self.translation
        params[0, 1:, :3, :3] = roma.rotvec_to_rotmat(self.body_rotvec)
        return params

    def project(self, points: torch.Tensor) -> torch.Tensor:
        uvw = points @ self.K.T
        return uvw[..., :2] / uvw[..., 2:3].clamp(min=1e-3)

    def keypoints3d(self) -> torch.Tensor:
        out = self.model(pose_parameters=self.pose_parameters(), phenotype_kwargs=self.phenotype())
        return self.regressor(out)

    def data_term(self, keypoints3d: torch.Tensor, point_mask: torch.Tensor) -> torch.Tensor:
        residual = (self.project(keypoints3d)[0] - self.targets.points) / self.targets.person_height_px
        weights = self.targets.weights * point_mask
        return (weights**2 * _gmof((residual**2).sum(-1), self.config.gmof_rho)).sum() / 0.05**2

    def run(self) -> dict[str, list[float]]:
        start = time.perf_counter()
        self._initialise_translation()
        torso = torch.as_tensor(
            [1.0 if label in TORSO_POINTS or label in ("nose",) else 0.0 for label in self.targets.labels]
        )
        everything = torch.ones(len(self.targets.labels))
        history = {
            "stage2": self._stage([self.root_rotvec, self.translation], torso, 0, self.config.iters[0]),
            "stage3": self._stage(
                [self.root_rotvec, self.translation, self.body_rotvec, self.shape_logits],
                everything, 1, self.config.iters[1],
            ),
            "stage4": self._stage(
                [self.root_rotvec, self.translation, self.body_rotvec, self.shape_logits],
                everything, 2, self.config.iters[2],
            ),
        }  # fmt: skip
        self.seconds = time.perf_counter() - start
        return history

    def _stage(self, params: list[torch.Tensor], point_mask: torch.Tensor, stage: int, iters: int) -> list[float]:
        optimiser = torch.optim.Adam(params, lr=self.config.lr)
        pose_w = self.config.pose_prior[stage]
        shape_w = self.config.shape_prior[stage]
        losses: list[float] = []
        for _ in range(iters):
            optimiser.zero_grad()
            loss = self.data_term(self.keypoints3d(), point_mask)
            loss = loss + pose_w * (self.prior_weights[:, None] * self.body_rotvec**2).sum()
            loss = loss + shape_w * (self.shape_logits**2).sum()
            loss.backward()
            optimiser.step()
            losses.append(round(float(loss.detach()), 6))
        return losses

    @torch.no_grad()
    def _initialise_translation(self) -> None:
        """Depth from the ratio of 3D to 2D torso length; x, y from the torso centre ray."""
        labels = self.targets.labels
        idx = {label: labels.index(label) for label in TORSO_POINTS}
        pts2d, weights = self.targets.points, self.targets.weights
        kp3d = self.keypoints3d()[0]
        fx = float(self.K[0, 0])
        shoulders = [idx["left_shoulder"], idx["right_shoulder"]]
        hips = [idx["left_hip"], idx["right_hip"]]
        have_torso = bool((weights[shoulders] > 0).all() and (weights[hips] > 0).all())
        if have_torso:
            length_2d = float(torch.linalg.norm(pts2d[shoulders].mean(0) - pts2d[hips].mean(0)))
            anchor_2d = pts2d[shoulders + hips].mean(0)
            anchor_3d = kp3d[shoulders + hips].mean(0)
            length_3d = TORSO_HEIGHT_M
        else:  # head / upper body: use shoulder width, else the person's bbox height as head size
            valid = weights > 0
            anchor_2d = (pts2d[valid] * weights[valid, None]).sum(0) / weights[valid].sum()
            anchor_3d = (kp3d[valid] * weights[valid, None]).sum(0) / weights[valid].sum()
            if bool((weights[shoulders] > 0).all()):
                length_2d = float(torch.linalg.norm(pts2d[shoulders[0]] - pts2d[shoulders[1]]))
                length_3d = float(torch.linalg.norm(kp3d[shoulders[0]] - kp3d[shoulders[1]]))
            else:
                length_2d, length_3d = self.targets.person_height_px, 0.35
        depth = fx * length_3d / max(length_2d, 1.0)
        ray = torch.linalg.solve(self.K, torch.cat([anchor_2d, torch.ones(1)]))
        self.translation.copy_(ray * depth - anchor_3d)


def _initial_orientation(targets: _Targets) -> np.ndarray:
    """Facing the camera, or turned 180 degrees when the left shoulder appears on the image left."""
    labels = targets.labels
    left, right = labels.index("left_shoulder"), labels.index("right_shoulder")
    pts, weights = targets.points.numpy(), targets.weights.numpy()
    if weights[left] > 0 and weights[right] > 0 and pts[left, 0] < pts[right, 0] - 5:
        turn = np.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])  # 180 about Anny's Z
        return FACING_CAMERA @ turn
    return FACING_CAMERA
