"""Erasure on a versioned S3 bucket (moto server): every version and delete marker of the subject
goes, the other subject's objects and versions stay, and the verification scan lists versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.erasure import ErasureEnv, erase_subject, subject_hash
from storage.metadata_store import open_metadata_store
from storage.object_store import artifact_key, sha256_hex
from storage.s3_store import S3ObjectStore, S3StoreConfig
from tests.aws.conftest import REGION, client, make_bucket, moto_endpoint  # noqa: F401 - fixture

ERASED, KEPT = "s3-subj-erase-5b1d", "s3-subj-keep-0c4e"


def _versions(endpoint: str, bucket: str) -> list[dict]:
    s3 = client("s3", endpoint)
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket)
    return [v for page in pages for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]


@pytest.fixture
def s3_home(moto_endpoint, tmp_path: Path) -> dict:  # noqa: F811 - the imported fixture
    bucket = make_bucket(moto_endpoint, versioned=True)
    store = S3ObjectStore(S3StoreConfig(bucket=bucket, region=REGION, endpoint_url=moto_endpoint))
    metadata = open_metadata_store(None, tmp_path / "home" / "metadata")
    keys = {}
    for subject, upload in ((ERASED, "u_e1"), (KEPT, "u_k1")):
        metadata.ensure_subject(subject)
        raw = f"raw photo of {subject}".encode()
        key = artifact_key(subject, upload, "raw", sha256_hex(raw), "jpg")
        store.put_bytes(key, raw)
        store.put_bytes(key, raw + b" v2")  # a second version
        metadata.create_upload(upload, subject, key, "test")
        metadata.append_audit("ingest", subject, upload, {})
        glb = artifact_key(subject, upload, "rigged_glb", sha256_hex(b"glb" + raw), "glb")
        store.put_bytes(glb, b"glb" + raw)
        store.delete(glb, all_versions=False)  # leaves a delete marker over the old version
        store.put_bytes(glb, b"glb" + raw)
        keys[subject] = (upload, key)
    yield {"bucket": bucket, "store": store, "metadata": metadata, "home": tmp_path / "home", "keys": keys,
           "endpoint": moto_endpoint}  # fmt: skip
    metadata.close()


def test_erasure_deletes_every_version_on_s3(s3_home) -> None:
    bucket, endpoint = s3_home["bucket"], s3_home["endpoint"]
    before = _versions(endpoint, bucket)
    assert sum(1 for v in before if f"/{ERASED}/" in v["Key"]) == 5  # 2 raw + 2 glb versions + 1 marker
    env = ErasureEnv(home=s3_home["home"], metadata=s3_home["metadata"], object_store=s3_home["store"])
    result = erase_subject(env, ERASED, operator="test")
    assert result.status == "completed", result.verification.to_dict()
    assert result.certificate["counts"]["object_store"]["objects"] == 2
    after = _versions(endpoint, bucket)
    assert [v for v in after if ERASED in v["Key"]] == []
    assert sum(1 for v in after if f"/{KEPT}/" in v["Key"]) == 5  # the other subject untouched
    scanned = result.certificate["verification"]["scanned"]["object_store"]
    assert scanned["versions"] == 5 and scanned["keys"] == 2
    # stores not configured here are reported, never silently called clean
    assert set(result.certificate["verification"]["skipped"]) == {"dagster", "mlflow"}
    assert result.certificate["_id"] == subject_hash(s3_home["home"], ERASED)
    assert s3_home["metadata"].get_upload(s3_home["keys"][KEPT][0])["status"] == "pending"
