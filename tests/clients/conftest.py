"""GLBs as the pipeline writes them (real Anny, clothing offsets, texture), written once."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from models.body_model import PHENOTYPE_LABELS, anny_topology, load_anny
from models.clothing import offset_limits, rest_normals
from models.gltf_export import compress_glb, find_gltfpack
from models.rigging import build_rigged_avatar, evaluate_anny
from models.surface import mesh_to_glb_bytes, textured_mesh
from tests.clients import harness


@dataclass
class Glbs:
    plain: Path
    compressed: Path
    mesh: Path


def _texture_png(size: int = 256) -> bytes:
    """A smooth colour ramp over the UV square: every part of the body gets a distinct colour."""
    v, u = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([60 + 180 * u, 60 + 180 * v, 200 - 120 * u * v], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _photo_pose(model) -> np.ndarray:
    names = [n.split(":")[-1] for n in model.bone_labels]
    pose = np.tile(np.eye(4), (len(names), 1, 1))
    pose[names.index("LeftArm"), :3, :3] = Rotation.from_euler("y", -50, degrees=True).as_matrix()
    pose[names.index("RightLeg"), :3, :3] = Rotation.from_euler("x", 60, degrees=True).as_matrix()
    return pose


@pytest.fixture(scope="session")
def glbs(tmp_path_factory) -> Glbs:
    harness.node()  # skip (or fail under `make test`) before building anything without the tools
    model = load_anny()
    topo = anny_topology(model)
    phenotype = {k: 0.5 for k in PHENOTYPE_LABELS}
    pose = _photo_pose(model)
    body = evaluate_anny(model, phenotype, pose)
    normals = rest_normals(body.rest_vertices, topo["faces"])
    _, outward = offset_limits(body.rest_vertices, normals, topo["faces"], topo["uv"], topo["face_uv_idx"])
    offsets = 0.5 * outward[:, None] * normals  # a loose garment and hair, inside every limit
    texture = _texture_png()
    avatar = build_rigged_avatar(model, phenotype, pose, texture, offsets)
    out = tmp_path_factory.mktemp("glbs")
    plain, compressed, mesh = out / "avatar.glb", out / "avatar_meshopt.glb", out / "mesh.glb"
    plain.write_bytes(avatar.glb)
    assert find_gltfpack() is not None
    compressed.write_bytes(compress_glb(avatar.glb))
    surface = textured_mesh(
        body.posed_vertices, topo["faces"], topo["uv"], topo["face_uv_idx"],
        np.asarray(Image.open(io.BytesIO(texture)).convert("RGB")),
    )  # fmt: skip
    mesh.write_bytes(mesh_to_glb_bytes(surface))
    return Glbs(plain=plain, compressed=compressed, mesh=mesh)
