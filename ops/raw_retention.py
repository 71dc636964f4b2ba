"""Data minimisation: delete raw uploads N days after their avatar is ready.

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
        size = store.stat(upload["photo_key"]).bytes if store.exists(upload["photo_key"]) else 0
        report.deleted_uploads.append(upload["_id"])
        report.bytes_freed += size
        if dry_run:
            continue
        store.delete(upload["photo_key"])
        metadata.mark_raw_photo_deleted(upload["_id"], RETENTION_REASON)
        metadata.append_audit(
            "raw_photo_deleted", upload["subject_id"], upload["_id"], {"reason": RETENTION_REASON, "bytes": size}
        )
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
    """Daily at 03:30; running by default only when AVATARPIPE_RAW_RETENTION_DAYS is set."""
    return ScheduleDefinition(
        name="raw_retention_schedule",
        job=raw_retention_job,
        cron_schedule="30 3 * * *",
        run_config={"ops": {"purge_raw_uploads_op": {"config": {"older_than_days": days or 30.0}}}},
        default_status=DefaultScheduleStatus.RUNNING if days is not None else DefaultScheduleStatus.STOPPED,
    )
