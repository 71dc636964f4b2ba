"""three.js's GLTFLoader in headless Chromium loads the avatar and plays its animations."""

from __future__ import annotations

import pytest

from tests.clients import harness

FRAMES = [("bind", 0.0), ("walk", 0.3), ("walk", 0.85), ("wave", 1.2), ("photo_pose", 1.0)]


@pytest.fixture(scope="module")
def plain(glbs):
    return harness.render(glbs.plain, FRAMES)


@pytest.fixture(scope="module")
def compressed(glbs):
    return harness.render(glbs.compressed, FRAMES)


def _frame(result: dict, clip: str, time: float):
    return next(f for f in result["frames"] if f["clip"] == clip and f["time"] == time)["mask"]


def test_loads_skinned_avatar_with_clips(plain):
    load = plain["load"]
    assert load["skinnedMeshes"] == 1 and load["vertices"] > 13_000
    assert len(load["bones"]) == 67  # Mixamo's skeleton, end and eye bones included
    assert "mixamorigHips" in load["bones"]  # three.js strips ':' from node names
    clips = {c["name"]: c["duration"] for c in load["clips"]}
    assert set(clips) == {"photo_pose", "photo_transition", "idle", "wave", "walk", "blink", "talk"}
    assert clips["walk"] > 0.5 and clips["wave"] > 1.0
    assert not [m for m in plain["console"] if m.startswith(("error", "pageerror"))], plain["console"]


def test_two_animation_times_render_different_silhouettes(plain):
    a, b = _frame(plain, "walk", 0.3), _frame(plain, "walk", 0.85)
    height, width = a.shape
    for mask in (a, b):
        assert 0.03 * height * width < mask.sum() < 0.6 * height * width  # a body, not empty or full
    assert harness.iou(a, b) < 0.97  # the legs swapped: the silhouettes differ
    bind, wave = _frame(plain, "bind", 0.0), _frame(plain, "wave", 1.2)
    assert harness.iou(bind, wave) < 0.95
    # the raised hand reaches above the head of the bind pose
    assert wave.any(axis=1).argmax() < bind.any(axis=1).argmax()
    assert harness.iou(bind, _frame(plain, "photo_pose", 1.0)) < 0.95


def test_compressed_glb_renders_like_the_plain_one(plain, compressed):
    # gltfpack drops constant tracks, so compare clip names and lengths only
    def names_and_durations(result):
        return [(c["name"], round(c["duration"], 3)) for c in result["load"]["clips"]]

    assert names_and_durations(compressed) == names_and_durations(plain)
    for clip, time in FRAMES:
        assert harness.iou(_frame(plain, clip, time), _frame(compressed, clip, time)) > 0.97, (clip, time)
