"""`avatarpipe resume UPLOAD_ID [--json] [--wait SECONDS] [--from-start]`: finish an upload whose
run died (SIGKILL, OOM, a lost machine) or failed for a passing reason (STORE_UNAVAILABLE,
INTERNAL_ERROR, ARTIFACT_MISSING after `fsck --repair`).

Under the upload's lease (`orchestration/leases.py`):

1. the dead holder's Dagster run, if any, is marked failed;
2. the upload's own debris is repaired (`ops.fsck`, scoped to the upload, no grace period: the
   lease guarantees nobody else is writing it): orphan objects and temp files of the killed
   step are deleted, documents whose objects are gone are dropped;
3. one Dagster run (in this process, like `avatarpipe run`) materialises the first asset that
   is missing, stale (another code version), incomplete, or not yet passed by its blocking
   quality check, and everything downstream; earlier artifacts are reused. Keys are content
   addressed and documents upserted, so a step that had half-finished is simply redone.

An upload that is `ready` has nothing to resume; one that failed on its input (a permanent
code) or a quality gate is refused, since the same input cannot succeed (`--from-start` runs
the whole chain anyway). Exit status: 0 ready, 1 failed or refused, 2 usage errors (unknown
upload), 3 `UPLOAD_BUSY` (another live runner holds the lease longer than `--wait`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from models.errors import PERMANENT_CODES
from ops.fsck import fsck
from orchestration.app import ASSET_ORDER, execute_avatar_job, metadata_store, object_store, summarise
from orchestration.commands.common import Reply, answers, fail
from orchestration.leases import upload_lease
from orchestration.settings import Settings
from storage.lease import UploadBusy
from storage.metadata_store import NotFound

EXIT_READY, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 3


@dataclass(frozen=True)
class ResumeOutcome:
    action: str  # "resumed" | "nothing_to_do" | "marked_ready" | "refused"
    run_id: str | None = None
    from_asset: str | None = None
    selection: tuple[str, ...] = ()
    repairs: dict[str, int] | None = None
    failed_stale_runs: tuple[str, ...] = ()
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "from_asset": self.from_asset,
            "selection": list(self.selection),
            "repairs": self.repairs or {},
            "failed_stale_runs": list(self.failed_stale_runs),
            **({"reason": self.reason} if self.reason else {}),
        }


def first_unfinished_asset(
    metadata: Any,
    store: Any,
    upload_id: str,
    order: tuple[str, ...],
    code_versions: dict[str, str],
) -> str | None:
    """The first asset (in topological order) whose current artifact is missing, was made by
    another code version, lacks one of its objects, or has no non-blocking verdict from its
    quality check yet; None when every asset is in place and checked."""
    from assets.checks import CHECKED_ASSETS, check_name

    validations = metadata.latest_validations(upload_id)
    for asset in order:
        doc = metadata.current_artifact(upload_id, asset)
        if doc is None or doc.get("code_version") != code_versions.get(asset):
            return asset
        if not all(store.exists(key) for key in [doc["key"], *(doc.get("extra_files") or {}).values()]):
            return asset
        if asset in CHECKED_ASSETS:
            verdict = validations.get(check_name(asset))
            if verdict is None or verdict.get("artifact_id") != doc["_id"] or verdict.get("severity") == "ERROR":
                return asset
    return None


def refusal(upload: dict) -> str | None:
    """Why an upload cannot be resumed without `--from-start`, or None."""
    status = upload.get("status")
    if status == "erased":
        return "the upload is erased"
    if status == "failed_quality":
        return "the upload failed a blocking quality gate; the same input would fail it again"
    error = upload.get("error") or {}
    if status == "failed" and error.get("code") in {code.value for code in PERMANENT_CODES}:
        return f"the upload failed on its input ({error['code']}); re-running the same input cannot succeed"
    return None


def resume_upload(settings: Settings, upload_id: str, *, wait_s: float = 0.0, from_start: bool = False) -> ResumeOutcome:
    """Resume one upload (see the module docstring). Raises `storage.lease.UploadBusy`, and
    `storage.metadata_store.NotFound` for an unknown upload."""
    from dagster import AssetKey  # Dagster: only when resuming

    from orchestration.definitions_build import build_definitions
    from orchestration.sensors import AssetLayout

    with metadata_store(settings) as metadata:
        if metadata.get_upload(upload_id) is None:
            raise NotFound(upload_id)
        store = object_store(settings)
        with upload_lease(settings, upload_id, purpose="resume", wait_s=wait_s) as lease:
            upload = metadata.get_upload(upload_id) or {}  # re-read: the previous holder may have finished
            stale = lease.failed_stale_runs
            if upload.get("status") == "erased" or (not from_start and refusal(upload)):
                return ResumeOutcome("refused", reason=refusal(upload), failed_stale_runs=stale)
            if upload.get("status") == "ready" and not from_start:
                return ResumeOutcome("nothing_to_do", failed_stale_runs=stale)
            before, _after = fsck(store, metadata, do_repair=True, upload_id=upload_id, grace_s=0.0, respect_leases=False)
            defs = build_definitions(settings)
            graph = defs.resolve_asset_graph()
            layout = AssetLayout.from_asset_graph(graph)
            code_versions = {name: graph.get(AssetKey(name)).code_version or "" for name in layout.order}
            first = layout.order[0] if from_start else first_unfinished_asset(
                metadata, store, upload_id, layout.order, code_versions
            )  # fmt: skip
            if first is None:  # every artifact in place and the final gate passed: only the status was lost
                metadata.set_upload_status(upload_id, "ready", run_id=None)
                return ResumeOutcome("marked_ready", repairs=before.repairs, failed_stale_runs=stale)
            selection = layout.rebuild[first]
            metadata.set_upload_status(upload_id, "running", run_id=lease.run_id)
            metadata.append_audit("resume", upload.get("subject_id"), upload_id, {"from_asset": first, "run_id": lease.run_id})
            run_id = execute_avatar_job(
                settings, upload_id, asset_selection=list(selection), run_id=lease.run_id, trigger="resume", defs=defs
            )
            return ResumeOutcome(
                "resumed", run_id=run_id, from_asset=first, selection=selection, repairs=before.repairs,
                failed_stale_runs=stale,
            )  # fmt: skip


def _resume_text(summary: dict[str, Any], outcome: ResumeOutcome) -> str:
    steps = ", ".join(outcome.selection) or "none"
    return (
        f"upload {summary['upload_id']}: {outcome.action} ({outcome.reason or 'steps: ' + steps}); "
        f"status {summary['status']}"
        + (f", error {summary['error']['code']}: {summary['error']['message']}" if summary["error"] else "")
    )


@click.command("resume", help="finish an upload whose run died or failed transiently")
@click.argument("upload_id")
@click.option(
    "--wait", type=float, default=0.0, metavar="SECONDS",
    help="wait this long for another runner's lease on the upload (default: exit 3 at once)",
)  # fmt: skip
@click.option("--from-start", is_flag=True, help=f"rebuild from {ASSET_ORDER[0]}, whatever exists")
@answers()
def resume(settings: Settings, upload_id: str, wait: float, from_start: bool) -> Reply:
    try:
        outcome = resume_upload(settings, upload_id, wait_s=wait, from_start=from_start)
        summary = summarise(settings, upload_id, outcome.run_id).to_dict()
    except NotFound:
        return fail(EXIT_USAGE, f"avatarpipe: no such upload: {upload_id}")
    except UploadBusy as busy:
        answer = {"upload_id": upload_id, "status": "busy",
                  "error": {"code": "UPLOAD_BUSY", "message": str(busy), "step": None}}  # fmt: skip
        text = f"avatarpipe: {busy}"
        return Reply(EXIT_BUSY, answer, lambda _answer: text)
    summary["resume"] = outcome.to_dict()
    if outcome.action == "refused":
        code = EXIT_FAILED
    else:
        code = EXIT_READY if summary["status"] == "ready" else EXIT_FAILED
    return Reply(code, summary, lambda s: _resume_text(s, outcome))
