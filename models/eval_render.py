"""A small software renderer for evaluation images: coloured, lit meshes with OpenCV.

Triangles are drawn far to near (painter's algorithm) with back faces culled, which is exact
for a single closed body seen from outside and good enough where limbs overlap. Shading is
Lambert with one directional light plus ambient; drawing at `supersample` x the resolution
and area-averaging down gives anti-aliased edges, so the result looks like a photo to a
detector rather than like a label map.
"""

from __future__ import annotations

import cv2
import numpy as np

from models.camera import Camera

_SHIFT = 4  # sub-pixel bits for cv2 polygon filling


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    corners = vertices[faces]
    normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    return normal / np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)


def render_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    camera: Camera,
    face_colours: np.ndarray,
    background: np.ndarray | None = None,
    light_direction: tuple[float, float, float] = (0.3, 0.6, 0.75),
    ambient: float = 0.35,
    supersample: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """RGB image (h, w, 3) uint8 and coverage mask (h, w) bool of the mesh.

    `face_colours` (F, 3) in [0, 255]; `light_direction` points from the light towards the
    scene, in the camera frame (OpenCV: x right, y down, z forward).
    """
    w, h = camera.image_size
    s = int(supersample)
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    cam = camera.to_camera(vertices)
    ahead = (cam[faces, 2] > 1e-6).all(axis=1)
    pixels = np.zeros((len(vertices), 2))
    front = cam[:, 2] > 1e-6
    pixels[front] = camera.project(vertices[front])
    normals = face_normals(cam, faces)
    centres = cam[faces].mean(axis=1)
    facing = -(normals * centres).sum(axis=1) / np.maximum(np.linalg.norm(centres, axis=1), 1e-12)
    visible = ahead & (facing > 0)
    light = np.asarray(light_direction, dtype=np.float64)
    light = light / np.linalg.norm(light)
    lambert = np.clip(-(normals @ light), 0.0, 1.0)
    shade = ambient + (1.0 - ambient) * lambert
    colours = np.clip(np.asarray(face_colours, dtype=np.float64) * shade[:, None], 0, 255)

    canvas = np.zeros((h * s, w * s, 3), np.uint8)
    if background is not None:
        canvas = cv2.resize(np.asarray(background, dtype=np.uint8), (w * s, h * s), interpolation=cv2.INTER_LINEAR)
    coverage = np.zeros((h * s, w * s), np.uint8)
    fixed = np.round((pixels + 0.5) * s - 0.5) * (1 << _SHIFT)
    fixed = np.clip(fixed, -(2**28), 2**28).astype(np.int32)
    order = np.nonzero(visible)[0]
    order = order[np.argsort(-centres[order, 2], kind="stable")]
    for f in order:
        tri = fixed[faces[f]]
        cv2.fillConvexPoly(canvas, tri, colours[f].tolist(), lineType=cv2.LINE_8, shift=_SHIFT)
        cv2.fillConvexPoly(coverage, tri, 255, lineType=cv2.LINE_8, shift=_SHIFT)
    if s > 1:
        canvas = cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA)
        coverage = cv2.resize(coverage, (w, h), interpolation=cv2.INTER_AREA)
    return canvas, coverage >= 128


def look_at_front(vertices: np.ndarray, facing_camera: np.ndarray, size: tuple[int, int], fill: float = 0.9) -> tuple[np.ndarray, Camera]:
    """Vertices moved into a camera frame that shows the body from the front, centred and
    filling `fill` of the image height; the camera for them."""
    w, h = size
    cam_pts = np.asarray(vertices, dtype=np.float64) @ np.asarray(facing_camera).T
    lo, hi = cam_pts.min(axis=0), cam_pts.max(axis=0)
    centre = (lo + hi) / 2
    focal = 2.0 * max(w, h)
    depth = focal * (hi[1] - lo[1]) / (fill * h) + (hi[2] - lo[2])
    cam_pts = cam_pts - centre + np.array([0.0, 0.0, depth])
    return cam_pts, Camera.from_focal(focal, w, h)
