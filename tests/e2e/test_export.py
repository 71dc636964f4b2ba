"""`avatarpipe export` as a user runs it, on an avatar the pipeline made from a real photo:
every export passes the Khronos validator, VRM loads in @pixiv/three-vrm, bad requests exit 2
with a typed error."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pygltflib
import pytest

from tests.clients import harness
from tests.e2e.test_cli import _run

ARKIT_VRM_PRESETS = {"aa", "ih", "ou", "ee", "oh", "blink", "blinkLeft", "blinkRight", "happy", "angry", "sad",
                     "relaxed", "surprised"}  # fmt: skip


@pytest.fixture(scope="module")
def ready(tmp_path_factory, standing_photo) -> tuple[Path, dict]:
    harness.node()  # the client tools are needed for the checks below
    home = tmp_path_factory.mktemp("export_home")
    proc = _run(["run", str(standing_photo), "--json"], home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return home, json.loads(proc.stdout)


def _export(home: Path, *args: str) -> tuple[int, dict]:
    proc = _run(["export", *args, "--json"], home)
    return proc.returncode, json.loads(proc.stdout)


def test_default_export_is_the_rigged_glb(ready, tmp_path):
    home, summary = ready
    code, answer = _export(home, summary["upload_id"], "--out", str(tmp_path / "a.glb"))
    assert code == 0, answer
    glb = summary["artifacts"]["rigged_glb"]
    assert Path(answer["file"]).read_bytes() == Path(glb["path"]).read_bytes()
    assert answer["bytes"] == glb["bytes"] and answer["sha256"] == glb["sha256"]
    assert answer["triangles"] == 27420 and answer["format"] == "glb" and answer["lod"] == 0
    assert len(answer["texture_size"]) == 2


def test_lods_keep_skin_morphs_and_clips_and_validate(ready, tmp_path):
    home, summary = ready
    answers = {}
    for lod in (1, 2):
        code, answers[lod] = _export(home, summary["upload_id"], "--lod", str(lod), "--texture-size", "256",
                                     "--out", str(tmp_path / f"lod{lod}.glb"))  # fmt: skip
        assert code == 0, answers[lod]
    code, packed = _export(
        home, summary["upload_id"], "--lod", "1", "--compress", "meshopt", "--out", str(tmp_path / "m.glb")
    )
    assert code == 0, packed
    assert 0.4 * 27420 < answers[1]["triangles"] < 0.6 * 27420
    assert 0.15 * 27420 < answers[2]["triangles"] < 0.35 * 27420
    assert (
        answers[1]["texture_size"] == [256, 256]
        and answers[2]["bytes"] < answers[1]["bytes"] < summary["artifacts"]["rigged_glb"]["bytes"]
    )
    assert packed["bytes"] < answers[1]["bytes"]
    paths = [Path(a["file"]) for a in (*answers.values(), packed)]
    reports = harness.assert_valid(*paths)
    for path in paths[:2]:
        gltf = pygltflib.GLTF2.load(str(path))
        assert len(gltf.skins[0].joints) == 67 and len(gltf.meshes[0].primitives[0].targets) == 52
        assert gltf.meshes[0].extras["targetNames"][24] == "jawOpen"
        assert reports[str(path)]["animationCount"] == 7 and reports[str(path)]["extensionsUsed"] == []
    # three.js plays the simplified avatar's clips
    result = harness.render(paths[1], [("bind", 0.0), ("walk", 0.3)])
    assert {c["name"] for c in result["load"]["clips"]} >= {"walk", "blink", "talk"}


def test_vrm_loads_in_three_vrm(ready, tmp_path):
    home, summary = ready
    code, answer = _export(home, summary["upload_id"], "--format", "vrm", "--lod", "1", "--texture-size", "512",
                           "--out", str(tmp_path / "avatar.vrm"))  # fmt: skip
    assert code == 0, answer
    assert answer["format"] == "vrm" and answer["texture_size"][0] <= 512
    harness.assert_valid(Path(answer["file"]))
    proc = subprocess.run(
        [harness.node(), str(harness.CLIENTS / "vrm_check.mjs"), answer["file"]],
        capture_output=True, text=True, timeout=300, check=False, cwd=harness.CLIENTS,
        env={"CHROMIUM_PATH": harness.chromium(), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    out = json.loads(proc.stdout)
    assert proc.returncode == 0 and "error" not in out, out
    vrm = out["vrm"]
    assert vrm["specVersion"] == "1"
    assert (
        vrm["meta"]["licenseUrl"] == "https://vrm.dev/licenses/1.0/"
        and vrm["meta"]["avatarPermission"] == "onlyAuthor"
    )
    bones = vrm["humanBones"]
    assert (
        bones["hips"] == "mixamorigHips" and bones["leftUpperArm"] == "mixamorigLeftArm" and len(bones) == 54
    )
    assert bones["leftEye"] == "mixamorigLeftEye" and bones["rightEye"] == "mixamorigRightEye"
    assert ARKIT_VRM_PRESETS <= set(vrm["expressions"]) and vrm["lookAtType"] == "bone"
    # lookAt turns the eye bones: yaw 90 deg (the avatar's left) turns both eyes to +X by the
    # eyeLook* targets' own angle (9-14 deg); pitch turns them vertically
    for key, axis in (("yawed", 0), ("pitched", 1)):
        for side in ("left", "right"):
            rest, turned = (np.array(vrm["gaze"][key][k][side]) for k in ("rest", "turned"))
            assert rest @ [0.0, 0.0, 1.0] > 0.999, (key, side, rest)
            assert 5.0 < np.degrees(np.arcsin(abs(turned[axis]))) < 20.0, (key, side, turned)
            assert abs(turned[1 - axis]) < 0.02, (key, side, turned)
        assert vrm["gaze"]["yawed"]["turned"][side][0] > 0.0
    # the rest is a T-pose, so a T-pose-authored VRM animation plays as intended: identity
    # normalised rotations hold the arms horizontal, 75 deg down about Z lowers them by 75 deg
    # (with the GLB's A-pose rest they were 48 deg low)
    for key, degrees_down in (("rest", 0.0), ("lowered", 75.0)):
        for side, sign in (("left", 1.0), ("right", -1.0)):
            direction = np.array(vrm["pose"][key][side])
            expected = [sign * np.cos(np.radians(degrees_down)), -np.sin(np.radians(degrees_down)), 0.0]
            assert np.degrees(np.arccos(np.clip(direction @ expected, -1, 1))) < 5.0, (key, side, direction)
    effects = vrm["expressionEffects"]
    assert effects["blinkLeft"] == {"eyeBlinkLeft": 1}
    assert effects["aa"]["jawOpen"] > 0.5 and "mouthSmileLeft" in effects["happy"]


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["u_does_not_exist"], "UNKNOWN_UPLOAD"),
        (["{upload}", "--lod", "3"], "UNSUPPORTED_EXPORT_OPTION"),
        (["{upload}", "--format", "fbx"], "UNSUPPORTED_EXPORT_OPTION"),
        (["{upload}", "--texture-size", "300"], "UNSUPPORTED_EXPORT_OPTION"),
        (["{upload}", "--compress", "draco"], "UNSUPPORTED_EXPORT_OPTION"),
        (["{upload}", "--format", "vrm", "--compress", "meshopt"], "UNSUPPORTED_EXPORT_OPTION"),
    ],
)
def test_bad_requests_exit_2_with_a_typed_error(ready, args, code):
    home, summary = ready
    status, answer = _export(home, *[a.format(upload=summary["upload_id"]) for a in args])
    assert status == 2 and answer["error"]["code"] == code, answer


def test_an_upload_that_is_not_ready_is_refused(ready, tmp_path):
    home, _ = ready
    bogus = tmp_path / "photo.jpg"
    bogus.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    failed = json.loads(_run(["run", str(bogus), "--json"], home).stdout)
    status, answer = _export(home, failed["upload_id"])
    assert status == 2 and answer["error"]["code"] == "UPLOAD_NOT_READY", answer
