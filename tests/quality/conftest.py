"""Real artifacts for the quality tests, built from the real Anny body model (no photo, no fit):
the default body in a camera frame as the `mesh`, its rigged GLB as the `rigged_glb`, and a fit
document of that body as `smplx_params`. Broken variants are derived from these."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from models.body_model import PHENOTYPE_LABELS, anny_topology
from models.camera import Camera
from models.rigging import build_rigged_avatar
from models.surface import mesh_to_glb_bytes, project_silhouette, silhouette_iou, textured_mesh

IMAGE_SIZE = (512, 768)
DEPTH_M = 4.0
# Anny (Z up, facing -Y) -> OpenCV camera frame (y down, looking along +Z), facing the camera.
FACING_CAMERA = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


@dataclass(frozen=True)
class Body:
    vertices: np.ndarray  # (V,3) camera frame, metres
    faces: np.ndarray
    uv: np.ndarray
    face_uv_idx: np.ndarray
    texture: np.ndarray  # (512,512,3) uint8
    camera: Camera
    mask: np.ndarray  # (h,w) uint8 person mask: the good body's silhouette

    def glb(self, vertices: np.ndarray | None = None, faces: np.ndarray | None = None,
            face_uv_idx: np.ndarray | None = None) -> bytes:
        """The `mesh` artifact (as assets/avatar.py writes it) of this body or a variant."""
        mesh = textured_mesh(
            self.vertices if vertices is None else vertices,
            self.faces if faces is None else faces,
            self.uv,
            self.face_uv_idx if face_uv_idx is None else face_uv_idx,
            self.texture,
        )
        return mesh_to_glb_bytes(mesh)

    def silhouette(self) -> Callable[[np.ndarray, np.ndarray], float]:
        return lambda vertices, faces: silhouette_iou(vertices, faces, self.camera, self.mask)


def _texture() -> np.ndarray:
    y, x = np.mgrid[0:512, 0:512]
    return np.stack([128 + x // 8, 100 + y // 8, np.full_like(x, 90)], axis=-1).astype(np.uint8)


@pytest.fixture(scope="session")
def body(anny_model) -> Body:
    topo = anny_topology(anny_model)
    with torch.no_grad():
        rest = anny_model()["vertices"][0].numpy().astype(np.float64)
    vertices = rest @ FACING_CAMERA.T + np.array([0.0, 0.0, DEPTH_M])  # facing the camera, 4 m away
    camera = Camera.from_focal(1.2 * max(IMAGE_SIZE), *IMAGE_SIZE)
    mask = project_silhouette(vertices, topo["faces"], camera).astype(np.uint8) * 255
    return Body(vertices, topo["faces"], topo["uv"], topo["face_uv_idx"], _texture(), camera, mask)


@pytest.fixture(scope="session")
def good_mesh_glb(body: Body) -> bytes:
    return body.glb()


@pytest.fixture(scope="session")
def texture_png(body: Body) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(body.texture).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def good_rigged_glb(anny_model, texture_png: bytes) -> bytes:
    pose = np.tile(np.eye(4), (len(anny_model.bone_labels), 1, 1))
    phenotype = dict.fromkeys(PHENOTYPE_LABELS, 0.5)
    return build_rigged_avatar(anny_model, phenotype, pose, texture_png).glb


@pytest.fixture
def good_fit(anny_model) -> dict:
    """A body-fit document shaped like the `smplx_params` artifact (models.fitting.BodyFit)."""
    n = len(anny_model.bone_labels)
    pose = np.tile(np.eye(4), (n, 1, 1))
    pose[0, :3, :3] = FACING_CAMERA
    pose[0, :3, 3] = (0.0, 0.0, DEPTH_M)
    return {
        "body_model": {"name": "anny", "version": "0.6.2", "rig": "mixamo"},
        "camera": Camera.from_focal(1.2 * max(IMAGE_SIZE), *IMAGE_SIZE).to_dict(),
        "phenotype": dict.fromkeys(PHENOTYPE_LABELS, 0.5),
        "pose_parameterization": "local-ref",
        "bone_names": [str(b) for b in anny_model.bone_labels],
        "pose_parameters": json.loads(json.dumps(pose.tolist())),
        "metrics": {"keypoint_reprojection_rel": 0.004, "silhouette_iou": 0.8},
        "framing": "full_body",
    }


@pytest.fixture(scope="session")
def suites():
    from assets.checks import load_suites

    return load_suites()


@pytest.fixture(scope="session")
def failures(suites) -> Callable[[str, dict], dict[str, str]]:
    """Evaluate a metrics row with the asset's real GX suite: {failed expectation name: severity}."""
    from assets.checks import evaluate_suite

    def run(asset_key: str, row: dict) -> dict[str, str]:
        return {o.name: o.severity for o in evaluate_suite(suites[asset_key], row).failed}

    return run
