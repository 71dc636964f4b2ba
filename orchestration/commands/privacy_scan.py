"""`avatarpipe privacy-scan [--prefix P] [--json]`: report identifying metadata (GPS, device,
owner, timestamps, thumbnails, free text) found in any stored image - raw uploads, normalised
photos, previews, textures, and the images embedded in GLBs (ops/privacy_scan.py). Writes
nothing. Subject ids are not printed: findings name objects by `{upload}/{asset}/{file}`.

Exit status: 0 nothing found, 1 metadata found (listed).
"""

from __future__ import annotations

import argparse
import json

from orchestration.settings import Settings


def run_scan(settings: Settings, prefix: str = "") -> dict:
    from ops.privacy_scan import scan_store
    from storage.object_store import key_without_subject, object_store_from_config

    report = scan_store(object_store_from_config(settings.object_store_config()), prefix)
    answer = report.to_dict()
    for finding in answer["findings"]:
        finding["key"] = key_without_subject(finding["key"])
    return answer


def _human(answer: dict) -> str:
    head = (
        "no identifying metadata found"
        if answer["clean"]
        else f"FOUND metadata in {len(answer['findings'])} image(s)"
    )
    lines = [f"{head}; scanned {answer['objects_scanned']} objects, {answer['images_scanned']} images"]
    for f in answer["findings"]:
        where = f"{f['key']} {f['part']}".strip()
        lines.append(f"  {where} ({f['format']}): {', '.join(f['metadata'])}")
    return "\n".join(lines)


def cmd_privacy_scan(args: argparse.Namespace) -> int:
    from orchestration.cli import stdout_to_stderr

    settings = Settings.from_env()
    with stdout_to_stderr():
        answer = run_scan(settings, args.prefix)
    print(json.dumps(answer) if args.json else _human(answer))
    return 0 if answer["clean"] else 1


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("privacy-scan", help="report identifying metadata in any stored image")
    parser.add_argument("--prefix", default="", help="only objects under this key prefix")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=cmd_privacy_scan)
