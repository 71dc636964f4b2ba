"""The Dagster code location is light: loading it (every `dagster dev`, every run worker, every
sensor tick's process) imports no science. The heavy libraries are imported when a step runs."""

import json
import os
import subprocess
import sys

from dagster import AssetKey

from assets.checks import CHECKED_ASSETS
from models.catalogue import default_model_specs
from ops.quality_rows import ARTIFACT_METRICS
from ops.steps import ASSET_MODELS, ASSET_ORDER, STEPS, UPLOAD, input_source

HEAVY = ("torch", "trimesh", "embree", "embreex", "mediapipe", "great_expectations")

_PROBE = """
import json, sys, time
start = time.perf_counter()
import orchestration.definitions as d
seconds = time.perf_counter() - start
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy})
print(json.dumps({{"heavy": heavy, "seconds": seconds, "assets": [a.key.to_user_string() for a in d.defs.assets]}}))
"""


def _load_in_a_fresh_process(home) -> dict:
    env = dict(os.environ, AVATARPIPE_HOME=str(home), PYTHONPATH=os.getcwd())
    env.pop("DAGSTER_HOME", None)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=set(HEAVY))],
        env=env, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_loading_the_code_location_imports_no_science(tmp_path):
    # a fresh home (the registry is seeded on this first load) and the same home again
    for _ in range(2):
        loaded = _load_in_a_fresh_process(tmp_path / "home")
        assert loaded["heavy"] == [], f"the code location imported {loaded['heavy']}"
        assert loaded["assets"] == list(ASSET_ORDER)


def test_the_graph_is_declared_once_in_the_steps(avatar_home):
    from orchestration.definitions import build_definitions
    from orchestration.registry import RegistryLocation, asset_code_versions, load_production_versions
    from orchestration.settings import Settings

    settings = Settings.from_env()
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    code_versions = asset_code_versions(load_production_versions(RegistryLocation.for_settings(settings)))
    for name, spec in STEPS.items():
        node = graph.get(AssetKey(name))
        assert {key.to_user_string() for key in node.parent_keys} == set(spec.deps)
        assert node.description == spec.description
        assert node.code_version == code_versions[name]  # from the step's declared models
    order = [key.to_user_string() for key in graph.toposorted_asset_keys]
    assert [name for name in order if name in STEPS] == list(ASSET_ORDER)
    assert CHECKED_ASSETS == tuple(name for name in ASSET_ORDER if STEPS[name].checked)
    checked = {key.asset_key.to_user_string() for key in defs.resolve_asset_graph().asset_check_keys}
    assert checked == set(CHECKED_ASSETS) == set(ARTIFACT_METRICS)  # one metrics row per gate
    registered = set(default_model_specs())
    assert all(set(models) <= registered for models in ASSET_MODELS.values())
    # only the first step reads the upload itself; every other input names an earlier step
    assert [name for name, spec in STEPS.items() if spec.reads_upload] == [ASSET_ORDER[0]]
    for name, spec in STEPS.items():
        upstream = {input_source(i)[0] for i in spec.inputs} - {UPLOAD}
        assert upstream <= set(ASSET_ORDER[: ASSET_ORDER.index(name)])
