"""`avatarpipe erase --subject ID [--operator NAME] [--json]`: erase one subject from every store
(object store, MongoDB, MLflow, the Dagster instance, sqlite free pages, Data Docs), verify it,
and print the certificate (see ops/erasure.py).

Exit status: 0 erased and verified clean (or already erased), 1 erased but the verification
scan still found something (listed), 2 unknown subject, 3 an upload is still being processed
(its runner did not stop in time: re-run to finish; the erasure resumes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from orchestration.settings import Settings, prepare_environment


@contextlib.contextmanager
def erasure_env(settings: Settings, *, lease_wait_s: float = 30.0) -> Iterator[Any]:
    """Every store of this deployment as an `ops.erasure.ErasureEnv` (closed afterwards)."""
    from dagster import DagsterInstance

    from ops.erasure import ErasureEnv
    from orchestration.registry import RegistryLocation
    from storage.metadata_store import open_metadata_store
    from storage.object_store import object_store_from_config

    prepare_environment(settings)
    metadata = open_metadata_store(settings.mongodb_uri, settings.metadata_dir)
    location = RegistryLocation.for_settings(settings)
    mlflow_uri = location.tracking_uri if (location.db_path is None or location.db_path.is_file()) else None
    try:
        instance_context: Any = DagsterInstance.get()
    except Exception as exc:  # noqa: BLE001 - a store that cannot be opened fails the verification
        from ops.erasure import Unopenable

        instance_context = contextlib.nullcontext(Unopenable(exc))
    try:
        with instance_context as instance:
            yield ErasureEnv(
                home=settings.home,
                metadata=metadata,
                object_store=object_store_from_config(settings.object_store_config()),
                dagster_instance=instance,
                mlflow_tracking_uri=mlflow_uri,
                mlflow_artifact_root=location.artifact_location,
                lease_wait_s=lease_wait_s,
                rebuild_data_docs=lambda: _rebuild_data_docs(settings),
            )
    finally:
        metadata.close()


def _rebuild_data_docs(settings: Settings) -> None:
    """The Data Docs site again, from the validations that remain (none of the erased subject)."""
    from orchestration.commands.quality_report import build_data_docs
    from storage.metadata_store import open_metadata_store

    metadata = open_metadata_store(settings.mongodb_uri, settings.metadata_dir)
    try:
        docs = metadata.find_validations()
    finally:
        metadata.close()
    if docs:
        build_data_docs(settings.home, docs)


def run_erase(settings: Settings, subject_id: str, operator: str | None = None, lease_wait_s: float = 30.0) -> tuple[int, dict]:
    """(exit status, the `--json` answer)."""
    from ops.erasure import UnknownSubject, erase_subject
    from storage.lease import UploadBusy

    with erasure_env(settings, lease_wait_s=lease_wait_s) as env:
        try:
            result = erase_subject(env, subject_id, operator, progress=lambda m: print(m, file=sys.stderr))
        except UnknownSubject:
            return 2, {"status": "unknown_subject",
                       "message": "no store holds data of this subject and it was never erased here"}  # fmt: skip
        except UploadBusy as exc:
            return 3, {"status": "busy", "message": f"{exc}; the erasure is recorded and resumes when re-run"}
    answer: dict[str, Any] = {"status": result.status, "resumed": result.resumed, "certificate": result.certificate}
    if result.verification is not None:
        answer["verification"] = result.verification.to_dict()
    return (0 if result.status == "already_erased" or result.clean else 1), answer


def run_request(settings: Settings, subject_id: str, operator: str | None = None) -> tuple[int, dict]:
    """Record the request only; the `erase_subject` job (config: erasure_id) carries it out."""
    from ops.erasure import UnknownSubject, request_erasure

    with erasure_env(settings) as env:
        try:
            erasure_id = request_erasure(env, subject_id, operator)
        except UnknownSubject:
            return 2, {"status": "unknown_subject", "message": "no store holds data of this subject"}
    return 0, {"status": "requested", "erasure_id": erasure_id,
               "message": "launch the erase_subject job with this erasure_id"}  # fmt: skip


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


def cmd_erase(args: argparse.Namespace) -> int:
    from orchestration.cli import stdout_to_stderr

    settings = Settings.from_env()
    with stdout_to_stderr():
        if args.request_only:
            code, answer = run_request(settings, args.subject, args.operator)
        else:
            code, answer = run_erase(settings, args.subject, args.operator, args.lease_wait_s)
    print(json.dumps(answer, default=str) if args.json else _human(answer))
    return code


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("erase", help="erase one subject from every store and print the certificate")
    parser.add_argument("--subject", required=True, metavar="ID")
    parser.add_argument("--operator", help="who requested it (default: the OS user)")
    parser.add_argument("--lease-wait-s", type=float, default=30.0, metavar="SECONDS",
                        help="how long to wait for a running upload to stop (default 30)")  # fmt: skip
    parser.add_argument("--request-only", action="store_true",
                        help="only record the request and print its erasure id (for the erase_subject Dagster job)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=cmd_erase)
