"""`avatarpipe fsck [--repair] [--json] [--upload ID] [--grace-s SECONDS]`: check that every object
in the object store has an `artifacts` document (or is an upload's raw photo) and every document
its objects; `--repair` deletes orphan objects and leftover temp files and drops documents whose
objects are gone (see `ops/fsck.py`).

Exit status: 0 consistent (after `--repair`: consistent once repaired), 1 inconsistencies remain,
2 usage errors (unknown upload).
"""

from __future__ import annotations

from typing import Any

import click

from ops.fsck import DEFAULT_GRACE_S, fsck
from orchestration.app import metadata_store, object_store
from orchestration.commands.common import Reply, answers, fail
from orchestration.settings import Settings
from storage.metadata_store import NotFound


def run_fsck(
    settings: Settings, *, repair: bool = False, upload_id: str | None = None, grace_s: float | None = None
) -> dict[str, Any]:
    """The `--json` answer: {"clean", "before", "after"} (after is null without repairs)."""
    store = object_store(settings)
    with metadata_store(settings) as metadata:
        before, after = fsck(
            store, metadata, do_repair=repair, upload_id=upload_id,
            grace_s=DEFAULT_GRACE_S if grace_s is None else grace_s,
        )  # fmt: skip
    final = after or before
    return {"clean": final.clean, "before": before.to_dict(), "after": after.to_dict() if after else None}


def _human(answer: dict[str, Any]) -> str:
    before, after = answer["before"], answer["after"]
    lines = [
        f"checked {before['objects']} objects, {before['documents']} artifact documents, {before['uploads']} uploads",
    ]
    for finding in before["findings"]:
        where = " ".join(f"{k}={finding[k]}" for k in ("upload_id", "asset_key", "artifact_id") if k in finding)
        lines.append(f"  {finding['kind']}: {finding['key']} {where}".rstrip())
    if before["skipped_busy_uploads"]:
        lines.append(f"  skipped (being processed): {', '.join(before['skipped_busy_uploads'])}")
    if before["young_objects"]:
        lines.append(f"  {before['young_objects']} unreferenced objects younger than the grace period not judged")
    if after is not None:
        lines.append(f"repaired: {before.get('repairs', {})}")
        lines.append("consistent" if after["clean"] else f"still inconsistent: {after['counts']}")
    else:
        lines.append("consistent" if before["clean"] else f"inconsistent: {before['counts']} (run with --repair)")
    return "\n".join(lines)


@click.command("fsck", help="check (and --repair) object store vs artifact documents")
@click.option("--repair", is_flag=True, help="delete orphans, drop documents whose objects are gone")
@click.option("--upload", metavar="ID", help="check one upload only")
@click.option(
    "--grace-s", type=float, default=None, metavar="SECONDS",
    help="leave unreferenced objects younger than this alone (default 600: a step writes its "
    "objects a moment before its document)",
)  # fmt: skip
@answers()
def fsck_command(settings: Settings, repair: bool, upload: str | None, grace_s: float | None) -> Reply:
    try:
        answer = run_fsck(settings, repair=repair, upload_id=upload, grace_s=grace_s)
    except NotFound:
        return fail(2, f"avatarpipe: no such upload: {upload}")
    return Reply(0 if answer["clean"] else 1, answer, _human)
