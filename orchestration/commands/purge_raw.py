"""`avatarpipe purge-raw [--older-than-days N] [--dry-run] [--json]`: apply the raw-photo
retention policy now. Exit status: 0 applied (or listed), 2 no retention window given."""

from __future__ import annotations

from datetime import timedelta

import click

from orchestration.app import metadata_store, object_store
from orchestration.commands.common import Reply, answers, fail
from orchestration.settings import Settings


@click.command("purge-raw", help="delete raw uploads N days after their avatar is ready (data minimisation)")
@click.option(
    "--older-than-days", type=float, default=None,
    help="retention window; default AVATARPIPE_RAW_RETENTION_DAYS (required if unset)",
)  # fmt: skip
@click.option("--dry-run", is_flag=True, help="list what would be deleted")
@answers()
def purge_raw(settings: Settings, older_than_days: float | None, dry_run: bool) -> Reply:
    from ops.raw_retention import purge_raw_uploads  # Dagster: only when purging

    days = settings.raw_retention_days if older_than_days is None else older_than_days
    if days is None or days < 0:
        return fail(2, "avatarpipe: give --older-than-days or set AVATARPIPE_RAW_RETENTION_DAYS")
    store = object_store(settings)
    with metadata_store(settings) as metadata:
        report = purge_raw_uploads(metadata, store, timedelta(days=days), dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    return Reply(0, report.summary(), lambda s: (
        f"{verb} {s['raw_photos_deleted']} raw photos ({s['bytes_freed'] / 1e6:.2f} MB) "
        f"of {s['examined']} ready uploads older than {days:g} days"
    ))  # fmt: skip
