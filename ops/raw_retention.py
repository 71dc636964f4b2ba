"""Data minimisation: the raw upload is deleted once its avatar is ready.

The policy (`raw_retention_policy`, one named value for `avatarpipe config show` and the
docs/compliance.md): by default the raw upload goes the moment the upload becomes `ready` (the final
quality check calls `delete_raw_when_ready`); a deployment opts into keeping raw uploads by
setting ``AVATARPIPE_RAW_RETENTION_DAYS=N`` (N > 0), and the daily `raw_retention_schedule`
then deletes them N days after `ready`. The schedule runs in either case: with the default
policy it is a sweep (0 days) for an upload whose deletion at `ready` did not happen (a crash
in between, an upload made ready by `avatarpipe resume`).

The normalised `photo` artifact (upright, metadata-free) is kept, so every model upgrade can
still be reprocessed: reprocessing never re-runs `photo` (no model feeds it). Re-running
`photo` itself after the raw bytes are gone fails with `RAW_PHOTO_EXPIRED`, which says so.
Each deletion is recorded on the upload (`raw_deleted_at`) and in the audit log.
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from dagster import Config, DefaultScheduleStatus, OpExecutionContext, ScheduleDefinition, job, op

from storage.metadata_store import MetadataStore, utcnow
from storage.object_store import ObjectStore

RETENTION_REASON = "raw_photo_retention"
DELETED_WHEN_READY = "raw_photo_deleted_when_ready"
RAW_RETENTION_ENV = "AVATARPIPE_RAW_RETENTION_DAYS"


@dataclass(frozen=True)
class RawRetentionPolicy:
    """How long a raw upload outlives its avatar: ``days=None`` (the default) means not at all."""

    days: float | None = None

    @property
    def delete_when_ready(self) -> bool:
        return self.days is None

    @property
    def sweep_after(self) -> timedelta:
        """The age (since `ready`) at which the daily schedule deletes a raw upload."""
        return timedelta(days=self.days or 0.0)

    def describe(self) -> str:
        if self.delete_when_ready:
            return "raw uploads are deleted as soon as their avatar is ready (default)"
        return f"raw uploads are kept {self.days:g} days after their avatar is ready ({RAW_RETENTION_ENV})"

    def to_dict(self) -> dict:
        return {
            "delete_when_ready": self.delete_when_ready,
            "keep_days": self.days,
            "policy": self.describe(),
        }


def raw_retention_policy(days: float | None = None) -> RawRetentionPolicy:
    """The policy in force for the configured ``days`` (`AVATARPIPE_RAW_RETENTION_DAYS`, validated
    by orchestration/config.py): None or 0 -> delete when ready; a positive number -> keep that long."""
    if days is not None and days < 0:
        raise ValueError(f"{RAW_RETENTION_ENV} must not be negative, got {days!r}")
    return RawRetentionPolicy(days=days or None)


def delete_raw_when_ready(
    metadata: MetadataStore, store: ObjectStore, upload_id: str, policy: RawRetentionPolicy | None = None
) -> bool:
    """Under the default policy, delete the raw upload of ``upload_id`` (just made `ready`);
    True when it was deleted. ``policy``: the configured one (the caller's; default: delete). The normalised `photo` must exist: it is what reprocessing reads."""
    policy = policy or raw_retention_policy()
    if not policy.delete_when_ready:
        return False
    upload = metadata.get_upload(upload_id)
    if upload is None or upload.get("status") != "ready" or upload.get("raw_deleted_at") is not None:
        return False
    if not _has_normalised_photo(metadata, upload_id):
        return False
    _delete_raw(metadata, store, upload, DELETED_WHEN_READY)
    return True


def _delete_raw(metadata: MetadataStore, store: ObjectStore, upload: dict, reason: str) -> int:
    size = store.stat(upload["photo_key"]).bytes if store.exists(upload["photo_key"]) else 0
    store.delete(upload["photo_key"])
    metadata.mark_raw_photo_deleted(upload["_id"], reason)
    metadata.append_audit(
        "raw_photo_deleted", upload["subject_id"], upload["_id"], {"reason": reason, "bytes": size}
    )
    return size


@dataclass
class RawRetentionReport:
    cutoff: datetime
    dry_run: bool
    examined: int = 0
    deleted_uploads: list[str] = field(default_factory=list)
    bytes_freed: int = 0

    def summary(self) -> dict:
        return {
            "cutoff": self.cutoff.isoformat(),
            "dry_run": self.dry_run,
            "examined": self.examined,
            "raw_photos_deleted": len(self.deleted_uploads),
            "upload_ids": list(self.deleted_uploads),
            "bytes_freed": self.bytes_freed,
        }


def purge_raw_uploads(
    metadata: MetadataStore,
    store: ObjectStore,
    older_than: timedelta,
    now: datetime | None = None,
    dry_run: bool = False,
) -> RawRetentionReport:
    """Delete the raw bytes of uploads that have been `ready` since before `now - older_than`."""
    cutoff = (now or utcnow()) - older_than
    report = RawRetentionReport(cutoff=cutoff, dry_run=dry_run)
    for upload in metadata.list_uploads(status="ready"):
        report.examined += 1
        if upload.get("raw_deleted_at") is not None or upload["updated_at"] > cutoff:
            continue
        if not _has_normalised_photo(metadata, upload["_id"]):
            continue  # never remove the only copy a reprocess could start from
        report.deleted_uploads.append(upload["_id"])
        if dry_run:
            report.bytes_freed += (
                store.stat(upload["photo_key"]).bytes if store.exists(upload["photo_key"]) else 0
            )
            continue
        report.bytes_freed += _delete_raw(metadata, store, upload, RETENTION_REASON)
    return report


def _has_normalised_photo(metadata: MetadataStore, upload_id: str) -> bool:
    return metadata.current_artifact(upload_id, "photo") is not None


class RawRetentionConfig(Config):
    older_than_days: float = 30.0
    dry_run: bool = False


@op(required_resource_keys={"metadata", "object_store"})
def purge_raw_uploads_op(context: OpExecutionContext, config: RawRetentionConfig) -> dict:
    report = purge_raw_uploads(
        context.resources.metadata.store(),
        context.resources.object_store.store(),
        timedelta(days=config.older_than_days),
        dry_run=config.dry_run,
    )
    summary = report.summary()
    context.log.info(
        f"raw retention: {summary['raw_photos_deleted']} raw photos deleted "
        f"({summary['bytes_freed']} bytes) of {summary['examined']} ready uploads"
    )
    return {k: v for k, v in summary.items() if k != "upload_ids"}


@job(description="Delete raw uploads N days after their avatar is ready (data minimisation).")
def raw_retention_job() -> None:
    purge_raw_uploads_op()


def raw_retention_schedule(days: float | None) -> ScheduleDefinition:
    """Daily at 03:30, running by default: deletes raw uploads ``days`` after `ready` (the
    AVATARPIPE_RAW_RETENTION_DAYS opt-in), or, with the default policy (None), sweeps up any
    that the deletion at `ready` missed."""
    policy = RawRetentionPolicy(days=days or None)
    return ScheduleDefinition(
        name="raw_retention_schedule",
        job=raw_retention_job,
        cron_schedule="30 3 * * *",
        run_config={"ops": {"purge_raw_uploads_op": {"config": {"older_than_days": policy.days or 0.0}}}},
        default_status=DefaultScheduleStatus.RUNNING,
    )
