"""Dagster resources: thin, configurable handles on the storage layer and model registry."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from dagster import ConfigurableResource

from orchestration.registry import ModelVersion, builtin_production_versions
from storage.metadata_store import MetadataStore, open_metadata_store
from storage.object_store import LocalObjectStore, ObjectStore

_METADATA_CONNECTIONS: dict[tuple[str | None, str], MetadataStore] = {}


class ObjectStoreResource(ConfigurableResource):
    """Local directory store (embedded default); S3 comes in through configuration."""

    root: str

    def store(self) -> ObjectStore:
        return LocalObjectStore(Path(self.root))


class MetadataStoreResource(ConfigurableResource):
    """MongoDB API: a real server when `uri` is set, else embedded montydb (sqlite)."""

    uri: str | None = None
    embedded_dir: str

    def store(self) -> MetadataStore:
        key = (self.uri, self.embedded_dir)
        if key not in _METADATA_CONNECTIONS:  # one connection per process, like a pool
            _METADATA_CONNECTIONS[key] = open_metadata_store(self.uri, Path(self.embedded_dir))
        return _METADATA_CONNECTIONS[key]


class ModelRegistryResource(ConfigurableResource):
    """Production versions of the model-bearing steps."""

    @cached_property
    def _production(self) -> dict[str, ModelVersion]:
        return builtin_production_versions()

    def production_versions(self) -> dict[str, ModelVersion]:
        return self._production
