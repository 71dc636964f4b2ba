"""`avatarpipe fsck [--repair] [--json] [--upload ID] [--grace-s SECONDS]`: check that every object
in the object store has an `artifacts` document (or is an upload's raw photo) and every document
its objects; `--repair` deletes orphan objects and leftover temp files and drops documents whose
objects are gone (see `ops/fsck.py`).

Exit status: 0 consistent (after `--repair`: consistent once repaired), 1 inconsistencies remain,
2 usage errors (unknown upload).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from orchestration.settings import Settings, prepare_environment


def run_fsck(
    settings: Settings, *, repair: bool = False, upload_id: str | None = None, grace_s: float | None = None
) -> dict[str, Any]:
    """The `--json` answer: {"clean", "before", "after"} (after is null without repairs)."""
    from ops.fsck import DEFAULT_GRACE_S, fsck
    from storage.metadata_store import open_metadata_store
    from storage.object_store import object_store_from_config
    from storage.retry import with_retries

    store = with_retries(object_store_from_config(settings.object_store_config()))
    metadata = open_metadata_store(settings.mongodb_uri, settings.metadata_dir)
    try:
        before, after = fsck(
            store, metadata, do_repair=repair, upload_id=upload_id,
            grace_s=DEFAULT_GRACE_S if grace_s is None else grace_s,
        )  # fmt: skip
    finally:
        metadata.close()
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


def cmd_fsck(args: argparse.Namespace) -> int:
    from orchestration.cli import stdout_to_stderr
    from storage.metadata_store import NotFound

    settings = Settings.from_env()
    prepare_environment(settings)
    try:
        with stdout_to_stderr():
            answer = run_fsck(settings, repair=args.repair, upload_id=args.upload, grace_s=args.grace_s)
    except NotFound:
        print(f"avatarpipe: no such upload: {args.upload}", file=sys.stderr)
        return 2
    print(json.dumps(answer, default=str) if args.json else _human(answer))
    return 0 if answer["clean"] else 1


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("fsck", help="check (and --repair) object store vs artifact documents")
    parser.add_argument("--repair", action="store_true", help="delete orphans, drop documents whose objects are gone")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--upload", metavar="ID", help="check one upload only")
    parser.add_argument(
        "--grace-s", type=float, default=None, metavar="SECONDS",
        help="leave unreferenced objects younger than this alone (default 600: a step writes its "
        "objects a moment before its document)",
    )  # fmt: skip
    parser.set_defaults(func=cmd_fsck)
