"""S3 object store: the production implementation of :class:`storage.object_store.ObjectStore`.

Same keys and semantics as the local store, plus what S3 needs in production:

* every write is encrypted server side with KMS (``aws:kms``; a configurable key, else the
  account's ``aws/s3`` key), also for presigned uploads (the SSE headers are signed);
* versioned buckets: reads return the current version; ``delete``/``delete_prefix`` remove
  *every* version and delete marker by default (erasure must not leave old versions behind);
* large objects go up as multipart uploads (s3transfer), small ones in one PUT;
* throttling and 5xx answers are retried with exponential backoff and jitter (botocore's
  ``standard`` retry mode);
* presigned PUT/GET URLs with a short expiry (15 minutes by default) so the web tier never
  handles photo bytes and clients need no AWS credentials.

Raw uploads (``subjects/{s}/{u}/raw/...``) can live in their own bucket (``uploads_bucket``):
that bucket carries the ``ObjectCreated`` notification and the raw-photo retention rule, while
keys stay identical, so erasing a subject is still one ``delete_prefix`` over both buckets.
"""

from __future__ import annotations

import heapq
import io
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from storage.keys import (
    ObjectNotFound,
    StoredObject,
    _validate_prefix,
    is_raw_upload_key,
    raw_upload_key,
    sha256_hex,
    validate_key,
)

DEFAULT_PRESIGN_EXPIRY_S = 15 * 60
MAX_PRESIGN_EXPIRY_S = 7 * 24 * 3600  # SigV4 limit
_MiB = 1 << 20
_SHA256_META = "sha256"  # x-amz-meta-sha256: lets stat() answer without downloading
_DELETE_BATCH = 1000  # DeleteObjects limit
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchVersion"})


@dataclass(frozen=True)
class S3StoreConfig:
    """Where and how objects are stored; built from environment variables by the settings."""

    bucket: str
    uploads_bucket: str | None = None  # raw uploads go here when set (else ``bucket``)
    kms_key_id: str | None = None  # key id/ARN/alias; None = the account's aws/s3 KMS key
    region: str | None = None
    endpoint_url: str | None = None  # e.g. a moto server in tests; None = AWS
    presign_expiry_s: int = DEFAULT_PRESIGN_EXPIRY_S
    multipart_threshold: int = 16 * _MiB
    multipart_chunksize: int = 16 * _MiB
    max_attempts: int = 8  # total attempts per request, including the first
    delete_all_versions: bool = True

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ValueError("S3StoreConfig.bucket is required")
        if not 1 <= self.presign_expiry_s <= MAX_PRESIGN_EXPIRY_S:
            raise ValueError(f"presign_expiry_s must be in [1, {MAX_PRESIGN_EXPIRY_S}]")
        if self.multipart_chunksize < 5 * _MiB:
            raise ValueError("multipart_chunksize must be at least 5 MiB (S3's minimum part size)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, e.g. to hand the store's configuration to a Pipes worker."""
        return {"kind": "s3", **{k: getattr(self, k) for k in self.__dataclass_fields__}}


@dataclass(frozen=True)
class PresignedRequest:
    """An HTTP request a client without AWS credentials can make until ``expires_at``."""

    method: str
    url: str
    key: str
    expires_at: datetime
    headers: dict[str, str] = field(default_factory=dict)  # must be sent exactly as given

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "url": self.url,
            "key": self.key,
            "headers": dict(self.headers),
            "expires_at": self.expires_at.isoformat(),
        }


def s3_client(config: S3StoreConfig) -> Any:
    """A boto3 S3 client: SigV4, exponential backoff with jitter on throttling/5xx, path-style on custom endpoints."""
    botocore_config = Config(
        signature_version="s3v4",
        retries={"mode": "standard", "total_max_attempts": config.max_attempts},
        s3={"addressing_style": "path" if config.endpoint_url else "auto"},
    )
    return boto3.session.Session().client(
        "s3", region_name=config.region, endpoint_url=config.endpoint_url, config=botocore_config
    )


class S3ObjectStore:
    """:class:`~storage.object_store.ObjectStore` over one or two S3 buckets."""

    def __init__(self, config: S3StoreConfig, client: Any | None = None) -> None:
        self.config = config
        self.client = client or s3_client(config)
        self._transfer = TransferConfig(
            multipart_threshold=config.multipart_threshold,
            multipart_chunksize=config.multipart_chunksize,
            use_threads=True,
            max_concurrency=4,
        )

    def __repr__(self) -> str:
        buckets = ", ".join(sorted(self._buckets()))
        return f"S3ObjectStore({buckets})"

    # -- routing ---------------------------------------------------------------------

    def bucket_for(self, key: str) -> str:
        """The bucket that holds ``key``: raw uploads may live in their own bucket."""
        if self.config.uploads_bucket and is_raw_upload_key(key):
            return self.config.uploads_bucket
        return self.config.bucket

    def _buckets(self) -> set[str]:
        return {self.config.bucket} | ({self.config.uploads_bucket} if self.config.uploads_bucket else set())

    def sse_args(self) -> dict[str, str]:
        """boto3 ``ExtraArgs``/params that make S3 encrypt the object with KMS."""
        args = {"ServerSideEncryption": "aws:kms"}
        if self.config.kms_key_id:
            args["SSEKMSKeyId"] = self.config.kms_key_id
        return args

    # -- ObjectStore protocol --------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> StoredObject:
        """Upload ``data`` (multipart above the threshold); S3 replaces objects atomically."""
        validate_key(key)
        digest = sha256_hex(data)
        extra: dict[str, Any] = {**self.sse_args(), "Metadata": {_SHA256_META: digest}}
        if content_type:
            extra["ContentType"] = content_type
        self.client.upload_fileobj(
            io.BytesIO(data), self.bucket_for(key), key, ExtraArgs=extra, Config=self._transfer
        )
        return self._stored(key, digest, len(data))

    def get_bytes(self, key: str, version_id: str | None = None) -> bytes:
        """The current version (or ``version_id``); a key whose latest version is a delete marker is gone."""
        validate_key(key)
        params: dict[str, Any] = {"Bucket": self.bucket_for(key), "Key": key}
        if version_id:
            params["VersionId"] = version_id
        try:
            response = self.client.get_object(**params)
        except ClientError as exc:
            if _is_not_found(exc):
                raise ObjectNotFound(key) from None
            raise
        with response["Body"] as body:
            return body.read()

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def stat(self, key: str) -> StoredObject:
        head = self._head(key)
        if head is None:
            raise ObjectNotFound(key)
        digest = head.get("Metadata", {}).get(_SHA256_META)
        if not digest:  # written by something else (e.g. a presigned upload): hash the content
            digest = sha256_hex(self.get_bytes(key))
        return self._stored(key, digest, int(head["ContentLength"]))

    def head(self, key: str) -> dict[str, Any]:
        """Raw HEAD answer (encryption, version id, ETag...) for callers and tests that need it."""
        head = self._head(key)
        if head is None:
            raise ObjectNotFound(key)
        return head

    def delete(self, key: str, all_versions: bool | None = None) -> bool:
        """Delete ``key``; with ``all_versions`` (the default) every version and delete marker too.

        Returns whether a current object existed.
        """
        validate_key(key)
        existed = self.exists(key)
        if self._all_versions(all_versions):
            targets = [v for v in self._versions(self.bucket_for(key), key) if v["Key"] == key]
            self._delete_batch(self.bucket_for(key), targets)
        elif existed:
            self.client.delete_object(Bucket=self.bucket_for(key), Key=key)
        return existed

    def delete_prefix(self, prefix: str, all_versions: bool | None = None) -> int:
        """Delete every object under ``prefix`` in every bucket; returns how many current objects went.

        With ``all_versions`` (the default) noncurrent versions and delete markers go too, so
        nothing under the prefix can be restored. An empty prefix is refused.
        """
        if not prefix:
            raise ValueError("refusing to delete with an empty prefix")
        _validate_prefix(prefix)
        count = 0
        for bucket in sorted(self._buckets()):
            if self._all_versions(all_versions):
                targets = list(self._versions(bucket, prefix))
                count += sum(1 for v in targets if v.get("IsLatest") and not v.get("DeleteMarker"))
            else:
                targets = [{"Key": k} for k in self._keys(bucket, prefix)]
                count += len(targets)
            self._delete_batch(bucket, targets)
        return count

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Current keys under ``prefix`` in sorted order, merged across buckets."""
        _validate_prefix(prefix)
        streams = [self._keys(bucket, prefix) for bucket in sorted(self._buckets())]
        previous = None
        for key in heapq.merge(*streams):
            if key != previous:
                yield key
            previous = key

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket_for(validate_key(key))}/{key}"

    def key_for_uri(self, uri: str) -> str:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or parsed.netloc not in self._buckets():
            raise ValueError(f"not an s3:// URI of this store: {uri!r}")
        key = validate_key(parsed.path.lstrip("/"))
        if self.bucket_for(key) != parsed.netloc:
            raise ValueError(f"URI {uri!r} names the wrong bucket for its key")
        return key

    def local_path(self, key: str) -> str | None:
        return None

    # -- presigned URLs --------------------------------------------------------------

    def presigned_put(
        self, key: str, content_type: str | None = None, expires_in: int | None = None
    ) -> PresignedRequest:
        """A PUT URL for ``key``; the returned headers (SSE-KMS, content type) are part of the signature."""
        validate_key(key)
        expiry = self._expiry(expires_in)
        params: dict[str, Any] = {"Bucket": self.bucket_for(key), "Key": key, **self.sse_args()}
        headers = {"x-amz-server-side-encryption": "aws:kms"}
        if self.config.kms_key_id:
            headers["x-amz-server-side-encryption-aws-kms-key-id"] = self.config.kms_key_id
        if content_type:
            params["ContentType"] = content_type
            headers["Content-Type"] = content_type
        url = self.client.generate_presigned_url(
            "put_object", Params=params, ExpiresIn=expiry, HttpMethod="PUT"
        )
        return PresignedRequest("PUT", url, key, _expires_at(expiry), headers)

    def presigned_get(self, key: str, expires_in: int | None = None) -> PresignedRequest:
        """A GET URL for the current version of ``key`` (SSE-KMS objects decrypt transparently)."""
        validate_key(key)
        expiry = self._expiry(expires_in)
        url = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket_for(key), "Key": key}, ExpiresIn=expiry
        )
        return PresignedRequest("GET", url, key, _expires_at(expiry))

    # -- helpers ---------------------------------------------------------------------

    def _stored(self, key: str, digest: str, size: int) -> StoredObject:
        return StoredObject(key=key, uri=self.uri_for(key), sha256=digest, bytes=size, path=None)

    def _head(self, key: str) -> dict[str, Any] | None:
        validate_key(key)
        try:
            return self.client.head_object(Bucket=self.bucket_for(key), Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise

    def _expiry(self, expires_in: int | None) -> int:
        expiry = self.config.presign_expiry_s if expires_in is None else int(expires_in)
        if not 1 <= expiry <= MAX_PRESIGN_EXPIRY_S:
            raise ValueError(f"expiry must be in [1, {MAX_PRESIGN_EXPIRY_S}] seconds")
        return expiry

    def _all_versions(self, requested: bool | None) -> bool:
        return self.config.delete_all_versions if requested is None else requested

    def _keys(self, bucket: str, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]

    def _versions(self, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
        """Every version and delete marker under ``prefix`` (an unversioned bucket lists version "null")."""
        paginator = self.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Versions", []):
                yield {"Key": item["Key"], "VersionId": item["VersionId"], "IsLatest": item["IsLatest"]}
            for item in page.get("DeleteMarkers", []):
                yield {
                    "Key": item["Key"],
                    "VersionId": item["VersionId"],
                    "IsLatest": item["IsLatest"],
                    "DeleteMarker": True,
                }

    def _delete_batch(self, bucket: str, targets: list[dict[str, Any]]) -> None:
        for start in range(0, len(targets), _DELETE_BATCH):
            chunk = targets[start : start + _DELETE_BATCH]
            objects = [
                {"Key": t["Key"], **({"VersionId": t["VersionId"]} if t.get("VersionId") else {})}
                for t in chunk
            ]
            body = {"Objects": objects, "Quiet": True}
            response = self.client.delete_objects(Bucket=bucket, Delete=body)
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise OSError(
                    f"S3 refused to delete {len(errors)} object(s) in {bucket}; first: "
                    f"{first.get('Key')} {first.get('Code')}: {first.get('Message')}"
                )


def _expires_at(expiry_s: int) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=expiry_s)


def _is_not_found(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(error.get("Code")) in _NOT_FOUND_CODES or status == 404


# -- uploads from the web tier ---------------------------------------------------------------

_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_EXT_PATTERN = re.compile(r"^[a-z0-9]{1,5}$")


@dataclass(frozen=True)
class UploadTicket:
    """Where a client PUTs one photo. The upload is registered when S3 reports the object
    (ObjectCreated → SQS → sensor), so a ticket that is never used leaves nothing behind."""

    upload_id: str
    subject_id: str
    key: str
    request: PresignedRequest

    def to_dict(self) -> dict[str, Any]:
        return {"upload_id": self.upload_id, "subject_id": self.subject_id, **self.request.to_dict()}


def new_upload_id() -> str:
    """Opaque random partition key (never a name or a photo hash)."""
    return "u_" + secrets.token_hex(8)


def create_upload_ticket(
    store: S3ObjectStore,
    subject_id: str,
    ext: str,
    content_type: str | None = None,
    sha256: str | None = None,
    expires_in: int | None = None,
    upload_id: str | None = None,
) -> UploadTicket:
    """A presigned PUT for a new raw upload of ``subject_id`` (what the web tier hands a browser).

    The key is ``subjects/{subject}/{upload}/raw/original.{ext}``, or content addressed when the
    caller knows the bytes' ``sha256``; expiry defaults to the store's (15 minutes).
    """
    if not _ID_PATTERN.match(subject_id):
        raise ValueError("subject ids may use letters, digits, '_' and '-' (at most 64)")
    ext = ext.lower().lstrip(".")
    if not _EXT_PATTERN.match(ext):
        raise ValueError(f"invalid file extension {ext!r}")
    upload = upload_id or new_upload_id()
    if not _ID_PATTERN.match(upload):
        raise ValueError(f"invalid upload id {upload!r}")
    key = raw_upload_key(subject_id, upload, ext, sha256)
    return UploadTicket(upload, subject_id, key, store.presigned_put(key, content_type, expires_in))
