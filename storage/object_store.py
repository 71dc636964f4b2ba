"""Blob storage for photos and pipeline artifacts.

Keys are "/"-separated relative paths such as
``subjects/s_ab12/u_cd34/photo/3f2a9c0d1e2b4a5f.png``. Artifact keys are
content-addressed (see :func:`artifact_key`) so a retried step rewrites the same
key instead of leaving a duplicate behind, and erasing a subject is a single
:meth:`ObjectStore.delete_prefix` on :func:`subject_prefix`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

_CHUNK = 1 << 20


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


class LocalObjectStore:
    """Objects are plain files under ``root``; writes are atomic (temp file + fsync + rename)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalObjectStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def _stored(self, key: str, digest: str, size: int) -> StoredObject:
        path = self._path(key)
        return StoredObject(key=key, uri=path.as_uri(), sha256=digest, bytes=size, path=str(path))

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> StoredObject:
        """Write ``data`` under ``key``. ``content_type`` is ignored by the local store."""
        path = self._path(key)
        for attempt in range(3):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
                break
            except FileNotFoundError:  # a concurrent delete pruned the fresh directory
                if attempt == 2:
                    raise
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(path.parent)
        return self._stored(key, sha256_hex(data), len(data))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> StoredObject:
        digest = hashlib.sha256()
        size = 0
        try:
            with self._path(key).open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        return self._stored(key, digest.hexdigest(), size)

    def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return False
        self._prune_empty_dirs(path.parent)
        return True

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix`` (string prefix, as on S3).

        An empty prefix is refused so a bug cannot wipe the whole store.
        """
        if not prefix:
            raise ValueError("refusing to delete with an empty prefix")
        count = 0
        for key in list(self.list_keys(prefix)):
            path = self._path(key)
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            count += 1
            self._prune_empty_dirs(path.parent)
        return count

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Yield keys starting with ``prefix`` in sorted order; temp/hidden files are skipped."""
        _validate_prefix(prefix)
        base_dir, _, _ = prefix.rpartition("/")
        start = self.root.joinpath(*base_dir.split("/")) if base_dir else self.root
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys))

    def uri_for(self, key: str) -> str:
        return self._path(key).as_uri()

    def key_for_uri(self, uri: str) -> str:
        parsed = urlparse(uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise ValueError(f"not a local file URI: {uri!r}")
        try:
            rel = Path(unquote(parsed.path)).relative_to(self.root)
        except ValueError:
            raise ValueError(f"URI {uri!r} is outside store root {self.root}") from None
        return validate_key(rel.as_posix())

    def local_path(self, key: str) -> str | None:
        return str(self._path(key))

    def incomplete_writes(self) -> list[tuple[str, float]]:
        """Temp files of writes that never reached their rename (the writer died): relative
        paths and modification times. `avatarpipe fsck` reports and removes old ones."""
        found: list[tuple[str, float]] = []
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                if name.startswith(".") and name.endswith(".tmp"):
                    path = Path(dirpath) / name
                    try:
                        found.append((path.relative_to(self.root).as_posix(), path.stat().st_mtime))
                    except FileNotFoundError:  # renamed or removed meanwhile
                        continue
        return sorted(found)

    def remove_incomplete_write(self, relative_path: str) -> bool:
        """Delete one temp file listed by :meth:`incomplete_writes` (nothing else)."""
        name = relative_path.rsplit("/", 1)[-1]
        if not (name.startswith(".") and name.endswith(".tmp")) or ".." in relative_path.split("/"):
            raise ValueError(f"not an incomplete write: {relative_path!r}")
        path = self.root / relative_path
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        self._prune_empty_dirs(path.parent)
        return True

    def _prune_empty_dirs(self, directory: Path) -> None:
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:  # not empty (or already gone / raced with a writer)
                return
            directory = directory.parent


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself; best effort (not every platform allows opening a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- raw uploads and store selection (production path, issue #8) ----------------------

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


def object_store_from_config(config: dict) -> ObjectStore:
    """Build the store a configuration names: ``{"kind": "local", "root": ...}`` or
    ``{"kind": "s3", "bucket": ..., ...}`` (fields of :class:`storage.s3_store.S3StoreConfig`).

    Plain data on purpose: the Pipes worker receives this dict from the orchestrator.
    """
    kind = config.get("kind", "local")
    if kind == "local":
        return LocalObjectStore(Path(config["root"]))
    if kind == "s3":
        from storage.s3_store import S3ObjectStore, S3StoreConfig

        fields = {k: v for k, v in config.items() if k != "kind"}
        return S3ObjectStore(S3StoreConfig(**fields))
    raise ValueError(f"unknown object store kind {kind!r}; expected 'local' or 's3'")
