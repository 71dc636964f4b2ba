"""Blob storage for photos and pipeline artifacts: the local directory store, and the one
factory that builds any store (`object_store_from_config`) with its retries.

Keys, the `ObjectStore` protocol and `StoredObject` live in `storage.keys` (shared with the S3
store); they are re-exported here, where most callers have always imported them from.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from storage.keys import (
    RAW_ASSET,
    ObjectNotFound,
    ObjectStore,
    RawUploadRef,
    StoredObject,
    _validate_prefix,
    artifact_key,
    is_raw_upload_key,
    key_without_subject,
    parse_raw_upload_key,
    raw_upload_key,
    sha256_hex,
    subject_prefix,
    upload_prefix,
    validate_key,
)
from storage.retry import RetryPolicy, with_retries

__all__ = [
    "RAW_ASSET",
    "LocalObjectStore",
    "ObjectNotFound",
    "ObjectStore",
    "RawUploadRef",
    "StoredObject",
    "artifact_key",
    "is_raw_upload_key",
    "key_without_subject",
    "object_store_from_config",
    "parse_raw_upload_key",
    "raw_upload_key",
    "sha256_hex",
    "subject_prefix",
    "upload_prefix",
    "validate_key",
]

_CHUNK = 1 << 20


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


def object_store_from_config(
    config: dict[str, Any], policy: RetryPolicy | None = None, *, retries: bool = True
) -> ObjectStore:
    """Build the store a configuration names: ``{"kind": "local", "root": ...}`` or
    ``{"kind": "s3", "bucket": ..., ...}`` (fields of :class:`storage.s3_store.S3StoreConfig`),
    wrapped in :class:`storage.retry.RetryingObjectStore` - the one place object-store retries
    are applied (``policy``: the configured `RetryPolicy`, else ``AVATARPIPE_STORE_RETRY_*``).

    Plain data on purpose: the Pipes worker receives this dict from the orchestrator.

    On S3 the retry layer is the one budget: botocore's own retries are turned down to a
    single attempt per request (unless the config names ``max_attempts``), so a store that
    stays down costs ``policy.max_tries`` requests, not ``max_tries x`` botocore's eight.
    ``retries=False``: the bare store (tests put fault injection between it and the retries).
    """
    kind = config.get("kind", "local")
    if kind == "local":
        store: Any = LocalObjectStore(Path(config["root"]))
    elif kind == "s3":
        from storage.s3_store import S3ObjectStore, S3StoreConfig  # boto3 only when S3 is used

        fields = {k: v for k, v in config.items() if k != "kind"}
        if retries:
            fields.setdefault("max_attempts", 1)
        store = S3ObjectStore(S3StoreConfig(**fields))
    else:
        raise ValueError(f"unknown object store kind {kind!r}; expected 'local' or 's3'")
    return with_retries(store, policy) if retries else store
