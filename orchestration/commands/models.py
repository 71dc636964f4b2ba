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

import argparse
import json
import sys
import urllib.error
import urllib.request
from dataclasses import asdict
from typing import Any

from models.catalogue import default_model_specs
from orchestration.cli import stdout_to_stderr
from orchestration.registry import (
    PRODUCTION_ALIAS,
    ModelVersion,
    RegistryError,
    RegistryLocation,
    affected_assets,
    open_registry,
    production_map,
)
from orchestration.settings import Settings, prepare_environment

DAGSTER_URL_ENV = "AVATARPIPE_DAGSTER_URL"
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"


def parse_assignment(text: str) -> tuple[str, Any]:
    """`key=value`; the value is JSON if it parses, else the raw string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def _metric(text: str) -> tuple[str, float]:
    key, value = parse_assignment(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise argparse.ArgumentTypeError(f"metric {key!r} needs a number, got {value!r}")
    return key, float(value)


def _registry(settings: Settings):
    return open_registry(RegistryLocation.for_settings(settings))


def _audit(settings: Settings, event: str, details: dict[str, Any]) -> None:
    from storage.metadata_store import open_metadata_store

    with open_metadata_store(settings.mongodb_uri, settings.metadata_dir) as metadata:
        metadata.append_audit(event, None, None, details)


def _outdated_uploads(settings: Settings, model: str, version: str) -> int:
    """How many uploads have a current artifact built with another version of `model`."""
    from storage.metadata_store import open_metadata_store

    with open_metadata_store(settings.mongodb_uri, settings.metadata_dir) as metadata:
        docs = metadata.outdated_artifacts(model, version, affected_assets(model))
    return len({d["upload_id"] for d in docs})


def reload_dagster_ui() -> str:
    """Ask a running Dagster webserver (`make ui`) to reload its code locations, so asset code
    versions - and the stale badges - follow the new production versions at once. Best effort:
    `AVATARPIPE_DAGSTER_URL` (default http://127.0.0.1:3000; `off` disables it)."""
    from orchestration.config import load_config

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


def cmd_list(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    prepare_environment(settings)
    with stdout_to_stderr():
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
    if args.json:
        print(json.dumps(answer, default=str))
        return 0
    print(f"registry: {answer['tracking_uri']}")
    for name, versions in catalogue.items():
        info = answer["models"][name]
        production = (
            next(v for v in versions if v.version == info["production"]) if info["production"] else None
        )
        impl = production.implementation if production else "?"
        print(f"{name}: production v{info['production']} ({impl}); used by {', '.join(info['assets'])}")
        by_version = {v.version: v for v in versions}
        for mv in versions:
            print(_version_line(mv, by_version.get(mv.based_on) if mv.based_on else None))
    return 0


def _promote(
    settings: Settings, name: str, version: str, force: bool = False, reason: str | None = None
) -> dict[str, Any]:
    from orchestration import model_ops

    gate = model_ops.gate_promotion(_registry(settings), name, version, force, reason)
    promotion = _registry(settings).promote(name, version)
    model_ops.after_promotion(_registry(settings), name, promotion.production)
    _audit(settings, "model_promote", {"model": name, "previous": promotion.previous,
                                       "production": promotion.production, "trigger": "cli"} | gate.audit_details())  # fmt: skip
    return {
        "gate": gate.comparison.to_dict() if gate.comparison else None,
        "forced": gate.forced,
        "model": name,
        "previous": promotion.previous,
        "production": promotion.production,
        "assets": affected_assets(name),
        "outdated_uploads": _outdated_uploads(settings, name, promotion.production),
        "dagster_ui": reload_dagster_ui() if promotion.previous != promotion.production else "unchanged",
    }


def _print_promotion(result: dict[str, Any]) -> None:
    if result.get("forced"):
        print(f"{result['model']}: FORCED past the gates: {'; '.join(result['gate']['reasons'])}")
    print(
        f"{result['model']}: production v{result['previous']} -> v{result['production']}; "
        f"{result['outdated_uploads']} upload(s) have {', '.join(result['assets'])} built with another "
        f"version (the model_upgrade_sensor or `avatarpipe reprocess` rebuilds them)"
    )


def cmd_register(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    prepare_environment(settings)
    changes = dict(args.set or [])
    try:
        with stdout_to_stderr():
            from orchestration.model_ops import register_candidate

            registration = register_candidate(settings, args.name, changes, args.from_version, dict(args.metric or []),
                                              args.description, _evaluation_set(args) if args.evaluate else None)  # fmt: skip
            version = registration.version
            _audit(settings, "model_register", {"model": args.name, "version": version.version,
                                                "based_on": version.based_on, "changes": changes})  # fmt: skip
            promotion = _promote(settings, args.name, version.version) if args.promote else None
    except RegistryError as exc:
        print(f"avatarpipe models register: {exc}", file=sys.stderr)
        return 2
    if args.json:
        evaluation = registration.evaluation
        print(json.dumps({"registered": version.to_dict(), "promotion": promotion,
                          "evaluation": asdict(evaluation) if evaluation else None}, default=str))  # fmt: skip
        return 0
    what = ", ".join(f"{k}={json.dumps(v)}" for k, v in changes.items()) or "same parameters"
    print(f"{args.name}: registered v{version.version} (from v{version.based_on}): {what}")
    if promotion:
        _print_promotion(promotion)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    prepare_environment(settings)
    try:
        with stdout_to_stderr():
            result = _promote(settings, args.name, args.version, args.force, args.reason)
            result["production_versions"] = production_map(_registry(settings).production_versions())
    except RegistryError as exc:
        print(f"avatarpipe models promote: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, default=str))
    else:
        _print_promotion(result)
    return 0


def _evaluation_set(args: argparse.Namespace):
    from orchestration.model_ops import EvaluationSet

    default = EvaluationSet()
    return EvaluationSet(
        photo_folders=tuple(args.eval_photos) if args.eval_photos else default.photo_folders,
        max_photos=args.eval_max_photos, synthetic=args.eval_synthetic, seed=args.eval_seed,
    )  # fmt: skip


def _add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--eval-photos", action="append", metavar="DIR", help="photo folder (repeatable; default samples/)"
    )
    parser.add_argument(
        "--eval-max-photos", type=int, default=2, metavar="N", help="at most N photos (default 2)"
    )
    parser.add_argument(
        "--eval-synthetic", type=int, default=2, metavar="N", help="synthetic bodies (default 2)"
    )
    parser.add_argument("--eval-seed", type=int, default=0, help="first synthetic seed (default 0)")


def _run(label: str, fn) -> int:
    """Run one model-ops call: RegistryError -> exit 2 with the message on stderr."""
    settings = Settings.from_env()
    prepare_environment(settings)
    try:
        with stdout_to_stderr():
            out = fn(settings)
    except RegistryError as exc:
        print(f"avatarpipe models {label}: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from orchestration.model_ops import compare_versions, format_comparison

    def go(settings: Settings) -> str:
        comparison = compare_versions(_registry(settings), args.name, args.v1, args.v2)
        return json.dumps(comparison.to_dict()) if args.json else format_comparison(comparison)

    return _run("compare", go)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from orchestration.model_ops import evaluate_version

    def go(settings: Settings) -> str:
        evaluation = evaluate_version(settings, args.name, args.version, _evaluation_set(args))
        if args.json:
            return json.dumps(asdict(evaluation), default=str)
        return f"{args.name} v{args.version}: " + ", ".join(
            f"{k}={v:g}" for k, v in sorted(evaluation.metrics.items())
        )

    return _run("evaluate", go)


def cmd_rollback(args: argparse.Namespace) -> int:
    from orchestration.model_ops import rollback

    def go(settings: Settings) -> str:
        result = rollback(settings, args.name, run=not args.dry_run)
        if args.json:
            return json.dumps(asdict(result), default=str)
        return (f"{result.model}: production v{result.bad} -> v{result.restored} (rollback); "
                f"{len(result.uploads)} upload(s) built with v{result.bad}: {' '.join(result.uploads) or '-'}"
                + (f"; reprocessed {result.reprocess.get('counts')}" if result.reprocess else ""))  # fmt: skip

    return _run("rollback", go)


def cmd_avatars(args: argparse.Namespace) -> int:
    from orchestration.model_ops import avatar_lines, avatars_of_version, sync_avatar_tags
    from storage.metadata_store import open_metadata_store

    def go(settings: Settings) -> str:
        location = RegistryLocation.for_settings(settings)
        _registry(settings).get_version(args.name, args.version)  # unknown versions: exit 2
        with open_metadata_store(settings.mongodb_uri, settings.metadata_dir) as metadata:
            result = avatars_of_version(
                metadata, location, args.name, args.version, include_superseded=args.all
            )
        sync_avatar_tags(settings, args.name)
        return json.dumps(result.to_dict()) if args.json else "\n".join(avatar_lines(result))

    return _run("avatars", go)


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="model versions in the MLflow registry (list, register, promote)")
    msub = models.add_subparsers(dest="models_command", required=True)

    lst = msub.add_parser("list", help="every registered model, its versions and the production alias")
    lst.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    lst.set_defaults(func=cmd_list)

    reg = msub.add_parser("register", help="create a new version with changed parameters")
    reg.add_argument("name", help="registered model, e.g. body_fitter")
    reg.add_argument("--from-version", help="start from this version's parameters (default: production)")
    reg.add_argument("--set", action="append", type=parse_assignment, metavar="KEY=VALUE",
                     help="parameter to change (JSON value or string); repeatable")  # fmt: skip
    reg.add_argument("--metric", action="append", type=_metric, metavar="KEY=NUMBER",
                     help="evaluation metric to log with the version; repeatable")  # fmt: skip
    reg.add_argument("--description", help="free text stored on the version")
    reg.add_argument("--promote", action="store_true", help="point `production` at the new version")
    reg.add_argument(
        "--evaluate", action="store_true", help="run the evaluation harness, log its metrics on the version"
    )
    _add_evaluation_options(reg)
    reg.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    reg.set_defaults(func=cmd_register)

    pro = msub.add_parser("promote", help="point `production` at VERSION (an older one rolls back)")
    pro.add_argument("name")
    pro.add_argument("version")
    pro.add_argument(
        "--force", action="store_true", help="promote although the gates refuse (needs --reason)"
    )
    pro.add_argument("--reason", help="why a refused promotion is forced (audit log and version tag)")
    pro.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    pro.set_defaults(func=cmd_promote)

    cmp_ = msub.add_parser("compare", help="two versions' metrics side by side with a verdict per metric")
    cmp_.add_argument("name")
    cmp_.add_argument("v1", help="champion")
    cmp_.add_argument("v2", help="challenger")
    cmp_.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    cmp_.set_defaults(func=cmd_compare)

    ev = msub.add_parser("evaluate", help="run the evaluation harness on a version, log the metrics on it")
    ev.add_argument("name")
    ev.add_argument("version")
    _add_evaluation_options(ev)
    ev.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ev.set_defaults(func=cmd_evaluate)

    rb = msub.add_parser(
        "rollback", help="restore the previous production version, rebuild what the bad one built"
    )
    rb.add_argument("name")
    rb.add_argument(
        "--dry-run", action="store_true", help="move the alias, list the uploads, rebuild nothing"
    )
    rb.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    rb.set_defaults(func=cmd_rollback)

    av = msub.add_parser("avatars", help="the avatars a model version built (ledger), with its MLflow URL")
    av.add_argument("name")
    av.add_argument("version")
    av.add_argument("--all", action="store_true", help="also uploads whose artifacts of it were superseded")
    av.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    av.set_defaults(func=cmd_avatars)
