"""`avatarpipe erase --subject ID [--operator NAME] [--json]`: erase one subject from every store
(object store, MongoDB, MLflow, the Dagster instance, sqlite free pages, Data Docs), verify it,
and print the certificate (see ops/erasure.py).

Exit status: 0 erased and verified clean (or already erased), 1 erased but the verification
scan still found something (listed), 2 unknown subject, 3 an upload is still being processed
(its runner did not stop in time: re-run to finish; the erasure resumes).
"""

from __future__ import annotations

import json

import click

from orchestration.app import erase, request_erasure
from orchestration.commands.common import Reply, answers
from orchestration.settings import Settings

# by the outcome's status; an erasure that ran exits 0 when verified clean, else 1
EXIT_CODES = {"already_erased": 0, "requested": 0, "unknown_subject": 2, "busy": 3}

def _human(answer: dict) -> str:
    if answer["status"] == "requested":
        return f"requested: erasure id {answer['erasure_id']} (launch the erase_subject job with it)"
    if answer["status"] in ("unknown_subject", "busy"):
        return f"{answer['status']}: {answer['message']}"
    cert = answer["certificate"]
    head = f"{answer['status']}: certificate {cert['_id'][:16]}… requested {cert.get('requested_at')}"
    lines = [f"{head} completed {cert.get('completed_at')} by {cert.get('operator')}"]
    for store, counts in (cert.get("counts") or {}).items():
        lines.append(f"  {store}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    ver = cert.get("verification") or {}
    lines.append(f"  verification: {'clean' if ver.get('clean') else 'FOUND ' + json.dumps(ver.get('hits_by_store'))}"
                 f" scanned {json.dumps(ver.get('scanned'))}")  # fmt: skip
    for hit in (answer.get("verification") or {}).get("hits", []):
        lines.append(f"    {hit['store']}: {hit['location']} ({', '.join(hit['kinds'])})")
    return "\n".join(lines)


@click.command("erase", help="erase one subject from every store and print the certificate")
@click.option("--subject", required=True, metavar="ID")
@click.option("--operator", help="who requested it (default: the OS user)")
@click.option("--lease-wait-s", type=float, default=30.0, metavar="SECONDS",
              help="how long to wait for a running upload to stop (default 30)")  # fmt: skip
@click.option("--request-only", is_flag=True,
              help="only record the request and print its erasure id (for the erase_subject Dagster job)")  # fmt: skip
@answers()
def erase_command(settings: Settings, subject: str, operator: str | None, lease_wait_s: float, request_only: bool) -> Reply:
    if request_only:
        outcome = request_erasure(settings, subject, operator)
    else:
        outcome = erase(settings, subject, operator, lease_wait_s)
    return Reply(EXIT_CODES.get(outcome.status, 0 if outcome.clean else 1), outcome.answer, _human)
