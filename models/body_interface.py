"""The interface every body model the fitter drives implements (Anny: `models.body_model`,
SMPL-X: `models.smplx_model`), with no model behind it, so that both implementations import
it and neither imports the other."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class BodyModelInfo:
    name: str
    version: str
    rig: str

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "rig": self.rig}


# ---------------------------------------------------------------------------------------------
# One interface for every body model the fitter can drive
# ---------------------------------------------------------------------------------------------

# Joint roles: what each posable joint is, so that priors and schedules are model independent.
ROLES = (
    "spine", "neck", "head", "clavicle", "upper_arm", "forearm", "hand", "finger",
    "upper_leg", "lower_leg", "foot", "toe", "jaw", "eye",
)  # fmt: skip


@dataclass
class BodyState:
    """The unknowns of one body (batch 1), as tensors the fitter optimises.

    The root's rotation is `base_rotation @ R(root_rotvec)`: `base_rotation` is a constant
    (e.g. "upright, facing the camera") so that the optimised rotation vector stays small.
    Points are produced in the OpenCV camera frame of the photo.
    """

    root_rotvec: torch.Tensor  # (3,)
    translation: torch.Tensor  # (3,) metres
    joint_rotvec: torch.Tensor  # (J, 3) axis-angle of each posable joint (model's own frames)
    shape: torch.Tensor  # (S,) unconstrained shape unknowns
    base_rotation: torch.Tensor  # (3, 3) constant

    def root_rotation(self) -> torch.Tensor:
        import roma

        return self.base_rotation @ roma.rotvec_to_rotmat(self.root_rotvec)

    def detached(self) -> BodyState:
        return BodyState(*(t.detach().clone() for t in (
            self.root_rotvec, self.translation, self.joint_rotvec, self.shape, self.base_rotation
        )))  # fmt: skip


@dataclass
class BodyPoints:
    """3D points of a posed body in the label orders of `models.landmarks` (batch dim dropped)."""

    body: torch.Tensor  # (23, 3)
    hands: torch.Tensor  # (2, 21, 3): left, right
    face: torch.Tensor  # (8, 3)
    vertices: torch.Tensor | None = None  # (n, 3) the silhouette vertex subset, when asked


class BodyModel(abc.ABC):
    """What the fitter needs from a parametric body model (Anny, SMPL-X).

    Implementations are differentiable in every unknown of `BodyState` and cheap per call: the
    fitter evaluates them a few hundred times per photo.
    """

    info: BodyModelInfo
    joint_names: tuple[str, ...]  # posable joints, in `joint_rotvec` order
    joint_roles: tuple[str, ...]  # one of ROLES per joint
    shape_dim: int
    facing_camera: np.ndarray  # (3,3) model frame -> camera frame, upright and facing the camera
    turn_around: np.ndarray  # (3,3) 180 degrees about the model's vertical axis (model frame)
    face_point_mask: np.ndarray  # (8,) bool: which FACE_LABELS this model provides
    device: str = "cpu"  # where its tensors live (`models.device`); the fit runs there

    @property
    @abc.abstractmethod
    def faces(self) -> np.ndarray:
        """(F, 3) triangles."""

    @abc.abstractmethod
    def points(self, state: BodyState, shape_cache: object | None = None, with_vertices: bool = False) -> BodyPoints:
        """Posed keypoints (and the silhouette vertex subset) in the camera frame."""

    @abc.abstractmethod
    def shape_cache(self, shape: torch.Tensor) -> object:
        """Everything that depends only on the shape, for stages that keep the shape fixed."""

    @abc.abstractmethod
    def hinge_axes(self) -> dict[int, np.ndarray]:
        """Joint index -> unit axis (joint's rotvec frame) about which a positive angle flexes
        the joint naturally (elbows forward, knees backward)."""

    @abc.abstractmethod
    def posed_vertices(self, state: BodyState) -> np.ndarray:
        """(V, 3) every vertex of the posed body, camera frame, float64."""

    @abc.abstractmethod
    def rest_vertices(self, shape: torch.Tensor) -> np.ndarray:
        """(V, 3) the body in its rest pose (model frame), float64."""

    @abc.abstractmethod
    def rest_height(self, shape: torch.Tensor) -> float:
        """Standing height of the rest body in metres."""

    @abc.abstractmethod
    def serialise(self, state: BodyState) -> dict:
        """JSON-ready parameters in the model's own convention (what `smplx_params` stores)."""

    @abc.abstractmethod
    def deserialise(self, parameters: dict) -> BodyState:
        """The inverse of `serialise` (up to the split between base and root rotation)."""

    def initial_state(self) -> BodyState:
        return BodyState(
            root_rotvec=torch.zeros(3),
            translation=torch.zeros(3),
            joint_rotvec=torch.zeros(len(self.joint_names), 3),
            shape=torch.zeros(self.shape_dim),
            base_rotation=torch.as_tensor(self.facing_camera, dtype=torch.float32),
        )


def farthest_point_sample(points: np.ndarray, count: int) -> np.ndarray:
    """Deterministic farthest-point sampling: `count` indices spread evenly over `points`."""
    chosen = np.zeros(count, dtype=np.int64)
    chosen[0] = int(np.argmin(points[:, 2]))  # start from the lowest point: reproducible
    dist = np.linalg.norm(points - points[chosen[0]], axis=1)
    for i in range(1, count):
        chosen[i] = int(np.argmax(dist))
        dist = np.minimum(dist, np.linalg.norm(points - points[chosen[i]], axis=1))
    return np.sort(chosen)
