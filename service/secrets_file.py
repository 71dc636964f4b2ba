"""The service's signing secret: `AVATARPIPE_SERVICE_SECRET`, else a random value kept in the home."""

from __future__ import annotations

from pathlib import Path

from orchestration.config import home_secret

SECRET_FILE = ".service_secret"


def service_secret(home: Path, configured: str | None) -> bytes:
    """Signs share links and peppers API-key hashes (changing it revokes every key and link)."""
    return home_secret(configured, Path(home) / SECRET_FILE)
