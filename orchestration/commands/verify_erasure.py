"""`avatarpipe verify-erasure --subject ID [--json]`: scan every store (object store listing and
versions, every MongoDB collection, MLflow, the Dagster instance, the raw bytes of every file
under AVATARPIPE_HOME) for the subject id, its upload ids and its photos' content hashes
(ops/verification.py). Writes nothing.

Exit status: 0 nothing found, 1 something found (listed) or a configured store could not be
read (never "clean" then).
"""

from __future__ import annotations

import argparse
import json
import time

from orchestration.settings import Settings


def run_verify(settings: Settings, subject_id: str) -> dict:
    from ops.erasure import needles_for, verify_subject
    from orchestration.commands.erase import erasure_env

    started = time.perf_counter()
    with erasure_env(settings) as env:
        needles = needles_for(env, subject_id)
        report = verify_subject(env, needles)
    answer = report.to_dict()
    answer["needles"] = {"upload_ids": len(needles.upload_ids), "content_hashes": len(needles.content_hashes)}
    answer["seconds"] = round(time.perf_counter() - started, 3)
    return answer


def _human(answer: dict) -> str:
    head = "no trace found" if answer["clean"] else f"FOUND {len(answer['hits'])} trace(s)"
    lines = [f"{head}; scanned {json.dumps(answer['scanned'])} in {answer['seconds']} s"]
    lines += [f"  {h['store']}: {h['location']} ({', '.join(h['kinds'])})" for h in answer["hits"]]
    lines += [f"  not scanned: {store} ({why})" for store, why in answer["skipped"].items()]
    lines += [f"  FAILED to read: {store} ({why})" for store, why in answer["errors"].items()]
    lines += [f"  out of reach: {what}" for what in answer["unreachable"]]
    return "\n".join(lines)


def cmd_verify_erasure(args: argparse.Namespace) -> int:
    from orchestration.cli import stdout_to_stderr

    settings = Settings.from_env()
    with stdout_to_stderr():
        answer = run_verify(settings, args.subject)
    print(json.dumps(answer, default=str) if args.json else _human(answer))
    return 0 if answer["clean"] else 1


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("verify-erasure", help="scan every store for traces of a subject")
    parser.add_argument("--subject", required=True, metavar="ID")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=cmd_verify_erasure)
