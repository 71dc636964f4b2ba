"""Linear blend skinning, written once (as smplx's single `lbs()`): pure functions over arrays.

Every vertex v with influences (index j_k, weight w_k) moves by the blend of its bones'
transforms: v' = (sum_k w_k T_{j_k}) v. Anny's own skinning, glTF's skinning (T = G_j . IBM_j,
as a viewer computes it), the clothing fit's posed surface and the quality check's bind pose
all call these.
"""

from __future__ import annotations

import numpy as np


def blend_transforms(indices: np.ndarray, weights: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """(V,4,4) per-vertex blended transforms: sum_k weights[v,k] transforms[indices[v,k]].

    `indices` (V,K) integer bone indices, `weights` (V,K), `transforms` (J,4,4)."""
    return np.einsum("vk,vkij->vij", weights, transforms[indices])


def apply_blended(blended: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(V,3) `points` (V,3) moved by their own affine transforms `blended` (V,4,4)."""
    return np.einsum("vij,vj->vi", blended[:, :3, :3], points) + blended[:, :3, 3]


def lbs(points: np.ndarray, indices: np.ndarray, weights: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """(V,3) linear blend skinning of `points` (V,3) by bone `transforms` (J,4,4) with per-vertex
    influences `indices`/`weights` (V,K)."""
    return apply_blended(blend_transforms(indices, weights, transforms), points)
