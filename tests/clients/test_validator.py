"""Every kind of GLB the pipeline writes passes the Khronos glTF validator with zero errors."""

from __future__ import annotations

from tests.clients import harness


def test_rigged_glb_is_valid_gltf(glbs):
    report = harness.assert_valid(glbs.plain)[str(glbs.plain)]
    assert report["numWarnings"] == 0, report["warnings"]
    assert report["animationCount"] == 7
    assert report["maxInfluences"] == 4
    assert report["extensionsUsed"] == []  # plain glTF 2.0: loads everywhere without decoders


def test_compressed_glb_is_valid_and_smaller(glbs):
    report = harness.assert_valid(glbs.compressed)[str(glbs.compressed)]
    assert "EXT_meshopt_compression" in report["extensionsUsed"]
    assert report["animationCount"] == 7
    assert glbs.compressed.stat().st_size < 0.8 * glbs.plain.stat().st_size


def test_mesh_glb_is_valid_gltf(glbs):
    harness.assert_valid(glbs.mesh)


def test_validator_reports_errors(tmp_path, glbs):
    """The check can fail: a GLB whose JSON chunk is cut short has errors."""
    data = glbs.plain.read_bytes()
    broken = tmp_path / "broken.glb"
    broken.write_bytes(data[:20] + b"{" * 64 + data[84:])
    report = harness.validate(broken)[str(broken)]
    assert report["numErrors"] > 0
