"""Preview images of an avatar GLB: front and side views, ray cast on the CPU.

Reads the GLB itself (positions, normals, UVs, indices and the base colour texture of its
first primitive, bind pose), casts one ray per pixel with embree through an orthographic
camera, and shades the hit with the texture colour under a headlight plus a little sky
light. No GPU, no window system: a preview that shows what a client would load.
(models/eval_render.py is a different tool: OpenCV painter's renders for fit evaluation.)
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pygltflib
import trimesh
from PIL import Image
from trimesh.ray.ray_pyembree import RayMeshIntersector

from models.gltf_load import load_glb
from models.gltf_read import read_accessor
from models.texture import sample_bilinear

BACKGROUND = np.array([236, 238, 242], np.float32)
UNTEXTURED = np.array([200, 205, 220], np.float32)

# (name, direction the camera looks along, image-up) in glTF axes (Y up, avatar facing +Z)
VIEWS = {
    "front": (np.array([0.0, 0.0, -1.0]), np.array([0.0, 1.0, 0.0])),
    "side": (np.array([-1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])),  # the avatar's left side
    "left": (np.array([-1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])),
    "right": (np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])),
    "back": (np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0])),
}


@dataclass
class GlbMesh:
    positions: np.ndarray  # (N,3) float64, glTF frame
    normals: np.ndarray  # (N,3) unit
    uvs: np.ndarray | None  # (N,2) glTF convention (origin top-left)
    faces: np.ndarray  # (F,3) int64
    texture: np.ndarray | None  # (H,W,3) uint8


def read_glb_mesh(glb: bytes, morph: Mapping[str, float] | None = None, morph_normals: str = "surface") -> GlbMesh:
    """The first primitive of the first mesh of an uncompressed GLB, in its bind pose.

    `morph` ({target name: weight}, names from the mesh's `extras.targetNames`) applies morph
    targets to the positions, as a client does. A target without NORMAL deltas leaves a client
    shading the moved surface with the rest normals (`morph_normals="rest"`, what three.js
    shows); "surface" shades it with the normals of the morphed surface (welded over the UV
    seams), which is how it would look with normal targets."""
    gltf = load_glb(glb)  # pygltflib's objects, read faster
    blob = gltf.binary_blob() or b""
    if gltf.extensionsRequired:
        raise ValueError(f"cannot preview a GLB that requires {gltf.extensionsRequired}")
    primitive = gltf.meshes[0].primitives[0]
    attrs = primitive.attributes
    positions = read_accessor(gltf, blob, attrs.POSITION).astype(np.float64)
    if primitive.indices is not None:
        faces = read_accessor(gltf, blob, primitive.indices).astype(np.int64).reshape(-1, 3)
    else:
        faces = np.arange(len(positions)).reshape(-1, 3)
    if attrs.NORMAL is not None:
        normals = read_accessor(gltf, blob, attrs.NORMAL).astype(np.float64)
    else:
        normals = trimesh.Trimesh(positions, faces, process=False).vertex_normals
    uvs = read_accessor(gltf, blob, attrs.TEXCOORD_0).astype(np.float64) if attrs.TEXCOORD_0 is not None else None
    if morph:
        positions, normals = _morphed(gltf, blob, positions, normals, faces, morph, morph_normals)
    return GlbMesh(positions, normals, uvs, faces, _base_colour_texture(gltf, blob, primitive))


def _morphed(
    gltf: pygltflib.GLTF2, blob: bytes, positions: np.ndarray, normals: np.ndarray, faces: np.ndarray,
    weights: Mapping[str, float], morph_normals: str,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Positions and normals of the first primitive with the named morph targets applied."""
    mesh = gltf.meshes[0]
    names = list((mesh.extras or {}).get("targetNames", []))
    targets = mesh.primitives[0].targets or []
    positions, normals = positions.copy(), normals.copy()
    has_normals = True
    for name, weight in weights.items():
        if name not in names:
            raise ValueError(f"the GLB has no morph target {name!r}")
        target = targets[names.index(name)]
        positions += weight * _target_deltas(gltf, blob, target["POSITION"], len(positions))
        if target.get("NORMAL") is not None:
            normals += weight * _target_deltas(gltf, blob, target["NORMAL"], len(positions))
        else:
            has_normals = False
    if morph_normals == "surface" and not has_normals:
        # one normal per position: the GLB splits vertices along UV seams
        _, weld = np.unique(np.round(positions, 6), axis=0, return_inverse=True)
        weld = weld.ravel()
        welded = np.zeros((int(weld.max()) + 1, 3))
        welded[weld] = positions
        normals = trimesh.Trimesh(welded, weld[faces], process=False).vertex_normals[weld]
    elif morph_normals not in ("surface", "rest"):
        raise ValueError(f"morph_normals is 'surface' or 'rest', not {morph_normals!r}")
    return positions, normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def _target_deltas(gltf: pygltflib.GLTF2, blob: bytes, index: int, count: int) -> np.ndarray:
    """(count,3) deltas of a morph target accessor, dense or sparse (as avatarpipe writes them)."""
    accessor = gltf.accessors[index]
    if accessor.sparse is None:
        return read_accessor(gltf, blob, index).astype(np.float64)
    if accessor.bufferView is not None:
        raise ValueError(f"morph target accessor {index} is sparse over a base buffer (not written here)")
    out = np.zeros((count, 3))
    sparse = accessor.sparse
    index_dtype = {5121: np.uint8, 5123: np.uint16, 5125: np.uint32}[sparse.indices.componentType]
    rows = np.frombuffer(blob, np.dtype(index_dtype).newbyteorder("<"), sparse.count, _offset(gltf, sparse.indices))
    values = np.frombuffer(blob, np.dtype(np.float32).newbyteorder("<"), 3 * sparse.count, _offset(gltf, sparse.values))
    out[rows.astype(np.int64)] = values.reshape(-1, 3)
    return out


def _offset(gltf: pygltflib.GLTF2, part) -> int:
    """Byte offset in the binary chunk of a sparse accessor's indices or values."""
    return int((gltf.bufferViews[part.bufferView].byteOffset or 0) + (part.byteOffset or 0))


def _base_colour_texture(gltf: pygltflib.GLTF2, blob: bytes, primitive) -> np.ndarray | None:
    if primitive.material is None:
        return None
    pbr = gltf.materials[primitive.material].pbrMetallicRoughness
    if pbr is None or pbr.baseColorTexture is None:
        return None
    image = gltf.images[gltf.textures[pbr.baseColorTexture.index].source]
    view = gltf.bufferViews[image.bufferView]
    start = view.byteOffset or 0
    data = blob[start : start + view.byteLength]
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def render_view(mesh: GlbMesh, view: str, height: int = 512, margin: float = 0.05) -> np.ndarray:
    """(height, width, 3) uint8 orthographic render of the mesh from one of `VIEWS`."""
    forward, up = VIEWS[view]
    right = np.cross(forward, up)
    lo, hi = mesh.positions.min(axis=0), mesh.positions.max(axis=0)
    centre = (lo + hi) / 2.0
    extent_up = float((hi - lo) @ np.abs(up))
    extent_right = float((hi - lo) @ np.abs(right))
    pixel = extent_up * (1.0 + 2.0 * margin) / height
    width = int(np.ceil(extent_right * (1.0 + 2.0 * margin) / pixel / 8.0) * 8)
    rows, cols = np.mgrid[0:height, 0:width]
    x = (cols.ravel() + 0.5 - width / 2.0) * pixel
    y = (height / 2.0 - rows.ravel() - 0.5) * pixel
    depth = float(np.abs(hi - lo).max()) * 2.0 + 1.0
    origins = centre + np.outer(x, right) + np.outer(y, up) - depth * forward
    directions = np.broadcast_to(forward, origins.shape)
    tri_mesh = trimesh.Trimesh(mesh.positions, mesh.faces, process=False)
    tri, ray, points = RayMeshIntersector(tri_mesh).intersects_id(
        origins, directions, multiple_hits=False, return_locations=True
    )
    image = np.tile(BACKGROUND, (height * width, 1))
    if len(ray):
        bary = trimesh.triangles.points_to_barycentric(tri_mesh.triangles[tri], points)
        corners = mesh.faces[tri]
        normal = np.einsum("nk,nkd->nd", bary, mesh.normals[corners])
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
        albedo = _albedo(mesh, corners, bary)
        headlight = np.clip(-(normal @ forward), 0.0, 1.0)
        sky = 0.5 + 0.5 * (normal @ up)
        image[ray] = albedo * (0.25 + 0.65 * headlight + 0.15 * sky)[:, None]
    return np.clip(np.round(image), 0, 255).astype(np.uint8).reshape(height, width, 3)


def _albedo(mesh: GlbMesh, corners: np.ndarray, bary: np.ndarray) -> np.ndarray:
    if mesh.texture is None or mesh.uvs is None:
        return np.tile(UNTEXTURED, (len(corners), 1))
    uv = np.einsum("nk,nkd->nd", bary, mesh.uvs[corners])
    h, w = mesh.texture.shape[:2]
    pixels = np.stack([np.mod(uv[:, 0], 1.0) * w - 0.5, np.mod(uv[:, 1], 1.0) * h - 0.5], axis=1)
    return sample_bilinear(mesh.texture, pixels.astype(np.float32))


def render_preview(glb: bytes, height: int = 512) -> np.ndarray:
    """Front and side views of a GLB side by side, (height, W, 3) uint8."""
    mesh = read_glb_mesh(glb)
    views = [render_view(mesh, name, height) for name in ("front", "side")]
    gap = np.tile(BACKGROUND.astype(np.uint8), (height, 8, 1))
    return np.concatenate([views[0], gap, views[1]], axis=1)


def preview_png(glb: bytes, height: int = 512) -> bytes:
    """`render_preview` encoded as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(render_preview(glb, height)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
