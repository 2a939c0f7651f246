"""Pre-aggregators (SPEC 4): maps from the ``(n, d)`` rows to new rows that any rule then aggregates.

Each is one weighted combination of rows (:func:`robustagg.ops.mix_rows`),
after at most one pass for distances or norms. None modifies its input.
"""

from __future__ import annotations

import math

import torch

from . import exact_geometry, ops
from .validation import check_generator, check_int, check_matrix, check_positive

__all__ = ["arc", "bucketing", "clip", "nnm"]


def bucketing(X: torch.Tensor, s: int, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Bucketing (Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing", ICLR 2022).

    Permutes the rows at random (``torch.randperm(n, generator=generator)``)
    and averages consecutive buckets of ``s`` rows; the last bucket may be
    smaller. Returns ``(ceil(n / s), d)`` rows; one pass over X.
    """
    check_matrix(X, "bucketing")
    s = check_int(s, "s", "bucketing")
    if s < 1:
        raise ValueError(f"bucketing: s must be >= 1, got s={s}")
    check_generator(generator, "generator", "bucketing")
    n = X.shape[0]
    device = generator.device if generator is not None else "cpu"
    perm = torch.randperm(n, generator=generator, device=device).cpu()
    buckets = math.ceil(n / s)
    C = torch.zeros(buckets, n, dtype=torch.float64)
    for b in range(buckets):
        members = perm[b * s : (b + 1) * s]
        C[b, members] = 1.0 / members.numel()
    return ops.mix_rows(C.to(X.device), X)


def nnm(X: torch.Tensor, f: int) -> torch.Tensor:
    r"""Nearest-neighbour mixing (Allouah et al., "Fixing by Mixing", AISTATS 2023).

    Row i becomes the mean of itself and the :math:`n - f - 1` other rows
    nearest to it in Euclidean distance (ties to the lower index). A row
    holding NaN/inf stays non-finite (and stays infinitely far for the rule
    that follows). Needs ``0 <= f < n``. Two passes over X.
    """
    check_matrix(X, "nnm")
    f = check_int(f, "f", "nnm")
    n = X.shape[0]
    if not 0 <= f < n:
        raise ValueError(f"nnm: f must be in [0, n) = [0, {n}), got f={f}")
    D, _, _ = exact_geometry.scaled_distances(X.detach())
    D = D.cpu().clone()
    D.fill_diagonal_(-1.0)  # each row first among its own neighbours
    nearest = torch.sort(D, dim=1, stable=True).indices[:, : n - f]
    C = torch.zeros(n, n, dtype=torch.float64)
    C.scatter_(1, nearest, 1.0 / (n - f))
    return ops.mix_rows(C.to(X.device), X)


def _scaled_rows(X: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Row i times scale[i], one pass (a scale of 1 copies the row exactly)."""
    return ops.mix_rows(torch.diag(scale).to(X.device), X)


def clip(X: torch.Tensor, c: float) -> torch.Tensor:
    r"""Static norm clipping: :math:`x_i \min(1, c / \|x_i\|)`.

    Rows holding NaN/inf are returned unchanged (they stay infinitely far for
    the rule that follows); a zero row stays zero. ``c > 0`` (``inf`` keeps
    every row). Two passes over X (norms, then the scaled rows).
    """
    check_matrix(X, "clip")
    c = check_positive(c, "c", "clip", allow_inf=True)
    squares, k = exact_geometry.scaled_row_sq_norms(X)
    norms, c = squares.cpu().sqrt(), c * 2.0**-k  # both times 2**-k
    scale = torch.where(torch.isfinite(norms) & (norms > c), c / norms, torch.ones_like(norms))
    return _scaled_rows(X, scale)


def arc(X: torch.Tensor, f: int) -> torch.Tensor:
    r"""Adaptive robust clipping, ARC (Allouah et al., "Towards Practical Robust Aggregation", 2024).

    With :math:`k = \lfloor 2 f (n - f) / n \rfloor`, the ``k`` rows of
    largest norm (rows holding NaN/inf count as largest; ties to the lower
    index) are scaled down to the norm of the ``(k+1)``-th largest; if that
    row is itself non-finite nothing is scaled. Non-finite rows are returned
    unchanged. Needs ``0 <= f`` and ``n > 2f``. Two passes over X.
    """
    check_matrix(X, "arc")
    f = check_int(f, "f", "arc")
    n = X.shape[0]
    if f < 0:
        raise ValueError(f"arc: f must be >= 0, got f={f}")
    if n <= 2 * f:
        raise ValueError(f"arc: f={f} needs n > 2*f, got n={n}")
    k = (2 * f * (n - f)) // n
    norms = exact_geometry.scaled_row_sq_norms(X)[0].cpu().sqrt()  # ratios of norms: the scale cancels
    finite = torch.isfinite(norms)
    key = torch.where(finite, -norms, torch.full_like(norms, -math.inf))
    order = torch.sort(key, stable=True).indices
    scale = torch.ones(n, dtype=torch.float64)
    threshold = norms[order[k]]
    if torch.isfinite(threshold):
        top = order[:k]
        top = top[finite[top] & (norms[top] > threshold)]
        scale[top] = threshold / norms[top]
    return _scaled_rows(X, scale)
