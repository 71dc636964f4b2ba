"""The Dagster code location: `dagster dev -m orchestration.definitions`."""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job

from assets.avatar import build_avatar_assets
from assets.partitions import uploads_partitions
from orchestration.registry import asset_code_versions, builtin_production_versions
from orchestration.resources import MetadataStoreResource, ModelRegistryResource, ObjectStoreResource
from orchestration.settings import Settings, prepare_environment

AVATAR_JOB = "avatar_job"


def build_definitions(settings: Settings | None = None) -> Definitions:
    settings = settings or Settings.from_env()
    prepare_environment(settings)
    avatar_assets = build_avatar_assets(asset_code_versions(builtin_production_versions()))
    avatar_job = define_asset_job(
        AVATAR_JOB,
        selection=AssetSelection.assets(*avatar_assets),
        partitions_def=uploads_partitions,
        description="Photo to rigged GLB for one upload partition.",
    )
    return Definitions(
        assets=avatar_assets,
        jobs=[avatar_job],
        resources={
            "object_store": ObjectStoreResource(root=str(settings.objects_dir)),
            "metadata": MetadataStoreResource(
                uri=settings.mongodb_uri, embedded_dir=str(settings.metadata_dir)
            ),
            "model_registry": ModelRegistryResource(),
        },
    )


defs = build_definitions()
