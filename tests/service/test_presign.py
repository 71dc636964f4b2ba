"""Browser uploads straight to S3 (a moto server): `POST /v1/uploads:presign` hands out a
presigned PUT whose signed headers enforce SSE-KMS, and registers the upload as pending for the
S3/SQS sensor; without S3 the endpoint answers a typed 409."""

from __future__ import annotations

import httpx
import pytest

from tests.aws.conftest import aws_env, client, kms_key, make_bucket, moto_endpoint  # noqa: F401 - fixtures
from tests.service.conftest import start_service

pytestmark = pytest.mark.slow


def test_presigned_upload_lands_encrypted_and_is_registered(tmp_path, aws_env, kms_key, standing_photo):  # noqa: F811 - fixtures
    uploads, artifacts = make_bucket(aws_env, versioned=True), make_bucket(aws_env)
    home = tmp_path / "home"
    home.mkdir()
    env = {"AWS_ENDPOINT_URL": aws_env, "AVATARPIPE_S3_BUCKET": artifacts, "AVATARPIPE_S3_UPLOADS_BUCKET": uploads,
           "AVATARPIPE_S3_KMS_KEY_ID": kms_key, "AVATARPIPE_SERVICE_DISPATCH": "sensors"}  # fmt: skip
    proc, svc = start_service(home, env)
    try:
        with svc.client("uploader") as api:
            answer = api.post("/v1/uploads:presign", json={"filename": "me.png", "height_cm": 171})
            assert answer.status_code == 200, answer.text
            ticket = answer.json()
            put = ticket["upload"]
            landed = httpx.put(put["url"], content=standing_photo.read_bytes(), headers=put["headers"])
            assert landed.status_code == 200, landed.text
            status = api.get(f"/v1/uploads/{ticket['upload_id']}").json()
            bad_hint = api.post("/v1/uploads:presign", json={"filename": "me.png", "height_cm": 900})
        with svc.client("uploader2") as other:
            assert other.get(f"/v1/uploads/{ticket['upload_id']}").status_code == 404
        with svc.client("compliance") as compliance:
            assert compliance.post("/v1/uploads:presign", json={"filename": "me.png"}).status_code == 403
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert status["status"] == "pending" and status["subject_id"] == ticket["subject_id"]
    assert bad_hint.status_code == 422 and bad_hint.json()["error"]["code"] == "INVALID_HINT"
    key = f"subjects/{ticket['subject_id']}/{ticket['upload_id']}/raw/original.png"
    head = client("s3", aws_env).head_object(Bucket=uploads, Key=key)
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == kms_key
    # the SSE headers are signed into the URL: S3 refuses the PUT without them (moto does not check)
    signed = httpx.URL(put["url"]).params["X-Amz-SignedHeaders"].split(";")
    assert {"x-amz-server-side-encryption", "x-amz-server-side-encryption-aws-kms-key-id"} <= set(signed)


def test_presign_without_s3_is_a_typed_conflict(service):
    with service.client("uploader") as api:
        answer = api.post("/v1/uploads:presign", json={"filename": "me.png"})
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "PRESIGN_UNAVAILABLE"
