"""`avatarpipe reprocess [--model NAME ...] [--upload ID ...] [--limit N] [--dry-run] [--json]`.

Rebuilds every upload whose current artifacts were made with a model version other than the
production one: per upload, one Dagster run (in this process, recorded in the instance like
`avatarpipe run`) of `reprocess_job` selecting the first affected asset and everything
downstream; upstream artifacts are reused. `--dry-run` prints the plan and runs nothing.
Exit status: 0 when every run succeeded (or nothing was outdated), 1 when one failed, 2 for
usage errors. The `model_upgrade_sensor` does the same automatically through the run queue.
"""

from __future__ import annotations

import time
from typing import Any

import click

from ops.reprocess import plan_reprocess, record_reprocess_request
from ops.steps import ASSET_MODELS
from orchestration.app import metadata_store
from orchestration.commands.common import Reply, answers, fail
from orchestration.settings import Settings


def _target_dict(target, assets: tuple[str, ...]) -> dict[str, Any]:
    return {
        "upload_id": target.upload_id,
        "subject_id": target.subject_id,
        "status": target.status,
        "first_asset": target.first_asset,
        "assets": list(assets),
        "models": target.model_labels(),
        "outdated": [
            {"asset": o.asset_key, "model": o.model, "recorded": o.recorded, "production": o.production,
             "artifact_id": o.artifact_id}
            for o in target.outdated
        ],
    }  # fmt: skip


def reprocess(
    settings: Settings,
    models: list[str] | None = None,
    uploads: list[str] | None = None,
    dry_run: bool = False,
    limit: int | None = None,
) -> dict[str, Any]:
    """Plan (and unless `dry_run`, execute) the reprocessing; returns the `--json` answer."""
    from dagster import AssetKey, DagsterInstance, DagsterRunStatus  # Dagster: only when reprocessing

    from orchestration.definitions import REPROCESS_JOB, build_definitions
    from orchestration.registry import production_map
    from orchestration.sensors import AssetLayout, reprocess_tags

    defs = build_definitions(settings)
    # The versions the code location was built from: its code versions name exactly these.
    production = production_map(defs.resources["model_registry"].production_versions())
    layout = AssetLayout.from_asset_graph(defs.resolve_asset_graph())
    with metadata_store(settings) as metadata:
        plan = plan_reprocess(metadata, production, ASSET_MODELS, layout.order, models, uploads)
        targets = plan.targets[:limit] if limit else plan.targets
        rows = [_target_dict(t, layout.rebuild[t.first_asset]) for t in targets]
        answer: dict[str, Any] = {
            "dry_run": dry_run,
            "production": plan.production,
            "models": list(plan.models),
            "uploads": rows,
            "skipped": [vars(s) for s in plan.skipped],
            "deferred": len(plan.targets) - len(targets),
        }
        if dry_run or not targets:
            answer["counts"] = {"planned": len(targets), "succeeded": 0, "failed": 0}
            return answer
        instance = DagsterInstance.get()
        job = defs.resolve_job_def(REPROCESS_JOB)
        for target, row in zip(targets, rows, strict=True):
            if not instance.has_dynamic_partition("uploads", target.upload_id):
                instance.add_dynamic_partitions("uploads", [target.upload_id])  # a retired partition
            print(f"avatarpipe: reprocessing {target.upload_id} from {target.first_asset} "
                  f"({', '.join(target.model_labels())})")  # fmt: skip
            start = time.perf_counter()
            result = job.execute_in_process(
                partition_key=target.upload_id,
                instance=instance,
                asset_selection=[AssetKey(a) for a in row["assets"]],
                raise_on_error=False,
                tags=reprocess_tags(target, "cli"),
            )
            record_reprocess_request(metadata, target, row["assets"], "cli", {"run_id": result.run_id})
            run = instance.get_run_by_id(result.run_id)
            upload = metadata.get_upload(target.upload_id) or {}
            row.update(
                run_id=result.run_id,
                run_status=run.status.value if run else None,
                seconds=round(time.perf_counter() - start, 2),
                upload_status=upload.get("status"),
                error=upload.get("error") if run and run.status != DagsterRunStatus.SUCCESS else None,
            )
        ok = sum(r["run_status"] == DagsterRunStatus.SUCCESS.value for r in rows)
        answer["counts"] = {"planned": len(rows), "succeeded": ok, "failed": len(rows) - ok}
        return answer


def _human(answer: dict[str, Any]) -> str:
    production = " ".join(f"{m}@{v}" for m, v in answer["production"].items())
    lines = [f"production: {production}"]
    verb = "would reprocess" if answer["dry_run"] else "reprocessed"
    lines.append(
        f"{verb} {len(answer['uploads'])} upload(s)"
        + (" (dry run: nothing ran)" if answer["dry_run"] else "")
    )
    for row in answer["uploads"]:
        outcome = "" if answer["dry_run"] else f"  -> {row['run_status']} in {row['seconds']}s"
        lines.append(
            f"  {row['upload_id']} (subject {row['subject_id']}): {' -> '.join(row['assets'])}"
            f"  [{', '.join(row['models'])}]{outcome}"
        )
    for skipped in answer["skipped"]:
        lines.append(f"  skipped {skipped['upload_id']}: {skipped['reason']}")
    if answer["deferred"]:
        lines.append(f"  {answer['deferred']} more left for a later call (--limit)")
    return "\n".join(lines)


@click.command("reprocess", help="rebuild what model upgrades made stale (only the affected steps)")
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="only outdated versions of this model (repeatable; default: all models)")  # fmt: skip
@click.option("--upload", "uploads", multiple=True, metavar="ID", help="only this upload (repeatable)")
@click.option("--limit", type=int, help="reprocess at most N uploads this time")
@click.option("--dry-run", is_flag=True, help="list what would run; run nothing")
@click.option("--canary", type=int, metavar="N",
              help="rebuild N random affected uploads with the candidate version (alias candidate), compare with "
                   "production's artifacts, report; production and the current artifacts stay")  # fmt: skip
@click.option("--candidate", metavar="VERSION",
              help="with --canary: the version to try (default: the `candidate` alias, else the newest "
                   "non-production version)")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="with --canary: seed of the random choice")
@answers()
def reprocess_command(
    settings: Settings, models: tuple[str, ...], uploads: tuple[str, ...], limit: int | None, dry_run: bool,
    canary: int | None, candidate: str | None, seed: int,
) -> Reply:  # fmt: skip
    from orchestration.registry import RegistryError  # MLflow: only when reprocessing

    try:
        if canary is not None:
            return _canary(settings, models, canary, candidate, seed)
        answer = reprocess(settings, list(models) or None, list(uploads) or None, dry_run, limit)
        if not dry_run and answer["counts"]["planned"]:
            from orchestration.model_ops import sync_avatar_tags

            for name in {m.split("@")[0] for row in answer["uploads"] for m in row["models"]}:
                sync_avatar_tags(settings, name)  # MLflow: how many avatars each version built
    except (RegistryError, ValueError) as exc:
        return fail(2, f"avatarpipe reprocess: {exc}")
    return Reply(0 if answer["counts"]["failed"] == 0 else 1, answer, _human)


def _canary(settings: Settings, models: tuple[str, ...], count: int, candidate: str | None, seed: int) -> Reply:
    """`--canary N`: the candidate on N seeded-random affected uploads (orchestration.model_ops)."""
    from orchestration.model_ops import candidate_version, format_canary, run_canary

    if len(models) != 1:
        raise ValueError("--canary needs exactly one --model NAME")
    version = candidate or candidate_version(settings, models[0])
    report = run_canary(settings, models[0], version, count, seed)
    return Reply(0 if report.passed else 1, report.to_dict(), lambda _a: format_canary(report))
