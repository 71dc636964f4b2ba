"""The upload lease around in-process runs (`avatarpipe run`, `avatarpipe resume`).

See `storage/lease.py` for the lease itself. Here it is tied to the Dagster instance: the run
id is chosen before the lease is taken (it is recorded in the lease), and when the lease of a
holder that died is broken, that holder's Dagster run, which can never finish, is marked
failed so the instance agrees with the metadata store.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from orchestration.settings import Settings

LEASE_TTL_ENV = "AVATARPIPE_LEASE_TTL_S"
_UNFINISHED = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


@dataclass(frozen=True)
class HeldLease:
    upload_id: str
    run_id: str  # the Dagster run id to execute under this lease
    failed_stale_runs: tuple[str, ...]  # runs of dead holders marked failed on acquisition


def lease_ttl_s() -> float:
    from orchestration.config import load_config
    from storage.lease import DEFAULT_TTL_S

    return float(load_config().lease_ttl_s or DEFAULT_TTL_S)


@contextlib.contextmanager
def upload_lease(
    settings: Settings, upload_id: str, *, purpose: str = "run", wait_s: float = 0.0
) -> Iterator[HeldLease]:
    """Hold the upload's lease for the body; raises `storage.lease.UploadBusy` when another
    live runner keeps it for longer than ``wait_s`` seconds."""
    from storage.lease import UploadLease
    from storage.metadata_store import open_metadata_store

    run_id = str(uuid.uuid4())  # Dagster run ids are UUID4 strings
    metadata = open_metadata_store(settings.mongodb_uri, settings.metadata_dir)
    try:
        with UploadLease(
            metadata, upload_id, run_id=run_id, purpose=purpose, ttl_s=lease_ttl_s(), wait_s=wait_s
        ) as lease:
            stale = fail_stale_runs([b.run_id for b in lease.broken if b.run_id])
            yield HeldLease(upload_id=upload_id, run_id=run_id, failed_stale_runs=tuple(stale))
    finally:
        metadata.close()


def fail_stale_runs(run_ids: list[str]) -> list[str]:
    """Mark unfinished Dagster runs of dead lease holders failed; returns the ids marked."""
    if not run_ids:
        return []
    from dagster import DagsterInstance

    instance = DagsterInstance.get()
    marked = []
    for run_id in run_ids:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.status.value in _UNFINISHED:
            instance.report_run_failed(
                run, message="the process running it died; found when another runner took over the upload's lease"
            )
            marked.append(run_id)
    return marked
