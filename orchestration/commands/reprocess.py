"""`avatarpipe reprocess [--model NAME ...] [--upload ID ...] [--limit N] [--dry-run] [--json]`.

Rebuilds every upload whose current artifacts were made with a model version other than the
production one: per upload, one Dagster run (in this process, recorded in the instance like
`avatarpipe run`) of `reprocess_job` selecting the first affected asset and everything
downstream; upstream artifacts are reused. `--dry-run` prints the plan and runs nothing.
Exit status: 0 when every run succeeded (or nothing was outdated), 1 when one failed, 2 for
usage errors. The `model_upgrade_sensor` does the same automatically through the run queue.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from models.catalogue import ASSET_MODELS
from orchestration.cli import stdout_to_stderr
from orchestration.settings import Settings, prepare_environment


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
    from dagster import AssetKey, DagsterInstance, DagsterRunStatus

    from ops.reprocess import plan_reprocess, record_reprocess_request
    from orchestration.definitions import REPROCESS_JOB, build_definitions
    from orchestration.registry import production_map
    from orchestration.sensors import AssetLayout, reprocess_tags
    from storage.metadata_store import open_metadata_store

    defs = build_definitions(settings)
    # The versions the code location was built from: its code versions name exactly these.
    production = production_map(defs.resources["model_registry"].production_versions())
    layout = AssetLayout.from_asset_graph(defs.resolve_asset_graph())
    metadata = open_metadata_store(settings.mongodb_uri, settings.metadata_dir)
    try:
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
    finally:
        metadata.close()


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


def _canary(settings: Settings, args: argparse.Namespace) -> int:
    """`--canary N`: the candidate on N seeded-random affected uploads (orchestration.model_ops)."""
    from orchestration.model_ops import candidate_version, format_canary, run_canary

    if not args.model or len(args.model) != 1:
        raise ValueError("--canary needs exactly one --model NAME")
    with stdout_to_stderr():
        version = args.candidate or candidate_version(settings, args.model[0])
        report = run_canary(settings, args.model[0], version, args.canary, args.seed)
    print(json.dumps(report.to_dict(), default=str) if args.json else format_canary(report))
    return 0 if report.passed else 1


def cmd_reprocess(args: argparse.Namespace) -> int:
    from orchestration.registry import RegistryError

    settings = Settings.from_env()
    prepare_environment(settings)
    try:
        if args.canary is not None:
            return _canary(settings, args)
        with stdout_to_stderr():
            answer = reprocess(settings, args.model, args.upload, args.dry_run, args.limit)
            if not args.dry_run and answer["counts"]["planned"]:
                from orchestration.model_ops import sync_avatar_tags

                for name in {m.split("@")[0] for row in answer["uploads"] for m in row["models"]}:
                    sync_avatar_tags(settings, name)  # MLflow: how many avatars each version built
    except (RegistryError, ValueError) as exc:
        print(f"avatarpipe reprocess: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(answer, default=str) if args.json else _human(answer))
    return 0 if answer["counts"]["failed"] == 0 else 1


def register(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser("reprocess", help="rebuild what model upgrades made stale (only the affected steps)")
    cmd.add_argument("--model", action="append", metavar="NAME",
                     help="only outdated versions of this model (repeatable; default: all models)")  # fmt: skip
    cmd.add_argument("--upload", action="append", metavar="ID", help="only this upload (repeatable)")
    cmd.add_argument("--limit", type=int, help="reprocess at most N uploads this time")
    cmd.add_argument("--dry-run", action="store_true", help="list what would run; run nothing")
    cmd.add_argument("--canary", type=int, metavar="N",
                     help="rebuild N random affected uploads with the candidate version (alias candidate), compare "
                          "with production's artifacts, report; production and the current artifacts stay")  # fmt: skip
    cmd.add_argument("--candidate", metavar="VERSION", help="with --canary: the version to try (default: the "
                     "`candidate` alias, else the newest non-production version)")  # fmt: skip
    cmd.add_argument(
        "--seed", type=int, default=0, help="with --canary: seed of the random choice (default 0)"
    )
    cmd.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    cmd.set_defaults(func=cmd_reprocess)
