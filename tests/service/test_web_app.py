"""The web app in a real headless browser (playwright-core + Debian's chromium) against a real
`avatarpipe serve`: upload a real photo, watch it build, see the avatar, pose it, download a
GLB the Khronos validator accepts, share it to a phone, and get a bad file's error in words."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from service.app import WEB_DIST
from tests.clients import harness

pytestmark = pytest.mark.slow
DOCS_SCREENSHOT = WEB_DIST.parents[1] / "docs" / "images" / "web-app.png"


def test_a_person_builds_poses_downloads_and_shares_their_avatar(service, standing_photo, tmp_path):
    if not (WEB_DIST / "app.js").is_file():
        harness._missing("the web app is not built (make web)")
    harness.chromium()
    bad = tmp_path / "holiday.jpg"
    bad.write_bytes(b"this is a text file, not a photo")
    out = tmp_path / "shots"
    out.mkdir()
    done = subprocess.run(
        [harness.node(), str(harness.CLIENTS / "web_e2e.mjs"), service.url + "/", service.keys["uploader"],
         str(standing_photo), str(bad), str(out)],
        capture_output=True, text=True, timeout=1500, check=False, cwd=harness.CLIENTS,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert "failure" not in result, result["failure"]
    assert not [m for m in result["console"] if m.startswith("pageerror")], result["console"]

    # the bad file: its error in words, and nothing was built
    assert result["badFile"]["code"] == "NOT_AN_IMAGE" and "not a photo" in result["badFile"]["text"]
    # the photo: a placeholder while it builds, every step done, the avatar on the canvas
    assert result["placeholder"] == "placeholder" and result["ready"], result.get("error")
    assert [state for _, state in result["steps"]] == ["done"] * 5
    canvas = result["canvas"]
    assert canvas["pixels"] > 0.02 * canvas["width"] * canvas["height"]
    assert abs(canvas["cx"] - 0.5) < 0.1 and abs(canvas["cy"] - 0.5) < 0.15  # centred
    assert {"photo_pose", "idle", "wave", "walk"} <= set(result["clips"]) and "smile" in result["expressions"]
    assert result["poses"]["wave_vs_photo_pose"] > 0.05  # clicking a pose changes the silhouette
    # the download is a GLB the Khronos validator accepts
    report = harness.validate(out / "avatar.glb")[str(out / "avatar.glb")]
    assert report["numErrors"] == 0 and report["animationCount"] >= 4
    # the share link opens the avatar on a phone-sized screen, without a key, without overflow
    assert result["shareUrl"].startswith(service.url + "/?share=")
    assert result["phone"]["pixels"] > 0 and not result["phone"]["horizontalOverflow"]
    assert abs(result["phone"]["cx"] - 0.5) < 0.1
    if os.environ.get("AVATARPIPE_UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "desktop.png", DOCS_SCREENSHOT)
