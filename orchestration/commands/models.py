"""`avatarpipe models list|register|promote`: model versions in the MLflow registry.

    avatarpipe models list [--json]
    avatarpipe models register NAME [--from-version V] --set key=value ... [--metric key=value ...]
                               [--description TEXT] [--promote] [--json]
    avatarpipe models promote NAME VERSION [--force --reason TEXT] [--json]
    avatarpipe models compare NAME V1 V2 [--json]
    avatarpipe models evaluate NAME VERSION [--eval-photos DIR] [--eval-max-photos N] [--eval-synthetic N] [--json]
    avatarpipe models rollback NAME [--dry-run] [--json]
    avatarpipe models avatars NAME VERSION [--all] [--json]

The logic lives in `orchestration.model_ops`; these are thin wrappers.

`--set` values are JSON when they parse as JSON (`iters=[20,60,30]`, `lr=0.02`), else strings.
Promoting (also an older version: that is a rollback) moves the `production` alias; the
`model_upgrade_sensor` and `avatarpipe reprocess` then rebuild what the change affects. Every
registration and promotion is an audit event (`model_register`, `model_promote`).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import asdict
from typing import Any

import click

from models.catalogue import default_model_specs
from orchestration.app import metadata_store
from orchestration.commands.common import Reply, answers, fail, parsed_by
from orchestration.config import load_config
from orchestration.registry import (
    CANDIDATE_ALIAS,
    PRODUCTION_ALIAS,
    ModelVersion,
    RegistryError,
    RegistryLocation,
    affected_assets,
    open_registry,
    production_map,
)
from orchestration.settings import Settings

DAGSTER_URL_ENV = "AVATARPIPE_DAGSTER_URL"
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"


def parse_assignment(text: str) -> tuple[str, Any]:
    """`key=value`; the value is JSON if it parses, else the raw string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def _metric(text: str) -> tuple[str, float]:
    key, value = parse_assignment(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"metric {key!r} needs a number, got {value!r}")
    return key, float(value)


def _registry(settings: Settings):
    return open_registry(RegistryLocation.for_settings(settings))


def _audit(settings: Settings, event: str, details: dict[str, Any]) -> None:
    with metadata_store(settings) as metadata:
        metadata.append_audit(event, None, None, details)


def reload_dagster_ui() -> str:
    """Ask a running Dagster webserver (`make ui`) to reload its code locations, so asset code
    versions - and the stale badges - follow the new production versions at once. Best effort:
    `AVATARPIPE_DAGSTER_URL` (default http://127.0.0.1:3000; `off` disables it)."""
    url = load_config().dagster_url or DEFAULT_DAGSTER_URL
    if url.lower() == "off":
        return "disabled"
    body = json.dumps({"query": "mutation { reloadWorkspace { __typename } }"}).encode()
    request = urllib.request.Request(
        url.rstrip("/") + "/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    try:  # the reload re-imports the code location: seconds, not milliseconds
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    except TimeoutError:
        return "reload timed out"
    except urllib.error.URLError as exc:
        return (
            "no webserver"
            if isinstance(exc.reason, ConnectionRefusedError)
            else f"not reloaded ({exc.reason})"
        )
    except (OSError, ValueError) as exc:
        return f"not reloaded ({exc})"
    kind = ((answer.get("data") or {}).get("reloadWorkspace") or {}).get("__typename", "")
    return "reloaded" if kind == "Workspace" else f"not reloaded ({kind or answer.get('errors')})"


def _version_line(mv: ModelVersion, base: ModelVersion | None) -> str:
    changed = {k: v for k, v in mv.params.items() if base is None or base.params.get(k) != v}
    what = ", ".join(f"{k}={json.dumps(v)}" for k, v in changed.items()) if base else "catalogue defaults"
    star = " [production]" if PRODUCTION_ALIAS in mv.aliases else ""
    origin = f" from v{mv.based_on}" if mv.based_on else ""
    metrics = " metrics " + ", ".join(f"{k}={v:g}" for k, v in mv.metrics.items()) if mv.metrics else ""
    note = f" - {mv.description}" if mv.description else ""
    return (
        f"    v{mv.version}{star} {mv.created_at or ''}{origin}: {what or 'same parameters'}{metrics}{note}"
    )


def _list_text(answer: dict[str, Any], catalogue: dict[str, list[ModelVersion]]) -> str:
    lines = [f"registry: {answer['tracking_uri']}"]
    for name, versions in catalogue.items():
        info = answer["models"][name]
        production = (
            next(v for v in versions if v.version == info["production"]) if info["production"] else None
        )
        impl = production.implementation if production else "?"
        lines.append(f"{name}: production v{info['production']} ({impl}); used by {', '.join(info['assets'])}")
        by_version = {v.version: v for v in versions}
        lines += [_version_line(mv, by_version.get(mv.based_on) if mv.based_on else None) for mv in versions]
    return "\n".join(lines)


@click.group("models", help="model versions in the MLflow registry (list, register, promote)")
def models() -> None:
    """`avatarpipe models list|register|promote`."""


@models.command("list", help="every registered model, its versions and the production alias")
@answers()
def list_models(settings: Settings) -> Reply:
    registry = _registry(settings)
    registry.ensure_initialised()
    catalogue = {name: registry.versions(name) for name in default_model_specs()}
    answer = {
        "tracking_uri": registry.location.redacted(),
        "models": {
            name: {
                "production": next((v.version for v in versions if PRODUCTION_ALIAS in v.aliases), None),
                "assets": affected_assets(name),
                "versions": [v.to_dict() for v in versions],
            }
            for name, versions in catalogue.items()
        },
    }
    return Reply(0, answer, lambda a: _list_text(a, catalogue))


def _promote(
    settings: Settings, name: str, version: str, force: bool = False, reason: str | None = None
) -> dict[str, Any]:
    from orchestration.model_ops import promote_version

    result = promote_version(settings, name, version, force, reason, trigger="cli")
    unchanged = result["previous"] == result["production"]
    return result | {"dagster_ui": "unchanged" if unchanged else reload_dagster_ui()}


def _promotion_text(result: dict[str, Any]) -> str:
    forced = f"{result['model']}: FORCED past the gates: {'; '.join(result['gate']['reasons'])}\n" if result.get("forced") else ""
    return forced + (
        f"{result['model']}: production v{result['previous']} -> v{result['production']}; "
        f"{result['outdated_uploads']} upload(s) have {', '.join(result['assets'])} built with another "
        f"version (the model_upgrade_sensor or `avatarpipe reprocess` rebuilds them)"
    )


def evaluation_options(command: Any) -> Any:
    """The bounded evaluation set a version is judged on (`--evaluate`, `models evaluate`)."""
    command = click.option("--eval-appearance", type=int, default=1, show_default=True, metavar="N",
                           help="synthetic subjects with a true texture (novel-view PSNR/SSIM)")(command)  # fmt: skip
    command = click.option("--eval-builds", type=int, default=1, show_default=True, metavar="N",
                           help="photos built end to end by the pipeline's steps (GLB size, step times)")(command)  # fmt: skip
    command = click.option("--eval-seed", type=int, default=0, show_default=True, help="first synthetic seed")(command)
    command = click.option("--eval-synthetic", type=int, default=2, show_default=True, metavar="N",
                           help="synthetic bodies")(command)  # fmt: skip
    command = click.option("--eval-max-photos", type=int, default=2, show_default=True, metavar="N",
                           help="at most N photos")(command)  # fmt: skip
    return click.option("--eval-photos", multiple=True, metavar="DIR",
                        help="photo folder (repeatable; default samples/)")(command)  # fmt: skip


def _evaluation_set(eval_photos: tuple[str, ...], eval_max_photos: int, eval_synthetic: int, eval_seed: int,
                    eval_builds: int, eval_appearance: int) -> Any:  # fmt: skip
    from orchestration.model_ops import EvaluationSet

    return EvaluationSet(
        photo_folders=tuple(eval_photos) if eval_photos else EvaluationSet().photo_folders,
        max_photos=eval_max_photos, synthetic=eval_synthetic, seed=eval_seed, builds=eval_builds,
        appearance=eval_appearance,
    )  # fmt: skip


@models.command("register", help="create a new version with changed parameters")
@click.argument("name")
@click.option("--from-version", help="start from this version's parameters (default: production)")
@click.option("--set", "assignments", multiple=True, callback=parsed_by(parse_assignment), metavar="KEY=VALUE",
              help="parameter to change (JSON value or string); repeatable")  # fmt: skip
@click.option("--metric", "metrics", multiple=True, callback=parsed_by(_metric), metavar="KEY=NUMBER",
              help="evaluation metric to log with the version; repeatable")  # fmt: skip
@click.option("--description", help="free text stored on the version")
@click.option("--promote", is_flag=True, help="point `production` at the new version")
@click.option("--evaluate", is_flag=True, help="run the evaluation harness, log its metrics on the version")
@click.option("--candidate", is_flag=True,
              help="point the `candidate` alias at the new version: the model_upgrade_sensor canaries it and "
                   "promotes it when the canary passes")  # fmt: skip
@evaluation_options
@answers()
def register_model(
    settings: Settings, name: str, from_version: str | None, assignments: tuple, metrics: tuple,
    description: str | None, promote: bool, evaluate: bool, eval_photos: tuple[str, ...], eval_max_photos: int,
    eval_synthetic: int, eval_seed: int, eval_builds: int, eval_appearance: int, candidate: bool,
) -> Reply:  # fmt: skip
    from orchestration.model_ops import register_candidate

    changes = dict(assignments)
    evaluation_set = (_evaluation_set(eval_photos, eval_max_photos, eval_synthetic, eval_seed, eval_builds,
                                      eval_appearance) if evaluate else None)  # fmt: skip
    if candidate and promote:
        return fail(2, "avatarpipe models register: --candidate and --promote exclude each other "
                    "(a candidate is promoted by its canary)")  # fmt: skip
    try:
        registration = register_candidate(settings, name, changes, from_version, dict(metrics), description,
                                          evaluation_set)  # fmt: skip
        version = registration.version
        _audit(settings, "model_register", {"model": name, "version": version.version,
                                            "based_on": version.based_on, "changes": changes})  # fmt: skip
        if candidate:
            _registry(settings).set_alias(name, CANDIDATE_ALIAS, version.version)
        promotion = _promote(settings, name, version.version) if promote else None
    except RegistryError as exc:
        return fail(2, f"avatarpipe models register: {exc}")

    def text(_answer: dict[str, Any]) -> str:
        what = ", ".join(f"{k}={json.dumps(v)}" for k, v in changes.items()) or "same parameters"
        lines = [f"{name}: registered v{version.version} (from v{version.based_on}): {what}"
                 + (f"; alias {CANDIDATE_ALIAS} (the model_upgrade_sensor canaries it)" if candidate else "")]
        return "\n".join(lines + ([_promotion_text(promotion)] if promotion else []))

    evaluation = registration.evaluation
    answer = {"registered": version.to_dict(), "promotion": promotion, "candidate": candidate,
              "evaluation": asdict(evaluation) if evaluation else None}  # fmt: skip
    return Reply(0, answer, text)


@models.command("promote", help="point `production` at VERSION (an older one rolls back)")
@click.argument("name")
@click.argument("version")
@click.option("--force", is_flag=True, help="promote although the gates refuse (needs --reason)")
@click.option("--reason", help="why a refused promotion is forced (audit log and version tag)")
@answers()
def promote_model(settings: Settings, name: str, version: str, force: bool, reason: str | None) -> Reply:
    try:
        result = _promote(settings, name, version, force, reason)
        result["production_versions"] = production_map(_registry(settings).production_versions())
    except RegistryError as exc:
        return fail(2, f"avatarpipe models promote: {exc}")
    return Reply(0, result, _promotion_text)


@models.command("compare", help="two versions' metrics side by side with a verdict per metric")
@click.argument("name")
@click.argument("v1")
@click.argument("v2")
@answers()
def compare_models(settings: Settings, name: str, v1: str, v2: str) -> Reply:
    from orchestration.model_ops import compare_versions, format_comparison

    try:
        comparison = compare_versions(_registry(settings), name, v1, v2)
    except RegistryError as exc:
        return fail(2, f"avatarpipe models compare: {exc}")
    return Reply(0, comparison.to_dict(), lambda _a: format_comparison(comparison))


@models.command("evaluate", help="run the evaluation harness on a version, log the metrics on it")
@click.argument("name")
@click.argument("version")
@evaluation_options
@answers()
def evaluate_model(
    settings: Settings, name: str, version: str, eval_photos: tuple[str, ...], eval_max_photos: int,
    eval_synthetic: int, eval_seed: int, eval_builds: int, eval_appearance: int,
) -> Reply:  # fmt: skip
    from orchestration.model_ops import evaluate_version

    try:
        evaluation = evaluate_version(settings, name, version,
                                      _evaluation_set(eval_photos, eval_max_photos, eval_synthetic, eval_seed,
                                                      eval_builds, eval_appearance))  # fmt: skip
    except RegistryError as exc:
        return fail(2, f"avatarpipe models evaluate: {exc}")
    return Reply(0, asdict(evaluation), lambda _a: f"{name} v{version}: " + ", ".join(
        f"{k}={v:g}" for k, v in sorted(evaluation.metrics.items())))  # fmt: skip


@models.command("rollback", help="restore the previous production version, rebuild what the bad one built")
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="move the alias, list the uploads, rebuild nothing")
@answers()
def rollback_model(settings: Settings, name: str, dry_run: bool) -> Reply:
    from orchestration.model_ops import rollback

    try:
        result = rollback(settings, name, run=not dry_run)
    except RegistryError as exc:
        return fail(2, f"avatarpipe models rollback: {exc}")
    return Reply(0, asdict(result), lambda _a: (
        f"{result.model}: production v{result.bad} -> v{result.restored} (rollback); "
        f"{len(result.uploads)} upload(s) built with v{result.bad}: {' '.join(result.uploads) or '-'}"
        + (f"; reprocessed {result.reprocess.get('counts')}" if result.reprocess else "")))  # fmt: skip


@models.command("avatars", help="the avatars a model version built (ledger), with its MLflow URL")
@click.argument("name")
@click.argument("version")
@click.option("--all", "include_superseded", is_flag=True, help="also uploads whose artifacts of it were superseded")
@answers()
def avatars_of_model(settings: Settings, name: str, version: str, include_superseded: bool) -> Reply:
    from orchestration.model_ops import avatar_lines, avatars_of_version, sync_avatar_tags

    try:
        _registry(settings).get_version(name, version)  # unknown versions: exit 2
    except RegistryError as exc:
        return fail(2, f"avatarpipe models avatars: {exc}")
    with metadata_store(settings) as metadata:
        result = avatars_of_version(metadata, RegistryLocation.for_settings(settings), name, version,
                                    include_superseded=include_superseded)  # fmt: skip
    sync_avatar_tags(settings, name)
    return Reply(0, result.to_dict(), lambda _a: "\n".join(avatar_lines(result)))
