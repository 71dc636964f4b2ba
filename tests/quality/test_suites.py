"""The suite files themselves: well formed, every expectation names a real metric, and a
malformed suite is refused when the Definitions are built."""

import dataclasses
import json
import shutil

import pytest

from assets.checks import CHECKED_ASSETS, EXPECTATIONS_DIR, SuiteError, build_quality_checks, load_suite
from models.quality import GlbMetrics, MeshMetrics, ParamsMetrics

ROWS = {"smplx_params": ParamsMetrics, "mesh": MeshMetrics, "rigged_glb": GlbMetrics}


@pytest.mark.parametrize("asset_key", CHECKED_ASSETS)
def test_suite_columns_are_metrics(asset_key, suites) -> None:
    suite = suites[asset_key]
    columns = {f.name for f in dataclasses.fields(ROWS[asset_key])}
    for exp in suite.expectations:
        assert exp["kwargs"]["column"] in columns, exp["meta"]["name"]
    counts = suite.severity_counts()
    assert counts["ERROR"] > 0 and counts["WARN"] > 0


def test_suite_converts_to_gx_with_native_severity(suites) -> None:
    gx_suite = suites["mesh"].to_gx()
    by_name = {e.meta["name"]: e for e in gx_suite.expectations}
    assert by_name["no_holes"].severity.value == "critical"
    assert by_name["height_typical"].severity.value == "warning"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["expectations"][0]["meta"].pop("severity"), "severity"),
        (lambda d: d["expectations"][1]["meta"].update(name=d["expectations"][0]["meta"]["name"]), "unique"),
        (lambda d: d["expectations"].clear(), "non-empty"),
    ],
)
def test_malformed_suite_is_refused(tmp_path, edit, message) -> None:
    for path in EXPECTATIONS_DIR.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    target = tmp_path / "mesh_quality.json"
    data = json.loads(target.read_text())
    edit(data)
    target.write_text(json.dumps(data))
    with pytest.raises(SuiteError, match=message):
        build_quality_checks(tmp_path)


def test_suite_sha_tracks_content(tmp_path) -> None:
    original = load_suite("mesh")
    data = json.loads((EXPECTATIONS_DIR / "mesh_quality.json").read_text())
    data["expectations"][0]["kwargs"]["max_value"] = 1
    (tmp_path / "mesh_quality.json").write_text(json.dumps(data))
    assert load_suite("mesh", tmp_path).sha != original.sha
