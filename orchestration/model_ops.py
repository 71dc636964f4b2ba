"""Model operations above the registry: champion/challenger comparison with versioned gates,
evaluation attached to versions, canary reprocessing, one-command rollback, and the avatars a
version built. Every function returns dataclasses; the CLI (`avatarpipe models …`,
`avatarpipe reprocess --canary`) only parses arguments and prints them.

Where the numbers come from:
* evaluation metrics: `models.evaluation` (the harness behind `make eval` / `avatarpipe eval`)
  run with the version's parameters on a bounded set (a few photos, a few synthetic bodies with
  ground truth), logged on the version's MLflow run;
* canary metrics: the real pipeline steps (`ops.steps` for the fit and the mesh, the rigging
  call of the `rigged_glb` asset) run on the chosen uploads' current upstream artifacts with the
  candidate's parameters, and the same quality suites the asset checks evaluate
  (`assets.checks`), compared with the champion's current artifacts of the same uploads.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ops.steps import ASSET_MODELS, ASSET_ORDER
from orchestration.registry import (
    CANDIDATE_ALIAS,
    ModelRegistry,
    ModelVersion,
    RegistryError,
    RegistryLocation,
    affected_assets,
    mlflow_version_url,
    open_registry,
    production_map,
    provenance_tags,
)
from orchestration.settings import Settings

GATES_FILE = Path(__file__).resolve().parent / "promotion_gates.json"
REPO = Path(__file__).resolve().parents[1]
# The pipeline is a chain: an asset's downstream is everything after it in this order.
# what the harness's parameters reach (body_model has nothing tunable)
EVALUATED_MODELS = ("keypoint_detector", "body_fitter", "reconstructor", "rigger")

TAG_EVALUATED_AT = "avatarpipe.evaluated_at"
TAG_EVAL_SET = "avatarpipe.evaluation_set"
TAG_CANARY = "avatarpipe.canary"  # running | passed | failed
TAG_CANARY_SUMMARY = "avatarpipe.canary_summary"
TAG_FORCED = "avatarpipe.forced_promotion"
TAG_AVATARS = "avatarpipe.avatars_built"
TAG_AVATARS_QUERY = "avatarpipe.avatars_query"
TAG_AVATARS_AT = "avatarpipe.avatars_counted_at"


class PromotionRefused(RegistryError):
    """A challenger that regresses a gated metric (or failed its canary), without --force."""


# ---------------------------------------------------------------------------------------------
# gates and comparison
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gate:
    metric: str
    better: str  # "lower" | "higher"
    abs: float = 0.0
    rel: float = 0.0
    gated: bool = True

    def tolerance(self, champion: float) -> float:
        return max(float(self.abs), float(self.rel) * abs(champion))


@dataclass(frozen=True)
class Gates:
    version: int
    evaluation: dict[str, Gate]
    canary: dict[str, Gate]
    missing_metric: str = "allow"  # "allow" | "refuse": a gated metric the challenger lacks
    path: str = ""


def load_gates(path: Path | None = None) -> Gates:
    """The versioned tolerance file (default `orchestration/promotion_gates.json`)."""
    path = path or GATES_FILE
    data = json.loads(Path(path).read_text())
    if not isinstance(data.get("version"), int):
        raise RegistryError(f"{path}: gates file needs an integer `version`")

    def section(name: str) -> dict[str, Gate]:
        gates = {}
        for metric, spec in (data.get(name) or {}).items():
            if spec.get("better") not in ("lower", "higher"):
                raise RegistryError(f"{path}: gate {metric!r} needs better = lower | higher")
            gates[metric] = Gate(metric, spec["better"], float(spec.get("abs", 0.0)), float(spec.get("rel", 0.0)),
                                 bool(spec.get("gated", True)))  # fmt: skip
        return gates

    missing = data.get("missing_metric", "allow")
    if missing not in ("allow", "refuse"):
        raise RegistryError(f"{path}: missing_metric must be allow or refuse")
    return Gates(data["version"], section("evaluation"), section("canary"), missing, str(path))


@dataclass(frozen=True)
class MetricVerdict:
    metric: str
    champion: float | None
    challenger: float | None
    difference: float | None  # challenger - champion
    better: str | None  # which direction is good (None: no gate for this metric)
    tolerance: float | None
    gated: bool
    verdict: str  # better | same | worse_within_tolerance | regressed | missing | ungated

    @property
    def blocking(self) -> bool:
        return self.gated and self.verdict == "regressed"


def judge_metric(
    metric: str, champion: float | None, challenger: float | None, gate: Gate | None
) -> MetricVerdict:
    """One metric's verdict: regressed = worse than the champion by more than the tolerance."""
    diff = None if champion is None or challenger is None else round(challenger - champion, 6)
    if gate is None:
        return MetricVerdict(metric, champion, challenger, diff, None, None, False, "ungated")
    if diff is None:
        return MetricVerdict(metric, champion, challenger, None, gate.better, None, gate.gated, "missing")
    tolerance = round(gate.tolerance(champion), 6)
    worse_by = -diff if gate.better == "higher" else diff
    if worse_by < 0:
        verdict = "better"
    elif worse_by == 0:
        verdict = "same"
    elif worse_by <= tolerance:
        verdict = "worse_within_tolerance"
    else:
        verdict = "regressed"
    return MetricVerdict(metric, champion, challenger, diff, gate.better, tolerance, gate.gated, verdict)


def judge_metrics(
    champion: Mapping[str, float], challenger: Mapping[str, float], gates: Mapping[str, Gate]
) -> list[MetricVerdict]:
    names = sorted(set(champion) | set(challenger) | set(gates))
    return [judge_metric(m, champion.get(m), challenger.get(m), gates.get(m)) for m in names]


@dataclass(frozen=True)
class Comparison:
    model: str
    champion: str
    challenger: str
    gates_version: int
    metrics: tuple[MetricVerdict, ...]
    challenger_canary: str | None  # the challenger's last canary verdict, if it had one
    missing_metric: str = "allow"

    @property
    def regressions(self) -> list[MetricVerdict]:
        return [m for m in self.metrics if m.blocking]

    @property
    def missing(self) -> list[MetricVerdict]:
        return [m for m in self.metrics if m.gated and m.verdict == "missing"]

    def refusal_reasons(self) -> list[str]:
        reasons = [f"{m.metric} regressed: {m.champion:g} -> {m.challenger:g} (tolerance {m.tolerance:g}, "
                   f"{m.better} is better)" for m in self.regressions]  # fmt: skip
        if self.challenger_canary == "failed":
            reasons.append("its last canary failed")
        if self.missing_metric == "refuse" and self.missing:
            reasons.append("gated metrics missing: " + ", ".join(m.metric for m in self.missing))
        return reasons

    @property
    def verdict(self) -> str:
        return "refuse" if self.refusal_reasons() else "promote"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "champion": self.champion,
            "challenger": self.challenger,
            "gates_version": self.gates_version,
            "verdict": self.verdict,
            "reasons": self.refusal_reasons(),
            "challenger_canary": self.challenger_canary,
            "metrics": [asdict(m) for m in self.metrics],
        }


def compare_versions(registry: ModelRegistry, name: str, champion: str, challenger: str,
                     gates: Gates | None = None) -> Comparison:  # fmt: skip
    """The two versions' logged metrics side by side, with a verdict per metric."""
    gates = gates or load_gates()
    a = registry.get_version(name, champion, with_metrics=True)
    b = registry.get_version(name, challenger, with_metrics=True)
    canary = registry.version_tags(name, b.version).get(TAG_CANARY)
    return Comparison(name, a.version, b.version, gates.version,
                      tuple(judge_metrics(a.metrics, b.metrics, gates.evaluation)), canary, gates.missing_metric)  # fmt: skip


@dataclass(frozen=True)
class PromotionGate:
    """The decision before `production` moves: the comparison with the champion, and whether
    a refusal was overridden (`--force --reason`)."""

    comparison: Comparison | None  # None when the version already is production
    forced: bool
    reason: str | None

    def audit_details(self) -> dict[str, Any]:
        if self.comparison is None:
            return {}
        return {
            "gates_version": self.comparison.gates_version,
            "gate_verdict": self.comparison.verdict,
            "gate_reasons": self.comparison.refusal_reasons(),
            "forced": self.forced,
            **({"force_reason": self.reason} if self.forced else {}),
        }


def gate_promotion(registry: ModelRegistry, name: str, version: str, force: bool = False,
                   reason: str | None = None, gates: Gates | None = None) -> PromotionGate:  # fmt: skip
    """Compare `version` with the production version; raise `PromotionRefused` when it
    regresses a gated metric beyond tolerance or failed its canary, unless forced with a reason
    (which is tagged on the version). Nothing is moved here."""
    if force and not (reason or "").strip():
        raise RegistryError(
            "--force needs --reason TEXT (it is recorded in the audit log and on the version)"
        )
    target = registry.get_version(name, version)  # unknown model or version: RegistryError
    production = registry.production_versions()[name]
    if target.version == production.version:
        return PromotionGate(None, False, None)
    comparison = compare_versions(registry, name, production.version, target.version, gates)
    reasons = comparison.refusal_reasons()
    if reasons and not force:
        raise PromotionRefused(
            f"refusing to promote {name} v{target.version} over production v{production.version}: "
            + "; ".join(reasons)
            + " (override with --force --reason TEXT)"
        )
    if reasons:
        registry.set_version_tags(name, target.version, {TAG_FORCED: f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} "
                                                                     f"over v{production.version}: {reason}"})  # fmt: skip
    return PromotionGate(comparison, bool(reasons), reason if reasons else None)


def after_promotion(registry: ModelRegistry, name: str, version: str) -> None:
    """A promoted candidate is no longer a candidate."""
    try:
        candidate = registry.client.get_model_version_by_alias(name, CANDIDATE_ALIAS)
    except Exception:  # noqa: BLE001 - no candidate alias: nothing to clear
        return
    if str(candidate.version) == str(version):
        registry.delete_alias(name, CANDIDATE_ALIAS)


def promote_version(settings: Settings, name: str, version: str, force: bool = False, reason: str | None = None,
                    trigger: str = "cli") -> dict[str, Any]:  # fmt: skip
    """The gated promotion use-case (`models promote`, `models register --promote`, and the
    `model_upgrade_sensor`'s canary after a passed canary): compare with the champion, refuse a
    gated regression or a failed canary unless forced with a reason, move `production`, clear
    the `candidate` alias, record a `model_promote` audit event. Returns the `--json` answer
    (the CLI adds what the Dagster UI did)."""
    from storage.metadata_store import open_metadata_store

    registry = open_registry(RegistryLocation.for_settings(settings))
    gate = gate_promotion(registry, name, version, force, reason)
    promotion = registry.promote(name, version)
    after_promotion(registry, name, promotion.production)
    with open_metadata_store(settings.mongodb_uri, settings.metadata_dir) as metadata:
        metadata.append_audit("model_promote", None, None, {"model": name, "previous": promotion.previous,
                              "production": promotion.production, "trigger": trigger} | gate.audit_details())  # fmt: skip
        outdated = metadata.outdated_artifacts(name, promotion.production, affected_assets(name))
    return {
        "gate": gate.comparison.to_dict() if gate.comparison else None,
        "forced": gate.forced,
        "model": name,
        "previous": promotion.previous,
        "production": promotion.production,
        "assets": affected_assets(name),
        "outdated_uploads": len({d["upload_id"] for d in outdated}),
    }


# ---------------------------------------------------------------------------------------------
# evaluation attached to versions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationSet:
    """A bounded evaluation: `max_photos` photos of `photo_folders` (sorted, deduplicated),
    `synthetic` generated Anny bodies with ground truth (seeds `seed`…), the first `builds` of
    those photos built end to end by the pipeline's steps (GLB size, step times) and
    `appearance` synthetic subjects with a ground-truth texture (novel-view PSNR/SSIM)."""

    photo_folders: tuple[str, ...] = (str(REPO / "samples"),)
    max_photos: int = 2
    synthetic: int = 2
    seed: int = 0
    builds: int = 1
    appearance: int = 1

    def describe(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Evaluation:
    model: str
    params: dict
    metrics: dict[str, float]  # numeric summary of models.evaluation (what MLflow gets)
    photos: list[dict]
    synthetic: list[dict]
    evaluation_set: EvaluationSet
    seconds: float
    builds: list[dict] = field(default_factory=list)  # models.evaluation.BuildResult
    appearance: list[dict] = field(default_factory=list)  # models.eval_appearance.AppearanceResult


def build_in_memory(photo: Path, params: Mapping[str, dict], runtime: Any) -> Any:
    """The five pipeline steps (`ops.steps.STEPS`, the code every asset runs) on one photo,
    chained in memory with `params`: the delivered GLB's size and each step's time
    (a `models.evaluation.BuildResult`; a rejected photo gives its error code)."""
    from models.errors import PipelineError
    from models.evaluation import BuildResult
    from ops.steps import RAW, STEPS, input_source, json_bytes

    outputs: dict[str, Any] = {}
    result = BuildResult(photo=photo.name, status="built")
    for name, spec in STEPS.items():
        inputs = {}
        for input_name in spec.inputs:
            asset, extra, is_metrics = input_source(input_name)
            if input_name == RAW:
                inputs[input_name] = photo.read_bytes()
            elif is_metrics:
                inputs[input_name] = json_bytes(outputs[asset].metrics)
            elif extra is None:
                inputs[input_name] = outputs[asset].data
            elif extra in outputs[asset].extra_files:
                inputs[input_name] = outputs[asset].extra_files[extra][0]
        start = time.perf_counter()
        try:
            outputs[name] = spec.run(inputs, params, runtime)
        except PipelineError as err:
            result.status, result.message = err.code.value, err.message
            return result
        result.step_seconds[name] = round(time.perf_counter() - start, 3)
    final = outputs[ASSET_ORDER[-1]].metrics
    result.glb_bytes = int(final["glb_bytes"])
    result.glb_uncompressed_bytes = int(final.get("glb_uncompressed_bytes", final["glb_bytes"]))
    return result


def evaluate_params(name: str, params: Mapping[str, Any], production: Mapping[str, ModelVersion],
                    evaluation_set: EvaluationSet, runtime: Any) -> Evaluation:  # fmt: skip
    """Run the evaluation harness with `name`'s candidate parameters (the other model-bearing
    steps at their production parameters): the fit on photos and on synthetic truth
    (`models.evaluation`, as `make eval`), end-to-end builds by the pipeline's steps (GLB size,
    step times) and the novel-view fidelity of the texture bake (`models.eval_appearance`).
    `runtime` is the machine's `ops.steps.WorkerRuntime`."""
    from models.body_model import AnnyBody, load_body_model
    from models.evaluation import (
        evaluate_photo,
        evaluate_synthetic,
        list_photos,
        novel_view_fidelity,
        summarise,
        summarise_builds,
    )
    from models.fitting import FitConfig
    from models.keypoints import DetectorConfig

    if name not in EVALUATED_MODELS:
        raise RegistryError(f"the evaluation harness exercises {', '.join(EVALUATED_MODELS)}, not {name}")
    start = time.perf_counter()
    all_params = {m: dict(mv.params) for m, mv in production.items()} | {name: dict(params)}
    fit_config = FitConfig.from_params(all_params["body_fitter"])
    detector_config = DetectorConfig(**all_params["keypoint_detector"])
    body = load_body_model(runtime.smplx_model_dir, runtime.anny_cache_dir)
    photos = [p for p, _ in list_photos(evaluation_set.photo_folders)][: evaluation_set.max_photos]
    photo_results = [
        evaluate_photo(p, body, fit_config, detector_config, with_panels=False)[0] for p in photos
    ]
    synthetic, appearance, appearance_rows = [], {}, []
    if isinstance(body, AnnyBody):
        for i in range(evaluation_set.synthetic):
            synthetic.append(evaluate_synthetic(evaluation_set.seed + i, body, fit_config, detector_config,
                                                with_height_hint=False)[0])  # fmt: skip
        texture_size = int(all_params["reconstructor"].get("texture_size", 1024))
        appearance, appearance_rows = novel_view_fidelity(body, evaluation_set.appearance, evaluation_set.seed,
                                                          texture_size)  # fmt: skip
    builds = [build_in_memory(p, all_params, runtime) for p in photos[: evaluation_set.builds]]
    summary, _ = summarise(photo_results, synthetic)
    summary |= summarise_builds(builds) | appearance
    metrics = {
        k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return Evaluation(name, dict(params), metrics, [asdict(r) for r in photo_results], [asdict(r) for r in synthetic],
                      evaluation_set, round(time.perf_counter() - start, 2), [asdict(b) for b in builds],
                      appearance_rows)  # fmt: skip


def _runtime(settings: Settings) -> Any:
    from ops.steps import WorkerRuntime

    return WorkerRuntime.from_config(settings.app)


def evaluation_tags(evaluation: Evaluation) -> dict[str, str]:
    return provenance_tags() | {
        TAG_EVALUATED_AT: datetime.now(UTC).isoformat(timespec="seconds"),
        TAG_EVAL_SET: evaluation.evaluation_set.describe(),
    }


def evaluate_version(
    settings: Settings, name: str, version: str, evaluation_set: EvaluationSet
) -> Evaluation:
    """Evaluate an existing version (e.g. the champion, before comparing) and log the result."""
    registry = open_registry(RegistryLocation.for_settings(settings))
    target = registry.get_version(name, version)
    evaluation = evaluate_params(name, target.params, registry.production_versions(), evaluation_set,
                                 _runtime(settings))  # fmt: skip
    registry.log_evaluation(name, target.version, evaluation.metrics, evaluation_tags(evaluation))
    return evaluation


@dataclass(frozen=True)
class Registration:
    version: ModelVersion
    evaluation: Evaluation | None


def register_candidate(settings: Settings, name: str, changes: Mapping[str, Any], from_version: str | None,
                       metrics: Mapping[str, float], description: str | None,
                       evaluation_set: EvaluationSet | None) -> Registration:  # fmt: skip
    """Register a version; with `evaluation_set`, evaluate its parameters first (refusals still
    happen before anything is written) and log the metrics and provenance on its run."""
    registry = open_registry(RegistryLocation.for_settings(settings))
    evaluation = None
    all_metrics = dict(metrics)
    tags: dict[str, str] = {}
    if evaluation_set is not None:
        _, params = registry.plan_params(name, changes, from_version)
        evaluation = evaluate_params(
            name, params, registry.production_versions(), evaluation_set, _runtime(settings)
        )
        all_metrics = evaluation.metrics | all_metrics
        tags = evaluation_tags(evaluation)
    version = registry.register_version(name, changes, from_version=from_version, metrics=all_metrics,
                                        description=description, tags=tags)  # fmt: skip
    return Registration(version, evaluation)


# ---------------------------------------------------------------------------------------------
# which avatars a version built
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AvatarBuilt:
    upload_id: str
    subject_id: str
    status: str | None
    assets: tuple[str, ...]  # the upload's artifacts built with this version (directly)
    artifact_ids: tuple[str, ...]
    current: bool  # False: every one of them has since been superseded


@dataclass(frozen=True)
class VersionAvatars:
    model: str
    version: str
    mlflow_url: str
    avatars: tuple[AvatarBuilt, ...]

    @property
    def count(self) -> int:
        return sum(a.current for a in self.avatars)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "mlflow_url": self.mlflow_url,
                "current_count": self.count, "avatars": [asdict(a) for a in self.avatars]}  # fmt: skip


def avatars_of_version(metadata: Any, location: RegistryLocation, name: str, version: str,
                       include_superseded: bool = False) -> VersionAvatars:  # fmt: skip
    """Uploads with artifacts recorded with `name`@`version` (the ledger's `model_versions`:
    the version used directly by that step). Current ones by default."""
    by_upload: dict[str, list[dict]] = {}
    for doc in metadata.all_artifacts():
        if str((doc.get("model_versions") or {}).get(name)) == str(version):
            by_upload.setdefault(doc["upload_id"], []).append(doc)
    avatars = []
    for upload_id in sorted(by_upload):
        docs = by_upload[upload_id]
        current = [d for d in docs if d.get("superseded_by") is None]
        if not current and not include_superseded:
            continue
        shown = current or docs
        upload = metadata.get_upload(upload_id) or {}
        avatars.append(AvatarBuilt(upload_id, shown[0]["subject_id"], upload.get("status"),
                                   tuple(sorted({d["asset_key"] for d in shown}, key=ASSET_ORDER.index)),
                                   tuple(d["_id"] for d in shown), bool(current)))  # fmt: skip
    return VersionAvatars(
        name, str(version), mlflow_version_url(location, name, str(version)), tuple(avatars)
    )


def sync_avatar_tags(settings: Settings, name: str) -> dict[str, int]:
    """Tag every version of `name` in MLflow with how many avatars it currently built and the
    command that lists them (refreshed by reprocess, canary, rollback and `models avatars`)."""
    from storage.metadata_store import open_metadata_store

    with open_metadata_store(settings.mongodb_uri, settings.metadata_dir) as metadata:
        return tag_avatar_counts(metadata, RegistryLocation.for_settings(settings), name)


def tag_avatar_counts(metadata: Any, location: RegistryLocation, name: str) -> dict[str, int]:
    """`sync_avatar_tags` on an open ledger (the `model_upgrade_sensor` has one)."""
    registry = open_registry(location)
    counts = {}
    now = datetime.now(UTC).isoformat(timespec="seconds")
    for mv in registry.versions(name, with_metrics=False):
        counts[mv.version] = avatars_of_version(metadata, location, name, mv.version).count
        registry.set_version_tags(name, mv.version, {
            TAG_AVATARS: counts[mv.version], TAG_AVATARS_AT: now,
            TAG_AVATARS_QUERY: f"avatarpipe models avatars {name} {mv.version} --json"})  # fmt: skip
    return counts


# ---------------------------------------------------------------------------------------------
# canary
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckOutcome:
    asset: str
    passed: bool
    severity: str | None  # ERROR | WARN | None
    failed: tuple[str, ...]  # names of the failed expectations


@dataclass(frozen=True)
class CanaryUpload:
    upload_id: str
    subject_id: str
    assets: tuple[str, ...]
    champion_checks: tuple[CheckOutcome, ...]
    candidate_checks: tuple[CheckOutcome, ...]
    metrics: tuple[MetricVerdict, ...]
    candidate_objects: dict[str, str]  # asset -> object key of the candidate's output
    error: str | None = None  # the candidate failed to build this upload

    def problems(self) -> list[str]:
        if self.error:
            return [f"{self.upload_id}: candidate failed: {self.error}"]
        out = [f"{self.upload_id}: {m.metric} regressed {m.champion:g} -> {m.challenger:g} (tolerance {m.tolerance:g})"
               for m in self.metrics if m.blocking]  # fmt: skip
        champion = {c.asset: c for c in self.champion_checks}
        for check in self.candidate_checks:
            if check.severity == "ERROR" and champion.get(check.asset, check).severity != "ERROR":
                out.append(f"{self.upload_id}: {check.asset} quality check fails ({', '.join(check.failed)})")
        return out


@dataclass(frozen=True)
class CanaryReport:
    model: str
    candidate: str
    champion: str
    seed: int
    gates_version: int
    affected: int  # uploads the candidate would change
    uploads: tuple[CanaryUpload, ...]
    production_before: dict[str, str]
    production_after: dict[str, str]
    seconds: float

    @property
    def problems(self) -> list[str]:
        return [p for u in self.uploads for p in u.problems()]

    @property
    def passed(self) -> bool:
        return bool(self.uploads) and not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "candidate": self.candidate, "champion": self.champion, "seed": self.seed,
            "gates_version": self.gates_version, "affected": self.affected,
            "verdict": "passed" if self.passed else "failed", "problems": self.problems,
            "production_before": self.production_before, "production_after": self.production_after,
            "seconds": self.seconds, "uploads": [asdict(u) for u in self.uploads],
        }  # fmt: skip


class _CanaryLedger:
    """The ledger as the quality metrics see it during a canary: the real metadata store, plus
    the candidate's documents, which exist only in memory (they never enter `artifacts`)."""

    def __init__(self, metadata: Any, candidates: Mapping[str, dict]) -> None:
        self._metadata, self._candidates = metadata, candidates

    def get_artifact(self, artifact_id: str) -> dict | None:
        return self._candidates.get(artifact_id) or self._metadata.get_artifact(artifact_id)


def check_artifact(asset: str, doc: dict, store: Any, ledger: Any) -> tuple[CheckOutcome, dict[str, Any]]:
    """The asset check's quality suite on one artifact (the same metrics and expectations as the
    Dagster asset check; nothing recorded)."""
    from assets.checks import ARTIFACT_METRICS, evaluate_suite, load_suite

    row = ARTIFACT_METRICS[asset](doc, store, ledger).row
    evaluation = evaluate_suite(load_suite(asset), row)
    failed = tuple(o.name for o in evaluation.failed)
    return CheckOutcome(asset, evaluation.passed, evaluation.severity, failed), row


def _candidate_rigged_glb(store: Any, subject_id: str, upload_id: str, mesh: dict, fit: dict,
                          params: Mapping[str, dict], anny_cache: str, gltfpack: Any) -> tuple[str, dict]:  # fmt: skip
    """The `rigged_glb` asset's computation on the candidate's fit and mesh; returns the stored
    object key and the step's metrics."""
    import io

    import numpy as np

    from models.body_model import load_anny
    from models.clothing import Garment
    from models.face_blendshapes import arkit_expression
    from models.fitting import BodyFit
    from models.gltf_export import compress_glb, find_gltfpack
    from models.rigging import build_rigged_avatar
    from storage.object_store import artifact_key, sha256_hex

    fit_json = json.loads(store.get_bytes(fit["key"]))
    body_fit = BodyFit.from_dict(fit_json)
    texture = store.get_bytes(mesh["extra_files"]["texture"])
    offsets = np.load(io.BytesIO(store.get_bytes(mesh["extra_files"]["offsets"])), allow_pickle=False).astype(
        np.float64
    )
    m = mesh["metrics"]
    garment = Garment.from_dict({"kind": m.get("garment", "none"), "hem_fraction": m.get("garment_hem_fraction", 0.0),
                                 "hem_height_m": m.get("garment_hem_m", 0.0)})  # fmt: skip
    avatar = build_rigged_avatar(load_anny(anny_cache), body_fit.phenotype, body_fit.pose_parameters, texture, offsets,
                                 expression=arkit_expression(fit_json.get("expression")), garment=garment)  # fmt: skip
    glb = avatar.glb
    if params.get("rigger", {}).get("compress"):
        glb = compress_glb(glb, find_gltfpack(gltfpack))
    key = store.put_bytes(artifact_key(subject_id, upload_id, "rigged_glb", sha256_hex(glb), "glb"), glb).key
    return key, {
        "glb_bytes": len(glb),
        "height_m": round(avatar.height_m, 4),
        "joint_count": avatar.joint_count,
    }


def _run_candidate_chain(settings: Settings, store: Any, metadata: Any, upload: dict, assets: Sequence[str],
                         params: Mapping[str, dict]) -> dict[str, dict]:  # fmt: skip
    """Build `assets` of one upload with `params`, from its current upstream artifacts; returns
    in-memory artifact documents (id `candidate:<asset>:<sha>`), never recorded in the ledger."""
    from ops.steps import FIT, KEYPOINTS, MASK, PHOTO, StepRequest, WorkerRuntime, execute_step

    upload_id, subject_id = upload["_id"], upload["subject_id"]
    docs: dict[str, dict] = {
        a: metadata.current_artifact(upload_id, a) for a in ASSET_ORDER if a not in assets
    }
    built: dict[str, dict] = {}
    runtime = WorkerRuntime.from_config(settings.app)
    inputs_of = {"smplx_params": {KEYPOINTS: ("keypoints", None), MASK: ("keypoints", "mask")},
                 "mesh": {FIT: ("smplx_params", None), PHOTO: ("photo", None), KEYPOINTS: ("keypoints", None),
                          MASK: ("keypoints", "mask")}}  # fmt: skip
    step_params = dict(params) | (
        {"body_hints": dict(upload["body_hints"])} if upload.get("body_hints") else {}
    )
    for asset in assets:
        parents = {a: docs[a] for a in ("photo", "keypoints", "smplx_params", "mesh") if a in docs}
        if asset in inputs_of:
            keys = {name: (parents[a]["extra_files"][extra] if extra else parents[a]["key"])
                    for name, (a, extra) in inputs_of[asset].items()}  # fmt: skip
            wanted = {m: step_params[m] for m in (*ASSET_MODELS[asset], "body_hints") if m in step_params}
            request = StepRequest(asset, upload_id, subject_id, keys, wanted, settings.object_store_config())
            result = execute_step(request, store, runtime=runtime)
            key, extra, metrics = result.key, result.extra_files, dict(result.metrics)
            metrics["compute_seconds"] = result.compute_seconds
            parent_ids = [parents[a]["_id"] for a in dict.fromkeys(a for a, _ in inputs_of[asset].values())]
        elif asset == "rigged_glb":
            start = time.perf_counter()
            key, metrics = _candidate_rigged_glb(store, subject_id, upload_id, parents["mesh"], parents["smplx_params"],
                                                 step_params, runtime.anny_cache_dir or "", settings.app.gltfpack)  # fmt: skip
            metrics["compute_seconds"] = round(time.perf_counter() - start, 3)
            extra, parent_ids = {}, [parents["mesh"]["_id"], parents["smplx_params"]["_id"]]
        else:
            raise RegistryError(f"a canary cannot rebuild {asset} (only the fit, mesh and rigging steps)")
        doc = {"_id": f"candidate:{asset}:{key.rsplit('/', 1)[-1]}", "asset_key": asset, "upload_id": upload_id,
               "subject_id": subject_id, "key": key, "extra_files": extra, "metrics": metrics,
               "parent_ids": parent_ids}  # fmt: skip
        docs[asset] = built[asset] = doc
    return built


def _flatten(asset: str, metrics: Mapping[str, Any]) -> dict[str, float]:
    return {f"{asset}.{k}": float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}  # fmt: skip


def _canary_upload(settings: Settings, store: Any, metadata: Any, upload: dict, assets: Sequence[str],
                   params: Mapping[str, dict], gates: Gates) -> CanaryUpload:  # fmt: skip
    from models.errors import PipelineError

    champion_docs = {a: metadata.current_artifact(upload["_id"], a) for a in assets}
    champion_checks, champion_metrics = [], {}
    for asset, doc in champion_docs.items():
        outcome, _ = check_artifact(asset, doc, store, metadata)
        champion_checks.append(outcome)
        champion_metrics |= _flatten(
            asset, doc.get("metrics", {}) | {"compute_seconds": doc.get("compute_seconds", 0)}
        )
    try:
        built = _run_candidate_chain(settings, store, metadata, upload, assets, params)
    except PipelineError as exc:
        return CanaryUpload(upload["_id"], upload["subject_id"], tuple(assets), tuple(champion_checks), (), (), {},
                            f"{exc.code.value}: {exc.message}"[:300])  # fmt: skip
    ledger = _CanaryLedger(metadata, {d["_id"]: d for d in built.values()})
    candidate_checks, candidate_metrics = [], {}
    for asset, doc in built.items():
        outcome, _ = check_artifact(asset, doc, store, ledger)
        candidate_checks.append(outcome)
        candidate_metrics |= _flatten(asset, doc["metrics"])
    shared = {k for k in candidate_metrics if k in champion_metrics}
    verdicts = judge_metrics({k: champion_metrics[k] for k in shared}, {k: candidate_metrics[k] for k in shared},
                             {k: g for k, g in gates.canary.items() if k in shared})  # fmt: skip
    return CanaryUpload(upload["_id"], upload["subject_id"], tuple(assets), tuple(champion_checks),
                        tuple(candidate_checks), tuple(v for v in verdicts if v.verdict != "ungated"),
                        {a: d["key"] for a, d in built.items()})  # fmt: skip


def candidate_version(settings: Settings, name: str) -> str:
    """The version a canary tries when none is named: the `candidate` alias, else the newest
    version that is not production."""
    registry = open_registry(RegistryLocation.for_settings(settings))
    versions = registry.versions(name, with_metrics=False)
    for mv in versions:
        if CANDIDATE_ALIAS in mv.aliases:
            return mv.version
    others = [mv for mv in versions if "production" not in mv.aliases]
    if not others:
        raise RegistryError(f"{name} has no version besides production to try; register one first")
    return others[-1].version


def choose_canary_uploads(targets: Sequence[Any], count: int, seed: int) -> list[Any]:
    """`count` of the affected uploads, chosen at random with a seed (same seed, same choice)."""
    ordered = sorted(targets, key=lambda t: t.upload_id)
    chosen = random.Random(seed).sample(ordered, min(count, len(ordered)))
    return sorted(chosen, key=lambda t: t.upload_id)


def run_canary(settings: Settings, name: str, version: str, count: int, seed: int = 0,
               gates: Gates | None = None) -> CanaryReport:  # fmt: skip
    """Rebuild `count` affected uploads with `version` under the `candidate` alias, check and
    measure them like the pipeline does, compare with the champion's current artifacts.

    Production is never touched: the alias `production` stays, the candidate's outputs are
    objects under the uploads' subject prefixes (so erasure finds them) with no `artifacts`
    document (so they never become current, and `avatarpipe fsck` treats them as orphans); the
    result is one `model_canary` audit event per upload plus a summary event, and tags on the
    version.
    """
    from ops.reprocess import plan_reprocess
    from storage.metadata_store import open_metadata_store
    from storage.object_store import object_store_from_config

    if count < 1:
        raise RegistryError("--canary needs N >= 1")
    gates = gates or load_gates()
    start = time.perf_counter()
    location = RegistryLocation.for_settings(settings)
    registry = open_registry(location)
    production = registry.production_versions()
    candidate = registry.get_version(name, version)
    if candidate.version == production[name].version:
        raise RegistryError(
            f"{name} v{candidate.version} is production already; a canary needs another version"
        )
    before = production_map(production)
    with_candidate = before | {name: candidate.version}
    registry.set_alias(name, CANDIDATE_ALIAS, candidate.version)
    registry.set_version_tags(name, candidate.version, {TAG_CANARY: "running"})  # the sensor waits for it
    try:
        params = {m: mv.params for m, mv in production.items()} | {name: candidate.params}
        store = object_store_from_config(settings.object_store_config())
        with open_metadata_store(settings.mongodb_uri, settings.metadata_dir) as metadata:
            plan = plan_reprocess(metadata, with_candidate, ASSET_MODELS, ASSET_ORDER, [name])
            rows = []
            for target in choose_canary_uploads(plan.targets, count, seed):
                assets = ASSET_ORDER[ASSET_ORDER.index(target.first_asset) :]
                upload = metadata.get_upload(target.upload_id)
                row = _canary_upload(settings, store, metadata, upload, assets, params, gates)
                rows.append(row)
                metadata.append_audit("model_canary", row.subject_id, row.upload_id, {
                    "model": name, "candidate": candidate.version, "champion": before[name],
                    "problems": row.problems(), "candidate_objects": row.candidate_objects,
                    "metrics": [[m.metric, m.champion, m.challenger, m.verdict] for m in row.metrics]})  # fmt: skip
            after = production_map(open_registry(location).production_versions())
            report = CanaryReport(name, candidate.version, before[name], seed, gates.version, len(plan.targets),
                                  tuple(rows), before, after, round(time.perf_counter() - start, 2))  # fmt: skip
            metadata.append_audit("model_canary_summary", None, None, {
                "model": name, "candidate": candidate.version, "champion": before[name], "seed": seed,
                "uploads": len(rows), "affected": report.affected, "verdict": "passed" if report.passed else "failed",
                "problems": len(report.problems), "gates_version": gates.version})  # fmt: skip
    except Exception as exc:  # a crashed canary is a failed one (and no longer "running")
        registry.set_version_tags(name, candidate.version, {TAG_CANARY: "failed",
                                  TAG_CANARY_SUMMARY: f"the canary crashed: {type(exc).__name__}"})  # fmt: skip
        raise
    # No upload ids in MLflow (erasure verification scans it): what failed, counted.
    regressed = sorted({m.metric for u in rows for m in u.metrics if m.blocking})
    failing = sorted({c.asset for u in rows for c in u.candidate_checks if c.severity == "ERROR"})
    summary = (
        f"{len(rows)} upload(s), seed {seed}, vs v{before[name]}: {len(report.problems)} problem(s)"
        + (f"; regressed: {', '.join(regressed)}" if regressed else "")
        + (f"; blocking checks failed: {', '.join(failing)}" if failing else "")
        + (f"; {sum(u.error is not None for u in rows)} build error(s)" if any(u.error for u in rows) else "")
    )
    registry.set_version_tags(name, candidate.version, {TAG_CANARY: "passed" if report.passed else "failed",
                                                        TAG_CANARY_SUMMARY: summary[:4000]})  # fmt: skip
    return report


def candidate_versions(registry: ModelRegistry, production: Mapping[str, str]) -> dict[str, str]:
    """{model: version} of every model whose `candidate` alias points at a version other than
    production (what the `model_upgrade_sensor` canaries)."""
    found = {}
    for name in production:
        version = (registry.client.get_registered_model(name).aliases or {}).get(CANDIDATE_ALIAS)
        if version is not None and str(version) != str(production[name]):
            found[name] = str(version)
    return found


def canary_started(registry: ModelRegistry, name: str, version: str) -> bool:
    """Whether a canary of this version ran or is running (the CLI's or the sensor's)."""
    return TAG_CANARY in registry.version_tags(name, version)


@dataclass(frozen=True)
class CanaryDecision:
    """The sensor path's canary: its report and what followed. `promotion` is the
    `promote_version` answer after a passed canary; `refused` why the gates still refused it."""

    report: CanaryReport
    promotion: dict[str, Any] | None
    refused: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"canary": self.report.to_dict(), "promotion": self.promotion, "refused": self.refused}


def canary_then_promote(settings: Settings, name: str, version: str, count: int, seed: int = 0,
                        promote: bool = True) -> CanaryDecision:  # fmt: skip
    """The canary on `count` seeded-random affected uploads (`run_canary`, recorded exactly as
    the CLI's); when it passed and `promote`, the gated promotion (trigger `canary`), after
    which the `model_upgrade_sensor` reprocesses the rest. A failed canary, or a promotion the
    evaluation gates refuse, leaves production as it was."""
    report = run_canary(settings, name, version, count, seed)
    if not (report.passed and promote):
        return CanaryDecision(report, None)
    try:
        return CanaryDecision(report, promote_version(settings, name, version, trigger="canary"))
    except PromotionRefused as exc:
        return CanaryDecision(report, None, str(exc))


# ---------------------------------------------------------------------------------------------
# rollback
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rollback:
    model: str
    bad: str  # the version that was production
    restored: str  # the version production points at again
    uploads: tuple[str, ...]  # exactly the avatars the bad version built (current artifacts)
    reprocess: dict[str, Any] = field(default_factory=dict)  # the reprocess answer (empty: dry run)


def previous_production(metadata: Any, name: str, current: str) -> str:
    """The version that was production before `current` became it (the audit log's latest
    promotion of `name` to `current` from another version)."""
    for event in reversed(metadata.audit_events("model_promote")):
        details = event.get("details") or {}
        if details.get("model") == name and str(details.get("production")) == str(current) \
                and details.get("previous") not in (None, str(current)):  # fmt: skip
            return str(details["previous"])
    raise RegistryError(f"no recorded promotion of {name} to v{current}: nothing to roll back to "
                        f"(`avatarpipe models promote {name} VERSION` picks one)")  # fmt: skip


def uploads_built_with(metadata: Any, location: RegistryLocation, name: str, version: str) -> list[str]:
    """Uploads with a current artifact recorded with `name`@`version` (used directly)."""
    return [a.upload_id for a in avatars_of_version(metadata, location, name, version).avatars if a.current]


def rollback(settings: Settings, name: str, run: bool = True) -> Rollback:
    """Point `production` back at the previous version and rebuild only the uploads whose
    current artifacts the bad version built (not uploads stale for other reasons)."""
    from storage.metadata_store import open_metadata_store

    location = RegistryLocation.for_settings(settings)
    registry = open_registry(location)
    bad = registry.production_versions()[name].version
    with open_metadata_store(settings.mongodb_uri, settings.metadata_dir) as metadata:
        restored = previous_production(metadata, name, bad)
        uploads = uploads_built_with(metadata, location, name, bad)
        promotion = registry.promote(name, restored)
        metadata.append_audit("model_promote", None, None, {"model": name, "previous": promotion.previous,
                                                            "production": promotion.production, "trigger": "rollback"})  # fmt: skip
        metadata.append_audit("model_rollback", None, None, {"model": name, "bad": bad, "restored": restored,
                                                             "uploads": len(uploads)})  # fmt: skip
    registry.set_version_tags(
        name, bad, {"avatarpipe.rolled_back_at": datetime.now(UTC).isoformat(timespec="seconds")}
    )
    answer: dict[str, Any] = {}
    if uploads:
        from orchestration.app import reprocess  # the application layer (Dagster, lazily)

        answer = reprocess(settings, [name], uploads, dry_run=not run)
        sync_avatar_tags(settings, name)
    return Rollback(name, bad, restored, tuple(uploads), answer)


def format_comparison(comparison: Comparison) -> str:
    """The human table of `models compare`."""
    lines = [(f"{comparison.model}: v{comparison.champion} (champion) vs v{comparison.challenger} (challenger), "
             f"gates v{comparison.gates_version}")]  # fmt: skip
    lines.append(f"  {'metric':<48} {'v' + comparison.champion:>12} {'v' + comparison.challenger:>12} "
                 f"{'difference':>12}  verdict")  # fmt: skip
    for m in comparison.metrics:
        lines.append(f"  {m.metric:<48} {_num(m.champion):>12} {_num(m.challenger):>12} {_num(m.difference):>12}  "
                     f"{m.verdict}{'' if m.gated or m.verdict == 'ungated' else ' (not gated)'}")  # fmt: skip
    lines.append(f"verdict: {comparison.verdict}" + (": " + "; ".join(comparison.refusal_reasons())
                                                      if comparison.refusal_reasons() else ""))  # fmt: skip
    return "\n".join(lines)


def format_canary(report: CanaryReport) -> str:
    lines = [(f"canary {report.model} v{report.candidate} (alias {CANDIDATE_ALIAS}) vs production v{report.champion}: "
             f"{len(report.uploads)} of {report.affected} affected upload(s), seed {report.seed}")]  # fmt: skip
    for row in report.uploads:
        checks = ", ".join(f"{c.asset} {'pass' if c.passed else c.severity}" for c in row.candidate_checks)
        lines.append(f"  {row.upload_id}: {' -> '.join(row.assets)}; candidate checks: {checks or row.error}")
        for m in row.metrics:
            if m.gated:
                lines.append(
                    f"    {m.metric:<40} {_num(m.champion):>10} -> {_num(m.challenger):>10}  {m.verdict}"
                )
    lines.append(f"verdict: {'passed' if report.passed else 'FAILED'}; production unchanged "
                 f"({' '.join(f'{k}@{v}' for k, v in report.production_after.items())})")  # fmt: skip
    lines += [f"  {p}" for p in report.problems]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def avatar_lines(result: VersionAvatars) -> Iterable[str]:
    yield f"{result.model} v{result.version}: {result.count} avatar(s) currently built with it ({result.mlflow_url})"
    for a in result.avatars:
        yield f"  {a.upload_id} (subject {a.subject_id}, {a.status}): {', '.join(a.assets)}" + (
            "" if a.current else " [superseded]"
        )
