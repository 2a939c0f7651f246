"""Distance-based robust rules (SPEC 3): Krum, Multi-Krum, Bulyan, MDA, MoNNA, geometric median, centered clipping.

Every rule here depends on X only through the squared distances between its
rows (and a center) plus one weighted combination of rows, so each costs two
passes over X: :func:`robustagg.ops.pairwise_sq_distances` (float64 Gram
matrix) and :func:`robustagg.ops.mix_rows`. In between, the rule's work is
done on the distances alone, in :mod:`robustagg.coefficients` (shared with
:mod:`robustagg.distributed`); only the two passes touch X's device.

Rows holding NaN or inf are infinitely far from every other row (SPEC 1):
never selected by Krum, MDA or MoNNA while finite rows remain, weight 0 in
the geometric median, no contribution in centered clipping.
"""

from __future__ import annotations

import dataclasses

import torch

from . import coefficients, exact_geometry, ops, subsets
from .coefficients import GeometricMedianInfo
from .validation import check_honest_majority, check_int, check_matrix, check_positive, check_real, check_row_weights

__all__ = [
    "GeometricMedianInfo",
    "bulyan",
    "centered_clip",
    "geometric_median",
    "krum",
    "mda",
    "monna",
    "multi_krum",
    "pairwise_sq_distances",
]


def pairwise_sq_distances(X: torch.Tensor) -> torch.Tensor:
    r"""Squared Euclidean distances :math:`D_{ij} = \|x_i - x_j\|^2` between the rows of X.

    Returns an ``(n, n)`` float64 tensor on X's device: symmetric, zero
    diagonal, ``+inf`` in the rows and columns of rows that hold NaN/inf (0 on
    their diagonal). One pass over X; accurate for rows that are close to each
    other and far from the origin (see :func:`robustagg.ops.pairwise_sq_distances`).
    """
    check_matrix(X, "pairwise_sq_distances")
    return ops.pairwise_sq_distances(X)


def _check_krum(X: torch.Tensor, f: int, rule: str) -> int:
    check_matrix(X, rule)
    f = check_int(f, "f", rule)
    n = X.shape[0]
    if f < 0:
        raise ValueError(f"{rule}: f must be >= 0, got f={f}")
    if n <= 2 * f + 2:
        raise ValueError(f"{rule}: f={f} needs n > 2*f + 2, got n={n}")
    return f


def krum(X: torch.Tensor, f: int, m: int = 1) -> torch.Tensor:
    r"""Krum and Multi-Krum (Blanchard et al., NeurIPS 2017).

    Row i's score is the sum of its :math:`n - f - 2` smallest squared
    distances to the other rows, :math:`s_i = \sum_{j \in N_i} \|x_i - x_j\|^2`.
    Rows are ranked by score (ties to the lower index; rows holding NaN/inf
    last). ``m = 1`` returns the best row exactly; ``m > 1`` returns the mean
    of the ``m`` best rows. Should fewer than ``m`` rows be finite, the
    non-finite ones are left out of the mean (all NaN if no row is finite).

    Needs ``n > 2f + 2`` and ``1 <= m <= n``. Two passes over X (the distances
    and the combination, which reads only the selected rows).
    """
    return _krum(X, f, m, "krum")


def multi_krum(X: torch.Tensor, f: int, m: int | None = None) -> torch.Tensor:
    """Multi-Krum: :func:`krum` averaging the ``m`` best rows, ``m = n - f`` by default."""
    if m is None:
        f = _check_krum(X, f, "multi_krum")
        m = X.shape[0] - f
    return _krum(X, f, m, "multi_krum")


def _krum(X: torch.Tensor, f: int, m: int, rule: str) -> torch.Tensor:
    f, m = _check_krum_m(X, f, m, rule)
    D, finite, _ = exact_geometry.host_distances(X)
    c = coefficients.krum_coefficients(D, finite, f, m)
    return coefficients.combine(c, X)


def _check_krum_m(X: torch.Tensor, f: int, m: int, rule: str) -> tuple[int, int]:
    f = _check_krum(X, f, rule)
    m = check_int(m, "m", rule)
    n = X.shape[0]
    if not 1 <= m <= n:
        raise ValueError(f"{rule}: m must be in [1, n={n}], got m={m}")
    return f, m


def bulyan(X: torch.Tensor, f: int) -> torch.Tensor:
    r"""Bulyan (El Mhamdi, Guerraoui, Rouault, ICML 2018) over Krum.

    Selects :math:`\theta = n - 2f` rows by applying Krum repeatedly to the
    rows not yet selected (with ``k`` rows left, a score sums the
    ``max(k - f - 2, 0)`` smallest distances to the other remaining rows; ties
    to the lower index, NaN/inf rows last). Then, per coordinate, returns the
    mean of the :math:`\beta = \theta - 2f` selected values closest to the
    selected values' median (median of an even count: mean of the two middle
    values; distance ties keep the smaller value; NaN counts as infinitely
    far). Needs ``n >= 4f + 3``.
    """
    check_matrix(X, "bulyan")
    f = check_int(f, "f", "bulyan")
    n = X.shape[0]
    if f < 0:
        raise ValueError(f"bulyan: f must be >= 0, got f={f}")
    if n < 4 * f + 3:
        raise ValueError(f"bulyan: f={f} needs n >= 4*f + 3, got n={n}")
    D, finite, _ = exact_geometry.host_distances(X)
    theta = n - 2 * f
    remaining = torch.arange(n)
    selected = []
    for _ in range(theta):
        sub = D[remaining][:, remaining]
        best = coefficients.krum_order(sub, finite[remaining], max(remaining.numel() - f - 2, 0))[0]
        selected.append(int(remaining[best]))
        remaining = torch.cat([remaining[:best], remaining[best + 1 :]])
    C = torch.zeros(theta, n, dtype=torch.float64)
    C[torch.arange(theta), torch.tensor(selected)] = 1.0
    rows = ops.mix_rows(C.to(X.device), X)  # exact copies of the selected rows
    return ops.mean_around_median(rows, theta - 2 * f)


def mda(X: torch.Tensor, f: int, max_subsets: int = subsets.MAX_SUBSETS) -> torch.Tensor:
    r"""Minimum-diameter averaging (El Mhamdi, Guerraoui, Rouault, ICML 2018).

    The mean of the :math:`(n - f)`-subset of least diameter,

    .. math:: S^\star = \arg\min_{|S| = n - f} \max_{i, j \in S} \|x_i - x_j\|,

    ties to the first subset in ``itertools.combinations(range(n), n - f)``
    order. A subset holding a NaN/inf row has infinite diameter; such rows of
    the chosen subset (only when more than f rows are non-finite) are left
    out of the mean, all NaN if none is finite. Needs ``n > 2f``; a
    ``ValueError`` when ``comb(n, f)`` exceeds ``max_subsets``. The subset is
    found by branch and bound on the squared distances
    (:func:`robustagg.subsets.min_diameter_subset`): two passes over X.
    """
    f = check_honest_majority(X, f, "mda")
    subsets.check_budget(X.shape[0], f, max_subsets, "mda")
    D, finite, _ = exact_geometry.host_distances(X)
    return coefficients.combine(subsets.mda_coefficients(D, finite, f), X)


def monna(X: torch.Tensor, f: int, pivot: int = 0) -> torch.Tensor:
    r"""MoNNA: the mean of the :math:`n - f` rows nearest to row ``pivot``, the pivot included.

    Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, "Robust Collaborative Learning with Linear
    Gradient Overhead", ICML 2023. Rows are ranked by :math:`(\|x_j - x_{pivot}\|, j)`, the pivot first
    (distance 0); NaN/inf rows are infinitely far and left out of the mean should they be among the chosen
    (all NaN if none is finite). Needs ``n > 2f`` and ``0 <= pivot < n``. Two passes over X: the distances
    to the pivot (:func:`robustagg.ops.row_sq_distances`), then the mean; when a row holds NaN/inf, or a
    float64 distance leaves the float64 range, the ranking comes from the magnitude-safe distance matrix
    instead (:func:`robustagg.exact_geometry.host_distances`, still two passes).
    """
    f = check_honest_majority(X, f, "monna")
    pivot = check_int(pivot, "pivot", "monna", low=0, high=X.shape[0] - 1)
    d = _pivot_distances(X.detach(), pivot)
    if d is not None:
        everyone = torch.ones(X.shape[0], dtype=torch.bool)
        return coefficients.combine(
            coefficients.mean_of(torch.sort(d, stable=True).indices[: X.shape[0] - f], everyone), X
        )
    D, finite, _ = exact_geometry.host_distances(X)
    return coefficients.combine(coefficients.monna_coefficients(D, finite, f, pivot), X)


def _pivot_distances(X: torch.Tensor, pivot: int) -> torch.Tensor | None:
    """The rows' squared distances to the pivot row, float64 on the CPU, when every one is finite and none
    is a float64 sum below 2**-1000 (which may have lost bits); otherwise, and when X holds no values
    (tracing), None."""
    if not exact_geometry.has_values(X):
        return None
    d = ops.row_sq_distances(X, X[pivot]).cpu()
    if not bool(torch.isfinite(d).all()):
        return None
    if X.dtype == torch.float64 and bool(((d > 0) & (d < exact_geometry.TINY)).any()):
        return None
    return d


def geometric_median(
    X: torch.Tensor,
    weights: torch.Tensor | None = None,
    nu: float = 1e-6,
    tol: float = 1e-10,
    max_iter: int = 200,
    return_info: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, GeometricMedianInfo]:
    r"""Geometric median by smoothed Weiszfeld (Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning", 2022).

    Minimises :math:`F(z) = \sum_i a_i \|x_i - z\|` (``a = weights``, 1 per
    row by default; rows holding NaN/inf get weight 0). Starts at the weighted
    mean of the finite rows and iterates

    .. math:: b_i = \frac{a_i}{\max(\nu, \|x_i - z\|)}, \qquad z \leftarrow \frac{\sum_i b_i x_i}{\sum_i b_i}

    until :math:`|F_{old} - F_{new}| \le tol \cdot F_{old}` or ``max_iter``
    updates. The iterations run on the float64 distance matrix in coefficient
    space, so the cost is two passes over X whatever ``max_iter`` is.

    Returns ``z`` (``(d,)``, X's dtype), or ``(z, GeometricMedianInfo)`` with
    ``return_info=True``. If every row with positive weight holds NaN/inf,
    ``z`` is all NaN. Not differentiable: ``z`` never requires grad (its
    dependence on X through the Weiszfeld weights is not derived).
    """
    check_matrix(X, "geometric_median")
    nu = check_positive(nu, "nu", "geometric_median")
    tol = check_real(tol, "tol", "geometric_median", low=0.0)
    max_iter = check_int(max_iter, "max_iter", "geometric_median", low=0)
    a_all = check_row_weights(weights, X, "geometric_median")

    D, finite, k = exact_geometry.host_distances(X)
    c, info = coefficients.gm_coefficients(D, finite, a_all, nu * 2.0**-k, tol, max_iter)
    info = dataclasses.replace(info, objective=info.objective * 2.0**k)
    z = coefficients.combine(c, X.detach())
    return (z, info) if return_info else z


def centered_clip(X: torch.Tensor, center: torch.Tensor, tau: float, iters: int = 1) -> torch.Tensor:
    r"""Centered clipping (Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust Optimization", ICML 2021).

    With :math:`v_0 = ` ``center``, repeats ``iters`` times

    .. math:: v \leftarrow v + \frac{1}{n} \sum_i (x_i - v) \min\left(1, \frac{\tau}{\|x_i - v\|}\right);

    a row holding NaN/inf contributes 0 and still counts in ``n``. ``center``
    is a finite ``(d,)`` tensor on X's device (cast to X's dtype); ``tau > 0``
    (``inf`` gives the mean); ``iters >= 0``. The iterations run in coefficient
    space over the rows and the center: two passes over X for any ``iters``.
    Stops early once an iterate repeats exactly (every later one is then
    known), so a huge ``iters`` costs no more than convergence. Not
    differentiable: the result never requires grad (its dependence on X
    through the clipping factors is not derived).
    """
    check_matrix(X, "centered_clip")
    if not isinstance(center, torch.Tensor):
        raise TypeError(f"centered_clip: center must be a torch.Tensor, got {type(center).__name__}")
    n, d = X.shape
    if center.shape != (d,):
        raise ValueError(f"centered_clip: center must have shape (d,) = ({d},), got {tuple(center.shape)}")
    if center.device != X.device:
        raise ValueError(f"centered_clip: center is on {center.device} but X is on {X.device}")
    tau = check_positive(tau, "tau", "centered_clip", allow_inf=True)
    iters = check_int(iters, "iters", "centered_clip", low=0)
    X, center = X.detach(), center.detach().to(X.dtype)
    D, finite, k = exact_geometry.host_distances(X, center)
    return coefficients.combine(coefficients.cc_coefficients(D, finite, tau * 2.0**-k, iters), X, center)
