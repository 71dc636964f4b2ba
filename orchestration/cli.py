"""`avatarpipe` command line. Progress goes to stderr; `--json` prints exactly one JSON object."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.catalogue import PIPELINE_VERSION
from orchestration.settings import Settings, prepare_environment
from storage.retry import StoreUnavailable

if TYPE_CHECKING:
    from storage.object_store import ObjectStore

ASSET_ORDER = ("photo", "keypoints", "smplx_params", "mesh", "rigged_glb")
SUBJECT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Ingested:
    upload_id: str
    subject_id: str
    photo_key: str


def new_upload_id() -> str:
    return "u_" + secrets.token_hex(8)


def new_subject_id() -> str:
    return "s_" + secrets.token_hex(6)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Keep stdout clean for the JSON answer, also from C libraries writing to fd 1."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def plan_ingest(data: bytes, filename: str, subject_id: str | None) -> Ingested:
    """Choose the ids and the raw key (content addressed) of a new upload; nothing is written."""
    from storage.object_store import artifact_key, sha256_hex

    subject = subject_id or new_subject_id()
    if not SUBJECT_ID_PATTERN.match(subject):
        raise ValueError("subject ids may use letters, digits, '_' and '-' (at most 64)")
    upload_id = new_upload_id()
    suffix = Path(filename).suffix.lower().lstrip(".")
    ext = suffix if re.fullmatch(r"[a-z0-9]{1,5}", suffix) else "bin"
    key = artifact_key(subject, upload_id, "raw", sha256_hex(data), ext)
    return Ingested(upload_id=upload_id, subject_id=subject, photo_key=key)


def register_upload(settings: Settings, ingested: Ingested, details: dict[str, Any], hints: dict | None = None) -> None:
    """Record the subject, the `uploads` document (pending, with the uploader's body hints) and
    the `ingest` audit event."""
    from storage.metadata_store import open_metadata_store

    metadata = open_metadata_store(settings.mongodb_uri, settings.metadata_dir)
    try:
        metadata.ensure_subject(ingested.subject_id)
        metadata.create_upload(ingested.upload_id, ingested.subject_id, ingested.photo_key, PIPELINE_VERSION)
        if hints:  # read by the fit step (assets.steps.step_context)
            metadata.set_upload_body_hints(ingested.upload_id, hints)
        metadata.append_audit("ingest", ingested.subject_id, ingested.upload_id, details)
    finally:
        metadata.close()


def ingest_photo(
    settings: Settings,
    data: bytes,
    filename: str,
    subject_id: str | None,
    store: ObjectStore | None = None,
    hints: dict | None = None,
) -> Ingested:
    """Store the raw upload under the subject's prefix (the configured object store: local or
    S3) and register it in the metadata store. This is also the function an HTTP upload
    handler calls with the request body.

    Data minimisation: what is stored is the upload without its identifying metadata (GPS,
    device, owner, timestamps, thumbnails, free text; `ops.upload_minimisation`), and the key
    and the audit record carry that object's sha256."""
    from ops.upload_minimisation import minimise_upload_bytes
    from storage.object_store import object_store_from_config, sha256_hex
    from storage.retry import with_retries

    minimised = minimise_upload_bytes(data)
    data = minimised.data
    ingested = plan_ingest(data, filename, subject_id)
    store = with_retries(store or object_store_from_config(settings.object_store_config()))
    store.put_bytes(ingested.photo_key, data)
    details = {"bytes": len(data), "sha256": sha256_hex(data), "metadata_removed": list(minimised.removed)}
    register_upload(settings, ingested, details, hints)
    return ingested


def add_hint_arguments(parser: argparse.ArgumentParser) -> None:
    """The uploader's optional body hints (`models.fitting.BodyHints`); a hint always wins."""
    parser.add_argument("--build", choices=["masculine", "feminine", "neutral"], help="body build hint")
    parser.add_argument("--height-cm", type=float, help="standing height hint in cm (50-250)")
    parser.add_argument("--age-group", choices=["child", "adult"], help="age group hint")


def hints_from_args(args: argparse.Namespace) -> dict:
    """Validated hints as stored on the `uploads` document; raises PipelineError(INVALID_HINT)."""
    from models.fitting import BodyHints

    return BodyHints(
        build=getattr(args, "build", None),
        height_cm=getattr(args, "height_cm", None),
        age_group=getattr(args, "age_group", None),
    ).to_dict()


def run_avatar_job(settings: Settings, upload_id: str, wait_s: float = 0.0) -> str:
    """Materialise the five assets for one partition in one run recorded in the instance,
    holding the upload's lease meanwhile (`orchestration/leases.py`); raises
    `storage.lease.UploadBusy` if another live runner holds it for more than ``wait_s``."""
    from orchestration.leases import upload_lease

    with upload_lease(settings, upload_id, wait_s=wait_s) as lease:
        return execute_avatar_job(settings, upload_id, run_id=lease.run_id)


def execute_avatar_job(
    settings: Settings,
    upload_id: str,
    *,
    asset_selection: list[str] | None = None,
    run_id: str | None = None,
    trigger: str = "cli",
    defs: Any = None,
) -> str:
    """One in-process run of the avatar job (or of ``asset_selection`` and their checks) for one
    partition, without the lease: callers hold it (`run_avatar_job`, `avatarpipe resume`)."""
    from dagster import AssetKey, DagsterInstance

    from orchestration.definitions import AVATAR_JOB, build_definitions

    defs = defs or build_definitions(settings)
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions("uploads", [upload_id])
    job = defs.resolve_job_def(AVATAR_JOB)
    result = job.execute_in_process(
        partition_key=upload_id,
        instance=instance,
        raise_on_error=False,
        run_id=run_id,
        asset_selection=[AssetKey(a) for a in asset_selection] if asset_selection else None,
        tags={"avatarpipe/upload_id": upload_id, "avatarpipe/trigger": trigger},
    )
    return result.run_id


def store_unavailable_answer(upload_id: str, run_id: str | None, exc: Exception) -> dict[str, Any]:
    """The `run --json` answer when the metadata store cannot be read: nothing is reported as an
    artifact (the ledger is what says what exists); `avatarpipe resume` completes it later."""
    message = f"metadata store unavailable ({exc}); run `avatarpipe resume {upload_id}` when it is back"
    return {"upload_id": upload_id, "run_id": run_id, "status": "failed", "artifacts": {},
            "error": {"code": "STORE_UNAVAILABLE", "message": message}}  # fmt: skip


def summarise(settings: Settings, upload_id: str, run_id: str | None) -> dict[str, Any]:
    """The `run --json` answer, built from the metadata store (the ledger), not from logs."""
    from storage.metadata_store import open_metadata_store
    from storage.object_store import object_store_from_config

    store = object_store_from_config(settings.object_store_config())  # `path` is None on S3
    metadata = open_metadata_store(settings.mongodb_uri, settings.metadata_dir)
    try:
        upload = metadata.get_upload(upload_id) or {}
        docs = {doc["asset_key"]: doc for doc in metadata.artifacts_for_upload(upload_id)}
        validations = metadata.latest_validations(upload_id, run_id=run_id)
    finally:
        metadata.close()
    artifacts, metrics, timings, versions = {}, {}, {}, {}
    for asset in ASSET_ORDER:
        doc = docs.get(asset)
        if doc is None:
            continue
        artifacts[asset] = {
            "uri": doc["uri"],
            "path": store.local_path(doc["key"]),
            "sha256": doc["sha256"],
            "bytes": doc["bytes"],
        }
        metrics[asset] = doc.get("metrics", {})
        timings[asset] = doc.get("compute_seconds")
        versions.update(doc.get("model_versions", {}))
    status = upload.get("status", "failed")
    if status not in ("ready", "failed_quality"):
        status = "failed"
    checks = {
        name: {
            "passed": doc["passed"],
            "severity": doc["severity"],
            "failed_expectations": doc["failed_expectations"],
        }
        for name, doc in validations.items()
    }
    return {
        "upload_id": upload_id,
        "subject_id": upload.get("subject_id"),
        "status": status,
        "error": upload.get("error") if status != "ready" else None,
        "artifacts": artifacts,
        "metrics": metrics,
        "checks": checks,
        "timings_s": timings,
        "model_versions": versions,
        "dagster_run_id": run_id,
    }


def _human_summary(summary: dict[str, Any], wall_s: float) -> str:
    lines = [f"upload {summary['upload_id']} (subject {summary['subject_id']}): {summary['status']}"]
    if summary["error"]:
        err = summary["error"]
        lines.append(f"  error {err.get('code')} at {err.get('step')}: {err.get('message')}")
    glb = summary["artifacts"].get("rigged_glb")
    if glb:
        lines.append(f"  avatar GLB: {glb['path'] or glb['uri']} ({glb['bytes'] / 1e6:.2f} MB)")
    fit = summary["metrics"].get("smplx_params", {})
    if fit:
        lines.append(
            f"  fit: reprojection {fit.get('keypoint_reprojection_rel')} of body height, "
            f"silhouette IoU {fit.get('silhouette_iou')}, framing {fit.get('framing')}"
        )
    if summary["checks"]:
        verdicts = [
            f"{name} " + ("pass" if c["passed"] else f"{c['severity']} ({', '.join(f['name'] for f in c['failed_expectations'])})")
            for name, c in summary["checks"].items()
        ]
        lines.append(f"  quality: {'; '.join(verdicts)}")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in summary["timings_s"].items() if v is not None)
    lines.append(f"  steps: {timings}; total wall {wall_s:.1f}s; Dagster run {summary['dagster_run_id']}")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    prepare_environment(settings)
    photo = Path(args.photo)
    if not photo.is_file():
        print(f"avatarpipe: no such file: {photo}", file=sys.stderr)
        return 2
    from models.errors import PipelineError

    try:
        hints = hints_from_args(args)
    except PipelineError as err:
        print(f"avatarpipe: {err.message}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    with stdout_to_stderr():
        ingested = ingest_photo(settings, photo.read_bytes(), photo.name, args.subject, hints=hints)
        print(f"avatarpipe: upload {ingested.upload_id} registered; running {len(ASSET_ORDER)} steps")
        run_id = None
        try:
            run_id = run_avatar_job(settings, ingested.upload_id)
            summary = summarise(settings, ingested.upload_id, run_id)
        except StoreUnavailable as exc:  # the ledger itself is away: say so, typed (resume later)
            summary = store_unavailable_answer(ingested.upload_id, run_id, exc)
            print(f"avatarpipe: {summary['error']['message']}", file=sys.stderr)
            if not args.json:
                return 1
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print(_human_summary(summary, time.perf_counter() - start))
    return 0 if summary["status"] == "ready" else 1


def _register_run(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="turn one photo into a rigged GLB avatar")
    run.add_argument("photo")
    run.add_argument("--subject", help="subject id (letters, digits, _ and -); random if omitted")
    run.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_hint_arguments(run)
    run.set_defaults(func=cmd_run)


# Each further command lives in orchestration/commands/<name>.py and exposes
# `register(subparsers)`; list the module here.
COMMAND_MODULES: tuple[str, ...] = (
    "quality_report", "ingest", "models", "reprocess", "eval", "fsck", "resume",
    "erase", "audit", "verify_erasure", "purge_raw", "export", "privacy_scan", "config", "keys", "serve",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="avatarpipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _register_run(sub)
    for module in COMMAND_MODULES:
        importlib.import_module(f"orchestration.commands.{module}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from orchestration.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:  # validated at start: say which variable, never its secret
        print(f"avatarpipe: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
