"""avatarpipe's configuration: one typed, validated object built from environment variables.

This module is the only place that reads avatarpipe's environment variables (`models/` reads
none; the orchestration layer passes values down as parameters; the Pipes worker reads its own
machine's values through it, `ops.steps.WorkerRuntime`). Not configuration, so not here: the
test-only fault hooks (`ops/faults.py`) and what Dagster Pipes passes a worker itself.
`tests/backends/test_env_reads.py` scans the source so this stays true. `load_config()` validates everything at
start and raises :class:`ConfigError` with one line per bad variable (never echoing a secret);
`describe()` is what `avatarpipe config show` prints: every value, *redacted*, with where it
came from (`env:NAME`, `default`, or `derived:` how).

Production stores (all optional; unset = the embedded defaults under `AVATARPIPE_HOME`):

* Dagster: an operator's `DAGSTER_HOME` holding a `dagster.yaml` is used as it is; without
  one, `DAGSTER_PG_URL` switches the instance avatarpipe installs to Postgres storage.
* MLflow: `AVATARPIPE_MLFLOW_URI` (tracking/backend store: `postgresql://…`, `http(s)://…`),
  `AVATARPIPE_MLFLOW_REGISTRY_URI` (default: the tracking URI), `AVATARPIPE_MLFLOW_ARTIFACT_ROOT`
  (`s3://bucket/prefix`; required with a database URI, else MLflow writes to `./mlruns`).
* MongoDB: `MONGODB_URI`; S3/SQS/ECS: the `AVATARPIPE_S3_*`, `AVATARPIPE_ECS_*` variables.

PostgreSQL drivers: SQLAlchemy 2.1 maps a plain `postgresql://` URL to psycopg 3, which is
pinned (`psycopg[binary]`), so plain URLs work for MLflow. Dagster's Postgres storage
(`dagster-postgres`) is written against psycopg2; :func:`dagster_pg_url` normalises
`postgresql://` and `postgresql+psycopg://` to `postgresql+psycopg2://` for it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REDACTED = "***"
_SECRET_QUERY_KEYS = re.compile(r"(pass|secret|token|key|signature|credential)", re.IGNORECASE)
# set by prepare_environment(): the DAGSTER_HOME value avatarpipe derived itself (not an operator's)
DERIVED_DAGSTER_HOME_ENV = "AVATARPIPE_DERIVED_DAGSTER_HOME"
# `avatarpipe --verbose`, carried to the processes the CLI starts (run workers, Pipes workers)
VERBOSE_ENV = "AVATARPIPE_VERBOSE"
COMPUTE_MODES = ("inprocess", "subprocess", "warm", "ecs", "ecs_service")
SERVICE_DISPATCH = ("inline", "sensors")


# The form each URI-like variable must have: (pattern, what the error message says).
_FORMS: dict[str, tuple[re.Pattern[str], str]] = {
    "dagster_pg_url": (re.compile(r"^postgres(ql)?(\+\w+)?://"), "must be a postgresql:// URL"),
    "mlflow_tracking_uri": (
        re.compile(r"^(sqlite|postgres(ql)?|mysql|mssql)(\+\w+)?://|^(https?|file|databricks)[:]"),
        "must be a database URI (postgresql://, sqlite:///...) or a tracking server (http(s)://)",
    ),
    "mongodb_uri": (re.compile(r"^mongodb(\+srv)?://"), "must be a mongodb:// or mongodb+srv:// URI"),
    "mlflow_artifact_root": (
        re.compile(r"^(s3|gs|wasbs|file|hdfs|mlflow-artifacts)://|^/"),
        "must be an artifact URI (s3://bucket/prefix, file:///path) or an absolute path",
    ),
}
_FORMS["mlflow_registry_uri"] = _FORMS["mlflow_tracking_uri"]
# Numeric floors: (floor, whether the floor itself is allowed, the error message).
_POSITIVE = (0, False, "must be a positive integer")
_NOT_NEGATIVE = (0, True, "must not be negative")
_LOWER_BOUNDS: dict[str, tuple[float, bool, str]] = {
    "max_upload_bytes": _POSITIVE, "max_image_pixels": _POSITIVE, "service_workers": _POSITIVE,
    "warm_workers": _POSITIVE, "warm_idle_s": _POSITIVE, "max_concurrent_runs": _POSITIVE,
    **dict.fromkeys(("raw_retention_days", "lease_ttl_s", "step_retries", "step_retry_delay_s", "presign_expiry_s",
                     "reprocess_max_in_flight", "store_retry_tries", "store_retry_base_s", "store_retry_max_s"),
                    _NOT_NEGATIVE),
}  # fmt: skip


class ConfigError(ValueError):
    """The environment does not describe a usable configuration (message names the variables)."""


def _var(env: str | tuple[str, ...], default: Any = None, *, help: str, secret: bool = False) -> Any:
    names = (env,) if isinstance(env, str) else env
    return Field(default, validation_alias=AliasChoices(*names), description=help,
                 json_schema_extra={"env": list(names), "secret": secret})  # fmt: skip


class AppConfig(BaseSettings):
    """Every avatarpipe setting, by environment variable (docs/configuration.md lists them)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=False, frozen=True)

    # -- where things live ---------------------------------------------------------------
    home: Path = _var("AVATARPIPE_HOME", Path(".avatarpipe"), help="objects, metadata, Dagster instance, MLflow (embedded)")
    cache: Path | None = _var("AVATARPIPE_CACHE", help="model caches kept across homes (default ~/.cache/avatarpipe)")
    # -- Dagster -------------------------------------------------------------------------
    dagster_home: Path | None = _var("DAGSTER_HOME", help="an existing Dagster instance (its dagster.yaml is used as is)")
    dagster_pg_url: str | None = _var("DAGSTER_PG_URL", help="Dagster storage on PostgreSQL (runs, events, schedules)", secret=True)
    dagster_url: str = _var("AVATARPIPE_DAGSTER_URL", "http://127.0.0.1:3000", help="Dagster UI base URL (links in CLI output)")
    # -- MLflow --------------------------------------------------------------------------
    mlflow_tracking_uri: str | None = _var("AVATARPIPE_MLFLOW_URI", help="MLflow tracking / backend store URI", secret=True)
    mlflow_registry_uri: str | None = _var("AVATARPIPE_MLFLOW_REGISTRY_URI", help="MLflow model registry URI (default: tracking URI)", secret=True)
    mlflow_artifact_root: str | None = _var("AVATARPIPE_MLFLOW_ARTIFACT_ROOT", help="MLflow artifact root, e.g. s3://bucket/mlflow")
    mlflow_s3_endpoint_url: str | None = _var("MLFLOW_S3_ENDPOINT_URL", help="MLflow's own S3 endpoint variable (default AWS_ENDPOINT_URL)")
    # -- metadata and objects ------------------------------------------------------------
    mongodb_uri: str | None = _var("MONGODB_URI", help="a real MongoDB instead of the embedded store", secret=True)
    s3_bucket: str | None = _var("AVATARPIPE_S3_BUCKET", help="artifacts bucket (enables the S3 object store)")
    s3_uploads_bucket: str | None = _var("AVATARPIPE_S3_UPLOADS_BUCKET", help="raw uploads bucket (optional)")
    s3_kms_key_id: str | None = _var("AVATARPIPE_S3_KMS_KEY_ID", help="SSE-KMS key (default: aws/s3)")
    presign_expiry_s: int = _var("AVATARPIPE_PRESIGN_EXPIRY_S", 900, help="presigned URL lifetime")
    aws_region: str | None = _var(("AWS_REGION", "AWS_DEFAULT_REGION"), help="AWS region (boto3 chain otherwise)")
    aws_endpoint_url: str | None = _var("AWS_ENDPOINT_URL", help="another AWS endpoint (e.g. a moto server)")
    sqs_queue_url: str | None = _var("AVATARPIPE_SQS_QUEUE_URL", help="S3 ObjectCreated events queue")
    sqs_max_per_tick: int = _var("AVATARPIPE_SQS_MAX_PER_TICK", 100, help="SQS messages per sensor tick")
    # -- compute -------------------------------------------------------------------------
    compute_mode: str = _var("AVATARPIPE_COMPUTE_MODE", "warm", help="inprocess | subprocess | warm | ecs | ecs_service")
    heavy_steps: str = _var("AVATARPIPE_HEAVY_STEPS", "smplx_params,mesh", help="steps sent to the heavy launcher")
    warm_steps: str = _var("AVATARPIPE_WARM_STEPS", "photo,keypoints,smplx_params,mesh,rigged_glb", help="steps sent to the warm workers (mode warm)")
    warm_workers: int = _var("AVATARPIPE_WARM_WORKERS", 2, help="warm worker processes: steps at once (match the run queue)")
    warm_idle_s: float = _var("AVATARPIPE_WARM_IDLE_S", 600.0, help="a warm worker exits after this long without a request")
    max_concurrent_runs: int = _var("AVATARPIPE_MAX_CONCURRENT_RUNS", 3, help="runs the embedded instance's run queue starts at once")
    ecs_cluster: str | None = _var("AVATARPIPE_ECS_CLUSTER", help="ECS cluster of the workers")
    ecs_task_definition: str | None = _var("AVATARPIPE_ECS_TASK_DEFINITION", help="worker task definition")
    ecs_cpu_task_definition: str | None = _var("AVATARPIPE_ECS_CPU_TASK_DEFINITION", help="CPU fallback task definition")
    ecs_container: str = _var("AVATARPIPE_ECS_CONTAINER", "worker", help="container name in the task")
    ecs_gpu: bool = _var("AVATARPIPE_ECS_GPU", True, help="0: CPU fallback")
    ecs_gpu_capacity_provider: str | None = _var("AVATARPIPE_ECS_GPU_CAPACITY_PROVIDER", help="GPU capacity provider")
    ecs_cpu_capacity_provider: str | None = _var("AVATARPIPE_ECS_CPU_CAPACITY_PROVIDER", help="CPU capacity provider")
    ecs_subnets: str = _var("AVATARPIPE_ECS_SUBNETS", "", help="comma separated (awsvpc)")
    ecs_security_groups: str = _var("AVATARPIPE_ECS_SECURITY_GROUPS", "", help="comma separated (awsvpc)")
    ecs_service_queue_url: str | None = _var("AVATARPIPE_ECS_SERVICE_QUEUE_URL", help="ecs_service: SQS queue of step requests")
    ecs_service_pipes_bucket: str | None = _var("AVATARPIPE_ECS_SERVICE_PIPES_BUCKET", help="ecs_service: bucket of Pipes context/messages (default: AVATARPIPE_S3_BUCKET)")
    ecs_service_pickup_s: int = _var("AVATARPIPE_ECS_SERVICE_PICKUP_S", 900, help="ecs_service: seconds a request may wait for a worker")
    ecs_service_stall_s: int = _var("AVATARPIPE_ECS_SERVICE_STALL_S", 300, help="ecs_service: seconds without a worker heartbeat before the step fails")
    ecs_agent_uri: str | None = _var("ECS_AGENT_URI", help="set by ECS inside a task: the queue worker protects its task from scale-in while busy")
    # -- policies ------------------------------------------------------------------------
    raw_retention_days: float | None = _var("AVATARPIPE_RAW_RETENTION_DAYS", help="raw uploads: days kept after `ready`")
    erasure_salt: str | None = _var("AVATARPIPE_ERASURE_SALT", help="salt of subject hashes (default: $HOME/.erasure_salt)", secret=True)
    lease_ttl_s: float | None = _var("AVATARPIPE_LEASE_TTL_S", help="upload lease lifetime")
    reprocess_max_in_flight: int | None = _var("AVATARPIPE_REPROCESS_MAX_IN_FLIGHT", help="reprocessing runs at once")
    store_retry_tries: int = _var("AVATARPIPE_STORE_RETRY_TRIES", 5, help="store operation attempts")
    store_retry_base_s: float = _var("AVATARPIPE_STORE_RETRY_BASE_S", 0.1, help="first retry delay")
    store_retry_max_s: float = _var("AVATARPIPE_STORE_RETRY_MAX_S", 5.0, help="longest retry delay")
    step_retries: int = _var("AVATARPIPE_STEP_RETRIES", 2, help="Dagster retries of a step after a transient failure")
    step_retry_delay_s: float = _var("AVATARPIPE_STEP_RETRY_DELAY_S", 5.0, help="first step retry delay (exponential, jittered)")
    max_upload_bytes: int | None = _var("AVATARPIPE_MAX_UPLOAD_BYTES", help="largest photo file accepted (default 25 MB)")
    max_image_pixels: int | None = _var("AVATARPIPE_MAX_IMAGE_PIXELS", help="largest decoded photo, pixels (default 64 Mpx; the bomb guard)")
    # -- the HTTP service (`avatarpipe serve`) ---------------------------------------------
    service_secret: str | None = _var("AVATARPIPE_SERVICE_SECRET", help="signs share links and peppers API-key hashes (default: $HOME/.service_secret)", secret=True)
    cors_origins: str = _var("AVATARPIPE_CORS_ORIGINS", "", help="browser origins allowed to call the API (comma separated)")
    service_dispatch: str = _var("AVATARPIPE_SERVICE_DISPATCH", "inline", help="inline: the service runs uploads | sensors: the sensors do")
    service_workers: int = _var("AVATARPIPE_SERVICE_WORKERS", 1, help="uploads the service runs at once (inline dispatch)")
    # -- models and tools ----------------------------------------------------------------
    smplx_model_dir: Path | None = _var("SMPLX_MODEL_DIR", help="licensed SMPL-X files: fit with SMPL-X instead of Anny")
    node_modules: Path | None = _var("AVATARPIPE_NODE_MODULES", help="npm packages (gltf-validator, three); default clients/node_modules")
    gltfpack: str | None = _var("AVATARPIPE_GLTFPACK", help="gltfpack executable (default clients/ install, then PATH)")
    expectations_dir: Path | None = _var("AVATARPIPE_EXPECTATIONS_DIR", help="quality-gate suites (default assets/expectations)")
    eval_photos: str | None = _var("AVATARPIPE_EVAL_PHOTOS", help="`avatarpipe eval` photo folders (os.pathsep separated)")

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any, info: Any) -> Any:
        """`VAR=` means unset (as before), for every variable."""
        if isinstance(value, str) and value.strip() == "":
            default = cls.model_fields[info.field_name].default
            return default
        return value.strip() if isinstance(value, str) else value

    @field_validator(*_FORMS)
    @classmethod
    def _form(cls, value: str | None, info: Any) -> str | None:
        """A URI-like variable must have its form (`_FORMS`: the pattern and what to say)."""
        pattern, message = _FORMS[info.field_name]
        if value is not None and not pattern.match(value):
            raise ValueError(message)
        return value

    @field_validator("compute_mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        value = value.lower()
        if value not in COMPUTE_MODES:
            raise ValueError(f"must be one of {', '.join(COMPUTE_MODES)}")
        return value

    @field_validator("service_dispatch")
    @classmethod
    def _dispatch(cls, value: str) -> str:
        value = value.lower()
        if value not in SERVICE_DISPATCH:
            raise ValueError(f"must be one of {', '.join(SERVICE_DISPATCH)}")
        return value

    @field_validator(*_LOWER_BOUNDS)
    @classmethod
    def _bounded(cls, value: float | None, info: Any) -> float | None:
        """Numbers with a floor (`_LOWER_BOUNDS`); the bomb guards can be tightened or loosened,
        never switched off (0 is refused for them)."""
        floor, inclusive, message = _LOWER_BOUNDS[info.field_name]
        if value is not None and (value < floor or (not inclusive and value == floor)):
            raise ValueError(message)
        return value

    # -- derived -------------------------------------------------------------------------

    @property
    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def resolved_cache(self) -> Path:
        return (self.cache or Path.home() / ".cache" / "avatarpipe").expanduser().resolve()

    def operator_dagster_home(self, environ: Mapping[str, str] | None = None) -> Path | None:
        """An operator's `DAGSTER_HOME` (not the one avatarpipe derived and exported itself)."""
        environ = os.environ if environ is None else environ
        if self.dagster_home is None:
            return None
        value = self.dagster_home.expanduser().resolve()
        derived = environ.get(DERIVED_DAGSTER_HOME_ENV)
        if derived and Path(derived).resolve() == value:
            return None
        return value

    def effective_dagster_home(self) -> Path:
        return self.operator_dagster_home() or self.resolved_home / "dagster"

    def dagster_storage(self) -> str:
        """Which storage the Dagster instance uses: what its dagster.yaml says."""
        home = self.operator_dagster_home()
        if home is not None:
            return _storage_kind_of(home / "dagster.yaml")
        return "postgres" if self.dagster_pg_url else "sqlite"


def _storage_kind_of(path: Path) -> str:
    try:
        text = path.read_text()
    except OSError:
        return "sqlite (no dagster.yaml: Dagster's defaults)"
    if re.search(r"^\s*postgres\s*:", text, re.MULTILINE) or "PostgresRunStorage" in text:
        return "postgres"
    return "sqlite"


# -- loading ---------------------------------------------------------------------------


def home_secret(configured: str | None, path: Path) -> bytes:
    """A deployment secret: the configured value, else a random one created once at ``path``
    (mode 600), so every process on one home agrees on it without any configuration."""
    if configured:
        return configured.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def load_config(environ: Mapping[str, str] | None = None) -> AppConfig:
    """Validate the environment (default: os.environ); ConfigError names every bad variable.

    The validated object is kept per distinct set of avatarpipe variables (:func:`_validated`):
    a run asks for it dozens of times (every store retry policy), and one validation costs
    milliseconds of pydantic. The production checks, which look at files, run every time."""
    source = dict(os.environ if environ is None else environ)
    given = tuple(sorted((name, value) for name, value in source.items() if name in _ENV_NAMES))
    # pydantic-settings also reads os.environ itself (case-insensitively): that is part of the key
    ambient = tuple(sorted((name, value) for name, value in os.environ.items() if name.upper() in _ENV_NAMES))
    try:
        config = _validated(given, ambient)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_input=False, include_url=False):
            field = str(error["loc"][0]) if error["loc"] else "?"
            lines.append(f"  {_env_name_of(field, source)}: {error['msg']}")
        raise ConfigError("invalid avatarpipe configuration:\n" + "\n".join(lines)) from None
    problems = validate_production(config, source)
    if problems:
        raise ConfigError("invalid avatarpipe configuration:\n" + "\n".join(f"  {p}" for p in problems))
    return config


@functools.lru_cache(maxsize=16)
def _validated(given: tuple[tuple[str, str], ...], ambient: tuple[tuple[str, str], ...]) -> AppConfig:
    """`AppConfig` for these variables (``ambient``: what pydantic-settings reads from os.environ
    besides; only a key here). Frozen, so one object serves every caller; a ValidationError is
    raised again on every call (lru_cache keeps only results)."""
    del ambient
    return AppConfig.model_validate(dict(given))


def _field_envs(field: str) -> list[str]:
    extra = AppConfig.model_fields[field].json_schema_extra or {}
    return list(extra.get("env", [field]))  # type: ignore[union-attr]


def _env_name_of(key: str, source: Mapping[str, str]) -> str:
    if key in AppConfig.model_fields:
        names = _field_envs(key)
        return next((n for n in names if n in source), names[0])
    return key


_ENV_NAMES = {name for field in AppConfig.model_fields for name in _field_envs(field)}


# -- redaction -------------------------------------------------------------------------


def redact_url(value: str | None) -> str | None:
    """The URL with its password (and secret-looking query values) replaced by ***."""
    if not value:
        return value
    try:
        parts = urlsplit(value)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" not in netloc and not _SECRET_QUERY_KEYS.search(parts.query):
        return value  # nothing secret (and urlunsplit would drop an empty netloc: sqlite:////…)
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{host}" if ":" in userinfo else f"{user}@{host}"
    query = parts.query
    if query:
        pairs = [(k, REDACTED if _SECRET_QUERY_KEYS.search(k) else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, config: AppConfig | None = None) -> str:
    """Any secret of ``config`` (passwords in its URLs, the salt) replaced by ***, e.g. in an
    exception message that echoes a connection string."""
    config = config or load_config()
    secrets_ = set()
    for field, info in AppConfig.model_fields.items():
        value = getattr(config, field)
        if not (info.json_schema_extra or {}).get("secret") or not value:  # type: ignore[union-attr]
            continue
        password = urlsplit(str(value)).password if "://" in str(value) else str(value)
        if password:
            secrets_.add(password)
    for secret in sorted(secrets_, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return re.sub(r"(://[^:/@\s]+):[^@\s/]+@", rf"\1:{REDACTED}@", text)


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment a warm worker (`orchestration.compute_warm`) starts with: this process's
    (the configuration it validated, what `prepare_environment` exported), without Dagster
    Pipes' bootstrap variables (a warm worker gets them per request), plus ``extra``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PIPES_")}
    return inherited | dict(extra)


# -- the Dagster instance --------------------------------------------------------------


def instance_yaml(template: str, config: AppConfig) -> str:
    """The dagster.yaml avatarpipe installs under its home: the repo's template (sqlite or
    Postgres) with the run queue's ``max_concurrent_runs`` from `AVATARPIPE_MAX_CONCURRENT_RUNS`
    (written as a number, so any process that loads the instance reads the same limit without
    the variable). The per-upload tag limit (one run per upload) stays as the template has it."""
    return re.sub(r"(?m)^(\s*max_concurrent_runs:\s*)\d+", rf"\g<1>{config.max_concurrent_runs}", template)


# -- normalisation ---------------------------------------------------------------------


def dagster_pg_url(url: str) -> str:
    """`postgresql://` (psycopg 3 under SQLAlchemy 2.1) → `postgresql+psycopg2://`, the driver
    dagster-postgres is written for (its retries catch psycopg2's errors)."""
    return re.sub(r"^postgres(ql)?(\+psycopg)?://", "postgresql+psycopg2://", url)


# -- `config show` ---------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    variable: str
    value: Any
    source: str  # env:NAME | default | derived: ...
    help: str


def describe(config: AppConfig | None = None, environ: Mapping[str, str] | None = None) -> list[Entry]:
    """Every setting, redacted, with its source; then the derived effective stores."""
    environ = os.environ if environ is None else environ
    config = config or load_config(environ)
    entries = []
    for field, info in AppConfig.model_fields.items():
        names = _field_envs(field)
        present = next((n for n in names if environ.get(n, "").strip()), None)
        value = getattr(config, field)
        secret = bool((info.json_schema_extra or {}).get("secret"))  # type: ignore[union-attr]
        shown = _shown(value, secret)
        entries.append(Entry(names[0], shown, f"env:{present}" if present else "default", info.description or ""))
    entries += _derived(config)
    return entries


def _shown(value: Any, secret: bool) -> Any:
    if value is None:
        return None
    if isinstance(value, Path):
        return str(value)
    if secret:
        return redact_url(value) if "://" in str(value) else REDACTED
    return value


def _derived(config: AppConfig) -> list[Entry]:
    from ops.raw_retention import raw_retention_policy  # imports Dagster: only when describing

    home = config.resolved_home
    operator_home = config.operator_dagster_home()
    dagster_home = config.effective_dagster_home()
    tracking = config.mlflow_tracking_uri
    artifact = config.mlflow_artifact_root
    # fmt: off
    return [
        Entry("(dagster instance)", str(dagster_home),
              "derived: DAGSTER_HOME (operator's dagster.yaml, used as is)" if operator_home
              else "derived: AVATARPIPE_HOME/dagster (avatarpipe installs dagster.yaml)", "where Dagster's instance config lives"),
        Entry("(dagster storage)", config.dagster_storage(), "derived: dagster.yaml / DAGSTER_PG_URL", "runs, event log, schedules"),
        Entry("(mlflow tracking)", redact_url(tracking) or f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
              "env:AVATARPIPE_MLFLOW_URI" if tracking else "derived: AVATARPIPE_HOME/mlflow", "MLflow backend store"),
        Entry("(mlflow artifacts)", artifact or ((home / "mlflow" / "artifacts").as_uri() if not tracking else None),
              "env:AVATARPIPE_MLFLOW_ARTIFACT_ROOT" if artifact else "derived: AVATARPIPE_HOME/mlflow/artifacts" if not tracking
              else "the tracking server's default", "MLflow artifact root"),
        Entry("(metadata store)", redact_url(config.mongodb_uri) or str(home / "metadata"),
              "env:MONGODB_URI" if config.mongodb_uri else "derived: embedded montydb under AVATARPIPE_HOME", "MongoDB API"),
        Entry("(object store)", f"s3://{config.s3_bucket}" if config.s3_bucket else str(home / "objects"),
              "env:AVATARPIPE_S3_BUCKET" if config.s3_bucket else "derived: AVATARPIPE_HOME/objects", "artifacts and uploads"),
        Entry("(raw retention policy)", raw_retention_policy(config.raw_retention_days).describe(),
              "env:AVATARPIPE_RAW_RETENTION_DAYS" if config.raw_retention_days is not None else "default", "what happens to raw uploads"),
    ]
    # fmt: on


def validate_production(config: AppConfig, environ: Mapping[str, str] | None = None) -> list[str]:
    """Combinations that load but would silently lose data or mislead; [] when fine."""
    problems = []
    tracking = config.mlflow_tracking_uri or ""
    if re.match(r"^(postgres|mysql|mssql)", tracking) and not config.mlflow_artifact_root:
        problems.append("AVATARPIPE_MLFLOW_URI is a database but AVATARPIPE_MLFLOW_ARTIFACT_ROOT is unset "
                        "(MLflow would write artifacts to ./mlruns of whatever directory a task runs in)")  # fmt: skip
    home = config.operator_dagster_home(environ)
    if home is not None and not (home / "dagster.yaml").is_file() and config.dagster_pg_url:
        problems.append(f"DAGSTER_HOME={home} has no dagster.yaml, so DAGSTER_PG_URL would be ignored")
    return problems


def export_verbosity(verbose: bool) -> None:
    """Record `avatarpipe --verbose` in this process's environment, which the workers it starts inherit."""
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"


def verbose_output(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process (or the CLI that started it) was asked for `--verbose`."""
    return (os.environ if environ is None else environ).get(VERBOSE_ENV, "") not in ("", "0", "false")
