"""The model-bearing steps, their implementation ids and default parameters.

These are version 1 of each registered model. The model registry (MLflow) is seeded from
here on a fresh home; the pipeline itself always asks the registry for the production
version, so promoting a new version changes what runs without code edits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from models.fitting import FITTER_ID, FitConfig
from models.keypoints import DETECTOR_ID, DetectorConfig

PIPELINE_VERSION = "0.1.0"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    implementation: str
    params: dict = field(default_factory=dict)


def default_model_specs() -> dict[str, ModelSpec]:
    return {
        spec.name: spec
        for spec in (
            ModelSpec("keypoint_detector", DETECTOR_ID, asdict(DetectorConfig())),
            ModelSpec("body_model", "anny-0.6.2", {"rig": "mixamo"}),
            ModelSpec("body_fitter", FITTER_ID, _jsonable(asdict(FitConfig()))),
            ModelSpec("reconstructor", "projective-texture-v1", {"texture_size": 1024}),
            ModelSpec("rigger", "anny-mixamo-gltf-v1", {"max_influences": 4}),
        )
    }


# Which registered models each asset's output depends on (directly; upstream is Dagster's).
ASSET_MODELS: dict[str, tuple[str, ...]] = {
    "photo": (),
    "keypoints": ("keypoint_detector",),
    "smplx_params": ("body_model", "body_fitter"),
    "mesh": ("body_model", "reconstructor"),
    "rigged_glb": ("body_model", "rigger"),
}


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
