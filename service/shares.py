"""Signed, expiring, read-only share links to one avatar (itsdangerous). A link names the
upload and its expiry; it stops working when it expires or when the upload is erased."""

from __future__ import annotations

import time
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer

MAX_MINUTES = 7 * 24 * 60


@dataclass(frozen=True)
class Share:
    upload_id: str
    expires_at: float  # unix seconds


class ShareExpired(Exception):
    """The link is past its expiry."""


class ShareInvalid(Exception):
    """The link was not signed by this deployment (tampered or made up)."""


def _serializer(secret: bytes) -> URLSafeSerializer:
    return URLSafeSerializer(secret, salt="avatarpipe-share-v1")


def sign_share(secret: bytes, upload_id: str, minutes: int, now: float | None = None) -> tuple[str, Share]:
    if not 1 <= minutes <= MAX_MINUTES:
        raise ValueError(f"minutes must be between 1 and {MAX_MINUTES}")
    share = Share(upload_id, (now or time.time()) + minutes * 60)
    return _serializer(secret).dumps({"u": share.upload_id, "e": round(share.expires_at, 3)}), share


def open_share(secret: bytes, token: str, now: float | None = None) -> Share:
    try:
        data = _serializer(secret).loads(token)
    except BadSignature:
        raise ShareInvalid("not a valid share link") from None
    share = Share(str(data["u"]), float(data["e"]))
    if (now or time.time()) >= share.expires_at:
        raise ShareExpired("the share link has expired")
    return share
