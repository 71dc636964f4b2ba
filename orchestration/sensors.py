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
"""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from dagster import (
    AddDynamicPartitionsRequest,
    AssetKey,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

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

    def generation_id(self) -> str:
        digest = hashlib.sha256(json.dumps(self.production, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.generation}-{digest}"

    def to_json(self) -> str:
        return json.dumps({"production": self.production, "generation": self.generation}, sort_keys=True)

    @staticmethod
    def parse(raw: str | None) -> "SensorCursor":
        if not raw:
            return SensorCursor(production={}, generation=0)
        data = json.loads(raw)
        return SensorCursor(production=dict(data["production"]), generation=int(data["generation"]))

    def advance(self, production: Mapping[str, str]) -> "SensorCursor":
        if dict(production) == self.production:
            return self
        return SensorCursor(production=dict(production), generation=self.generation + 1)


def max_in_flight() -> int:
    from orchestration.config import load_config

    configured = load_config().reprocess_max_in_flight
    return max(1, int(DEFAULT_MAX_IN_FLIGHT if configured is None else configured))


def build_model_upgrade_sensor(job_name: str, limit: int | None = None) -> SensorDefinition:
    @sensor(
        name=SENSOR_NAME,
        job_name=job_name,
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
            run_requests=requests,
            cursor=cursor.to_json(),
            dynamic_partitions_requests=[AddDynamicPartitionsRequest(uploads_partitions.name, missing)]
            if missing
            else None,
        )

    return model_upgrade_sensor
