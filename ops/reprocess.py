"""Which uploads a model upgrade affects, and from which asset each must be rebuilt.

Selection reads the `artifacts` ledger, never Dagster's event log (DESIGN.md: partitions are the
working set, MongoDB is the ledger): an upload is affected by model M when one of its *current*
artifacts of an asset that uses M directly was recorded with a version of M other than the
production one. Its first affected asset is the earliest such asset in topological order; that
asset and everything downstream of it are rematerialised, upstream artifacts are reused.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from storage.metadata_store import MetadataStore

# Uploads in these states are left alone: erased ones are gone for good, and pending/running
# ones are being built right now (their artifacts will carry whatever version ran).
SKIP_REASONS = {
    "erased": "upload erased",
    "pending": "upload in flight",
    "running": "upload in flight",
}


@dataclass(frozen=True)
class OutdatedArtifact:
    asset_key: str
    artifact_id: str
    model: str
    recorded: str | None  # the version the artifact was built with (None: not recorded)
    production: str


@dataclass(frozen=True)
class ReprocessTarget:
    upload_id: str
    subject_id: str
    status: str
    first_asset: str
    outdated: tuple[OutdatedArtifact, ...]

    @property
    def models(self) -> list[str]:
        return sorted({o.model for o in self.outdated})

    def model_labels(self) -> list[str]:
        """`name@recorded->production` for every model that makes this upload stale."""
        pairs = sorted({(o.model, o.recorded, o.production) for o in self.outdated}, key=str)
        return [f"{m}@{r}->{p}" for m, r, p in pairs]


@dataclass(frozen=True)
class SkippedUpload:
    upload_id: str
    subject_id: str | None
    status: str | None
    reason: str


@dataclass(frozen=True)
class ReprocessPlan:
    production: dict[str, str]  # model name -> production version
    models: tuple[str, ...]  # the models considered
    targets: tuple[ReprocessTarget, ...]
    skipped: tuple[SkippedUpload, ...]


def plan_reprocess(
    metadata: MetadataStore,
    production: Mapping[str, str],
    asset_models: Mapping[str, Sequence[str]],
    asset_order: Sequence[str],
    models: Collection[str] | None = None,
    uploads: Collection[str] | None = None,
) -> ReprocessPlan:
    """Affected uploads (sorted by id) with their first affected asset.

    `production` maps every model to its production version; `asset_models` says which models
    each asset uses directly; `asset_order` is a topological order of the assets. `models`
    restricts the plan to upgrades of those models, `uploads` to those uploads.
    """
    considered = tuple(sorted(models if models is not None else production))
    unknown = [m for m in considered if m not in production]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {sorted(production)}")
    rank = {asset: i for i, asset in enumerate(asset_order)}
    outdated: dict[str, list[OutdatedArtifact]] = {}
    for model in considered:
        assets = [a for a in asset_order if model in asset_models.get(a, ())]
        for doc in metadata.outdated_artifacts(model, production[model], assets):
            if uploads is not None and doc["upload_id"] not in uploads:
                continue
            outdated.setdefault(doc["upload_id"], []).append(
                OutdatedArtifact(
                    asset_key=doc["asset_key"],
                    artifact_id=doc["_id"],
                    model=model,
                    recorded=(doc.get("model_versions") or {}).get(model),
                    production=str(production[model]),
                )
            )
    targets, skipped = [], []
    for upload_id in sorted(outdated):
        found = sorted(outdated[upload_id], key=lambda o: (rank[o.asset_key], o.model))
        upload = metadata.get_upload(upload_id)
        status = upload.get("status") if upload else None
        subject = upload.get("subject_id") if upload else None
        if upload is None or status in SKIP_REASONS:
            reason = SKIP_REASONS.get(status or "", "upload document missing")
            skipped.append(SkippedUpload(upload_id, subject, status, reason))
            continue
        targets.append(ReprocessTarget(upload_id, subject, status, found[0].asset_key, tuple(found)))
    return ReprocessPlan(
        production={m: str(v) for m, v in sorted(production.items())},
        models=considered,
        targets=tuple(targets),
        skipped=tuple(skipped),
    )


def record_reprocess_request(
    metadata: MetadataStore,
    target: ReprocessTarget,
    assets: Sequence[str],
    trigger: str,
    details: Mapping[str, object] | None = None,
) -> None:
    """Audit: why this upload is being rebuilt, from which asset, by whom (cli or sensor)."""
    metadata.append_audit(
        "reprocess",
        target.subject_id,
        target.upload_id,
        {
            "trigger": trigger,
            "first_asset": target.first_asset,
            "assets": list(assets),
            "models": target.model_labels(),
            "outdated_artifact_ids": [o.artifact_id for o in target.outdated],
            **dict(details or {}),
        },
    )
