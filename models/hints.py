"""The uploader's optional body hints, validated without torch (the CLI and the ingest sensor
check them before anything heavy is imported; the fit step reads them back)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from models.errors import ErrorCode, PipelineError

STEP = "smplx_params"  # a bad hint is reported against the step that would read it

BUILDS = ("masculine", "feminine", "neutral")
AGE_GROUPS = ("child", "adult")


@dataclass(frozen=True)
class BodyHints:
    """What the uploader says about the person (all optional); a hint always wins over the
    estimate from the photo."""

    build: str | None = None  # masculine | feminine | neutral
    height_cm: float | None = None
    age_group: str | None = None  # child | adult

    def __post_init__(self) -> None:
        if self.build is not None and self.build not in BUILDS:
            raise PipelineError(ErrorCode.INVALID_HINT, f"build must be one of {', '.join(BUILDS)}", STEP)
        if self.age_group is not None and self.age_group not in AGE_GROUPS:
            raise PipelineError(ErrorCode.INVALID_HINT, f"age group must be one of {', '.join(AGE_GROUPS)}", STEP)
        if self.height_cm is not None and not (50.0 <= float(self.height_cm) <= 250.0):
            raise PipelineError(ErrorCode.INVALID_HINT, "height must be between 50 and 250 cm", STEP)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @staticmethod
    def from_dict(data: dict | None) -> BodyHints:
        data = data or {}
        height = data.get("height_cm")
        return BodyHints(
            build=data.get("build") or None,
            height_cm=None if height in (None, "") else float(height),
            age_group=data.get("age_group") or None,
        )
