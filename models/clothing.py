"""Clothed geometry beyond the body model: per-vertex offsets along normals (SMPL+D).

The naked fitted body misses what a person looks like in a photo: hair volume, a hood, a
puffer jacket, a skirt. SMPL+D-style, the clothed surface is the body model's rest surface
plus per-vertex offsets D, posed by the same linear blend skinning (LBS):

    clothed_rest  = rest_vertices + D,        D_v = s_v * n_v  (n_v: rest-surface normal)
    clothed_posed = LBS(clothed_rest)         (same skin weights, same topology, same UVs)

so the rigged GLB skins the clothed surface with the body's own weights, and the posed
surface in the photo frame is exactly `posed_body + s_v * (A_v n_v)` (A_v: the vertex's
blended bone transform, LBS is linear in the rest position).

The scalars s_v are fitted so the projected clothed surface matches the person mask, with
one photo as the only evidence (numpy + scipy on the CPU, about a second):

- spill: every vertex projecting outside the mask is pulled in, through the mask's
  distance transform sampled (bilinearly) at the projected vertex;
- coverage: mask pixels the current surface leaves uncovered pull a rim vertex (seen
  edge-on, on the silhouette's outline, whose outline moves towards the pixel when it grows)
  robustly (Geman-McClure), only within the reach its limit allows and with a cap on how
  many pixels one vertex answers for, so a held bag or ski pole cannot drag the surface;
- smoothness: the graph Laplacian quadratic form over mesh edges (s^T L s), so offsets
  spread from the rim over the cross-section like cloth rather than spiking, plus a
  small magnitude prior that keeps unseen areas near the body;
- limits: each vertex has a range [-inward, outward] by body part (Anny's UV body part
  segmentation): zero on hands, face and eyes so they stay clean, small on feet, larger on
  the scalp (hair) and the legs (skirts, wide trousers).

Every data residual depends on one vertex's offset, so the Gauss-Newton normal equations are
a diagonal plus the Laplacian: a sparse solve per round (SuperLU), a few rounds with fresh
correspondences, offsets clipped to their limits after each.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import trimesh
from scipy import sparse
from scipy.sparse.linalg import spsolve
from scipy.spatial import cKDTree

from models.body_model import anny_forward
from models.camera import Camera
from models.skinning import apply_blended, blend_transforms
from models.surface import project_silhouette, silhouette_iou
from models.texture import face_part_labels, part_names, sample_bilinear

# Anny's frame: Z up, facing -Y.
_ANNY_FORWARD = np.array([0.0, -1.0, 0.0])
# Head surface further forward than this share of the nose tip's lead over the head's centre is face.
FACE_DEPTH_FRACTION = 0.45
_ZERO_PARTS = ("hand.L", "hand.R", "eye_back.L", "eye_front.L", "eye_back.R", "eye_front.R",
               "eye_cavity.L", "eye_cavity.R", "mouth_cavity", "tongue")  # fmt: skip


@dataclass(frozen=True)
class ClothingConfig:
    """Offset limits (metres, along the rest normal) and the optimisation schedule."""

    enabled: bool = True
    body_out_m: float = 0.08  # torso, arms: jackets, hoods, sleeves
    legs_out_m: float = 0.10  # below the hips: skirts, wide trousers
    scalp_out_m: float = 0.10  # hair volume on top, sides and back of the head
    feet_out_m: float = 0.02  # shoes
    inward_m: float = 0.02  # a body fitted slightly too wide may shrink this much
    face_m: float = 0.0  # face, hands, eyes: kept as the body model made them
    limit_smoothing_iters: int = 8  # limits blend over a few rings at part borders
    rounds: int = 10  # Gauss-Newton rounds, each with fresh correspondences
    damping: float = 1e-4  # Levenberg-Marquardt style damping per vertex
    spill_weight: float = 1.0
    coverage_weight: float = 1.0
    smooth_weight: float = 3e-5  # per edge, offsets in cm, data terms in person heights
    magnitude_weight: float = 1e-7
    rim_cos: float = 0.35  # |cos(normal, view)| below this counts as seen edge-on
    rim_band_px: float = 2.5  # a rim vertex projects this close to the silhouette outline
    gmof_rho: float = 0.03  # robust scale of coverage residuals, fraction of person height
    max_coverage_pixels: int = 4000
    pull_cap: float = 4.0  # pixels' worth of pull one vertex can receive
    candidates: int = 8  # nearest rim vertices considered per uncovered pixel
    min_pull_cos: float = 0.7  # the pixel must lie within ~45 degrees of the vertex's outward motion
    mask_threshold: int = 128
    seed: int = 0


@dataclass
class ClothingFit:
    """Fitted offsets and the surfaces they give."""

    normal_offsets: np.ndarray  # (V,) s_v, metres along the rest normal
    offsets: np.ndarray  # (V,3) D in Anny's rest frame
    rest_vertices: np.ndarray  # (V,3) clothed rest surface, Anny frame
    posed_vertices: np.ndarray  # (V,3) clothed surface in the photo's world frame
    metrics: dict[str, float | str] = field(default_factory=dict)
    garment: Garment | None = None  # a garment spanning the legs; None when there is none


@dataclass(frozen=True)
class _Body:
    rest: np.ndarray  # (V,3) Anny rest vertices
    rest_normals: np.ndarray  # (V,3)
    posed: np.ndarray  # (V,3) LBS(rest) in the photo frame
    posed_dirs: np.ndarray  # (V,3) A_v n_v: how a unit normal offset moves the posed vertex
    posed_linear: np.ndarray  # (V,3,3) A_v: how any rest offset moves the posed vertex


def evaluate_body(
    model: torch.nn.Module, phenotype: dict[str, float], pose_parameters: np.ndarray, faces: np.ndarray
) -> _Body:
    """Anny's rest and posed surfaces plus the per-vertex skinning of a normal offset."""
    out = anny_forward(model, phenotype, pose_parameters)
    rest = out["rest_vertices"][0].double().cpu().numpy()
    bones = out["bone_poses"][0].double().cpu().numpy() @ np.linalg.inv(out["rest_bone_poses"][0].double().cpu().numpy())
    indices = model.vertex_bone_indices.detach().cpu().numpy().astype(np.int64)
    weights = model.vertex_bone_weights.detach().cpu().numpy().astype(np.float64)
    blended = blend_transforms(indices, weights, bones)  # (V,4,4) per-vertex LBS
    posed = apply_blended(blended, rest)
    normals = rest_normals(rest, faces)
    dirs = np.einsum("vij,vj->vi", blended[:, :3, :3], normals)
    return _Body(
        rest=rest, rest_normals=normals, posed=posed, posed_dirs=dirs, posed_linear=blended[:, :3, :3]
    )


def rest_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit area-weighted vertex normals of the rest surface."""
    normals = trimesh.Trimesh(vertices=vertices, faces=faces, process=False).vertex_normals
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


# --- limits -----------------------------------------------------------------------------


def offset_limits(
    rest: np.ndarray,
    normals: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray,
    face_uv_idx: np.ndarray,
    config: ClothingConfig = ClothingConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex (inward, outward) offset bounds in metres, both >= 0.

    Parts come from Anny's UV segmentation; the face is the front of the head below the
    hairline (forward-facing normals, lower than 8 cm under the crown), the legs everything
    below the crotch. Limits are smoothed over a few edge rings so the surface has no step at
    part borders, then hard zeros are put back where the surface must stay untouched.
    """
    names = part_names()
    labels = face_part_labels(uv, face_uv_idx)
    n_vertices = len(rest)
    face_out = np.full(len(faces), config.body_out_m)
    face_in = np.full(len(faces), config.inward_m)
    is_part = {name: labels == names.index(name) for name in names}
    feet = is_part.get("foot.L", False) | is_part.get("foot.R", False)
    face_out[feet] = config.feet_out_m
    face_in[feet] = 0.0
    zero_faces = np.zeros(len(faces), bool)
    for name in _ZERO_PARTS:
        zero_faces |= is_part.get(name, np.zeros(len(faces), bool))

    height = rest[:, 2].max() - rest[:, 2].min()
    crotch = _crotch_height(rest, height)
    centroid = rest[faces].mean(axis=1)
    face_out[(centroid[:, 2] < crotch) & ~feet] = config.legs_out_m

    head = is_part.get("head", np.zeros(len(faces), bool))
    crown = rest[:, 2].max()
    face_normal = normals[faces].mean(axis=1)
    forward = face_normal @ _ANNY_FORWARD
    # The face by its normals misses its pockets (the nostrils' undersides face down, the eye
    # sockets' walls sideways), which then take hair volume and hang as flaps; what lies well in
    # front of the head's centre is face whatever its normal (the ears do not reach that far).
    head_centre = rest[np.unique(faces[head])].mean(axis=0) if head.any() else rest.mean(axis=0)
    ahead = (centroid - head_centre) @ _ANNY_FORWARD
    in_front = ahead > FACE_DEPTH_FRACTION * max(float(ahead[head].max()) if head.any() else 0.0, 1e-6)
    is_face = head & ((forward > 0.2) | in_front) & (centroid[:, 2] < crown - 0.08)
    face_out[head] = config.scalp_out_m
    face_in[head] = 0.0
    zero_faces |= is_face

    out = _faces_to_vertices_min(faces, face_out, n_vertices)
    inward = _faces_to_vertices_min(faces, face_in, n_vertices)
    zero = np.zeros(n_vertices, bool)
    zero[faces[zero_faces].ravel()] = True
    out[zero], inward[zero] = config.face_m, 0.0
    edges = mesh_edges(faces)
    for _ in range(config.limit_smoothing_iters):
        out = _neighbour_mean(out, edges)
        inward = _neighbour_mean(inward, edges)
        out[zero], inward[zero] = config.face_m, 0.0
    return inward, out


def _crotch_height(rest: np.ndarray, height: float) -> float:
    """Height where the legs part: the highest level at which no vertex lies on the midline."""
    bottom = rest[:, 2].min()
    near_mid = np.abs(rest[:, 0]) < 0.015
    levels = rest[near_mid, 2]
    levels = levels[levels > bottom + 0.2 * height]  # ignore the feet
    return float(levels.min()) if len(levels) else bottom + 0.45 * height


def _faces_to_vertices_min(faces: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, np.inf)
    np.minimum.at(out, faces.ravel(), np.repeat(values, 3))
    out[~np.isfinite(out)] = 0.0
    return out


def mesh_edges(faces: np.ndarray) -> np.ndarray:
    """Unique undirected edges (E,2) of a triangle mesh."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    return np.unique(np.sort(e, axis=1), axis=0)


def _neighbour_mean(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    total = values.copy()
    count = np.ones(len(values))
    np.add.at(total, edges[:, 0], values[edges[:, 1]])
    np.add.at(total, edges[:, 1], values[edges[:, 0]])
    np.add.at(count, edges.ravel(), 1.0)
    return total / (count if values.ndim == 1 else count[:, None])


# --- the fit ----------------------------------------------------------------------------


def fit_clothing(
    model: torch.nn.Module,
    phenotype: dict[str, float],
    pose_parameters: np.ndarray,
    camera: Camera,
    mask: np.ndarray,
    topology: dict[str, np.ndarray],
    config: ClothingConfig = ClothingConfig(),
    garment_config: GarmentConfig | None = None,
    image: np.ndarray | None = None,
) -> ClothingFit:
    """Normal offsets that make the posed surface's silhouette match the person mask, then a
    garment spanning the legs (skirt, dress) where the mask fills the gap between them."""
    start = time.perf_counter()
    faces = topology["faces"]
    body = evaluate_body(model, phenotype, pose_parameters, faces)
    person = _binary(mask, config.mask_threshold)
    naked_iou = silhouette_iou(body.posed, faces, camera, person)
    if not config.enabled or not person.any():
        s = np.zeros(len(body.rest))
    else:
        inward, outward = offset_limits(
            body.rest, body.rest_normals, faces, topology["uv"], topology["face_uv_idx"], config
        )
        s = _optimise(body, faces, camera, person, inward, outward, config)
    offsets = s[:, None] * body.rest_normals
    garment = NO_GARMENT
    garment_config = garment_config or GarmentConfig(enabled=config.enabled)
    if config.enabled and person.any() and garment_config.enabled:
        legs = leg_vertices(body.rest, faces, topology["uv"], topology["face_uv_idx"])
        garment = detect_garment(body, legs, camera, person, garment_config, image)
        if garment.kind != "none":
            s = even_hip_offsets(s, body.rest, legs, garment, garment_config)
            offsets = s[:, None] * body.rest_normals
            skirt = skirt_surface(body.rest + offsets, faces, legs, garment, garment_config, naked=body.rest)
            offsets = skirt - body.rest
    posed = body.posed + np.einsum("vij,vj->vi", body.posed_linear, offsets)
    clothed_iou = silhouette_iou(posed, faces, camera, person)
    metrics = {
        "silhouette_iou_naked": round(naked_iou, 4),
        "silhouette_iou": round(clothed_iou, 4),
        "offset_mean_m": round(float(np.abs(s).mean()), 5),
        "offset_max_out_m": round(float(s.max()), 4),
        "offset_max_in_m": round(float(-s.min()), 4),
        "garment": garment.kind,
        "garment_hem_m": round(garment.hem_height_m, 4),
        "garment_hem_fraction": round(garment.hem_fraction if garment.kind != "none" else 0.0, 4),
        "garment_hem_gap_m": round(garment.hem_gap_m, 4),  # the evidence, also when rejected
        "garment_transition": round(garment.transition, 4),
        "garment_hem_colour_step": None if garment.hem_colour_step is None else round(garment.hem_colour_step, 2),
        "clothing_seconds": round(time.perf_counter() - start, 3),
    }
    return ClothingFit(
        normal_offsets=s.astype(np.float32),
        offsets=offsets,
        rest_vertices=body.rest + offsets,
        posed_vertices=posed,
        metrics=metrics,
        garment=None if garment.kind == "none" else garment,
    )


def _binary(mask: np.ndarray, threshold: int) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    return mask if mask.dtype == bool else mask >= threshold


class _Problem:
    """Energy terms in the normal offsets s, with analytic derivatives (numpy).

    Pixel distances are in units of the person's height in the image, so the weights do not
    depend on the photo's resolution.
    """

    def __init__(self, body: _Body, faces: np.ndarray, camera: Camera, person: np.ndarray,
                 outward: np.ndarray, config: ClothingConfig) -> None:  # fmt: skip
        self.config = config
        self.camera = camera
        self.faces = faces
        self.person = person
        self.base = body.posed
        self.dirs = body.posed_dirs
        self.outward = outward
        rows = np.flatnonzero(person.any(axis=1))
        self.scale = float(max(rows[-1] - rows[0], 1)) if len(rows) else float(person.shape[0])
        self.edges = mesh_edges(faces)
        self.spill, self.spill_dx, self.spill_dy = _spill_field(person, self.scale)
        # the silhouette outline can move at most by the vertex's largest offset
        depth = camera.to_camera(body.posed)[:, 2]
        self.reach_px = camera.K[0, 0] * outward / np.maximum(depth, 1e-3) + config.rim_band_px + 1.0
        self.targets = np.zeros((0, 2))
        self.target_vertex = np.zeros(0, np.int64)

    def project(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (V,2) of the offset surface and their derivative d pixel / d s (V,2)."""
        k, rot = self.camera.K, self.camera.R
        cam = (self.base + s[:, None] * self.dirs) @ rot.T + self.camera.t
        dcam = self.dirs @ rot.T
        den = cam @ k[2]
        den = np.where(np.abs(den) < 1e-6, 1e-6, den)
        pixels = np.stack([cam @ k[0], cam @ k[1]], axis=1) / den[:, None]
        dden = dcam @ k[2]
        dpix = (np.stack([dcam @ k[0], dcam @ k[1]], axis=1) - pixels * dden[:, None]) / den[:, None]
        return pixels, dpix

    def refresh(self, s: np.ndarray) -> None:
        """Coverage correspondences from the current surface: uncovered mask pixel -> rim vertex."""
        posed = self.base + s[:, None] * self.dirs
        silhouette = project_silhouette(posed, self.faces, self.camera, closed=True)
        ys, xs = np.nonzero(self.person & ~silhouette)
        rim = self._rim_vertices(posed, silhouette)
        self.targets, self.target_vertex = np.zeros((0, 2)), np.zeros(0, np.int64)
        if len(xs) == 0 or len(rim) == 0:
            return
        if len(xs) > self.config.max_coverage_pixels:
            pick = np.random.default_rng(self.config.seed).choice(
                len(xs), self.config.max_coverage_pixels, replace=False
            )
            xs, ys = xs[pick], ys[pick]
        pixels = np.stack([xs, ys], axis=1).astype(np.float64)
        projected, velocity = self.project(s)
        k = min(self.config.candidates, len(rim))
        dist, nearest = cKDTree(projected[rim]).query(pixels, k=k)
        dist, vertex = dist.reshape(len(pixels), k), rim[nearest.reshape(len(pixels), k)]
        # a pixel can only be reached by growing a vertex whose outline moves towards it
        towards = pixels[:, None, :] - projected[vertex]
        direction = velocity[vertex]
        cos = np.einsum("pkd,pkd->pk", towards, direction) / np.maximum(
            np.linalg.norm(towards, axis=2) * np.linalg.norm(direction, axis=2), 1e-9
        )
        ok = (dist <= self.reach_px[vertex]) & ((cos >= self.config.min_pull_cos) | (dist < 1.5))
        first = np.argmax(ok, axis=1)  # nearest acceptable candidate
        found = ok[np.arange(len(pixels)), first]
        self.targets = pixels[found]
        self.target_vertex = vertex[np.arange(len(pixels)), first][found]

    def _rim_vertices(self, posed: np.ndarray, silhouette: np.ndarray) -> np.ndarray:
        """Vertices that may move outwards, seen edge-on, projecting onto the silhouette outline."""
        view = self.camera.center_world - posed
        cos = np.einsum("nd,nd->n", self.dirs, view) / np.maximum(
            np.linalg.norm(self.dirs, axis=1) * np.linalg.norm(view, axis=1), 1e-12
        )
        edge_on = np.flatnonzero((np.abs(cos) < self.config.rim_cos) & (self.outward > 0))
        if len(edge_on) == 0:
            return edge_on
        inner = cv2.erode(silhouette.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        distance = cv2.distanceTransform((~(silhouette & ~inner)).astype(np.uint8), cv2.DIST_L2, 3)
        px = self.camera.project(posed[edge_on])
        h, w = silhouette.shape
        inside = (px[:, 0] >= 0) & (px[:, 0] <= w - 1) & (px[:, 1] >= 0) & (px[:, 1] <= h - 1)
        rows = np.clip(np.round(px[:, 1]).astype(np.int64), 0, h - 1)
        cols = np.clip(np.round(px[:, 0]).astype(np.int64), 0, w - 1)
        return edge_on[inside & (distance[rows, cols] <= self.config.rim_band_px)]

    def data_terms(self, s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Data energy with its gradient and Gauss-Newton diagonal (each residual depends on
        one vertex's offset only, so J^T J is diagonal)."""
        c = self.config
        n = len(s)
        pixels, dpix = self.project(s)
        grad = np.zeros(n)
        hess = np.zeros(n)
        # spill: squared distance outside the mask, per vertex
        f = _bilinear(self.spill, pixels)
        jac = _bilinear(self.spill_dx, pixels) * dpix[:, 0] + _bilinear(self.spill_dy, pixels) * dpix[:, 1]
        energy = c.spill_weight * float(np.sum(f * f)) / n
        grad += c.spill_weight * 2.0 * f * jac / n
        hess += c.spill_weight * 2.0 * jac * jac / n
        # coverage: Geman-McClure distance from uncovered mask pixels to their rim vertex,
        # minimised as iteratively reweighted least squares
        if len(self.target_vertex):
            v = self.target_vertex
            delta = (pixels[v] - self.targets) / self.scale
            r2 = np.einsum("nd,nd->n", delta, delta)
            rho2 = c.gmof_rho**2
            # a vertex answers for at most `pull_cap` pixels' worth, so a large object the
            # person holds (a bag, a pole) cannot drag one vertex with hundreds of pixels
            count = np.bincount(v, minlength=n)[v].astype(np.float64)
            share = np.minimum(1.0, c.pull_cap / count)
            energy_pairs = rho2 * r2 / (r2 + rho2) * share
            weight = c.coverage_weight * share * rho2 * rho2 / (r2 + rho2) ** 2 / n
            energy += c.coverage_weight * float(np.sum(energy_pairs)) / n
            jv = dpix[v] / self.scale
            grad += np.bincount(v, weights=2.0 * weight * np.einsum("nd,nd->n", delta, jv), minlength=n)
            hess += np.bincount(v, weights=2.0 * weight * np.einsum("nd,nd->n", jv, jv), minlength=n)
        return energy, grad, hess

    def prior_matrix(self, n: int) -> sparse.csr_matrix:
        """Hessian of the smoothness (graph Laplacian) and magnitude priors, offsets in cm."""
        a, b = self.edges[:, 0], self.edges[:, 1]
        adjacency = sparse.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
        adjacency = adjacency + adjacency.T
        laplacian = sparse.diags(np.asarray(adjacency.sum(axis=1)).ravel()) - adjacency
        c = self.config
        return (2.0 / (1e-4 * n)) * (c.smooth_weight * laplacian + c.magnitude_weight * sparse.identity(n))


def _spill_field(person: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distance to the person mask (0 on it) in person heights, and its x / y derivatives."""
    outside = cv2.distanceTransform((~person).astype(np.uint8), cv2.DIST_L2, 5).astype(np.float32)
    # a vertex on the outline projects up to a pixel off the rasterised mask: no pull there
    outside = np.maximum(outside - 1.0, 0.0) / scale
    dy, dx = np.gradient(outside)
    return outside, dx.astype(np.float32), dy.astype(np.float32)


def _bilinear(field: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Bilinear samples of a float32 image at (N,2) x,y positions; 0 outside the image, where
    the photo says nothing about the person."""
    out = sample_bilinear(field[..., None], pixels.astype(np.float32))[:, 0]
    h, w = field.shape
    x, y = pixels[:, 0], pixels[:, 1]
    return np.where((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1), out, 0.0).astype(np.float64)


def _optimise(body: _Body, faces: np.ndarray, camera: Camera, person: np.ndarray,
              inward: np.ndarray, outward: np.ndarray, config: ClothingConfig) -> np.ndarray:  # fmt: skip
    """Gauss-Newton rounds: refresh correspondences, solve the sparse normal equations
    (diagonal data term + Laplacian prior), clip to the limits."""
    problem = _Problem(body, faces, camera, person, outward, config)
    n = len(body.rest)
    prior = problem.prior_matrix(n).tocsc()
    s = np.zeros(n)
    for _ in range(config.rounds):
        problem.refresh(s)
        _, grad, hess = problem.data_terms(s)
        grad = grad + prior @ s
        system = (prior + sparse.diags(hess + config.damping / n)).tocsc()
        s = np.clip(s - spsolve(system, grad), -inward, outward)
    return s


# --- garments that span the legs (skirts, dresses, open coats) -------------------------------
#
# Offsets along each leg's own normals can only widen two tubes: a skirt becomes two balloon
# trouser legs. The evidence for cloth spanning the legs is the person mask *between* the legs:
# below the crotch the naked legs' projections leave a gap, and the mask fills it down to the
# hem. The rest surface is then reshaped (same vertices, same topology): between crotch and hem
# each leg's cross-section becomes half of one bell-shaped skirt (the outer side out to the
# skirt's width, the inner side flat on the legs' midline plane), and the skin weights of those
# vertices are blended between both thighs and the hips (`skirt_skin_weights`), so the cloth
# follows both legs instead of tearing between them.


@dataclass(frozen=True)
class GarmentConfig:
    """Detection thresholds (geometry, not per photo) and the skirt's shape."""

    enabled: bool = True
    min_gap_px: float = 3.0  # the naked legs' gap in a row must be this wide to count as evidence
    filled_fraction: float = 0.9  # share of that gap the mask must cover: cloth spans the legs
    open_fraction: float = 0.5  # below this share the legs are apart: the hem is above
    min_length: float = 0.12  # a bridged run shorter than this share of the leg is no garment
    min_hem_gap_m: float = 0.0  # the gap the hem spans, wider than two trouser legs' looseness
    # the legs must be seen apart within this share of the leg rows below the hem; where the
    # colour confirms the hem, only rows with a partly filled gap between them count
    max_transition: float = 0.45
    dress_hem: float = 0.55  # a hem lower than this share of the leg makes a long garment
    ankle_length: float = 0.85  # a hem this low may end out of the frame (a maxi dress)
    hem_band: float = 0.05  # rows compared above and below the hem, share of the leg rows
    min_hem_colour_step: float = 12.0  # delta E: below this the cloth goes on past the hem
    min_depth_ratio: float = 0.75  # the skirt's depth (front-back) at least this share of its width
    smoothing_iters: int = 10  # Laplacian steps over the reshaped region (no spikes)
    # ... over the skirt's section in plan: each step pulls the outline's vertices next to the
    # (fixed) corners further from them (10 steps: longest face 11.6-12.2 cm, 4: 9.6-10.1 cm)
    skirt_smoothing_iters: int = 4
    band_m: float = 0.01  # height bands the skirt's width is measured in
    waist_blend: float = 0.2  # share of the skirt length over which the shape blends in
    overlap_m: float = 0.015  # each leg's inner wall reaches this far past the midline plane
    axis_window_m: float = 0.02  # a leg's axis: the middle of its vertices this far above and below
    corner_snap_rad: float = 0.2  # a vertex this near a corner (half a ring's spacing) moves onto it
    hip_reach_m: float = 0.15  # the hips the skirt hangs from reach this far above the crotch
    hip_ease_m: float = 0.01  # offsets there at most this much above the region's median
    hip_fade_m: float = 0.06  # the cut fades out over the region's top this far
    flare: float = 0.12  # the hem's half-width grows by this share of the skirt's length (A-line)
    hem_lip_m: float = 0.005  # the skirt's underside: the ring below the hem sits this far under it
    hem_underside_share: float = 0.5  # ... and goes this share of the way out towards the hem
    recess_reach_m: float = 0.12  # the cloth hangs from the body's widest points from this far above the crotch


@dataclass(frozen=True)
class Garment:
    """A garment spanning the legs, as detected in the photo, in pose-free terms."""

    kind: str  # none | skirt | dress
    hem_fraction: float  # hem position from the crotch (0) to the ankles (1)
    hem_height_m: float  # hem height above the soles in the rest pose (0 for none)
    bridged_rows: int = 0  # rows of evidence (mask filled between the legs)
    hem_gap_m: float = 0.0  # the naked legs' gap the mask fills on the hem row
    transition: float = 0.0  # rows from the hem to the legs seen apart, share of the leg rows
    hem_colour_step: float | None = None  # delta E across the hem (None: no photo or not seen)

    def to_dict(self) -> dict[str, float | str]:
        return {"kind": self.kind, "hem_fraction": round(self.hem_fraction, 4),
                "hem_height_m": round(self.hem_height_m, 4)}  # fmt: skip

    @staticmethod
    def from_dict(data: dict | None) -> Garment | None:
        if not data or data.get("kind", "none") == "none":
            return None
        return Garment(kind=str(data["kind"]), hem_fraction=float(data["hem_fraction"]),
                       hem_height_m=float(data.get("hem_height_m", 0.0)))  # fmt: skip


NO_GARMENT = Garment(kind="none", hem_fraction=0.0, hem_height_m=0.0)


@dataclass(frozen=True)
class _Legs:
    """The rest surface's legs: which vertices, where they part and end."""

    left: np.ndarray  # (V,) bool, x > 0 below the crotch
    right: np.ndarray
    crotch_z: float
    ankle_z: float


def leg_vertices(rest: np.ndarray, faces: np.ndarray, uv: np.ndarray, face_uv_idx: np.ndarray) -> _Legs:
    """Leg vertices (below the crotch, feet excluded) split by side, with crotch and ankle heights."""
    names = part_names()
    labels = face_part_labels(uv, face_uv_idx)
    feet = np.zeros(len(rest), bool)
    for name in ("foot.L", "foot.R"):
        if name in names:
            feet[faces[labels == names.index(name)].ravel()] = True
    height = rest[:, 2].max() - rest[:, 2].min()
    crotch = _crotch_height(rest, height)
    ankle = float(rest[feet, 2].max()) if feet.any() else rest[:, 2].min() + 0.05 * height
    below = (rest[:, 2] < crotch) & ~feet
    return _Legs(
        left=below & (rest[:, 0] > 0), right=below & (rest[:, 0] <= 0), crotch_z=crotch, ankle_z=ankle
    )


def _row_extents(pixels: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image row, the min and max x of the projected points on it (nan where none)."""
    lo = np.full(len(rows), np.nan)
    hi = np.full(len(rows), np.nan)
    r = np.round(pixels[:, 1]).astype(np.int64) - rows[0]
    ok = (r >= 0) & (r < len(rows))
    r, x = r[ok], pixels[ok, 0]
    lo_vals = np.full(len(rows), np.inf)
    hi_vals = np.full(len(rows), -np.inf)
    np.minimum.at(lo_vals, r, x)
    np.maximum.at(hi_vals, r, x)
    seen = np.isfinite(lo_vals)
    lo[seen], hi[seen] = lo_vals[seen], hi_vals[seen]
    return lo, hi


def row_colours(image: np.ndarray, person: np.ndarray, rows: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(len(rows), 3) median CIELAB colour (delta-E units) of the person's pixels on each row
    between `lo` and `hi` (nan where the row shows none)."""
    h, w = person.shape
    lab = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2LAB).astype(np.float64)
    lab[..., 0] *= 100.0 / 255.0  # 8-bit L is scaled to 0..255: back to L* 0..100
    out = np.full((len(rows), 3), np.nan)
    for i, row in enumerate(rows):
        if not (0 <= row < h) or np.isnan(lo[i]) or np.isnan(hi[i]):
            continue
        x0, x1 = max(int(np.floor(lo[i])), 0), min(int(np.ceil(hi[i])), w - 1)
        on = person[row, x0 : x1 + 1]
        if on.sum() >= 3:
            out[i] = np.median(lab[row, x0 : x1 + 1][on], axis=0)
    return out


def colour_steps(colours: np.ndarray, band: int) -> np.ndarray:
    """Per row, the delta E between the median colour of the `band` rows above and of the `band`
    rows below it (0 where either side shows nothing)."""
    steps = np.zeros(len(colours))
    for i in range(band, len(colours) - band):
        above, below = colours[i - band : i], colours[i + 1 : i + 1 + band]
        above, below = above[~np.isnan(above[:, 0])], below[~np.isnan(below[:, 0])]
        if len(above) and len(below):
            steps[i] = float(np.linalg.norm(np.median(above, axis=0) - np.median(below, axis=0)))
    return steps


def detect_garment(
    body: _Body,
    legs: _Legs,
    camera: Camera,
    person: np.ndarray,
    config: GarmentConfig = GarmentConfig(),
    image: np.ndarray | None = None,
) -> Garment:
    """A garment spanning the legs from the mask between the naked legs' projections.

    Scanning the image rows from the crotch down, a row is *bridged* when the naked legs leave a
    gap of at least `min_gap_px` between them and the mask covers `filled_fraction` of it, *open*
    when it covers less than `open_fraction` (legs touching give no evidence either way). The
    hem is the last bridged row before the legs are seen apart; its rest height follows from the
    leg vertices projecting onto that row, so the pose does not matter.

    Two checks keep trousers out: the legs must be seen below the hem inside the image (a hem
    on the image's edge is the frame cutting a jacket, not a skirt), unless the garment reaches
    the ankles; and with the photo (`image`), the colour must change across the hem by at least
    `min_hem_colour_step` (delta E): baggy or ski trousers fill the gap between the naked legs
    too, but their cloth goes on below the point where the legs part."""
    if not config.enabled or not legs.left.any() or not legs.right.any():
        return NO_GARMENT
    pixels = camera.project(body.posed)
    leg_px = pixels[legs.left | legs.right]
    top = int(np.floor(np.percentile(leg_px[:, 1], 1)))
    bottom = int(np.ceil(np.percentile(leg_px[:, 1], 99)))
    h, w = person.shape
    bottom_unclipped = bottom
    top, bottom = max(top, 0), min(bottom, h - 1)
    if bottom - top < 10:
        return NO_GARMENT
    rows = np.arange(top, bottom + 1)
    l_lo, l_hi = _row_extents(pixels[legs.left], rows)
    r_lo, r_hi = _row_extents(pixels[legs.right], rows)
    state = np.zeros(len(rows), np.int8)  # 1 bridged, -1 open, 0 no evidence
    gaps = np.zeros(len(rows))
    for i, row in enumerate(rows):
        if np.isnan(l_lo[i]) or np.isnan(r_lo[i]):
            continue
        if l_lo[i] > r_hi[i]:
            a, b = r_hi[i], l_lo[i]
        elif r_lo[i] > l_hi[i]:
            a, b = l_hi[i], r_lo[i]
        else:
            continue
        if b - a < config.min_gap_px:
            continue
        gaps[i] = b - a
        x0, x1 = int(np.ceil(a)), int(np.floor(b))
        x0, x1 = max(x0, 0), min(x1, w - 1)
        if x1 < x0:
            continue
        filled = float(person[row, x0 : x1 + 1].mean())
        state[i] = 1 if filled >= config.filled_fraction else (-1 if filled < config.open_fraction else 0)
    bridged = np.flatnonzero(state == 1)
    opened = np.flatnonzero(state == -1)
    if len(bridged) == 0:
        return NO_GARMENT
    # the hem: the last bridged row above the first run of open rows (3 in a row: not noise)
    first_open = len(rows)
    for i in opened:
        if i + 2 < len(rows) and (state[i : i + 3] == -1).all():
            first_open = i
            break
    run = bridged[bridged < first_open]
    if len(run) == 0:
        return NO_GARMENT
    hem_i = int(run.max())
    colour_step = None
    if image is not None:
        # the hem is where the colour changes most along the bridged rows (the cloth ends there;
        # legs touching below it may keep the gap filled a while longer)
        band = max(round(config.hem_band * len(rows)), 2)
        colours = row_colours(image, person, rows, np.fmin(l_lo, r_lo), np.fmax(l_hi, r_hi))
        steps = colour_steps(colours, band)
        steps[hem_i + band + 1 :] = 0.0
        steps[: int(run.min())] = 0.0
        best = int(np.argmax(steps))
        colour_step = float(steps[best])
        if colour_step >= config.min_hem_colour_step:
            hem_i = best
    hem_row = rows[hem_i]
    # rest heights of the leg vertices on the hem row -> pose-free hem
    on_row = np.abs(pixels[:, 1] - hem_row) <= 1.5
    on_row &= legs.left | legs.right
    if not on_row.any():
        return NO_GARMENT
    hem_z = float(np.median(body.rest[on_row, 2]))
    length = legs.crotch_z - legs.ankle_z
    fraction = float(np.clip((legs.crotch_z - hem_z) / max(length, 1e-6), 0.0, 1.0))
    evidence = int((run <= hem_i).sum()) / max(hem_row - rows[0] + 1, 1)
    # Trousers fill a gap only as wide as their looseness, and the fill fades over many rows
    # as the naked legs part (the crotch's inverted V); a hem ends the fill across a wide gap
    # within a few rows.
    depth = float(np.median(camera.to_camera(body.posed[on_row])[:, 2]))
    hem_gap_m = float(gaps[: hem_i + 1].max() * depth / camera.K[0, 0])
    below_hem = slice(int(run.max()) + 1, first_open)
    if colour_step is not None and colour_step >= config.min_hem_colour_step:
        # the colour shows where the cloth ends: below it, rows where the naked legs touch are
        # legs, and only a partly filled gap would be trousers fading out
        transition = float(((state[below_hem] == 0) & (gaps[below_hem] > 0)).sum() / max(len(rows), 1))
    else:  # no colour evidence: a long stretch of touching legs cannot be told from trousers
        transition = float((first_open - run.max()) / max(len(rows), 1))
    # no legs seen apart inside the image: the frame cuts the body (a jacket, not a skirt)
    legs_cut_by_frame = first_open == len(rows) and bottom_unclipped > h - 1
    if (
        fraction < config.min_length
        or evidence < 0.3
        or hem_gap_m < config.min_hem_gap_m
        or transition > config.max_transition
        or (legs_cut_by_frame and fraction < config.ankle_length)
        or (colour_step is not None and colour_step < config.min_hem_colour_step)
    ):
        return Garment("none", fraction, 0.0, len(run), hem_gap_m, transition, colour_step)
    kind = "dress" if fraction >= config.dress_hem else "skirt"
    floor = body.rest[:, 2].min()
    return Garment(kind, fraction, float(hem_z - floor), len(run), hem_gap_m, transition, colour_step)


def even_hip_offsets(
    s: np.ndarray, rest: np.ndarray, legs: _Legs, garment: Garment, config: GarmentConfig = GarmentConfig()
) -> np.ndarray:
    """Normal offsets with no bulge between the hem and the hips: a skirt hangs from the hips,
    so an offset there larger than the region's median by more than `hip_ease_m` (hands, a bag
    or sleeves in the mask beside the hips) is cut to that."""
    hem_z = legs.crotch_z - garment.hem_fraction * (legs.crotch_z - legs.ankle_z)
    region = (rest[:, 2] >= hem_z) & (rest[:, 2] <= legs.crotch_z + config.hip_reach_m)
    if not region.any():
        return s
    out = s.copy()
    cap = float(np.median(s[region])) + config.hip_ease_m
    # fades out over the region's top `hip_fade_m`: no step where the torso's offsets begin
    top = legs.crotch_z + config.hip_reach_m
    weight = np.clip((top - rest[region, 2]) / config.hip_fade_m, 0.0, 1.0)
    out[region] = s[region] - weight * np.maximum(s[region] - cap, 0.0)
    return out


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def skirt_surface(
    rest: np.ndarray,
    faces: np.ndarray,
    legs: _Legs,
    garment: Garment,
    config: GarmentConfig = GarmentConfig(),
    naked: np.ndarray | None = None,
) -> np.ndarray:
    """The clothed rest surface (V,3) with the legs between crotch and hem reshaped into one skirt.

    Per height band, the skirt's half-width A is the legs' outer extent (already fitted to the
    mask by the offsets), made non-decreasing downwards (a bell or a cylinder, never a waist),
    its half-depth B at least `min_depth_ratio` A. Each leg vertex keeps its angle phi around
    its own leg's axis; phi = 0 (outermost) goes to the skirt's side, the angles up to a corner
    (`_wall_corner`) round the half ellipse to the skirt's front and back middles, and the
    innermost ones down the inner wall in the midline plane between them (`_leg_section`), so
    the leg becomes a D, and both legs together one closed section. A few Laplacian steps smooth
    the region; the hem ring stays at its height, and below it only the skirt's underside moves
    (`flatten_hem_underside`)."""
    out = rest.copy()
    hem_z = legs.crotch_z - garment.hem_fraction * (legs.crotch_z - legs.ankle_z)
    skirt = (legs.left | legs.right) & (rest[:, 2] >= hem_z)
    if not skirt.any():
        return out
    z = rest[:, 2]
    bands = np.floor((legs.crotch_z - z) / config.band_m).astype(np.int64)
    n_bands = int(bands[skirt].max()) + 1
    half_width = np.zeros(n_bands)
    centre_y = np.zeros(n_bands)
    half_depth = np.zeros(n_bands)
    for b in range(n_bands):
        sel = skirt & (bands == b)
        if sel.any():
            half_width[b] = np.abs(rest[sel, 0]).max()
            centre_y[b] = 0.5 * (rest[sel, 1].max() + rest[sel, 1].min())
            half_depth[b] = 0.5 * (rest[sel, 1].max() - rest[sel, 1].min())
    # fill empty bands from the one above, then make the width non-decreasing downwards
    for b in range(1, n_bands):
        if half_width[b] == 0:
            half_width[b], centre_y[b], half_depth[b] = half_width[b - 1], centre_y[b - 1], half_depth[b - 1]
    half_width = np.maximum.accumulate(half_width)
    # an A-line flare: cloth hangs away from the thighs towards the hem instead of hugging them
    flare = config.flare * (legs.crotch_z - hem_z) * np.arange(n_bands) / max(n_bands - 1, 1)
    half_width = half_width + flare
    half_depth = np.maximum(np.maximum.accumulate(half_depth) + flare, config.min_depth_ratio * half_width)
    # the cloth hangs from the hips: no deeper than they are (plus the flare), on their centre,
    # so the ellipse's front and back between the legs neither bulge out nor fall back
    hips = (z >= legs.crotch_z) & (z <= legs.crotch_z + config.hip_reach_m) & (np.abs(rest[:, 0]) <= half_width[0])
    if hips.sum() >= 8:
        hip_front, hip_back = np.percentile(rest[hips, 1], [1, 99])
        half_depth = np.minimum(half_depth, 0.5 * (hip_back - hip_front) + flare)
        centre_y[:] = 0.5 * (hip_back + hip_front)
    # the angles round each leg are read on the naked body when given: the offsets that fit the
    # photo's skirt push the legs' outer sides out by up to 10 cm, and round such a lopsided
    # section the inner side would read as the front and go onto the skirt's front middle
    ring = rest if naked is None else naked
    # where each leg's outline meets its inner wall, per band (`_wall_corner`)
    corner = _wall_corner(half_width + config.overlap_m, half_depth)
    pinned = np.zeros(len(rest), bool)  # on the midline plane: stays there through the smoothing
    wall = np.zeros(len(rest), bool)  # inside the skirt, between the corners: not smoothed over
    # per vertex, the outline it was put on: its side, half axes, centre and how fully it went
    ellipse = np.zeros((len(rest), 5))  # sign, A, B, centre y, weight
    for side, sign in ((legs.left, 1.0), (legs.right, -1.0)):
        sel = side & skirt
        idx = np.flatnonzero(sel)
        b = bands[idx]
        # the leg's own axis per band, from the bands around it: one band holds only part of a
        # slanted ring, and its middle is off the axis (the inner side read as the front)
        axis_x = np.zeros(n_bands)
        axis_y = np.zeros(n_bands)
        leg = np.flatnonzero(side)
        reach = max(round(config.axis_window_m / config.band_m), 0)
        for k in np.unique(b):
            pts = ring[leg[np.abs(bands[leg] - k) <= reach]]
            axis_x[k] = 0.5 * (pts[:, 0].max() + pts[:, 0].min())
            axis_y[k] = 0.5 * (pts[:, 1].max() + pts[:, 1].min())
        u = sign * (ring[idx, 0] - axis_x[b])  # outward
        v = ring[idx, 1] - axis_y[b]
        phi = _snap_corners(np.arctan2(v, u), b, corner, config.corner_snap_rad)
        width = half_width[b] + config.overlap_m
        target_x, target_y = _leg_section(phi, corner[b], width, half_depth[b], centre_y[b])
        # the walls cross the midline by `overlap_m`, so no slit opens between them
        target_x = sign * (target_x - config.overlap_m)
        # blend in below the crotch (the hips already span the legs there)
        depth = (legs.crotch_z - rest[idx, 2]) / max(legs.crotch_z - hem_z, 1e-6)
        # from half way at the crotch (where the legs' gap is still closing) to fully below
        t = _smoothstep(0.5 + 0.5 * depth / config.waist_blend)
        # the inner walls close the gap between the legs right from the crotch: half way there
        # they leave a hole at the crotch's apex, seen through from the front to the back
        inner = 1.0 - np.cos(phi / 2.0)  # 0 outermost .. 1 innermost
        t = np.maximum(t, _smoothstep((inner - 0.5) / 0.3))[:, None]
        target = np.stack([target_x, target_y, rest[idx, 2]], axis=1)
        out[idx] = (1.0 - t) * rest[idx] + t * target
        placed = t[:, 0] > 0.5
        ellipse[idx] = np.stack([np.full(len(idx), sign), width, half_depth[b], centre_y[b], t[:, 0]], axis=1)
        pinned[idx[placed & (np.abs(phi) >= corner[b] - 1e-9)]] = True
        wall[idx[placed & (np.abs(phi) > corner[b] + 1e-9)]] = True
    # Laplacian smoothing over the skirt, hem ring included (in plan only: heights stay). The
    # outline's vertices next to a wall would be pulled in towards it (a notch at the skirt's
    # front and back between the legs), so the edges between the wall's inside and the outline
    # are left out: the outline smooths over itself and the corners, the wall over itself and
    # the corners (along the midline plane: it evens its vertices' spacing), the corners stay.
    # The outline's vertices go back onto their ellipse after each step: smoothing alone would
    # shrink it and leave the pinned corners standing out as a ridge down the skirt's middles.
    edges = mesh_edges(faces)
    _corners_inside_the_wall(out, edges, skirt, pinned, wall, ellipse)
    edges = edges[skirt[edges[:, 0]] & skirt[edges[:, 1]]]  # the bare legs below would pull the hem in
    edges = edges[wall[edges[:, 0]] == wall[edges[:, 1]] | pinned[edges[:, 0]] | pinned[edges[:, 1]]]
    edges = edges[~(wall[edges[:, 0]] & ~pinned[edges[:, 1]] & ~wall[edges[:, 1]])]
    edges = edges[~(wall[edges[:, 1]] & ~pinned[edges[:, 0]] & ~wall[edges[:, 0]])]
    corners = pinned & ~wall
    held = out[corners, :2].copy()
    wall_x = out[wall, 0].copy()
    for _ in range(config.skirt_smoothing_iters):
        mean = _neighbour_mean(out, edges)
        out[skirt] = 0.5 * out[skirt] + 0.5 * mean[skirt]
        out[skirt, 2] = rest[skirt, 2]  # heights stay: the hem and the waist do not move
        out[corners, :2] = held
        out[wall, 0] = wall_x
        _onto_outline(out, skirt & ~pinned & ~wall, ellipse, config.overlap_m)
    # the depth smoothing after the bridging runs over the whole surface but the walls' edges
    everywhere = mesh_edges(faces)
    outline = everywhere[~(wall[everywhere[:, 0]] | wall[everywhere[:, 1]])]
    out = bridge_body_hollows(
        out, faces, legs, hem_z, float(half_width[0]), config, edges=outline, inside=pinned
    )
    return flatten_hem_underside(out, faces, skirt, config)


def _corners_inside_the_wall(out: np.ndarray, edges: np.ndarray, skirt: np.ndarray, pinned: np.ndarray,
                             wall: np.ndarray, ellipse: np.ndarray, share: float = 0.85) -> None:
    """A corner vertex none of whose neighbours is on the outline moves into its wall, `share` of
    the way from the section's centre to the corner (in place; `pinned` and `wall` updated). Every
    face round it lies in the wall's plane: on the wall's edge, the faces would fold over each
    other and its normal cancel to nothing (the glTF validator's non-unit normal error)."""
    outline = skirt & ~pinned & ~wall
    beside = np.zeros(len(out), bool)
    np.logical_or.at(beside, edges[:, 0], outline[edges[:, 1]])
    np.logical_or.at(beside, edges[:, 1], outline[edges[:, 0]])
    alone = np.flatnonzero(pinned & ~wall & ~beside)
    centre = ellipse[alone, 3]
    out[alone, 1] = centre + share * (out[alone, 1] - centre)
    wall[alone] = True


def _onto_outline(out: np.ndarray, sel: np.ndarray, ellipse: np.ndarray, overlap_m: float) -> None:
    """The vertices `sel` moved in plan onto their leg's half ellipse (`ellipse` rows: side sign,
    half-width A, half-depth B, centre y, weight), radially from its centre, by their weight
    (how fully they were put on it; 0 near the crotch). In place."""
    idx = np.flatnonzero(sel & (ellipse[:, 4] > 0.0))
    sign, a, b, centre, weight = ellipse[idx].T
    x = np.maximum(sign * out[idx, 0] + overlap_m, 0.0)  # from the D's straight side
    y = out[idx, 1] - centre
    r = np.maximum(np.hypot(x / a, y / b), 1e-9)
    out[idx, 0] += weight * (sign * (x / r - overlap_m) - out[idx, 0])
    out[idx, 1] += weight * (centre + y / r - out[idx, 1])


def flatten_hem_underside(surface: np.ndarray, faces: np.ndarray, skirt: np.ndarray,
                          config: GarmentConfig = GarmentConfig()) -> np.ndarray:
    """The first two rings of leg vertices below the skirt lifted to just under its hem ring,
    the first one also part of the way out towards it: the skirt's underside.

    The faces from the hem ring (on the skirt's wide section) to the ring below (on the bare
    leg) are the skirt's underside. Left one ring spacing tall (3-4 cm on Anny), between the
    legs they slope down from the hem's middle to the thighs' inner sides and read from the
    front and the back as a dark inverted V under the hem. Lifted to `hem_lip_m` under the
    hem ring, the underside is nearly horizontal: the hem reads as one straight edge. It spans
    from the skirt's outline to the legs, up to 15 cm at the skirt's front and back middles,
    in one face: the first ring goes `hem_underside_share` of the way out towards the hem ring
    above it and the second is lifted to just under the first, so the underside is two flat
    rings of faces, each half as wide, and the leg below keeps its shape (the faces from the
    second ring down lengthen)."""
    edges = mesh_edges(faces)
    first, lowest, reach = _ring_under(surface, edges, skirt)
    out = surface.copy()
    out[first, :2] += config.hem_underside_share * (reach[first] - surface[first, :2])
    # never lower a vertex, never above the ring it hangs under
    out[first, 2] = np.maximum(surface[first, 2], lowest[first] - config.hem_lip_m)
    lifted = skirt.copy()
    lifted[first] = True
    second, lowest, _ = _ring_under(out, edges, lifted)
    out[second, 2] = np.maximum(surface[second, 2], lowest[second] - config.hem_lip_m)
    return out


def _ring_under(
    surface: np.ndarray, edges: np.ndarray, above: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The vertices next to the region `above` but outside it, each with the lowest height and
    the mean plan position (x, y) of its neighbours in it."""
    crossing = above[edges[:, 0]] != above[edges[:, 1]]
    pairs = edges[crossing]
    below = np.where(above[pairs[:, 0]], pairs[:, 1], pairs[:, 0])
    top = np.where(above[pairs[:, 0]], pairs[:, 0], pairs[:, 1])
    lowest = np.full(len(surface), np.inf)
    np.minimum.at(lowest, below, surface[top, 2])
    plan = np.zeros((len(surface), 2))
    count = np.zeros(len(surface))
    np.add.at(plan, below, surface[top, :2])
    np.add.at(count, below, 1.0)
    ring = np.flatnonzero(count > 0)
    plan[ring] /= count[ring, None]
    return ring, lowest, plan


def _wall_corner(half_width: np.ndarray, half_depth: np.ndarray) -> np.ndarray:
    """Per band, the angle around a leg's axis at which its outline (the half ellipse of
    half-width A, half-depth B, front middle to side to back middle) meets its inner wall (the
    straight way back through the midline plane, 2 B long). Each takes the share of the leg's
    ring its length has, so the ring's vertices stay evenly spaced round the whole section: the
    wall is as finely meshed as the outline (a wall one edge wide spans the skirt's whole depth,
    front to back, in one 25 cm edge)."""
    a, b = half_width, half_depth
    arc = 0.5 * np.pi * (3.0 * (a + b) - np.sqrt((3.0 * a + b) * (a + 3.0 * b)))  # Ramanujan, halved
    return np.pi * arc / np.maximum(arc + 2.0 * b, 1e-9)


def _snap_corners(phi: np.ndarray, bands: np.ndarray, corner: np.ndarray, reach: float) -> np.ndarray:
    """A leg's angles around its axis, per height band, with the vertex nearest each corner
    (+corner behind the axis, -corner in front) moved onto it and the angles on either side
    stretched in step (order and spacing kept). The mesh's rings are coarse (about 20 degrees
    apart): left between vertices, the corner, the skirt's front or back middle, would be cut
    off by a face and leave a notch between the legs. Only a vertex within `reach` of the corner
    moves: a band holds only part of a slanted ring, and a vertex further round (the leg's
    front) pulled onto the corner would drag its faces across the skirt."""
    out = phi.copy()
    for k in np.unique(bands):
        for sign in (1.0, -1.0):
            sel = np.flatnonzero((bands == k) & (sign * phi > 0))
            if len(sel) == 0:
                continue
            a = sign * phi[sel]
            near = float(a[np.argmin(np.abs(a - corner[k]))])
            if abs(near - corner[k]) > reach or near >= np.pi:
                continue
            out[sel] = sign * np.interp(a, [0.0, near, np.pi], [0.0, corner[k], np.pi])
    return out


def _leg_section(phi: np.ndarray, corner: np.ndarray, half_width: np.ndarray, half_depth: np.ndarray,
                 centre_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A leg's angles around its axis onto its half of the skirt's section, (x outward from the
    midline, y): |phi| <= corner on the outline (A cos(theta), centre + B sin(theta)), from the
    front middle (theta -pi/2) to the back middle (pi/2), evenly by length (by theta, the
    vertices would crowd the sides and leave long faces at the middles); beyond, the inner wall
    at x = 0, from the back middle at +corner and the front middle at -corner to the centre at
    +-pi."""
    share = 0.5 + 0.5 * np.clip(phi / corner, -1.0, 1.0)  # 0 front middle .. 1 back middle
    theta = np.empty(len(phi))
    grid = np.linspace(-0.5 * np.pi, 0.5 * np.pi, 97)
    for a, b in np.unique(np.stack([half_width, half_depth], axis=1), axis=0):
        sel = (half_width == a) & (half_depth == b)
        step = np.hypot(a * np.diff(np.cos(grid)), b * np.diff(np.sin(grid)))
        length = np.concatenate([[0.0], np.cumsum(step)])
        theta[sel] = np.interp(share[sel] * length[-1], length, grid)
    on_wall = np.abs(phi) > corner
    along = np.clip((np.pi - np.abs(phi)) / np.maximum(np.pi - corner, 1e-9), 0.0, 1.0)  # 1 at a corner
    x = np.where(on_wall, 0.0, half_width * np.cos(theta))
    y = centre_y + half_depth * np.where(on_wall, np.sign(phi) * along, np.sin(theta))
    return x, y


def _section_chains(x: np.ndarray, y: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lower and upper y of the convex hull of the points (x, y), at the abscissae `at`."""
    from scipy.spatial import ConvexHull

    hull = np.asarray([x, y]).T[ConvexHull(np.asarray([x, y]).T).vertices]
    lo, hi = np.full(len(at), np.inf), np.full(len(at), -np.inf)
    for (x0, y0), (x1, y1) in zip(hull, np.roll(hull, -1, axis=0)):
        if x1 == x0:
            continue
        inside = (at >= min(x0, x1)) & (at <= max(x0, x1))
        y_at = y0 + (at[inside] - x0) * (y1 - y0) / (x1 - x0)
        lo[inside] = np.minimum(lo[inside], y_at)
        hi[inside] = np.maximum(hi[inside], y_at)
    return lo, hi


def _section_profile(
    x: np.ndarray, y: np.ndarray, column_m: float, at: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The section's front (lowest y) and back (highest y) per column of width `column_m`, read
    from the outline's points (x, y) themselves (so a notch stays a notch, unlike the hull),
    linearly interpolated between the columns' centres at the abscissae `at`."""
    cols = np.floor(x / column_m).astype(np.int64)
    keys, inverse = np.unique(cols, return_inverse=True)
    lo, hi = np.full(len(keys), np.inf), np.full(len(keys), -np.inf)
    np.minimum.at(lo, inverse, y)
    np.maximum.at(hi, inverse, y)
    centres = (keys + 0.5) * column_m
    return np.interp(at, centres, lo), np.interp(at, centres, hi)


def bridge_body_hollows(
    surface: np.ndarray, faces: np.ndarray, legs: _Legs, hem_z: float, half_width: float,
    config: GarmentConfig = GarmentConfig(), edges: np.ndarray | None = None,
    inside: np.ndarray | None = None,
) -> np.ndarray:
    """The skirt hanging from the body's widest points above: below the belly in front and below
    the buttocks at the back the cloth falls straight instead of following the body in under
    them (the fold under the buttocks), and across a notch within one height band (the cleft
    between the buttocks, the pit where the legs meet at the crotch) it spans straight too.

    From `recess_reach_m` above the crotch down to the hem, in height bands, within the skirt's
    width: the section's convex hull, front and back, carried down (a front never recedes, a back
    never comes forward below where it was), is the cloth's envelope. Each vertex keeps its share
    of the way from its section's own front to its back (hull or, in a notch, the outline itself),
    so the outline goes onto the envelope and the crotch's inside follows in step (nothing flips from front to back). The change fades in
    over the top of the region; heights and widths stay. `edges` (default: all of the mesh's)
    are those the final smoothing runs over."""
    out = surface.copy()
    z = surface[:, 2]
    top = legs.crotch_z + config.recess_reach_m
    region = (z >= hem_z) & (z <= top) & (np.abs(surface[:, 0]) <= 1.1 * half_width)  # not the hands
    band = 2.0 * config.band_m  # the mesh is coarse: thinner bands hold too few vertices for a hull
    bands = np.floor((top - z) / band).astype(np.int64)
    grid = np.arange(-1.2 * half_width, 1.2 * half_width + 1e-9, config.band_m)
    front_env, back_env = np.full(len(grid), np.inf), np.full(len(grid), -np.inf)
    moved = np.zeros(len(surface), bool)
    for b in np.unique(bands[region]):  # top down
        idx = np.flatnonzero(region & (bands == b))
        if len(idx) < 8:
            continue
        x, y = surface[idx, 0], surface[idx, 1]
        lo, hi = _section_chains(x, y, grid)
        front_env, back_env = np.minimum(front_env, lo), np.maximum(back_env, hi)
        known = np.isfinite(front_env) & np.isfinite(back_env)
        if known.sum() < 2:
            continue
        env_lo = np.interp(x, grid[known], front_env[known])
        env_hi = np.interp(x, grid[known], back_env[known])
        # each vertex keeps its share of the way from the section's own front to its back:
        # hull points go onto the envelope, inner ones (the crotch's inside) follow in step. On
        # the back half the share is the larger of the one within the hull and the one within
        # the outline as it is (per column, `_section_profile`), on the front half the smaller:
        # a notch's outline (the cleft between the buttocks, the pit at the crotch) then goes
        # onto the envelope too and the notch fills, while a convex outline stays exact.
        own_lo, own_hi = _section_chains(x, y, x)
        own_lo, own_hi = np.where(np.isfinite(own_lo), own_lo, y), np.where(np.isfinite(own_hi), own_hi, y)
        share = np.clip((y - own_lo) / np.maximum(own_hi - own_lo, 1e-6), 0.0, 1.0)
        # the vertices `inside` the section (the skirt's inner walls) are no outline: they
        # neither count in it nor go onto it (a wall's vertex read as the back of its column
        # would go onto the back's envelope and drag its faces across the skirt)
        ins = np.zeros(len(idx), bool) if inside is None else inside[idx]
        if (~ins).any():
            out_lo, out_hi = _section_profile(x[~ins], y[~ins], config.band_m, x)
            outline_share = np.clip((y - out_lo) / np.maximum(out_hi - out_lo, 1e-6), 0.0, 1.0)
            outward = np.where(share > 0.5, np.maximum(share, outline_share), np.minimum(share, outline_share))
            # only near the section's front and back: a vertex well inside the hull (the
            # crotch's inside, between the legs' tops) would read as its column's outline
            near = _smoothstep((np.abs(share - 0.5) - 0.2) / 0.1) * ~ins
            share = share + near * (outward - share)
        target = np.minimum(env_lo, own_lo) + share * (np.maximum(env_hi, own_hi) - np.minimum(env_lo, own_lo))
        fade = _smoothstep((top - z[idx]) / config.recess_reach_m)
        out[idx, 1] = y + fade * (target - y)
        moved[idx] = True
    # a few smoothing steps in depth only over the lifted vertices: no ridge where the lift ends.
    # The skirt's front and back middles and its walls (`inside`) stay: smoothed with the outline
    # beside them they would sink in, a groove down the middle.
    edges = mesh_edges(faces) if edges is None else edges
    smoothed = moved if inside is None else moved & ~inside
    for _ in range(config.smoothing_iters // 2):
        mean = _neighbour_mean(out, edges)
        out[smoothed, 1] = 0.5 * out[smoothed, 1] + 0.5 * mean[smoothed, 1]
    return out


def skirt_skin_weights(
    dense: np.ndarray,
    bone_names: list[str],
    points: np.ndarray,
    bone_heads: dict[str, np.ndarray],
    garment: Garment | None,
    up_axis: int = 1,
    tail_fraction: float = 0.15,
) -> np.ndarray:
    """Dense skin weights (V,J) with the skirt region re-weighted so the cloth follows both legs.

    `points` (V,3) are the bind vertices (`up_axis` up, the legs' sides along x), `bone_names` the
    short names of `dense`'s columns, `bone_heads` the joint heads by short name. A skirt vertex
    between the crotch and the hem (`garment.hem_fraction` of the way to the ankles) gets
    weights on Hips and both thighs: the thighs' share grows with the depth below the crotch
    (h, up to 0.7 at the hem), split between left and right by the vertex's lateral position
    (a smooth step from one side of the skirt to the other), so the front and back of the
    skirt, where both legs meet, follow their average. Near the crotch the weights blend
    from the body's own, and on the legs below the hem (`tail_fraction` of the leg) back to them. Other vertices keep theirs; rows stay normalised. Pure function."""
    if garment is None or garment.kind == "none":
        return dense
    col = {name: i for i, name in enumerate(bone_names)}
    needed = ("Hips", "LeftUpLeg", "RightUpLeg", "LeftFoot", "RightFoot")
    if any(name not in col or name not in bone_heads for name in needed):
        return dense
    left, right = bone_heads["LeftUpLeg"], bone_heads["RightUpLeg"]
    crotch = 0.5 * (left[up_axis] + right[up_axis]) - 0.5 * np.linalg.norm(left - right)
    ankle = 0.5 * (bone_heads["LeftFoot"][up_axis] + bone_heads["RightFoot"][up_axis])
    hem = crotch - garment.hem_fraction * (crotch - ankle)
    y = points[:, up_axis]
    centre_x = 0.5 * (left[0] + right[0])
    lateral = points[:, 0] - centre_x
    legs = [col[n] for n in ("LeftUpLeg", "RightUpLeg", "LeftLeg", "RightLeg") if n in col]
    on_legs = dense[:, legs].sum(axis=1) > 0.5  # not the hands hanging beside the hips
    tail = tail_fraction * (crotch - ankle)  # the legs just below the hem blend back to their own
    in_skirt = (y <= crotch) & (y >= hem - tail) & on_legs
    if not in_skirt.any():
        return dense
    h = np.clip((crotch - y[in_skirt]) / max(crotch - hem, 1e-6), 0.0, 1.0)
    width = np.maximum(np.abs(lateral[in_skirt]).max(), 1e-3)
    # which side: the left thigh's head has the larger x or the smaller, whichever the rig says
    sign = 1.0 if left[0] > right[0] else -1.0
    to_left = _smoothstep(0.5 + 0.5 * sign * lateral[in_skirt] / width)
    legs_share = 0.7 * h
    skirt = np.zeros((int(in_skirt.sum()), dense.shape[1]))
    skirt[:, col["Hips"]] = 1.0 - legs_share
    skirt[:, col["LeftUpLeg"]] = legs_share * to_left
    skirt[:, col["RightUpLeg"]] = legs_share * (1.0 - to_left)
    # from the body's own weights at the crotch, and back to them on the legs below the hem,
    # so the step between cloth (both legs) and shin is spread over a band, not one edge ring
    below = np.clip((hem - y[in_skirt]) / max(tail, 1e-6), 0.0, 1.0)
    top = (crotch - y[in_skirt]) / max(tail, 1e-6)
    blend = (_smoothstep(top) * (1.0 - _smoothstep(below)))[:, None]
    out = dense.copy()
    out[in_skirt] = (1.0 - blend) * dense[in_skirt] + blend * skirt
    return out / out.sum(axis=1, keepdims=True)
