"""Bake the photo onto the body model's UV layout.

Every texel inside a UV triangle is mapped to its 3D surface point, projected into the
photo and kept when the camera really sees it: embree ray test, front-facing, inside the
person mask, and - occlusion-aware - not next to an occluding contour of the fitted body
(an arm across the chest, where a slightly-off fit would paint arm onto chest) and not
around a hand (a hand in front of the body, a held ball). Everything else is "unseen".

Unseen texels get a believable colour from what was seen, never by mirroring the front:

- body (`BodyLayout`, regions from Anny's skin weights: torso, upper arm, forearm, hand,
  thigh, shin, foot per side, neck, head): per region, the median seen colour of slices along
  the region's axis (the torso by height, an arm along its length). A chest logo is a minority
  of its slice, so it is not repeated on the back, while the shirt/trouser line at the waist
  and sleeve cuffs stay where they are. A region never seen borrows from its mirror (both
  shoes alike), an arm from its parent (sleeves), and otherwise a neutral outfit (trousers,
  shoes, top) - invented legs are never bare or skin-coloured;
  Torso slices are summarised from their outer part only (a print sits in the middle), and
  the side colours are lifted by the photo's own shading curve (`shading_by_view_angle`), so
  the back is neither the print nor a shade darker than the front; along each region the
  slices are grouped into garments (`garment_runs`) and each garment's back is one colour, so
  the photo's lighting leaves no bands, and hems stay lines (no blend across a garment line);
- a photo from behind (`facing_of` is "away"): the photo goes onto the back and the face is
  made up from the skin seen on the neck, arms and hands;
- hands the detector finds in front of the head are occluders of the face and head;
- head: the nearest seen head surface outside the face, so the back of the head continues
  the hair seen on top and at the sides;
- hair: the photo's hair (`hair_in_photo`, crown-coloured pixels connected to the head) is an
  occluder of shirt and face; hair seen beside the neck is long and continues as a band down
  the back of the neck and the upper back (`long_hair_in_photo`);
- eyes: a procedural eyeball (sclera, iris in the photo's iris colour, pupil), mouth cavity
  and tongue in fixed mouth colours;
- the made-up colours are relaxed over the mesh with the seen colours held fixed (harmonic
  fill), so there are no hard breaks at nape, waist or cuffs.
Without a layout, or with `back_fill` off, unseen texels take their body part's mean colour;
`unseen_fill="mirror"` keeps the earlier front-mirrored fill, for comparison only.

The seam between seen and made-up colour is feathered, and colours are pushed over the
empty texture area so texture filtering and mipmaps never pick up black at chart borders.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import itertools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import trimesh
import yaml
from scipy import sparse
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


# Colours of the neutral outfit for regions the photo never shows (RGB).
NEUTRAL_TROUSERS = (58, 64, 82)  # dark denim
NEUTRAL_SHOES = (48, 44, 42)
NEUTRAL_TOP = (92, 104, 122)  # muted blue
DEFAULT_SKIN = (200, 160, 135)
DEFAULT_IRIS = (92, 64, 44)
SCLERA = (228, 222, 214)
PUPIL = (22, 18, 18)
MOUTH_CAVITY = (96, 38, 42)
TONGUE = (168, 92, 96)
CROWN_ABOVE_EYES_M = 0.03  # the crown starts no lower than this above the eyes
CROWN_BAND_M = 0.02  # the top-most seen band of the head is taken as the crown
NAPE_BELOW_EYES_M = 0.07  # where hair at the back of the head usually ends
# Long hair seen from the front ends, unseen, at the shoulder blades: this fraction of the
# body height below the shoulders.
LONG_HAIR_BELOW_SHOULDERS_FRAC = 0.09
# Hair pixels beside the neck, per pixel of the head, that make the hair long.
LONG_HAIR_MIN_HEAD_SHARE = 0.03
HAIR_NOT_NEAR_HAND_FRAC = 0.01  # of the body height: fingers the body model lacks are not hair
HAIR_SEED_RING_FRAC = 0.1  # hair-coloured pixels this close to the head (its height) are its hair
IRIS_R, PUPIL_R = 0.3, 0.12  # of the eye disk's UV radius (measured on renders of the rest face)


@dataclass(frozen=True)
class TextureConfig:
    size: int = 1024
    visibility_eps_m: float = 0.01  # depth tolerance for the visibility test
    grazing_cos: float = 0.15  # reject texels seen at grazing angles
    mask_threshold: int = 128
    mask_erode_px: int = 2  # keep background from bleeding in at the silhouette
    back_fill: bool = True  # unseen texels made up from what was seen (off: part means only)
    unseen_fill: str = "regions"  # "regions" (slice medians, see above) or "mirror" (legacy)
    occluder_band_frac: float = 0.02  # unseen near occluding contours, fraction of body height
    occluder_depth_m: float = 0.06  # a depth jump this big between neighbour pixels is a contour
    hand_zone_frac: float = 0.08
    head_hand_zone_frac: float = 0.03  # the same around a hand, for texels of the head
    hand_skin_tolerance: float = 90.0  # RGB distance from the face's skin beyond which a hand texel is not hand
    held_object_ratio: float = 0.5  # person-not-body pixels near a hand, per hand pixel: holding
    label_stride: int = 3  # the body's label map is cast at 1 pixel in stride x stride  # around a hand, other parts are unseen (held objects, fingers)
    stats_inset_frac: float = 0.01  # fill statistics from pixels this far inside the mask
    slice_bins: int = 16  # slices per region along its axis
    relax_iters: int = 25  # harmonic relaxation of the made-up colours over the mesh
    mirror_blur_frac: float = 0.01  # photo blur for the mirrored body, fraction of image height
    nearest_k: int = 16  # seen head texels averaged per unseen head vertex
    hair_tolerance: float = 40.0  # RGB distance from the crown's colour that still counts as hair,
    hair_tolerance_rel: float = 0.2  # plus this share of the crown colour's length
    long_hair_share: float = 0.2  # hair share of the person pixels beside the neck: long hair
    feather_frac: float = 1 / 256  # observed/filled transition width, fraction of `size`
    gutter: bool = True  # extend colours from the charts over all empty texels


@dataclass
class BakedTexture:
    image: np.ndarray  # (S,S,3) uint8, glTF orientation: row 0 is the top
    observed: np.ndarray  # (S,S) bool, texel colour came from the photo
    chart: np.ndarray  # (S,S) bool, texel lies inside some UV triangle
    coverage: float  # observed.sum() / chart.sum()
    pixels: np.ndarray | None = None  # (N,2) photo pixel of each chart texel (raster order)
    facing: str = "camera"  # where the fitted face looks: "camera", "side" or "away" (`facing_of`)


@dataclass(frozen=True)
class BodyLayout:
    """What the bake knows about the body beyond the posed surface: its rest pose and regions.

    `region` (V,) indexes `REGIONS`, from the skin weights; `axis_t` (V,) in [0,1] is the
    vertex's position along its region's main axis in the rest pose (0 at the end nearer the
    torso; bottom for torso, neck, head); `face_zone` (V,) marks the face (front of the head
    below the brows) whose colours must not spread round the head.
    """

    rest_vertices: np.ndarray  # (V,3) Anny frame: Z up, facing -Y
    region: np.ndarray  # (V,) int
    axis_t: np.ndarray  # (V,) float
    face_zone: np.ndarray  # (V,) bool
    rest_normals: np.ndarray  # (V,3) unit
    eye_height: float  # rest z of the eyes (metres)
    lids: np.ndarray | None = None  # (V,) bool, the eyelids (`models.expression.blink_lids`)


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


@dataclass(frozen=True)
class PhotoEvidence:
    """What the region fill reads from the photo itself, beyond the texels' colours."""

    image: np.ndarray  # (h,w,3) uint8
    person: np.ndarray  # (h,w) bool, eroded person mask
    region_map: np.ndarray  # (h,w) int, the fitted body's region per pixel, -1 off the body
    metres_per_px: float  # at the neck's depth
    texel_pixels: np.ndarray  # (N,2) photo pixel of each chart texel
    texel_view_cos: np.ndarray | None = None  # (N,) cosine between the surface normal and the view ray
    face_landmarks: np.ndarray | None = None  # (478,3) pixels, MediaPipe's face mesh


def bake_texture(
    vertices: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray,
    face_uv_idx: np.ndarray,
    camera: Camera,
    image: np.ndarray,
    mask: np.ndarray,
    config: TextureConfig = TextureConfig(),
    layout: BodyLayout | None = None,
    iris_rgb: tuple[float, float, float] | None = None,
    face_landmarks: np.ndarray | None = None,
    hand_landmarks: tuple[np.ndarray | None, ...] = (),
) -> BakedTexture:
    """Texture (S,S,3) for `faces`/`uv` from one photo of the posed mesh `vertices`.

    `layout` (see `body_layout`) switches on the occlusion-aware visibility and the region
    fill; `iris_rgb` colours the procedural eyes (default: `iris_colour` of the landmarks);
    `face_landmarks` (MediaPipe's 478, pixels) mark the photo's mouth and eye openings, whose
    pixels (teeth, tongue, eyeballs) are never baked onto lips, lids or skin; `hand_landmarks`
    (MediaPipe's 21 per detected hand, pixels) mark hands in front of the face, whose pixels
    are not the face.
    """
    if iris_rgb is None:
        iris_rgb = iris_colour(image, face_landmarks)
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
    ray = RayMeshIntersector(mesh)  # one embree scene for the visibility and the label map
    regional = layout is not None and config.back_fill and config.unseen_fill == "regions"
    view_cos = _view_cosines(points, normals, camera) if regional else None
    seen = visible_texels(mesh, points, normals, raster.tri, camera, on_person, config, ray=ray, view_cos=view_cos)
    tables = texel_tables(mesh.faces, uv, face_uv_idx, raster)
    labels = tables.labels
    facing = facing_of(mesh, camera, layout, face_landmarks) if layout is not None else "camera"
    if facing == "away":  # landmarks on the back of a head are the detector's guess, not a face
        face_landmarks, iris_rgb = None, None
    if regional:
        texel_region = layout.region[tables.dominant]
        zones = occlusion_zones(mesh, camera, layout.region, person.shape, config, person, ray=ray)
        seen &= ~occluded_texels(mesh, camera, layout.region, texel_region, pixels, person, config, zones)
        if face_landmarks is not None:
            seen &= ~_in_face_openings(face_landmarks, pixels, person.shape, labels)
        seen &= ~_behind_detected_hands(hand_landmarks, pixels, person.shape, texel_region)
    colours = np.zeros((len(points), 3), np.float32)
    colours[seen] = sample_bilinear(image, pixels[seen])
    if regional:
        deep = _deep_inside(person, pixels, config)
        scale = _metres_per_pixel(camera, mesh.vertices[layout.region == REGIONS.index("neck")])
        photo = PhotoEvidence(image=image, person=person, region_map=zones[0], metres_per_px=scale, texel_pixels=pixels,
                              texel_view_cos=view_cos, face_landmarks=face_landmarks)  # fmt: skip
        colours, seen = _fill_by_regions(
            colours, seen, deep, labels, texel_region, mesh, raster, layout, config, iris_rgb, photo, facing, tables
        )
    else:
        colours = _fill_unseen(colours, seen, labels, pixels, image, person, mesh, raster, config)
    observed = raster.scatter(seen, fill=False)
    # the procedural eyes are small and drawn texel-sharp: the seam feathering would blur
    # the iris away
    sharp = raster.scatter(tables.eyes, fill=False) if regional else None
    return BakedTexture(
        image=_compose(raster, colours, observed, config, sharp),
        observed=observed,
        chart=raster.chart,
        coverage=float(seen.sum() / max(len(seen), 1)),
        pixels=pixels,
        facing=facing,
    )


# The fitted face looks at the camera when the median cosine between its normals and the view
# rays is above this, away from it below minus this, and is seen from the side in between.
FACING_COS = 0.2


def facing_of(mesh: trimesh.Trimesh, camera: Camera, layout: BodyLayout, face_landmarks: np.ndarray | None) -> str:
    """Whether the photo shows the person's face ("camera"), their profile ("side") or the back
    of their head ("away"), from the fitted body - whose facing the fitter took from the order
    of the shoulders - and the face detector: a face the detector did not find and the fit does
    not turn to the camera is taken as turned away."""
    zone = np.flatnonzero(layout.face_zone)
    if not len(zone):
        return "camera"
    points = mesh.vertices[zone]
    view = camera.center_world[None, :] - points
    cos = np.einsum("nd,nd->n", mesh.vertex_normals[zone], view) / np.maximum(np.linalg.norm(view, axis=1), 1e-12)
    score = float(np.median(cos))
    if score < -FACING_COS or (face_landmarks is None and score < FACING_COS):
        return "away"
    return "camera" if score > FACING_COS else "side"


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


@dataclass(frozen=True)
class TexelTables:
    """What the bake reads per chart texel that depends on the mesh's topology and UV layout
    only, never on the person: computed once per layout (`texel_tables`)."""

    raster: UVRaster
    corners: np.ndarray  # (N,3) the texel's triangle's vertices
    dominant: np.ndarray  # (N,) the corner it lies nearest to (per-vertex flags read per texel)
    labels: np.ndarray  # (N,) body part (index into `part_names()`)
    eyes: np.ndarray  # (N,) bool, the eyeballs and their sockets
    mouth: np.ndarray  # (N,) bool, the mouth cavity and the tongue
    tongue: np.ndarray  # (N,) bool
    corner_weight: np.ndarray  # (V,) summed barycentric weight of all texels per vertex
    edges: np.ndarray  # (E,2) the mesh's unique undirected edges (`_mesh_edges`)


_TABLES_CACHE: dict[str, TexelTables] = {}


def texel_tables(faces: np.ndarray, uv: np.ndarray, face_uv_idx: np.ndarray, raster: UVRaster) -> TexelTables:
    """The `TexelTables` of `faces` on `raster` (which `rasterise_uv(uv, face_uv_idx)` made),
    cached: the region fill read them several times per bake, and every bake read them anew."""
    faces = np.ascontiguousarray(faces, dtype=np.int64)
    digest = hashlib.blake2b(digest_size=16)
    for array in (faces, np.ascontiguousarray(uv, np.float64), np.ascontiguousarray(face_uv_idx, np.int64)):
        digest.update(array.tobytes())
    key = f"{digest.hexdigest()}:{raster.size}"
    cached = _TABLES_CACHE.get(key)
    if cached is not None and cached.raster is raster:
        return cached
    if len(_TABLES_CACHE) >= 4:
        _TABLES_CACHE.pop(next(iter(_TABLES_CACHE)))
    _TABLES_CACHE[key] = _tables_of_labels(faces, raster, face_part_labels(uv, face_uv_idx)[raster.tri])
    return _TABLES_CACHE[key]


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
    ray: RayMeshIntersector | None = None,
    view_cos: np.ndarray | None = None,
) -> np.ndarray:
    """Which surface points the photo shows: facing the camera, on the person, unoccluded.
    `ray`: an intersector of `mesh` already built (its scene costs a tenth of the bake);
    `view_cos`: `_view_cosines(points, normals, camera)` when already computed."""
    centre = camera.center_world.astype(np.float32)
    view = centre - points
    dist = np.sqrt(np.einsum("nd,nd->n", view, view))
    if view_cos is None:
        view_cos = _view_cosines(points, normals, camera)
    cos = view_cos
    candidate = np.flatnonzero(on_person & (cos > config.grazing_cos))
    directions = -view[candidate] / dist[candidate, None]
    origins = np.broadcast_to(centre, directions.shape)
    hit = (ray or RayMeshIntersector(mesh)).intersects_first(origins, directions)
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


# --- body regions (occlusion-aware visibility and the region fill) -----------------------

# Regions from Anny's mixamo bones: (region, bones). Fingers belong to the hand.
REGION_BONES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("torso", ("Hips", "Spine", "Spine1", "Spine2", "LeftShoulder", "RightShoulder")),
    ("neck", ("Neck",)),
    ("head", ("Head",)),
    ("upper_arm.L", ("LeftArm",)),
    ("forearm.L", ("LeftForeArm",)),
    ("hand.L", ("LeftHand",)),
    ("upper_arm.R", ("RightArm",)),
    ("forearm.R", ("RightForeArm",)),
    ("hand.R", ("RightHand",)),
    ("thigh.L", ("LeftUpLeg",)),
    ("shin.L", ("LeftLeg",)),
    ("foot.L", ("LeftFoot", "LeftToeBase")),
    ("thigh.R", ("RightUpLeg",)),
    ("shin.R", ("RightLeg",)),
    ("foot.R", ("RightFoot", "RightToeBase")),
)
REGIONS = tuple(name for name, _ in REGION_BONES)
HAND_REGIONS = ("hand.L", "hand.R")
EYE_PARTS = ("eye_back.L", "eye_front.L", "eye_back.R", "eye_front.R", "eye_cavity.L", "eye_cavity.R")
MOUTH_PARTS = ("mouth_cavity", "tongue")
# Where an arm meets the torso, along the torso's axis (0 hips, 1 neck).
SHOULDER_T = 0.85
# The outer part of a torso slice, whose colour is the garment's and not a print's: farther
# from the midline than this fraction of the slice's half-width.
OUTER_TORSO_FRAC = 0.6
# Torso slices below this (the pelvis) continue the thighs when the photo does not show them.
PELVIS_T = 0.3


def _mirror(region: str) -> str | None:
    if region.endswith(".L"):
        return region[:-2] + ".R"
    if region.endswith(".R"):
        return region[:-2] + ".L"
    return None


def region_of_bone(bone: str) -> int:
    """Index into `REGIONS` of a bone label such as "mixamorig:LeftHandIndex1"."""
    short = bone.split(":")[-1]
    for i, (_, bones) in enumerate(REGION_BONES):
        if short in bones:
            return i
    for side, hand in (("Left", "hand.L"), ("Right", "hand.R")):
        if short.startswith(f"{side}Hand"):
            return REGIONS.index(hand)
    return REGIONS.index("torso")


def body_layout(
    rest_vertices: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray,
    face_uv_idx: np.ndarray,
    skin_indices: np.ndarray,
    skin_weights: np.ndarray,
    bone_names: list[str] | tuple[str, ...],
    lids: np.ndarray | None = None,
) -> BodyLayout:
    """Regions, axis positions and the face zone of Anny's rest surface (Z up, facing -Y);
    `lids` (V,) marks the eyelids, whose photo colour is not theirs (`_lids_are_skin`)."""
    rest = np.asarray(rest_vertices, np.float64)
    faces = np.asarray(faces, np.int64)
    bone_region = np.array([region_of_bone(str(b)) for b in bone_names])
    votes = np.zeros((len(rest), len(REGIONS)))
    np.add.at(votes, (np.arange(len(rest))[:, None], bone_region[skin_indices]), skin_weights)
    region = votes.argmax(axis=1)
    axis_t = np.zeros(len(rest))
    torso_centre = rest[region == REGIONS.index("torso")].mean(axis=0)
    for i, name in enumerate(REGIONS):
        members = np.flatnonzero(region == i)
        if len(members) < 3:
            continue
        pts = rest[members]
        if name in ("torso", "neck", "head"):
            axis = np.array([0.0, 0.0, 1.0])
        else:
            centred = pts - pts.mean(axis=0)
            axis = np.linalg.svd(centred, full_matrices=False)[2][0]
            if axis @ (pts.mean(axis=0) - torso_centre) < 0:
                axis = -axis  # 0 at the end nearer the torso
        proj = pts @ axis
        axis_t[members] = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-9)
    return BodyLayout(
        rest_vertices=rest, region=region, axis_t=axis_t,
        face_zone=_face_zone(rest, faces, uv, face_uv_idx, region),
        rest_normals=trimesh.Trimesh(rest, faces, process=False).vertex_normals,
        eye_height=_eye_height(rest, faces, uv, face_uv_idx),
        lids=None if lids is None else np.asarray(lids, bool),
    )  # fmt: skip


def _eye_height(rest: np.ndarray, faces: np.ndarray, uv: np.ndarray, face_uv_idx: np.ndarray) -> float:
    names = part_names()
    labels = face_part_labels(uv, face_uv_idx)
    eyes = np.unique(faces[np.isin(labels, [names.index(p) for p in EYE_PARTS if p in names])])
    return float(rest[eyes, 2].mean()) if len(eyes) else float(rest[:, 2].max() - 0.12)


def _face_zone(
    rest: np.ndarray, faces: np.ndarray, uv: np.ndarray, face_uv_idx: np.ndarray, region: np.ndarray
) -> np.ndarray:
    """Head vertices of the face: facing forward (-Y), below the brows, in front of the ears."""
    names = part_names()
    labels = face_part_labels(uv, face_uv_idx)
    if not np.isin(labels, [names.index(p) for p in EYE_PARTS if p in names]).any():
        return np.zeros(len(rest), bool)
    normals = trimesh.Trimesh(rest, faces, process=False).vertex_normals
    head = region == REGIONS.index("head")
    eye_z = _eye_height(rest, faces, uv, face_uv_idx)
    return head & (normals[:, 1] < -0.25) & (rest[:, 2] < eye_z + 0.035)


def _dominant(corners: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """The corner vertex (N,) each texel lies nearest to: per-vertex flags read per texel."""
    return corners[np.arange(len(corners)), bary.argmax(axis=1)]


def cast_camera(
    mesh: trimesh.Trimesh, camera: Camera, shape: tuple[int, int], stride: int = 1, ray: RayMeshIntersector | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """First-hit face id (h,w) (-1: nothing) and ray length (h,w) (inf) per photo pixel.

    Only pixels in the projected bounding box of the mesh are cast; with `stride` s > 1 one
    pixel in s x s is, and its result fills the block (for coarse label maps).
    """
    h, w = shape
    face_id = np.full((h, w), -1, np.int64)
    depth = np.full((h, w), np.inf, np.float32)
    pix, ahead = project_points(camera, np.asarray(mesh.vertices, np.float64))
    if not ahead.any():
        return face_id, depth
    lo = np.clip(np.floor(pix[ahead].min(axis=0)).astype(int), 0, [w - 1, h - 1])
    hi = np.clip(np.ceil(pix[ahead].max(axis=0)).astype(int), 0, [w - 1, h - 1])
    rows, cols = np.mgrid[lo[1] : hi[1] + 1 : stride, lo[0] : hi[0] + 1 : stride]
    centre = (stride - 1) / 2.0  # cast through the middle of each block
    rays = np.stack([cols.ravel() + centre, rows.ravel() + centre, np.ones(rows.size)], axis=1)
    directions = rays @ (camera.R.T @ np.linalg.inv(camera.K)).T  # camera -> world: R^T K^-1 p
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    origins = np.broadcast_to(camera.center_world, directions.shape)
    hit = (ray or RayMeshIntersector(mesh)).intersects_first(origins, directions)
    dist = _plane_distance(mesh, hit, origins, directions)
    block_h, block_w = rows.shape
    ids = np.repeat(np.repeat(hit.reshape(block_h, block_w), stride, 0), stride, 1)
    lengths = np.repeat(np.repeat(dist.reshape(block_h, block_w), stride, 0), stride, 1)
    r1, c1 = min(h, lo[1] + ids.shape[0]), min(w, lo[0] + ids.shape[1])
    face_id[lo[1] : r1, lo[0] : c1] = ids[: r1 - lo[1], : c1 - lo[0]]
    depth[lo[1] : r1, lo[0] : c1] = lengths[: r1 - lo[1], : c1 - lo[0]]
    return face_id, depth


def occlusion_zones(
    mesh: trimesh.Trimesh,
    camera: Camera,
    vertex_region: np.ndarray,
    shape: tuple[int, int],
    config: TextureConfig,
    person: np.ndarray | None = None,
    ray: RayMeshIntersector | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per photo pixel: the fitted body's region (-1 off the body), the band around its inner
    occluding contours, and the zone around its hands.

    A fit is never exact: near the outline of an arm in front of the chest the photo may show
    arm where the fit has chest, so both sides of the contour are left unseen. Around the hands
    the photo often shows fingers or a held object the body model does not have.
    """
    face_id, depth = cast_camera(mesh, camera, shape, stride=config.label_stride, ray=ray)
    on_body = face_id >= 0
    face_region = vertex_region[mesh.faces[:, 0]]
    region_map = np.where(on_body, face_region[np.maximum(face_id, 0)], -1)
    rows = np.flatnonzero(on_body.any(axis=1))
    height_px = float(rows[-1] - rows[0] + 1) if len(rows) else float(shape[0])
    far = np.where(on_body, depth, 1e3).astype(np.float32)
    square = np.ones((3, 3), np.uint8)
    jump = (cv2.dilate(far, square) - cv2.erode(far, square)) > config.occluder_depth_m
    inner = cv2.erode(on_body.astype(np.uint8), square).astype(bool)  # not the outer silhouette
    band = _dilate(jump & inner, config.occluder_band_frac * height_px) & on_body
    hands = np.isin(region_map, [REGIONS.index(r) for r in HAND_REGIONS])
    hand_zone = _dilate(hands, config.hand_zone_frac * height_px)
    if person is not None:
        # a hand with much person-but-not-body next to it holds something (a ball, a bag):
        # what the photo shows at that hand is the object, so the hand itself is unseen
        extra = person & ~_dilate(on_body, config.occluder_band_frac * height_px)
        for name in HAND_REGIONS:
            hand = region_map == REGIONS.index(name)
            near = _dilate(hand, config.hand_zone_frac * height_px)
            if hand.any() and (extra & near).sum() > config.held_object_ratio * hand.sum():
                band |= hand
    return region_map, band, hand_zone


def _metres_per_pixel(camera: Camera, points: np.ndarray) -> float:
    """Size of one photo pixel (metres) at the mean camera depth of `points`."""
    if not len(points):
        return 0.0
    depth = float(np.mean(camera.to_camera(np.asarray(points, np.float64))[:, 2]))
    return depth / float(camera.K[0, 0])


def _dilate(binary: np.ndarray, radius_px: float) -> np.ndarray:
    """`binary` grown by a disk of `radius_px`, by distance transform (cost independent of r)."""
    r = float(radius_px)
    if r < 0.5 or not binary.any():
        return binary.copy()
    distance = cv2.distanceTransform((~binary).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
    return distance <= r


def occluded_texels(
    mesh: trimesh.Trimesh,
    camera: Camera,
    vertex_region: np.ndarray,
    texel_region: np.ndarray,
    pixels: np.ndarray,
    person: np.ndarray,
    config: TextureConfig,
    zones: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Texels (N,) whose photo pixel belongs to another region, an occluding contour's band, or
    (for texels not of a hand) the zone around a hand, narrower for the head. `zones`: what
    `occlusion_zones` returned for these arguments, when already computed."""
    if zones is None:
        zones = occlusion_zones(mesh, camera, vertex_region, person.shape, config, person)
    region_map, band, hand_zone = zones
    h, w = person.shape
    rows = np.clip(np.round(pixels[:, 1]).astype(np.int64), 0, h - 1)
    cols = np.clip(np.round(pixels[:, 0]).astype(np.int64), 0, w - 1)
    other = region_map[rows, cols] != texel_region
    # hands are exempt from the hand zone, and the head gets a narrower one: a hand at the
    # chin must not paint the chin, but losing the whole face to it would be worse
    is_hand = np.isin(texel_region, [REGIONS.index(r) for r in HAND_REGIONS])
    is_head = texel_region == REGIONS.index("head")
    rows_px = np.flatnonzero((region_map >= 0).any(axis=1))
    height_px = float(rows_px[-1] - rows_px[0] + 1) if len(rows_px) else float(h)
    hands = np.isin(region_map, [REGIONS.index(r) for r in HAND_REGIONS])
    head_zone = _dilate(hands, config.head_hand_zone_frac * height_px)
    zone = np.where(is_head, head_zone[rows, cols], hand_zone[rows, cols]) & ~is_hand
    return other | band[rows, cols] | zone


# MediaPipe Face Mesh contours: the inner lips (the mouth opening) and both lid margins.
INNER_LIPS = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
EYE_OPENINGS = (
    (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7),
    (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249),
)


def face_openings(face_landmarks: np.ndarray, shape: tuple[int, int], grow_px: int = 1) -> np.ndarray:
    """(h,w) bool: the photo's mouth opening and eye openings, grown by `grow_px`."""
    h, w = shape
    canvas = np.zeros((h, w), np.uint8)
    lm = np.asarray(face_landmarks, np.float64)
    if len(lm) < 468:
        return canvas.astype(bool)
    for contour in (INNER_LIPS, *EYE_OPENINGS):
        pts = np.round(lm[list(contour), :2] * 16).astype(np.int32)
        cv2.fillPoly(canvas, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return _dilate(canvas.astype(bool), grow_px)


def _in_face_openings(
    face_landmarks: np.ndarray, pixels: np.ndarray, shape: tuple[int, int], labels: np.ndarray
) -> np.ndarray:
    """Texels (N,) of skin and lips whose pixel lies in a mouth or eye opening."""
    holes = face_openings(face_landmarks, shape)
    h, w = shape
    rows = np.clip(np.round(pixels[:, 1]).astype(np.int64), 0, h - 1)
    cols = np.clip(np.round(pixels[:, 0]).astype(np.int64), 0, w - 1)
    return holes[rows, cols] & ~_has_part(labels, EYE_PARTS + MOUTH_PARTS)


HAND_HULL_GROW = 0.15  # of the hand's landmark extent: the hull of the joints misses the skin around


def hand_pixels(hand_landmarks: tuple[np.ndarray | None, ...], shape: tuple[int, int]) -> np.ndarray:
    """(h,w) bool: the detected hands (convex hull of each hand's landmarks, grown)."""
    out = np.zeros(shape, bool)
    for hand in hand_landmarks:
        if hand is None or len(hand) < 3:
            continue
        xy = np.asarray(hand)[:, :2]
        hull = np.zeros(shape, np.uint8)
        cv2.fillConvexPoly(hull, cv2.convexHull(np.round(xy).astype(np.int32)), 1)
        out |= _dilate(hull.astype(bool), HAND_HULL_GROW * float(np.ptp(xy, axis=0).max()))
    return out


def _behind_detected_hands(
    hand_landmarks: tuple[np.ndarray | None, ...], pixels: np.ndarray, shape: tuple[int, int], texel_region: np.ndarray
) -> np.ndarray:
    """Head and neck texels (N,) whose pixel is a hand the detector found: a hand in front of
    the face (a V sign by the cheek, a chin on a fist) that the fitted hand, often a little off,
    does not cover. They are made up from the rest of the face."""
    if not any(h is not None for h in hand_landmarks):
        return np.zeros(len(pixels), bool)
    hands = hand_pixels(hand_landmarks, shape)
    h, w = shape
    rows = np.clip(np.round(pixels[:, 1]).astype(np.int64), 0, h - 1)
    cols = np.clip(np.round(pixels[:, 0]).astype(np.int64), 0, w - 1)
    return hands[rows, cols] & np.isin(texel_region, [REGIONS.index("head"), REGIONS.index("neck")])


def iris_colour(image: np.ndarray, face_landmarks: np.ndarray | None) -> tuple[float, float, float] | None:
    """Median photo colour inside both irises (MediaPipe refined landmarks 468-477), or None
    when there are no iris landmarks or the sample looks like a reflection or a closed lid."""
    if face_landmarks is None or len(face_landmarks) < 478:
        return None
    image = np.asarray(image)[..., :3]
    h, w = image.shape[:2]
    samples = []
    for centre, ring in ((468, range(469, 473)), (473, range(474, 478))):
        c = np.asarray(face_landmarks[centre, :2], np.float64)
        radius = float(np.mean([np.linalg.norm(face_landmarks[i, :2] - c) for i in ring]))
        if radius < 1.0:
            continue
        rr, cc = np.mgrid[-int(radius) : int(radius) + 1, -int(radius) : int(radius) + 1]
        inside = (rr**2 + cc**2) <= (0.7 * radius) ** 2
        ys = np.clip(np.round(c[1] + rr[inside]).astype(int), 0, h - 1)
        xs = np.clip(np.round(c[0] + cc[inside]).astype(int), 0, w - 1)
        samples.append(image[ys, xs].astype(np.float64))
    if not samples:
        return None
    colour = np.median(np.concatenate(samples), axis=0)
    if colour.sum() > 3 * 170:  # a highlight or the sclera: not an iris colour
        return None
    return tuple(float(c) for c in colour)


def _deep_inside(person: np.ndarray, pixels: np.ndarray, config: TextureConfig) -> np.ndarray:
    """Texels (N,) whose pixel lies well inside the person mask: colour statistics for the fill
    come from there, away from silhouette pixels mixed with the background."""
    rows = np.flatnonzero(person.any(axis=1))
    height_px = float(rows[-1] - rows[0] + 1) if len(rows) else float(person.shape[0])
    r = max(1, round(config.stats_inset_frac * height_px))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    inner = cv2.erode(person.astype(np.uint8), kernel).astype(bool)
    h, w = person.shape
    rr = np.clip(np.round(pixels[:, 1]).astype(np.int64), 0, h - 1)
    cc = np.clip(np.round(pixels[:, 0]).astype(np.int64), 0, w - 1)
    return inner[rr, cc]


def _fill_by_regions(
    colours: np.ndarray,
    seen: np.ndarray,
    deep: np.ndarray,
    labels: np.ndarray,
    texel_region: np.ndarray,
    mesh: trimesh.Trimesh,
    raster: UVRaster,
    layout: BodyLayout,
    config: TextureConfig,
    iris_rgb: tuple[float, float, float] | None,
    photo: PhotoEvidence | None = None,
    facing: str = "camera",
    tables: TexelTables | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Colours (N,3) for all chart texels and the texels kept as observed (see module doc).
    `tables`: the layout's `TexelTables` (`labels` must be theirs)."""
    if tables is None:
        tables = _tables_of_labels(mesh.faces, raster, labels)
    eyes, mouth = tables.eyes, tables.mouth
    seen = seen & ~eyes & ~mouth
    corners = tables.corners
    dominant = tables.dominant  # the texel's nearest corner, for per-vertex flags
    if facing == "away":
        # a person seen from behind: what lands on the fitted face's rim is the back or side of
        # their head (hair, a cap); the face is made up (skin, procedural eyes, the hair around)
        seen = seen & ~layout.face_zone[dominant]
    seen &= ~_hand_not_skin(colours, seen, deep, texel_region, corners, raster.bary, layout, dominant, config)
    lids = layout.lids[dominant] if layout.lids is not None else np.zeros(len(seen), bool)
    seen &= ~lids
    head = layout.region == REGIONS.index("head")
    hair = crown_colour(colours, seen & deep, corners, raster.bary, layout, head, dominant)
    skin = _skin_colour(colours, seen, layout, dominant, texel_region)
    seen &= ~_not_our_sleeves(colours, seen & deep, texel_region, skin)
    photo_crown = _crown_is_hair_in_photo(hair, skin, photo) if photo is not None else None
    crown_from_photo = photo_crown is not None
    if crown_from_photo:
        # the fitted crown shows the forehead's skin while the photo shows hair above it: the
        # crown's seen skin is not the crown, and the crown is painted in the photo's hair
        hair = photo_crown
        crown_texels = _crown_zone(layout)[dominant]
        seen &= ~(crown_texels & (np.linalg.norm(colours - skin, axis=1) < CROWN_SKIN_TOLERANCE))
    long_hair = None
    if photo is not None and hair is not None:
        hair_mask = hair_in_photo(photo.image, photo.person, photo.region_map, hair, skin, config)
        below = _below_hairline(corners, raster.bary, layout, texel_region == REGIONS.index("head"))
        seen &= ~_covered_by_hair(hair_mask, photo.texel_pixels, seen, texel_region, below)
        long_hair = long_hair_in_photo(hair_mask, photo.person, photo.region_map, photo.image, photo.metres_per_px, layout, config)
    texel_t = np.einsum("nk,nk->n", raster.bary, layout.axis_t[corners].astype(np.float32))
    bins = config.slice_bins
    # slices are summarised from the seen sides of the body (normal across the view): they
    # border the unseen back, and a print on the front is no part of them
    forward = np.abs(np.einsum("nk,nk->n", raster.bary, layout.rest_normals[corners, 1].astype(np.float32)))
    sides = seen & deep & (forward < 0.6)
    if photo is not None and photo.texel_view_cos is not None:
        # the sides are seen at an angle and darker in the photo than the garment seen face-on:
        # their statistics are lifted to the face-on shade, so the back matches the front
        # (only the seen texels well inside the mask are read: the slice statistics' texels)
        ids = np.flatnonzero(seen & deep)
        cos = photo.texel_view_cos
        shade = shading_by_view_angle(colours, seen & deep, cos, texel_region, texel_t, bins, at=ids)
        lifted = _no_brighter_than_face_on(
            colours[ids] / shade[:, None], colours[ids], np.ones(len(ids), bool), cos[ids], texel_region[ids]
        )
        stats = np.zeros(colours.shape, lifted.dtype)
        stats[ids] = lifted
    else:
        stats = colours
    # the front's statistics from the outer half of each torso slice: a logo sits in the middle
    outer_part = _outer_part(texel_region, texel_t, corners, raster.bary, layout, bins)
    sides = _outer_half(sides, texel_region, outer_part)
    table, filled = _slice_medians(stats, sides, texel_region, texel_t, bins)
    # a region seen only face-on (no side slice at all) falls back to all its seen texels;
    # otherwise slices without sides are interpolated from the neighbouring side slices, so a
    # print the arms hide the sides of is not repeated either
    # the front's statistics from the outer half of each torso slice: a logo sits in the middle
    outer = _outer_half(seen & deep, texel_region, outer_part)
    front_table, front_filled = _slice_medians(stats, outer, texel_region, texel_t, bins)
    front_only = ~filled.any(axis=1)
    table[front_only] = front_table[front_only]
    filled[front_only] = front_filled[front_only]
    # one colour per garment along each region: slice-to-slice differences within a garment
    # are the photo's lighting (lit shoulders, the shadow under the arms), which baked onto
    # the back shows as bands; the garment lines (hem, waist, cuffs) are kept
    table, filled = _garment_runs(table, filled, front_table, front_filled)
    _one_colour_for_top_and_sleeves(table, filled)
    _thigh_tops_continue_the_torso(table, filled)
    table = _complete_regions(table, filled, skin)
    vertex_fill = _garment_fill(table, layout, layout.region, layout.axis_t, layout.rest_vertices[:, 2])
    vertex_fill[layout.face_zone] = skin  # an unseen face is skin, not the hair around it
    _face_from_nearest_seen(vertex_fill, colours, seen & deep, corners, raster.bary, layout, dominant)
    if layout.lids is not None:
        _lids_are_skin(vertex_fill, colours, seen & deep, corners, raster.bary, layout, dominant, skin, config.nearest_k)
    _head_from_nearest_seen(vertex_fill, colours, seen & deep, corners, raster.bary, mesh, layout, dominant, head, config)
    _hair_at_the_back(vertex_fill, layout, head, hair)
    if crown_from_photo:
        vertex_fill[_crown_zone(layout)] = hair
    _long_hair_down_the_back(vertex_fill, layout, long_hair)
    vertex_seen, vertex_colour = _vertex_observations(
        colours, seen, corners, raster.bary, len(mesh.vertices), tables.corner_weight
    )
    vertex_fill = _relax(vertex_fill, vertex_colour, vertex_seen, mesh.faces, config.relax_iters, tables.edges)
    out = colours.copy()
    unseen = np.flatnonzero(~seen)
    out[unseen] = _interpolate(raster.bary[unseen], corners[unseen], vertex_fill)
    eye_ids = np.flatnonzero(eyes)
    texel_xy = np.stack([raster.flat[eye_ids] % raster.size, raster.flat[eye_ids] // raster.size], axis=1)
    out[eye_ids] = _eye_colours(texel_xy, labels[eye_ids], iris_rgb)
    out[mouth] = MOUTH_CAVITY
    out[mouth & tables.tongue] = TONGUE
    return out, seen


def _interpolate(bary: np.ndarray, corners: np.ndarray, vertex_values: np.ndarray) -> np.ndarray:
    """Per-vertex values (V,3) at texels (N,): the barycentric sum over their corners, written
    out (a third faster than the einsum over the gathered (N,3,3) array, the same floats)."""
    out = bary[:, 0:1] * vertex_values[corners[:, 0]]
    out += bary[:, 1:2] * vertex_values[corners[:, 1]]
    out += bary[:, 2:3] * vertex_values[corners[:, 2]]
    return out


def _tables_of_labels(faces: np.ndarray, raster: UVRaster, labels: np.ndarray) -> TexelTables:
    """`TexelTables` from given texel labels, computed afresh (`texel_tables` caches them)."""
    corners = np.asarray(faces, np.int64)[raster.tri]
    names = part_names()
    return TexelTables(
        raster=raster, corners=corners, dominant=_dominant(corners, raster.bary), labels=labels,
        eyes=_has_part(labels, EYE_PARTS), mouth=_has_part(labels, MOUTH_PARTS),
        tongue=labels == names.index("tongue") if "tongue" in names else np.zeros(len(labels), bool),
        corner_weight=np.bincount(corners.ravel(), weights=raster.bary.ravel(), minlength=int(np.max(faces)) + 1),
        edges=_mesh_edges(faces),
    )  # fmt: skip


def _view_cosines(points: np.ndarray, normals: np.ndarray, camera: Camera) -> np.ndarray:
    """Cosine (N,) between each texel's surface normal and the ray to the camera."""
    view = camera.center_world.astype(np.float32) - points
    den = np.linalg.norm(view, axis=1) * np.linalg.norm(normals, axis=1)
    return np.einsum("nd,nd->n", normals, view) / np.maximum(den, 1e-12)


# The darkest shade the side statistics are lifted from: a real photo's sides are not always
# darker because of the angle (a side light, a dark garment), and an over-lifted back would
# be brighter than the front.
MIN_SHADE = 0.65
SHADING_SAMPLES = 50_000  # texels the shading curve is measured on
# View-angle cosines at which the photo's shading is measured (bin edges).
SHADING_COS_EDGES = (0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.01)


def shading_by_view_angle(
    colours: np.ndarray, seen: np.ndarray, cos: np.ndarray, region: np.ndarray, t: np.ndarray, bins: int,
    at: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """The photo's shade (N,) of each texel relative to the same garment seen face-on.

    Per region slice (one garment, one colour, mostly), the median brightness in each
    view-angle bin over that of the face-on bin; the median of these ratios over all slices
    (prints and logos are a few slices' business) is the photo's shading curve, interpolated
    at each texel's angle (or only at the texels `at`, indices). 1 where nothing can be measured.
    """
    edges = np.asarray(SHADING_COS_EDGES)
    n_bins = len(edges) - 1
    usable = np.flatnonzero(seen & (cos >= edges[0]))
    usable = usable[:: max(1, len(usable) // SHADING_SAMPLES)]  # a curve needs no more
    angle = np.clip(np.searchsorted(edges, cos[usable], side="right") - 1, 0, n_bins - 1)
    key = region[usable] * bins + np.clip((t[usable] * bins).astype(np.int64), 0, bins - 1)
    lum = colours[usable].mean(axis=1)
    ratios: list[list[float]] = [[] for _ in range(n_bins)]
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.r_[True, key[order][1:] != key[order][:-1], True])
    for a, b_end in itertools.pairwise(bounds):
        members = order[a:b_end]
        face_on = members[angle[members] == n_bins - 1]
        if len(face_on) < 10:
            continue
        ref = float(np.median(lum[face_on]))
        if ref < 20:  # too dark to measure a ratio
            continue
        for b in range(n_bins - 1):
            inside = members[angle[members] == b]
            if len(inside) >= 10:
                ratios[b].append(float(np.median(lum[inside])) / ref)
    curve = np.ones(n_bins)
    for b in range(n_bins - 1):
        if len(ratios[b]) >= 3:
            curve[b] = float(np.clip(np.median(ratios[b]), MIN_SHADE, 1.0))
    centres = 0.5 * (edges[:-1] + edges[1:])
    cos = cos if at is None else cos[at]
    return np.interp(np.clip(cos, centres[0], centres[-1]), centres, curve).astype(np.float32)


def _no_brighter_than_face_on(
    lifted: np.ndarray, colours: np.ndarray, seen: np.ndarray, cos: np.ndarray, region: np.ndarray
) -> np.ndarray:
    """`lifted` colours (N,3) dimmed where the lift made them brighter than their region seen
    face-on (median) and than they were: a side already lit (a shoulder's highlight) is not
    lifted into white."""
    face_on = np.flatnonzero(seen & (cos > 0.9))
    lum = colours.mean(axis=1)
    n = len(REGIONS)
    ref = np.full(n, 255.0)
    order = face_on[np.argsort(region[face_on], kind="stable")]  # texels grouped by region
    bounds = np.flatnonzero(np.r_[True, region[order][1:] != region[order][:-1], True])
    for a, b in itertools.pairwise(bounds):
        ref[region[order[a]]] = float(np.median(lum[order[a:b]]))
    cap = np.maximum(ref[region], lum)
    scale = np.minimum(1.0, cap / np.maximum(lifted.mean(axis=1), 1e-6))
    return np.minimum(lifted * scale[:, None], 255.0)


def _outer_part(
    texel_region: np.ndarray, t: np.ndarray, corners: np.ndarray, bary: np.ndarray, layout: BodyLayout, bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """The torso's texels (M,) and which of them lie in the outer part of their slice (M,)
    bool: farther from the midline than `OUTER_TORSO_FRAC` of the slice's half-width."""
    ids = np.flatnonzero(texel_region == REGIONS.index("torso"))
    x = np.einsum("nk,nk->n", bary[ids], layout.rest_vertices[corners[ids], 0])
    lateral = np.abs(x - float(np.median(layout.rest_vertices[layout.region == REGIONS.index("neck"), 0])))
    key = np.clip((t[ids] * bins).astype(np.int64), 0, bins - 1)
    half_width = np.zeros(bins)
    np.maximum.at(half_width, key, lateral)
    return ids, lateral > OUTER_TORSO_FRAC * half_width[key]


def _outer_half(seen: np.ndarray, texel_region: np.ndarray, outer_part: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """`seen` texels (N,), but of the torso only those in the outer part of their slice
    (`_outer_part`): prints, logos, buttons and zips sit in the middle of the chest, the
    garment's own colour at its sides. A slice whose outer part is hidden (arms crossed) is
    left to its neighbours. Other regions keep all their seen texels."""
    ids, outer = outer_part
    if not seen[ids].any():
        return seen
    out = seen.copy()
    out[ids] &= outer
    return out


# Two slice colours belong to one garment when their brightness differs by less than this
# factor and their chromaticity (r, g share of r+g+b) by less than this distance; lighting
# changes brightness gradually and chromaticity little, a garment line changes either at once.
GARMENT_LUM_RATIO = 1.6
GARMENT_CHROMA = 0.06
GARMENT_DARK = 40.0  # below this brightness chromaticity is noise and not compared


def same_garment(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two slice colours (3,) are plausibly one garment under different light."""
    return bool(_same_garments(np.asarray(a, np.float32)[None], np.asarray(b, np.float32)[None])[0])


def _same_garments(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`same_garment` of colour pairs (N,3), (N,3), vectorised: (N,) bool."""
    la, lb = a.mean(axis=1), b.mean(axis=1)
    lo, hi = np.minimum(la, lb), np.maximum(la, lb)
    # two near-blacks are one garment: their brightness ratio is noise (17 against 36)
    similar = (hi / np.maximum(lo, 1.0) <= GARMENT_LUM_RATIO) | (hi < GARMENT_DARK)
    ca = a[:, :2] / np.maximum(a.sum(axis=1, keepdims=True), 1e-6)
    cb = b[:, :2] / np.maximum(b.sum(axis=1, keepdims=True), 1e-6)
    return similar & ((lo < GARMENT_DARK) | (np.linalg.norm(ca - cb, axis=1) < GARMENT_CHROMA))


def garment_runs(colours: np.ndarray, have: np.ndarray) -> list[np.ndarray]:
    """Consecutive slices (indices into `colours` (B,3) where `have`) of one garment each: a
    slice starts a new run when it is not `same_garment` as its run's median so far."""
    runs: list[list[int]] = []
    for b in np.flatnonzero(have):
        if runs and same_garment(np.median(colours[runs[-1]], axis=0), colours[b]):
            runs[-1].append(int(b))
        else:
            runs.append([int(b)])
    return [np.asarray(r) for r in runs]


def _garment_runs(
    table: np.ndarray, filled: np.ndarray, front_table: np.ndarray, front_filled: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per region, the slices split into garments along the axis by the front's (print-free,
    outer) colours (`garment_runs`); each garment takes one colour, the median of its seen side
    slices that are that garment. Where the sides mostly disagree with the front (a print that
    reaches round the side, an arm), the garment is the front's colour when another region
    (the sleeves) shows it, else the side slices keep their own colours. A garment with no seen side (the arms hang over the hips) takes
    the front's colour when another region shows that colour too (the trousers on the thighs,
    skin on the arms), otherwise that of the nearest garment seen at the sides, so a print the
    arms hide the sides of is not repeated either."""
    out, out_filled = table.copy(), filled.copy()
    elsewhere = [front_table[r][front_filled[r]] for r in range(len(table))]

    def shown_elsewhere(colour: np.ndarray, r: int) -> bool:
        return any(same_garment(colour, c) for q in range(len(table)) if q != r for c in elsewhere[q])

    for r in range(len(table)):
        guide = np.where(front_filled[r][:, None], front_table[r], table[r])
        runs = garment_runs(guide, front_filled[r] | filled[r])
        unseen: list[int] = []
        seen_colour: dict[int, np.ndarray] = {}
        for k, run in enumerate(runs):
            out_filled[r, run] = True
            sides = run[filled[r, run]]
            if not len(sides):
                unseen.append(k)
                continue
            front = np.median(guide[run], axis=0)
            agree = sides[[same_garment(front, table[r, b]) for b in sides]]
            if 2 * len(agree) > len(sides):
                out[r, run] = np.median(table[r, agree], axis=0)
            elif shown_elsewhere(front, r):
                # the sides show something else (a print round the side) while another region
                # (the sleeves) shows the front's garment: the garment is the front's
                out[r, run] = front
            else:
                for c in range(3):
                    out[r, run, c] = np.interp(run, sides, table[r, sides, c])
            seen_colour[k] = np.median(out[r, run], axis=0)
        for k in unseen:
            front = np.median(guide[runs[k]], axis=0)
            if shown_elsewhere(front, r) or not seen_colour:
                out[r, runs[k]] = front
            else:
                nearest = min(seen_colour, key=lambda j: (abs(j - k), float(np.sum((seen_colour[j] - front) ** 2))))
                out[r, runs[k]] = seen_colour[nearest]
        if REGIONS[r] == "torso":
            _print_between_the_sleeves(out[r], runs, front_table, front_filled)
    return out, out_filled


def _print_between_the_sleeves(torso: np.ndarray, runs: list[np.ndarray], front_table: np.ndarray, front_filled: np.ndarray) -> None:
    """A torso garment above the waist that the sleeves do not share, next to a longer one
    they do share, is a print on the top (a band across the chest as wide as the chest, whose
    sides the arms hide): it takes the top's colour, in place (`torso` (B,3) slice colours)."""
    sleeves = [front_table[REGIONS.index(f"upper_arm.{s}")][front_filled[REGIONS.index(f"upper_arm.{s}")]] for s in "LR"]
    sleeves = np.concatenate(sleeves)
    if not len(sleeves):
        return
    sleeve = np.median(sleeves, axis=0)
    waist = int(PELVIS_T * len(torso))
    colours = [np.median(torso[run], axis=0) for run in runs]
    shared = [same_garment(c, sleeve) for c in colours]
    for k, run in enumerate(runs):
        if shared[k] or run[0] < waist:
            continue
        tops = [j for j in (k - 1, k + 1) if 0 <= j < len(runs) and shared[j] and len(runs[j]) > len(run)]
        if tops:
            torso[run] = colours[tops[0]]


SLEEVE_REGIONS = ("upper_arm.L", "upper_arm.R", "forearm.L", "forearm.R")


SLEEVE_LIFT_MAX = 1.1  # the made-up torso may be this much brighter than its sleeves


def _one_colour_for_top_and_sleeves(table: np.ndarray, filled: np.ndarray) -> None:
    """A torso garment's slices, in place, in the colour of its sleeves (the sleeve slices of
    the same garment, `same_garment`) when they came out more than `SLEEVE_LIFT_MAX` brighter:
    a hoodie's back and its sleeves are one fabric. The torso's side statistics are lifted to
    the shade of the chest seen face-on, and the demo's chest faces the light: its back came
    out a lighter grey (178) between darker sleeves (148). Where the torso is the darker one,
    or about as bright, each keeps its own colour (on the synthetic subjects each region's own
    estimate is the better one there)."""
    torso = REGIONS.index("torso")
    sleeves = [REGIONS.index(r) for r in SLEEVE_REGIONS]
    for run in garment_runs(table[torso], filled[torso]):
        colour = np.median(table[torso, run], axis=0)
        same = [table[r, filled[r] & _same_garments(table[r], np.broadcast_to(colour, table[r].shape))] for r in sleeves]
        same = np.concatenate(same)
        if not len(same):
            continue
        sleeve = np.median(same, axis=0)
        if colour.mean() > SLEEVE_LIFT_MAX * sleeve.mean():
            table[torso, run] = sleeve


THIGH_TOP_FRAC = 0.4  # the top of the thigh where the torso's bottom garment may be overlapped


def _thigh_tops_continue_the_torso(table: np.ndarray, filled: np.ndarray) -> None:
    """The torso's bottom garment and the thighs' tops, in place, where the thighs take that
    garment up within their top `THIGH_TOP_FRAC` (trousers under a top): the thighs' slices
    above it (the top's hem over the trousers, a hand or a sunlit fold of a coat at the front)
    are no garment of the back, where they showed as a band across the buttocks, and the
    garment is one colour over the hips and thighs, that of the thighs (its many slices)."""
    torso = REGIONS.index("torso")
    bins = table.shape[1]
    if not filled[torso].any():
        return
    runs = garment_runs(table[torso], filled[torso])
    bottom_run = runs[0]
    bottom = np.median(table[torso, bottom_run], axis=0)
    legs = []
    for side in ("L", "R"):
        r = REGIONS.index(f"thigh.{side}")
        have = np.flatnonzero(filled[r])
        if not len(have):
            continue
        same = have[_same_garments(table[r, have], np.broadcast_to(bottom, (len(have), 3)))]
        top = same[same < THIGH_TOP_FRAC * bins]
        if not len(top):
            continue
        run = next(b for b in garment_runs(table[r], filled[r]) if top[0] in b)
        colour = np.median(table[r, run], axis=0)
        table[r, have[have < top[0]]] = colour
        legs.append(colour)
    if legs and len(runs) > 1:  # not when the torso is one garment down to the crotch (a coat)
        table[torso, bottom_run] = np.median(legs, axis=0)


def _garment_fill(table: np.ndarray, layout: BodyLayout, region: np.ndarray, t: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Made-up colour (N,3) of points of `region` at axis position `t` and rest height `z`:
    the region's slice table (`_lookup`), except that the thighs above the torso's lowest point
    (the buttocks, the hips' sides) read the torso's slices at their height. A hem or a
    waistband is level across the back, while each region's own axis puts it at another
    height, and the region border on the buttocks follows the skin weights in a ragged line."""
    out = _lookup(table, region, t)
    torso = layout.region == REGIONS.index("torso")
    if not torso.any():
        return out
    zt = layout.rest_vertices[torso, 2]
    z0, z1 = float(zt.min()), float(zt.max())
    hips = np.isin(region, [REGIONS.index("thigh.L"), REGIONS.index("thigh.R")]) & (z > z0)
    if hips.any():
        t_torso = (z[hips] - z0) / max(z1 - z0, 1e-9)
        out[hips] = _lookup(table, np.full(int(hips.sum()), REGIONS.index("torso")), t_torso)
    return out


def _hand_not_skin(
    colours: np.ndarray,
    seen: np.ndarray,
    deep: np.ndarray,
    texel_region: np.ndarray,
    corners: np.ndarray,
    bary: np.ndarray,
    layout: BodyLayout,
    dominant: np.ndarray,
    config: TextureConfig,
) -> np.ndarray:
    """Seen hand texels (N,) whose colour is far from the face's skin: colour evidence for
    what the geometry cannot tell, a held object or a sleeve in front of the fitted hand.
    Nothing is rejected when the face was not seen (no skin reference)."""
    zone = seen & deep & (layout.face_zone[dominant])
    if zone.sum() < 50:
        return np.zeros(len(seen), bool)
    skin = np.median(colours[zone], axis=0)
    hands = np.flatnonzero(seen & np.isin(texel_region, [REGIONS.index(r) for r in HAND_REGIONS]))
    out = np.zeros(len(seen), bool)
    out[hands] = np.linalg.norm(colours[hands] - skin, axis=1) > config.hand_skin_tolerance
    return out


ARM_PAIRS = (("upper_arm.L", "upper_arm.R"), ("forearm.L", "forearm.R"))
MIN_ARM_TEXELS = 200  # seen texels an arm needs before its colour is compared with the other's
ARM_SKIN_TOLERANCE = 60.0  # RGB distance from the face's skin within which a skin-like arm is bare
# CIELAB distance beyond which two colours are different things, not one garment in other light:
# a lit and a shaded sleeve of one jumper differ by 5-20, a pink dress and a green one by 50.
OTHER_THING_DELTA_E = 30.0


def _lab(colours: np.ndarray) -> np.ndarray:
    """RGB colours (N,3) 0-255 in CIELAB (N,3): L 0-100, a and b about -128..127."""
    rgb = np.clip(np.asarray(colours, np.float32).reshape(1, -1, 3) / 255.0, 0.0, 1.0)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)[0]


def _not_our_sleeves(colours: np.ndarray, seen: np.ndarray, texel_region: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """Seen arm texels (N,) that show someone else. Where one arm's seen colour is another thing
    (`OTHER_THING_DELTA_E`) than both the other arm's and the torso's, and not bare skin, while
    the other arm is the torso's garment or skin, that arm's texels of a colour none of these
    share are taken as another person's: a neighbour's sleeve in front of ours, which the
    person mask let in, or a fitted arm behind a neighbour. When they are most of its texels,
    all of them are (what is left is the arm's outline, mixed with the neighbour), and the arm
    is made up like an unseen one, from the other. Both arms odd, or both alike, leaves all
    seen: two sleeves of a colour the torso lacks are a jacket's, not a neighbour's."""
    out = np.zeros(len(seen), bool)
    torso = np.flatnonzero(seen & (texel_region == REGIONS.index("torso")))
    if len(torso) < MIN_ARM_TEXELS:
        return out
    torso_lab = _lab(np.median(colours[torso], axis=0)[None])[0]

    def bare(colour: np.ndarray) -> np.ndarray:  # (M,3) -> (M,)
        return (np.linalg.norm(colour - skin, axis=1) < ARM_SKIN_TOLERANCE) & skin_like(colour)

    for a, b in ARM_PAIRS:
        ids = {r: np.flatnonzero(seen & (texel_region == REGIONS.index(r))) for r in (a, b)}
        if min(len(v) for v in ids.values()) < MIN_ARM_TEXELS:
            continue
        median = {r: np.median(colours[v], axis=0) for r, v in ids.items()}
        lab = {r: _lab(median[r][None])[0] for r in (a, b)}
        ours = {r: np.linalg.norm(lab[r] - torso_lab) < OTHER_THING_DELTA_E or bool(bare(median[r][None])[0]) for r in (a, b)}
        if ours[a] == ours[b] or np.linalg.norm(lab[a] - lab[b]) < OTHER_THING_DELTA_E:
            continue
        odd, good = (b, a) if ours[a] else (a, b)
        texels = ids[odd]
        texel_lab = _lab(colours[texels])
        other = (
            (np.linalg.norm(texel_lab - lab[good], axis=1) >= OTHER_THING_DELTA_E)
            & (np.linalg.norm(texel_lab - torso_lab, axis=1) >= OTHER_THING_DELTA_E)
            & ~bare(colours[texels])
        )
        out[texels] = True if 2 * other.sum() > len(other) else other
    return out


def _slice_medians(
    colours: np.ndarray, seen: np.ndarray, region: np.ndarray, t: np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Median seen colour (R,B,3) per region and axis slice, and which slices were seen (R,B)."""
    n_regions = len(REGIONS)
    key = region[seen] * bins + np.clip((t[seen] * bins).astype(np.int64), 0, bins - 1)
    table = np.zeros((n_regions * bins, 3), np.float32)
    filled = np.zeros(n_regions * bins, bool)
    if len(key):
        order = np.argsort(key, kind="stable")
        key, values = key[order], colours[seen][order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        ends = np.r_[starts[1:], len(key)]
        min_count = 20  # a few stray texels are not a slice
        for a, b in zip(starts, ends, strict=True):
            if b - a >= min_count:
                table[key[a]] = np.median(values[a:b], axis=0)
                filled[key[a]] = True
    return table.reshape(n_regions, bins, 3), filled.reshape(n_regions, bins)


SKIN_REGIONS = ("neck", "hand.L", "hand.R", "forearm.L", "forearm.R", "upper_arm.L", "upper_arm.R")
# Skin in YCrCb (Chai and Ngan, 1999): Cr and Cb ranges that hold skin of all tones.
SKIN_CR, SKIN_CB = (133, 173), (77, 127)
MIN_SKIN_TEXELS = 50


def skin_like(colours: np.ndarray) -> np.ndarray:
    """Colours (N,3) RGB that are plausibly skin (N,) bool, by their chroma in YCrCb."""
    if not len(colours):
        return np.zeros(0, bool)
    ycc = cv2.cvtColor(np.clip(colours, 0, 255).astype(np.uint8)[None], cv2.COLOR_RGB2YCrCb)[0].astype(np.int32)
    cr, cb = ycc[:, 1], ycc[:, 2]
    return (cr >= SKIN_CR[0]) & (cr <= SKIN_CR[1]) & (cb >= SKIN_CB[0]) & (cb <= SKIN_CB[1]) & (ycc[:, 0] > 30)


def _skin_colour(
    colours: np.ndarray, seen: np.ndarray, layout: BodyLayout, dominant: np.ndarray, texel_region: np.ndarray | None = None
) -> np.ndarray:
    """Median seen colour of the face zone (cheeks, nose, forehead); without a seen face (the
    person seen from behind) that of the skin-coloured texels of the neck, arms and hands;
    else a default skin."""
    zone = seen & (layout.face_zone[dominant])
    if zone.sum() >= MIN_SKIN_TEXELS:
        return np.median(colours[zone], axis=0)
    if texel_region is not None:
        body = np.flatnonzero(seen & np.isin(texel_region, [REGIONS.index(r) for r in SKIN_REGIONS]))
        body = body[skin_like(colours[body])]
        if len(body) >= MIN_SKIN_TEXELS:
            return np.median(colours[body], axis=0)
    return np.asarray(DEFAULT_SKIN, np.float32)


def _complete_regions(table: np.ndarray, filled: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """Every region's slices: seen ones kept, gaps interpolated along the axis, regions never
    seen borrowed from their mirror, parent or the neutral outfit (legs before torso)."""
    out = table.copy()
    bins = table.shape[1]
    centres = (np.arange(bins) + 0.5) / bins
    done = np.zeros(len(REGIONS), bool)

    def along(i: int) -> None:
        have = np.flatnonzero(filled[i])
        for c in range(3):
            out[i, :, c] = np.interp(centres, centres[have], table[i, have, c])
        done[i] = True

    def constant(i: int, colour) -> None:
        out[i] = np.asarray(colour, np.float32)
        done[i] = True

    idx = REGIONS.index
    for i in range(len(REGIONS)):
        if filled[i].any():
            along(i)
    for name in REGIONS:  # mirrors first: both shoes, both sleeves alike
        i, m = idx(name), _mirror(name)
        if not done[i] and m is not None and filled[idx(m)].any():
            out[i] = out[idx(m)]
            done[i] = True
    for side in ("L", "R"):
        thigh, shin, foot = idx(f"thigh.{side}"), idx(f"shin.{side}"), idx(f"foot.{side}")
        if not done[thigh]:
            constant(thigh, NEUTRAL_TROUSERS)
        if not done[shin]:
            constant(shin, out[thigh, -1] if filled[thigh, -1] else NEUTRAL_TROUSERS)
        if not done[foot]:
            constant(foot, NEUTRAL_SHOES)
    torso = idx("torso")
    if not done[torso]:
        constant(torso, NEUTRAL_TOP)
    pelvis = int(PELVIS_T * bins)
    seen_bins = np.flatnonzero(filled[torso])
    if len(seen_bins) and seen_bins[0] > pelvis:  # photo cut above the hips: trousers below
        legs = 0.5 * (out[idx("thigh.L"), 0] + out[idx("thigh.R"), 0])
        out[torso, :pelvis] = legs
        first = seen_bins[0]
        for k in range(pelvis, first):
            a = (k - pelvis + 1) / (first - pelvis + 1)
            out[torso, k] = (1 - a) * legs + a * table[torso, first]
    for side in ("L", "R"):
        upper, fore, hand = idx(f"upper_arm.{side}"), idx(f"forearm.{side}"), idx(f"hand.{side}")
        if not done[upper]:
            constant(upper, out[torso, int(SHOULDER_T * bins)])
        if not done[fore]:
            constant(fore, out[upper, -1])
        if not done[hand]:
            constant(hand, skin)
    for name in ("neck", "head"):
        if not done[idx(name)]:
            constant(idx(name), skin)
    return out


def _lookup(table: np.ndarray, region: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-vertex colour (V,3): the region's slice table, linearly interpolated in t within a
    garment and stepping at a garment line (a hem, a cuff), which stays a line."""
    bins = table.shape[1]
    x = np.clip(t * bins - 0.5, 0.0, bins - 1.0)
    lo = np.floor(x).astype(np.int64)
    hi = np.minimum(lo + 1, bins - 1)
    a = (x - lo).astype(np.float32)
    rows = np.asarray(table, np.float32)
    step = ~_same_garments(rows[:, :-1].reshape(-1, 3), rows[:, 1:].reshape(-1, 3)).reshape(len(rows), bins - 1)
    line = np.concatenate([step, np.zeros((len(rows), 1), bool)], axis=1)
    a = np.where(line[region, lo], (a >= 0.5).astype(np.float32), a)[:, None]
    return (1 - a) * table[region, lo] + a * table[region, hi]


def _vertex_observations(
    colours: np.ndarray, seen: np.ndarray, corners: np.ndarray, bary: np.ndarray, n_vertices: int,
    weight_all: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Vertices mostly surrounded by seen texels (V,) bool and their mean seen colour (V,3).
    `weight_all`: the texels' summed weight per vertex (`TexelTables.corner_weight`)."""
    if weight_all is None or len(weight_all) != n_vertices:
        weight_all = np.bincount(corners.ravel(), weights=bary.ravel(), minlength=n_vertices)
    w_seen = (bary * seen[:, None]).ravel()
    weight_seen = np.bincount(corners.ravel(), weights=w_seen, minlength=n_vertices)
    rgb = np.stack(
        [np.bincount(corners.ravel(), weights=w_seen * np.repeat(colours[:, c], 3), minlength=n_vertices) for c in range(3)],
        axis=1,
    )
    mean = (rgb / np.maximum(weight_seen, 1e-9)[:, None]).astype(np.float32)
    return weight_seen > 0.5 * np.maximum(weight_all, 1e-9), mean


_EDGE_CACHE: dict[str, np.ndarray] = {}


def _mesh_edges(faces: np.ndarray) -> np.ndarray:
    """Unique undirected edges (E,2) of a triangle list, once per topology (the sort is a
    fifth of the region fill's time)."""
    faces = np.ascontiguousarray(faces, dtype=np.int64)
    key = hashlib.blake2b(faces.tobytes(), digest_size=16).hexdigest()
    if key not in _EDGE_CACHE:
        edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
        _EDGE_CACHE[key] = np.unique(np.sort(edges, axis=1), axis=0)
    return _EDGE_CACHE[key]


def _relax(
    fill: np.ndarray, observed: np.ndarray, anchored: np.ndarray, faces: np.ndarray, iters: int,
    edges: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """Screened smoothing of the made-up vertex colours, seen vertices held at their colours:
    borders between slices and regions blend over a few rings, and the fill meets the seen
    surface without a step. Between two made-up vertices of different garments (`same_garment`)
    nothing is blended: a hem or a cuff on the unseen back stays a line, not a smear.
    `edges`: `_mesh_edges(faces)` when already known."""
    n = len(fill)
    edges = _mesh_edges(faces) if edges is None else edges
    both_made_up = ~anchored[edges[:, 0]] & ~anchored[edges[:, 1]]
    garment_line = both_made_up & ~_same_garments(fill[edges[:, 0]], fill[edges[:, 1]])
    edges = edges[~garment_line]
    edges = np.concatenate([edges, edges[:, ::-1]])
    adjacency = sparse.csr_matrix((np.ones(len(edges), np.float32), (edges[:, 0], edges[:, 1])), shape=(n, n))
    adjacency.data[:] = 1.0
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    mean = sparse.diags(1.0 / np.maximum(degree, 1.0)) @ adjacency
    x = np.where(anchored[:, None], observed, fill).astype(np.float32)
    prior = x.copy()
    for _ in range(iters):
        x = 0.2 * prior + 0.8 * (mean @ x)
        x[anchored] = observed[anchored]
    return x


def _head_from_nearest_seen(
    vertex_fill: np.ndarray,
    colours: np.ndarray,
    seen: np.ndarray,
    corners: np.ndarray,
    bary: np.ndarray,
    mesh: trimesh.Trimesh,
    layout: BodyLayout,
    dominant: np.ndarray,
    head: np.ndarray,
    config: TextureConfig,
) -> None:
    """Head vertices coloured from the nearest seen head surface outside the face, in place:
    the back of the head continues the hair (or scalp) seen on top and at the sides."""
    face_zone = layout.face_zone[dominant]
    texel_head = head[dominant]
    sources = np.flatnonzero(seen & texel_head & ~face_zone)
    _median_of_nearest(vertex_fill, colours, sources, corners, bary, layout, head & ~layout.face_zone, config.nearest_k)


def _face_from_nearest_seen(
    vertex_fill: np.ndarray,
    colours: np.ndarray,
    seen: np.ndarray,
    corners: np.ndarray,
    bary: np.ndarray,
    layout: BodyLayout,
    dominant: np.ndarray,
    k: int = 8,
) -> None:
    """Face vertices coloured from the nearest seen face surface, in place: lips hidden by
    an open mouth continue the lips seen around them, a cheek behind a hand the cheek."""
    zone = layout.face_zone[dominant]
    _median_of_nearest(vertex_fill, colours, np.flatnonzero(seen & zone), corners, bary, layout, layout.face_zone, k)


def _lids_are_skin(
    vertex_fill: np.ndarray, colours: np.ndarray, seen: np.ndarray, corners: np.ndarray, bary: np.ndarray,
    layout: BodyLayout, dominant: np.ndarray, skin: np.ndarray, k: int,
) -> None:  # fmt: skip
    """The eyelids' vertices, in place, in the skin seen nearest to them on the face (its
    shade on that side of the face), or the face's skin. An open eye's photo shows of its
    lids the lashes and the crease's shadow (the lid is not seen: `bake_texture`), which a
    blink stretched over the eye as a dark brown lid."""
    vertex_fill[layout.lids] = skin
    face = np.flatnonzero(seen & layout.face_zone[dominant] & ~layout.lids[dominant])
    sources = face[skin_like(colours[face])]
    _median_of_nearest(vertex_fill, colours, sources, corners, bary, layout, layout.lids, k)


def _median_of_nearest(
    vertex_fill: np.ndarray,
    colours: np.ndarray,
    sources: np.ndarray,
    corners: np.ndarray,
    bary: np.ndarray,
    layout: BodyLayout,
    wanted: np.ndarray,
    k: int,
) -> None:
    """`vertex_fill[wanted]` := median colour of the k source texels nearest in the rest pose."""
    if len(sources) < k or not wanted.any():
        return
    sources = sources[:: max(1, len(sources) // 20_000)]
    points = np.einsum("nk,nkd->nd", bary[sources], layout.rest_vertices[corners[sources]])
    ids = np.flatnonzero(wanted)
    _, nearest = cKDTree(points).query(layout.rest_vertices[ids], k=k)
    vertex_fill[ids] = np.median(colours[sources][nearest], axis=1)


def crown_colour(
    colours: np.ndarray, seen: np.ndarray, corners: np.ndarray, bary: np.ndarray, layout: BodyLayout, head: np.ndarray,
    dominant: np.ndarray | None = None,
) -> np.ndarray | None:  # fmt: skip
    """Median seen colour (3,) of the crown - hair, or scalp when bald - or None when the photo
    shows too little of it. `seen` (N,) texels, `head` (V,) vertices of the head region;
    `dominant`: `_dominant(corners, bary)` when already known."""
    if dominant is None:
        dominant = _dominant(corners, bary)
    top = np.flatnonzero(seen & head[dominant])
    if not len(top):
        return None
    point_z = np.einsum("nk,nk->n", bary[top], layout.rest_vertices[corners[top], 2])
    # the top of the head as far up as the photo shows it (a camera at chest height sees the
    # crown only at a grazing angle)
    top_seen = float(point_z.max())
    crown = top[point_z > max(layout.eye_height + CROWN_ABOVE_EYES_M, top_seen - CROWN_BAND_M)]
    return np.median(colours[crown], axis=0) if len(crown) >= 50 else None


# The photo's crown: the band above the top of the forehead (landmark 10), from this to this
# share of the face's height (forehead to chin) above it along the face's own up direction,
# over the middle of the face's width. The skull reaches some 0.4 face heights above the
# forehead's top, so the band is the head itself - hair, a hat or the scalp - in every photo of
# an upright or tilted face, even where the person mask stops at the hairline.
CROWN_BAND_FACE = (0.15, 0.35)
CROWN_BAND_WIDTH = 0.6
FOREHEAD_TOP, CHIN, CHEEK_R, CHEEK_L = 10, 152, 234, 454


def crown_in_photo(
    image: np.ndarray, face_landmarks: np.ndarray | None, person: np.ndarray | None = None
) -> np.ndarray | None:
    """Median colour (3,) of the photo just above the person's forehead (hair, a hat, or the
    scalp), from the face landmarks; None without a face or when the band leaves the photo.
    Where most of the band lies inside the `person` mask only those pixels count (no
    background above a small head); where the mask stops at the hairline, all of them."""
    if face_landmarks is None:
        return None
    top, chin = face_landmarks[FOREHEAD_TOP, :2], face_landmarks[CHIN, :2]
    up = top - chin
    height = float(np.linalg.norm(up))
    if height < 4:
        return None
    up /= height
    across = np.array([-up[1], up[0]])
    half = 0.5 * CROWN_BAND_WIDTH * float(np.linalg.norm(face_landmarks[CHEEK_L, :2] - face_landmarks[CHEEK_R, :2]))
    a, b = np.meshgrid(np.linspace(*CROWN_BAND_FACE, 8) * height, np.linspace(-half, half, 12))
    points = top + a.reshape(-1, 1) * up + b.reshape(-1, 1) * across
    h, w = image.shape[:2]
    if not ((points >= 0).all() and (points[:, 0] <= w - 1).all() and (points[:, 1] <= h - 1).all()):
        return None
    if person is not None:
        inside = person[np.round(points[:, 1]).astype(np.int64), np.round(points[:, 0]).astype(np.int64)]
        points = points[inside] if 2 * inside.sum() > len(inside) else points
    return np.median(sample_bilinear(image, points), axis=0)


CROWN_SKIN_TOLERANCE = 40.0  # RGB distance from the face's skin within which a crown is skin


def _crown_is_hair_in_photo(crown: np.ndarray | None, skin: np.ndarray, photo: PhotoEvidence) -> np.ndarray | None:
    """The photo's crown colour (3,) when the one seen on the fitted head's top is the face's
    skin while the photo shows something else above the forehead (hair, a hat): a fitted head a
    little too tall, or a person mask that stops at the hairline, puts the forehead's skin on
    the fitted crown, which painted a bald head. None when the fitted crown stands."""
    above = crown_in_photo(photo.image, photo.face_landmarks, photo.person)
    if above is None:
        return None

    def is_skin(c: np.ndarray) -> bool:
        return float(np.linalg.norm(c - skin)) < CROWN_SKIN_TOLERANCE

    return above if (crown is None or is_skin(crown)) and not is_skin(above) else None


def _crown_zone(layout: BodyLayout) -> np.ndarray:
    """Head vertices (V,) of the crown: above the brows' band, outside the face."""
    z = layout.rest_vertices[:, 2]
    head = layout.region == REGIONS.index("head")
    return head & ~layout.face_zone & (z > layout.eye_height + CROWN_ABOVE_EYES_M)


def _hair_at_the_back(vertex_fill: np.ndarray, layout: BodyLayout, head: np.ndarray, hair: np.ndarray | None) -> None:
    """The back of the head above the ears in the colour of the crown (hair, or scalp when
    bald), blending into the sides and the nape, in place. A front photo shows the crown but
    rarely the back; the nearest seen surface there is often the skin by the ears."""
    if hair is None:
        return
    z = layout.rest_vertices[:, 2]
    backward = np.clip((layout.rest_normals[:, 1] + 0.1) / 0.4, 0.0, 1.0)  # Anny faces -Y
    above_nape = np.clip((z - (layout.eye_height - NAPE_BELOW_EYES_M)) / 0.03, 0.0, 1.0)
    w = (backward * above_nape * head)[:, None]
    vertex_fill[:] = (1 - w) * vertex_fill + w * hair


@dataclass(frozen=True)
class LongHair:
    """Hair that hangs down the back, as far as one front photo tells: its colour, half its
    width across the back (metres) and the rest-pose height its ends reach."""

    colour: np.ndarray  # (3,)
    half_width_m: float
    end_z: float


def hair_in_photo(
    image: np.ndarray, person: np.ndarray, region_map: np.ndarray, hair: np.ndarray, skin: np.ndarray, config: TextureConfig
) -> np.ndarray:
    """(h,w) bool: the photo's hair - person pixels of the crown's colour (nearer to it than to
    the skin) connected to such pixels on or right beside the fitted head, down to two head
    heights below it.

    Hair hanging over the shoulders or the chest is an occluder like a hand: what it covers is
    unseen, and what it shows is hair, not shirt.
    """
    head = region_map == REGIONS.index("head")
    rows = np.flatnonzero(head.any(axis=1))
    if len(rows) < 2 or float(np.linalg.norm(hair - skin)) < config.hair_tolerance:
        return np.zeros(person.shape, bool)
    h = person.shape[0]
    body_rows = np.flatnonzero((region_map >= 0).any(axis=1))
    finger_px = HAIR_NOT_NEAR_HAND_FRAC * float(body_rows[-1] - body_rows[0] + 1)
    # hair is looked for down to two head heights below the head: only the photo above that
    # (and, for the hands' zone, the zone's width below it) is read
    limit = min(h, int(rows[-1] + 2 * (rows[-1] - rows[0])))
    reach = min(h, limit + int(np.ceil(finger_px)) + 2)
    pixels = image[:limit].astype(np.float32)
    to_hair = _distance_to_shades(pixels, hair, 0.8, 1.2)
    # light hair varies more in the photo than dark hair does (strands, shine); skin in shadow
    # is darker skin, not brown hair
    tolerance = config.hair_tolerance + config.hair_tolerance_rel * float(np.linalg.norm(hair))
    like = person[:limit] & (to_hair < tolerance) & (to_hair < _distance_to_shades(pixels, skin, 0.4, 1.2))
    hands = np.isin(region_map[:reach], [REGIONS.index(r) for r in HAND_REGIONS])
    like &= ~_dilate(hands, finger_px)[:limit]  # fingers
    count, label = cv2.connectedComponents(like.astype(np.uint8), connectivity=8)
    # hair beside the head (behind it, or the fit a little off) touches it, not only its crown
    near_head = _dilate(head[:limit], HAIR_SEED_RING_FRAC * float(rows[-1] - rows[0]))
    touching = np.unique(label[like & near_head])
    keep = np.zeros(count, bool)
    keep[touching[touching > 0]] = True
    out = np.zeros(person.shape, bool)
    out[:limit] = keep[label]
    return out


def _distance_to_shades(pixels: np.ndarray, colour: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """RGB distance (...) of each pixel to the nearest shade k * colour, k in [lo, hi]."""
    c = np.asarray(colour, np.float32)
    k = np.clip((pixels @ c) / max(float(c @ c), 1e-6), lo, hi)
    return np.linalg.norm(pixels - k[..., None] * c, axis=-1)


def long_hair_in_photo(
    hair_mask: np.ndarray,
    person: np.ndarray,
    region_map: np.ndarray,
    image: np.ndarray,
    metres_per_px: float,
    layout: BodyLayout,
    config: TextureConfig,
) -> LongHair | None:
    """Long hair from a front photo: hair hanging behind the shoulders shows beside the neck,
    on person pixels that are no part of the fitted body (or on the neck's sides).

    The strip from the ears to the bottom of the neck, as wide as the head and a half, is read
    from the region map; when a good share of its person pixels off the fitted body is hair
    (`hair_in_photo`), and they are not a handful, the hair is long. Its width across the back is the width of those
    pixels; how far down it reaches a photo from the front does not show, so it ends at the
    shoulder blades (`LONG_HAIR_BELOW_SHOULDERS_FRAC`).
    """
    head = region_map == REGIONS.index("head")
    neck = region_map == REGIONS.index("neck")
    if head.sum() < 20 or neck.sum() < 5 or not hair_mask.any():
        return None
    head_cols = np.flatnonzero(head.any(axis=0))
    head_rows = np.flatnonzero(head.any(axis=1))
    neck_rows = np.flatnonzero(neck.any(axis=1))
    head_w = float(head_cols[-1] - head_cols[0] + 1)
    centre = 0.5 * (head_cols[0] + head_cols[-1])
    r0, r1 = int(np.median(head_rows)), int(neck_rows[-1]) + 1  # from the ears to the shoulders
    c0, c1 = int(max(0, centre - 0.75 * head_w)), int(min(person.shape[1], centre + 0.75 * head_w + 1))
    strip = np.zeros(person.shape, bool)
    strip[r0:r1, c0:c1] = True
    candidates = strip & person & (region_map == -1)
    is_hair = hair_mask[candidates]
    if is_hair.sum() < config.long_hair_share * candidates.sum() or is_hair.sum() < LONG_HAIR_MIN_HEAD_SHARE * head.sum():
        return None
    cols = np.nonzero(candidates)[1][is_hair]
    half_px = float(np.percentile(np.abs(cols - centre), 95))  # one side may hide behind the head
    half_width = float(np.clip(half_px * metres_per_px, 0.06, 0.2))
    torso = layout.region == REGIONS.index("torso")
    shoulders = float(np.percentile(layout.rest_vertices[torso, 2], 99))
    height = float(np.ptp(layout.rest_vertices[:, 2]))
    return LongHair(
        colour=np.median(image[candidates][is_hair].astype(np.float32), axis=0),
        half_width_m=half_width,
        end_z=shoulders - LONG_HAIR_BELOW_SHOULDERS_FRAC * height,
    )


def _below_hairline(
    corners: np.ndarray, bary: np.ndarray, layout: BodyLayout, among: np.ndarray | None = None
) -> np.ndarray:
    """Texels (N,) of the head that are skin on nearly everyone: below the eyes and not facing
    backwards (cheeks, jaw, ears, the sides of the neck's top). `among` (N,) bool: only these
    texels are tested (the others are False)."""
    ids = np.arange(len(corners)) if among is None else np.flatnonzero(among)
    z = np.einsum("nk,nk->n", bary[ids], layout.rest_vertices[corners[ids], 2])
    backward = np.einsum("nk,nk->n", bary[ids], layout.rest_normals[corners[ids], 1])
    out = np.zeros(len(corners), bool)
    out[ids] = (z < layout.eye_height - 0.02) & (backward < 0.1)
    return out


def _covered_by_hair(
    hair_mask: np.ndarray,
    pixels: np.ndarray,
    seen: np.ndarray,
    texel_region: np.ndarray,
    below_hairline: np.ndarray,
    max_share: float = 0.5,
) -> np.ndarray:
    """Seen texels (N,) whose pixel is hair though they are not scalp - off the head, or on the
    head `below_hairline` (cheeks, jaw, ears): hair over the shoulders, the chest or the face
    is not baked onto them. A region of which most is "hair" is the hair's colour itself (a
    black shirt under black hair) and keeps its texels."""
    h, w = hair_mask.shape
    rows = np.clip(np.round(pixels[:, 1]).astype(np.int64), 0, h - 1)
    cols = np.clip(np.round(pixels[:, 0]).astype(np.int64), 0, w - 1)
    not_scalp = (texel_region != REGIONS.index("head")) | below_hairline
    on_hair = seen & hair_mask[rows, cols] & not_scalp
    n = len(REGIONS)
    share = np.bincount(texel_region[on_hair], minlength=n) / np.maximum(np.bincount(texel_region[seen], minlength=n), 1)
    return on_hair & (share[texel_region] <= max_share)


def _long_hair_down_the_back(vertex_fill: np.ndarray, layout: BodyLayout, hair: LongHair | None) -> None:
    """Back of the neck and the upper back, within the hair's width and down to its ends, in
    the hair's colour, in place; soft edges, so the strands do not end in a hard line."""
    if hair is None:
        return
    rest, normals = layout.rest_vertices, layout.rest_normals
    region = layout.region
    torso_or_neck = np.isin(region, [REGIONS.index("torso"), REGIONS.index("neck")])
    backward = np.clip(normals[:, 1] / 0.3, 0.0, 1.0)
    centre_x = float(np.median(rest[region == REGIONS.index("neck"), 0]))
    across = np.clip((hair.half_width_m - np.abs(rest[:, 0] - centre_x)) / 0.03, 0.0, 1.0)
    down = np.clip((rest[:, 2] - hair.end_z) / 0.04, 0.0, 1.0)
    w = (backward * across * down * torso_or_neck)[:, None]
    vertex_fill[:] = (1 - w) * vertex_fill + w * hair.colour


def _eye_colours(texel_xy: np.ndarray, labels: np.ndarray, iris_rgb: tuple[float, float, float] | None) -> np.ndarray:
    """Procedural eyes (N,3) for eye texels at texture positions `texel_xy` (N,2).

    Anny's eyeball and its front cap are each a disk in UV space, pupil at the centre (a planar
    projection along the gaze), so sclera, iris and pupil are rings of the UV radius, with a
    darker limbal ring; the socket behind the ball is dark.
    """
    names = part_names()
    out = np.tile(np.asarray(SCLERA, np.float32), (len(labels), 1))
    iris = np.asarray(iris_rgb if iris_rgb is not None else DEFAULT_IRIS, np.float32)
    for part in EYE_PARTS:
        members = labels == names.index(part) if part in names else np.zeros(len(labels), bool)
        if not members.any():
            continue
        if part.startswith("eye_cavity"):
            out[members] = MOUTH_CAVITY
            continue
        xy = texel_xy[members].astype(np.float64)
        d = np.linalg.norm(xy - xy.mean(axis=0), axis=1)
        r = d / max(float(d.max()), 1e-6)
        in_iris = np.clip((IRIS_R - r) / 0.06, 0.0, 1.0)[:, None]
        ring = np.clip(1.0 - np.abs(r - IRIS_R + 0.03) / 0.05, 0.0, 1.0)[:, None] * 0.4
        pupil = np.clip((PUPIL_R - r) / 0.04, 0.0, 1.0)[:, None]
        iris_tex = iris * (0.8 + 0.4 * np.clip((r[:, None] - PUPIL_R) / (IRIS_R - PUPIL_R), 0.0, 1.0))
        colour = np.tile(np.asarray(SCLERA, np.float32), (len(r), 1))
        colour = (1 - in_iris) * colour + in_iris * iris_tex * (1 - ring)
        out[members] = (1 - pupil) * colour + pupil * np.asarray(PUPIL, np.float32)
    return out


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
    raster: UVRaster,
    colours: np.ndarray,
    observed: np.ndarray,
    config: TextureConfig,
    sharp: np.ndarray | None = None,
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
    base = image
    if sharp is not None:
        keep[sharp] = 1.0
    image = keep[..., None] * base + (1.0 - keep[..., None]) * smooth
    flat = image.reshape(-1, 3)
    if config.gutter and len(raster.gutter_source):
        flat[~raster.chart.ravel()] = flat[raster.flat[raster.gutter_source]]
    else:
        flat[~raster.chart.ravel()] = 0.0
    return np.clip(np.round(image), 0, 255).astype(np.uint8)
