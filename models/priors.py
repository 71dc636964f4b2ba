"""Robust data terms and priors of the body fit (SMPLify-X style), model independent.

- `gmof`: Geman-McClure, rho^2 r^2 / (r^2 + rho^2): quadratic near zero, saturating at rho^2
  so that a wrong detection cannot drag the body. The fitter starts with a large rho (almost
  least squares, so that far-off limbs are pulled in) and lowers it stage by stage.
- `keypoint_term`: confidence-weighted Geman-McClure on 2D residuals normalised by a length
  (the person's height in the image for the body, the hand's or face's size for those).
- `pose_prior`: weighted squared rotation angles (pull towards the model's rest pose).
- `joint_limit_prior`: a soft bound on each joint's rotation angle, per role.
- `hinge_prior`: elbows and knees bend one way only, about one axis (SMPLify's angle prior,
  generalised: wrong-direction bending, over-bending and off-axis rotation are penalised).
- `shape_prior`: squared shape unknowns (pull towards the model's mean shape).
- `SilhouetteTerm`: the projected body against the person mask, without a differentiable
  renderer: body points outside the mask pay their distance to it (a distance transform,
  sampled bilinearly), and mask contour points pay their distance to the nearest projected
  body point (a one-sided Chamfer distance). Parts of the image border are "unknown", not
  "background": a body cut by the frame is not pulled back into it.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# Soft bound (radians) on each joint's rotation angle away from the rest pose, per role.
ROLE_ANGLE_LIMITS: dict[str, float] = {
    "spine": 0.45, "neck": 0.7, "head": 0.7, "clavicle": 0.4, "upper_arm": 2.6, "forearm": 2.6,
    "hand": 1.3, "finger": 1.7, "upper_leg": 2.2, "lower_leg": 2.6, "foot": 0.9, "toe": 0.7,
    "jaw": 0.4, "eye": 0.5,
}  # fmt: skip


def gmof(residual_sq: torch.Tensor, rho: float) -> torch.Tensor:
    """Geman-McClure of squared residuals: ~r^2 near zero, saturating at rho^2."""
    return rho**2 * residual_sq / (residual_sq + rho**2)


def keypoint_term(
    projected: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, scale: float, rho: float
) -> torch.Tensor:
    """sum_k w_k^2 GMoF(|p_k - t_k|^2 / scale^2): 2D points (..., 2), weights (...)."""
    residual_sq = ((projected - targets) ** 2).sum(-1) / scale**2
    return (weights**2 * gmof(residual_sq, rho)).sum()


def pose_prior(joint_rotvec: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_j w_j |r_j|^2 over axis-angle rotations (J, 3)."""
    return (weights * (joint_rotvec**2).sum(-1)).sum()


def joint_limit_prior(joint_rotvec: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
    """sum_j relu(|r_j| - limit_j)^2: free inside the limit, quadratic beyond it."""
    angle = torch.sqrt((joint_rotvec**2).sum(-1) + 1e-12)
    return (torch.relu(angle - limits) ** 2).sum()


def hinge_prior(
    joint_rotvec: torch.Tensor, joints: torch.Tensor, axes: torch.Tensor, max_flexion: float = 2.6
) -> torch.Tensor:
    """Elbows/knees: the angle about the flexion axis must be in [0, max_flexion]; rotation
    about other axes (abduction, twist) is penalised."""
    if len(joints) == 0:
        return joint_rotvec.new_zeros(())
    rotvec = joint_rotvec[joints]
    flexion = (rotvec * axes).sum(-1)
    off_axis = rotvec - flexion[:, None] * axes
    wrong_way = torch.relu(-flexion) ** 2 + torch.relu(flexion - max_flexion) ** 2
    return (10.0 * wrong_way + (off_axis**2).sum(-1)).sum()


def shape_prior(shape: torch.Tensor) -> torch.Tensor:
    return (shape**2).sum()


class SilhouetteTerm:
    """Projected body points (N, 2) against a person mask; see the module docstring."""

    def __init__(self, mask: np.ndarray, scale: float, rho: float = 0.05, max_contour_points: int = 400):
        person = np.asarray(mask) >= 128 if np.asarray(mask).dtype != bool else np.asarray(mask)
        self.h, self.w = person.shape
        self.scale = float(scale)
        self.rho = rho
        outside = cv2.distanceTransform((~person).astype(np.uint8), cv2.DIST_L2, 5)
        self.distance = torch.as_tensor(outside / self.scale, dtype=torch.float32)[None, None]
        self.contour = torch.as_tensor(_contour_points(person, max_contour_points), dtype=torch.float32)
        self.empty = not person.any()

    def outside(self, pixels: torch.Tensor) -> torch.Tensor:
        """Mean GMoF of the distance (in person heights) from each point to the mask; points
        outside the image are unknown and cost nothing."""
        gx = 2.0 * pixels[:, 0] / max(self.w - 1, 1) - 1.0
        gy = 2.0 * pixels[:, 1] / max(self.h - 1, 1) - 1.0
        grid = torch.stack([gx, gy], dim=-1)[None, None]
        dist = F.grid_sample(self.distance, grid, mode="bilinear", align_corners=True)[0, 0, 0]
        inside = ((gx.abs() <= 1.0) & (gy.abs() <= 1.0)).float()
        return (inside * gmof(dist**2, self.rho)).mean() / self.rho**2

    def coverage(self, pixels: torch.Tensor) -> torch.Tensor:
        """Mean GMoF of the distance from each mask contour point to the nearest body point."""
        if len(self.contour) == 0:
            return pixels.new_zeros(())
        nearest_sq = torch.cdist(self.contour, pixels).min(dim=1).values ** 2 / self.scale**2
        return gmof(nearest_sq, self.rho).mean() / self.rho**2

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.empty:
            return pixels.new_zeros(())
        return self.outside(pixels) + self.coverage(pixels)


def _contour_points(person: np.ndarray, max_points: int) -> np.ndarray:
    """Outer contour pixels of the mask (x, y), minus those on the image border, evenly thinned."""
    contours, _ = cv2.findContours(person.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return np.zeros((0, 2))
    points = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float64)
    h, w = person.shape
    margin = 3
    keep = (
        (points[:, 0] >= margin) & (points[:, 0] < w - margin) & (points[:, 1] >= margin) & (points[:, 1] < h - margin)
    )
    points = points[keep]
    if len(points) > max_points:
        points = points[np.linspace(0, len(points) - 1, max_points).round().astype(int)]
    return points
