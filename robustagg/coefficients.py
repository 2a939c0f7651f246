"""Row coefficients of the distance rules, computed from squared distances alone.

Each distance rule (SPEC 3) sees X only through ``(D, finite)``: the float64
squared distances between its points (the rows, and a center as the last
point for centered clipping) and which points are finite. The functions here
turn them into row coefficients ``c``, and :func:`combine` makes the result
``sum_i c_i p_i`` in one pass over X. :mod:`robustagg.distance` runs them on
one matrix; :mod:`robustagg.distributed` runs them on distances summed over
gradient buckets (squared distances add over blocks of coordinates), so both
get the same coefficients for the same rows.

An iterate ``z = sum_k c_k p_k`` with ``sum_k c_k = 1`` has, for every point
``p_j``, ``||p_j - z||^2 = sum_k c_k D_jk - 1/2 sum_kl c_k c_l D_kl``: the
iterative rules run in O(m^2) per step, whatever the dimension, in float64 on
the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import ops

__all__ = [
    "GeometricMedianInfo",
    "cc_coefficients",
    "centered_gram",
    "combine",
    "distances_to",
    "gm_coefficients",
    "krum_coefficients",
    "krum_order",
    "mean_of",
    "monna_coefficients",
]


@dataclass(frozen=True)
class GeometricMedianInfo:
    """How a geometric-median computation ended.

    Attributes:
        iterations: Weiszfeld updates done.
        objective: :math:`F(z) = \\sum_i a_i \\|x_i - z\\|` at the returned ``z`` (finite rows).
        converged: whether the relative change of ``F`` fell to ``tol`` before ``max_iter``.
    """

    iterations: int
    objective: float
    converged: bool


def distances_to(D: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """||p_j - z|| for z = sum_k c_k p_k (sum c = 1), every point j; D restricted to finite points."""
    Dc = D @ c
    return (Dc - 0.5 * torch.dot(c, Dc)).clamp_min(0.0).sqrt()


def krum_order(D: torch.Tensor, finite: torch.Tensor, neighbours: int) -> torch.Tensor:
    """Rows ranked by (not finite, Krum score, index); score = sum of the `neighbours` smallest D_ij, j != i."""
    k = D.shape[0]
    others = D.clone()
    others.fill_diagonal_(math.inf)
    scores = (
        torch.sort(others, dim=1).values[:, :neighbours].sum(1) if neighbours > 0 else torch.zeros(k, dtype=D.dtype)
    )
    by_score = torch.sort(scores, stable=True).indices
    return by_score[torch.sort((~finite[by_score]).to(torch.int8), stable=True).indices]


def mean_of(chosen: torch.Tensor, finite: torch.Tensor) -> torch.Tensor | None:
    """Coefficients of the mean of the finite rows among ``chosen`` (indices); None when none is finite."""
    chosen = chosen[finite[chosen]]
    if chosen.numel() == 0:
        return None
    c = torch.zeros(finite.numel(), dtype=torch.float64)
    c[chosen] = 1.0 / chosen.numel()
    return c


def monna_coefficients(D: torch.Tensor, finite: torch.Tensor, f: int, pivot: int) -> torch.Tensor | None:
    """MoNNA's: the mean of the finite rows among the n - f first in the order ``(D_pivot,j, j)``, the pivot
    first (its own distance 0), rows that are not finite last."""
    d = torch.where(finite & finite[pivot], D[pivot], math.inf)
    d[pivot] = 0.0
    return mean_of(torch.sort(d, stable=True).indices[: D.shape[0] - f], finite)


def centered_gram(D: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    r"""Inner products :math:`G_{ij} = \langle p_i - \mu, p_j - \mu\rangle` around :math:`\mu = \sum_k w_k p_k`.

    From squared distances alone (``sum w = 1``, D finite):
    :math:`G = -\tfrac12 (I - \mathbf{1} w^T) D (I - w \mathbf{1}^T)` (classical scaling). D may be a
    batch ``(..., m, m)`` of distance matrices sharing the weights ``(m,)``. Torch tensors or numpy arrays.
    """
    Dw = D @ w
    total = (Dw * w).sum(-1)[..., None, None]
    return -0.5 * (D - Dw[..., None, :] - Dw[..., :, None] + total)


def krum_coefficients(D: torch.Tensor, finite: torch.Tensor, f: int, m: int) -> torch.Tensor | None:
    """Krum / Multi-Krum as row coefficients: 1/k on the k <= m best finite rows; None when no row is finite."""
    return mean_of(krum_order(D, finite, D.shape[0] - f - 2)[:m], finite)


def gm_coefficients(
    D_all: torch.Tensor, finite: torch.Tensor, a_all: torch.Tensor, nu: float, tol: float, max_iter: int
) -> tuple[torch.Tensor | None, GeometricMedianInfo]:
    """Smoothed Weiszfeld in coefficient space: the row coefficients of z and how it ended.

    The coefficients are None when no row with positive weight is finite (z is all NaN).
    """
    idx = (finite & (a_all > 0)).nonzero().flatten()
    if idx.numel() == 0:
        return None, GeometricMedianInfo(0, math.nan, False)
    D = D_all[idx][:, idx]
    a = a_all[idx]
    c = a / a.sum()
    dist = distances_to(D, c)
    objective = float(torch.dot(a, dist))
    iterations, converged = 0, False
    while iterations < max_iter:
        b = a / dist.clamp_min(nu)
        c = b / b.sum()
        dist = distances_to(D, c)  # serves the objective and the next update
        new = float(torch.dot(a, dist))
        iterations += 1
        done = abs(objective - new) <= tol * objective
        objective = new
        if done:
            converged = True
            break
    full = torch.zeros(D_all.shape[0], dtype=torch.float64)
    full[idx] = c
    return full, GeometricMedianInfo(iterations, objective, converged)


def cc_coefficients(D_all: torch.Tensor, finite: torch.Tensor, tau: float, iters: int) -> torch.Tensor:
    """Centered clipping in coefficient space over the n rows and the center (point n): ``(n + 1,)`` coefficients."""
    n = D_all.shape[0] - 1
    if not finite[n]:
        raise ValueError("centered_clip: center must be finite, got NaN/inf entries")
    idx = finite.nonzero().flatten()  # finite rows, then the center (index n)
    D = D_all[idx][:, idx]
    c = torch.zeros(idx.numel(), dtype=torch.float64)
    c[-1] = 1.0
    previous = None
    for t in range(iters):
        dist = distances_to(D, c)[:-1]
        w = torch.where(dist > tau, tau / dist, torch.ones_like(dist)) / n
        step = c * (1.0 - w.sum())
        step[:-1] += w
        # The iteration is deterministic: once an iterate repeats (period 1 or 2), the rest is known.
        left = iters - t - 1
        if torch.equal(step, c):
            break
        if previous is not None and torch.equal(step, previous):
            c = step if left % 2 == 0 else c
            break
        previous, c = c, step
    full = torch.zeros(n + 1, dtype=torch.float64)
    full[idx] = c
    return full


def combine(c: torch.Tensor | None, X: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """One pass over X: ``sum_i c_i p_i`` over the rows of X (and the center) as a ``(d,)`` tensor; all NaN when
    ``c`` is None (no usable row)."""
    if c is None:
        return torch.full((X.shape[1],), float("nan"), dtype=X.dtype, device=X.device)
    C = c.reshape(1, -1).to(device=X.device, dtype=torch.float64)
    return ops.mix_rows(C, X, center)[0]
