"""Retention of superseded artifacts: keep them for a while (rollback, audit), then delete.

Reprocessing never deletes: the previous artifact document is linked to its successor by
`superseded_by` (and stamped `superseded_at`). This job deletes documents superseded more than
`older_than_days` ago together with their objects, except

* documents still named as a parent by a document that is kept (lineage stays intact), and
* objects still referenced by a kept document (keys are content addressed, so a rollback that
  reproduces the same bytes shares the object with the superseded version).

Objects go first, then the documents, then one `purge_superseded` audit event per upload, so
an interrupted purge is finished by the next one instead of leaving orphaned objects behind.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from dagster import Config, DefaultScheduleStatus, OpExecutionContext, ScheduleDefinition, job, op

from storage.metadata_store import MetadataStore, utcnow
from storage.object_store import ObjectStore

DEFAULT_RETENTION_DAYS = 30.0


@dataclass
class RetentionReport:
    cutoff: datetime
    dry_run: bool
    uploads: int = 0
    artifacts_deleted: list[str] = field(default_factory=list)
    artifacts_kept_as_parents: list[str] = field(default_factory=list)
    objects_deleted: list[str] = field(default_factory=list)
    objects_kept_shared: list[str] = field(default_factory=list)
    bytes_freed: int = 0

    def summary(self) -> dict:
        return {
            "cutoff": self.cutoff.isoformat(),
            "dry_run": self.dry_run,
            "uploads": self.uploads,
            "artifacts_deleted": len(self.artifacts_deleted),
            "artifacts_kept_as_parents": len(self.artifacts_kept_as_parents),
            "objects_deleted": len(self.objects_deleted),
            "objects_kept_shared": len(self.objects_kept_shared),
            "bytes_freed": self.bytes_freed,
        }


def purge_superseded(
    metadata: MetadataStore,
    store: ObjectStore,
    older_than: timedelta,
    now: datetime | None = None,
    dry_run: bool = False,
) -> RetentionReport:
    """Delete artifacts superseded before `now - older_than` (see the module docstring)."""
    cutoff = (now or utcnow()) - older_than
    report = RetentionReport(cutoff=cutoff, dry_run=dry_run)
    candidates: dict[str, list[dict]] = {}
    for doc in metadata.superseded_artifacts(before=cutoff):
        candidates.setdefault(doc["upload_id"], []).append(doc)
    for upload_id, expired in candidates.items():
        everything = metadata.artifacts_for_upload(upload_id, include_superseded=True)
        delete = _deletable(expired, everything)
        report.artifacts_kept_as_parents += [d["_id"] for d in expired if d["_id"] not in delete]
        if not delete:
            continue
        kept_keys = {k for d in everything if d["_id"] not in delete for k in _object_keys(d)}
        doomed_keys = sorted({k for d in everything if d["_id"] in delete for k in _object_keys(d)})
        freed = []
        for key in doomed_keys:
            if key in kept_keys:
                report.objects_kept_shared.append(key)
                continue
            if dry_run:
                freed.append(key)
                report.bytes_freed += _size(store, key)
                continue
            size = _size(store, key)
            if store.delete(key):
                freed.append(key)
                report.bytes_freed += size
        report.objects_deleted += freed
        ids = sorted(delete)
        report.artifacts_deleted += ids
        report.uploads += 1
        if dry_run:
            continue
        metadata.delete_artifacts(ids)
        subject = next(iter(expired))["subject_id"]
        metadata.append_audit(
            "purge_superseded",
            subject,
            upload_id,
            {"artifact_ids": ids, "object_keys": freed, "cutoff": cutoff.isoformat()},
        )
    return report


def _deletable(expired: list[dict], everything: list[dict]) -> set[str]:
    """Expired ids minus those a kept document names as parent (transitively)."""
    delete = {d["_id"] for d in expired}
    by_id = {d["_id"]: d for d in everything}
    changed = True
    while changed:
        changed = False
        for doc in by_id.values():
            if doc["_id"] in delete:
                continue
            for parent in doc.get("parent_ids", ()):
                if parent in delete:
                    delete.discard(parent)
                    changed = True
    return delete


def _object_keys(doc: dict) -> Iterable[str]:
    yield doc["key"]
    yield from (doc.get("extra_files") or {}).values()


def _size(store: ObjectStore, key: str) -> int:
    try:
        return store.stat(key).bytes
    except KeyError:  # already gone (an interrupted earlier purge)
        return 0


class RetentionConfig(Config):
    older_than_days: float = DEFAULT_RETENTION_DAYS
    dry_run: bool = False


@op(required_resource_keys={"metadata", "object_store"})
def purge_superseded_artifacts(context: OpExecutionContext, config: RetentionConfig) -> dict:
    """Delete artifacts superseded more than `older_than_days` ago (objects, then documents)."""
    report = purge_superseded(
        context.resources.metadata.store(),
        context.resources.object_store.store(),
        older_than=timedelta(days=config.older_than_days),
        dry_run=config.dry_run,
    )
    summary = report.summary()
    context.log.info(f"retention: {summary}")
    context.add_output_metadata(summary)
    return summary


@job(description="Delete superseded artifacts (objects and documents) past the retention window.")
def retention_job() -> None:
    purge_superseded_artifacts()


# Daily at 03:00, off by default: an operator turns it on (UI or deployment) with the window.
retention_schedule = ScheduleDefinition(
    name="retention_schedule",
    job=retention_job,
    cron_schedule="0 3 * * *",
    default_status=DefaultScheduleStatus.STOPPED,
    description=f"Runs retention_job (superseded artifacts older than {DEFAULT_RETENTION_DAYS:g} days by default).",
)
