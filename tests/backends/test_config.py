"""The typed configuration: validation, redaction, provenance, and the Dagster instance it picks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestration.config import ConfigError, dagster_pg_url, describe, load_config, redact_url
from orchestration.settings import Settings, prepare_environment

SECRET = "s3cr3t-Pa55"


def test_redact_url_hides_passwords_and_secret_query_values():
    assert redact_url(f"postgresql://avatar:{SECRET}@db:5432/mlflow") == "postgresql://avatar:***@db:5432/mlflow"
    shown = redact_url(f"mongodb://u:{SECRET}@h/?authSource=admin&password={SECRET}")
    assert SECRET not in shown and "authSource=admin" in shown
    assert redact_url("sqlite:////tmp/x/mlflow.db") == "sqlite:////tmp/x/mlflow.db"


def test_invalid_values_name_the_variable_and_never_echo_it():
    with pytest.raises(ConfigError) as info:
        load_config({"AVATARPIPE_MLFLOW_URI": f"bogus://u:{SECRET}@h", "AVATARPIPE_COMPUTE_MODE": "gpu",
                     "MONGODB_URI": f"http://u:{SECRET}@h", "AVATARPIPE_RAW_RETENTION_DAYS": "-1"})  # fmt: skip
    message = str(info.value)
    for name in ("AVATARPIPE_MLFLOW_URI", "AVATARPIPE_COMPUTE_MODE", "MONGODB_URI", "AVATARPIPE_RAW_RETENTION_DAYS"):
        assert name in message
    assert SECRET not in message


def test_database_backend_without_artifact_root_is_refused():
    """MLflow would silently write artifacts to ./mlruns of whatever directory a task runs in."""
    with pytest.raises(ConfigError, match="AVATARPIPE_MLFLOW_ARTIFACT_ROOT"):
        load_config({"AVATARPIPE_MLFLOW_URI": "postgresql://u@h/mlflow"})
    config = load_config({"AVATARPIPE_MLFLOW_URI": "postgresql://u@h/mlflow", "AVATARPIPE_MLFLOW_ARTIFACT_ROOT": "s3://b/m"})
    assert config.mlflow_artifact_root == "s3://b/m"


def test_describe_gives_sources_and_redacts(tmp_path):
    environ = {"AVATARPIPE_HOME": str(tmp_path), "DAGSTER_PG_URL": f"postgresql://d:{SECRET}@h/dagster",
               "AVATARPIPE_ERASURE_SALT": SECRET, "AVATARPIPE_RAW_RETENTION_DAYS": "7"}  # fmt: skip
    entries = {e.variable: e for e in describe(load_config(environ), environ)}
    assert entries["AVATARPIPE_HOME"].source == "env:AVATARPIPE_HOME"
    assert entries["AVATARPIPE_COMPUTE_MODE"].source == "default"
    assert entries["DAGSTER_PG_URL"].value == "postgresql://d:***@h/dagster"
    assert entries["AVATARPIPE_ERASURE_SALT"].value == "***"
    assert entries["(dagster storage)"].value == "postgres"
    assert entries["(raw retention policy)"].value == "raw uploads are kept 7 days after their avatar is ready (AVATARPIPE_RAW_RETENTION_DAYS)"
    assert SECRET not in json.dumps([e.value for e in entries.values()], default=str)


def test_psycopg_driver_normalisation():
    assert dagster_pg_url("postgresql://a:b@h/d") == "postgresql+psycopg2://a:b@h/d"
    assert dagster_pg_url("postgres://a@h/d") == "postgresql+psycopg2://a@h/d"
    assert dagster_pg_url("postgresql+psycopg://a@h/d") == "postgresql+psycopg2://a@h/d"
    assert dagster_pg_url("postgresql+psycopg2://a@h/d") == "postgresql+psycopg2://a@h/d"


def test_plain_postgresql_url_has_a_driver():
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3: it must be installed (pinned)."""
    import sqlalchemy

    assert sqlalchemy.create_engine("postgresql://u@127.0.0.1:1/x").dialect.driver == "psycopg"


def test_operator_dagster_home_is_used_as_is(tmp_path, monkeypatch):
    operator = tmp_path / "instance"
    operator.mkdir()
    yaml = "storage:\n  postgres:\n    postgres_url:\n      env: DAGSTER_PG_URL\n"
    (operator / "dagster.yaml").write_text(yaml)
    monkeypatch.setenv("AVATARPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(operator))
    monkeypatch.delenv("AVATARPIPE_DERIVED_DAGSTER_HOME", raising=False)
    settings = Settings.from_env()
    prepare_environment(settings)
    assert settings.dagster_home == operator.resolve()
    assert (operator / "dagster.yaml").read_text() == yaml  # never overwritten
    assert os.environ["DAGSTER_HOME"] == str(operator.resolve())
    assert settings.app.dagster_storage() == "postgres"


def test_derived_dagster_home_does_not_stick_to_the_next_home(tmp_path, monkeypatch):
    """A DAGSTER_HOME avatarpipe exported itself (inherited by a subprocess) is not an operator's."""
    monkeypatch.setenv("AVATARPIPE_HOME", str(tmp_path / "a"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    prepare_environment(Settings.from_env())
    monkeypatch.setenv("AVATARPIPE_HOME", str(tmp_path / "b"))
    settings = Settings.from_env()
    assert settings.dagster_home == (tmp_path / "b" / "dagster").resolve()


def test_pg_url_installs_the_postgres_instance_config(tmp_path, monkeypatch):
    monkeypatch.setenv("AVATARPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql://u:p@127.0.0.1:1/d")
    prepare_environment(Settings.from_env())
    assert "postgres_url" in (tmp_path / "home" / "dagster" / "dagster.yaml").read_text()
    assert os.environ["DAGSTER_PG_URL"].startswith("postgresql+psycopg2://")


def test_config_show_cli(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVATARPIPE_", "DAGSTER_", "MONGODB"))}
    env.update(AVATARPIPE_HOME=str(tmp_path), AVATARPIPE_MLFLOW_URI=f"postgresql://m:{SECRET}@h/mlflow",
               AVATARPIPE_MLFLOW_ARTIFACT_ROOT="s3://bucket/mlflow")  # fmt: skip
    cmd = [sys.executable, "-m", "orchestration.cli", "config", "show"]
    out = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, check=True).stdout
    rows = {r["variable"]: r for r in json.loads(out)["settings"]}
    assert rows["AVATARPIPE_MLFLOW_URI"] == {"variable": "AVATARPIPE_MLFLOW_URI", "value": "postgresql://m:***@h/mlflow",
                                             "source": "env:AVATARPIPE_MLFLOW_URI", "help": rows["AVATARPIPE_MLFLOW_URI"]["help"]}  # fmt: skip
    human = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    assert SECRET not in out + human and "(raw retention policy)" in human
    bad = subprocess.run(cmd, check=False, env={**env, "AVATARPIPE_COMPUTE_MODE": "gpu"}, capture_output=True, text=True)
    assert bad.returncode == 2 and "AVATARPIPE_COMPUTE_MODE" in bad.stderr


def test_configuration_reference_lists_every_variable():
    from orchestration.config import AppConfig, _field_envs

    section = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    missing = [n for field in AppConfig.model_fields for n in _field_envs(field) if f"`{n}`" not in section]
    assert missing == []


def test_dagster_resources_hold_password_urls_by_reference(tmp_path, monkeypatch):
    """Dagster's UI and run snapshots show resource config: URLs with a password go in as EnvVar."""
    from dagster import EnvVar

    from orchestration.registry import RegistryLocation
    from orchestration.resources import MetadataStoreResource, ModelRegistryResource

    monkeypatch.setenv("AVATARPIPE_HOME", str(tmp_path))
    monkeypatch.setenv("AVATARPIPE_MLFLOW_URI", f"postgresql://m:{SECRET}@h/mlflow")
    monkeypatch.setenv("AVATARPIPE_MLFLOW_ARTIFACT_ROOT", "s3://b/mlflow")
    monkeypatch.setenv("MONGODB_URI", f"mongodb://u:{SECRET}@h/db")
    settings = Settings.from_env()
    registry = ModelRegistryResource.pinned(RegistryLocation.for_settings(settings), {})
    metadata = MetadataStoreResource.for_settings(settings)
    assert isinstance(registry.tracking_uri, EnvVar) and isinstance(metadata.uri, EnvVar)
    assert SECRET not in repr(registry) + repr(metadata)
    assert registry.process_config_and_initialize().tracking_uri == f"postgresql://m:{SECRET}@h/mlflow"
    monkeypatch.delenv("AVATARPIPE_MLFLOW_URI")
    monkeypatch.delenv("MONGODB_URI")
    plain = ModelRegistryResource.pinned(RegistryLocation.for_settings(Settings.from_env()), {})
    assert not isinstance(plain.tracking_uri, EnvVar) and plain.tracking_uri.startswith("sqlite:///")
