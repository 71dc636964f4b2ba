"""How the Dagster code location is built: `build_definitions(settings)`.

`orchestration.definitions` (what `dagster dev -m orchestration.definitions` loads) builds it
once at import, for its module-level `defs`. The CLI, the service and the tests import this
module instead and build the definitions once for their own settings: importing
`orchestration.definitions` there would build them a second time (the registry read, the
assets, the checks' suites), for nothing."""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job, in_process_executor

from assets.avatar import build_avatar_assets
from assets.checks import build_quality_checks
from assets.partitions import uploads_partitions
from assets.steps import step_retry_policy
from ops.raw_retention import raw_retention_job, raw_retention_schedule
from ops.retention import retention_job, retention_schedule
from orchestration.compute import launcher_from_settings
from orchestration.jobs_erasure import erase_subject
from orchestration.registry import RegistryLocation, asset_code_versions, load_production_versions
from orchestration.resources import MetadataStoreResource, ModelRegistryResource, ObjectStoreResource
from orchestration.sensors import build_model_upgrade_sensor
from orchestration.sensors_ingest import build_ingest_sensors, upload_queue_from_settings
from orchestration.settings import Settings, prepare_environment

AVATAR_JOB = "avatar_job"
REPROCESS_JOB = "reprocess_job"


def build_definitions(settings: Settings | None = None) -> Definitions:
    settings = settings or Settings.from_env()
    prepare_environment(settings)
    registry = RegistryLocation.for_settings(settings)
    production = load_production_versions(registry)  # MLflow `production` aliases (snapshot-cached)
    avatar_assets = build_avatar_assets(asset_code_versions(production), step_retry_policy(settings.app))
    avatar_job = define_asset_job(
        AVATAR_JOB,
        executor_def=in_process_executor,  # the steps run one after another, the heavy ones in their workers
        # an asset selection includes the assets' checks: the quality gates run in the job
        selection=AssetSelection.assets(*avatar_assets),
        partitions_def=uploads_partitions,
        description="Photo to rigged GLB for one upload partition.",
    )
    reprocess_job = define_asset_job(
        REPROCESS_JOB,
        executor_def=in_process_executor,
        selection=AssetSelection.assets(*avatar_assets),
        partitions_def=uploads_partitions,
        description="Rebuild one upload from its first asset a model upgrade made stale (runs select a subset).",
    )
    return Definitions(
        assets=avatar_assets,
        asset_checks=build_quality_checks(),
        jobs=[avatar_job, reprocess_job, retention_job, raw_retention_job, erase_subject],
        schedules=[retention_schedule, raw_retention_schedule(settings.raw_retention_days)],
        sensors=[*build_ingest_sensors(AVATAR_JOB), build_model_upgrade_sensor(reprocess_job)],
        resources={
            "object_store": ObjectStoreResource.from_config(settings.object_store_config()),
            "metadata": MetadataStoreResource.for_settings(settings),
            "model_registry": ModelRegistryResource.pinned(registry, production),
            "compute": launcher_from_settings(settings),
            "upload_queue": upload_queue_from_settings(settings),
        },
    )

