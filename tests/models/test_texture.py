"""Texture baking and the textured surface, with real Anny and a synthetic photo.

The photo is ray traced independently of the baker (pixel -> surface rather than texel ->
pixel): the Anny reference body stands 2.6 m in front of the camera, facing it, and every
visible surface point is painted with a smooth colour pattern of its UV coordinates. A
correct bake therefore reproduces the pattern at each observed texel.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import trimesh

from models.body_model import anny_topology, load_anny
from models.camera import Camera
from models.surface import (
    mesh_to_glb_bytes,
    project_silhouette,
    render_overlay,
    silhouette_iou,
    split_uv_seams,
    textured_mesh,
)
from models.texture import (
    BakedTexture,
    TextureConfig,
    bake_texture,
    face_part_labels,
    part_names,
    rasterise_uv,
)

WIDTH, HEIGHT = 512, 768
BACKGROUND = np.array([0, 255, 0], np.uint8)
SIZE = 512
# Anny (Z up, facing -Y) into the OpenCV camera frame (y down, looking along +Z): Anny's
# up becomes -y and its facing direction -Y becomes -z, i.e. towards the camera.
ANNY_TO_CAMERA = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def pattern(uv: np.ndarray) -> np.ndarray:
    """Known RGB per Anny UV (v up); never close to the green background."""
    u, v = uv[..., 0], uv[..., 1]
    return np.stack([40 + 180 * u, 40 + 180 * v, 200 - 120 * u * v], axis=-1)


@dataclass
class Scene:
    vertices: np.ndarray  # camera frame, metres
    faces: np.ndarray
    uv: np.ndarray
    face_uv_idx: np.ndarray
    camera: Camera
    photo: np.ndarray
    mask: np.ndarray  # uint8 0/255


def _render_photo(vertices, faces, uv, face_uv_idx, camera: Camera) -> np.ndarray:
    """Ray trace one ray per pixel; the first hit's UV picks the pattern colour."""
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    pixels = np.stack([cols.ravel(), rows.ravel(), np.ones(rows.size)], axis=1)
    directions = pixels @ np.linalg.inv(camera.K).T
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    origins = np.zeros_like(directions)
    points, ray, tri = mesh.ray.intersects_location(origins, directions, multiple_hits=False)
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[tri], points)
    hit_uv = np.einsum("nk,nkd->nd", bary, uv[face_uv_idx[tri]])
    photo = np.tile(BACKGROUND, (rows.size, 1))
    photo[ray] = np.clip(np.round(pattern(hit_uv)), 0, 255).astype(np.uint8)
    return photo.reshape(HEIGHT, WIDTH, 3)


@pytest.fixture(scope="module")
def scene() -> Scene:
    model = load_anny()
    topo = anny_topology(model)
    with torch.no_grad():
        rest = model(pose_parameters=None, phenotype_kwargs=None)["vertices"][0].cpu().numpy()
    vertices = rest.astype(np.float64) @ ANNY_TO_CAMERA.T
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    vertices = vertices - [centre[0], centre[1], 0.0] + [0.0, 0.0, 2.6]
    camera = Camera.from_focal(1.2 * HEIGHT, WIDTH, HEIGHT)
    faces, uv, face_uv_idx = topo["faces"], topo["uv"], topo["face_uv_idx"]
    photo = _render_photo(vertices, faces, uv, face_uv_idx, camera)
    mask = project_silhouette(vertices, faces, camera).astype(np.uint8) * 255
    return Scene(vertices, faces, uv, face_uv_idx, camera, photo, mask)


@pytest.fixture(scope="module")
def baked(scene: Scene) -> BakedTexture:
    return bake_texture(
        scene.vertices,
        scene.faces,
        scene.uv,
        scene.face_uv_idx,
        scene.camera,
        scene.photo,
        scene.mask,
        TextureConfig(size=SIZE),
    )


def _texel_uv(rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """Anny UV of texel centres under the glTF image orientation (row 0 = top)."""
    return np.stack([(cols + 0.5) / size, 1.0 - (rows + 0.5) / size], axis=1)


# --- baking -------------------------------------------------------------------------------


def test_scene_shows_the_whole_person(scene: Scene):
    person = scene.mask > 0
    assert 0.05 < person.mean() < 0.5
    assert not person[0].any() and not person[-1].any()
    assert not person[:, 0].any() and not person[:, -1].any()
    assert (scene.photo[~person] == BACKGROUND).all()


def test_bake_shapes_and_coverage(baked: BakedTexture):
    assert baked.image.shape == (SIZE, SIZE, 3) and baked.image.dtype == np.uint8
    assert baked.observed.shape == baked.chart.shape == (SIZE, SIZE)
    assert baked.observed.dtype == bool and baked.chart.dtype == bool
    assert not (baked.observed & ~baked.chart).any()
    assert 0.55 < baked.chart.mean() < 0.7  # Anny's charts cover ~63% of the square
    assert baked.coverage == pytest.approx(baked.observed.sum() / baked.chart.sum())
    assert 0.3 < baked.coverage < 0.6  # roughly the front half of the body


def test_observed_texels_reproduce_the_pattern(baked: BakedTexture):
    rows, cols = np.nonzero(baked.observed)
    expected = pattern(_texel_uv(rows, cols, SIZE))
    error = np.abs(baked.image[rows, cols].astype(float) - expected).max(axis=1)
    assert np.median(error) < 1.5
    assert np.percentile(error, 95) < 8.0  # the rest: UV seams and the feathered edge
    assert (error > 20).mean() < 0.02


def test_no_background_leaks_into_the_texture(baked: BakedTexture):
    distance = np.abs(baked.image.astype(int) - BACKGROUND.astype(int)).sum(axis=-1)
    assert distance.min() > 100  # neither on the charts nor in the gutter


def test_filled_colours_stay_within_observed_colours(baked: BakedTexture):
    seen = baked.image[baked.observed].astype(int)
    low, high = seen.min(axis=0), seen.max(axis=0)
    assert ((baked.image >= low - 1) & (baked.image <= high + 1)).all()
    unseen = baked.chart & ~baked.observed
    assert unseen.sum() > 0.3 * baked.chart.sum()
    assert (baked.image[unseen].std(axis=0) > 5).all()  # filled with structure, not one flat colour


def test_unseen_head_gets_the_mean_of_the_seen_head(scene: Scene):
    config = TextureConfig(size=256, back_fill=False, feather_frac=0.5 / 256)
    result = bake_texture(
        scene.vertices, scene.faces, scene.uv, scene.face_uv_idx, scene.camera,
        scene.photo, scene.mask, config,
    )  # fmt: skip
    raster = rasterise_uv(scene.uv, scene.face_uv_idx, 256)
    labels = face_part_labels(scene.uv, scene.face_uv_idx)[raster.tri]
    head = raster.scatter(labels == part_names().index("head"), fill=False)
    seen_head = result.image[head & result.observed].astype(float)
    # away from the observed area the fill is the part mean
    far = head & ~result.observed
    for _ in range(3):
        far &= ~np.roll(result.observed, 1, 0) & ~np.roll(result.observed, -1, 0)
        far &= ~np.roll(result.observed, 1, 1) & ~np.roll(result.observed, -1, 1)
    assert far.sum() > 500
    np.testing.assert_allclose(
        np.median(result.image[far].astype(float), axis=0), seen_head.mean(axis=0), atol=2.0
    )


def test_unseen_back_continues_the_front(scene: Scene):
    """Hair above the forehead, a red top, blue trousers: the back must follow suit."""
    rows = np.nonzero((scene.mask > 0).any(axis=1))[0]
    top, height = rows[0], rows[-1] - rows[0]
    hair_end, waist = top + 0.08 * height, top + 0.45 * height  # hair down to the ears
    band = np.arange(HEIGHT)[:, None]
    photo = np.where(band < hair_end, 30, np.where(band < waist, 1, 2))[..., None]
    photo = np.select(
        [photo == 30, photo == 1, photo == 2],
        [np.uint8([30, 30, 30]), np.uint8([200, 40, 40]), np.uint8([40, 40, 200])],
    )
    photo = np.broadcast_to(photo, (HEIGHT, WIDTH, 3)).astype(np.uint8)
    size = 256
    result = bake_texture(
        scene.vertices, scene.faces, scene.uv, scene.face_uv_idx, scene.camera,
        photo, scene.mask, TextureConfig(size=size),
    )  # fmt: skip
    raster = rasterise_uv(scene.uv, scene.face_uv_idx, size)
    labels = face_part_labels(scene.uv, scene.face_uv_idx)[raster.tri]
    points = np.einsum("nk,nkd->nd", raster.bary, scene.vertices[scene.faces[raster.tri]])
    row = scene.camera.project(points)[:, 1]
    colour = result.image.reshape(-1, 3)[raster.flat].astype(int)
    unseen = ~result.observed.reshape(-1)[raster.flat]
    body = unseen & (labels == part_names().index("body"))
    upper = body & (row > hair_end + 0.1 * height) & (row < waist - 0.05 * height)
    lower = body & (row > waist + 0.05 * height)
    assert upper.sum() > 2000 and lower.sum() > 2000
    assert (colour[upper, 0] > colour[upper, 2] + 100).mean() > 0.95  # red back of the top
    assert (colour[lower, 2] > colour[lower, 0] + 100).mean() > 0.95  # blue back of the legs
    crown = unseen & (labels == part_names().index("head")) & (row < top + 0.05 * height)
    assert crown.sum() > 200
    assert (colour[crown].max(axis=1) < 90).mean() > 0.9  # dark hair all round the crown


def test_bake_accepts_a_boolean_mask(scene: Scene, baked: BakedTexture):
    again = bake_texture(
        scene.vertices, scene.faces, scene.uv, scene.face_uv_idx, scene.camera,
        scene.photo, scene.mask > 0, TextureConfig(size=SIZE),
    )  # fmt: skip
    assert np.array_equal(again.observed, baked.observed)
    assert np.array_equal(again.image, baked.image)


# --- the textured surface ----------------------------------------------------------------


def test_split_uv_seams_preserves_geometry_and_uvs(scene: Scene):
    source, gltf_uv, new_faces = split_uv_seams(scene.faces, scene.uv, scene.face_uv_idx)
    assert 14_000 < len(source) < 16_000  # 13,718 vertices plus the seam copies
    assert len(source) == len(gltf_uv) and new_faces.shape == scene.faces.shape
    assert np.array_equal(source[new_faces], scene.faces)
    corner_uv = scene.uv[scene.face_uv_idx]
    np.testing.assert_allclose(gltf_uv[new_faces][..., 0], corner_uv[..., 0])
    np.testing.assert_allclose(gltf_uv[new_faces][..., 1], 1.0 - corner_uv[..., 1])
    assert np.array_equal(np.unique(new_faces), np.arange(len(source)))


def _glb_json(glb: bytes) -> dict:
    length, kind = struct.unpack("<I4s", glb[12:20])
    assert glb[:4] == b"glTF" and kind == b"JSON"
    return json.loads(glb[20 : 20 + length])


def test_glb_round_trip(scene: Scene, baked: BakedTexture, tmp_path):
    mesh = textured_mesh(scene.vertices, scene.faces, scene.uv, scene.face_uv_idx, baked.image)
    glb = mesh_to_glb_bytes(mesh)
    attributes = _glb_json(glb)["meshes"][0]["primitives"][0]["attributes"]
    assert {"POSITION", "NORMAL", "TEXCOORD_0"} <= set(attributes)
    path = tmp_path / "avatar.glb"
    path.write_bytes(glb)
    loaded = trimesh.load(path, force="mesh")
    assert loaded.vertices.shape == mesh.vertices.shape
    np.testing.assert_allclose(loaded.vertices, mesh.vertices, atol=1e-6)
    assert len(loaded.faces) == len(scene.faces)
    assert loaded.visual.uv.shape == (len(mesh.vertices), 2)
    texture = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"))
    assert np.array_equal(texture, baked.image)
    # end to end: the colour a viewer reads at each vertex's UV is the pattern of that UV
    # (trimesh hands glTF UVs back with v up, Anny's convention)
    anny_uv = loaded.visual.uv
    rows = np.clip((1.0 - anny_uv[:, 1]) * SIZE, 0, SIZE - 1).astype(int)
    cols = np.clip(anny_uv[:, 0] * SIZE, 0, SIZE - 1).astype(int)
    seen = baked.observed[rows, cols]
    error = np.abs(texture[rows, cols].astype(float) - pattern(anny_uv)).max(axis=1)
    assert seen.sum() > 3000
    assert np.median(error[seen]) < 3.0


def test_silhouette_iou(scene: Scene):
    own = project_silhouette(scene.vertices, scene.faces, scene.camera)
    assert own.shape == (HEIGHT, WIDTH) and own.dtype == bool
    assert silhouette_iou(scene.vertices, scene.faces, scene.camera, own) == 1.0
    assert silhouette_iou(scene.vertices, scene.faces, scene.camera, scene.mask) == 1.0
    shifted = np.roll(scene.mask, 12, axis=1)
    assert silhouette_iou(scene.vertices, scene.faces, scene.camera, shifted) < 0.85
    # the rasterised silhouette agrees with the ray-traced photo
    traced = (scene.photo != BACKGROUND).any(axis=-1)
    assert (own & traced).sum() / (own | traced).sum() > 0.95


def test_render_overlay_changes_only_the_person(scene: Scene):
    out = render_overlay(scene.photo, scene.vertices, scene.faces, scene.camera, alpha=0.6)
    assert out.shape == scene.photo.shape and out.dtype == np.uint8
    changed = (out != scene.photo).any(axis=-1)
    silhouette = scene.mask > 0
    assert not (changed & ~silhouette).any()
    assert changed.sum() > 0.95 * silhouette.sum()
