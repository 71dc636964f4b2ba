"""Dagster resources: thin, configurable handles on the storage layer and model registry."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dagster import ConfigurableResource

from orchestration.registry import ModelVersion, RegistryLocation, load_production_versions
from storage.metadata_store import MetadataStore, open_metadata_store
from storage.object_store import ObjectStore, object_store_from_config
from storage.retry import with_retries

_METADATA_CONNECTIONS: dict[tuple[str | None, str], MetadataStore] = {}


class ObjectStoreResource(ConfigurableResource):
    """Local directory store (embedded default), or S3 when `s3_bucket` is set (see
    `Settings.object_store_config`: `AVATARPIPE_S3_BUCKET`, `AWS_ENDPOINT_URL`, ...)."""

    root: str
    s3_bucket: str | None = None
    s3_uploads_bucket: str | None = None
    kms_key_id: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    presign_expiry_s: int = 900

    @classmethod
    def from_config(cls, config: dict) -> ObjectStoreResource:
        """From `Settings.object_store_config()` (or any `object_store_from_config` dict)."""
        if config.get("kind", "local") == "local":
            return cls(root=config["root"])
        fields = {k: v for k, v in config.items() if k not in ("kind", "bucket", "uploads_bucket")}
        # the config's `uploads_bucket` is this resource's `s3_uploads_bucket` (it was dropped before)
        return cls(root="", s3_bucket=config["bucket"], s3_uploads_bucket=config.get("uploads_bucket"), **fields)

    def config(self) -> dict:
        """Plain data for `storage.object_store.object_store_from_config` (e.g. for a Pipes worker)."""
        if not self.s3_bucket:
            return {"kind": "local", "root": str(Path(self.root).expanduser().resolve())}
        return {
            "kind": "s3",
            "bucket": self.s3_bucket,
            "uploads_bucket": self.s3_uploads_bucket,
            "kms_key_id": self.kms_key_id,
            "region": self.region,
            "endpoint_url": self.endpoint_url,
            "presign_expiry_s": self.presign_expiry_s,
        }

    def backend(self) -> ObjectStore:
        """The bare store, without retries (tests wrap it to inject faults under the retries)."""
        return object_store_from_config(self.config(), retries=False)

    def store(self) -> ObjectStore:
        """The store with its retries (`storage.retry`), applied here and in the factory only."""
        return with_retries(self.backend())


class MetadataStoreResource(ConfigurableResource):
    """MongoDB API: a real server when `uri` is set, else embedded montydb (sqlite)."""

    uri: str | None = None
    embedded_dir: str

    @classmethod
    def for_settings(cls, settings: Any) -> MetadataStoreResource:
        """`MONGODB_URI` by reference (`EnvVar`): Dagster's UI shows the variable's name, never
        the URI and its password; the value is read when the resource initialises."""
        return cls(uri=_by_reference("MONGODB_URI", settings.mongodb_uri), embedded_dir=str(settings.metadata_dir))

    def store(self) -> MetadataStore:
        key = (self.uri, self.embedded_dir)
        if key not in _METADATA_CONNECTIONS:  # one connection per process, like a pool
            _METADATA_CONNECTIONS[key] = open_metadata_store(self.uri, Path(self.embedded_dir))
        return _METADATA_CONNECTIONS[key]


class ModelRegistryResource(ConfigurableResource):
    """The MLflow model registry of the model-bearing steps.

    `pinned_json` holds the production versions the code location was built from (its asset
    code versions derive from them), so every step of a run uses exactly the versions - and
    parameters - that its code version names, even if `production` moves mid-run.
    `current_production()` reads the registry afresh (for the model upgrade sensor).
    """

    tracking_uri: str
    registry_uri: str | None = None
    artifact_location: str | None = None
    local_dir: str | None = None
    schema_cache: str | None = None
    pinned_json: str = ""

    @classmethod
    def pinned(
        cls, location: RegistryLocation, production: Mapping[str, ModelVersion]
    ) -> ModelRegistryResource:
        return cls(
            tracking_uri=_by_reference("AVATARPIPE_MLFLOW_URI", location.tracking_uri),
            registry_uri=_by_reference("AVATARPIPE_MLFLOW_REGISTRY_URI", location.registry_uri),
            artifact_location=location.artifact_location,
            local_dir=str(location.local_dir) if location.local_dir else None,
            schema_cache=str(location.schema_cache) if location.schema_cache else None,
            pinned_json=json.dumps({name: mv.to_dict() for name, mv in production.items()}, sort_keys=True),
        )

    def version_url(self, name: str, version: str) -> str:
        """The MLflow UI page of one model version (linked from every artifact's metadata)."""
        from orchestration.registry import mlflow_version_url

        return mlflow_version_url(self.location(), name, version)

    def location(self) -> RegistryLocation:
        return RegistryLocation(
            tracking_uri=self.tracking_uri,
            registry_uri=self.registry_uri,
            artifact_location=self.artifact_location,
            local_dir=Path(self.local_dir) if self.local_dir else None,
            schema_cache=Path(self.schema_cache) if self.schema_cache else None,
        )

    @cached_property
    def _production(self) -> dict[str, ModelVersion]:
        if not self.pinned_json:
            return load_production_versions(self.location())
        return {name: ModelVersion.from_dict(data) for name, data in json.loads(self.pinned_json).items()}

    def production_versions(self) -> dict[str, ModelVersion]:
        """The versions this code location runs (pinned when the definitions were loaded)."""
        return self._production

    def current_production(self) -> dict[str, ModelVersion]:
        """What `production` points at now (snapshot-cached: no MLflow import unless it changed)."""
        return load_production_versions(self.location())


def _by_reference(variable: str, value: str | None) -> Any:
    """``EnvVar(variable)`` when ``value`` is what the configuration read from that variable and
    holds a password (so the Dagster UI and run snapshots never show it), else ``value``."""
    from dagster import EnvVar

    from orchestration.config import load_config

    if not value or urlsplit(value).password is None:
        return value
    configured = {"MONGODB_URI": "mongodb_uri", "AVATARPIPE_MLFLOW_URI": "mlflow_tracking_uri",
                  "AVATARPIPE_MLFLOW_REGISTRY_URI": "mlflow_registry_uri"}[variable]  # fmt: skip
    return EnvVar(variable) if getattr(load_config(), configured) == value else value
