"""One writer per upload: a lease in the upload's metadata document.

Dagster's QueuedRunCoordinator limits runs per ``avatarpipe/upload_id`` tag, but only for
queued runs (UI, sensors, daemon). ``avatarpipe run``/``resume`` execute in-process, so they
take this lease first: ``uploads.lease = {token, host, pid, run_id, purpose, acquired_at,
expires_at}``, acquired with one conditional update (free, expired, or ours) and kept alive by
a heartbeat thread while the run executes. A second runner waits up to ``wait_s`` and then
raises :class:`UploadBusy`.

A holder that died (SIGKILL, OOM, a lost machine) stops renewing and the lease expires after
``ttl_s``; a holder on this same host whose process no longer exists is recognised at once
and its lease broken, so a re-run right after a crash need not wait for the expiry.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Self

from storage.metadata_store import MetadataStore

DEFAULT_TTL_S = 120.0  # renewed every ttl/3 while the holder lives

_log = logging.getLogger(__name__)


class UploadBusy(Exception):
    """Another live runner holds the upload's lease."""

    def __init__(self, upload_id: str, holder: dict[str, Any] | None) -> None:
        self.upload_id = upload_id
        self.holder = holder or {}
        who = f"pid {self.holder.get('pid')} on {self.holder.get('host')}" if self.holder else "another runner"
        super().__init__(
            f"upload {upload_id} is being processed by {who} ({self.holder.get('purpose', 'run')}, "
            f"lease until {self.holder.get('expires_at')})"
        )


@dataclass(frozen=True)
class BrokenLease:
    """The lease of a holder found dead when this one was acquired."""

    token: str
    run_id: str | None
    host: str | None
    pid: int | None


def holder_is_dead_here(holder: dict[str, Any]) -> bool:
    """True when the holder ran on this host and its process no longer exists."""
    if holder.get("host") != socket.gethostname() or not holder.get("pid"):
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by someone else
        return False
    return False


class UploadLease:
    """Context manager holding an upload's lease, renewed by a daemon thread.

    ``broken`` lists leases of dead holders this one replaced (their Dagster runs never
    finished: the caller marks them failed).
    """

    def __init__(
        self,
        metadata: MetadataStore,
        upload_id: str,
        *,
        run_id: str | None = None,
        purpose: str = "run",
        ttl_s: float = DEFAULT_TTL_S,
        wait_s: float = 0.0,
        poll_s: float = 0.5,
    ) -> None:
        self.metadata = metadata
        self.upload_id = upload_id
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.holder = {
            "token": secrets.token_hex(8),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "run_id": run_id,
            "purpose": purpose,
        }
        self.broken: list[BrokenLease] = []
        self.lost = threading.Event()  # set if a renewal found the lease taken
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> str:
        return self.holder["token"]

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_s
        while True:
            if self.metadata.acquire_upload_lease(self.upload_id, self.holder, self.ttl_s) is not None:
                return
            current = self.metadata.upload_lease(self.upload_id)
            if current and holder_is_dead_here(current):
                if self.metadata.release_upload_lease(self.upload_id, current["token"]):
                    self.broken.append(
                        BrokenLease(current["token"], current.get("run_id"), current.get("host"), current.get("pid"))
                    )
                continue
            if time.monotonic() >= deadline:
                raise UploadBusy(self.upload_id, current)
            time.sleep(self.poll_s)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl_s)
            self._thread = None
        self.metadata.release_upload_lease(self.upload_id, self.token)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.metadata.renew_upload_lease(self.upload_id, self.token, self.ttl_s):
                    self.lost.set()
                    return
            except Exception as exc:  # noqa: BLE001 - a failed renewal is retried at the next beat
                _log.warning("lease renewal for upload %s failed (%s)", self.upload_id, type(exc).__name__)

    def __enter__(self) -> Self:
        self.acquire()
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.upload_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["DEFAULT_TTL_S", "BrokenLease", "UploadBusy", "UploadLease", "holder_is_dead_here"]
