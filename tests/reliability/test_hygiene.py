"""Security hygiene of a real run (the clean reference run, `avatarpipe run` as a subprocess):

* no subject id, no landmark coordinates and no photo bytes in what is logged: the CLI's
  stderr, Dagster's event log and run storage (every file of the instance: sqlite event log,
  run index, captured compute logs);
* no EXIF/GPS or any other metadata chunk in any stored image: every PNG object (photo, mask,
  texture, overlay, preview) and every image embedded in a GLB.

Subject ids do appear in object keys (`subjects/{subject}/...`): that is by design (erasure is
a prefix delete) and those keys live in the metadata store, not in logs.
"""

from __future__ import annotations

import base64
import json

import pygltflib
import pytest

from tests.reliability.conftest import REFERENCE_SUBJECT
from tests.reliability.helpers import PNG_MAGIC, PNG_PIXEL_CHUNKS, ledger, png_chunks


@pytest.fixture(scope="module")
def logs(reference_run) -> dict[str, bytes]:
    """Everything the run logged, by source."""
    sources = {"cli stderr": reference_run.stderr.encode()}
    dagster_home = reference_run.home / "dagster"
    for path in sorted(dagster_home.rglob("*")):
        if path.is_file() and path.name != "dagster.yaml":
            sources[f"dagster/{path.relative_to(dagster_home)}"] = path.read_bytes()
    assert any("compute_logs" in name for name in sources)  # captured stdout/stderr is there
    assert any(name.endswith(".db") for name in sources)  # the event log
    return sources


def _found(needle: bytes, logs: dict[str, bytes]) -> list[str]:
    return [name for name, data in logs.items() if needle in data]


# The Pipes worker (ops/worker.py) logs the keys it wrote: checked on its own, so a regression
# there is named as such.
WORKER_LOG_LINE = b"worker: wrote "


def _subject_mentions(logs: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """(source, the 120 bytes before each mention of the subject id)."""
    needle = REFERENCE_SUBJECT.encode()
    mentions = []
    for name, data in logs.items():
        start = data.find(needle)
        while start >= 0:
            mentions.append((name, data[max(0, start - 120) : start]))
            start = data.find(needle, start + 1)
    return mentions


def test_no_subject_id_in_logs(logs):
    assert [m for m in _subject_mentions(logs) if WORKER_LOG_LINE not in m[1]] == []


def test_no_subject_id_in_pipes_worker_logs(logs):
    assert [m for m in _subject_mentions(logs) if WORKER_LOG_LINE in m[1]] == []


def test_no_landmarks_in_logs(reference_run, logs):
    state = ledger(reference_run.settings, reference_run.upload_id)
    keypoints = json.loads((reference_run.home / "objects" / state.current["keypoints"]["key"]).read_bytes())
    values = [v for row in keypoints["pose"] for v in row[:2]] + [v for row in keypoints["face"][:50] for v in row[:2]]
    # coordinates as JSON writes them, long enough (e.g. "241.387") not to occur by chance
    needles = {json.dumps(v) for v in values if len(json.dumps(v)) >= 7}
    assert len(needles) >= 40
    leaked = {n: _found(n.encode(), logs) for n in needles}
    assert {n: where for n, where in leaked.items() if where} == {}


def test_no_photo_bytes_in_logs(reference_run, standing_photo, logs):
    state = ledger(reference_run.settings, reference_run.upload_id)
    normalised = (reference_run.home / "objects" / state.current["photo"]["key"]).read_bytes()
    for photo in (standing_photo.read_bytes(), normalised):
        encoded = base64.b64encode(photo)
        for start in range(0, len(photo) - 64, len(photo) // 8):
            assert _found(photo[start : start + 64], logs) == []  # raw bytes
        for start in range(0, len(encoded) - 88, len(encoded) // 8):
            assert _found(encoded[start : start + 88], logs) == []  # base64, as metadata would carry it


def _glb_images(path) -> list[bytes]:
    gltf = pygltflib.GLTF2().load_binary(str(path))
    blob = gltf.binary_blob()
    images = []
    for image in gltf.images:
        view = gltf.bufferViews[image.bufferView]
        start = view.byteOffset or 0
        images.append(blob[start : start + view.byteLength])
    return images


def test_stored_images_carry_no_metadata(reference_run):
    state = ledger(reference_run.settings, reference_run.upload_id)
    checked = 0
    for key in state.keys:
        if key.split("/")[3] == "raw":  # stripped at ingest, not re-encoded (tests/privacy checks it)
            continue
        path = reference_run.home / "objects" / key
        data = path.read_bytes()
        images = _glb_images(path) if key.endswith(".glb") else [data] if data.startswith(PNG_MAGIC) else []
        for image in images:
            assert image.startswith(PNG_MAGIC), key  # every stored image is PNG
            assert set(png_chunks(image)) <= PNG_PIXEL_CHUNKS, (key, png_chunks(image))
            checked += 1
    # photo, mask, texture, overlay, GLB preview + the textures inside both GLBs
    assert checked >= 7
