"""The metrics row each quality gate evaluates, computed from a stored artifact (and, for the
mesh, the fit and person mask it was made from) with `models.quality`. No Dagster and no GX:
`assets/checks.py` evaluates these rows with the suites; one function per checked step
(`ops.steps.CHECKED_ASSETS`)."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ops.steps import decode_mask
from storage.keys import ObjectStore
from storage.metadata_store import MetadataStore

if TYPE_CHECKING:
    from models.quality import ValidatorReport


@dataclass(frozen=True)
class ArtifactMetrics:
    row: dict[str, Any]
    extra: dict[str, Any]  # shown in Dagster metadata, not evaluated (e.g. validator messages)


def _parents(metadata: MetadataStore, doc: dict) -> dict[str, dict]:
    parents = (metadata.get_artifact(pid) for pid in doc.get("parent_ids", []))
    return {p["asset_key"]: p for p in parents if p is not None}


def _smplx_params_metrics(doc: dict, store: ObjectStore, metadata: MetadataStore) -> ArtifactMetrics:
    from models.quality import params_metrics

    return ArtifactMetrics(params_metrics(json.loads(store.get_bytes(doc["key"]))).row(), {})


def _mesh_metrics(doc: dict, store: ObjectStore, metadata: MetadataStore) -> ArtifactMetrics:
    """The mesh's metrics; its silhouette against the person mask the fit was made from."""
    from models.camera import Camera
    from models.quality import mesh_glb_metrics
    from models.surface import silhouette_iou

    parents = _parents(metadata, doc)
    silhouette: Callable | None = None
    if "smplx_params" in parents and "mask" in parents.get("keypoints", {}).get("extra_files", {}):
        camera = Camera.from_dict(json.loads(store.get_bytes(parents["smplx_params"]["key"]))["camera"])
        mask = decode_mask(store.get_bytes(parents["keypoints"]["extra_files"]["mask"]))

        def silhouette(vertices, faces):
            return silhouette_iou(vertices, faces, camera, mask)

    return ArtifactMetrics(mesh_glb_metrics(store.get_bytes(doc["key"]), silhouette).row(), {})


_LONG_LIVED_VALIDATOR = False  # set in a warm worker: `keep_validator_running`


def keep_validator_running(node_modules: Path) -> None:
    """From now on this process validates GLBs with one long-lived node validator
    (`ops.gltf_validator_process`) instead of one node process per check; started now, so the
    first check does not pay its start. For a long-lived process (the warm worker)."""
    global _LONG_LIVED_VALIDATOR
    from ops.gltf_validator_process import shared_validator

    _LONG_LIVED_VALIDATOR = True
    if shutil.which("node") is not None:
        with contextlib.suppress(Exception):  # it is started again, or replaced, at the first check
            shared_validator(node_modules).start()


def _validate_glb(glb: bytes, node_modules: Path) -> ValidatorReport:
    from models.quality import run_gltf_validator

    if _LONG_LIVED_VALIDATOR:
        from ops.gltf_validator_process import shared_validator

        return shared_validator(node_modules).validate(glb)
    return run_gltf_validator(glb, node_modules)


def _rigged_glb_metrics(doc: dict, store: ObjectStore, metadata: MetadataStore) -> ArtifactMetrics:
    from models.quality import glb_metrics
    from orchestration.config import load_config

    node_modules = load_config().node_modules  # AVATARPIPE_NODE_MODULES, else clients/node_modules
    glb = store.get_bytes(doc["key"])
    # The validator is a node process (one per check, or a warm worker's long-lived one): it
    # runs while this thread reads the GLB for the metrics, and its verdict then goes into the
    # row's validator fields.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gltf-validator") as pool:
        validating = pool.submit(_validate_glb, glb, node_modules)
        metrics = glb_metrics(glb, None, node_modules)
        report = validating.result()
    metrics = replace(
        metrics,
        gltf_validator_status=report.status,
        gltf_validator_error_count=report.error_count,
        gltf_validator_warning_count=report.warning_count,
    )
    extra = {
        "gltf_validator": {
            "status": report.status,
            "errors": report.error_count,
            "warnings": report.warning_count,
            "infos": report.info_count,
            "messages": report.messages,
            **({"detail": report.detail} if report.detail else {}),
        }
    }
    return ArtifactMetrics(metrics.row(), extra)


class ParentLedger:
    """The ledger as the metrics see it in a warm worker, which has no metadata store: the
    artifact's parents, looked up by the check in the run process and sent with the request."""

    def __init__(self, parents: dict[str, dict]) -> None:
        self._parents = parents

    def get_artifact(self, artifact_id: str) -> dict | None:
        return self._parents.get(artifact_id)


def wire_doc(doc: dict) -> dict:
    """What the metrics read of an artifact document (JSON-able: no dates, no ObjectIds)."""
    return {k: doc[k] for k in ("_id", "asset_key", "key", "extra_files", "parent_ids") if k in doc}


def wire_parents(metadata: MetadataStore, doc: dict) -> dict[str, dict]:
    """The artifact's parents by id, as `ParentLedger` serves them."""
    parents = (metadata.get_artifact(pid) for pid in doc.get("parent_ids", []))
    return {str(p["_id"]): wire_doc(p) for p in parents if p is not None}


ARTIFACT_METRICS: dict[str, Callable[[dict, ObjectStore, MetadataStore], ArtifactMetrics]] = {
    "smplx_params": _smplx_params_metrics,
    "mesh": _mesh_metrics,
    "rigged_glb": _rigged_glb_metrics,
}
