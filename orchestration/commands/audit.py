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

from ops.erasure import _default_operator, certificate_view, subject_hash
from orchestration.app import metadata_store
from orchestration.commands.common import Reply, answers
from orchestration.settings import Settings


def subject_audit(settings: Settings, subject_id: str, operator: str | None = None) -> dict[str, Any]:
    hashed = subject_hash(settings.home, subject_id)
    with metadata_store(settings) as metadata:
        subject = metadata.get_subject(subject_id)
        erasure = metadata.get_erasure(hashed)
        if subject is None and erasure is None and not metadata.list_uploads(subject_id):
            return {"status": "unknown_subject"}
        who = {"operator": operator or _default_operator(), "command": "audit"}
        if subject is not None:
            metadata.append_audit("access", subject_id, None, who)
        else:
            metadata.append_pseudonymous_audit("access", hashed, who)
        events = metadata.audit_for(subject_id) + metadata.audit_for_hash(hashed)
        uploads = []
        for upload in metadata.list_uploads(subject_id):
            artifacts = metadata.artifacts_for_upload(upload["_id"], include_superseded=True)
            uploads.append({
                "upload_id": upload["_id"], "status": upload["status"], "created_at": upload.get("created_at"),
                "dagster_run_ids": upload.get("dagster_run_ids", []),
                "artifacts": [{"asset": a["asset_key"], "artifact_id": a["_id"], "sha256": a["sha256"],
                               "model_versions": a.get("model_versions", {}), "run_id": a.get("run_id"),
                               "superseded_by": a.get("superseded_by"), "created_at": a.get("created_at")}
                              for a in artifacts],
                "checks": [{"check": v["check_name"], "passed": v["passed"], "severity": v["severity"],
                            "at": v["created_at"]} for v in metadata.find_validations(upload_id=upload["_id"])],
            })  # fmt: skip
        models_used = sorted({f"{name}@{version}" for u in uploads for a in u["artifacts"]
                              for name, version in a["model_versions"].items()})  # fmt: skip
    return {
        "status": "erased" if erasure and erasure.get("status", "").startswith("completed") else "active",
        "subject": subject,
        "subject_hash": hashed,
        "events": [{"event": e["event"], "at": e["at"], "upload_id": e.get("upload_id"), "details": e.get("details")}
                   for e in sorted(events, key=lambda e: (e["at"], e["seq"]))],
        "uploads": uploads,
        "model_versions_used": models_used,
        "erasure": certificate_view(erasure) if erasure else None,
    }


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
