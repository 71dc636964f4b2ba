"""What the API answers about an upload, built from the metadata store (the ledger)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

STEPS = ("photo", "keypoints", "smplx_params", "mesh", "rigged_glb")
FINAL_STATUSES = ("ready", "failed", "failed_quality", "erased")


@dataclass(frozen=True)
class StepView:
    status: str  # waiting | running | done | failed
    seconds: float | None = None


@dataclass(frozen=True)
class UploadView:
    upload_id: str
    subject_id: str
    status: str
    error: dict | None
    steps: dict[str, StepView]
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    created_at: str | None = None
    updated_at: str | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        answer = asdict(self)
        answer["links"] = {
            "self": f"/v1/uploads/{self.upload_id}",
            "events": f"/v1/uploads/{self.upload_id}/events",
            **(
                {"avatar": f"/v1/uploads/{self.upload_id}/avatar.glb",
                 "vrm": f"/v1/uploads/{self.upload_id}/avatar.vrm",
                 "preview": f"/v1/uploads/{self.upload_id}/preview.png"}
                if self.status == "ready" else {}
            ),
        }  # fmt: skip
        return answer


def _iso(value: Any) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else (str(value) if value is not None else None)


def _public_error(error: dict | None) -> dict | None:
    """Code, message and step only (never a traceback or a store path)."""
    if not error:
        return None
    return {"code": error.get("code"), "message": error.get("message"), "step": error.get("step")}


def step_views(upload: dict, artifacts: list[dict]) -> dict[str, StepView]:
    done = {doc["asset_key"]: doc for doc in artifacts}
    error_step = (upload.get("error") or {}).get("step")
    running = upload.get("status") == "running"
    views: dict[str, StepView] = {}
    first_missing = next((s for s in STEPS if s not in done), None)
    for step in STEPS:
        if step in done:
            views[step] = StepView("done", done[step].get("compute_seconds"))
        elif step == error_step and upload.get("status") in ("failed", "failed_quality"):
            views[step] = StepView("failed")
        elif running and step == first_missing:
            views[step] = StepView("running")
        else:
            views[step] = StepView("waiting")
    return views


def upload_view(metadata: Any, upload: dict) -> UploadView:
    upload_id = upload["_id"]
    artifacts = metadata.artifacts_for_upload(upload_id)
    status = upload.get("status", "pending")
    checks = {
        name: {"passed": doc["passed"], "severity": doc["severity"]}
        for name, doc in metadata.latest_validations(upload_id).items()
    }
    return UploadView(
        upload_id=upload_id,
        subject_id=upload["subject_id"],
        status=status,
        error=_public_error(upload.get("error")) if status != "ready" else None,
        steps=step_views(upload, artifacts),
        checks=checks,
        created_at=_iso(upload.get("created_at")),
        updated_at=_iso(upload.get("updated_at")),
    )
