"""Code location for the ingestion sensor tests, loaded by a real sensor daemon iteration.

The sensors and resources are the production ones, configured from the environment exactly as
`orchestration.definitions` configures them; the job they target is a stand-in with the real
name and partitions (the tests check which runs are *requested*; runs stay queued, never run).
"""

from dagster import Definitions, asset, define_asset_job

from assets.partitions import uploads_partitions
from orchestration.resources import MetadataStoreResource, ObjectStoreResource
from orchestration.sensors_ingest import build_folder_sensor, build_sqs_sensor, upload_queue_from_settings
from orchestration.settings import Settings

AVATAR_JOB = "avatar_job"
SETTLE_SECONDS = 6  # 60 s in production


@asset(partitions_def=uploads_partitions, name="photo")
def photo_standin() -> None:
    """Never executed: the run coordinator only queues runs in these tests."""


settings = Settings.from_env()
defs = Definitions(
    assets=[photo_standin],
    jobs=[define_asset_job(AVATAR_JOB, selection=[photo_standin], partitions_def=uploads_partitions)],
    sensors=[
        build_sqs_sensor(AVATAR_JOB, minimum_interval_seconds=1),
        build_folder_sensor(AVATAR_JOB, minimum_interval_seconds=1, settle_seconds=SETTLE_SECONDS),
    ],
    resources={
        "object_store": ObjectStoreResource.from_config(settings.object_store_config()),
        "metadata": MetadataStoreResource(uri=settings.mongodb_uri, embedded_dir=str(settings.metadata_dir)),
        "upload_queue": upload_queue_from_settings(settings),
    },
)
