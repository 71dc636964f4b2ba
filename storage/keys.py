"""Object keys, the store protocol and the stored-object record: what every object store
(`storage.object_store.LocalObjectStore`, `storage.s3_store.S3ObjectStore`) shares.

Keys are "/"-separated relative paths such as
``subjects/s_ab12/u_cd34/photo/3f2a9c0d1e2b4a5f.png``. Artifact keys are
content-addressed (see :func:`artifact_key`) so a retried step rewrites the same
key instead of leaving a duplicate behind, and erasing a subject is a single
:meth:`ObjectStore.delete_prefix` on :func:`subject_prefix`.

Its own module so that the stores import it and nothing imports a store back (the S3 store
used to import `storage.object_store`, which imported it back to build it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol


class ObjectNotFound(KeyError):
    """Raised when a key has no object behind it."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    uri: str
    sha256: str
    bytes: int
    path: str | None  # absolute local file path for local stores, else None


class ObjectStore(Protocol):
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> StoredObject: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def stat(self, key: str) -> StoredObject: ...
    def delete(self, key: str) -> bool: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def list_keys(self, prefix: str = "") -> Iterator[str]: ...
    def uri_for(self, key: str) -> str: ...
    def key_for_uri(self, uri: str) -> str: ...
    def local_path(self, key: str) -> str | None: ...


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a safe relative object key, else raise ValueError.

    Segments starting with "." are rejected as well: the local store uses hidden
    names for in-flight temp files, so no real key may look like one.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"object key must be a non-empty string: {key!r}")
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid object key: {key!r}")
    for segment in key.split("/"):
        if not segment or segment.startswith("."):
            raise ValueError(f"invalid object key segment {segment!r} in {key!r}")
    return key


def _validate_prefix(prefix: str) -> str:
    if prefix.startswith("/") or "\\" in prefix or "\x00" in prefix:
        raise ValueError(f"invalid key prefix: {prefix!r}")
    segments = prefix.split("/")
    # A trailing "/" is fine ("subjects/s1/"); every complete segment must be valid.
    for segment in segments[:-1]:
        if not segment or segment.startswith("."):
            raise ValueError(f"invalid key prefix: {prefix!r}")
    if segments[-1] in (".", ".."):
        raise ValueError(f"invalid key prefix: {prefix!r}")
    return prefix


def _segment(name: str, value: str) -> str:
    if not value or "/" in value:
        raise ValueError(f"{name} must be a single non-empty key segment: {value!r}")
    return value


def subject_prefix(subject_id: str) -> str:
    """Prefix holding every object of one subject (trailing "/" so s_1 never matches s_10)."""
    return validate_key(f"subjects/{_segment('subject_id', subject_id)}") + "/"


def upload_prefix(subject_id: str, upload_id: str) -> str:
    return validate_key(subject_prefix(subject_id) + _segment("upload_id", upload_id)) + "/"


def artifact_key(subject_id: str, upload_id: str, asset: str, sha256: str, ext: str) -> str:
    """``subjects/{subject}/{upload}/{asset}/{sha256[:16]}.{ext}``; ``ext`` may have a leading dot."""
    digest = sha256.lower()
    if len(digest) < 16 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"sha256 must be a hex digest: {sha256!r}")
    ext = _segment("ext", ext.lstrip("."))
    key = f"{upload_prefix(subject_id, upload_id)}{_segment('asset', asset)}/{digest[:16]}.{ext}"
    return validate_key(key)


def key_without_subject(key: str) -> str:
    """`{upload}/{asset}/{file}` for `subjects/{subject}/...` keys: safe for logs and Dagster
    metadata, which outlive an erasure, so no subject id may appear there."""
    parts = key.split("/", 2)
    return parts[2] if len(parts) == 3 and parts[0] == "subjects" else key


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- raw uploads (production path, issue #8) ------------------------------------------

RAW_ASSET = "raw"  # asset segment of raw upload keys: subjects/{subject}/{upload}/raw/{name}


@dataclass(frozen=True)
class RawUploadRef:
    subject_id: str
    upload_id: str
    key: str


def parse_raw_upload_key(key: str) -> RawUploadRef | None:
    """``subjects/{subject}/{upload}/raw/{name}`` -> its subject and upload ids, else None."""
    try:
        validate_key(key)
    except ValueError:
        return None
    parts = key.split("/")
    if len(parts) != 5 or parts[0] != "subjects" or parts[3] != RAW_ASSET:
        return None
    return RawUploadRef(subject_id=parts[1], upload_id=parts[2], key=key)


def is_raw_upload_key(key: str) -> bool:
    return parse_raw_upload_key(key) is not None


def raw_upload_key(subject_id: str, upload_id: str, ext: str, sha256: str | None = None) -> str:
    """Key of a raw upload: content addressed when the bytes are known, else ``original.{ext}``
    (a browser uploading through a presigned URL is given the key before it sends anything)."""
    if sha256:
        return artifact_key(subject_id, upload_id, RAW_ASSET, sha256, ext)
    ext = _segment("ext", ext.lstrip("."))
    return validate_key(f"{upload_prefix(subject_id, upload_id)}{RAW_ASSET}/original.{ext}")
