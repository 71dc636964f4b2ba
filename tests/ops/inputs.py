"""Real step inputs (photo, MediaPipe keypoints, mask) for worker tests, and quick step params."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from models.catalogue import default_model_specs
from models.keypoints import detect_keypoints
from models.photo import encode_png, normalise_photo
from ops.steps import FIT, KEYPOINTS, MASK, PHOTO, json_bytes
from storage.object_store import ObjectStore, artifact_key, sha256_hex


@dataclass(frozen=True)
class RealInputs:
    photo_png: bytes
    keypoints_json: bytes
    mask_png: bytes


def real_inputs(photo: Path) -> RealInputs:
    """The photo and keypoints steps' outputs for a real photo (MediaPipe runs, ~1-2 s)."""
    normalised = normalise_photo(photo.read_bytes())
    kp = detect_keypoints(normalised.image)
    return RealInputs(normalised.png, json_bytes(kp.to_dict()), encode_png(kp.mask))


def invisible_keypoints(keypoints_json: bytes) -> bytes:
    """The same detection with every body landmark's visibility zeroed: the fit must refuse it."""
    data = json.loads(keypoints_json)
    data["pose"] = [[x, y, z, 0.0] for x, y, z, _ in data["pose"]]
    return json_bytes(data)


def quick_params() -> dict[str, dict]:
    """Production params with fewer fit iterations and a small texture: same code, seconds not tens."""
    specs = default_model_specs()
    params = {name: dict(spec.params) for name, spec in specs.items()}
    params["body_fitter"]["iters"] = [max(1, n // 8) if n else 0 for n in params["body_fitter"]["iters"]]
    params["reconstructor"]["texture_size"] = 256
    return params


def put(store: ObjectStore, subject: str, upload: str, asset: str, data: bytes, ext: str) -> str:
    return store.put_bytes(artifact_key(subject, upload, asset, sha256_hex(data), ext), data).key


def store_fit_inputs(store: ObjectStore, subject: str, upload: str, inputs: RealInputs) -> dict[str, str]:
    return {
        KEYPOINTS: put(store, subject, upload, "keypoints", inputs.keypoints_json, "json"),
        MASK: put(store, subject, upload, "keypoints", inputs.mask_png, "png"),
    }


def store_mesh_inputs(
    store: ObjectStore, subject: str, upload: str, inputs: RealInputs, fit_key: str
) -> dict[str, str]:
    return store_fit_inputs(store, subject, upload, inputs) | {
        PHOTO: put(store, subject, upload, "photo", inputs.photo_png, "png"),
        FIT: fit_key,
    }
