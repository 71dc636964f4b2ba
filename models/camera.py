"""Pinhole camera in OpenCV convention (x right, y down, z forward; world -> camera)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Camera:
    """Intrinsics K (3x3), extrinsics R (3x3), t (3,) mapping world to camera, image size (w, h)."""

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    image_size: tuple[int, int]

    @staticmethod
    def from_focal(focal_px: float, width: int, height: int) -> Camera:
        K = np.array(
            [[focal_px, 0.0, width / 2.0], [0.0, focal_px, height / 2.0], [0.0, 0.0, 1.0]]
        )
        return Camera(K=K, R=np.eye(3), t=np.zeros(3), image_size=(int(width), int(height)))

    def to_camera(self, points_world: np.ndarray) -> np.ndarray:
        return points_world @ self.R.T + self.t

    def project(self, points_world: np.ndarray) -> np.ndarray:
        """Pixel coordinates (N,2) of world points (N,3); points must be in front of the camera."""
        cam = self.to_camera(points_world)
        uvw = cam @ self.K.T
        return uvw[:, :2] / uvw[:, 2:3]

    @property
    def center_world(self) -> np.ndarray:
        return -self.R.T @ self.t

    def to_dict(self) -> dict:
        return {
            "K": self.K.tolist(),
            "R": self.R.tolist(),
            "t": self.t.tolist(),
            "image_size": list(self.image_size),
            "convention": "opencv",
        }

    @staticmethod
    def from_dict(data: dict) -> Camera:
        return Camera(
            K=np.asarray(data["K"], dtype=float),
            R=np.asarray(data["R"], dtype=float),
            t=np.asarray(data["t"], dtype=float),
            image_size=(int(data["image_size"][0]), int(data["image_size"][1])),
        )
