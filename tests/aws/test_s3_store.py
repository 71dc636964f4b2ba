"""S3ObjectStore against a real moto server: encryption, versions, multipart, presigned URLs, retries."""

from __future__ import annotations

import hashlib
import http.server
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlparse

import pytest

from storage.object_store import (
    ObjectNotFound,
    ObjectStore,
    artifact_key,
    object_store_from_config,
    raw_upload_key,
    subject_prefix,
)
from storage.retry import RetryingObjectStore, RetryPolicy, StoreUnavailable
from storage.s3_store import S3ObjectStore, S3StoreConfig
from tests.aws.conftest import REGION, client, make_bucket


@pytest.fixture
def sent_headers() -> list[tuple[str, dict[str, str]]]:
    return []


def _store(endpoint: str, bucket: str, **kwargs) -> S3ObjectStore:
    return S3ObjectStore(S3StoreConfig(bucket=bucket, region=REGION, endpoint_url=endpoint, **kwargs))


def _record_requests(store: S3ObjectStore, sink: list[tuple[str, dict[str, str]]]) -> None:
    """Capture every HTTP request botocore sends (operation name, headers) as it goes on the wire."""

    def before_send(request, event_name: str, **kwargs):
        headers = {k.lower(): v.decode() if isinstance(v, bytes) else str(v) for k, v in request.headers.items()}
        sink.append((event_name.rsplit(".", 1)[-1], headers))

    store.client.meta.events.register("before-send.s3", before_send)


def _versions(endpoint: str, bucket: str, prefix: str = "") -> tuple[list[dict], list[dict]]:
    page = client("s3", endpoint).list_object_versions(Bucket=bucket, Prefix=prefix)
    return page.get("Versions", []), page.get("DeleteMarkers", [])


def test_put_sends_kms_encryption_headers_and_roundtrips(moto_endpoint, kms_key, sent_headers) -> None:
    store = _store(moto_endpoint, make_bucket(moto_endpoint), kms_key_id=kms_key)
    _record_requests(store, sent_headers)
    obj: ObjectStore = store
    data = b"glb bytes " * 100
    key = artifact_key("s_1", "u_1", "mesh", hashlib.sha256(data).hexdigest(), "glb")

    put = obj.put_bytes(key, data, content_type="model/gltf-binary")

    puts = [headers for op, headers in sent_headers if op == "PutObject"]
    assert len(puts) == 1
    assert puts[0]["x-amz-server-side-encryption"] == "aws:kms"
    assert puts[0]["x-amz-server-side-encryption-aws-kms-key-id"] == kms_key
    head = store.head(key)
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == kms_key
    assert head["ContentType"] == "model/gltf-binary"
    assert put.uri == f"s3://{store.config.bucket}/{key}" and put.path is None
    assert put.sha256 == hashlib.sha256(data).hexdigest() and put.bytes == len(data)
    assert obj.get_bytes(key) == data
    assert obj.exists(key) and not obj.exists(key + ".nope")
    assert obj.stat(key) == put
    assert obj.key_for_uri(put.uri) == key and obj.uri_for(key) == put.uri
    assert obj.local_path(key) is None
    with pytest.raises(ObjectNotFound):
        obj.get_bytes("subjects/s_1/u_1/mesh/missing.glb")
    with pytest.raises(ObjectNotFound):
        obj.stat("subjects/s_1/u_1/mesh/missing.glb")
    with pytest.raises(ValueError):
        obj.key_for_uri(f"s3://another-bucket/{key}")


def test_default_kms_key_when_none_configured(moto_endpoint, sent_headers) -> None:
    store = _store(moto_endpoint, make_bucket(moto_endpoint))
    _record_requests(store, sent_headers)
    store.put_bytes("a/b.bin", b"x")
    headers = next(h for op, h in sent_headers if op == "PutObject")
    assert headers["x-amz-server-side-encryption"] == "aws:kms"
    assert "x-amz-server-side-encryption-aws-kms-key-id" not in headers
    assert store.head("a/b.bin")["ServerSideEncryption"] == "aws:kms"


def test_stat_hashes_objects_written_without_checksum_metadata(moto_endpoint) -> None:
    bucket = make_bucket(moto_endpoint)
    client("s3", moto_endpoint).put_object(Bucket=bucket, Key="x/y.bin", Body=b"foreign")
    stat = _store(moto_endpoint, bucket).stat("x/y.bin")
    assert stat.sha256 == hashlib.sha256(b"foreign").hexdigest() and stat.bytes == 7


def test_versioned_bucket_reads_current_and_deletes_every_version(moto_endpoint) -> None:
    bucket = make_bucket(moto_endpoint, versioned=True)
    store = _store(moto_endpoint, bucket)
    store.put_bytes("subjects/s_1/u_1/photo/a.png", b"version one")
    store.put_bytes("subjects/s_1/u_1/photo/a.png", b"version two")
    store.put_bytes("subjects/s_1/u_1/photo/b.png", b"other")

    assert store.get_bytes("subjects/s_1/u_1/photo/a.png") == b"version two"
    assert len(_versions(moto_endpoint, bucket, "subjects/s_1/u_1/photo/a.png")[0]) == 2

    assert store.delete("subjects/s_1/u_1/photo/a.png") is True
    versions, markers = _versions(moto_endpoint, bucket, "subjects/s_1/u_1/photo/a.png")
    assert versions == [] and markers == []  # nothing left to restore
    assert store.get_bytes("subjects/s_1/u_1/photo/b.png") == b"other"
    assert store.delete("subjects/s_1/u_1/photo/a.png") is False


def test_plain_delete_on_versioned_bucket_leaves_a_restorable_version(moto_endpoint) -> None:
    bucket = make_bucket(moto_endpoint, versioned=True)
    store = _store(moto_endpoint, bucket, delete_all_versions=False)
    store.put_bytes("k/v.bin", b"keep me")
    assert store.delete("k/v.bin") is True
    assert not store.exists("k/v.bin")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("k/v.bin")  # latest version is a delete marker
    versions, markers = _versions(moto_endpoint, bucket, "k/")
    assert len(versions) == 1 and len(markers) == 1
    assert store.get_bytes("k/v.bin", version_id=versions[0]["VersionId"]) == b"keep me"
    # Asked explicitly, the same store purges the old version and the marker.
    store.delete("k/v.bin", all_versions=True)
    assert _versions(moto_endpoint, bucket, "k/") == ([], [])


def test_delete_prefix_purges_versions_and_markers_of_one_subject_only(moto_endpoint) -> None:
    bucket = make_bucket(moto_endpoint, versioned=True)
    store = _store(moto_endpoint, bucket)
    for i in range(3):
        store.put_bytes(f"subjects/s_1/u_{i}/photo/x.png", b"a")
        store.put_bytes(f"subjects/s_1/u_{i}/photo/x.png", b"b")  # a noncurrent version each
    store.put_bytes("subjects/s_1/u_9/photo/gone.png", b"c")
    store.delete("subjects/s_1/u_9/photo/gone.png", all_versions=False)  # leaves a delete marker
    store.put_bytes("subjects/s_10/u_1/photo/x.png", b"other subject")

    assert store.delete_prefix(subject_prefix("s_1")) == 3
    assert _versions(moto_endpoint, bucket, "subjects/s_1/") == ([], [])
    assert list(store.list_keys("subjects/")) == ["subjects/s_10/u_1/photo/x.png"]
    with pytest.raises(ValueError):
        store.delete_prefix("")
    with pytest.raises(ValueError):
        store.delete_prefix("../")


def test_large_objects_go_up_as_multipart_with_encryption(moto_endpoint, kms_key, sent_headers) -> None:
    mib = 1 << 20
    store = _store(
        moto_endpoint, make_bucket(moto_endpoint), kms_key_id=kms_key,
        multipart_threshold=5 * mib, multipart_chunksize=5 * mib,
    )  # fmt: skip
    _record_requests(store, sent_headers)
    data = bytes(range(256)) * (11 * mib // 256)  # 11 MiB -> parts of 5 + 5 + 1 MiB

    put = store.put_bytes("subjects/s_1/u_1/mesh/big.glb", data)

    operations = [op for op, _ in sent_headers]
    assert operations.count("UploadPart") == 3 and "PutObject" not in operations
    create = next(h for op, h in sent_headers if op == "CreateMultipartUpload")
    assert create["x-amz-server-side-encryption"] == "aws:kms"
    head = store.head(put.key)
    assert head["ETag"].strip('"').endswith("-3")  # S3's multipart ETag
    assert head["ServerSideEncryption"] == "aws:kms"
    assert store.get_bytes(put.key) == data
    assert store.stat(put.key).sha256 == hashlib.sha256(data).hexdigest()


def test_presigned_put_and_get_work_with_plain_http(moto_endpoint, kms_key) -> None:
    store = _store(moto_endpoint, make_bucket(moto_endpoint), kms_key_id=kms_key)
    key = raw_upload_key("s_1", "u_1", "jpg")
    upload = store.presigned_put(key, content_type="image/jpeg")

    assert upload.method == "PUT" and upload.key == key
    assert parse_qs(urlparse(upload.url).query)["X-Amz-Expires"] == ["900"]  # 15 minutes by default
    signed = parse_qs(urlparse(upload.url).query)["X-Amz-SignedHeaders"][0].split(";")
    assert "x-amz-server-side-encryption" in signed
    request = urllib.request.Request(upload.url, data=b"jpeg bytes", method="PUT", headers=upload.headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert store.head(key)["ServerSideEncryption"] == "aws:kms"
    assert store.head(key)["SSEKMSKeyId"] == kms_key

    download = store.presigned_get(key, expires_in=60)
    assert parse_qs(urlparse(download.url).query)["X-Amz-Expires"] == ["60"]
    with urllib.request.urlopen(download.url, timeout=10) as response:
        assert response.read() == b"jpeg bytes"


def test_presign_expiry_is_configurable_and_bounded(moto_endpoint) -> None:
    """moto does not enforce X-Amz-Expires, so this checks what is signed; AWS enforces it."""
    store = _store(moto_endpoint, make_bucket(moto_endpoint), presign_expiry_s=120)
    upload = store.presigned_put("a/b.bin")
    assert parse_qs(urlparse(upload.url).query)["X-Amz-Expires"] == ["120"]
    assert 115 <= (upload.expires_at - datetime.now(UTC)).total_seconds() <= 120
    for bad in (0, 8 * 24 * 3600):
        with pytest.raises(ValueError):
            store.presigned_get("a/b.bin", expires_in=bad)
    with pytest.raises(ValueError):
        S3StoreConfig(bucket="b", presign_expiry_s=0)


def test_raw_uploads_route_to_the_uploads_bucket(moto_endpoint) -> None:
    artifacts, uploads = make_bucket(moto_endpoint), make_bucket(moto_endpoint)
    store = _store(moto_endpoint, artifacts, uploads_bucket=uploads)
    raw = raw_upload_key("s_1", "u_1", "png", hashlib.sha256(b"raw").hexdigest())
    art = artifact_key("s_1", "u_1", "photo", hashlib.sha256(b"png").hexdigest(), "png")
    store.put_bytes(raw, b"raw")
    store.put_bytes(art, b"png")

    s3 = client("s3", moto_endpoint)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=uploads)["Contents"]] == [raw]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=artifacts)["Contents"]] == [art]
    assert store.uri_for(raw) == f"s3://{uploads}/{raw}"
    assert list(store.list_keys(subject_prefix("s_1"))) == sorted([raw, art])
    assert store.delete_prefix(subject_prefix("s_1")) == 2
    assert "Contents" not in s3.list_objects_v2(Bucket=uploads)
    assert "Contents" not in s3.list_objects_v2(Bucket=artifacts)


def test_factory_builds_the_configured_store(moto_endpoint, tmp_path) -> None:
    bucket = make_bucket(moto_endpoint)
    config = S3StoreConfig(bucket=bucket, region=REGION, endpoint_url=moto_endpoint).to_dict()
    store = object_store_from_config(config)
    # the factory is where retries are applied (storage/retry.py): the S3 store, wrapped once
    assert isinstance(store, RetryingObjectStore) and isinstance(store.inner, S3ObjectStore)
    store.put_bytes("a/b.bin", b"via factory")
    assert _store(moto_endpoint, bucket).get_bytes("a/b.bin") == b"via factory"
    local = object_store_from_config({"kind": "local", "root": str(tmp_path)})
    assert local.put_bytes("a/b.bin", b"x").path == str(tmp_path.resolve() / "a" / "b.bin")
    with pytest.raises(ValueError):
        object_store_from_config({"kind": "gcs"})


# -- retries: a proxy on 127.0.0.1 that answers the first requests with 503 SlowDown --------


class _FlakyProxy(http.server.ThreadingHTTPServer):
    def __init__(self, upstream: str, failures: int) -> None:
        super().__init__(("127.0.0.1", 0), _FlakyHandler)
        self.upstream = upstream
        self.failures_left = failures
        self.requests = 0
        self.lock = threading.Lock()


class _FlakyHandler(http.server.BaseHTTPRequestHandler):
    server: _FlakyProxy
    protocol_version = "HTTP/1.1"  # answers botocore's "Expect: 100-continue" properly

    def log_message(self, *args) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        with self.server.lock:
            self.server.requests += 1
            fail = self.server.failures_left > 0
            self.server.failures_left -= int(fail)
        if fail:
            payload = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection", "expect")}
        # urllib would label a body without a type as a form, which the server would then parse.
        headers.setdefault("Content-Type", "binary/octet-stream")
        request = urllib.request.Request(self.server.upstream + self.path, data=body, method=self.command, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, answer, out_headers = response.status, response.read(), response.headers.items()
        except urllib.error.HTTPError as exc:
            status, answer, out_headers = exc.code, exc.read(), exc.headers.items()
        self.send_response(status)
        for k, v in out_headers:
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle


@pytest.fixture
def flaky_proxy(moto_endpoint) -> Iterator[_FlakyProxy]:
    proxy = _FlakyProxy(moto_endpoint, failures=0)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()


def test_throttling_and_5xx_are_retried_with_backoff(moto_endpoint, flaky_proxy) -> None:
    bucket = make_bucket(moto_endpoint)
    endpoint = f"http://127.0.0.1:{flaky_proxy.server_address[1]}"
    store = S3ObjectStore(S3StoreConfig(bucket=bucket, region=REGION, endpoint_url=endpoint, max_attempts=5))

    flaky_proxy.failures_left, flaky_proxy.requests = 2, 0
    store.put_bytes("a/b.bin", b"eventually")
    assert flaky_proxy.requests == 3  # two 503 SlowDown answers, then success
    assert _store(moto_endpoint, bucket).get_bytes("a/b.bin") == b"eventually"

    # The same outage with retries switched off surfaces the error: the retries are what saved us.
    no_retry = S3ObjectStore(S3StoreConfig(bucket=bucket, region=REGION, endpoint_url=endpoint, max_attempts=1))
    flaky_proxy.failures_left = 1
    with pytest.raises(Exception, match="SlowDown"):
        no_retry.get_bytes("a/b.bin")


def test_factory_retries_once_per_request_not_botocore_times_ours(moto_endpoint, flaky_proxy) -> None:
    """The store factory's retry layer is the one retry budget on S3: botocore is turned down to
    one attempt per request, so a hiccup costs a retry and an outage costs `max_tries` requests
    (botocore's eight attempts under five of ours would make it forty)."""
    bucket = make_bucket(moto_endpoint)
    endpoint = f"http://127.0.0.1:{flaky_proxy.server_address[1]}"
    config = {"kind": "s3", "bucket": bucket, "region": REGION, "endpoint_url": endpoint}
    policy = RetryPolicy(max_tries=4, base_delay_s=0.001, max_delay_s=0.01)
    store = object_store_from_config(config, policy)
    assert store.inner.config.max_attempts == 1

    flaky_proxy.failures_left, flaky_proxy.requests = 2, 0
    store.put_bytes("a/b.bin", b"eventually")
    assert flaky_proxy.requests == 3  # two 503 SlowDown answers, retried by our layer, then success
    assert _store(moto_endpoint, bucket).get_bytes("a/b.bin") == b"eventually"

    flaky_proxy.failures_left, flaky_proxy.requests = 100, 0
    with pytest.raises(StoreUnavailable):
        store.get_bytes("a/b.bin")
    assert flaky_proxy.requests == policy.max_tries
