"""`avatarpipe verify-erasure --subject ID [--json]`: scan every store (object store listing and
versions, every MongoDB collection, MLflow, the Dagster instance, the raw bytes of every file
under AVATARPIPE_HOME) for the subject id, its upload ids and its photos' content hashes
(ops/verification.py). Writes nothing.

Exit status: 0 nothing found, 1 something found (listed) or a configured store could not be
read (never "clean" then).
"""

from __future__ import annotations

import json

import click

from orchestration.app import verify_erasure
from orchestration.commands.common import Reply, answers
from orchestration.settings import Settings


def _human(answer: dict) -> str:
    head = "no trace found" if answer["clean"] else f"FOUND {len(answer['hits'])} trace(s)"
    lines = [f"{head}; scanned {json.dumps(answer['scanned'])} in {answer['seconds']} s"]
    lines += [f"  {h['store']}: {h['location']} ({', '.join(h['kinds'])})" for h in answer["hits"]]
    lines += [f"  not scanned: {store} ({why})" for store, why in answer["skipped"].items()]
    lines += [f"  FAILED to read: {store} ({why})" for store, why in answer["errors"].items()]
    lines += [f"  out of reach: {what}" for what in answer["unreachable"]]
    return "\n".join(lines)


@click.command("verify-erasure", help="scan every store for traces of a subject")
@click.option("--subject", required=True, metavar="ID")
@answers()
def verify_erasure_command(settings: Settings, subject: str) -> Reply:
    answer = verify_erasure(settings, subject)
    return Reply(0 if answer["clean"] else 1, answer, _human)
