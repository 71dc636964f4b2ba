"""Production model versions and the asset code versions derived from them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from models.catalogue import ASSET_MODELS, PIPELINE_VERSION, default_model_specs


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    implementation: str
    params: dict = field(default_factory=dict)

    def label(self) -> str:
        return f"{self.name}@{self.version}"


def builtin_production_versions() -> dict[str, ModelVersion]:
    """Version 1 of every model, straight from the catalogue in `models/`."""
    return {
        name: ModelVersion(name=name, version="1", implementation=spec.implementation, params=spec.params)
        for name, spec in default_model_specs().items()
    }


def asset_code_versions(production: dict[str, ModelVersion]) -> dict[str, str]:
    """Each asset's Dagster code version: the pipeline version plus the production versions
    of the models it uses. Upstream changes propagate through Dagster's own lineage."""
    versions = {}
    for asset, names in ASSET_MODELS.items():
        labels = [PIPELINE_VERSION] + sorted(production[name].label() for name in names)
        versions[asset] = hashlib.sha256("|".join(labels).encode()).hexdigest()[:12]
    return versions
