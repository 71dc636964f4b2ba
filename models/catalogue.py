"""The model-bearing steps, their implementation ids and default parameters.

These are version 1 of each registered model. The model registry (MLflow) is seeded from
here on a fresh home; the pipeline itself always asks the registry for the production
version, so promoting a new version changes what runs without code edits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from models.fit_config import FITTER_ID, FitConfig
from models.keypoints import DETECTOR_ID, DetectorConfig

PIPELINE_VERSION = "0.1.0"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    implementation: str
    params: dict = field(default_factory=dict)


RECONSTRUCTOR_ID = "clothed-projective-texture-v2"  # v2: skirts and dresses spanning the legs (issue 12)
RIGGER_ID = "anny-mixamo-gltf-v2"  # v2: skirt skin weights follow both legs (issue 12)


def default_model_specs() -> dict[str, ModelSpec]:
    return {
        spec.name: spec
        for spec in (
            ModelSpec("keypoint_detector", DETECTOR_ID, asdict(DetectorConfig())),
            ModelSpec("body_model", "anny-0.6.2", {"rig": "mixamo"}),
            ModelSpec("body_fitter", FITTER_ID, _jsonable(asdict(FitConfig()))),
            ModelSpec("reconstructor", RECONSTRUCTOR_ID, {"texture_size": 1024, "clothing": True}),
            ModelSpec("rigger", RIGGER_ID, {"compress": False}),
        )
    }


def validate_params(name: str, implementation: str, params: dict) -> None:
    """Raise ValueError unless this code can run `name` with `implementation` and `params`.

    Guards new registry versions: a parameter the step does not know, a value its config
    rejects, or a setting this installation cannot honour (a MediaPipe model not shipped in
    the wheel, a second Anny rig build) is refused before it can reach production.
    """
    default = default_model_specs()[name]
    if implementation != default.implementation:
        raise ValueError(f"this code implements {default.implementation!r}, not {implementation!r}")
    unknown = set(params) - set(default.params)
    if unknown:
        raise ValueError(f"unknown parameters {sorted(unknown)}")
    if name == "keypoint_detector":
        config = DetectorConfig(**params)
        if config.model_complexity != 1:
            raise ValueError("model_complexity must be 1: only the full pose model ships in the MediaPipe wheel")
        for key in ("min_detection_confidence", "visibility_threshold", "min_person_height_frac"):
            if not 0.0 <= getattr(config, key) <= 1.0:
                raise ValueError(f"{key} must be within [0, 1]")
    elif name == "body_fitter":
        config = FitConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})
        if any(int(n) != n or n < 0 for n in config.iters) or sum(config.iters) == 0:
            raise ValueError("iters must be non-negative integers, not all zero")
        if config.lr <= 0 or config.focal_scale <= 0 or config.gmof_rho <= 0:
            raise ValueError("lr, focal_scale and gmof_rho must be positive")
        if min(config.pose_prior + config.shape_prior) < 0:
            raise ValueError("prior weights must be non-negative")
        weights = (config.angle_prior, config.limit_prior, config.silhouette_weight, config.limb_weight,
                   config.hand_weight, config.face_weight)  # fmt: skip
        if min(weights) < 0:
            raise ValueError("term weights must be non-negative")
        if min(config.rho_schedule) <= 0 or config.limb_rho <= 0 or config.detail_rho <= 0:
            raise ValueError("robust scales (rho_schedule, limb_rho, detail_rho) must be positive")
    elif name == "reconstructor":
        size = params.get("texture_size")
        if not isinstance(size, int) or size < 256 or size > 4096 or size & (size - 1):
            raise ValueError("texture_size must be a power of two between 256 and 4096")
        if not isinstance(params.get("clothing", True), bool):
            raise ValueError("clothing must be true or false")
    elif name == "rigger":
        if not isinstance(params.get("compress", False), bool):
            raise ValueError("compress must be true or false")
    elif params != default.params:  # body_model: nothing tunable in this code
        raise ValueError(f"parameters are fixed in this implementation: {default.params}")


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
