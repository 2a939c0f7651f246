"""Spectral robust rules: SMEA, CAF and Divide-and-Conquer filter rows by the top eigenvector of a covariance.

Each covariance :math:`\\Sigma = \\sum_i w_i (x_i - \\mu)(x_i - \\mu)^T` is ``d x d``, but its nonzero
eigenvalues are those of the ``n x n`` matrix :math:`W^{1/2} G W^{1/2}`, with :math:`G` the centred Gram
matrix of the rows, and a row's projection on the top eigenvector :math:`v` is
:math:`(x_i - \\mu) \\cdot v = (G W^{1/2} u)_i / \\sqrt{\\lambda}` for the top eigenpair
:math:`(\\lambda, u)` of that matrix. So SMEA and CAF are exact (no power iteration) and cost two passes
over X, like Krum: the squared distances (:func:`robustagg.coefficients.centered_gram` turns them into
:math:`G`) and the final mean. DnC reads X on random coordinate subsets only, plus one pass for the row
norms (which rows are finite) and one for the mean.

Rows holding NaN or inf are infinitely far from the others: SMEA gives any subset holding one an infinite
value, CAF starts them at weight 0, DnC ranks them first to drop.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import coefficients, exact_geometry, subsets
from .validation import check_generator, check_honest_majority, check_int, check_matrix, check_real

__all__ = ["caf", "caf_coefficients", "dnc", "smea"]


def smea(X: torch.Tensor, f: int, max_subsets: int = subsets.MAX_SUBSETS) -> torch.Tensor:
    r"""Smallest-maximum-eigenvalue averaging (Allouah, Guerraoui, Gupta, Pinot, Stephan, ICML 2023).

    The mean of the :math:`(n - f)`-subset S whose covariance
    :math:`\frac{1}{|S|} \sum_{i \in S} (x_i - \mu_S)(x_i - \mu_S)^T` has the smallest largest eigenvalue,
    ties to the first subset in ``itertools.combinations(range(n), n - f)`` order. Each eigenvalue is exact
    (from the subset's centred Gram matrix, :func:`robustagg.subsets.min_spread_subset`), not a power
    iteration. A subset holding a NaN/inf row has value +inf; such rows of the chosen subset are left out of
    the mean (all NaN if none is finite). Needs ``n > 2f``; a ``ValueError`` when ``comb(n, f)`` exceeds
    ``max_subsets``. Two passes over X.
    """
    f = check_honest_majority(X, f, "smea")
    subsets.check_budget(X.shape[0], f, max_subsets, "smea")
    D, finite, _ = exact_geometry.host_distances(X)
    return coefficients.combine(subsets.smea_coefficients(D, finite, f), X)


def _top_eigenpair(G: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray]:
    """``(lambda, t / max t)``: the top eigenvalue of :math:`\\sum_i w_i y_i y_i^T` (``G_ij = y_i . y_j``)
    and the squared projections :math:`t_i = (y_i \\cdot v)^2` on its unit eigenvector v, relative to the
    largest. G is divided by a power of two first (exact), so that ``t``, a square of G's scale, cannot
    overflow; lambda scales back. Float64 numpy arrays (DnC's scores; CAF's filter runs the same steps in
    ``csrc/cpu/caf_filter.cpp``)."""
    top = float(np.abs(G).max())
    if not top > 0.0:
        return 0.0, np.zeros_like(w)
    s = math.ldexp(1.0, math.frexp(top)[1])
    G = G / s
    r = np.sqrt(w)
    values, vectors = np.linalg.eigh(r[:, None] * G * r[None, :])
    lam = float(values[-1])
    if lam <= 0.0:
        return 0.0, np.zeros_like(w)
    # A row-wise sum, not a matrix-vector product: identical rows of G must give identical t (BLAS may
    # sum the last rows in another order), so that duplicated rows leave the filter together.
    t = np.square((G * (r * vectors[:, -1])).sum(1))
    return lam * s, t / t.max()


def caf(X: torch.Tensor, f: int) -> torch.Tensor:
    r"""Covariance-bound agnostic filter (Allouah, Guerraoui, Stephan, ICML 2025), with exact eigenpairs.

    Start with :math:`c_i = 1` (0 for a NaN/inf row). While :math:`\sum_i c_i > n - 2f`: take the weighted
    mean :math:`\mu_c = \sum_i c_i x_i / \sum_i c_i`, the top eigenpair :math:`(\lambda, v)` of
    :math:`\Sigma_c = \frac{1}{\sum c} \sum_i c_i (x_i - \mu_c)(x_i - \mu_c)^T`, the projections
    :math:`\tau_i = ((x_i - \mu_c) \cdot v)^2` and update :math:`c_i \leftarrow c_i (1 - \tau_i / \tau_{max})`,
    with :math:`\tau_{max}` the largest :math:`\tau_i` among rows of positive weight (a row already at weight 0
    sets no scale, else a removed far row would stall the filter). Returns the :math:`\mu_c` of the smallest
    :math:`\lambda` seen (the first on ties); :math:`\lambda = 0` ends the loop (the weighted rows
    coincide). When the loop never runs (``f = 0``), the mean of the finite rows (all NaN if none).
    Needs ``n > 2f``. Two passes over X: every iterate works on the squared distances, on the host in C++
    (``torch.ops.robustagg.caf_weights``).
    """
    f = check_honest_majority(X, f, "caf")
    D, finite, _ = exact_geometry.host_distances(X)
    return coefficients.combine(caf_coefficients(D, finite, f), X)


def caf_coefficients(D: torch.Tensor, finite: torch.Tensor, f: int) -> torch.Tensor | None:
    """CAF's row coefficients from the squared distances: the weights of the smallest eigenvalue seen,
    normalised (None: no finite row). The filter loop runs in ``torch.ops.robustagg.caf_weights``."""
    c = torch.ops.robustagg.caf_weights(D.cpu(), finite.cpu(), f)
    return c if bool(c.any()) else None


def _unit_scale(Z: torch.Tensor) -> torch.Tensor:
    """Z times the power of two that brings its largest magnitude into [0.5, 1): no product overflows, and
    every score scales alike."""
    top = float(Z.abs().max()) if Z.numel() else 0.0
    return torch.ldexp(Z, torch.tensor(-math.frexp(top)[1])) if top > 0 else Z


def _first_of_equal_rows(Z: torch.Tensor) -> torch.Tensor:
    """For each row, the index of the first row equal to it: rows equal on the drawn columns have equal
    scores exactly, whatever the eigensolver's rounding, so that their tie goes to the lower index."""
    _, group = torch.unique(Z, dim=0, return_inverse=True)
    first = torch.full((int(group.max()) + 1,), Z.shape[0], dtype=torch.long)
    first.scatter_reduce_(0, group, torch.arange(Z.shape[0]), reduce="amin")
    return first[group]


def dnc(
    X: torch.Tensor,
    f: int,
    iters: int = 5,
    subsample: int = 10000,
    c: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Divide-and-Conquer (Shejwalkar, Houmansadr, "Manipulating the Byzantine", NDSS 2021).

    ``iters`` times: draw the coordinates
    ``J = torch.randperm(d, generator=generator)[:subsample]`` (all of them, with no draw, when
    ``subsample >= d``); centre the finite rows restricted to J on their mean; score each row by its squared
    projection :math:`s_i = ((z_i - \bar z) \cdot v)^2` on the top right singular vector v of the centred
    rows (NaN/inf rows score +inf); drop the :math:`\lfloor c f \rfloor` rows of largest score (among equal
    scores, the lower index first). Returns the mean of the rows that no iteration dropped, NaN/inf rows
    left out (all NaN if none is left). Needs ``floor(c f) < n``. Reads X on ``iters * subsample`` columns,
    plus one pass for the rows' norms and one for the mean.
    """
    rule = "dnc"
    check_matrix(X, rule)
    f = check_int(f, "f", rule, low=0)
    iters = check_int(iters, "iters", rule, low=1)
    subsample = check_int(subsample, "subsample", rule, low=1)
    c = check_real(c, "c", rule, low=0.0)
    generator = check_generator(generator, "generator", rule)
    n, d = X.shape
    drop = math.floor(c * f)
    if drop >= n:
        raise ValueError(f"{rule}: floor(c*f) = {drop} rows to drop leaves none of n={n}; lower c or f")
    Y = X.detach()  # the scores are constants to autograd; the mean of the kept rows is not
    finite = torch.isfinite(exact_geometry.scaled_row_sq_norms(Y)[0]).cpu()
    rows = finite.nonzero().flatten()
    kept = torch.ones(n, dtype=torch.bool)
    for _ in range(iters):
        Z = Y if subsample >= d else Y.index_select(1, torch.randperm(d, generator=generator)[:subsample].to(Y.device))
        scores = torch.full((n,), math.inf, dtype=torch.float64)
        if rows.numel():
            Z = _unit_scale(Z.index_select(0, rows.to(Y.device)).to(torch.float64).cpu())
            Z = Z - Z.mean(0)
            # the scores relative to the largest: the same order (ties included) as s_i
            s = torch.from_numpy(_top_eigenpair((Z @ Z.T).numpy(), np.ones(rows.numel()))[1])
            scores[rows] = s[_first_of_equal_rows(Z)]
        kept[torch.sort(scores, descending=True, stable=True).indices[:drop]] = False
    return coefficients.combine(coefficients.mean_of(kept.nonzero().flatten(), finite), X)
