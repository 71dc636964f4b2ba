"""The MLflow model registry (real sqlite backend; the tests marked `BACKENDS` also on a
PostgreSQL backend store with S3 artifacts): seeding, versions, aliases, the snapshot cache."""

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from models.catalogue import default_model_specs
from orchestration.cli import main
from orchestration.registry import (
    ModelRegistry,
    RegistryError,
    RegistryLocation,
    asset_code_versions,
    load_production_versions,
    open_registry,
)
from orchestration.settings import Settings, prepare_environment
from tests.backends.fixtures import BACKENDS, use_backend

both_backends = pytest.mark.parametrize("location", BACKENDS, indirect=True)


@pytest.fixture
def location(avatar_home, monkeypatch, request) -> RegistryLocation:
    backend = use_backend(getattr(request, "param", "sqlite"), request, monkeypatch)
    monkeypatch.setenv("AVATARPIPE_DAGSTER_URL", "off")
    settings = Settings.from_env()
    prepare_environment(settings)
    yield RegistryLocation.for_settings(settings)
    backend.drop()


def _client(location: RegistryLocation) -> MlflowClient:
    return MlflowClient(tracking_uri=location.tracking_uri, registry_uri=location.effective_registry_uri)


@both_backends
def test_fresh_home_registers_version_1_of_every_model(location, tmp_path):
    production = load_production_versions(location)
    specs = default_model_specs()
    assert list(production) == list(specs)
    client = _client(location)
    for name, spec in specs.items():
        assert production[name].version == "1"
        assert production[name].implementation == spec.implementation
        assert production[name].params == spec.params
        # What MLflow itself holds: the alias, the version's tags, the run's params and artifact.
        mv = client.get_model_version_by_alias(name, "production")
        assert str(mv.version) == "1" and mv.source == f"runs:/{mv.run_id}/model"
        assert mv.tags["avatarpipe.implementation"] == spec.implementation
        assert json.loads(mv.tags["avatarpipe.params"]) == spec.params
        run = client.get_run(mv.run_id)
        assert set(run.data.params) == set(spec.params)
        config_path = client.download_artifacts(mv.run_id, "model/config.json", str(tmp_path))
        config = json.loads(Path(config_path).read_text())
        assert config["implementation"] == spec.implementation and config["params"] == spec.params
    if location.local_dir is None:  # Postgres backend store: the artifacts are on S3, none in ./mlruns
        assert location.artifact_location.startswith("s3://") and not Path("mlruns").exists()
        assert len([p for p in _s3_keys(location.artifact_location) if p.endswith("model/config.json")]) == len(specs)
    else:  # Everything lives under the home: the database and the artifact store.
        assert location.db_path.is_file()
        assert len(list((location.local_dir / "artifacts").rglob("config.json"))) == len(specs)
    # A second initialisation (another process) adds nothing.
    assert ModelRegistry(location).ensure_initialised() == []
    assert len(client.search_model_versions("name='body_fitter'")) == 1


def _s3_keys(root: str) -> list[str]:
    import os

    import boto3

    bucket, _, prefix = root[len("s3://"):].partition("/")
    s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
    return [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]  # fmt: skip


@both_backends
def test_register_promote_and_roll_back_change_only_the_affected_code_versions(location):
    registry = open_registry(location)
    v1 = load_production_versions(location)
    before = asset_code_versions(v1)
    new = registry.register_version(
        "body_fitter", {"lr": 0.5, "seed": 7}, metrics={"val_reprojection": 0.0031}, description="test"
    )
    assert new.version == "2" and new.based_on == "1" and new.metrics == {"val_reprojection": 0.0031}
    assert new.params == v1["body_fitter"].params | {"lr": 0.5, "seed": 7}
    assert load_production_versions(location)["body_fitter"].version == "1"  # registered, not promoted

    promotion = registry.promote("body_fitter", "2")
    assert (promotion.previous, promotion.production) == ("1", "2")
    after = load_production_versions(location)
    assert after["body_fitter"].params["lr"] == 0.5
    changed = {asset for asset in before if asset_code_versions(after)[asset] != before[asset]}
    assert changed == {"smplx_params"}

    # --from-version starts from that version's parameters, not production's.
    v3 = registry.register_version("body_fitter", {"seed": 3}, from_version="1")
    assert v3.params == v1["body_fitter"].params | {"seed": 3} and v3.based_on == "1"

    registry.promote("body_fitter", "1")  # rollback
    assert asset_code_versions(load_production_versions(location)) == before
    versions = registry.versions("body_fitter")
    assert [v.version for v in versions] == ["1", "2", "3"]
    assert [v.aliases for v in versions] == [("production",), (), ()]


def test_snapshot_follows_changes_made_elsewhere(location):
    assert load_production_versions(location)["reconstructor"].version == "1"
    other = ModelRegistry(location)  # as another process would
    v2 = other.register_version("reconstructor", {"texture_size": 512})
    assert load_production_versions(location)["reconstructor"].version == "1"
    # Moving the alias with plain MLflow (as the MLflow UI would) invalidates the snapshot too.
    _client(location).set_registered_model_alias("reconstructor", "production", v2.version)
    current = load_production_versions(location)["reconstructor"]
    assert current.version == "2" and current.params["texture_size"] == 512


@pytest.mark.parametrize(
    ("name", "changes", "message"),
    [
        ("body_fitter", {"itres": [1, 2, 3, 4]}, "unknown parameter 'itres'"),
        ("body_fitter", {"lr": "fast"}, "parameter 'lr' must be like"),
        ("body_fitter", {"iters": [1, 2]}, "parameter 'iters' must be like"),
        ("body_fitter", {"lr": -1.0}, "must be positive"),
        ("keypoint_detector", {"model_complexity": 2}, "only the full pose model"),
        ("reconstructor", {"texture_size": 1000}, "power of two"),
        ("rigger", {"max_influences": 8}, "unknown parameter 'max_influences'"),
        ("body_model", {"rig": "anny"}, "fixed in this implementation"),
        ("texturer", {}, "unknown model 'texturer'"),
    ],
)
def test_invalid_versions_are_refused_before_anything_is_written(location, name, changes, message):
    registry = open_registry(location)
    registry.ensure_initialised()
    with pytest.raises(RegistryError, match=message):
        registry.register_version(name, changes)
    if name in default_model_specs():
        assert [v.version for v in registry.versions(name, with_metrics=False)] == ["1"]


def test_promoting_a_missing_version_is_refused(location):
    registry = open_registry(location)
    with pytest.raises(RegistryError, match="has no version 9"):
        registry.promote("rigger", "9")
    assert load_production_versions(location)["rigger"].version == "1"


@both_backends
def test_models_cli_register_promote_list(location, capfd):
    """The `models` commands in-process: one JSON object on stdout, exit codes, audit events."""
    assert main(["models", "register", "reconstructor", "--set", "texture_size=512", "--metric",
                 "coverage=0.91", "--description", "smaller atlas", "--json"]) == 0  # fmt: skip
    registered = json.loads(capfd.readouterr().out)
    assert registered["registered"]["version"] == "2" and registered["promotion"] is None

    assert main(["models", "promote", "reconstructor", "2", "--json"]) == 0
    promoted = json.loads(capfd.readouterr().out)
    assert promoted["previous"] == "1" and promoted["production"] == "2"
    assert promoted["assets"] == ["mesh"] and promoted["outdated_uploads"] == 0
    assert promoted["production_versions"]["reconstructor"] == "2"

    assert main(["models", "list", "--json"]) == 0
    listed = json.loads(capfd.readouterr().out)
    assert set(listed["models"]) == set(default_model_specs())
    from urllib.parse import urlsplit

    password = urlsplit(location.tracking_uri).password
    assert not password or password not in json.dumps(listed)  # the URI is shown redacted
    recon = listed["models"]["reconstructor"]
    assert recon["production"] == "2" and recon["assets"] == ["mesh"]
    assert [(v["version"], v["params"]["texture_size"], v["aliases"]) for v in recon["versions"]] == [
        ("1", 1024, []),
        ("2", 512, ["production"]),
    ]
    assert recon["versions"][1]["metrics"] == {"coverage": 0.91}

    assert main(["models", "register", "reconstructor", "--set", "texture_size=999"]) == 2
    err = capfd.readouterr()
    assert err.out == "" and "power of two" in err.err
    assert main(["models", "promote", "nope", "1"]) == 2

    from storage.metadata_store import open_metadata_store

    settings = Settings.from_env()
    with open_metadata_store(None, settings.metadata_dir) as metadata:
        assert [e["details"]["version"] for e in metadata.audit_events("model_register")] == ["2"]
        promotions = metadata.audit_events("model_promote")
    assert [(e["details"]["previous"], e["details"]["production"]) for e in promotions] == [("1", "2")]


def test_code_upgrade_to_a_new_implementation_registers_and_promotes_it(location, monkeypatch):
    """A production version naming an implementation this code no longer has cannot run: the
    catalogue's defaults become a new production version (and the snapshot is not trusted)."""
    import orchestration.registry as registry_module

    assert load_production_versions(location)["rigger"].version == "1"
    upgraded = dict(default_model_specs())
    old = upgraded["rigger"]
    upgraded["rigger"] = type(old)(old.name, "anny-mixamo-gltf-v9", dict(old.params))
    monkeypatch.setattr(registry_module, "default_model_specs", lambda: upgraded)
    created = ModelRegistry(location).ensure_initialised()  # a process running the new code
    assert [(v.name, v.version, v.implementation) for v in created] == [("rigger", "2", "anny-mixamo-gltf-v9")]
    assert "code upgrade" in created[0].description
    production = load_production_versions(location)
    assert production["rigger"].version == "2" and production["body_fitter"].version == "1"
    assert ModelRegistry(location).ensure_initialised() == []  # once only


def test_reading_production_in_a_new_process_uses_the_snapshot_not_mlflow(location):
    """The `avatarpipe run` path and Dagster run workers read production without importing MLflow
    (seconds of import and schema check) as long as the registry has not changed."""
    import subprocess
    import sys

    expected = {name: mv.version for name, mv in load_production_versions(location).items()}
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from orchestration.registry import RegistryLocation, load_production_versions\n"
        f"loc = RegistryLocation.for_home(Path({str(location.local_dir.parent)!r}))\n"
        "versions = {n: mv.version for n, mv in load_production_versions(loc).items()}\n"
        "print(json.dumps({'versions': versions, 'mlflow': 'mlflow' in sys.modules}))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    answer = json.loads(run.stdout)
    assert answer == {"versions": expected, "mlflow": False}
    open_registry(location).promote("rigger", "1")  # a promotion (a no-op here) drops the snapshot
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(run.stdout) == {"versions": expected, "mlflow": True}
