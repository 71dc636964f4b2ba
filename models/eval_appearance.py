"""Appearance evaluation: novel-view fidelity of the baked texture against ground truth.

Each synthetic subject is an Anny body dressed with a ground-truth texture in Anny's UV
layout: skin, a shirt with a print on the front only and a different back (stripes of another
colour over a third of it), short or long sleeves, trousers, shoes, short or long hair, eyes
and lips. Long hair hangs down the back of the neck and the upper back, in a band of random
width and length, and - as in a real front photo - shows beside the neck, drawn behind the
body into the photo and the mask. Some subjects cross their arms in front of the body, some
hold a ball in front of the hip. The photo is ray
traced through a pinhole camera (Lambert shading); the mask is the body plus the held
object, as a person segmenter would give it. The texture is then baked from that photo onto
a slightly wrong fit (the true pose with 2 degrees of noise per joint and half a centimetre of
translation: the body fit is never exact), and both textures are rendered on the true
surface from the front, back and both sides (models.render, orthographic):

- masked PSNR and SSIM per view (body pixels only), the unseen back and sides beside the
  seen front;
- wrong-part texels: the share of observed texels whose photo pixel shows, on the true
  body, another region more than 8 cm away in the rest pose, or no body at all (the held
  object, hair beside the neck).

`baseline` bakes with the earlier front-mirrored fill and plain ray visibility
(`TextureConfig(unseen_fill="mirror")`, no layout), so old and new sit side by side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import torch
import trimesh

from models.body_model import AnnyBody, BodyState, anny_topology
from models.camera import Camera
from models.render import GlbMesh, render_view
from models.surface import split_uv_seams
from models.synthetic import SKIN_TONES, phenotype_shape, place_body, random_background, random_phenotype
from models.texture import (
    REGIONS,
    BakedTexture,
    BodyLayout,
    TextureConfig,
    bake_texture,
    body_layout,
    cast_camera,
    face_part_labels,
    part_names,
    rasterise_uv,
)

VIEWS = ("front", "back", "left", "right")
KINDS = ("plain", "arms_crossed", "holding")
WRONG_PART_DISTANCE_M = 0.08  # closer: a slide along the same surface, not another part
HAIR = np.array([[28, 22, 18], [75, 48, 28], [150, 110, 60], [205, 180, 120]], np.float64)
# camera frame (x right, y down, z forward) -> render frame (Y up, the subject facing +Z)
CAMERA_TO_VIEW = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class LongHairTruth:
    half_width_m: float  # across the back, from the neck's midline
    end_frac: float  # the ends, as a fraction of the body height from the soles


@dataclass
class AppearanceResult:
    seed: int
    kind: str
    hair: str
    method: str  # "baseline" (mirror fill) or "regions"
    psnr: dict[str, float] = field(default_factory=dict)  # view -> dB
    ssim: dict[str, float] = field(default_factory=dict)
    wrong_part_share: float = float("nan")
    coverage: float = float("nan")
    bake_seconds: float = float("nan")


@dataclass
class AppearanceSubject:
    seed: int
    kind: str
    hair: str
    photo: np.ndarray  # (h,w,3) uint8
    mask: np.ndarray  # (h,w) bool: body + held object + long hair beside the neck
    obj: np.ndarray  # (h,w) bool: what is no part of the body surface (held object, hanging hair)
    camera: Camera
    true_vertices: np.ndarray  # (V,3) camera frame
    fit_vertices: np.ndarray  # (V,3) camera frame, the perturbed "fit"
    rest_vertices: np.ndarray  # (V,3) Anny frame
    texture: np.ndarray  # (S,S,3) uint8 ground truth, glTF orientation
    hair_rgb: np.ndarray | None = None  # (3,) the hair's colour in the ground truth
    long_hair: LongHairTruth | None = None  # how long hair hangs down the back; None: short


# --- ground truth ---------------------------------------------------------------------------


def draw_hair_beside_the_neck(
    photo: np.ndarray, covered: np.ndarray, vertices: np.ndarray, layout: BodyLayout, camera: Camera,
    hair: LongHairTruth, colour: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Long hair hanging behind the shoulders, as a front photo shows it: hair-coloured pixels
    left and right of the neck, from the ears down to the shoulders, behind the body (only
    where the body does not cover the photo), as wide as the hair. Returns the photo and
    those pixels."""
    h, w = photo.shape[:2]
    neck = camera.project(vertices[layout.region == REGIONS.index("neck")])
    head = camera.project(vertices[layout.region == REGIONS.index("head")])
    torso = camera.project(vertices[layout.region == REGIONS.index("torso")])
    depth = float(np.mean(camera.to_camera(vertices[layout.region == REGIONS.index("neck")])[:, 2]))
    half_px = hair.half_width_m * camera.K[0, 0] / depth
    cx = float(np.median(neck[:, 0]))
    top = float(np.percentile(head[:, 1], 60))  # about the ears
    bottom = float(np.percentile(torso[:, 1], 1)) + 0.4 * (float(neck[:, 1].max()) - float(neck[:, 1].min()))
    yy, xx = np.mgrid[0:h, 0:w]
    zone = (np.abs(xx - cx) < half_px) & (yy > top) & (yy < bottom) & ~covered
    shade = 0.85 + 0.15 * np.cos((xx - cx) / max(half_px, 1.0) * 9.0)  # strands
    out = photo.astype(np.float32)
    out[zone] = colour * shade[zone, None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8), zone


def ground_truth_texture(
    layout: BodyLayout, faces: np.ndarray, uv: np.ndarray, face_uv_idx: np.ndarray,
    rng: np.random.Generator, size: int, long_hair: LongHairTruth | None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(S,S,3) uint8 clothes-and-skin texture with a front-only print and a different back, and
    the hair colour (3,). Long hair covers the back of the neck and a band of the upper back."""
    raster = rasterise_uv(uv, face_uv_idx, size)
    corners = faces[raster.tri]
    rest = layout.rest_vertices
    p = np.einsum("nk,nkd->nd", raster.bary, rest[corners])
    normals = trimesh.Trimesh(rest, faces, process=False).vertex_normals
    n = np.einsum("nk,nkd->nd", raster.bary, normals[corners])
    region = np.array(REGIONS)[layout.region[corners[np.arange(len(corners)), raster.bary.argmax(1)]]]
    parts = np.array(part_names())[face_part_labels(uv, face_uv_idx)[raster.tri]]
    z0, z1 = rest[:, 2].min(), rest[:, 2].max()
    h = (p[:, 2] - z0) / (z1 - z0)  # 0 feet, 1 crown

    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))]
    shirt, back_colour = rng.uniform(30, 230, 3), rng.uniform(30, 230, 3)
    print_colour = 255 - shirt
    trousers, shoes = rng.uniform(20, 160, 3), rng.uniform(10, 90, 3)
    hair = HAIR[rng.integers(len(HAIR))]
    long_sleeves = rng.random() < 0.5

    col = np.tile(skin, (len(p), 1))
    top = np.isin(region, ["torso", "upper_arm.L", "upper_arm.R"]) | (
        long_sleeves & np.isin(region, ["forearm.L", "forearm.R"])
    )
    col[top] = shirt
    back = top & (n[:, 1] > 0.15) & np.isin(region, ["torso"])
    stripes = (np.sin(p[:, 2] * 2 * np.pi / 0.08) > 0.4)[:, None]  # a third of the back
    col[back] = np.where(stripes[back], back_colour, shirt)
    chest = top & np.isin(region, ["torso"]) & (n[:, 1] < -0.3) & (np.abs(p[:, 0]) < 0.09)
    chest &= (h > 0.66) & (h < 0.76)
    col[chest] = print_colour
    waist = 0.55
    legs = np.isin(region, ["thigh.L", "thigh.R", "shin.L", "shin.R"]) | ((region == "torso") & (h < waist))
    col[legs] = trousers
    col[np.isin(region, ["foot.L", "foot.R"])] = shoes
    head = region == "head"
    eyes_z = float(p[np.char.startswith(parts.astype(str), "eye_"), 2].mean())
    hair_zone = head & ((p[:, 2] > eyes_z + 0.045) | ((n[:, 1] > 0.1) & (p[:, 2] > eyes_z - 0.07)))
    if long_hair is not None:  # down the back to the shoulder blades, about as wide as the head and a half
        neck_x = float(np.median(p[region == "neck", 0]))
        hair_zone |= (region == "neck") & (n[:, 1] > 0.0)
        hair_zone |= (region == "torso") & (n[:, 1] > 0.2) & (h > long_hair.end_frac)
        hair_zone &= ~(region == "torso") | (np.abs(p[:, 0] - neck_x) < long_hair.half_width_m)
    col[hair_zone] = hair
    col[np.isin(parts, ["eye_front.L", "eye_front.R", "eye_back.L", "eye_back.R"])] = [70, 50, 40]
    col[np.isin(parts, ["mouth_cavity", "tongue"])] = [120, 50, 50]
    col = col + rng.normal(0, 5, col.shape)
    return raster.scatter(np.clip(col, 0, 255).astype(np.uint8), fill=0), hair


def subject_pose(body: AnnyBody, rng: np.random.Generator, kind: str) -> torch.Tensor:
    """(J,3) axis-angle: relaxed standing, arms crossed in front, or one hand at the hip."""
    names = [b.split(":")[-1] for b in body.joint_names]
    rotvec = np.zeros((len(names), 3))
    deg = np.pi / 180.0
    hinges = body.hinge_axes()

    def set_(short: str, x: float, y: float, z: float) -> None:
        rotvec[names.index(short)] = np.array([x, y, z]) * deg

    for side, sign in (("Left", 1.0), ("Right", -1.0)):
        set_(f"{side}Arm", rng.uniform(-10, 10), sign * rng.uniform(-15, 5), rng.uniform(-5, 5))
        set_(f"{side}UpLeg", rng.uniform(-5, 5), 0.0, sign * rng.uniform(0, 6))
    if kind == "arms_crossed":
        for side, sign in (("Left", 1.0), ("Right", -1.0)):
            set_(f"{side}Arm", -55.0, sign * -25.0, sign * 10.0)
            elbow = names.index(f"{side}ForeArm")
            rotvec[elbow] = hinges[elbow] * (115.0 + rng.uniform(-5, 5)) * deg
    elif kind == "holding":
        elbow = names.index("RightForeArm")
        set_("RightArm", -20.0, 5.0, 0.0)
        rotvec[elbow] = hinges[elbow] * 60.0 * deg
    return torch.as_tensor(rotvec, dtype=torch.float32)


def make_subject(body: AnnyBody, seed: int, kind: str, size: tuple[int, int] = (512, 768), texture_size: int = 1024) -> AppearanceSubject:
    rng = np.random.default_rng(10_000 + seed)
    w, h = size
    model = body.model
    topo = anny_topology(model)
    phenotype = random_phenotype(rng)
    shape = phenotype_shape(phenotype)
    rest = body.rest_vertices(shape)
    layout = body_layout(rest, topo["faces"], topo["uv"], topo["face_uv_idx"], topo["skin_indices"], topo["skin_weights"], list(model.bone_labels))
    long_hair = LongHairTruth(half_width_m=rng.uniform(0.09, 0.15), end_frac=rng.uniform(0.70, 0.76)) if rng.random() < 0.5 else None
    texture, hair_rgb = ground_truth_texture(layout, topo["faces"], topo["uv"], topo["face_uv_idx"], rng, texture_size, long_hair)
    yaw = rng.uniform(-15, 15) * np.pi / 180
    joints = subject_pose(body, rng, kind)
    camera = Camera.from_focal(1.2 * max(w, h), w, h)
    state, vertices = place_body(body, phenotype, torch.tensor([0.0, 0.0, float(yaw)]), joints, camera, fill=0.8)
    # the fit: a few degrees off per joint, a centimetre off in place
    noisy = BodyState(
        root_rotvec=state.root_rotvec.clone(), translation=state.translation + torch.as_tensor(rng.normal(0, 0.005, 3), dtype=torch.float32),
        joint_rotvec=joints + torch.as_tensor(rng.normal(0, 2.0 * np.pi / 180, joints.shape), dtype=torch.float32),
        shape=shape, base_rotation=state.base_rotation,
    )  # fmt: skip
    fit_vertices = body.posed_vertices(noisy)
    photo, covered = render_textured(vertices, topo["faces"], topo["uv"], topo["face_uv_idx"], texture, camera, random_background(rng, w, h))
    obj = np.zeros((h, w), bool)
    if long_hair is not None:  # hanging behind the shoulders, the hair shows beside the neck
        photo, obj = draw_hair_beside_the_neck(photo, covered, vertices, layout, camera, long_hair, hair_rgb)
    if kind == "holding":
        hand = vertices[layout.region == REGIONS.index("hand.R")].mean(axis=0)
        radius_m = 0.12
        centre = camera.project((hand + np.array([0.0, 0.0, -radius_m]))[None])[0]
        radius_px = camera.K[0, 0] * radius_m / (hand[2] - radius_m)
        photo, ball = draw_ball(photo, centre, radius_px, rng.uniform(40, 220, 3))
        obj |= ball
    return AppearanceSubject(
        seed=seed, kind=kind, hair="long" if long_hair is not None else "short", photo=photo, mask=covered | obj, obj=obj,
        camera=camera, true_vertices=vertices, fit_vertices=fit_vertices, rest_vertices=rest, texture=texture,
        hair_rgb=hair_rgb, long_hair=long_hair,
    )  # fmt: skip


def render_textured(
    vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, face_uv_idx: np.ndarray,
    texture: np.ndarray, camera: Camera, background: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Pinhole ray-traced photo of the textured mesh with a headlight, and its coverage."""
    from models.texture import sample_bilinear

    mesh = trimesh.Trimesh(vertices, faces, process=False)
    h, w = background.shape[:2]
    face_id, depth = cast_camera(mesh, camera, (h, w))
    hit = face_id >= 0
    rows, cols = np.nonzero(hit)
    rays = np.stack([cols, rows, np.ones(len(rows))], axis=1) @ np.linalg.inv(camera.K).T
    directions = rays @ camera.R
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    points = camera.center_world + directions * depth[rows, cols][:, None]
    tri = face_id[rows, cols]
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[tri], points)
    hit_uv = np.einsum("nk,nkd->nd", bary, uv[face_uv_idx[tri]])
    size = texture.shape[0]
    albedo = sample_bilinear(texture, np.stack([hit_uv[:, 0] * size - 0.5, (1 - hit_uv[:, 1]) * size - 0.5], axis=1).astype(np.float32))
    normal = np.einsum("nk,nkd->nd", bary, mesh.vertex_normals[mesh.faces[tri]])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-9)
    shade = 0.45 + 0.55 * np.clip(-(normal * directions).sum(axis=1), 0, 1)
    photo = background.astype(np.float32).copy()
    photo[rows, cols] = albedo * shade[:, None]
    return np.clip(np.round(photo), 0, 255).astype(np.uint8), hit


def draw_ball(photo: np.ndarray, centre: np.ndarray, radius: float, colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A shaded ball drawn over the photo (the held object) and its pixels."""
    h, w = photo.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    d2 = ((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / max(radius, 1.0) ** 2
    inside = d2 <= 1.0
    shade = np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))
    out = photo.astype(np.float32)
    out[inside] = (colour * (0.4 + 0.6 * shade[inside, None]))
    return np.clip(np.round(out), 0, 255).astype(np.uint8), inside


# --- measuring ------------------------------------------------------------------------------


def view_mesh(vertices_camera: np.ndarray, faces: np.ndarray, uv: np.ndarray, face_uv_idx: np.ndarray, texture: np.ndarray) -> GlbMesh:
    """The posed surface in the render frame (Y up, facing +Z) with a texture, seams split."""
    source, gltf_uv, new_faces = split_uv_seams(faces, uv, face_uv_idx)
    positions = np.asarray(vertices_camera, np.float64) @ CAMERA_TO_VIEW.T
    normals = trimesh.Trimesh(positions, faces, process=False).vertex_normals
    return GlbMesh(positions[source], normals[source], gltf_uv, new_faces, texture)


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    diff = (a.astype(np.float64) - b.astype(np.float64))[mask]
    mse = float((diff**2).mean()) if diff.size else 0.0
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def masked_ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004, Gaussian window sigma 1.5) of the grey images over `mask`."""
    x = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float64)
    y = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY).astype(np.float64)
    blur = lambda im: cv2.GaussianBlur(im, (11, 11), 1.5)
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(ssim[mask].mean()) if mask.any() else float("nan")


def wrong_part_share(subject: AppearanceSubject, baked: BakedTexture, layout: BodyLayout, faces: np.ndarray, uv, face_uv_idx) -> float:
    """Share of observed texels whose photo pixel shows the held object or, on the true body, a
    different region more than `WRONG_PART_DISTANCE_M` away in the rest pose."""
    raster = rasterise_uv(uv, face_uv_idx, baked.image.shape[0])
    seen = baked.observed.reshape(-1)[raster.flat]
    if not seen.any() or baked.pixels is None:
        return float("nan")
    h, w = subject.mask.shape
    px = baked.pixels[seen]
    rows = np.clip(np.round(px[:, 1]).astype(int), 0, h - 1)
    cols = np.clip(np.round(px[:, 0]).astype(int), 0, w - 1)
    mesh = trimesh.Trimesh(subject.true_vertices, faces, process=False)
    face_id, depth = cast_camera(mesh, subject.camera, (h, w))
    tri = face_id[rows, cols]
    on_body = tri >= 0
    rays = np.stack([cols, rows, np.ones(len(rows))], axis=1) @ np.linalg.inv(subject.camera.K).T
    directions = rays @ subject.camera.R
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    points = subject.camera.center_world + directions * np.where(on_body, depth[rows, cols], 0.0)[:, None]
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[np.maximum(tri, 0)], points)
    true_rest = np.einsum("nk,nkd->nd", bary, subject.rest_vertices[faces[np.maximum(tri, 0)]])
    corners = faces[raster.tri[seen]]
    texel_rest = np.einsum("nk,nkd->nd", raster.bary[seen], subject.rest_vertices[corners])
    texel_region = layout.region[corners[np.arange(len(corners)), raster.bary[seen].argmax(1)]]
    true_region = layout.region[faces[np.maximum(tri, 0), 0]]
    far = np.linalg.norm(true_rest - texel_rest, axis=1) > WRONG_PART_DISTANCE_M
    wrong = subject.obj[rows, cols] | (on_body & (true_region != texel_region) & far)
    return float(wrong.mean())


def evaluate_subject(body: AnnyBody, subject: AppearanceSubject, method: str) -> tuple[AppearanceResult, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Bake with `method` ("baseline" or "regions"), measure, and return the view renders."""
    import time

    topo = anny_topology(body.model)
    faces, uv, fuv = topo["faces"], topo["uv"], topo["face_uv_idx"]
    size = subject.texture.shape[0]
    layout = body_layout(subject.rest_vertices, faces, uv, fuv, topo["skin_indices"], topo["skin_weights"], list(body.model.bone_labels))
    start = time.perf_counter()
    if method == "baseline":
        baked = bake_texture(subject.fit_vertices, faces, uv, fuv, subject.camera, subject.photo, subject.mask, TextureConfig(size=size, unseen_fill="mirror"))
    else:
        baked = bake_texture(subject.fit_vertices, faces, uv, fuv, subject.camera, subject.photo, subject.mask, TextureConfig(size=size), layout=layout)
    seconds = time.perf_counter() - start
    result = AppearanceResult(seed=subject.seed, kind=subject.kind, hair=subject.hair, method=method,
                              coverage=round(baked.coverage, 4), bake_seconds=round(seconds, 3))  # fmt: skip
    result.wrong_part_share = round(wrong_part_share(subject, baked, layout, faces, uv, fuv), 5)
    truth = view_mesh(subject.true_vertices, faces, uv, fuv, subject.texture)
    made = view_mesh(subject.true_vertices, faces, uv, fuv, baked.image)
    renders = {}
    for view in VIEWS:
        a, b = render_view(truth, view, height=384), render_view(made, view, height=384)
        mask = _body_pixels(truth, view, a.shape[:2])
        result.psnr[view] = round(masked_psnr(a, b, mask), 3)
        result.ssim[view] = round(masked_ssim(a, b, mask), 4)
        renders[view] = (a, b)
    return result, renders


def _body_pixels(mesh: GlbMesh, view: str, shape: tuple[int, int]) -> np.ndarray:
    white = GlbMesh(mesh.positions, mesh.normals, mesh.uvs, mesh.faces, np.full((4, 4, 3), 255, np.uint8))
    black = GlbMesh(mesh.positions, mesh.normals, mesh.uvs, mesh.faces, np.zeros((4, 4, 3), np.uint8))
    a, b = render_view(white, view, height=shape[0]), render_view(black, view, height=shape[0])
    mask = (a.astype(int) - b.astype(int)).max(axis=2) > 20
    return cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def run_appearance_eval(body: AnnyBody, subjects: int = 6, seed: int = 0) -> tuple[list[AppearanceResult], list[np.ndarray]]:
    """Both methods on `subjects` synthetic subjects (kinds in turn); results and sheet rows
    (photo | truth and both bakes from the back and the left side)."""
    results: list[AppearanceResult] = []
    rows: list[np.ndarray] = []
    for i in range(subjects):
        subject = make_subject(body, seed + i, KINDS[i % len(KINDS)])
        panels = [_fit_height(subject.photo, 384)]
        for method in ("baseline", "regions"):
            result, renders = evaluate_subject(body, subject, method)
            results.append(result)
            if method == "baseline":
                panels += [renders["front"][0], renders["back"][0], renders["left"][0]]
            panels += [renders["front"][1], renders["back"][1], renders["left"][1]]
        rows.append(np.concatenate(panels, axis=1))
    return results, rows


def _fit_height(image: np.ndarray, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.resize(image, (round(w * height / h), height), interpolation=cv2.INTER_AREA)


def summarise_appearance(results: list[AppearanceResult]) -> dict[str, dict[str, float]]:
    """Per method: median PSNR/SSIM per view, median wrong-part share and bake time."""
    out: dict[str, dict[str, float]] = {}
    for method in sorted({r.method for r in results}):
        rs = [r for r in results if r.method == method]
        row: dict[str, float] = {}
        for view in VIEWS:
            row[f"psnr_{view}"] = round(float(np.median([r.psnr[view] for r in rs])), 2)
            row[f"ssim_{view}"] = round(float(np.median([r.ssim[view] for r in rs])), 4)
        row["wrong_part_share_mean"] = round(float(np.mean([r.wrong_part_share for r in rs])), 5)
        row["wrong_part_share_max"] = round(float(np.max([r.wrong_part_share for r in rs])), 5)
        row["bake_seconds_median"] = round(float(np.median([r.bake_seconds for r in rs])), 3)
        out[method] = row
    return out


def results_table(results: list[AppearanceResult]) -> list[dict]:
    return [asdict(r) for r in results]


# --- contact sheets from the GLB -------------------------------------------------------------


def face_closeup(mesh: GlbMesh, height: int = 384, head_frac: float = 0.13) -> np.ndarray:
    """Front render of the top `head_frac` of the avatar (its head), from the GLB's bind pose."""
    y = mesh.positions[:, 1]
    keep = (y[mesh.faces] > y.max() - head_frac * np.ptp(y)).all(axis=1)
    used, faces = np.unique(mesh.faces[keep], return_inverse=True)
    uvs = mesh.uvs[used] if mesh.uvs is not None else None
    head = GlbMesh(mesh.positions[used], mesh.normals[used], uvs, faces.reshape(-1, 3), mesh.texture)
    return render_view(head, "front", height=height)


def glb_sheet_row(photo: np.ndarray, glb: bytes, height: int = 384) -> np.ndarray:
    """photo | GLB at rest from the front, back, left side | face close-up, one image row."""
    from models.render import read_glb_mesh

    mesh = read_glb_mesh(glb)
    panels = [_fit_height(photo, height)] + [render_view(mesh, v, height) for v in ("front", "back", "left")]
    panels.append(face_closeup(mesh, height))
    return np.concatenate(panels, axis=1)


def write_appearance_report(body: AnnyBody, subjects: int, out_dir, seed: int = 0) -> dict[str, str]:
    """Run the appearance evaluation; write `appearance.json` (per subject and summary) and
    `appearance_sheet.png` (photo | truth, mirror fill, region fill: front, back, left)."""
    import json
    from pathlib import Path

    out = Path(out_dir)
    results, rows = run_appearance_eval(body, subjects, seed)
    report = {"summary": summarise_appearance(results), "subjects": results_table(results)}
    (out / "appearance.json").write_text(json.dumps(report, indent=2, default=float))
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=236) for r in rows])
    cv2.imwrite(str(out / "appearance_sheet.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return {"appearance_json": str(out / "appearance.json"), "appearance_sheet": str(out / "appearance_sheet.png")}
