"""API keys with roles. A key is shown once (`ak_<id>_<secret>`); the store keeps only
HMAC-SHA256(service secret, key), so a leaked metadata store does not leak usable keys. Keys are
random 256-bit values, so a keyed hash (not a slow password hash) is the right tool."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

ROLES = ("uploader", "compliance", "admin")
PREFIX = "ak_"


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    role: str
    name: str | None = None

    def may(self, *roles: str) -> bool:
        return self.role in roles


@dataclass(frozen=True)
class IssuedKey:
    """A newly created key: `secret` is the whole key, shown to its owner once."""

    key: ApiKey
    secret: str


def _hash(pepper: bytes, full_key: str) -> str:
    return hmac.new(pepper, full_key.encode(), hashlib.sha256).hexdigest()


def create_key(metadata: Any, pepper: bytes, role: str, name: str | None = None) -> IssuedKey:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    key_id = secrets.token_hex(6)
    full = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    metadata.create_api_key(key_id, role, _hash(pepper, full), name)
    return IssuedKey(ApiKey(key_id, role, name), full)


def authenticate(metadata: Any, pepper: bytes, presented: str) -> ApiKey | None:
    """The key's identity, or None for an unknown, malformed or revoked key."""
    if not presented.startswith(PREFIX) or presented.count("_") < 2:
        return None
    key_id = presented[len(PREFIX) :].split("_", 1)[0]
    doc = metadata.get_api_key(key_id)
    if doc is None or doc.get("revoked_at") is not None:
        return None
    if not hmac.compare_digest(doc["secret_hash"], _hash(pepper, presented)):
        return None
    return ApiKey(key_id, doc["role"], doc.get("name"))
