"""The service's signing secret: `AVATARPIPE_SERVICE_SECRET`, else a random value kept in the home."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

SECRET_FILE = ".service_secret"


def service_secret(home: Path, configured: str | None) -> bytes:
    """Signs share links and peppers API-key hashes; created once (mode 600) when not configured,
    so every process of one deployment on one home agrees on it."""
    if configured:
        return configured.encode()
    path = Path(home) / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()
