"""`avatarpipe purge-raw`: apply the raw-photo retention policy now."""

import argparse
import json
import sys
from datetime import timedelta


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "purge-raw", help="delete raw uploads N days after their avatar is ready (data minimisation)"
    )
    parser.add_argument(
        "--older-than-days",
        type=float,
        default=None,
        help="retention window; default AVATARPIPE_RAW_RETENTION_DAYS (required if unset)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=cmd_purge_raw)


def cmd_purge_raw(args: argparse.Namespace) -> int:
    from ops.raw_retention import purge_raw_uploads
    from orchestration.settings import Settings, prepare_environment
    from storage.metadata_store import open_metadata_store
    from storage.object_store import object_store_from_config

    settings = Settings.from_env()
    days = args.older_than_days
    if days is None:
        days = settings.raw_retention_days
    if days is None or days < 0:
        print("avatarpipe: give --older-than-days or set AVATARPIPE_RAW_RETENTION_DAYS", file=sys.stderr)
        return 2
    prepare_environment(settings)
    store = object_store_from_config(settings.object_store_config())
    metadata = open_metadata_store(settings.mongodb_uri, settings.metadata_dir)
    try:
        report = purge_raw_uploads(metadata, store, timedelta(days=days), dry_run=args.dry_run)
    finally:
        metadata.close()
    summary = report.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        verb = "would delete" if args.dry_run else "deleted"
        print(
            f"{verb} {summary['raw_photos_deleted']} raw photos ({summary['bytes_freed'] / 1e6:.2f} MB) "
            f"of {summary['examined']} ready uploads older than {days:g} days"
        )
    return 0
