"""The body fitter's identity and parameters (`FitConfig`): plain data, no torch, so the model
catalogue - and the Dagster code location that reads it - can describe the fitter without
importing the fit. `models.fitting` re-exports both."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

FITTER_ID = "smplifyx-lbfgs-v3"  # v3: phenotype evidence, hints, height, retries (issue 12)


@dataclass(frozen=True)
class FitConfig:
    focal_scale: float = 1.2  # focal length = focal_scale * max(image w, h)
    iters: tuple[int, int, int, int] = (12, 30, 60, 12)  # L-BFGS iterations per stage (STAGES)
    lr: float = 1.0  # L-BFGS step length (the line search scales it)
    gmof_rho: float = 0.05  # Geman-McClure scale, as a fraction of the normalising length
    rho_schedule: tuple[float, float, float, float] = (4.0, 4.0, 2.0, 1.0)  # x gmof_rho per stage
    pose_prior: tuple[float, float, float] = (2e-2, 6e-3, 6e-3)  # body, refine, hands/face stages
    shape_prior: tuple[float, float, float] = (1e-2, 3e-3, 3e-3)
    angle_prior: float = 5e-2  # elbow/knee hinge prior
    limit_prior: float = 1.0  # joint angle limits
    silhouette_weight: float = 10.0  # refine stage
    limb_weight: float = 1.0  # limb directions vs MediaPipe's 3D landmarks (body stage)
    limb_rho: float = 0.6  # Geman-McClure scale of the limb direction term (unit-vector distance)
    hand_weight: float = 0.5
    face_weight: float = 0.5
    detail_rho: float = 0.5  # Geman-McClure scale of the hand and face terms (fraction of their size)
    seed: int = 0
    evidence_weight: float = 30.0  # shape prior weight x (1 + this x confidence) on estimated values

    @staticmethod
    def from_params(params: dict) -> FitConfig:
        """From registry parameters (JSON lists become tuples); unknown keys raise TypeError."""
        names = {f.name for f in fields(FitConfig)}
        unknown = set(params) - names
        if unknown:
            raise TypeError(f"unknown body_fitter parameters: {sorted(unknown)}")
        return FitConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})

    def to_params(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
