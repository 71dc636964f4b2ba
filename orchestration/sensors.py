"""`model_upgrade_sensor`: when a `production` alias moves, rebuild exactly what it affects.

Dagster's `AutomationCondition.code_version_changed()` fires for one tick and is not per
partition, so reprocessing is a registry-polling sensor instead:

* each tick reads the production versions (snapshot-cached, see `orchestration.registry`);
  when they differ from the cursor's, a new *generation* starts (promotion or rollback alike);
* the affected uploads come from the `artifacts` ledger (`ops.reprocess.plan_reprocess`);
* one run per upload (DESIGN.md: one run touches one partition) of `reprocess_job`, selecting
  the first affected asset and everything downstream, so upstream artifacts are reused;
* bounded concurrency: at most `max_in_flight` runs of the current generation are queued or
  running; the rest are requested on later ticks as earlier ones finish. Runs are tagged with
  the generation, so an upload whose reprocess failed is not retried in a loop (the CLI
  `avatarpipe reprocess` retries it), and `run_key`s make requests idempotent.

Canary (issue 19): when a model's `candidate` alias points at a new version that no canary has
tried yet (the version has no `avatarpipe.canary` tag), the sensor requests one run of
`model_canary_job`: `orchestration.model_ops.canary_then_promote` rebuilds `canary_uploads`
seeded-random affected uploads with the candidate, compares them with production's artifacts,
records the outcome as the CLI's `reprocess --canary` does (audit events, version tags) and,
when it passed, promotes through the same gates as `models promote`. Only that promotion moves
`production`, and the next tick reprocesses the affected uploads as above; a failed canary
leaves production and the current artifacts untouched.
"""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from dagster import (
    AddDynamicPartitionsRequest,
    AssetKey,
    Config,
    DefaultSensorStatus,
    Failure,
    JobDefinition,
    OpExecutionContext,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    job,
    op,
    sensor,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from assets.partitions import uploads_partitions
from ops.reprocess import ReprocessTarget, plan_reprocess, record_reprocess_request
from ops.steps import ASSET_MODELS
from orchestration.registry import production_map
from orchestration.resources import MetadataStoreResource, ModelRegistryResource

SENSOR_NAME = "model_upgrade_sensor"
MAX_IN_FLIGHT_ENV = "AVATARPIPE_REPROCESS_MAX_IN_FLIGHT"
DEFAULT_MAX_IN_FLIGHT = 10

TAG_UPLOAD = "avatarpipe/upload_id"
TAG_TRIGGER = "avatarpipe/trigger"
TAG_GENERATION = "avatarpipe/reprocess_generation"
TAG_FROM = "avatarpipe/reprocess_from"
TAG_MODELS = "avatarpipe/reprocess_models"
TAG_CANARY_MODEL = "avatarpipe/canary_model"
TAG_CANARY_VERSION = "avatarpipe/canary_version"
CANARY_JOB = "model_canary_job"
DEFAULT_CANARY_UPLOADS = 2


@dataclass(frozen=True)
class AssetLayout:
    """The avatar assets in topological order, and for each the selection that rebuilds it:
    itself plus everything downstream (from Dagster's asset graph, so new downstream assets
    are included automatically)."""

    order: tuple[str, ...]
    rebuild: dict[str, tuple[str, ...]]

    @staticmethod
    def from_asset_graph(asset_graph) -> "AssetLayout":
        topo = [key.to_user_string() for key in asset_graph.toposorted_asset_keys]
        rank = {name: i for i, name in enumerate(topo)}
        rebuild = {}
        for name in ASSET_MODELS:
            seen, frontier = {name}, [AssetKey(name)]
            while frontier:
                for child in asset_graph.get(frontier.pop()).child_keys:
                    if child.to_user_string() not in seen:
                        seen.add(child.to_user_string())
                        frontier.append(child)
            rebuild[name] = tuple(sorted(seen, key=rank.__getitem__))
        return AssetLayout(order=tuple(n for n in topo if n in ASSET_MODELS), rebuild=rebuild)


def reprocess_tags(target: ReprocessTarget, trigger: str, generation: str | None = None) -> dict[str, str]:
    tags = {
        TAG_UPLOAD: target.upload_id,
        TAG_TRIGGER: trigger,
        TAG_FROM: target.first_asset,
        TAG_MODELS: ",".join(target.model_labels()),
    }
    if generation:
        tags[TAG_GENERATION] = generation
    return tags


@dataclass(frozen=True)
class SensorCursor:
    production: dict[str, str]
    generation: int
    canaried: dict[str, str] = field(default_factory=dict)  # model -> candidate version canary requested
    counted: int = 0  # the last generation whose finished rebuilds were counted on the MLflow versions

    def generation_id(self) -> str:
        digest = hashlib.sha256(json.dumps(self.production, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.generation}-{digest}"

    def to_json(self) -> str:
        return json.dumps({"production": self.production, "generation": self.generation,
                           "canaried": self.canaried, "counted": self.counted}, sort_keys=True)  # fmt: skip

    @staticmethod
    def parse(raw: str | None) -> "SensorCursor":
        if not raw:
            return SensorCursor(production={}, generation=0)
        data = json.loads(raw)
        return SensorCursor(production=dict(data["production"]), generation=int(data["generation"]),
                            canaried=dict(data.get("canaried") or {}), counted=int(data.get("counted", 0)))  # fmt: skip

    def advance(self, production: Mapping[str, str]) -> "SensorCursor":
        if dict(production) == self.production:
            return self
        return replace(self, production=dict(production), generation=self.generation + 1)


class CanaryConfig(Config):
    model: str
    version: str
    uploads: int = DEFAULT_CANARY_UPLOADS
    seed: int = 0
    promote: bool = True  # promote (through the gates) when the canary passed


@op
def run_model_canary(context: OpExecutionContext, config: CanaryConfig) -> dict:
    """The candidate on seeded-random affected uploads, compared with production's artifacts;
    promoted through the gates when it passed (`orchestration.model_ops.canary_then_promote`).
    Logs counts and verdicts only: upload ids stay in the audit log."""
    from orchestration.model_ops import canary_then_promote  # MLflow, torch: only when it runs
    from orchestration.settings import Settings

    decision = canary_then_promote(Settings.from_env(), config.model, config.version, config.uploads, config.seed,
                                   config.promote)  # fmt: skip
    report = decision.report
    verdict = "passed" if report.passed else "failed"
    summary = {"model": config.model, "candidate": report.candidate, "champion": report.champion, "verdict": verdict,
               "uploads": len(report.uploads), "affected": report.affected, "problems": len(report.problems),
               "promoted": decision.promotion is not None, "refused": decision.refused}  # fmt: skip
    context.add_output_metadata({k: v for k, v in summary.items() if v is not None})
    context.log.info(f"canary {config.model} v{report.candidate} vs v{report.champion}: {verdict} on "
                     f"{len(report.uploads)} of {report.affected} affected upload(s)"
                     + ("; promoted" if decision.promotion else f"; not promoted ({decision.refused})"
                        if decision.refused else ""))  # fmt: skip
    if not report.passed:  # red in the Dagster UI; production stayed where it was
        raise Failure(f"canary of {config.model} v{report.candidate} failed: {len(report.problems)} problem(s); "
                      "production unchanged", metadata={"problems": len(report.problems)})  # fmt: skip
    return summary


@job(name=CANARY_JOB, description="Canary of a model's `candidate` version on a few affected uploads "
     "(requested by the model_upgrade_sensor); promotes it through the gates when it passes.")  # fmt: skip
def model_canary_job() -> None:
    run_model_canary()


def canary_requests(
    model_registry: ModelRegistryResource, production: Mapping[str, str], cursor: SensorCursor, uploads: int,
    promote: bool,
) -> tuple[list[RunRequest], SensorCursor]:  # fmt: skip
    """One `model_canary_job` run per candidate version no canary has tried yet."""
    from orchestration.model_ops import canary_started, candidate_versions
    from orchestration.registry import open_registry

    registry = open_registry(model_registry.location())
    requests, canaried = [], dict(cursor.canaried)
    for model, version in sorted(candidate_versions(registry, production).items()):
        if canaried.get(model) == version or canary_started(registry, model, version):
            continue
        config = CanaryConfig(model=model, version=version, uploads=uploads, seed=0, promote=promote)
        requests.append(RunRequest(
            run_key=f"canary:{model}:{version}", job_name=CANARY_JOB,
            run_config={"ops": {"run_model_canary": {"config": config.model_dump()}}},
            tags={TAG_TRIGGER: "sensor", TAG_CANARY_MODEL: model, TAG_CANARY_VERSION: version}))  # fmt: skip
        canaried[model] = version
    return requests, replace(cursor, canaried=canaried)


def count_avatars(store, model_registry: ModelRegistryResource, production: Mapping[str, str]) -> None:
    """Refresh every model version's avatar count in MLflow (`avatarpipe.avatars_built`, the
    query that lists them) once a generation's rebuilds are done: a few MLflow writes per
    generation, not per tick."""
    from orchestration.model_ops import tag_avatar_counts

    for model in sorted(production):
        tag_avatar_counts(store, model_registry.location(), model)


def max_in_flight() -> int:
    from orchestration.config import load_config

    configured = load_config().reprocess_max_in_flight
    return max(1, int(DEFAULT_MAX_IN_FLIGHT if configured is None else configured))


def build_model_upgrade_sensor(
    reprocess_job: str | JobDefinition | UnresolvedAssetJobDefinition, limit: int | None = None,
    canary_uploads: int = DEFAULT_CANARY_UPLOADS, auto_promote: bool = True,
) -> SensorDefinition:  # fmt: skip
    """The sensor; given the reprocess job itself (not only its name) it also targets
    `model_canary_job` and canaries new `candidate` versions (a name: reprocessing only)."""
    job_name = reprocess_job if isinstance(reprocess_job, str) else reprocess_job.name
    canary = not isinstance(reprocess_job, str)
    targets = {"jobs": [reprocess_job, model_canary_job]} if canary else {"job_name": job_name}

    @sensor(
        name=SENSOR_NAME,
        **targets,
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description="Rebuilds, per upload, the first asset a model promotion or rollback makes stale "
        "and everything downstream (bounded number of runs in flight).",
    )
    def model_upgrade_sensor(
        context: SensorEvaluationContext,
        metadata: MetadataStoreResource,
        model_registry: ModelRegistryResource,
    ) -> SensorResult:
        production = production_map(model_registry.current_production())
        cursor = SensorCursor.parse(context.cursor).advance(production)
        canaries: list[RunRequest] = []
        if canary:
            canaries, cursor = canary_requests(model_registry, production, cursor, canary_uploads, auto_promote)
        generation = cursor.generation_id()
        runs = context.instance.get_run_records(
            RunsFilter(job_name=job_name, tags={TAG_GENERATION: generation})
        )
        requested = {r.dagster_run.tags.get(TAG_UPLOAD) for r in runs}
        in_flight = sum(1 for r in runs if not r.dagster_run.is_finished)
        store = metadata.store()
        layout = AssetLayout.from_asset_graph(context.repository_def.asset_graph)
        plan = plan_reprocess(store, production, ASSET_MODELS, layout.order)
        waiting = [t for t in plan.targets if t.upload_id not in requested]
        batch = waiting[: max(0, (limit or max_in_flight()) - in_flight)]
        if not batch and canaries:
            context.log.info(f"requesting {len(canaries)} canary run(s)")
            return SensorResult(run_requests=canaries, cursor=cursor.to_json())
        if not batch:
            if waiting:
                reason = f"{len(waiting)} upload(s) waiting, {in_flight} run(s) in flight"
            elif in_flight:
                reason = f"{in_flight} run(s) in flight, no other upload outdated"
            elif plan.targets:  # a run of this generation failed for them: the CLI retries
                reason = (
                    f"{len(plan.targets)} outdated upload(s) already had a run of this generation; "
                    "`avatarpipe reprocess` retries them"
                )
            else:
                reason = f"nothing outdated ({len(runs)} run(s) requested so far)"
                if runs and cursor.counted != cursor.generation:  # the generation is done: count it
                    count_avatars(store, model_registry, production)
                    cursor = replace(cursor, counted=cursor.generation)
            return SensorResult(
                skip_reason=SkipReason(f"generation {generation}: {reason}"), cursor=cursor.to_json()
            )
        missing = [t.upload_id for t in batch if not context.instance.has_dynamic_partition(
            uploads_partitions.name, t.upload_id)]  # fmt: skip
        requests = []
        for target in batch:
            assets = layout.rebuild[target.first_asset]
            run_key = f"{generation}:{target.upload_id}:{target.first_asset}"
            requests.append(
                RunRequest(
                    run_key=run_key,
                    partition_key=target.upload_id,
                    asset_selection=[AssetKey(a) for a in assets],
                    tags=reprocess_tags(target, "sensor", generation),
                    job_name=job_name,
                )
            )
            record_reprocess_request(
                store, target, assets, "sensor", {"generation": generation, "run_key": run_key}
            )
        context.log.info(
            f"generation {generation}: requesting {len(requests)} run(s), {in_flight} in flight, "
            f"{len(waiting) - len(batch)} waiting"
        )
        return SensorResult(
            run_requests=canaries + requests,
            cursor=cursor.to_json(),
            dynamic_partitions_requests=[AddDynamicPartitionsRequest(uploads_partitions.name, missing)]
            if missing
            else None,
        )

    return model_upgrade_sensor
