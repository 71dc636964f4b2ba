"""Typed errors raised by the science layer.

Every error that a user can cause (a bad photo, no person) carries a stable code so the
orchestration layer can mark the upload failed with a reason and the CLI can exit non-zero
with a machine-readable answer. Permanent input errors are never retried.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    EMPTY_FILE = "EMPTY_FILE"
    NOT_AN_IMAGE = "NOT_AN_IMAGE"
    TRUNCATED_IMAGE = "TRUNCATED_IMAGE"  # the data ends before the image does
    CORRUPT_IMAGE = "CORRUPT_IMAGE"  # the data is all there but damaged (bad checksum, broken stream)
    FILE_TOO_LARGE = "FILE_TOO_LARGE"
    DECOMPRESSION_BOMB = "DECOMPRESSION_BOMB"
    IMAGE_TOO_SMALL = "IMAGE_TOO_SMALL"
    NO_PERSON = "NO_PERSON"
    PERSON_TOO_SMALL = "PERSON_TOO_SMALL"
    FIT_FAILED = "FIT_FAILED"
    INVALID_HINT = "INVALID_HINT"  # an uploader's body hint (build, height, age group) out of range
    RAW_PHOTO_EXPIRED = "RAW_PHOTO_EXPIRED"
    UNSUPPORTED_BODY_MODEL = "UNSUPPORTED_BODY_MODEL"
    QUALITY_GATE_FAILED = "QUALITY_GATE_FAILED"  # a blocking (ERROR) quality expectation failed
    # transient / operational (not caused by the input; retried or resumable)
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"  # object or metadata store still failing after retries
    DEVICE_UNAVAILABLE = "DEVICE_UNAVAILABLE"  # a step asked for a GPU that this worker does not have
    WORKER_UNAVAILABLE = "WORKER_UNAVAILABLE"  # no queue worker picked the step up in time (ecs_service)
    ARTIFACT_MISSING = "ARTIFACT_MISSING"  # `fsck --repair` found an artifact's object gone
    UPLOAD_BUSY = "UPLOAD_BUSY"  # another live runner holds the upload's lease (CLI answer only)
    WORKER_LOST = "WORKER_LOST"  # the warm worker running a step died (killed, out of memory)
    # `avatarpipe export` requests (CLI answers only)
    UNKNOWN_UPLOAD = "UNKNOWN_UPLOAD"
    UPLOAD_NOT_READY = "UPLOAD_NOT_READY"
    UNSUPPORTED_EXPORT_OPTION = "UNSUPPORTED_EXPORT_OPTION"
    INTERNAL_ERROR = "INTERNAL_ERROR"


# Errors caused by the input itself: re-running the same input cannot succeed.
PERMANENT_CODES = frozenset(
    {
        ErrorCode.EMPTY_FILE,
        ErrorCode.NOT_AN_IMAGE,
        ErrorCode.TRUNCATED_IMAGE,
        ErrorCode.CORRUPT_IMAGE,
        ErrorCode.FILE_TOO_LARGE,
        ErrorCode.DECOMPRESSION_BOMB,
        ErrorCode.IMAGE_TOO_SMALL,
        ErrorCode.NO_PERSON,
        ErrorCode.PERSON_TOO_SMALL,
        ErrorCode.FIT_FAILED,
        ErrorCode.INVALID_HINT,
        ErrorCode.QUALITY_GATE_FAILED,
        ErrorCode.RAW_PHOTO_EXPIRED,
        ErrorCode.UNSUPPORTED_BODY_MODEL,
    }
)


class PipelineError(Exception):
    """An error with a stable code and a human-readable message."""

    def __init__(self, code: ErrorCode, message: str, step: str | None = None):
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.step = step

    @property
    def permanent(self) -> bool:
        return self.code in PERMANENT_CODES

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code.value, "message": self.message, "step": self.step}
