"""Where everything lives, from environment variables only (no code edits to switch)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    home: Path  # AVATARPIPE_HOME: objects, metadata, Dagster instance, MLflow
    cache: Path  # AVATARPIPE_CACHE: model caches (Anny's build), kept across homes
    mongodb_uri: str | None  # MONGODB_URI: a real MongoDB instead of the embedded store

    @staticmethod
    def from_env() -> Settings:
        home = Path(os.environ.get("AVATARPIPE_HOME") or ".avatarpipe").expanduser().resolve()
        cache_env = os.environ.get("AVATARPIPE_CACHE")
        cache = Path(cache_env) if cache_env else Path.home() / ".cache" / "avatarpipe"
        return Settings(
            home=home,
            cache=cache.expanduser().resolve(),
            mongodb_uri=os.environ.get("MONGODB_URI") or None,
        )

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
