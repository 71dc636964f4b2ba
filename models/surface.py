"""The textured surface: a glTF-ready mesh, and the checks and previews drawn from it.

glTF stores one UV per vertex, while Anny shares a vertex between UV charts, so vertices on
UV seams are duplicated before export. Silhouettes and previews are rasterised with OpenCV
in the photo's pixel convention (integer coordinates are pixel centres, like `Camera`).
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import trimesh
from PIL import Image
from trimesh.visual.material import PBRMaterial
from trimesh.visual.texture import TextureVisuals

from models.camera import Camera

_SHIFT = 4  # sub-pixel bits for cv2 polygon filling
_MESH_RGB = np.array([200.0, 205.0, 220.0])  # preview base colour: neutral, slightly cool


def split_uv_seams(
    faces: np.ndarray, uv: np.ndarray, face_uv_idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-corner UVs -> per-vertex UVs: one vertex per distinct (vertex, UV) corner, so the
    vertices on UV seams are duplicated (the only seam splitter: mesh GLB, rigged GLB, eval).

    `faces` (F,3) vertex indices, `uv` (T,2) Anny-convention UVs (v up), `face_uv_idx` (F,3)
    indices into `uv`. Returns the source vertex of each new vertex (N,), its UV in glTF
    convention (u, 1 - v: top-left origin) as float32 (N,2), and the faces re-indexed onto the
    new vertices (F,3) uint32."""
    faces = np.asarray(faces, dtype=np.int64)
    corner_vertex = faces.reshape(-1)
    corner_uv = np.asarray(uv)[np.asarray(face_uv_idx, dtype=np.int64).reshape(-1)].astype(np.float32)
    # Key on the exact float bits so equal UVs with different indices merge too.
    keys = np.column_stack([corner_vertex, corner_uv.view(np.int32).astype(np.int64)])
    unique_keys, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    uv_split = corner_uv[first]
    uv_gltf = np.column_stack([uv_split[:, 0], 1.0 - uv_split[:, 1]]).astype(np.float32)
    return unique_keys[:, 0], uv_gltf, inverse.reshape(faces.shape).astype(np.uint32)


def textured_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray,
    face_uv_idx: np.ndarray,
    texture_rgb: np.ndarray,
) -> trimesh.Trimesh:
    """Seam-split mesh whose PBR base colour is `texture_rgb` (row 0 = top, glTF style)."""
    source, gltf_uv, new_faces = split_uv_seams(faces, uv, face_uv_idx)
    material = PBRMaterial(
        name="avatar_skin",
        baseColorTexture=Image.fromarray(np.ascontiguousarray(texture_rgb, dtype=np.uint8)),
        metallicFactor=0.0,
        roughnessFactor=0.9,
        doubleSided=False,
    )
    vertices = np.asarray(vertices, dtype=np.float64)
    # normals from the unsplit surface, so lighting stays smooth across UV seams
    smooth = trimesh.Trimesh(vertices=vertices, faces=faces, process=False).vertex_normals
    # trimesh keeps UVs with v up and flips them when writing glTF
    trimesh_uv = np.stack([gltf_uv[:, 0], 1.0 - gltf_uv[:, 1]], axis=1)
    return trimesh.Trimesh(
        vertices=vertices[source],
        faces=new_faces,
        vertex_normals=smooth[source],
        visual=TextureVisuals(uv=trimesh_uv, material=material),
        process=False,
    )


def mesh_to_glb_bytes(mesh: trimesh.Trimesh) -> bytes:
    """Binary glTF of a (textured) mesh, normals included (viewers would otherwise shade flat)."""
    buffer = io.BytesIO()
    mesh.export(buffer, file_type="glb", include_normals=True)
    return buffer.getvalue()


def _pixel_triangles(
    vertices: np.ndarray, faces: np.ndarray, camera: Camera
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point pixel corners of the triangles fully in front of the camera, their ids."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    depth = camera.to_camera(vertices)[:, 2]
    keep = np.nonzero((depth[faces] > 1e-6).all(axis=1))[0]
    pixels = np.zeros((len(vertices), 2))
    ahead = depth > 1e-6
    pixels[ahead] = camera.project(vertices[ahead])
    fixed = np.round(pixels * (1 << _SHIFT))
    fixed = np.clip(fixed, -(2**28), 2**28).astype(np.int32)  # keep far-off corners sane
    return fixed[faces[keep]], keep


def project_silhouette(
    vertices: np.ndarray, faces: np.ndarray, camera: Camera, closed: bool = False
) -> np.ndarray:
    """(h,w) bool: pixels covered by any projected triangle.

    `closed=True` promises a closed, consistently wound (counter-clockwise outside) surface
    such as the body model: its silhouette is the union of the triangles facing the camera,
    so the back-facing half is skipped (twice as fast).
    """
    w, h = camera.image_size
    canvas = np.zeros((h, w), np.uint8)
    tris = _pixel_triangles(vertices, faces, camera)[0]
    if closed:
        # image y points down: a triangle facing the camera has a negative signed area
        e1 = (tris[:, 1] - tris[:, 0]).astype(np.int64)
        e2 = (tris[:, 2] - tris[:, 0]).astype(np.int64)
        tris = tris[e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0] <= 0]
    # one convex fill per triangle: cv2.fillPoly over many polygons uses an even-odd rule,
    # which would punch holes where triangles overlap
    for tri in tris:
        cv2.fillConvexPoly(canvas, tri, 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return canvas.astype(bool)


def silhouette_iou(
    vertices: np.ndarray, faces: np.ndarray, camera: Camera, mask: np.ndarray, threshold: int = 128
) -> float:
    """Intersection over union of the mesh silhouette and a person mask."""
    mask = np.asarray(mask)
    person = mask if mask.dtype == bool else mask >= threshold
    silhouette = project_silhouette(vertices, faces, camera)
    union = np.logical_or(silhouette, person).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(silhouette, person).sum() / union)


def render_overlay(
    image: np.ndarray,
    vertices: np.ndarray,
    faces: np.ndarray,
    camera: Camera,
    alpha: float = 0.6,
) -> np.ndarray:
    """The photo with the Lambert-shaded mesh blended on top, for a quick visual check."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    tris, keep = _pixel_triangles(vertices, faces, camera)
    corners = vertices[faces[keep]]
    normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    centre = corners.mean(axis=1)
    to_eye = camera.center_world - centre
    dist = np.linalg.norm(to_eye, axis=1)
    facing = np.einsum("nd,nd->n", normal, to_eye) / np.maximum(dist, 1e-12)
    front = facing > 0  # back faces are hidden behind front ones on a closed body
    order = np.argsort(-dist[front], kind="stable")  # painter's algorithm: far to near
    shade = 0.25 + 0.75 * facing[front][order]  # ambient + headlight Lambert
    colours = np.round(shade[:, None] * _MESH_RGB[None]).astype(int)
    h, w = image.shape[:2]
    render = np.zeros((h, w, 3), np.uint8)
    for tri, colour in zip(tris[front][order], colours, strict=True):
        cv2.fillConvexPoly(render, tri, colour.tolist(), lineType=cv2.LINE_8, shift=_SHIFT)
    out = np.asarray(image, dtype=np.uint8)[..., :3].copy()
    sel = render.any(axis=2)  # every shade is non-zero, so black means "not drawn"
    blend = alpha * render[sel].astype(np.float32) + (1.0 - alpha) * out[sel].astype(np.float32)
    out[sel] = np.clip(np.round(blend), 0, 255).astype(np.uint8)
    return out
