"""Quality metrics of the pipeline's artifacts: pure functions over the artifacts themselves.

Each artifact is summarised as one flat *metrics row* (a dataclass of JSON-able scalars) that
the asset checks evaluate against a versioned Great Expectations suite. Nothing here knows
about Dagster, storage or GX: the functions take bytes / arrays / the parsed fit document.

- `mesh`: topology on the *welded* surface (the GLB splits vertices on UV seams, which would
  otherwise look like holes), geometry in metres, UV layout and texture, and the silhouette
  against the photo's person mask when a camera and mask are given.
- `rigged_glb`: read with pygltflib exactly as a client would (accessors, skins, animations),
  plus the Khronos glTF validator's error / warning counts when it is installed.
- `smplx_params`: fit quality, shape parameters inside the body model's valid range, and the
  pose's joint rotations against coarse anatomical limits.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pygltflib
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from models.gltf_load import load_glb
from models.gltf_read import GlbReadError, read_accessor
from models.skinning import lbs

# Vertices closer than this (metres) are the same point when welding UV-seam duplicates.
WELD_TOLERANCE_M = 1e-6
# A triangle with less area than this (m^2) is degenerate: 1 mm x 1 µm.
DEGENERATE_AREA_M2 = 1e-9
UV_RASTER_SIZE = 512

GLTF_VALIDATOR_PACKAGE = "gltf-validator"
REPO_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# mesh
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeshMetrics:
    vertex_count: int  # as stored (UV seams split)
    face_count: int
    welded_vertex_count: int
    nonfinite_vertex_count: int
    degenerate_face_count: int  # repeated corner or (near) zero area
    duplicate_face_count: int  # same three corners as an earlier face, any order
    inconsistent_winding_edge_count: int  # edges two faces traverse the same way: a flipped face
    non_manifold_edge_count: int  # edges shared by more than two faces
    boundary_edge_count: int  # edges of one face only: the surface is open there
    hole_count: int  # closed loops of boundary edges
    component_count: int  # connected pieces (Anny: body, mouth, two eyes)
    height_m: float  # extent along the principal axis: the body's length in any pose
    bbox_max_extent_m: float
    max_edge_length_m: float
    self_intersection_fraction: float  # faces pierced by an edge of the same piece / faces
    has_uv: bool
    uv_coverage: float  # fraction of the UV square covered by UV triangles
    uv_out_of_range_fraction: float
    texture_width: int  # 0 when there is no base colour texture
    texture_height: int
    silhouette_iou: float | None = None  # mesh vs. the photo's person mask; None if not computed

    def row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Topology:
    welded_vertices: np.ndarray  # (W, 3)
    welded_faces: np.ndarray  # (F, 3) into welded_vertices
    nonfinite_vertex_count: int
    degenerate_face_count: int
    duplicate_face_count: int
    inconsistent_winding_edge_count: int
    non_manifold_edge_count: int
    boundary_edge_count: int
    hole_count: int
    component_count: int
    face_component: np.ndarray  # (F,) component label of each face


def weld_vertices(vertices: np.ndarray, tolerance: float = WELD_TOLERANCE_M) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices at the same position; returns the welded vertices and old -> new index.

    Non-finite vertices are never merged (each keeps its own welded index), so a NaN vertex
    cannot swallow its neighbours.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    finite = np.isfinite(vertices).all(axis=1)
    keys = np.zeros((len(vertices), 4), dtype=np.int64)
    with np.errstate(invalid="ignore", over="ignore"):
        keys[finite, :3] = np.round(vertices[finite] / tolerance).astype(np.int64)
    keys[~finite, 3] = np.arange(1, int((~finite).sum()) + 1)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    return vertices[first], inverse.reshape(-1)


def _edges(faces: np.ndarray) -> np.ndarray:
    """Directed edges (3F, 2) in face-corner order."""
    return np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])


def _components(n_vertices: int, edges: np.ndarray) -> np.ndarray:
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n_vertices, n_vertices))
    return connected_components(graph, directed=False)[1]


def _triangle_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    corners = vertices[faces]
    with np.errstate(invalid="ignore", over="ignore"):
        return 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)


def mesh_topology(vertices: np.ndarray, faces: np.ndarray) -> Topology:
    """Manifoldness, holes, winding and pieces of the welded surface."""
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    welded, remap = weld_vertices(vertices)
    wfaces = remap[faces]
    nonfinite = int((~np.isfinite(np.asarray(vertices, dtype=np.float64)).all(axis=1)).sum())

    repeated = (wfaces[:, 0] == wfaces[:, 1]) | (wfaces[:, 1] == wfaces[:, 2]) | (wfaces[:, 2] == wfaces[:, 0])
    area = _triangle_areas(welded, wfaces)
    # a face with a non-finite corner is counted by nonfinite_vertex_count, not here
    degenerate = repeated | (np.isfinite(area) & (area <= DEGENERATE_AREA_M2))
    _, first = np.unique(np.sort(wfaces, axis=1), axis=0, return_index=True)
    duplicate = np.ones(len(wfaces), dtype=bool)
    duplicate[first] = False

    # Edge analysis on faces that are proper triangles (a duplicate would double-count edges).
    good = wfaces[~repeated & ~duplicate]
    directed = _edges(good)
    undirected, counts = np.unique(np.sort(directed, axis=1), axis=0, return_counts=True)
    _, directed_counts = np.unique(directed, axis=0, return_counts=True)
    boundary = undirected[counts == 1]
    labels = _components(len(welded), _edges(wfaces)) if len(wfaces) else np.zeros(len(welded), int)
    hole_labels = _components(len(welded), boundary)[np.unique(boundary)] if len(boundary) else []
    return Topology(
        welded_vertices=welded,
        welded_faces=wfaces,
        nonfinite_vertex_count=nonfinite,
        degenerate_face_count=int(degenerate.sum()),
        duplicate_face_count=int(duplicate.sum()),
        inconsistent_winding_edge_count=int((directed_counts > 1).sum()),
        non_manifold_edge_count=int((counts > 2).sum()),
        boundary_edge_count=len(boundary),
        hole_count=len(np.unique(hole_labels)),
        component_count=len(np.unique(labels[np.unique(wfaces)])) if len(wfaces) else 0,
        face_component=labels[wfaces[:, 0]] if len(wfaces) else np.zeros(0, int),
    )


def self_intersection_fraction(vertices: np.ndarray, faces: np.ndarray, face_component: np.ndarray) -> float:
    """Estimate of self-intersection: the fraction of faces crossed by an edge of the same piece.

    Two triangles that intersect (non-coplanar) always have an edge of one crossing the other,
    so casting every edge as a segment against the surface (embree BVH, all hits) finds them.
    Faces sharing a corner with the edge are ignored, and so are crossings between different
    pieces: Anny's eyes and mouth interior sit inside the head by design.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    usable = np.isfinite(vertices[faces]).all(axis=(1, 2)) & (_triangle_areas(vertices, faces) > DEGENERATE_AREA_M2)
    if not usable.any():
        return 0.0
    kept = faces[usable]
    comp = np.asarray(face_component)[usable]
    edges = np.unique(np.sort(_edges(kept), axis=1), axis=0)
    origin = vertices[edges[:, 0]]
    direction = vertices[edges[:, 1]] - origin
    length = np.linalg.norm(direction, axis=1)
    nonzero = length > 0
    edges, origin, direction, length = edges[nonzero], origin[nonzero], direction[nonzero], length[nonzero]
    direction = direction / length[:, None]
    mesh = trimesh.Trimesh(vertices=vertices, faces=kept, process=False)
    tri, ray, hits = mesh.ray.intersects_id(origin, direction, multiple_hits=True, return_locations=True)
    if len(tri) == 0:
        return 0.0
    dist = np.einsum("ij,ij->i", hits - origin[ray], direction[ray])
    incident = (kept[tri] == edges[ray, 0][:, None]).any(axis=1) | (kept[tri] == edges[ray, 1][:, None]).any(axis=1)
    vertex_comp = np.full(len(vertices), -1)
    vertex_comp[kept.ravel()] = np.repeat(comp, 3)
    same_piece = comp[tri] == vertex_comp[edges[ray, 0]]
    crossing = ~incident & same_piece & (dist > 1e-9) & (dist < length[ray] - 1e-9)
    return float(len(np.unique(tri[crossing])) / len(faces))


def uv_coverage(uv: np.ndarray, faces: np.ndarray, size: int = UV_RASTER_SIZE) -> float:
    """Fraction of the unit UV square covered by the faces' UV triangles (overlaps count once)."""
    uv = np.asarray(uv, dtype=np.float64)
    corners = uv[np.asarray(faces, dtype=np.int64)]
    finite = np.isfinite(corners).all(axis=(1, 2))
    pixels = np.round(np.clip(corners[finite], -1.0, 2.0) * size * 16).astype(np.int32)  # 4 sub-pixel bits
    canvas = np.zeros((size, size), np.uint8)
    for tri in pixels:
        cv2.fillConvexPoly(canvas, tri, 1, lineType=cv2.LINE_8, shift=4)
    return float(canvas.mean())


def mesh_metrics(
    vertices: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray | None = None,
    texture_size: tuple[int, int] | None = None,
    silhouette_iou: float | None = None,
) -> MeshMetrics:
    """Metrics row of a triangle mesh (metres) with optional per-vertex UVs and texture size."""
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    topo = mesh_topology(vertices, faces)
    finite = vertices[np.isfinite(vertices).all(axis=1)]
    if len(finite) >= 2:
        extent = finite.max(axis=0) - finite.min(axis=0)
        centred = finite - finite.mean(axis=0)
        axis = np.linalg.svd(centred[:: max(1, len(centred) // 5000)], full_matrices=False)[2][0]
        height = float(np.ptp(centred @ axis))
    else:
        extent, height = np.zeros(3), 0.0
    edge_vec = topo.welded_vertices[topo.welded_faces[:, [1, 2, 0]]] - topo.welded_vertices[topo.welded_faces]
    with np.errstate(invalid="ignore"):
        edge_len = np.linalg.norm(edge_vec.reshape(-1, 3), axis=1)
    edge_len = edge_len[np.isfinite(edge_len)]
    has_uv = uv is not None and len(uv) == len(vertices)
    uv_arr = np.asarray(uv, dtype=np.float64) if has_uv else np.zeros((0, 2))
    out_of_range = ~((uv_arr >= -1e-6) & (uv_arr <= 1 + 1e-6)).all(axis=1) if has_uv else np.zeros(0, bool)
    width, height_px = texture_size or (0, 0)
    return MeshMetrics(
        vertex_count=len(vertices),
        face_count=len(faces),
        welded_vertex_count=len(topo.welded_vertices),
        nonfinite_vertex_count=topo.nonfinite_vertex_count,
        degenerate_face_count=topo.degenerate_face_count,
        duplicate_face_count=topo.duplicate_face_count,
        inconsistent_winding_edge_count=topo.inconsistent_winding_edge_count,
        non_manifold_edge_count=topo.non_manifold_edge_count,
        boundary_edge_count=topo.boundary_edge_count,
        hole_count=topo.hole_count,
        component_count=topo.component_count,
        height_m=round(height, 4),
        bbox_max_extent_m=round(float(extent.max()), 4),
        max_edge_length_m=round(float(edge_len.max()) if len(edge_len) else 0.0, 5),
        self_intersection_fraction=round(
            self_intersection_fraction(topo.welded_vertices, topo.welded_faces, topo.face_component), 5
        ),
        has_uv=bool(has_uv),
        uv_coverage=round(uv_coverage(uv_arr, faces), 4) if has_uv else 0.0,
        uv_out_of_range_fraction=round(float(out_of_range.mean()), 5) if has_uv else 0.0,
        texture_width=int(width),
        texture_height=int(height_px),
        silhouette_iou=None if silhouette_iou is None else round(float(silhouette_iou), 4),
    )


def load_glb_mesh(glb: bytes) -> trimesh.Trimesh:
    """The (single) textured mesh of a GLB, positions exactly as stored."""
    return trimesh.load(io.BytesIO(glb), file_type="glb", force="mesh", process=False)


def mesh_glb_metrics(glb: bytes, silhouette: Any = None) -> MeshMetrics:
    """Metrics row of the `mesh` artifact; `silhouette(vertices, faces) -> IoU` if available."""
    mesh = load_glb_mesh(glb)
    uv = getattr(mesh.visual, "uv", None)
    texture = getattr(getattr(mesh.visual, "material", None), "baseColorTexture", None)
    size = texture.size if texture is not None else None
    iou = silhouette(np.asarray(mesh.vertices), np.asarray(mesh.faces)) if silhouette else None
    return mesh_metrics(mesh.vertices, mesh.faces, uv, size, iou)


# ---------------------------------------------------------------------------------------------
# rigged GLB
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ValidatorReport:
    """The Khronos glTF validator's verdict; status `unavailable` when it is not installed."""

    status: str  # "ok" (it ran), "unavailable" (not installed), "failed" (it crashed / timed out)
    error_count: int | None = None
    warning_count: int | None = None
    info_count: int | None = None
    messages: list[dict] = field(default_factory=list)  # first issues: code, message, severity, pointer
    detail: str = ""


@dataclass(frozen=True)
class GlbMetrics:
    parse_ok: bool
    file_bytes: int
    mesh_count: int = 0
    vertex_count: int = 0
    triangle_count: int = 0
    nonfinite_position_count: int = 0
    height_m: float = 0.0  # y extent: glTF is Y up
    min_y_m: float = 0.0  # feet on the ground: ~0
    skin_count: int = 0
    joint_count: int = 0
    inverse_bind_matrix_mismatch_count: int = 0  # skins whose IBM count != joint count
    unskinned_primitive_count: int = 0  # primitives of a skinned mesh without JOINTS_0/WEIGHTS_0
    influence_set_count: int = 0  # JOINTS_n sets per primitive (three.js reads one)
    max_influences: int = 0  # non-zero weights per vertex, all sets
    max_weight_sum_error: float = 0.0  # max |sum(weights) - 1| over skinned vertices
    negative_weight_count: int = 0
    joint_index_out_of_range_count: int = 0
    animation_count: int = 0
    texture_count: int = 0
    texture_width: int = 0
    texture_height: int = 0
    gltf_validator_status: str = "unavailable"
    gltf_validator_error_count: int | None = None
    gltf_validator_warning_count: int | None = None
    parse_error: str | None = None

    def row(self) -> dict[str, Any]:
        return asdict(self)


def _image_size(gltf: pygltflib.GLTF2, blob: bytes, image: pygltflib.Image) -> tuple[int, int]:
    from PIL import Image

    if image.bufferView is None:
        return (0, 0)
    view = gltf.bufferViews[image.bufferView]
    start = view.byteOffset or 0
    try:
        with Image.open(io.BytesIO(blob[start : start + view.byteLength])) as img:
            return img.size
    except OSError:
        return (0, 0)


def glb_metrics(glb: bytes, validator: ValidatorReport | None = None, node_modules: Path | None = None) -> GlbMetrics:
    """Metrics row of a skinned GLB as a client sees it (pygltflib), plus the validator's counts.
    ``node_modules``: where three's meshopt decoder is (default: `clients_node_modules()`)."""
    validator = validator or ValidatorReport(status="unavailable")
    common = {
        "file_bytes": len(glb),
        "gltf_validator_status": validator.status,
        "gltf_validator_error_count": validator.error_count,
        "gltf_validator_warning_count": validator.warning_count,
    }
    try:
        gltf = load_glb(glb)  # pygltflib's objects, read faster
        if MESHOPT_EXTENSION in (gltf.extensionsUsed or []):
            gltf = load_glb(decode_meshopt_glb(glb, node_modules))
        blob = gltf.binary_blob() or b""
        return _glb_metrics(gltf, blob, common)
    except (GlbReadError, ValueError, KeyError, IndexError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        return GlbMetrics(parse_ok=False, parse_error=f"{type(exc).__name__}: {exc}"[:300], **common)


def _local_matrix(node: pygltflib.Node) -> np.ndarray:
    if node.matrix is not None:
        return np.asarray(node.matrix, dtype=np.float64).reshape(4, 4).T  # column-major
    from scipy.spatial.transform import Rotation

    m = np.eye(4)
    m[:3, :3] = Rotation.from_quat(node.rotation or [0, 0, 0, 1]).as_matrix() * np.asarray(node.scale or [1, 1, 1])
    m[:3, 3] = node.translation or [0, 0, 0]
    return m


def node_global_matrices(gltf: pygltflib.GLTF2) -> np.ndarray:
    """(N,4,4) world matrix of every node in its rest (bind) transform."""
    parent = {child: i for i, node in enumerate(gltf.nodes) for child in (node.children or [])}
    world: dict[int, np.ndarray] = {}

    def resolve(i: int, depth: int = 0) -> np.ndarray:
        if depth > len(gltf.nodes):
            raise GlbReadError("the node hierarchy has a cycle")
        if i not in world:
            local = _local_matrix(gltf.nodes[i])
            world[i] = resolve(parent[i], depth + 1) @ local if i in parent else local
        return world[i]

    return np.stack([resolve(i) for i in range(len(gltf.nodes))]) if gltf.nodes else np.zeros((0, 4, 4))


def _bind_pose_positions(
    positions: np.ndarray, joints: np.ndarray, weights: np.ndarray, joint_matrices: np.ndarray
) -> np.ndarray:
    """Positions as a client renders them at rest: sum_k w_k (G_j . IBM_j) p (glTF skinning).

    For a plain export G_j . IBM_j is the identity; quantised GLBs (KHR_mesh_quantization)
    carry the dequantisation in the inverse bind matrices, so this is where metres come back."""
    return lbs(positions, np.clip(joints, 0, len(joint_matrices) - 1), weights, joint_matrices)


def _glb_metrics(gltf: pygltflib.GLTF2, blob: bytes, common: dict) -> GlbMetrics:
    skinned_meshes = {node.mesh: node.skin for node in gltf.nodes if node.mesh is not None and node.skin is not None}
    mesh_nodes = {node.mesh: i for i, node in enumerate(gltf.nodes) if node.mesh is not None}
    world = node_global_matrices(gltf)
    positions, vertex_count, triangles = [], 0, 0
    unskinned, sets, max_infl, sum_err, negative, out_of_range = 0, 0, 0, 0.0, 0, 0
    for mesh_index, mesh in enumerate(gltf.meshes):
        skin = gltf.skins[skinned_meshes[mesh_index]] if mesh_index in skinned_meshes else None
        for prim in mesh.primitives:
            attrs = prim.attributes
            pos = read_accessor(gltf, blob, attrs.POSITION).astype(np.float64)
            vertex_count += len(pos)
            if prim.mode in (None, 4):
                count = gltf.accessors[prim.indices].count if prim.indices is not None else len(pos)
                triangles += count // 3
            joint_sets = [getattr(attrs, f"JOINTS_{k}", None) for k in range(2)]
            weight_sets = [getattr(attrs, f"WEIGHTS_{k}", None) for k in range(2)]
            pairs = [(j, w) for j, w in zip(joint_sets, weight_sets, strict=True) if j is not None and w is not None]
            if skin is None or not pairs:
                unskinned += skin is not None
                node = mesh_nodes.get(mesh_index)
                placed = pos if node is None else pos @ world[node][:3, :3].T + world[node][:3, 3]
                positions.append(placed)
                continue
            sets = max(sets, len(pairs))
            joints = np.concatenate([read_accessor(gltf, blob, j) for j, _ in pairs], axis=1).astype(np.int64)
            weights = np.concatenate([read_accessor(gltf, blob, w) for _, w in pairs], axis=1).astype(np.float64)
            ibm = read_accessor(gltf, blob, skin.inverseBindMatrices).astype(np.float64).reshape(-1, 4, 4)
            if len(ibm) == len(skin.joints):
                joint_matrices = world[list(skin.joints)] @ np.swapaxes(ibm, 1, 2)  # IBMs are column-major
                positions.append(_bind_pose_positions(pos, joints, weights, joint_matrices))
            else:  # counted by inverse_bind_matrix_mismatch_count; keep the raw positions
                positions.append(pos)
            nonzero = weights != 0
            max_infl = max(max_infl, int(nonzero.sum(axis=1).max(initial=0)))
            sum_err = max(sum_err, float(np.abs(weights.sum(axis=1) - 1.0).max(initial=0.0)))
            negative += int((weights < 0).sum())
            out_of_range += int(((joints >= len(skin.joints)) & nonzero).sum())
    allpos = np.concatenate(positions) if positions else np.zeros((0, 3))
    finite = allpos[np.isfinite(allpos).all(axis=1)]
    ibm_mismatch = sum(
        1
        for skin in gltf.skins
        if skin.inverseBindMatrices is None or gltf.accessors[skin.inverseBindMatrices].count != len(skin.joints)
    )
    sizes = [_image_size(gltf, blob, image) for image in gltf.images]
    return GlbMetrics(
        parse_ok=True,
        mesh_count=len(gltf.meshes),
        vertex_count=vertex_count,
        triangle_count=triangles,
        nonfinite_position_count=int(len(allpos) - len(finite)),
        height_m=round(float(np.ptp(finite[:, 1])) if len(finite) else 0.0, 4),
        min_y_m=round(float(finite[:, 1].min()) if len(finite) else 0.0, 4),
        skin_count=len(gltf.skins),
        joint_count=max((len(skin.joints) for skin in gltf.skins), default=0),
        inverse_bind_matrix_mismatch_count=ibm_mismatch,
        unskinned_primitive_count=unskinned,
        influence_set_count=sets,
        max_influences=max_infl,
        max_weight_sum_error=float(f"{sum_err:.3g}"),
        negative_weight_count=negative,
        joint_index_out_of_range_count=out_of_range,
        animation_count=len(gltf.animations),
        texture_count=len(gltf.images),
        texture_width=max((s[0] for s in sizes), default=0),
        texture_height=max((s[1] for s in sizes), default=0),
        **common,
    )


MESHOPT_EXTENSION = "EXT_meshopt_compression"
# three.js's meshopt decoder (WebAssembly), from the pinned `three` package in clients/.
_MESHOPT_DECODER = Path("three") / "examples" / "jsm" / "libs" / "meshopt_decoder.module.js"

# Reads a GLB on stdin, decodes every EXT_meshopt_compression buffer view into the binary chunk
# and writes the plain GLB (same accessors, no compression extension) to stdout.
_MESHOPT_JS = """
const fs = require('fs');
const { pathToFileURL } = require('url');
(async () => {
  const { MeshoptDecoder } = await import(pathToFileURL(process.argv[1]).href);
  await MeshoptDecoder.ready;
  const glb = fs.readFileSync(0);
  const jsonLength = glb.readUInt32LE(12);
  const json = JSON.parse(glb.subarray(20, 20 + jsonLength).toString('utf8'));
  const binStart = 20 + jsonLength;
  const bin = binStart < glb.length ? glb.subarray(binStart + 8, binStart + 8 + glb.readUInt32LE(binStart)) : Buffer.alloc(0);
  const parts = [bin];
  let total = bin.length;
  for (const view of json.bufferViews || []) {
    const ext = view.extensions && view.extensions.EXT_meshopt_compression;
    if (!ext) continue;
    if ((ext.buffer || 0) !== 0) throw new Error('compressed data outside the binary chunk');
    const source = new Uint8Array(bin.buffer, bin.byteOffset + (ext.byteOffset || 0), ext.byteLength);
    const target = new Uint8Array(ext.count * ext.byteStride);
    MeshoptDecoder.decodeGltfBuffer(target, ext.count, ext.byteStride, source, ext.mode, ext.filter || 'NONE');
    const pad = (4 - (total % 4)) % 4;
    if (pad) { parts.push(Buffer.alloc(pad)); total += pad; }
    view.buffer = 0; view.byteOffset = total; view.byteLength = target.length;
    delete view.extensions.EXT_meshopt_compression;
    parts.push(Buffer.from(target.buffer)); total += target.length;
  }
  const pad = (4 - (total % 4)) % 4;
  if (pad) { parts.push(Buffer.alloc(pad)); total += pad; }
  json.buffers[0].byteLength = total;
  for (const key of ['extensionsUsed', 'extensionsRequired']) {
    if (json[key]) json[key] = json[key].filter((e) => e !== 'EXT_meshopt_compression');
  }
  let text = Buffer.from(JSON.stringify(json), 'utf8');
  text = Buffer.concat([text, Buffer.alloc((4 - (text.length % 4)) % 4, 0x20)]);
  const header = Buffer.alloc(12); header.write('glTF', 0); header.writeUInt32LE(2, 4);
  header.writeUInt32LE(12 + 8 + text.length + 8 + total, 8);
  const chunk = (length, type) => { const b = Buffer.alloc(8); b.writeUInt32LE(length, 0); b.write(type, 4); return b; };
  process.stdout.write(Buffer.concat([header, chunk(text.length, 'JSON'), text, chunk(total, 'BIN\\0'), ...parts]));
})().catch((e) => { process.stderr.write(String((e && e.stack) || e)); process.exit(3); });
"""


def decode_meshopt_glb(glb: bytes, node_modules: Path | None = None, timeout_s: float = 120.0) -> bytes:
    """The same GLB with its EXT_meshopt_compression buffer views decoded (three.js's decoder,
    as clients decode it). Raises GlbReadError when node or the decoder is missing: a compressed
    GLB that cannot be read cannot be checked, which must not pass."""
    decoder = (node_modules or clients_node_modules()) / _MESHOPT_DECODER
    node = shutil.which("node")
    if node is None or not decoder.is_file():
        raise GlbReadError(f"meshopt-compressed GLB, but node or {decoder} is missing to decode it")
    try:
        proc = subprocess.run(
            [node, "-e", _MESHOPT_JS, str(decoder)], input=glb, capture_output=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise GlbReadError(f"meshopt decoding timed out after {timeout_s:.0f} s") from exc
    if proc.returncode != 0:
        raise GlbReadError(f"meshopt decoding failed: {proc.stderr.decode(errors='replace')[-300:]}")
    return proc.stdout


def clients_node_modules() -> Path:
    """The npm packages (`gltf-validator`, `three`'s meshopt decoder) by default: the repository's
    clients/node_modules (`npm ci` in clients/); the pipeline passes the configured
    `AVATARPIPE_NODE_MODULES` as ``node_modules``."""
    return REPO_ROOT / "clients" / "node_modules"


# The one way the Khronos validator runs (the client tests use it too): the GLB on stdin.
VALIDATE_SCRIPT = REPO_ROOT / "clients" / "validate.mjs"


def gltf_validator_unavailable(node_modules: Path | None, script: Path = VALIDATE_SCRIPT) -> ValidatorReport | None:
    """Why the validator cannot run here (node, the npm package or ``script`` missing), as an
    `unavailable` report; None when it can run."""
    package = (node_modules or clients_node_modules()) / GLTF_VALIDATOR_PACKAGE
    if shutil.which("node") is None:
        return ValidatorReport(status="unavailable", detail="node is not on PATH")
    if not (package / "package.json").is_file():
        return ValidatorReport(status="unavailable", detail=f"npm package {GLTF_VALIDATOR_PACKAGE} not found at {package}")
    if not script.is_file():
        return ValidatorReport(status="unavailable", detail=f"the validator script {script} is missing")
    return None


def validator_report(issues: dict) -> ValidatorReport:
    """The report of the validator's issue summary (`numErrors`, …, `messages` worst first), as
    both `clients/validate.mjs` and the long-lived `clients/validate_server.mjs` print it."""
    messages = [
        {k: m.get(k) for k in ("code", "message", "severity", "pointer")} for m in issues.get("messages", [])[:20]
    ]
    return ValidatorReport(
        status="ok",
        error_count=int(issues["numErrors"]),
        warning_count=int(issues["numWarnings"]),
        info_count=int(issues["numInfos"]),
        messages=messages,
    )


def run_gltf_validator(glb: bytes, node_modules: Path | None = None, timeout_s: float = 120.0) -> ValidatorReport:
    """Run the Khronos glTF validator (npm `gltf-validator`) on the GLB in a node subprocess.

    Never passes silently: without node or the package the status is `unavailable`, and a
    crash or timeout is `failed`, each with the reason in `detail`.
    """
    unavailable = gltf_validator_unavailable(node_modules)
    if unavailable is not None:
        return unavailable
    package = (node_modules or clients_node_modules()) / GLTF_VALIDATOR_PACKAGE
    try:
        proc = subprocess.run(
            [str(shutil.which("node")), str(VALIDATE_SCRIPT), "--package", str(package), "-"],
            input=glb,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ValidatorReport(status="failed", detail=f"validator timed out after {timeout_s:.0f} s")
    if proc.returncode not in (0, 1):  # 1: it ran and found errors
        return ValidatorReport(status="failed", detail=proc.stderr.decode(errors="replace")[-500:])
    try:
        return validator_report(json.loads(proc.stdout)["-"])
    except (ValueError, KeyError, TypeError) as exc:
        return ValidatorReport(status="failed", detail=f"unreadable validator output ({exc})")


# ---------------------------------------------------------------------------------------------
# body fit (smplx_params)
# ---------------------------------------------------------------------------------------------

# Valid range of each body model's shape parameters: Anny's phenotype values live in [0, 1];
# SMPL-X betas are in standard deviations of the shape space, beyond +-5 is not a human body.
SHAPE_RANGES: dict[str, tuple[float, float]] = {"anny": (0.0, 1.0), "smplx": (-5.0, 5.0)}

# Coarse anatomical limits on the total rotation (degrees) of a bone away from the rig's
# reference orientation, by bone name without the rig prefix and side. A pose beyond them bends
# a joint further than a human can; the root and unknown bones are not limited.
JOINT_ROTATION_LIMITS_DEG: dict[str, float] = {
    "UpLeg": 140.0,  # hip: flexion ~125, abduction ~45
    "Leg": 160.0,  # knee flexion ~150
    "Foot": 75.0,  # ankle
    "ToeBase": 70.0,
    "Spine": 50.0,
    "Spine1": 50.0,
    "Spine2": 50.0,
    "Neck": 60.0,
    "Head": 75.0,
    "Shoulder": 60.0,  # clavicle: elevation ~50 plus protraction
    "Arm": 175.0,  # gleno-humeral: almost anything
    "ForeArm": 160.0,  # elbow flexion ~150 plus pronation
    "Hand": 95.0,  # wrist
    "HandThumb": 100.0,
    "HandFinger": 110.0,  # index, middle, ring, pinky joints
}
_FINGERS = ("HandIndex", "HandMiddle", "HandRing", "HandPinky")


@dataclass(frozen=True)
class ParamsMetrics:
    body_model: str
    reprojection_error_rel: float | None  # median keypoint error / person height in the image
    fit_silhouette_iou: float | None
    shape_value_count: int
    shape_nonfinite_count: int
    shape_out_of_range_count: int
    shape_min: float | None
    shape_max: float | None
    pose_bone_count: int
    pose_nonfinite_count: int
    rotation_orthonormality_error: float  # max |R^T R - I| or |det R - 1| over bones
    limited_bone_count: int  # bones with a known limit
    joint_limit_violation_count: int
    max_joint_limit_excess_deg: float
    max_joint_rotation_deg: float
    camera_valid: bool  # finite intrinsics, positive focal length and image size

    def row(self) -> dict[str, Any]:
        return asdict(self)


def joint_rotation_limit(bone_name: str) -> float | None:
    """The limit for a bone name such as `mixamorig:LeftForeArm`, or None (root, unknown)."""
    short = bone_name.split(":")[-1]
    for side in ("Left", "Right"):
        short = short.removeprefix(side)
    if short.startswith(_FINGERS):
        return JOINT_ROTATION_LIMITS_DEG["HandFinger"]
    if short.startswith("HandThumb"):
        return JOINT_ROTATION_LIMITS_DEG["HandThumb"]
    return JOINT_ROTATION_LIMITS_DEG.get(short)


def rotation_angles_deg(rotations: np.ndarray) -> np.ndarray:
    """Geodesic angle (degrees) of each (N,3,3) rotation from the identity."""
    cos = (np.trace(rotations, axis1=1, axis2=2) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def _shape_values(fit: dict) -> np.ndarray:
    """Anny's phenotype values, else the model's own `parameters.betas` (SMPL-X)."""
    if fit.get("phenotype"):
        values = list(fit["phenotype"].values())
    else:
        values = list(np.ravel(fit.get("parameters", {}).get("betas", [])))
    return np.asarray(values, dtype=np.float64)


def _pose(fit: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(pose matrices (N,4,4) incl. the root, joint rotations (J,3,3), joint names).

    Anny stores `local-ref` 4x4 matrices whose first one is the root (the camera-frame
    placement, not a joint). SMPL-X-style fits store axis-angle arrays in `parameters`
    (`body_pose`, hand/jaw/eye poses; `global_orient` is the root): no names, so no limits.
    """
    if fit.get("pose_parameters") is not None:
        pose = np.asarray(fit["pose_parameters"], dtype=np.float64).reshape(-1, 4, 4)
        return pose, pose[1:, :3, :3], list(fit.get("bone_names", []))[1:]
    from scipy.spatial.transform import Rotation

    params = fit.get("parameters", {})
    keys = sorted(k for k in params if k.endswith("pose"))
    rotvec = np.concatenate([np.asarray(params[k], np.float64).reshape(-1, 3) for k in keys]) if keys else np.zeros((0, 3))
    rot = np.full((len(rotvec), 3, 3), np.nan)
    finite = np.isfinite(rotvec).all(axis=1)
    if finite.any():
        rot[finite] = Rotation.from_rotvec(rotvec[finite]).as_matrix()
    pose = np.tile(np.eye(4), (len(rot) + 1, 1, 1))
    pose[1:, :3, :3] = rot
    return pose, rot, []


def params_metrics(fit: dict) -> ParamsMetrics:
    """Metrics row of a body-fit document (`smplx_params` JSON)."""
    body = str(fit.get("body_model", {}).get("name", "unknown"))
    shape = _shape_values(fit)
    low, high = SHAPE_RANGES.get(body, (-math.inf, math.inf))
    finite_shape = shape[np.isfinite(shape)]
    pose, rot, names = _pose(fit)
    finite_bones = np.isfinite(rot).all(axis=(1, 2))
    rot_ok = rot[finite_bones]
    ortho = np.abs(np.swapaxes(rot_ok, 1, 2) @ rot_ok - np.eye(3)).max(axis=(1, 2)) if len(rot_ok) else np.zeros(0)
    det = np.abs(np.linalg.det(rot_ok) - 1.0) if len(rot_ok) else np.zeros(0)
    angles = np.full(len(rot), np.nan)
    angles[finite_bones] = rotation_angles_deg(rot_ok)
    excess = []
    for name, angle in zip(names, angles, strict=False):
        limit = joint_rotation_limit(name)
        if limit is not None and np.isfinite(angle):
            excess.append(angle - limit)
    excess_arr = np.asarray(excess)
    metrics = fit.get("metrics", {})
    return ParamsMetrics(
        body_model=body,
        reprojection_error_rel=_finite_or_none(metrics.get("keypoint_reprojection_rel")),
        fit_silhouette_iou=_finite_or_none(metrics.get("silhouette_iou")),
        shape_value_count=len(shape),
        shape_nonfinite_count=int(len(shape) - len(finite_shape)),
        shape_out_of_range_count=int(((finite_shape < low) | (finite_shape > high)).sum()),
        shape_min=round(float(finite_shape.min()), 5) if len(finite_shape) else None,
        shape_max=round(float(finite_shape.max()), 5) if len(finite_shape) else None,
        pose_bone_count=len(pose),
        pose_nonfinite_count=int((~np.isfinite(pose)).any(axis=(1, 2)).sum()),
        rotation_orthonormality_error=float(f"{max(ortho.max(initial=0.0), det.max(initial=0.0)):.3g}"),
        limited_bone_count=len(excess_arr),
        joint_limit_violation_count=int((excess_arr > 0).sum()),
        max_joint_limit_excess_deg=round(float(max(excess_arr.max(initial=0.0), 0.0)), 2),
        max_joint_rotation_deg=round(float(np.nanmax(angles)) if np.isfinite(angles).any() else 0.0, 2),
        camera_valid=_camera_valid(fit.get("camera", {})),
    )


def _finite_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _camera_valid(camera: dict) -> bool:
    try:
        k = np.asarray(camera["K"], dtype=np.float64)
        width, height = camera["image_size"]
    except (KeyError, TypeError, ValueError):
        return False
    return bool(k.shape == (3, 3) and np.isfinite(k).all() and k[0, 0] > 0 and k[1, 1] > 0 and width > 0 and height > 0)
