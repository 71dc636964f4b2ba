"""`avatarpipe models list|register|promote`: model versions in the MLflow registry.

    avatarpipe models list [--json]
    avatarpipe models register NAME [--from-version V] --set key=value ... [--metric key=value ...]
                               [--description TEXT] [--promote] [--json]
    avatarpipe models promote NAME VERSION [--json]

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


def _promote(settings: Settings, name: str, version: str) -> dict[str, Any]:
    promotion = _registry(settings).promote(name, version)
    _audit(settings, "model_promote", {"model": name, "previous": promotion.previous,
                                       "production": promotion.production, "trigger": "cli"})  # fmt: skip
    return {
        "model": name,
        "previous": promotion.previous,
        "production": promotion.production,
        "assets": affected_assets(name),
        "outdated_uploads": _outdated_uploads(settings, name, promotion.production),
        "dagster_ui": reload_dagster_ui() if promotion.previous != promotion.production else "unchanged",
    }


def _print_promotion(result: dict[str, Any]) -> None:
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
            version = _registry(settings).register_version(
                args.name,
                changes,
                from_version=args.from_version,
                metrics=dict(args.metric or []),
                description=args.description,
            )
            _audit(settings, "model_register", {"model": args.name, "version": version.version,
                                                "based_on": version.based_on, "changes": changes})  # fmt: skip
            promotion = _promote(settings, args.name, version.version) if args.promote else None
    except RegistryError as exc:
        print(f"avatarpipe models register: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"registered": version.to_dict(), "promotion": promotion}, default=str))
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
            result = _promote(settings, args.name, args.version)
            result["production_versions"] = production_map(_registry(settings).production_versions())
    except RegistryError as exc:
        print(f"avatarpipe models promote: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, default=str))
    else:
        _print_promotion(result)
    return 0


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
    reg.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    reg.set_defaults(func=cmd_register)

    pro = msub.add_parser("promote", help="point `production` at VERSION (an older one rolls back)")
    pro.add_argument("name")
    pro.add_argument("version")
    pro.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    pro.set_defaults(func=cmd_promote)
