"""Model versions in the MLflow model registry, and the asset code versions derived from them.

Each model-bearing step (see `models.catalogue`) is a registered model. A version is an MLflow
run that logged the step's implementation id and parameters (run params, a `model/config.json`
artifact, and tags on the model version), optionally with evaluation metrics; the
`production` alias selects what the pipeline runs. On a fresh home the registry is seeded
with version 1 of every model from the catalogue.

Where: `AVATARPIPE_MLFLOW_URI` (a tracking server or a database backend store such as
`postgresql://…`, with `AVATARPIPE_MLFLOW_ARTIFACT_ROOT` for artifacts, e.g. `s3://…`, and
optionally `AVATARPIPE_MLFLOW_REGISTRY_URI`; see orchestration/config.py) or, by default, an sqlite backend under
`$AVATARPIPE_HOME/mlflow` (`mlflow.db`, artifacts in `artifacts/`).

Speed: importing MLflow and opening its sqlite store (an alembic schema check) costs seconds,
so every read of the production versions goes through a small JSON snapshot beside the
database, keyed by the database file's size and mtime: processes that only *read* (the
`avatarpipe run` path, Dagster run workers, sensor ticks) never import MLflow unless the
registry changed since the snapshot was written.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from models.catalogue import PIPELINE_VERSION, ModelSpec, default_model_specs, validate_params
from ops.steps import ASSET_MODELS  # the models each declared step depends on
from orchestration.settings import Settings

PRODUCTION_ALIAS = "production"
CANDIDATE_ALIAS = "candidate"  # the version a canary is running (never what the pipeline runs)
EXPERIMENT_NAME = "avatarpipe-models"  # homes made before per-model experiments keep their runs there
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3 UI: without it, it may infer "GenAI"
EXPERIMENT_KIND = "custom_model_development"
MLFLOW_UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` listens unless told otherwise
CONFIG_ARTIFACT_DIR = "model"
CONFIG_ARTIFACT = f"{CONFIG_ARTIFACT_DIR}/config.json"
URI_ENV = "AVATARPIPE_MLFLOW_URI"

TAG_MODEL = "avatarpipe.model"
TAG_IMPLEMENTATION = "avatarpipe.implementation"
TAG_PARAMS = "avatarpipe.params"
TAG_PARAMS_SHA = "avatarpipe.params_sha256"
TAG_BASED_ON = "avatarpipe.based_on_version"
TAG_PIPELINE = "avatarpipe.pipeline_version"
TAG_GIT_COMMIT = "mlflow.source.git.commit"  # MLflow's own tags: the UI shows them on the run
TAG_USER = "mlflow.user"
# The run page's "Source" field (empty without them; the git commit shows beside it)
TAG_SOURCE_NAME, TAG_SOURCE_TYPE = "mlflow.source.name", "mlflow.source.type"
# MLflow 3's UI opens in its GenAI mode (the run under "Evaluations") unless a link asks for the
# model-training side; the choice is the browser's, not the experiment's, so every link asks.
MLFLOW_UI_MODE = "workflowType=machine_learning"

_SNAPSHOT_FILE = "production.json"
_INIT_LOCK = ".init.lock"


class RegistryError(ValueError):
    """A request the registry cannot satisfy: unknown model or version, invalid parameters."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    implementation: str
    params: dict = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    run_id: str | None = None
    source: str | None = None
    description: str | None = None
    created_at: str | None = None  # ISO 8601, UTC
    based_on: str | None = None  # the version whose parameters this one started from
    metrics: dict = field(default_factory=dict)

    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["aliases"] = list(self.aliases)
        return data

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> ModelVersion:
        fields = dict(data)
        fields["aliases"] = tuple(fields.get("aliases", ()))
        return ModelVersion(**fields)


@dataclass(frozen=True)
class RegistryLocation:
    """Where the registry lives. `local_dir` is set for the embedded sqlite backend only;
    `schema_cache` holds a freshly migrated, empty MLflow database to start new homes from."""

    tracking_uri: str
    artifact_location: str | None
    local_dir: Path | None
    schema_cache: Path | None = None
    registry_uri: str | None = None  # default: the tracking URI

    @property
    def effective_registry_uri(self) -> str:
        return self.registry_uri or self.tracking_uri

    def redacted(self) -> str:
        """The tracking URI as it may be shown (password replaced by ***)."""
        from orchestration.config import redact_url

        return redact_url(self.tracking_uri) or ""

    @staticmethod
    def for_settings(settings: Settings) -> RegistryLocation:
        return RegistryLocation.for_home(settings.home, settings.cache)

    @staticmethod
    def for_home(home: Path, cache: Path | None = None) -> RegistryLocation:
        from orchestration.config import load_config

        config = load_config()
        if config.mlflow_tracking_uri:
            return RegistryLocation(tracking_uri=config.mlflow_tracking_uri, artifact_location=config.mlflow_artifact_root,
                                    local_dir=None, registry_uri=config.mlflow_registry_uri)  # fmt: skip
        local = Path(home).resolve() / "mlflow"
        return RegistryLocation(
            tracking_uri=f"sqlite:///{local / 'mlflow.db'}",
            artifact_location=(local / "artifacts").as_uri(),
            local_dir=local,
            schema_cache=Path(cache).resolve() / "mlflow-schema" if cache else None,
        )

    @property
    def db_path(self) -> Path | None:
        return self.local_dir / "mlflow.db" if self.local_dir else None


@dataclass(frozen=True)
class Promotion:
    name: str
    previous: str | None
    production: str


def asset_code_versions(production: Mapping[str, ModelVersion]) -> dict[str, str]:
    """Each asset's Dagster code version: the pipeline version plus the production versions
    of the models it uses. Upstream changes propagate through Dagster's own lineage."""
    versions = {}
    for asset, names in ASSET_MODELS.items():
        labels = [PIPELINE_VERSION] + sorted(production[name].label() for name in names)
        versions[asset] = hashlib.sha256("|".join(labels).encode()).hexdigest()[:12]
    return versions


def affected_assets(model_name: str) -> list[str]:
    """Assets whose own output depends on `model_name` directly (downstream is Dagster's)."""
    return [asset for asset, names in ASSET_MODELS.items() if model_name in names]


def params_digest(params: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class ModelRegistry:
    """The MLflow registry of avatarpipe's model-bearing steps (one per location and process)."""

    def __init__(self, location: RegistryLocation) -> None:
        self.location = location
        self._lock = threading.RLock()
        self._initialised = False
        self._experiments: dict[str, str] = {}

    @cached_property
    def client(self) -> Any:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient

        if self.location.local_dir is not None:
            self.location.local_dir.mkdir(parents=True, exist_ok=True)
            with self._init_lock():
                _start_from_migrated_schema(self.location)
        return MlflowClient(
            tracking_uri=self.location.tracking_uri, registry_uri=self.location.effective_registry_uri
        )

    # -- initialisation ------------------------------------------------------------------

    def ensure_initialised(self) -> list[ModelVersion]:
        """Register version 1 (from the catalogue) of every model that has no version yet, and a
        new catalogue version of every model whose production implementation this code no longer
        has (see `_implementation_drift`), and point `production` at them. Idempotent and safe
        across processes (file lock); returns the versions it created."""
        if self._initialised:
            return []
        client = self.client  # opens (or creates) the store first: it takes the same file lock
        with self._lock, self._init_lock():
            existing = {m.name for m in client.search_registered_models()}
            created = []
            for name, spec in default_model_specs().items():
                if name not in existing:
                    self.client.create_registered_model(
                        name, tags={TAG_MODEL: name}, description=f"avatarpipe step `{name}`"
                    )
                    description = "catalogue default"
                elif not self._has_versions(name):
                    description = "catalogue default"
                else:
                    description = self._implementation_drift(name, spec)
                    if description is None:
                        continue
                version = self._create_version(spec, based_on=None, metrics={}, description=description)
                self.client.set_registered_model_alias(name, PRODUCTION_ALIAS, version.version)
                created.append(version)
            self._initialised = True
            return created

    def _implementation_drift(self, name: str, spec: ModelSpec) -> str | None:
        """Why a new catalogue version must become production, or None.

        When the code is upgraded to another implementation of a step (a new implementation id in
        `models.catalogue`), a production version naming the old one cannot run any more; the
        catalogue's defaults are registered and promoted so the registry says what runs (and the
        upgrade sensor rebuilds what the old implementation made). A missing alias is left alone.
        """
        try:
            production = self.client.get_model_version_by_alias(name, PRODUCTION_ALIAS)
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise
        implementation = (production.tags or {}).get(TAG_IMPLEMENTATION)
        if implementation in (None, spec.implementation):
            return None
        return (
            f"code upgrade: this code implements {spec.implementation} "
            f"(production v{production.version} was {implementation})"
        )

    def _has_versions(self, name: str) -> bool:
        return bool(self.client.search_model_versions(f"name='{name}'", max_results=1))

    @contextlib.contextmanager
    def _init_lock(self) -> Iterator[None]:
        if self.location.local_dir is None:  # a tracking server serialises its own writes
            yield
            return
        self.location.local_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.location.local_dir / _INIT_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def experiment_id(self, name: str) -> str:
        """A plain (non-GenAI) experiment named after the model: one run per version."""
        with self._lock:
            if name in self._experiments:
                return self._experiments[name]
            experiment = self.client.get_experiment_by_name(name)
            if experiment is not None:
                experiment_id = experiment.experiment_id
                if (experiment.tags or {}).get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                    self.client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            else:
                experiment_id = self.client.create_experiment(
                    name,
                    artifact_location=_experiment_artifacts(self.location.artifact_location, name),
                    tags={"avatarpipe.purpose": f"model registry: one run per version of `{name}`",
                          EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                )  # fmt: skip
            self._experiments[name] = experiment_id
            return experiment_id

    # -- reads ---------------------------------------------------------------------------

    def production_versions(self) -> dict[str, ModelVersion]:
        """The version behind every model's `production` alias (reads the registry)."""
        self.ensure_initialised()
        out = {}
        for name in default_model_specs():
            try:
                mv = self.client.get_model_version_by_alias(name, PRODUCTION_ALIAS)
            except Exception as exc:
                if _is_missing(exc):
                    raise RegistryError(
                        f"model {name} has no {PRODUCTION_ALIAS!r} alias; promote a version"
                    ) from exc
                raise
            out[name] = self._to_model_version(mv, aliases=(PRODUCTION_ALIAS,))
        return out

    def get_version(self, name: str, version: str, with_metrics: bool = False) -> ModelVersion:
        self._check_name(name)
        self.ensure_initialised()  # a fresh home has version 1 of everything
        try:
            mv = self.client.get_model_version(name, str(version))
        except Exception as exc:
            if _is_missing(exc):
                raise RegistryError(f"model {name} has no version {version}") from exc
            raise
        return self._to_model_version(mv, aliases=tuple(mv.aliases or ()), with_metrics=with_metrics)

    def versions(self, name: str, with_metrics: bool = True) -> list[ModelVersion]:
        """Every version of one model, oldest first, with aliases (fetched one by one: the
        search API returns versions without their aliases)."""
        self._check_name(name)
        found = self.client.search_model_versions(f"name='{name}'")
        numbers = sorted(int(mv.version) for mv in found)
        return [self.get_version(name, str(n), with_metrics=with_metrics) for n in numbers]

    def _to_model_version(
        self, mv: Any, aliases: tuple[str, ...], with_metrics: bool = False
    ) -> ModelVersion:
        tags = dict(mv.tags or {})
        if TAG_PARAMS in tags and TAG_IMPLEMENTATION in tags:
            implementation, params = tags[TAG_IMPLEMENTATION], json.loads(tags[TAG_PARAMS])
        else:  # a version made outside avatarpipe: the logged config artifact is the truth
            config = self._load_config_artifact(mv)
            implementation, params = config["implementation"], config["params"]
        metrics = {}
        if with_metrics and mv.run_id:
            metrics = dict(self.client.get_run(mv.run_id).data.metrics)
        return ModelVersion(
            name=mv.name,
            version=str(mv.version),
            implementation=implementation,
            params=params,
            aliases=aliases,
            run_id=mv.run_id,
            source=mv.source,
            description=mv.description or None,
            created_at=_iso_from_millis(mv.creation_timestamp),
            based_on=tags.get(TAG_BASED_ON) or None,
            metrics=metrics,
        )

    def _load_config_artifact(self, mv: Any) -> dict:
        if not mv.run_id:
            raise RegistryError(f"{mv.name} version {mv.version} carries neither parameters nor a run")
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(mv.run_id, CONFIG_ARTIFACT, tmp)
            return json.loads(Path(path).read_text())

    # -- writes --------------------------------------------------------------------------

    def plan_params(
        self, name: str, changes: Mapping[str, Any] | None = None, from_version: str | None = None
    ) -> tuple[ModelVersion, dict[str, Any]]:
        """The version a registration starts from and the parameters it would get: those of
        `from_version` (default: production) with `changes` applied. Unknown keys, changed
        types and values this code cannot run raise `RegistryError`; nothing is written."""
        self._check_name(name)
        self.ensure_initialised()
        base = self.get_version(name, from_version) if from_version else self.production_versions()[name]
        # Parameters this code added since `base` was registered start at their defaults;
        # parameters it no longer has are dropped.
        defaults = default_model_specs()[name].params
        params = apply_param_changes({k: base.params.get(k, v) for k, v in defaults.items()}, changes or {})
        try:
            validate_params(name, base.implementation, params)
        except ValueError as exc:
            raise RegistryError(f"{name}: {exc}") from exc
        return base, params

    def register_version(
        self,
        name: str,
        changes: Mapping[str, Any] | None = None,
        from_version: str | None = None,
        metrics: Mapping[str, float] | None = None,
        description: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> ModelVersion:
        """A new version of `name` (parameters as `plan_params` says); `tags` go on the version
        and its run."""
        base, params = self.plan_params(name, changes, from_version)
        spec = ModelSpec(name=name, implementation=base.implementation, params=params)
        version = self._create_version(
            spec, based_on=base.version, metrics=dict(metrics or {}), description=description, extra_tags=tags
        )
        _drop_snapshot(self.location)
        return version

    def log_evaluation(
        self, name: str, version: str, metrics: Mapping[str, float], tags: Mapping[str, str]
    ) -> None:
        """Evaluation metrics on the version's run (MLflow shows them there and on the version)
        and `tags` on both."""
        from mlflow.entities import Metric, RunTag

        mv = self.get_version(name, version)
        if not mv.run_id:
            raise RegistryError(f"{name} version {version} has no run to log an evaluation on")
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        self.client.log_batch(
            mv.run_id,
            metrics=[Metric(k, float(v), now_ms, 0) for k, v in metrics.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )
        self.set_version_tags(name, version, tags)

    def set_version_tags(self, name: str, version: str, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, str(version), key, str(value))

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        self._check_name(name)
        return dict(self.client.get_model_version(name, str(version)).tags or {})

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Any alias but `production` (which only `promote` moves, with its checks)."""
        if alias == PRODUCTION_ALIAS:
            raise RegistryError("the production alias moves only through promote")
        self.get_version(name, version)
        self.client.set_registered_model_alias(name, alias, str(version))

    def delete_alias(self, name: str, alias: str) -> None:
        if alias == PRODUCTION_ALIAS:
            raise RegistryError("the production alias cannot be deleted")
        with contextlib.suppress(Exception):  # absent already: nothing to do
            self.client.delete_registered_model_alias(name, alias)

    def promote(self, name: str, version: str) -> Promotion:
        """Point `production` at `version` (also the way to roll back)."""
        self._check_name(name)
        self.ensure_initialised()
        target = self.get_version(name, version)
        defaults = default_model_specs()[name].params
        try:  # a version of another implementation (from before a code upgrade) cannot run
            validate_params(
                name, target.implementation, {k: target.params.get(k, v) for k, v in defaults.items()}
            )
        except ValueError as exc:
            raise RegistryError(f"cannot promote {name} v{target.version}: {exc}") from exc
        previous = self.production_versions()[name].version
        self.client.set_registered_model_alias(name, PRODUCTION_ALIAS, target.version)
        _drop_snapshot(self.location)
        return Promotion(name=name, previous=previous, production=target.version)

    def _create_version(
        self,
        spec: ModelSpec,
        based_on: str | None,
        metrics: dict[str, float],
        description: str | None,
        extra_tags: Mapping[str, str] | None = None,
    ) -> ModelVersion:
        """One MLflow run per version: params + config artifact (+ metrics), then the version."""
        from mlflow.entities import Metric, Param, RunTag

        client = self.client
        tags = {
            TAG_MODEL: spec.name,
            TAG_IMPLEMENTATION: spec.implementation,
            TAG_PIPELINE: PIPELINE_VERSION,
        }
        run = client.create_run(
            self.experiment_id(spec.name), run_name=f"{spec.name}:{spec.implementation}",
            tags=dict(tags) | provenance_tags() | dict(extra_tags or {}),
        )  # fmt: skip
        run_id = run.info.run_id
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(key, float(value), now_ms, 0) for key, value in metrics.items()],
            params=[Param(key, _param_str(value)) for key, value in sorted(spec.params.items())],
            tags=[RunTag("avatarpipe.params_sha256", params_digest(spec.params))],
        )
        config = {"name": spec.name, "implementation": spec.implementation, "params": spec.params,
                  "pipeline_version": PIPELINE_VERSION, "based_on_version": based_on}  # fmt: skip
        client.log_dict(run_id, config, CONFIG_ARTIFACT)
        client.log_text(run_id, mlmodel_yaml(spec, run_id), f"{CONFIG_ARTIFACT_DIR}/MLmodel")
        client.set_terminated(run_id)
        version_tags = (
            tags
            | provenance_tags()
            | dict(extra_tags or {})
            | {
                TAG_PARAMS: json.dumps(spec.params, sort_keys=True),
                TAG_PARAMS_SHA: params_digest(spec.params),
            }
        )
        if based_on:
            version_tags[TAG_BASED_ON] = based_on
        mv = client.create_model_version(
            spec.name,
            source=f"runs:/{run_id}/{CONFIG_ARTIFACT_DIR}",
            run_id=run_id,
            tags=version_tags,
            description=description,
        )
        return self._to_model_version(mv, aliases=(), with_metrics=bool(metrics))

    @staticmethod
    def _check_name(name: str) -> None:
        if name not in default_model_specs():
            known = ", ".join(default_model_specs())
            raise RegistryError(f"unknown model {name!r}; registered models are: {known}")


def provenance_tags() -> dict[str, str]:
    """Who registered a version and from which code: MLflow's own user, source and git-commit
    tags (the run page shows them as "Created by" and "Source": avatarpipe @ commit) plus the
    avatarpipe code version."""
    import getpass
    from importlib.metadata import PackageNotFoundError, version

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = "unknown"
    try:
        package = version("avatarpipe")
    except PackageNotFoundError:
        package = "unknown"
    return {
        TAG_USER: user,
        TAG_SOURCE_NAME: "avatarpipe",
        TAG_SOURCE_TYPE: "LOCAL",
        TAG_GIT_COMMIT: git_commit(),
        "avatarpipe.code_version": f"{package}+{PIPELINE_VERSION}",
    }


@functools.lru_cache(maxsize=4)
def git_commit(repo: Path | None = None) -> str:
    """HEAD of the source tree this code runs from ("unknown" outside a git checkout), with
    `-dirty` when tracked files are modified."""
    import subprocess

    where = repo or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def mlmodel_yaml(spec: ModelSpec, run_id: str) -> str:
    """An `MLmodel` file for the version's `model/` directory, so the MLflow UI's version page
    finds one (no 404). It declares one custom flavour, `avatarpipe`, naming the implementation
    and the config file; there is no `python_function` flavour: these steps are code in this
    repository configured by parameters, not serialised models `mlflow.pyfunc` could load."""
    from mlflow.models import Model

    model = Model(artifact_path=CONFIG_ARTIFACT_DIR, run_id=run_id)
    model.add_flavor("avatarpipe", implementation=spec.implementation, model=spec.name, config="config.json",
                     pipeline_version=PIPELINE_VERSION)  # fmt: skip
    return model.to_yaml()


def _experiment_artifacts(root: str | None, name: str) -> str | None:
    return f"{root.rstrip('/')}/{name}" if root else None


def mlflow_ui_base(location: RegistryLocation) -> str:
    """The MLflow UI: the tracking server itself when the tracking URI is one, else where
    `mlflow ui --backend-store-uri …` listens by default."""
    uri = location.tracking_uri
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else MLFLOW_UI_DEFAULT


def mlflow_version_url(location: RegistryLocation, name: str, version: str) -> str:
    """The MLflow UI page of one model version (for Dagster metadata and CLI output), on the
    UI's model-training side."""
    from urllib.parse import quote

    return f"{mlflow_ui_base(location)}/#/models/{quote(name)}/versions/{quote(str(version))}?{MLFLOW_UI_MODE}"


def _start_from_migrated_schema(location: RegistryLocation) -> None:
    """Copy a cached, freshly migrated empty MLflow database into a new home.

    MLflow creates a new sqlite backend by running its whole alembic migration chain (about
    10 s on a busy 2-core machine, on every fresh home); the result depends only on the MLflow
    version, so it is built once per machine under `AVATARPIPE_CACHE` and copied with sqlite's
    backup API. MLflow still verifies the schema version when it opens the copy.
    """
    db = location.db_path
    if db is None or location.schema_cache is None or db.exists():
        return
    from importlib.metadata import version

    template = location.schema_cache / f"mlflow-{version('mlflow')}.db"
    if not template.is_file():
        _build_schema_template(template)
    _sqlite_copy(template, db)


def _build_schema_template(template: Path) -> None:
    from mlflow import MlflowClient

    template.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=template.parent) as tmp:
        fresh = Path(tmp) / "fresh.db"
        client = MlflowClient(tracking_uri=f"sqlite:///{fresh}", registry_uri=f"sqlite:///{fresh}")
        client.search_registered_models()  # opening the store runs the migrations
        _sqlite_copy(fresh, template)


def _sqlite_copy(source: Path, target: Path) -> None:
    """A consistent copy of an sqlite database, published atomically (temp file + rename)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with (
            contextlib.closing(sqlite3.connect(source)) as src,
            contextlib.closing(sqlite3.connect(tmp)) as dst,
        ):
            src.backup(dst)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def apply_param_changes(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied; a key must exist and keep its type (an int may become a
    float, a list keeps its length)."""
    params = json.loads(json.dumps(dict(base)))  # deep copy of JSON data
    for key, value in changes.items():
        if key not in params:
            raise RegistryError(f"unknown parameter {key!r}; known: {', '.join(sorted(params))}")
        old = params[key]
        if not _same_kind(old, value):
            raise RegistryError(f"parameter {key!r} must be like {json.dumps(old)}, got {json.dumps(value)}")
        params[key] = float(value) if isinstance(old, float) else value
    return params


def _same_kind(old: Any, new: Any) -> bool:
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, float):
        return isinstance(new, (int, float))
    if isinstance(old, list):
        return isinstance(new, list) and len(new) == len(old) and all(map(_same_kind, old, new))
    return type(old) is type(new)


def _param_str(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _iso_from_millis(millis: int | None) -> str | None:
    if not millis:
        return None
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds")


def _is_missing(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}


# -- process-wide access with the snapshot cache -------------------------------------------

_REGISTRIES: dict[RegistryLocation, ModelRegistry] = {}
_REGISTRIES_LOCK = threading.Lock()


def open_registry(location: RegistryLocation) -> ModelRegistry:
    """One registry client per location and process (opening MLflow's store is slow)."""
    with _REGISTRIES_LOCK:
        if location not in _REGISTRIES:
            _REGISTRIES[location] = ModelRegistry(location)
        return _REGISTRIES[location]


_PRODUCTION_READS: dict[RegistryLocation, tuple[list[int], dict[str, ModelVersion]]] = {}


def load_production_versions(location: RegistryLocation) -> dict[str, ModelVersion]:
    """The current production versions, from this process's last read while the registry's
    database is unchanged (a remote registry is read every time), else from the snapshot
    when the registry has not changed since it was written, else from MLflow (initialising a
    fresh registry first)."""
    stamp = _db_stamp(location)
    cached = _PRODUCTION_READS.get(location)
    # a remote registry has no stamp: another process's promotion must be seen at once, so only
    # a local database (whose stamp changes with every write) is served from this cache
    if cached is not None and stamp is not None and cached[0] == stamp:
        return dict(cached[1])
    production = _read_snapshot(location, stamp)
    if production is None:
        production = open_registry(location).production_versions()
        _write_snapshot(location, production)
        stamp = _db_stamp(location)  # the first read may have initialised the registry
    if stamp is not None:  # only a local database's reads are served again (above)
        _PRODUCTION_READS[location] = (stamp, dict(production))
    return production


def _db_stamp(location: RegistryLocation) -> list[int] | None:
    """Size and mtime of the sqlite database and its WAL: any registry write changes them."""
    if location.db_path is None:
        return None
    stamp = []
    for path in (location.db_path, location.db_path.with_name(location.db_path.name + "-wal")):
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            stamp += [st.st_size, st.st_mtime_ns]
    return stamp or None


def _snapshot_path(location: RegistryLocation) -> Path | None:
    return location.local_dir / _SNAPSHOT_FILE if location.local_dir else None


def _read_snapshot(location: RegistryLocation, stamp: list[int] | None) -> dict[str, ModelVersion] | None:
    path = _snapshot_path(location)
    if path is None or stamp is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("db_stamp") != stamp or data.get("catalogue") != catalogue_digest():
        return None
    return {name: ModelVersion.from_dict(data["versions"][name]) for name in default_model_specs()}


def _write_snapshot(location: RegistryLocation, production: Mapping[str, ModelVersion]) -> None:
    path = _snapshot_path(location)
    stamp = _db_stamp(location)
    if path is None or stamp is None:
        return
    data = {
        "db_stamp": stamp,
        "catalogue": catalogue_digest(),
        "versions": {name: mv.to_dict() for name, mv in production.items()},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".production.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, sort_keys=True)
    os.replace(tmp, path)


def catalogue_digest() -> str:
    """Changes when the code's models, implementations or parameter names change, so a code
    upgrade re-reads (and if needed updates) the registry instead of trusting the snapshot."""
    shape = {name: [s.implementation, sorted(s.params)] for name, s in default_model_specs().items()}
    return params_digest(shape)[:16]


def _drop_snapshot(location: RegistryLocation) -> None:
    _PRODUCTION_READS.pop(location, None)  # a write through this process: its next read re-reads
    path = _snapshot_path(location)
    if path is not None:
        path.unlink(missing_ok=True)


def production_map(production: Mapping[str, ModelVersion]) -> dict[str, str]:
    """{model name: version}, the form artifact documents record."""
    return {name: mv.version for name, mv in sorted(production.items())}
