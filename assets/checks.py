"""Quality gates: Great Expectations suites evaluated as Dagster asset checks.

Each checked asset (`smplx_params`, `mesh`, `rigged_glb`) has one suite under
`assets/expectations/<asset>_quality.json` (GX 1.x suite JSON, versioned with the code). Every
expectation carries `meta.name` (stable, unique in the suite) and `meta.severity`:

- `ERROR` expectations are blocking: if one fails, the check fails with severity ERROR, Dagster
  does not materialise anything downstream in the run (`blocking=True`), and the upload is
  marked `failed_quality` with code QUALITY_GATE_FAILED and the failed expectations.
- `WARN` expectations are recorded: the check fails with severity WARN, nothing is blocked.

A check computes the artifact's metrics row (`ops.quality_rows`, over `models.quality`), validates it with a fresh
ephemeral GX context (pandas datasource, one-row DataFrame) — in the compute mode `warm` both
happen in a warm worker, which keeps GX imported and the suites loaded (`serve_quality_request`),
so the run process imports neither GX nor the science — records one document in the
metadata store's `validations` collection and returns the result with metadata for the UI.
The `rigged_glb` check is the last gate, so it is the one that marks the upload `ready`.

dagster-ge requires GX < 1.0, hence plain `@asset_check`s; GX is imported lazily (seconds).
"""

import hashlib
import json
import logging
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetKey,
    MetadataValue,
    PreviewWarning,
    asset_check,
)

from assets.partitions import uploads_partitions
from models.errors import ErrorCode, PipelineError
from ops.quality_rows import ARTIFACT_METRICS, ArtifactMetrics, wire_doc, wire_parents
from ops.raw_retention import delete_raw_when_ready, raw_retention_policy
from ops.steps import CHECKED_ASSETS  # the steps declared `checked` (ops/steps.py)
from storage.metadata_store import InvalidTransition, MetadataStore, ValidationRecord
from storage.object_store import ObjectStore

log = logging.getLogger(__name__)

EXPECTATIONS_DIR = Path(__file__).resolve().parent / "expectations"
SEVERITIES = ("ERROR", "WARN")
# GX 1.x's own expectation severity, kept in step with meta.severity (shown in Data Docs).
_GX_SEVERITY = {"ERROR": "critical", "WARN": "warning"}
FINAL_ASSET = "rigged_glb"


def check_name(asset_key: str) -> str:
    return f"{asset_key}_quality"


def expectations_dir() -> Path:
    """The suites' directory: `AVATARPIPE_EXPECTATIONS_DIR` (e.g. to stage a stricter bar) or the repo's."""
    from orchestration.config import load_config

    return load_config().expectations_dir or EXPECTATIONS_DIR


# ---------------------------------------------------------------------------------------------
# suites and their evaluation (no Dagster)
# ---------------------------------------------------------------------------------------------


class SuiteError(ValueError):
    """A suite file is malformed (missing name/severity, duplicate names, unknown severity)."""


@dataclass(frozen=True)
class Suite:
    name: str
    asset_key: str
    sha: str  # content hash of the JSON file: which version of the bar was applied
    data: dict
    path: str = ""  # the file it was read from

    @property
    def expectations(self) -> list[dict]:
        return self.data["expectations"]

    def severity_counts(self) -> dict[str, int]:
        return {sev: sum(e["meta"]["severity"] == sev for e in self.expectations) for sev in SEVERITIES}

    def to_gx(self) -> Any:
        import great_expectations as gx

        data = json.loads(json.dumps(self.data))
        for exp in data["expectations"]:
            exp["severity"] = _GX_SEVERITY[exp["meta"]["severity"]]
        return gx.ExpectationSuite(**data)


def load_suite(asset_key: str, directory: Path | None = None) -> Suite:
    path = (directory or expectations_dir()) / f"{check_name(asset_key)}.json"
    raw = path.read_bytes()
    data = json.loads(raw)
    if not data.get("name") or not isinstance(data.get("expectations"), list) or not data["expectations"]:
        raise SuiteError(f"{path}: a suite needs a name and a non-empty expectations list")
    names = set()
    for index, exp in enumerate(data["expectations"]):
        meta = exp.get("meta", {})
        if meta.get("severity") not in SEVERITIES:
            raise SuiteError(f"{path}: expectation {index} needs meta.severity in {SEVERITIES}")
        if not meta.get("name") or meta["name"] in names:
            raise SuiteError(f"{path}: expectation {index} needs a unique meta.name")
        names.add(meta["name"])
    sha = hashlib.sha256(raw).hexdigest()[:12]
    return Suite(name=data["name"], asset_key=asset_key, sha=sha, data=data, path=str(path))


def load_suites(directory: Path | None = None) -> dict[str, Suite]:
    return {asset: load_suite(asset, directory) for asset in CHECKED_ASSETS}


@dataclass(frozen=True)
class ExpectationOutcome:
    name: str
    expectation: str  # GX expectation type
    column: str | None
    severity: str
    success: bool
    observed: Any
    expected: dict  # the expectation's kwargs (without column / batch id)
    description: str = ""
    exception: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "expectation": self.expectation,
            "column": self.column,
            "severity": self.severity,
            "success": self.success,
            "observed": self.observed,
            "expected": self.expected,
            **({"exception": self.exception} if self.exception else {}),
        }

    def explain(self) -> str:
        """`hole_count = 3, expected between 0 and 0` and the like."""
        kw = self.expected
        if "min_value" in kw or "max_value" in kw:
            want = f"between {kw.get('min_value', '-inf')} and {kw.get('max_value', 'inf')}"
        elif "value_set" in kw:
            want = f"in {kw['value_set']}"
        elif self.expectation.endswith("not_be_null"):
            want = "not null"
        else:
            want = json.dumps(kw)
        text = f"{self.name}: {self.column} = {self.observed}, expected {want}"
        return text + (f" ({self.exception})" if self.exception else "")


@dataclass(frozen=True)
class SuiteEvaluation:
    suite: Suite
    outcomes: list[ExpectationOutcome]
    gx_result: dict  # GX's ExpectationSuiteValidationResult as JSON
    gx_seconds: float  # context + validation
    gx_import_seconds: float  # first import in this process, else 0

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    @property
    def severity(self) -> str | None:
        """ERROR if a blocking expectation failed, WARN if only warnings failed, None if all passed."""
        severities = {o.severity for o in self.failed}
        return "ERROR" if "ERROR" in severities else ("WARN" if severities else None)

    @property
    def passed(self) -> bool:
        return not self.failed

    def to_wire(self) -> dict[str, Any]:
        """JSON for the warm worker's answer (`evaluation_from_wire` reads it back)."""
        return {
            "outcomes": [asdict(o) for o in self.outcomes],
            "gx_result": self.gx_result,
            "gx_seconds": self.gx_seconds,
            "gx_import_seconds": self.gx_import_seconds,
        }

    def statistics(self) -> dict[str, int]:
        return {
            "evaluated": len(self.outcomes),
            "successful": sum(o.success for o in self.outcomes),
            "failed_error": sum(o.severity == "ERROR" for o in self.failed),
            "failed_warn": sum(o.severity == "WARN" for o in self.failed),
        }


_GX_IMPORTED = False


def import_gx() -> tuple[Any, float]:
    """Import great_expectations (slow: seconds) once; returns the module and the import time."""
    global _GX_IMPORTED
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    start = time.perf_counter()
    import great_expectations as gx

    elapsed = 0.0 if _GX_IMPORTED else time.perf_counter() - start
    _GX_IMPORTED = True
    return gx, elapsed


def quiet_context(gx: Any, **kwargs: Any) -> Any:
    """A GX context without progress bars on stderr."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(**kwargs)
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


def _jsonable(value: Any) -> Any:
    """Plain JSON/BSON values (numpy scalars to Python, NaN kept as None)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluate_suite(suite: Suite, row: dict[str, Any]) -> SuiteEvaluation:
    """Validate one metrics row against the suite in a fresh ephemeral GX context."""
    import pandas as pd

    gx, import_seconds = import_gx()
    start = time.perf_counter()
    context = quiet_context(gx, mode="ephemeral")
    datasource = context.data_sources.add_pandas("avatarpipe_metrics")
    batch_definition = datasource.add_dataframe_asset(suite.asset_key).add_batch_definition_whole_dataframe(
        "metrics_row"
    )
    batch = batch_definition.get_batch(batch_parameters={"dataframe": pd.DataFrame([row])})
    result = batch.validate(suite.to_gx())
    gx_seconds = time.perf_counter() - start
    outcomes = []
    for res in result.results:
        config = res.expectation_config
        kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "column")}
        column = config.kwargs.get("column")
        exception = res.exception_info.get("exception_message") if res.exception_info.get("raised_exception") else None
        outcomes.append(
            ExpectationOutcome(
                name=config.meta["name"],
                expectation=config.type,
                column=column,
                severity=config.meta["severity"],
                success=bool(res.success),
                observed=_jsonable(row.get(column)) if column else None,
                expected=kwargs,
                description=config.meta.get("description", ""),
                exception=exception,
            )
        )
    return SuiteEvaluation(
        suite=suite,
        outcomes=outcomes,
        gx_result=result.to_json_dict(),
        gx_seconds=gx_seconds,
        gx_import_seconds=import_seconds,
    )


def evaluation_from_wire(suite: Suite, data: dict[str, Any]) -> SuiteEvaluation:
    return SuiteEvaluation(
        suite=suite,
        outcomes=[ExpectationOutcome(**o) for o in data["outcomes"]],
        gx_result=data["gx_result"],
        gx_seconds=float(data["gx_seconds"]),
        gx_import_seconds=float(data["gx_import_seconds"]),
    )


@dataclass(frozen=True)
class ArtifactEvaluation:
    """A gate's work on one artifact: its metrics row, how long that took, the suite's verdict."""

    metrics: ArtifactMetrics
    metrics_seconds: float
    evaluation: SuiteEvaluation


def evaluate_artifact(asset_key: str, doc: dict, store: ObjectStore, ledger: Any, suite: Suite) -> ArtifactEvaluation:
    """Compute the artifact's metrics row (`ops.quality_rows`) and validate it with the suite;
    in the check's process or, in the warm mode, in a warm worker (`serve_quality_request`)."""
    start = time.perf_counter()
    metrics = ARTIFACT_METRICS[asset_key](doc, store, ledger)
    metrics_seconds = time.perf_counter() - start
    return ArtifactEvaluation(metrics, metrics_seconds, evaluate_suite(suite, metrics.row))


_SUITES: dict[tuple[str, int, int], Suite] = {}  # a warm worker's suites: (path, mtime, size) -> suite


def cached_suite(asset_key: str, directory: Path) -> Suite:
    """The suite, read once per worker (again only when its file changes)."""
    path = directory / f"{check_name(asset_key)}.json"
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _SUITES:
        _SUITES[key] = load_suite(asset_key, directory)
    return _SUITES[key]


def serve_quality_request(request: dict[str, Any]) -> dict[str, Any]:
    """A warm worker's side of a quality gate: the metrics and the GX validation, with GX
    imported once per worker and the suites kept loaded."""
    from ops.quality_rows import ParentLedger
    from storage.object_store import object_store_from_config

    asset_key = request["asset_key"]
    suite = cached_suite(asset_key, Path(request["suite_dir"]))
    store = object_store_from_config(request["object_store"])
    done = evaluate_artifact(asset_key, request["doc"], store, ParentLedger(request["parents"]), suite)
    return {
        "ok": True,
        "row": {k: _jsonable(v) for k, v in done.metrics.row.items()},
        "extra": done.metrics.extra,
        "metrics_seconds": done.metrics_seconds,
        "evaluation": done.evaluation.to_wire(),
        "suite_sha": suite.sha,
    }


def artifact_from_wire(suite: Suite, answer: dict[str, Any]) -> ArtifactEvaluation:
    """The warm worker's answer; it must have applied this very suite (same content hash)."""
    if answer.get("suite_sha") != suite.sha:
        raise PipelineError(ErrorCode.INTERNAL_ERROR, f"the warm worker applied another version of {suite.name}")
    metrics = ArtifactMetrics(answer["row"], answer["extra"])
    return ArtifactEvaluation(metrics, float(answer["metrics_seconds"]), evaluation_from_wire(suite, answer["evaluation"]))


# ---------------------------------------------------------------------------------------------
# the Dagster checks
# ---------------------------------------------------------------------------------------------


def _results_markdown(evaluation: SuiteEvaluation) -> str:
    lines = ["| | severity | expectation | observed | expected |", "|---|---|---|---|---|"]
    for o in evaluation.outcomes:
        mark = "pass" if o.success else "**FAIL**"
        lines.append(f"| {mark} | {o.severity} | `{o.name}` ({o.column}) | {o.observed} | {json.dumps(o.expected)} |")
    return "\n".join(lines)


def quality_error_message(asset_key: str, evaluation: SuiteEvaluation) -> str:
    blocking = [o for o in evaluation.failed if o.severity == "ERROR"]
    listed = "; ".join(o.explain() for o in blocking)
    return f"{asset_key} failed {len(blocking)} blocking quality expectation(s) of {evaluation.suite.name}: {listed}"[:1500]


def _set_status(metadata: MetadataStore, upload_id: str, status: str, run_id: str, error: dict | None = None) -> None:
    try:
        metadata.set_upload_status(upload_id, status, error=error, run_id=run_id)
    except InvalidTransition:  # erased while the run was going: stays erased
        log.warning("upload %s is erased; not setting status %s", upload_id, status)


def run_quality_check(context: AssetCheckExecutionContext, asset_key: str, suite: Suite) -> AssetCheckResult:
    """Evaluate the suite on this partition's current artifact, record it, gate the upload."""
    upload_id = context.partition_key
    run_id = context.run.run_id
    metadata: MetadataStore = context.resources.metadata.store()
    store: ObjectStore = context.resources.object_store.store()
    try:
        return _run_quality_check(context, metadata, store, upload_id, run_id, asset_key, suite)
    except Exception as exc:
        # A check that cannot run is not a pass: the upload fails with the reason, the step fails.
        error = exc if isinstance(exc, PipelineError) else PipelineError(
            ErrorCode.INTERNAL_ERROR, f"quality check crashed: {type(exc).__name__}: {exc}"[:500], asset_key
        )  # fmt: skip
        _set_status(metadata, upload_id, "failed", run_id, error.to_dict())
        raise


def _run_quality_check(
    context: AssetCheckExecutionContext,
    metadata: MetadataStore,
    store: ObjectStore,
    upload_id: str,
    run_id: str,
    asset_key: str,
    suite: Suite,
) -> AssetCheckResult:
    doc = metadata.current_artifact(upload_id, asset_key)
    if doc is None:
        raise PipelineError(ErrorCode.INTERNAL_ERROR, f"no {asset_key} artifact to check", asset_key)
    compute = context.resources.compute
    if compute.quality_in_worker():  # the warm mode: GX and the science stay out of this process
        request = {"asset_key": asset_key, "doc": wire_doc(doc), "parents": wire_parents(metadata, doc),
                   "object_store": context.resources.object_store.config(), "suite_dir": str(Path(suite.path).parent)}  # fmt: skip
        done = artifact_from_wire(suite, compute.run_quality(request))
    else:
        done = evaluate_artifact(asset_key, doc, store, metadata, suite)
    metrics, metrics_seconds, evaluation = done.metrics, done.metrics_seconds, done.evaluation
    severity = evaluation.severity
    statistics = evaluation.statistics()
    failed = [o.to_dict() for o in evaluation.failed]
    row = {k: _jsonable(v) for k, v in metrics.row.items()}
    validation_id = metadata.record_validation(
        ValidationRecord(
            upload_id=upload_id,
            subject_id=doc["subject_id"],
            asset_key=asset_key,
            artifact_id=doc["_id"],
            check_name=check_name(asset_key),
            suite_name=suite.name,
            suite_sha=suite.sha,
            run_id=run_id,
            passed=evaluation.passed,
            severity=severity,
            blocking=True,
            failed_expectations=failed,
            results=[o.to_dict() for o in evaluation.outcomes],
            statistics=statistics,
            metrics=row,
            gx_result_json=json.dumps(evaluation.gx_result, default=str),
            duration_s=round(metrics_seconds + evaluation.gx_seconds, 3),
        )
    )
    if severity == "ERROR":
        error = PipelineError(ErrorCode.QUALITY_GATE_FAILED, quality_error_message(asset_key, evaluation), asset_key)
        _set_status(metadata, upload_id, "failed_quality", run_id, error.to_dict())
        context.log.error(error.message)
    elif asset_key == FINAL_ASSET:
        _set_status(metadata, upload_id, "ready", run_id)
        from orchestration.config import load_config

        policy = raw_retention_policy(load_config().raw_retention_days)
        delete_raw_when_ready(metadata, store, upload_id, policy)  # data minimisation (ops/raw_retention.py)
    meta: dict[str, Any] = {
        "suite": suite.name,
        "suite_sha": suite.sha,
        "artifact_id": doc["_id"],
        "validation_id": validation_id,
        "expectations_evaluated": statistics["evaluated"],
        "failed_error": statistics["failed_error"],
        "failed_warn": statistics["failed_warn"],
        "failed_expectations": MetadataValue.json(failed),
        "results": MetadataValue.md(_results_markdown(evaluation)),
        "metrics": MetadataValue.json(row),
        "metrics_seconds": round(metrics_seconds, 3),
        "gx_seconds": round(evaluation.gx_seconds, 3),
        "gx_import_seconds": round(evaluation.gx_import_seconds, 3),
    }
    meta |= {name: MetadataValue.json(value) for name, value in metrics.extra.items()}
    return AssetCheckResult(
        passed=evaluation.passed,
        severity=AssetCheckSeverity.WARN if severity == "WARN" else AssetCheckSeverity.ERROR,
        metadata=meta,
        description=(
            quality_error_message(asset_key, evaluation) if severity == "ERROR"
            else f"{statistics['successful']}/{statistics['evaluated']} expectations passed"
        ),
    )  # fmt: skip


def _quality_check(asset_key: str, suite: Suite) -> AssetChecksDefinition:
    counts = suite.severity_counts()

    @asset_check(
        asset=AssetKey(asset_key),
        name=check_name(asset_key),
        blocking=True,
        partitions_def=uploads_partitions,
        required_resource_keys={"object_store", "metadata", "compute"},
        description=(
            f"Great Expectations suite {suite.name} ({counts['ERROR']} blocking ERROR and "
            f"{counts['WARN']} WARN expectations) on the {asset_key} artifact's metrics."
        ),
        metadata={"suite": suite.name, "suite_sha": suite.sha},
    )
    def _check(context: AssetCheckExecutionContext) -> AssetCheckResult:
        return run_quality_check(context, asset_key, suite)

    return _check


def build_quality_checks(directory: Path | None = None) -> list[AssetChecksDefinition]:
    """One blocking check per checked asset; suites are read (and validated) now."""
    suites = load_suites(directory)
    with warnings.catch_warnings():
        # Partitioned asset checks are a Dagster "preview" feature; they are what makes a check
        # run per upload partition, like the assets, so the warning is expected.
        warnings.simplefilter("ignore", PreviewWarning)
        return [_quality_check(asset, suites[asset]) for asset in CHECKED_ASSETS]
