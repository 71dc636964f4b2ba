"""Where everything lives, from environment variables only (no code edits to switch)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    home: Path  # AVATARPIPE_HOME: objects, metadata, Dagster instance, MLflow
    cache: Path  # AVATARPIPE_CACHE: model caches (Anny's build), kept across homes
    mongodb_uri: str | None  # MONGODB_URI: a real MongoDB instead of the embedded store
    aws: AwsSettings = field(default_factory=lambda: AwsSettings())  # S3/SQS/ECS (production path)

    @staticmethod
    def from_env() -> Settings:
        home = Path(os.environ.get("AVATARPIPE_HOME") or ".avatarpipe").expanduser().resolve()
        cache_env = os.environ.get("AVATARPIPE_CACHE")
        cache = Path(cache_env) if cache_env else Path.home() / ".cache" / "avatarpipe"
        return Settings(
            home=home,
            cache=cache.expanduser().resolve(),
            mongodb_uri=os.environ.get("MONGODB_URI") or None,
            aws=AwsSettings.from_env(),
        )

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
        return self.home / "dagster"

    @property
    def anny_cache_dir(self) -> Path:
        return self.cache / "anny"

    @property
    def raw_retention_days(self) -> float | None:
        """AVATARPIPE_RAW_RETENTION_DAYS: delete raw uploads this long after `ready` (unset: keep)."""
        value = os.environ.get("AVATARPIPE_RAW_RETENTION_DAYS")
        return float(value) if value else None


def _env_list(name: str, default: str = "") -> tuple[str, ...]:
    return tuple(item.strip() for item in (os.environ.get(name) or default).split(",") if item.strip())


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None or value == "" else value.strip().lower() in ("1", "true", "yes", "on")


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
    compute_mode: str = "subprocess"  # AVATARPIPE_COMPUTE_MODE: inprocess | subprocess | ecs
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

    @staticmethod
    def from_env() -> AwsSettings:
        env = os.environ.get
        return AwsSettings(
            s3_bucket=env("AVATARPIPE_S3_BUCKET") or None,
            s3_uploads_bucket=env("AVATARPIPE_S3_UPLOADS_BUCKET") or None,
            kms_key_id=env("AVATARPIPE_S3_KMS_KEY_ID") or None,
            presign_expiry_s=int(env("AVATARPIPE_PRESIGN_EXPIRY_S") or 900),
            region=env("AWS_REGION") or env("AWS_DEFAULT_REGION") or None,
            endpoint_url=env("AWS_ENDPOINT_URL") or None,
            sqs_queue_url=env("AVATARPIPE_SQS_QUEUE_URL") or None,
            compute_mode=(env("AVATARPIPE_COMPUTE_MODE") or "subprocess").strip().lower(),
            heavy_steps=_env_list("AVATARPIPE_HEAVY_STEPS", "smplx_params,mesh"),
            ecs_cluster=env("AVATARPIPE_ECS_CLUSTER") or None,
            ecs_task_definition=env("AVATARPIPE_ECS_TASK_DEFINITION") or None,
            ecs_cpu_task_definition=env("AVATARPIPE_ECS_CPU_TASK_DEFINITION") or None,
            ecs_container=env("AVATARPIPE_ECS_CONTAINER") or "worker",
            ecs_gpu=_env_bool("AVATARPIPE_ECS_GPU", True),
            ecs_gpu_capacity_provider=env("AVATARPIPE_ECS_GPU_CAPACITY_PROVIDER") or None,
            ecs_cpu_capacity_provider=env("AVATARPIPE_ECS_CPU_CAPACITY_PROVIDER") or None,
            ecs_subnets=_env_list("AVATARPIPE_ECS_SUBNETS"),
            ecs_security_groups=_env_list("AVATARPIPE_ECS_SECURITY_GROUPS"),
        )

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
    """Point Dagster and the model caches at this home; install the repo's dagster.yaml."""
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    settings.anny_cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    os.environ["AVATARPIPE_HOME"] = str(settings.home)
    os.environ["AVATARPIPE_CACHE"] = str(settings.cache)
    os.environ.setdefault("ANNY_CACHE_DIR", str(settings.anny_cache_dir))
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    source = REPO_ROOT / "dagster.yaml"
    target = settings.dagster_home / "dagster.yaml"
    if source.is_file() and (not target.is_file() or target.read_bytes() != source.read_bytes()):
        shutil.copyfile(source, target)
