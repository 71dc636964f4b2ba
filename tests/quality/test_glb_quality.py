"""`rigged_glb` metrics (pygltflib + the Khronos glTF validator) and the rigged_glb suite on
hand-broken copies of a real rigged Anny GLB."""

import os

import numpy as np
import pygltflib
import pytest

from models.gltf_export import drop_orphan_byte_offsets
from models.quality import clients_node_modules, glb_metrics, read_accessor, run_gltf_validator

VALIDATOR_INSTALLED = (clients_node_modules() / "gltf-validator" / "package.json").is_file()


def _missing(what: str) -> None:
    """`make test` sets AVATARPIPE_REQUIRE_CLIENTS=1: there a missing tool fails, elsewhere it skips."""
    message = f"{what} (run `make clients`)"
    if os.environ.get("AVATARPIPE_REQUIRE_CLIENTS") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def validator_installed() -> bool:
    """Whether the validator runs here; only a bare `pytest` may run without it."""
    if not VALIDATOR_INSTALLED and os.environ.get("AVATARPIPE_REQUIRE_CLIENTS") == "1":
        pytest.fail("npm gltf-validator is not installed in clients/node_modules (run `make clients`)")
    return VALIDATOR_INSTALLED


@pytest.fixture
def no_validator(tmp_path):
    """An empty node_modules (what AVATARPIPE_NODE_MODULES would point at): as on a machine
    without the npm packages."""
    return tmp_path


def _strip_skin(glb: bytes) -> bytes:
    """The same avatar without a skeleton: no skin, no JOINTS_0 / WEIGHTS_0 (a 0-joint GLB)."""
    gltf = pygltflib.GLTF2.load_from_bytes(glb)
    gltf.skins = []
    for node in gltf.nodes:
        node.skin = None
    for mesh in gltf.meshes:
        for prim in mesh.primitives:
            prim.attributes.JOINTS_0 = None
            prim.attributes.WEIGHTS_0 = None
    drop_orphan_byte_offsets(gltf)
    return b"".join(gltf.save_to_bytes())


def _scale_weights(glb: bytes, factor: float) -> bytes:
    """Rewrite WEIGHTS_0 in the binary chunk so that every vertex's weights sum to `factor`."""
    gltf = pygltflib.GLTF2.load_from_bytes(glb)
    blob = bytearray(gltf.binary_blob())
    index = gltf.meshes[0].primitives[0].attributes.WEIGHTS_0
    weights = read_accessor(gltf, bytes(blob), index).astype(np.float32) * np.float32(factor)
    accessor = gltf.accessors[index]
    start = (gltf.bufferViews[accessor.bufferView].byteOffset or 0) + (accessor.byteOffset or 0)
    blob[start : start + weights.nbytes] = weights.tobytes()
    gltf.set_binary_blob(bytes(blob))
    drop_orphan_byte_offsets(gltf)  # as the exporter does: pygltflib would write byteOffset on sparse targets
    return b"".join(gltf.save_to_bytes())


def test_good_rigged_glb_passes(good_rigged_glb, failures, validator_installed) -> None:
    report = run_gltf_validator(good_rigged_glb)
    m = glb_metrics(good_rigged_glb, report)
    assert m.parse_ok and m.skin_count == 1 and m.joint_count == 67  # Mixamo: 52 + 13 end + 2 eye bones
    assert 1 <= m.max_influences <= 4 and m.influence_set_count == 1
    assert m.max_weight_sum_error < 1e-6 and m.negative_weight_count == m.joint_index_out_of_range_count == 0
    assert m.animation_count >= 2 and m.texture_count == 1 and m.texture_width == 512
    assert 1.4 < m.height_m < 2.0 and abs(m.min_y_m) < 1e-3
    failed = failures("rigged_glb", m.row())
    if validator_installed:
        assert report.status == "ok" and report.error_count == 0
        assert failed == {}
    else:
        assert failed == {"validator_ran": "WARN"}


def test_zero_joint_glb_fails(good_rigged_glb, failures) -> None:
    glb = _strip_skin(good_rigged_glb)
    m = glb_metrics(glb, run_gltf_validator(glb))
    assert m.parse_ok and m.skin_count == 0 and m.joint_count == 0 and m.max_influences == 0
    failed = failures("rigged_glb", m.row())
    assert failed["humanoid_joint_count"] == "ERROR" and failed["has_skin"] == "ERROR"
    assert failed["max_four_influences"] == "ERROR"
    assert "weights_sum_to_one" not in failed  # nothing skinned: nothing to normalise


def test_weights_not_summing_to_one_fail(good_rigged_glb, failures, validator_installed) -> None:
    glb = _scale_weights(good_rigged_glb, 0.8)
    report = run_gltf_validator(glb)
    m = glb_metrics(glb, report)
    assert m.max_weight_sum_error == pytest.approx(0.2, abs=1e-4)
    failed = failures("rigged_glb", m.row())
    assert failed["weights_sum_to_one"] == "ERROR" and failed["weights_normalised_strictly"] == "WARN"
    expected = {"weights_sum_to_one", "weights_normalised_strictly"}
    if validator_installed:  # the Khronos validator agrees: its errors fail the suite too
        assert report.error_count > 0
        assert "ACCESSOR_WEIGHTS_NON_NORMALIZED" in {msg["code"] for msg in report.messages}
        expected.add("validator_no_errors")
    else:
        expected.add("validator_ran")
    assert set(failed) == expected


def test_corrupt_glb_fails_parsing(good_rigged_glb, failures) -> None:
    m = glb_metrics(good_rigged_glb[: len(good_rigged_glb) // 2])
    assert not m.parse_ok and m.parse_error
    assert failures("rigged_glb", m.row())["parses"] == "ERROR"


def test_validator_unavailable_is_a_recorded_warning(no_validator, good_rigged_glb, failures) -> None:
    report = run_gltf_validator(good_rigged_glb, no_validator)
    assert report.status == "unavailable" and "not found" in report.detail
    m = glb_metrics(good_rigged_glb, report)
    assert m.gltf_validator_error_count is None
    # never a silent pass: the WARN expectation fails, nothing blocks
    assert failures("rigged_glb", m.row()) == {"validator_ran": "WARN"}


def test_validator_runs_on_real_glb(good_rigged_glb) -> None:
    if not VALIDATOR_INSTALLED:
        _missing("npm gltf-validator is not installed in clients/node_modules")
    report = run_gltf_validator(good_rigged_glb)
    assert report.status == "ok"
    assert (report.error_count, report.warning_count) == (0, 0), report.messages
    garbage = run_gltf_validator(b"glTF not really")
    assert garbage.status == "ok" and garbage.error_count >= 1


@pytest.fixture(scope="module")
def compressed_glb(good_rigged_glb) -> bytes:
    from models.gltf_export import compress_glb, find_gltfpack

    if find_gltfpack() is None or not (clients_node_modules() / "three" / "package.json").is_file():
        _missing("gltfpack / three are not installed in clients/node_modules")
    return compress_glb(good_rigged_glb)


def test_meshopt_compressed_glb_is_decoded_and_measured(compressed_glb, good_rigged_glb, failures) -> None:
    """The opt-in compressed GLB (meshopt + quantised positions) measures like the plain one."""
    plain = glb_metrics(good_rigged_glb)
    m = glb_metrics(compressed_glb, run_gltf_validator(compressed_glb))
    assert m.parse_ok and m.file_bytes < plain.file_bytes
    assert (m.joint_count, m.max_influences, m.animation_count) == (plain.joint_count, plain.max_influences, plain.animation_count)
    assert m.height_m == pytest.approx(plain.height_m, abs=2e-3)  # dequantised through the bind matrices
    assert m.max_weight_sum_error < 1e-3 and m.joint_index_out_of_range_count == 0
    # the validator warns that gltfpack's skinned mesh node is not a root: recorded, not blocking
    assert set(failures("rigged_glb", m.row())) <= {"validator_no_warnings"}


def test_compressed_glb_without_decoder_is_not_a_pass(compressed_glb, no_validator, failures) -> None:
    m = glb_metrics(compressed_glb, node_modules=no_validator)
    assert not m.parse_ok and "meshopt" in m.parse_error
    assert failures("rigged_glb", m.row())["parses"] == "ERROR"
