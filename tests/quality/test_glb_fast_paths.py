"""The rigged-GLB gate's two faster paths give the verdicts of the paths they replace, on real
avatars: the GLB read (`models.gltf_load.load_glb` against pygltflib's own reading) and the warm
worker's long-lived glTF validator (`ops.gltf_validator_process` against the one-shot
`run_gltf_validator`), including after its node process died and when it cannot start."""

from __future__ import annotations

import os
import signal
import time

import pygltflib
import pytest

from models.gltf_load import load_glb
from models.quality import glb_metrics, run_gltf_validator
from ops import gltf_validator_process
from ops.gltf_validator_process import ValidatorProcess
from tests.quality.test_glb_quality import VALIDATOR_INSTALLED, _missing, _scale_weights, _strip_skin


def _tree(value: object) -> object:
    """A comparable picture of a pygltflib object tree: every class, field, type and value."""
    if isinstance(value, list | tuple):
        return [type(value).__name__, [_tree(v) for v in value]]
    if isinstance(value, dict):
        return ["dict", sorted((k, _tree(v)) for k, v in value.items())]
    if hasattr(value, "__dict__"):
        return [type(value).__name__, sorted((k, _tree(v)) for k, v in vars(value).items())]
    return [type(value).__name__, repr(value)]


@pytest.fixture(scope="module")
def variants(good_rigged_glb: bytes) -> dict[str, bytes]:
    return {
        "avatar": good_rigged_glb,
        "no skin": _strip_skin(good_rigged_glb),
        "weights 0.8": _scale_weights(good_rigged_glb, 0.8),
    }


def test_fast_read_is_pygltflibs_read(variants: dict[str, bytes], good_mesh_glb: bytes) -> None:
    for name, glb in {**variants, "mesh": good_mesh_glb}.items():
        expected = pygltflib.GLTF2.load_from_bytes(glb)
        got = load_glb(glb)
        assert type(got) is pygltflib.GLTF2, name
        assert _tree(got) == _tree(expected), name
        assert got.binary_blob() == expected.binary_blob(), name
        assert isinstance(got.meshes[0].primitives[0].attributes, pygltflib.Attributes)


def test_fast_read_keeps_pygltflibs_errors(good_rigged_glb: bytes) -> None:
    for broken in (good_rigged_glb[: len(good_rigged_glb) // 2], b"glTF not really", b"\x00" * 40):
        try:
            pygltflib.GLTF2.load_from_bytes(broken)
        except Exception as exc:  # noqa: BLE001 - whatever pygltflib raises, the fast read raises too
            with pytest.raises(type(exc)):
                load_glb(broken)
        else:
            assert _tree(load_glb(broken)) == _tree(pygltflib.GLTF2.load_from_bytes(broken))
    half = glb_metrics(good_rigged_glb[: len(good_rigged_glb) // 2])
    assert not half.parse_ok and half.parse_error


@pytest.fixture
def validator() -> ValidatorProcess:
    if not VALIDATOR_INSTALLED:
        _missing("npm gltf-validator is not installed in clients/node_modules")
    process = ValidatorProcess()
    yield process
    process.close()


def test_long_lived_validator_gives_the_one_shot_verdicts(validator: ValidatorProcess, variants) -> None:
    for name, glb in {**variants, "garbage": b"glTF not really"}.items():
        assert validator.validate(glb) == run_gltf_validator(glb), name
    assert validator.started == 1  # one node process served them all
    assert validator.validate(variants["weights 0.8"]).error_count > 0


def test_long_lived_validator_is_restarted_after_it_died(validator: ValidatorProcess, variants) -> None:
    expected = run_gltf_validator(variants["avatar"])
    assert validator.validate(variants["avatar"]) == expected
    first = validator.pid
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while validator.pid is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert validator.validate(variants["avatar"]) == expected
    assert validator.started == 2 and validator.pid not in (None, first)


def test_a_validator_process_that_cannot_start_falls_back_to_the_one_shot_path(
    validator: ValidatorProcess, variants, tmp_path, monkeypatch
) -> None:
    broken = tmp_path / "validate_server.mjs"
    broken.write_text("process.exit(7);\n")  # dies before it is ready
    monkeypatch.setattr(gltf_validator_process, "SERVER_SCRIPT", broken)
    glb = variants["weights 0.8"]
    assert validator.validate(glb) == run_gltf_validator(glb)
    assert validator.pid is None


def test_long_lived_validator_without_the_package_is_unavailable(variants, tmp_path) -> None:
    report = ValidatorProcess(tmp_path).validate(variants["avatar"])  # an empty node_modules
    assert report.status == "unavailable" and "not found" in report.detail
