"""Squared distances and norms that stay exact at any magnitude, for the distance rules and pre-aggregators.

Squared distances of finite float64 rows can exceed the float64 range
(entries beyond ~1e150); the rules then work on the points times 2**-k, which
changes no ranking and scales every distance alike, so that a row is
infinitely far only when it holds NaN/inf (SPEC 1, "Finite means finite").
Other dtypes are squared in float64 and never overflow. 2**-k brings the
largest squared distance under 2**1000. Distances that cancelled in the
kernels' shifted Gram matrix are computed again (see ``_without_cancellation``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch._subclasses.fake_tensor import FakeTensor

from . import _C  # noqa: F401  (loads the library that registers the ops)
from .validation import check_tensor

__all__ = [
    "TINY",
    "distances_and_finite",
    "finite_by_entries",
    "has_values",
    "host_distances",
    "scaled_distances",
    "scaled_row_sq_norms",
]

_NS = torch.ops.robustagg


def has_values(X: torch.Tensor) -> bool:
    """Whether X holds values to look at: not while torch.compile traces, not a fake or meta tensor.

    The checks and repairs that read results (overflow, cancellation) need
    values, so traced code gets the kernels' results as they are.
    """
    return not (torch.compiler.is_compiling() or X.device.type == "meta" or isinstance(X, FakeTensor))


_SUMMABLE = 2.0**1000  # sums of fewer than 2**23 distances below this stay finite
TINY = 2.0**-1000  # float64 sums of squares below this may have lost bits to underflow


def _point(X: torch.Tensor, center: torch.Tensor | None, i: int) -> torch.Tensor:
    return center if i == X.shape[0] else X[i]


def _safe_exponent(X: torch.Tensor, center: torch.Tensor | None, rows: list[int]) -> int:
    """k >= 0 such that every squared distance (and norm) of the given points times 2**-k is below 2**1000."""
    top = max((float(_point(X, center, i).abs().max()) for i in rows), default=0.0)
    if top == 0.0:
        return 0
    return max(0, math.frexp(top)[1] + 1 + math.ceil(math.log2(max(X.shape[1], 1)) / 2) - 500)


def finite_by_entries(X: torch.Tensor, center: torch.Tensor | None, flagged: torch.Tensor) -> torch.Tensor:
    """The kernels' finite flags (finite squared norm) corrected to "every entry finite" for float64 input:
    ``~flagged``, with each flagged point (row i, or the center as point n) looked at."""
    finite = ~flagged
    for i in flagged.nonzero().flatten().tolist():
        finite[i] = bool(torch.isfinite(_point(X, center, i)).all())
    return finite


def scaled_distances(X: torch.Tensor, center: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(D, finite, k)``: squared distances of the points times ``2**-k``, the rows whose entries are all finite, and k.

    k is 0, and D the distances themselves, unless a squared distance between
    finite float64 points reaches 2**1000 (where a sum of them could overflow);
    then the points are copied once, scaled. Every rule built on distances uses these.
    """
    check_tensor(X, "pairwise_sq_distances")
    if center is not None and not isinstance(center, torch.Tensor):
        raise TypeError(f"pairwise_sq_distances: center must be a torch.Tensor or None, got {type(center).__name__}")
    D, finite = _NS.pairwise_sq_distances(X, center)
    if not has_values(X):
        return D, finite, 0
    # The checks below work on one host copy of the (m, m) distances and the flags.
    Dc, fc = D.detach().cpu(), finite.cpu()
    k = 0
    if X.dtype == torch.float64:
        truly = finite_by_entries(X, center, ~fc)
        rows = truly.nonzero().flatten()
        # Rules sum up to m distances (Krum's scores): those sums must not overflow either.
        if not (torch.equal(truly, fc) and bool((Dc[rows][:, rows] < _SUMMABLE).all())):
            k = _safe_exponent(X, center, rows.tolist())
            X, center = X * 2.0**-k, None if center is None else center * 2.0**-k
            D, _ = _NS.pairwise_sq_distances(X, center)
            Dc, fc, finite = D.detach().cpu(), truly, truly.to(finite.device)
    return _without_cancellation(X, center, D, Dc, fc), finite, k


# Cancellation. The kernels compute D_ij = S_ii + S_jj - 2 S_ij from the Gram
# matrix S of the points shifted by the per-column median of the reference
# rows 0, (n-1)/2 and n-1. Were two of those far from the other rows (Byzantine
# rows at those positions), every other S_ii would be huge and the distances
# between the other rows would cancel to noise. Per column that median lies
# between the reference rows' values, so S_ii <= B_i = sum of D_ir over the
# references r: a distance below 2**-20 (B_i + B_j) may have lost more than
# 20 of its 53 bits. Those distances are computed again with three central
# rows as references (a permuted copy of X), and pairs still in doubt are
# summed directly over the columns.
_LOST_BITS = 20


def _references(n: int) -> list[int]:
    return [0, (n - 1) // 2, n - 1]


def _in_doubt(D: np.ndarray, finite: np.ndarray, refs: list[int]) -> np.ndarray:
    """(m, m) bool: pairs of finite points whose distance may have cancelled (every pair when one of the three
    references is not finite). D is +inf between a point that is not finite and any other, so the threshold
    test leaves those pairs out by itself. Numpy on the host copies: on (m, m) arrays its per-call cost is a
    fraction of torch's."""
    if all(finite[r] for r in refs):
        B = D[:, refs].sum(1)
        doubt = D < 2.0**-_LOST_BITS * (B[:, None] + B)
    else:
        doubt = finite[:, None] & finite
    doubt.flat[:: D.shape[0] + 1] = False  # a point's distance to itself is 0 exactly
    return doubt


def _upper_pairs(doubt: np.ndarray) -> list[list[int]]:
    """The pairs (i, j), i < j, flagged in a symmetric (m, m) bool array, in row-major order."""
    return np.argwhere(np.triu(doubt, 1)).tolist()


def _without_cancellation(
    X: torch.Tensor, center: torch.Tensor | None, D: torch.Tensor, Dc: torch.Tensor, fc: torch.Tensor
) -> torch.Tensor:
    """D with the distances that may have cancelled computed again; Dc, fc: host copies of D and the finite flags."""
    n = X.shape[0]
    if X.shape[1] == 0 or (n < 4 and center is None):
        return D  # every row a reference: no pair of non-reference rows to cancel
    Dn, fn = Dc.numpy(), fc.numpy()
    doubt = _in_doubt(Dn, fn, _references(n))
    if not doubt.any():
        return D
    # A distance of exactly 0 between equal rows (Byzantine copies) is exact.
    for i, j in _upper_pairs(doubt & (Dn == 0)):
        if torch.equal(_point(X, center, i), _point(X, center, j)):
            doubt[i, j] = doubt[j, i] = False
    if not doubt.any():
        return D
    rows = fc[:n].nonzero().flatten()
    if np.count_nonzero(doubt) // 2 <= n or rows.numel() < 3:
        return _direct(X, center, D, doubt)  # a few pairs: cheaper summed directly than a second pass
    # Central rows: the smallest median distance to the other finite rows (noise there stays small).
    sub = Dc[rows][:, rows]
    score = sub.sort(1).values[:, sub.shape[1] // 2]
    central = rows[torch.sort(score, stable=True).indices[:3]].tolist()
    rest = [i for i in range(n) if i not in central]
    perm = rest[:]
    for position, row in sorted(zip(_references(n), central)):
        perm.insert(position, row)
    P = torch.tensor(perm, device=X.device)
    DY, _ = _NS.pairwise_sq_distances(X.index_select(0, P), center)
    order = torch.tensor(perm + ([n] if center is not None else []))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    inverse = inverse.to(D.device)
    D = DY.index_select(0, inverse).index_select(1, inverse)
    doubt = _in_doubt(D.detach().cpu().numpy(), fn, central)
    return _direct(X, center, D, doubt) if doubt.any() else D


def _direct(X: torch.Tensor, center: torch.Tensor | None, D: torch.Tensor, doubt: np.ndarray) -> torch.Tensor:
    """D with the pairs in doubt summed directly, sum_k (p_ik - p_jk)**2 in float64."""
    pairs = _upper_pairs(doubt)
    values = torch.stack(
        [(_point(X, center, i).double() - _point(X, center, j).double()).square().sum() for i, j in pairs]
    )
    i, j = (torch.tensor(t, device=D.device) for t in zip(*pairs))
    D = D.index_put((i, j), values.to(D.device))
    return D.index_put((j, i), values.to(D.device))


def distances_and_finite(X: torch.Tensor, center: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distances (as :func:`pairwise_sq_distances`) and an ``(m,)`` bool tensor of the rows whose entries are finite.

    A squared distance beyond the float64 range is +inf (its rounding), though both rows are finite.
    """
    D, finite, k = scaled_distances(X, center)
    return (D if k == 0 else D * 2.0**k * 2.0**k), finite


def scaled_row_sq_norms(X: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(S, k)``: squared norms of the rows times ``2**-k`` (k = 0 unless a finite float64 row's would overflow)."""
    check_tensor(X, "row_sq_norms")
    S = _NS.row_sq_norms(X)
    if X.dtype != torch.float64 or not has_values(X):
        return S, 0
    flagged = ~torch.isfinite(S.cpu())
    rows = [i for i in flagged.nonzero().flatten().tolist() if bool(torch.isfinite(X[i]).all())]
    if not rows:
        return S, 0
    k = _safe_exponent(X, None, rows)
    return _NS.row_sq_norms(X * 2.0**-k), k


def host_distances(X: torch.Tensor, center: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Squared distances of the points times ``2**-k``, finite-row flags and k, on the CPU for the coefficient work.

    k > 0 only when finite float64 rows are so large that their squared
    distances would overflow (:func:`robustagg.exact_geometry.scaled_distances`); rules
    with a length parameter (``nu``, ``tau``) scale it alike.

    Detached: the coefficients are constants to autograd. Krum's and Bulyan's
    are piecewise constant in X, so the gradient through the selected rows is
    exact; the geometric median and centered clipping return results that do
    not require grad.
    """
    D, finite, k = scaled_distances(X.detach(), None if center is None else center.detach())
    return D.cpu(), finite.cpu(), k
