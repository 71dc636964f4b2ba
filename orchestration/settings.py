"""Where everything lives: the typed configuration (orchestration/config.py) as the handles the
rest of the code uses. No environment variable is read here; `prepare_environment` *exports*
what Dagster, MLflow and the model caches read themselves."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from orchestration.config import (
    DERIVED_DAGSTER_HOME_ENV,
    AppConfig,
    dagster_pg_url,
    instance_yaml,
    load_config,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    home: Path  # AVATARPIPE_HOME: objects, metadata, Dagster instance, MLflow
    cache: Path  # AVATARPIPE_CACHE: model caches (Anny's build), kept across homes
    mongodb_uri: str | None  # MONGODB_URI: a real MongoDB instead of the embedded store
    aws: AwsSettings = field(default_factory=lambda: AwsSettings())  # S3/SQS/ECS (production path)
    config: AppConfig | None = None  # the validated configuration these handles come from

    @staticmethod
    def from_env() -> Settings:
        """From the environment, validated (raises config.ConfigError naming the bad variables)."""
        return Settings.from_config(load_config())

    @staticmethod
    def from_config(config: AppConfig) -> Settings:
        return Settings(
            home=config.resolved_home,
            cache=config.resolved_cache,
            mongodb_uri=config.mongodb_uri,
            aws=AwsSettings.from_config(config),
            config=config,
        )

    @property
    def app(self) -> AppConfig:
        """The configuration (a Settings built by hand gets the defaults for its home)."""
        if self.config is not None:
            return self.config
        return load_config({"AVATARPIPE_HOME": str(self.home), "AVATARPIPE_CACHE": str(self.cache)})

    def object_store_config(self) -> dict:
        """Plain-data description of the object store (see `storage.object_store.object_store_from_config`):
        S3 when `AVATARPIPE_S3_BUCKET` is set, else the directory under the home."""
        if self.aws.s3_bucket:
            return self.aws.s3_store_config()
        return {"kind": "local", "root": str(self.objects_dir)}

    @property
    def objects_dir(self) -> Path:
        return self.home / "objects"

    @property
    def metadata_dir(self) -> Path:
        return self.home / "metadata"

    @property
    def dagster_home(self) -> Path:
        """An operator's DAGSTER_HOME (used as is), else the instance under the home."""
        operator = self.app.operator_dagster_home() if self.config is not None else None
        return operator or self.home / "dagster"

    @property
    def anny_cache_dir(self) -> Path:
        return self.cache / "anny"

    @property
    def raw_retention_days(self) -> float | None:
        """AVATARPIPE_RAW_RETENTION_DAYS (see ops.raw_retention.raw_retention_policy)."""
        return self.app.raw_retention_days


def _csv(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


# AwsSettings field -> AppConfig field, where the names differ
_CONFIG_NAMES = {"kms_key_id": "s3_kms_key_id", "region": "aws_region", "endpoint_url": "aws_endpoint_url"}
_CSV_FIELDS = frozenset({"heavy_steps", "ecs_subnets", "ecs_security_groups"})


@dataclass(frozen=True)
class AwsSettings:
    """The production path's configuration; all unset = the embedded defaults (no AWS at all).

    `AWS_ENDPOINT_URL` (boto3's own variable) points every client at another endpoint, e.g. a
    moto server in tests; credentials and region come from boto3's usual chain.
    """

    s3_bucket: str | None = None  # AVATARPIPE_S3_BUCKET: artifacts (enables the S3 object store)
    s3_uploads_bucket: str | None = None  # AVATARPIPE_S3_UPLOADS_BUCKET: raw uploads (optional)
    kms_key_id: str | None = None  # AVATARPIPE_S3_KMS_KEY_ID: SSE-KMS key (default: aws/s3)
    presign_expiry_s: int = 900  # AVATARPIPE_PRESIGN_EXPIRY_S
    region: str | None = None  # AWS_REGION / AWS_DEFAULT_REGION
    endpoint_url: str | None = None  # AWS_ENDPOINT_URL
    sqs_queue_url: str | None = None  # AVATARPIPE_SQS_QUEUE_URL: S3 ObjectCreated events
    compute_mode: str = "warm"  # AVATARPIPE_COMPUTE_MODE: inprocess | subprocess | warm | ecs | ecs_service
    heavy_steps: tuple[str, ...] = ("smplx_params", "mesh")  # AVATARPIPE_HEAVY_STEPS
    ecs_cluster: str | None = None  # AVATARPIPE_ECS_CLUSTER
    ecs_task_definition: str | None = None  # AVATARPIPE_ECS_TASK_DEFINITION (family[:revision] or ARN)
    ecs_cpu_task_definition: str | None = None  # AVATARPIPE_ECS_CPU_TASK_DEFINITION (CPU fallback)
    ecs_container: str = "worker"  # AVATARPIPE_ECS_CONTAINER
    ecs_gpu: bool = True  # AVATARPIPE_ECS_GPU=0: CPU fallback
    ecs_gpu_capacity_provider: str | None = None  # AVATARPIPE_ECS_GPU_CAPACITY_PROVIDER
    ecs_cpu_capacity_provider: str | None = None  # AVATARPIPE_ECS_CPU_CAPACITY_PROVIDER
    ecs_subnets: tuple[str, ...] = ()  # AVATARPIPE_ECS_SUBNETS (comma separated; awsvpc mode)
    ecs_security_groups: tuple[str, ...] = ()  # AVATARPIPE_ECS_SECURITY_GROUPS
    ecs_service_queue_url: str | None = None  # AVATARPIPE_ECS_SERVICE_QUEUE_URL (compute mode ecs_service)
    ecs_service_pipes_bucket: str | None = None  # AVATARPIPE_ECS_SERVICE_PIPES_BUCKET (default: s3_bucket)
    ecs_service_pickup_s: int = 900  # AVATARPIPE_ECS_SERVICE_PICKUP_S: longest wait for a worker to take it
    ecs_service_stall_s: int = 300  # AVATARPIPE_ECS_SERVICE_STALL_S: longest silence of a running worker

    @staticmethod
    def from_env() -> AwsSettings:
        return AwsSettings.from_config(load_config())

    @staticmethod
    def from_config(c: AppConfig) -> AwsSettings:
        """Field by field from the configuration: same names, except the few in `_CONFIG_NAMES`;
        the comma-separated variables become tuples."""
        values: dict[str, Any] = {}
        for f in fields(AwsSettings):
            value = getattr(c, _CONFIG_NAMES.get(f.name, f.name))
            values[f.name] = _csv(value) if f.name in _CSV_FIELDS else value
        return AwsSettings(**values)

    def s3_store_config(self) -> dict:
        if not self.s3_bucket:
            raise ValueError("AVATARPIPE_S3_BUCKET is not set")
        return {
            "kind": "s3",
            "bucket": self.s3_bucket,
            "uploads_bucket": self.s3_uploads_bucket,
            "kms_key_id": self.kms_key_id,
            "region": self.region,
            "endpoint_url": self.endpoint_url,
            "presign_expiry_s": self.presign_expiry_s,
        }


def prepare_environment(settings: Settings) -> None:
    """Point Dagster and the model caches at this home and install the instance's dagster.yaml.

    An operator's `DAGSTER_HOME` (one avatarpipe did not derive itself) is left exactly as it
    is: its dagster.yaml is the instance. Otherwise the instance lives under the home, with the
    repo's dagster.yaml (sqlite) or, when `DAGSTER_PG_URL` is set, dagster.postgres.yaml.
    """
    config = settings.app
    dagster_home = settings.dagster_home
    dagster_home.mkdir(parents=True, exist_ok=True)
    settings.anny_cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    os.environ["AVATARPIPE_HOME"] = str(settings.home)
    os.environ["AVATARPIPE_CACHE"] = str(settings.cache)
    os.environ.setdefault("ANNY_CACHE_DIR", str(settings.anny_cache_dir))
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if config.dagster_pg_url:  # what dagster.yaml's `postgres_url: {env: DAGSTER_PG_URL}` reads
        os.environ["DAGSTER_PG_URL"] = dagster_pg_url(config.dagster_pg_url)
    if settings.config is not None and config.operator_dagster_home() is not None:
        return  # the operator's instance: never overwritten
    os.environ[DERIVED_DAGSTER_HOME_ENV] = str(dagster_home)
    source = REPO_ROOT / ("dagster.postgres.yaml" if config.dagster_pg_url else "dagster.yaml")
    target = dagster_home / "dagster.yaml"
    if source.is_file():  # the run queue's limit from the configuration (config.instance_yaml)
        text = instance_yaml(source.read_text(), config)
        if not target.is_file() or target.read_text() != text:
            target.write_text(text)
