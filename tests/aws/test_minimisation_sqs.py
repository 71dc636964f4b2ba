"""Data minimisation on the S3 `ObjectCreated` path: a browser PUTs a phone photo full of
metadata through a presigned URL (versioned, KMS-encrypted uploads bucket in moto); the SQS
sensor, evaluated by Dagster's own sensor daemon iteration, re-stores the object without its
metadata *before* requesting the run, removes the version as uploaded, and requests exactly
one run - also when the re-store's own `ObjectCreated` event arrives."""

import urllib.request

from dagster._core.instance_for_test import instance_for_test
from PIL import Image

from models.photo import normalise_photo
from ops.upload_minimisation import MINIMISED_EVENT
from storage.metadata_store import open_metadata_store
from storage.s3_store import create_upload_ticket
from tests.aws.conftest import client
from tests.aws.test_ingest_sensors import QUEUED, aws_ingest, queue_depth, runs_for, sensor_daemon, tick  # noqa: F401
from tests.conftest import SAMPLES
from tests.privacy.tagged_photos import TAGGED, leaks_in, metadata_read_back


def test_sqs_sensor_restores_the_upload_without_metadata_before_its_run(aws_ingest) -> None:  # noqa: F811
    store, sqs, queue = aws_ingest["store"], aws_ingest["sqs"], aws_ingest["queue"]
    skiing = Image.open(SAMPLES / "person_skiing.jpg").convert("RGB")
    tagged = TAGGED["jpeg"].make(skiing, 6)
    ticket = create_upload_ticket(store, "s_privacy", "jpg", content_type="image/jpeg")
    request = urllib.request.Request(
        ticket.request.url, data=tagged, method="PUT", headers=ticket.request.headers
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert leaks_in(store.get_bytes(ticket.key))  # as uploaded: everything is there

    with instance_for_test(overrides=QUEUED) as instance, sensor_daemon(instance) as workspace:
        tick(workspace)
        stored = store.get_bytes(ticket.key)
        assert leaks_in(stored) == [] and metadata_read_back(stored) == {}
        assert normalise_photo(stored).exif_rotated  # the orientation was kept
        assert (normalise_photo(stored).image == normalise_photo(tagged).image).all()
        s3 = client("s3", aws_ingest["env"].get("AWS_ENDPOINT_URL") or store.config.endpoint_url)
        versions = s3.list_object_versions(Bucket=store.config.uploads_bucket, Prefix=ticket.key)
        assert len([v for v in versions.get("Versions", []) if v["Key"] == ticket.key]) == 1  # no old version
        assert len(runs_for(instance, ticket.upload_id)) == 1
        for _ in range(3):  # the re-store's own ObjectCreated event, redeliveries
            tick(workspace)
        assert len(runs_for(instance, ticket.upload_id)) == 1 and len(instance.get_runs()) == 1
        assert queue_depth(sqs, queue) == 0

    with open_metadata_store(None, aws_ingest["home"] / "metadata") as metadata:
        assert metadata.get_upload(ticket.upload_id)["photo_key"] == ticket.key
        events = [e for e in metadata.audit_for("s_privacy") if e["event"] == MINIMISED_EVENT]
        assert len(events) == 1 and "APP1 Exif" in events[0]["details"]["removed"]
