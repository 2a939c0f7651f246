"""Plain float64 PyTorch versions of every op: the test oracle, never the fast path.

Each function follows SPEC.md literally and as independently of the kernels'
method as practical: whole-column sorts (``torch.sort`` orders NaN above
+inf, as the SPEC asks) instead of sorting networks, and an explicit
(distance, value) ranking for MeaMed instead of a sliding window. Results are
computed in float64 and cast to X's dtype.
"""

from __future__ import annotations

import torch


def _sorted64(X: torch.Tensor) -> torch.Tensor:
    return torch.sort(X.to(torch.float64), dim=0).values


def _median_of_sorted(S: torch.Tensor) -> torch.Tensor:
    n = S.shape[0]
    lo = S[(n - 1) // 2]
    if n % 2 == 1:
        return lo
    return (lo + S[n // 2]) / 2


def mean(X: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    X64 = X.to(torch.float64)
    if weights is None:
        return X64.mean(0).to(X.dtype)
    w = weights.to(torch.float64)
    return ((w[:, None] * X64).sum(0) / w.sum()).to(X.dtype)


def coordinate_median(X: torch.Tensor) -> torch.Tensor:
    return _median_of_sorted(_sorted64(X)).to(X.dtype)


def trimmed_mean(X: torch.Tensor, f: int) -> torch.Tensor:
    n = X.shape[0]
    return (_sorted64(X)[f : n - f].sum(0) / (n - 2 * f)).to(X.dtype)


def meamed(X: torch.Tensor, f: int) -> torch.Tensor:
    """Rank each value by (|x - median|, x), NaN distances counting as +inf; average the first n - f."""
    n = X.shape[0]
    S = _sorted64(X)
    med = _median_of_sorted(S)
    dist = (S - med).abs()
    dist = torch.where(torch.isnan(dist), torch.full_like(dist, float("inf")), dist)
    # Stable lexicographic ranking: sort by value (already sorted), then stably by distance.
    order = torch.sort(dist, dim=0, stable=True).indices[: n - f]
    kept = torch.sort(order, dim=0).values  # ascending sorted positions, summed in order
    return (torch.gather(S, 0, kept).sum(0) / (n - f)).to(X.dtype)
