"""The small linear algebra of the trace: pairwise cosines, uncentred PCA, subspaces and angles.

Example:
    >>> import torch
    >>> from sink_interp.trace.maths import dims_for, energy_shares
    >>> dims_for(energy_shares(torch.eye(3)[:2] * torch.tensor([[3.0], [1.0]])))
    1
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def mean_pairwise_cos(x: Tensor) -> float:
    """Mean cosine over the n(n-1) ordered pairs of rows of ``x`` [n, d] (nan for n < 2)."""
    n = x.shape[0]
    if n < 2:
        return float("nan")
    u = x.double() / x.double().norm(dim=-1, keepdim=True).clamp_min(1e-30)
    s = u.sum(0)
    return float(((s @ s) - (u * u).sum()) / (n * (n - 1)))


def energy_shares(x: Tensor) -> Tensor:
    """Uncentred PCA: squared singular values of ``x`` [m, d] over their sum (descending)."""
    s = torch.linalg.svdvals(x.double())
    e = s**2
    return e / e.sum().clamp_min(1e-300)


def dims_for(share: Tensor, level: float = 0.9) -> int:
    """How many leading components (descending shares) reach ``level`` of the total."""
    c = torch.cumsum(share, 0) / share.sum().clamp_min(1e-300)
    return int((c < level - 1e-12).sum().item()) + 1


def subspace(x: Tensor, level: float = 0.9) -> Tensor:
    """Orthonormal basis [d, r] of the uncentred principal subspace holding ``level`` of the energy of ``x`` [m, d]."""
    _, s, vh = torch.linalg.svd(x.double(), full_matrices=False)
    e = s**2
    r = dims_for(e / e.sum().clamp_min(1e-300), level)
    return vh[:r].T


def angle_to(v: Tensor, basis: Tensor) -> Tensor:
    """Degrees between vectors ``v`` [..., d] and the span of ``basis`` [d, r]."""
    v = v.double()
    proj = (v @ basis).norm(dim=-1)
    c = (proj / v.norm(dim=-1).clamp_min(1e-300)).clamp(0, 1)
    return torch.rad2deg(torch.arccos(c))


def cum_dims(share: np.ndarray, level: float = 0.9) -> int:
    """How many entries, largest first, add up to ``level`` of ``share.sum()`` (entries may be negative)."""
    s = np.sort(np.asarray(share, dtype=np.float64))[::-1]
    total = s.sum()
    if total <= 0:
        return len(s)
    hit = np.nonzero(np.cumsum(s) >= level * total - 1e-12)[0]
    return int(hit[0] + 1) if len(hit) else len(s)
