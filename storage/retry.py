"""Retry transient storage errors with exponential backoff and full jitter (the `backoff` library).

A store hiccup (a dropped MongoDB connection, an S3 503, an NFS ``EIO``) must not fail a
step that would succeed a moment later, and a store that stays down must fail it cleanly.
Two wrappers do this, one per store:

* :class:`RetryingObjectStore` wraps any :class:`storage.keys.ObjectStore`. The store factory
  ``storage.object_store.object_store_from_config`` applies it (so every caller - the CLI,
  the assets, the checks, the in-process steps and the Pipes worker - gets it without
  asking), as does ``orchestration.resources.ObjectStoreResource.store``. Every object-store operation
  is idempotent: keys are content addressed and writes are atomic, so a retried ``put_bytes``
  rewrites the same bytes under the same key.
* :func:`retrying_database` wraps the pymongo/montydb database under
  :class:`storage.metadata_store.MetadataStore`, so every collection operation is retried.
  Updates are ``$set``/``$setOnInsert``/``$addToSet`` upserts by ``_id`` (idempotent);
  ``insert_one`` always carries its ``_id``, and a retried insert that meets its own
  earlier, acknowledged-but-lost write (duplicate key) counts as done: retries never duplicate.

Only errors that can go away by waiting are retried (:func:`is_transient`); a missing object,
a bad key or a validation error fails at once. When the attempts run out the caller gets
:class:`StoreUnavailable`, which the asset steps record as ``STORE_UNAVAILABLE`` (Dagster's
own ``RetryPolicy`` then retries the whole step later).

Log lines name the operation and the exception type only: keys carry subject ids.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import backoff

log = logging.getLogger(__name__)

T = TypeVar("T")

_TRANSIENT_ERRNOS = frozenset(
    {
        errno.EAGAIN,
        errno.EBUSY,
        errno.EINTR,
        errno.EIO,
        errno.ESTALE,
        errno.ETIMEDOUT,
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EPIPE,
    }
)
# S3/botocore error codes that mean "try again" (besides any HTTP 5xx).
_TRANSIENT_AWS_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "PriorRequestNotComplete",
    }
)


class TransientStoreError(Exception):
    """A store operation failed in a way that may succeed when tried again."""


class StoreUnavailable(Exception):
    """A store operation still failed transiently after every attempt."""

    def __init__(self, operation: str, attempts: int, cause: BaseException, reason: str | None = None) -> None:
        self.operation = operation
        self.attempts = attempts
        self.cause_type = type(cause).__name__
        # No str(cause): messages of store errors often contain object keys (subject ids).
        detail = f"{self.cause_type}: {reason}" if reason else self.cause_type
        super().__init__(f"{operation} failed after {attempts} attempts ({detail})")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a store operation is tried: ``max_tries`` attempts, waits drawn uniformly from
    ``[0, min(max_delay_s, base_delay_s * 2**n)]`` (exponential backoff, full jitter)."""

    max_tries: int = 5
    base_delay_s: float = 0.1
    max_delay_s: float = 5.0

    @staticmethod
    def from_env() -> RetryPolicy:
        """``AVATARPIPE_STORE_RETRY_TRIES`` / ``_BASE_S`` / ``_MAX_S`` (defaults 5, 0.1 s, 5 s)."""
        from orchestration.config import load_config  # the one reader of the environment

        config = load_config()
        return RetryPolicy(
            max_tries=max(1, int(config.store_retry_tries)),
            base_delay_s=float(config.store_retry_base_s),
            max_delay_s=float(config.store_retry_max_s),
        )


def is_transient(exc: BaseException) -> bool:
    """True for errors that waiting can cure: connection/timeouts, throttling, 5xx, busy files."""
    if isinstance(exc, TransientStoreError):
        return True
    if isinstance(exc, StoreUnavailable):  # already retried below us: do not multiply attempts
        return False
    if _is_pymongo_transient(exc) or _is_botocore_transient(exc):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        message = str(exc).lower()
        return "locked" in message or "busy" in message
    if isinstance(exc, OSError):
        return exc.errno in _TRANSIENT_ERRNOS or isinstance(exc, TimeoutError)
    return False


def _is_pymongo_transient(exc: BaseException) -> bool:
    import pymongo.errors

    if isinstance(exc, pymongo.errors.ConnectionFailure):  # AutoReconnect, NetworkTimeout, ...
        return True
    if isinstance(exc, pymongo.errors.PyMongoError):
        return exc.has_error_label("RetryableWriteError") or exc.has_error_label("TransientTransactionError")
    return False


def _is_botocore_transient(exc: BaseException) -> bool:
    try:
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return False
    if isinstance(exc, (ConnectionError, HTTPClientError)):  # endpoint unreachable, read timeout
        return True
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return error.get("Code") in _TRANSIENT_AWS_CODES or status >= 500
    return False


def call_with_retry(operation: str, fn: Callable[[], T], policy: RetryPolicy | None = None) -> T:
    """Run ``fn`` until it succeeds, a non-transient error occurs, or the attempts run out
    (then :class:`StoreUnavailable`, chained to the last error)."""
    policy = policy or RetryPolicy.from_env()

    def on_backoff(details: Any) -> None:
        exc = details.get("exception")
        log.warning(
            "store operation %s failed transiently (%s, attempt %d of %d); retrying in %.2f s",
            operation, type(exc).__name__, details["tries"], policy.max_tries, details["wait"],
        )  # fmt: skip

    retrying = backoff.on_exception(
        backoff.expo,
        Exception,
        max_tries=policy.max_tries,
        giveup=lambda exc: not is_transient(exc),
        jitter=backoff.full_jitter,
        on_backoff=on_backoff,
        logger=None,  # backoff's own log lines include the exception text (keys, subject ids)
        factor=policy.base_delay_s,
        max_value=policy.max_delay_s,
    )(fn)
    try:
        return retrying()
    except Exception as exc:
        if is_transient(exc):
            raise StoreUnavailable(operation, policy.max_tries, exc) from exc
        if is_store_full(exc):  # operational, not the input's fault: resumable once space is freed
            raise StoreUnavailable(operation, 1, exc, reason="no space left on the store's filesystem") from exc
        raise


def is_store_full(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT: waiting seconds does not cure it (no retries), freeing space does."""
    import errno

    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


# -- object store ---------------------------------------------------------------------------


class RetryingObjectStore:
    """Any object store with every operation retried on transient errors.

    Attributes it does not define (e.g. S3's ``presigned_put``, the local ``root``) pass
    through to the wrapped store unchanged.
    """

    def __init__(self, inner: Any, policy: RetryPolicy | None = None) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy.from_env()

    def __repr__(self) -> str:
        return f"RetryingObjectStore({self.inner!r})"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        return call_with_retry(f"object_store.{operation}", fn, self.policy)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> Any:
        return self._call("put_bytes", lambda: self.inner.put_bytes(key, data, content_type))

    def get_bytes(self, key: str) -> bytes:
        return self._call("get_bytes", lambda: self.inner.get_bytes(key))

    def exists(self, key: str) -> bool:
        return self._call("exists", lambda: self.inner.exists(key))

    def stat(self, key: str) -> Any:
        return self._call("stat", lambda: self.inner.stat(key))

    def delete(self, key: str) -> bool:
        return self._call("delete", lambda: self.inner.delete(key))

    def delete_prefix(self, prefix: str) -> int:
        return self._call("delete_prefix", lambda: self.inner.delete_prefix(prefix))

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        # materialised inside the retry: a lazy listing would fail outside it
        return iter(self._call("list_keys", lambda: list(self.inner.list_keys(prefix))))

    def uri_for(self, key: str) -> str:
        return self.inner.uri_for(key)

    def key_for_uri(self, uri: str) -> str:
        return self.inner.key_for_uri(uri)

    def local_path(self, key: str) -> str | None:
        return self.inner.local_path(key)


def with_retries(store: Any, policy: RetryPolicy | None = None) -> Any:
    """``store`` wrapped in :class:`RetryingObjectStore` (once: wrapping twice is a no-op)."""
    return store if isinstance(store, RetryingObjectStore) else RetryingObjectStore(store, policy)


# -- metadata store (pymongo API) -----------------------------------------------------------


@dataclass(frozen=True)
class _InsertedEarlier:
    """``insert_one``'s answer when a retry found the document already written by an earlier
    attempt whose acknowledgement was lost."""

    inserted_id: Any
    acknowledged: bool = True


def _is_duplicate_key(exc: BaseException) -> bool:
    import pymongo.errors

    if isinstance(exc, pymongo.errors.DuplicateKeyError):
        return True
    try:
        from montydb.errors import DuplicateKeyError as MontyDuplicateKeyError
    except ImportError:  # pragma: no cover - montydb is a dependency
        return False
    return isinstance(exc, MontyDuplicateKeyError)


class RetryingCollection:
    """A pymongo-API collection whose operations are retried on transient errors.

    ``find`` returns a list (read inside the retry) rather than a lazy cursor; the metadata
    store only ever iterates it.
    """

    def __init__(self, inner: Any, policy: RetryPolicy) -> None:
        self.inner = inner
        self.policy = policy

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        return call_with_retry(f"metadata.{self.inner.name}.{operation}", fn, self.policy)

    def find(self, *args: Any, **kwargs: Any) -> list[dict]:
        return self._call("find", lambda: list(self.inner.find(*args, **kwargs)))

    def find_one(self, *args: Any, **kwargs: Any) -> dict | None:
        return self._call("find_one", lambda: self.inner.find_one(*args, **kwargs))

    def count_documents(self, *args: Any, **kwargs: Any) -> int:
        return self._call("count_documents", lambda: self.inner.count_documents(*args, **kwargs))

    def insert_one(self, document: dict, *args: Any, **kwargs: Any) -> Any:
        attempts = 0

        def attempt() -> Any:
            nonlocal attempts
            attempts += 1
            try:
                return self.inner.insert_one(document, *args, **kwargs)
            except Exception as exc:
                if attempts > 1 and "_id" in document and _is_duplicate_key(exc):
                    return _InsertedEarlier(document["_id"])
                raise

        return self._call("insert_one", attempt)

    def update_one(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("update_one", lambda: self.inner.update_one(*args, **kwargs))

    def update_many(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("update_many", lambda: self.inner.update_many(*args, **kwargs))

    def replace_one(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("replace_one", lambda: self.inner.replace_one(*args, **kwargs))

    def delete_one(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("delete_one", lambda: self.inner.delete_one(*args, **kwargs))

    def delete_many(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("delete_many", lambda: self.inner.delete_many(*args, **kwargs))

    def create_index(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("create_index", lambda: self.inner.create_index(*args, **kwargs))


class RetryingDatabase:
    """A pymongo-API database handing out :class:`RetryingCollection`s."""

    def __init__(self, inner: Any, policy: RetryPolicy | None = None) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy.from_env()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __getitem__(self, name: str) -> RetryingCollection:
        return RetryingCollection(self.inner[name], self.policy)

    def list_collection_names(self, *args: Any, **kwargs: Any) -> list[str]:
        return call_with_retry(
            "metadata.list_collection_names", lambda: self.inner.list_collection_names(*args, **kwargs), self.policy
        )

    def create_collection(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return call_with_retry(
            "metadata.create_collection", lambda: self.inner.create_collection(name, *args, **kwargs), self.policy
        )


def retrying_database(db: Any, policy: RetryPolicy | None = None) -> RetryingDatabase:
    return db if isinstance(db, RetryingDatabase) else RetryingDatabase(db, policy)


__all__ = [
    "RetryPolicy",
    "RetryingCollection",
    "RetryingDatabase",
    "RetryingObjectStore",
    "StoreUnavailable",
    "TransientStoreError",
    "call_with_retry",
    "is_transient",
    "retrying_database",
    "with_retries",
]
