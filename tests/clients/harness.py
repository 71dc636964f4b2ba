"""Run the client-side tools in clients/ (Khronos glTF validator, three.js in headless Chromium).

`make test` installs them (`make clients`: Debian's chromium, `npm ci` in clients/) and sets
AVATARPIPE_REQUIRE_CLIENTS=1, so there a missing tool fails the tests; a bare `pytest` on a
machine without them skips the client tests with the reason instead.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

CLIENTS = Path(__file__).resolve().parents[2] / "clients"
NODE_MODULES = CLIENTS / "node_modules"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def _missing(what: str) -> None:
    message = f"{what} (run `make clients`)"
    if os.environ.get("AVATARPIPE_REQUIRE_CLIENTS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def node() -> str:
    path = shutil.which("node")
    if path is None:
        _missing("node is not installed")
    for package in ("gltf-validator", "three", "playwright-core", "gltfpack"):
        if not (NODE_MODULES / package / "package.json").is_file():
            _missing(f"npm package {package} is not installed in clients/node_modules")
    return path


def chromium() -> str:
    found = os.environ.get("CHROMIUM_PATH") or next(
        (p for p in CHROMIUM_CANDIDATES if Path(p).exists()), None
    )
    if found is None:
        _missing("Debian's chromium is not installed")
    return found


def validate(*paths: Path) -> dict[str, dict]:
    """Khronos glTF validator report summary per file (clients/validate.mjs)."""
    result = subprocess.run(
        [node(), str(CLIENTS / "validate.mjs"), *map(str, paths)],
        capture_output=True, text=True, timeout=300, check=False, cwd=CLIENTS,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def assert_valid(*paths: Path) -> dict[str, dict]:
    """Zero validator errors for every file; returns the reports."""
    reports = validate(*paths)
    for path in paths:
        report = reports[str(path)]
        assert report["numErrors"] == 0, f"{path}: {report['errors']}"
    return reports


def render(
    glb: Path,
    frames: list[tuple[str, float]],
    screenshot_dir: Path | None = None,
    clips: Path | None = None,
    probe: bool = False,
) -> dict:
    """Load the GLB with three.js's GLTFLoader in headless Chromium and render each
    (clip, time) frame ("bind" for the bind pose); masks come back as (H,W) bool arrays.
    `clips`: a JSON file of extra clips bound by name (see clients/three_render.mjs); `probe`:
    each frame also carries skinned-mesh measurements (bone positions, box, edge stretch)."""
    env = dict(os.environ, CHROMIUM_PATH=chromium())
    args = [node(), str(CLIENTS / "three_render.mjs"), str(glb), *[f"{c}:{t}" for c, t in frames]]
    if screenshot_dir is not None:
        args += ["--screenshot-dir", str(screenshot_dir)]
    if clips is not None:
        args += ["--clips", str(clips)]
    if probe:
        args.append("--probe")
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=300, check=False, env=env, cwd=CLIENTS
    )
    assert result.stdout.strip(), f"no output from the three.js harness: {result.stderr[-2000:]}"
    out = json.loads(result.stdout)
    assert result.returncode == 0 and "error" not in out, f"{out.get('error')}\n{out.get('console')}"
    for frame in out["frames"]:
        raw = np.frombuffer(base64.b64decode(frame.pop("mask")), np.uint8)
        frame["mask"] = raw.reshape(frame["height"], frame["width"]).astype(bool)
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
