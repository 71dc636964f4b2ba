"""Bake the photo onto the body model's UV layout.

Every texel inside a UV triangle is mapped to its 3D surface point, projected into the
photo and kept when the camera really sees it (embree ray test, front-facing, inside the
person mask). The rest of the body still needs a believable colour, so unseen texels are
made up from what was seen:

- torso, limbs, hands, feet: the blurred photo colour at the same silhouette position,
  i.e. the front mirrored onto the back, which keeps shirt and trousers apart;
- head: the colours of the nearest seen head surface, so the back of the head continues
  the hair seen on top and at the sides rather than averaging hair and face;
- anything else, or everything when `back_fill` is off: the mean seen colour of the
  texel's body part (Anny's UV segmentation), borrowed from a related part when needed.

The seam between seen and made-up colour is feathered, and colours are pushed over the
empty texture area so texture filtering and mipmaps never pick up black at chart borders.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import trimesh
import yaml
from scipy.spatial import cKDTree
from trimesh.ray.ray_pyembree import RayMeshIntersector

from models.camera import Camera

# Parts that borrow colour from another part when they were never seen themselves.
PART_FALLBACK = {
    "hand.L": "hand.R",
    "hand.R": "hand.L",
    "foot.L": "foot.R",
    "foot.R": "foot.L",
    "eye_back.L": "head",
    "eye_front.L": "head",
    "eye_back.R": "head",
    "eye_front.R": "head",
    "eye_cavity.L": "head",
    "eye_cavity.R": "head",
    "mouth_cavity": "head",
    "tongue": "head",
}
# Parts whose unseen back plausibly looks like their front (clothes, limbs). Not the head:
# it would get a blurred face on the back.
MIRROR_PARTS = ("body", "hand.L", "hand.R", "foot.L", "foot.R")
# Parts whose unseen side continues from the nearest seen surface instead.
HEAD_PARTS = ("head",)


@dataclass(frozen=True)
class TextureConfig:
    size: int = 1024
    visibility_eps_m: float = 0.01  # depth tolerance for the visibility test
    grazing_cos: float = 0.15  # reject texels seen at grazing angles
    mask_threshold: int = 128
    mask_erode_px: int = 2  # keep background from bleeding in at the silhouette
    back_fill: bool = True  # unseen backs continue the seen front (off: part means only)
    mirror_blur_frac: float = 0.01  # photo blur for the mirrored body, fraction of image height
    nearest_k: int = 16  # seen head texels averaged per unseen head vertex
    feather_frac: float = 1 / 256  # observed/filled transition width, fraction of `size`
    gutter: bool = True  # extend colours from the charts over all empty texels


@dataclass
class BakedTexture:
    image: np.ndarray  # (S,S,3) uint8, glTF orientation: row 0 is the top
    observed: np.ndarray  # (S,S) bool, texel colour came from the photo
    chart: np.ndarray  # (S,S) bool, texel lies inside some UV triangle
    coverage: float  # observed.sum() / chart.sum()


@dataclass(frozen=True)
class UVRaster:
    """The chart texels of a UV layout at one texture size."""

    size: int
    flat: np.ndarray  # (N,) row * size + col of each chart texel, ascending
    tri: np.ndarray  # (N,) its triangle
    bary: np.ndarray  # (N,3) float32 barycentric weights of the triangle's corners
    chart: np.ndarray  # (S,S) bool
    gutter_source: np.ndarray  # (S*S - N,) index into `flat` of the nearest chart texel

    def scatter(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """(S,S,...) image with `values` (N,...) at the chart texels."""
        out = np.full((self.size * self.size, *values.shape[1:]), fill, values.dtype)
        out[self.flat] = values
        return out.reshape(self.size, self.size, *values.shape[1:])


def bake_texture(
    vertices: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray,
    face_uv_idx: np.ndarray,
    camera: Camera,
    image: np.ndarray,
    mask: np.ndarray,
    config: TextureConfig = TextureConfig(),
) -> BakedTexture:
    """Texture (S,S,3) for `faces`/`uv` from one photo of the posed mesh `vertices`."""
    image = np.ascontiguousarray(np.asarray(image)[..., :3], dtype=np.uint8)
    mesh = trimesh.Trimesh(
        vertices=np.asarray(vertices, dtype=np.float64),
        faces=np.asarray(faces, dtype=np.int64),
        process=False,
    )
    raster = rasterise_uv(uv, face_uv_idx, config.size)
    points, normals = _surface_at_texels(mesh, raster)
    person = person_mask(mask, config)
    pixels, on_person = project_onto_person(camera, points, person)
    seen = visible_texels(mesh, points, normals, raster.tri, camera, on_person, config)
    colours = np.zeros((len(points), 3), np.float32)
    colours[seen] = sample_bilinear(image, pixels[seen])
    labels = face_part_labels(uv, face_uv_idx)[raster.tri]
    colours = _fill_unseen(colours, seen, labels, pixels, image, person, mesh, raster, config)
    observed = raster.scatter(seen, fill=False)
    return BakedTexture(
        image=_compose(raster, colours, observed, config),
        observed=observed,
        chart=raster.chart,
        coverage=float(seen.sum() / max(len(seen), 1)),
    )


# --- UV layout --------------------------------------------------------------------------

_RASTER_CACHE: dict[tuple[int, str], UVRaster] = {}


def rasterise_uv(uv: np.ndarray, face_uv_idx: np.ndarray, size: int) -> UVRaster:
    """Triangle and barycentrics of every texel covered by a UV triangle.

    Depends on the UV layout only, so it is computed once per layout and size.
    """
    uv = np.ascontiguousarray(uv, dtype=np.float64)
    face_uv_idx = np.ascontiguousarray(face_uv_idx, dtype=np.int64)
    key = (int(size), hashlib.sha1(uv.tobytes() + face_uv_idx.tobytes()).hexdigest())
    if key not in _RASTER_CACHE:
        if len(_RASTER_CACHE) >= 4:
            _RASTER_CACHE.pop(next(iter(_RASTER_CACHE)))
        _RASTER_CACHE[key] = _rasterise(texel_coords(uv[face_uv_idx], int(size)), int(size))
    return _RASTER_CACHE[key]


def texel_coords(uv: np.ndarray, size: int) -> np.ndarray:
    """Anny UV (v up) to texel coordinates (x=col, y=row) with texel centres on integers."""
    return np.stack([uv[..., 0] * size - 0.5, (1.0 - uv[..., 1]) * size - 0.5], axis=-1)


def _rasterise(corners: np.ndarray, size: int) -> UVRaster:
    index = np.zeros((size, size), np.int32)
    fixed = np.round(corners * 16).astype(np.int32)  # 4 bits of sub-texel precision
    for i, tri in enumerate(fixed):
        cv2.fillConvexPoly(index, tri, i + 1, lineType=cv2.LINE_8, shift=4)
    flat = np.flatnonzero(index)
    tri = index.ravel()[flat].astype(np.int64) - 1
    bary = _barycentrics(corners, tri, flat % size, flat // size)
    chart = index > 0
    return UVRaster(
        size=size, flat=flat, tri=tri, bary=bary, chart=chart, gutter_source=_nearest_chart(chart)
    )


def _barycentrics(corners: np.ndarray, tri: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Barycentrics (N,3) of texel centres in their triangles, clamped onto the triangle.

    The rasteriser is conservative, so edge texels can sit just outside their triangle.
    """
    affine = np.concatenate([corners.transpose(0, 2, 1), np.ones((len(corners), 1, 3))], axis=1)
    degenerate = np.abs(np.linalg.det(affine)) < 1e-9
    affine[degenerate] += np.diag([1e-4, 1e-4, 0.0])
    to_bary = np.linalg.inv(affine).astype(np.float32)[tri]  # (N,3,3)
    x = x.astype(np.float32)[:, None]
    y = y.astype(np.float32)[:, None]
    bary = np.clip(to_bary[:, :, 0] * x + to_bary[:, :, 1] * y + to_bary[:, :, 2], 0.0, 1.0)
    return bary / np.maximum(bary.sum(axis=1, keepdims=True), 1e-6)


def _nearest_chart(chart: np.ndarray) -> np.ndarray:
    """For each texel outside the charts (raster order), the nearest chart texel's number."""
    if chart.all() or not chart.any():
        return np.zeros(0, np.int64)
    _, label = cv2.distanceTransformWithLabels(
        (~chart).astype(np.uint8), cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL
    )
    # labels number the zero (chart) texels from 1 in raster order, like `flat`
    return label.ravel()[~chart.ravel()].astype(np.int64) - 1


# --- geometry and visibility ------------------------------------------------------------


def _surface_at_texels(mesh: trimesh.Trimesh, raster: UVRaster) -> tuple[np.ndarray, np.ndarray]:
    """3D point and smooth normal (float32) of every chart texel."""
    table = np.concatenate([mesh.vertices, mesh.vertex_normals], axis=1).astype(np.float32)
    attrs = np.einsum("nk,nkd->nd", raster.bary, table[mesh.faces[raster.tri]])
    return np.ascontiguousarray(attrs[:, :3]), np.ascontiguousarray(attrs[:, 3:])


def person_mask(mask: np.ndarray, config: TextureConfig = TextureConfig()) -> np.ndarray:
    """Boolean person mask, eroded so silhouette pixels (mixed with background) are left out."""
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    binary = (mask if mask.dtype == bool else mask >= config.mask_threshold).astype(np.uint8)
    r = config.mask_erode_px
    if r > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        binary = cv2.erode(binary, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return binary.astype(bool)


def project_points(camera: Camera, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N,2) as `Camera.project` computes them, and which points are in front.

    Points behind the camera get pixel (-1, -1), outside every image.
    """
    rot, t, k = camera.R, camera.t, camera.K
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    cam = [rot[i, 0] * x + rot[i, 1] * y + rot[i, 2] * z + t[i] for i in range(3)]
    ahead = cam[2] > 1e-6
    depth = np.where(ahead, cam[2], 1.0)
    u = (k[0, 0] * cam[0] + k[0, 1] * cam[1] + k[0, 2] * cam[2]) / depth
    v = (k[1, 0] * cam[0] + k[1, 1] * cam[1] + k[1, 2] * cam[2]) / depth
    pixels = np.stack([u, v], axis=1).astype(points.dtype)
    pixels[~ahead] = -1.0
    return pixels, ahead


def project_onto_person(
    camera: Camera, points: np.ndarray, person: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel of each point and whether it falls on the person (in front, in the image)."""
    pixels, ahead = project_points(camera, points)
    h, w = person.shape
    x, y = pixels[:, 0], pixels[:, 1]
    inside = ahead & (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    rows = np.clip(np.round(y).astype(np.int64), 0, h - 1)
    cols = np.clip(np.round(x).astype(np.int64), 0, w - 1)
    return pixels, inside & person[rows, cols]


def visible_texels(
    mesh: trimesh.Trimesh,
    points: np.ndarray,
    normals: np.ndarray,
    tri: np.ndarray,
    camera: Camera,
    on_person: np.ndarray,
    config: TextureConfig,
) -> np.ndarray:
    """Which surface points the photo shows: facing the camera, on the person, unoccluded."""
    centre = camera.center_world.astype(np.float32)
    view = centre - points
    dist = np.sqrt(np.einsum("nd,nd->n", view, view))
    norm = np.sqrt(np.einsum("nd,nd->n", normals, normals))
    cos = np.einsum("nd,nd->n", normals, view) / np.maximum(norm * dist, 1e-12)
    candidate = np.flatnonzero(on_person & (cos > config.grazing_cos))
    directions = -view[candidate] / dist[candidate, None]
    origins = np.broadcast_to(centre, directions.shape)
    hit = RayMeshIntersector(mesh).intersects_first(origins, directions)
    hit_dist = _plane_distance(mesh, hit, origins, directions)
    first = (hit == tri[candidate]) | (hit_dist >= dist[candidate] - config.visibility_eps_m)
    seen = np.zeros(len(points), bool)
    seen[candidate[(hit >= 0) & first]] = True
    return seen


def _plane_distance(
    mesh: trimesh.Trimesh, hit: np.ndarray, origins: np.ndarray, directions: np.ndarray
) -> np.ndarray:
    """Ray length to the plane of the hit triangle (inf where nothing was hit)."""
    out = np.full(len(hit), np.inf)
    ok = hit >= 0
    normal = mesh.face_normals[hit[ok]]
    anchor = mesh.vertices[mesh.faces[hit[ok], 0]]
    den = np.einsum("nd,nd->n", normal, directions[ok])
    num = np.einsum("nd,nd->n", normal, anchor - origins[ok])
    out[ok] = num / np.where(np.abs(den) < 1e-12, 1e-12, den)
    return out


def sample_bilinear(image: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Bilinear colours (N,C) float32 of an image at sub-pixel positions (N,2) x,y."""
    channels = image.shape[2] if image.ndim == 3 else 1
    n = len(pixels)
    if n == 0:
        return np.zeros((0, channels), np.float32)
    width = 1024  # cv2.remap wants maps under 32k per side: lay the points out in rows
    maps = np.zeros((-(-n // width) * width, 2), np.float32)
    maps[:n] = pixels
    out = cv2.remap(
        np.ascontiguousarray(image),
        maps.reshape(-1, width, 2),
        None,
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return out.reshape(len(maps), channels)[:n].astype(np.float32)


# --- body parts -------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _segmentation() -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    """Anny's UV-space body part map (RGB, row 0 = v 1), its labels and their colours."""
    spec = importlib.util.find_spec("anny")
    if spec is None or spec.origin is None:
        raise RuntimeError("the anny package is not installed")
    root = Path(spec.origin).parent / "data" / "segmentation"
    image = cv2.imread(str(root / "body_parts_segmentation.png"), cv2.IMREAD_COLOR)
    if image is None:
        raise RuntimeError(f"cannot read Anny's body part segmentation under {root}")
    colours = yaml.safe_load((root / "body_parts_segmentation.yaml").read_text())["colors"]
    names = tuple(colours)
    palette = np.asarray([colours[n] for n in names], np.float32)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), names, palette


def part_names() -> tuple[str, ...]:
    """Body part labels of Anny's segmentation, in label-index order."""
    return _segmentation()[1]


def face_part_labels(uv: np.ndarray, face_uv_idx: np.ndarray) -> np.ndarray:
    """Body part index (into `part_names()`) of each face, read at its UV centroid."""
    seg, _, palette = _segmentation()
    h, w = seg.shape[:2]
    centroid = np.asarray(uv, np.float64)[np.asarray(face_uv_idx)].mean(axis=1)
    cols = np.clip(np.floor(centroid[:, 0] * w).astype(np.int64), 0, w - 1)
    rows = np.clip(np.floor((1.0 - centroid[:, 1]) * h).astype(np.int64), 0, h - 1)
    colour = seg[rows, cols].astype(np.float32)
    # the map is anti-aliased: take the nearest palette colour
    return np.argmin(((colour[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)


# --- filling and composing --------------------------------------------------------------


def _fill_unseen(
    colours: np.ndarray,
    seen: np.ndarray,
    labels: np.ndarray,
    pixels: np.ndarray,
    image: np.ndarray,
    person: np.ndarray,
    mesh: trimesh.Trimesh,
    raster: UVRaster,
    config: TextureConfig,
) -> np.ndarray:
    """Colours (N,3) for all chart texels: observed ones kept, the others made up."""
    out = colours.copy()
    unseen = ~seen
    out[unseen] = _part_means(colours, seen, labels)[labels[unseen]]
    if not (config.back_fill and seen.any()):
        return out
    mirror = unseen & _has_part(labels, MIRROR_PARTS)
    h, w = person.shape
    x, y = pixels[:, 0], pixels[:, 1]
    mirror &= (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    out[mirror] = sample_bilinear(_person_colours(image, person, config), pixels[mirror])
    head = _has_part(labels, HEAD_PARTS)
    corners = mesh.faces[raster.tri]
    _fill_from_nearest_seen(out, seen & head, unseen & head, corners, raster.bary, mesh, config)
    return out


def _has_part(labels: np.ndarray, parts: tuple[str, ...]) -> np.ndarray:
    names = part_names()
    return np.isin(labels, [names.index(n) for n in parts if n in names])


def _person_colours(image: np.ndarray, person: np.ndarray, config: TextureConfig) -> np.ndarray:
    """The person's colours, smoothed and extended over the background.

    A fitted body never matches the mask exactly; points that project just off the person
    still get the nearest person colour instead of the background.
    """
    weight = person.astype(np.float32)
    sigma = max(config.mirror_blur_frac * image.shape[0], 0.5)
    num = cv2.GaussianBlur(image.astype(np.float32) * weight[..., None], (0, 0), sigma)
    den = cv2.GaussianBlur(weight, (0, 0), sigma)
    smooth = num / np.maximum(den, 1e-6)[..., None]
    if not person.any() or person.all():
        return smooth
    _, label = cv2.distanceTransformWithLabels(
        (~person).astype(np.uint8), cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL
    )
    inside = np.flatnonzero(person)  # labels number person pixels in raster order
    flat = smooth.reshape(-1, 3)
    outside = ~person.ravel()
    flat[outside] = flat[inside[label.ravel()[outside] - 1]]
    return smooth


def _fill_from_nearest_seen(
    colours: np.ndarray,
    source: np.ndarray,
    target: np.ndarray,
    corners: np.ndarray,
    bary: np.ndarray,
    mesh: trimesh.Trimesh,
    config: TextureConfig,
) -> None:
    """Colour `target` texels from the nearest `source` texels on the surface, in place.

    The back of a head then continues what its visible rim shows (hair on top, skin at
    the ears and neck) instead of one average of face and hair. Done per mesh vertex and
    interpolated, which is fast and smooth.
    """
    sources = np.flatnonzero(source)
    if len(sources) < config.nearest_k or not target.any():
        return
    sources = sources[:: max(1, len(sources) // 20_000)]
    points = np.einsum("nk,nkd->nd", bary[sources], mesh.vertices[corners[sources]])
    wanted = np.unique(corners[target])
    _, nearest = cKDTree(points).query(mesh.vertices[wanted], k=config.nearest_k)
    per_vertex = np.zeros((len(mesh.vertices), 3), np.float32)
    per_vertex[wanted] = colours[sources][nearest].mean(axis=1)
    colours[target] = np.einsum("nk,nkd->nd", bary[target], per_vertex[corners[target]])


def _part_means(colours: np.ndarray, seen: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean observed colour per part, borrowing from a related part or the whole body."""
    names = part_names()
    n = len(names)
    counts = np.bincount(labels[seen], minlength=n).astype(np.float64)
    sums = np.stack(
        [np.bincount(labels[seen], weights=colours[seen, c], minlength=n) for c in range(3)],
        axis=1,
    )
    overall = colours[seen].mean(axis=0) if seen.any() else np.full(3, 128.0)
    means = np.empty((n, 3), np.float32)
    for i, name in enumerate(names):
        borrow = PART_FALLBACK.get(name)
        j = names.index(borrow) if borrow in names else i
        if counts[i] > 0:
            means[i] = sums[i] / counts[i]
        elif counts[j] > 0:
            means[i] = sums[j] / counts[j]
        else:
            means[i] = overall
    return means


def _compose(
    raster: UVRaster, colours: np.ndarray, observed: np.ndarray, config: TextureConfig
) -> np.ndarray:
    """Texture image from texel colours: feathered seams, then the gutter."""
    image = raster.scatter(colours.astype(np.float32))
    sigma = max(config.feather_frac * raster.size, 0.5)
    chart = raster.chart.astype(np.float32)
    chart_blur = np.maximum(cv2.GaussianBlur(chart, (0, 0), sigma), 1e-6)
    smooth = cv2.GaussianBlur(image, (0, 0), sigma) / chart_blur[..., None]
    # share of observed texels nearby: 1 deep inside the seen area, about 0.5 at its edge
    near = cv2.GaussianBlur(observed.astype(np.float32), (0, 0), sigma) / chart_blur
    keep = np.where(observed, 0.5 + 0.5 * np.clip(2.0 * near - 1.0, 0.0, 1.0), 0.0)
    image = keep[..., None] * image + (1.0 - keep[..., None]) * smooth
    flat = image.reshape(-1, 3)
    if config.gutter and len(raster.gutter_source):
        flat[~raster.chart.ravel()] = flat[raster.flat[raster.gutter_source]]
    else:
        flat[~raster.chart.ravel()] = 0.0
    return np.clip(np.round(image), 0, 255).astype(np.uint8)
