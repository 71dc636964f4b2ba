"""`avatarpipe privacy-scan [--prefix P] [--json]`: report identifying metadata (GPS, device,
owner, timestamps, thumbnails, free text) found in any stored image - raw uploads, normalised
photos, previews, textures, and the images embedded in GLBs (ops/privacy_scan.py). Writes
nothing. Subject ids are not printed: findings name objects by `{upload}/{asset}/{file}`.

Exit status: 0 nothing found, 1 metadata found (listed).
"""

from __future__ import annotations

import click

from ops.privacy_scan import scan_store
from orchestration.app import object_store
from orchestration.commands.common import Reply, answers
from orchestration.settings import Settings
from storage.object_store import key_without_subject


def run_scan(settings: Settings, prefix: str = "") -> dict:
    report = scan_store(object_store(settings), prefix)
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


@click.command("privacy-scan", help="report identifying metadata in any stored image")
@click.option("--prefix", default="", help="only objects under this key prefix")
@answers(prepare=False)
def privacy_scan(settings: Settings, prefix: str) -> Reply:
    answer = run_scan(settings, prefix)
    return Reply(0 if answer["clean"] else 1, answer, _human)
