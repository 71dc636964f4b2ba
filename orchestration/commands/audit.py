"""`avatarpipe audit --subject ID [--json]`: the full history of one subject from the metadata
store: audit events (ingests, materialisations, reprocessing, resumes, accesses...), its uploads,
the model versions each artifact was built with, quality checks, and the erasure certificate.
After erasure only the certificate and the pseudonymised events remain, found through the
salted hash of the subject id.

Reading a subject's history is itself an access: an `access` audit event is recorded (for an
erased subject only under its hash). Exit status: 0 found, 2 nothing known of the subject.
"""

from __future__ import annotations

import json
from typing import Any

import click

from orchestration.app import subject_audit
from orchestration.commands.common import Reply, answers
from orchestration.settings import Settings


def _human(answer: dict[str, Any]) -> str:
    if answer["status"] == "unknown_subject":
        return "unknown subject: no history held"
    lines = [f"subject {answer['status']} (hash {answer['subject_hash'][:16]}…)"]
    lines += [f"  {e['at']} {e['event']:<18} {e['upload_id'] or ''} {json.dumps(e['details'], default=str)}"
              for e in answer["events"]]  # fmt: skip
    for upload in answer["uploads"]:
        lines.append(f"  upload {upload['upload_id']}: {upload['status']}, {len(upload['artifacts'])} artifacts")
    if answer["model_versions_used"]:
        lines.append(f"  model versions used: {', '.join(answer['model_versions_used'])}")
    if answer["erasure"]:
        cert = answer["erasure"]
        lines.append(f"  erasure certificate: {cert['status']} at {cert.get('completed_at')} by {cert.get('operator')}; "
                     f"verification clean={cert.get('verification', {}).get('clean')}")  # fmt: skip
    return "\n".join(lines)


@click.command("audit", help="full history of one subject (or its erasure certificate)")
@click.option("--subject", required=True, metavar="ID")
@click.option("--operator", help="who is reading it (default: the OS user)")
@answers()
def audit(settings: Settings, subject: str, operator: str | None) -> Reply:
    answer = subject_audit(settings, subject, operator)
    return Reply(2 if answer["status"] == "unknown_subject" else 0, answer, _human)
