r"""Similarity rules: FLTrust, SignGuard, ClippedClustering and FoolsGold's client weights.

These rules weigh or select rows by their norms and the cosines between them. Every cosine between rows comes from
float64 squared norms and squared distances by the law of cosines,
:math:`\langle x_i, x_j \rangle = (\|x_i\|^2 + \|x_j\|^2 - \|x_i - x_j\|^2) / 2`, so X is read in a few
whole passes (:func:`robustagg.exact_geometry.scaled_row_sq_norms`,
:func:`robustagg.exact_geometry.scaled_distances`, and the final :func:`robustagg.ops.mix_rows`), and the
rule's own work (medians, clustering, weights) runs on the CPU on ``n x n`` or ``n x 3`` float64 tensors.

Cost in passes over X:

- :func:`fltrust`: two (the norms and the dot products with the root, :func:`robustagg.ops.row_sq_norms_and_dots`,
  then the combination), plus one read of the root for its norm; its cosines need no law of cosines.
- :func:`signguard`: two (the norms, the combination), plus the ``k = ceil(fraction * d)`` sampled columns,
  ``n * k`` values, for the sign counts (a third pass when ``k = d``).
- :func:`clipped_clustering`: three (the norms, the distances, the combination).
- :func:`foolsgold_weights`: two over H (the norms, the distances); it returns weights, not a combination.

The law of cosines loses about ``log2(r)`` bits of a cosine between rows whose norms differ by a factor r.
So when the nonzero norms (root included) spread beyond a factor 64, the distances are taken from a copy of
the points scaled by powers of two to norms in [0.5, 1) (exact; float32 for half types), which costs one
more read of X and memory for the copy; float64 rows whose squared norm is below 2**-1000 (it would lose
bits or underflow) have their norm taken from the row itself and take that path too.

Each rule is exactly the variant its docstring states: SignGuard clusters the sign features by 2-means
(K-means) from a deterministic start, not by mean-shift; ClippedClustering takes its clipping threshold
from the caller when given (the aggregator object passes the median of every norm it has seen), else the
median of the current norms; FoolsGold has no feature-importance weighting.

Rows holding NaN or inf take no part: they get weight 0 (FLTrust, FoolsGold) or are never selected
(SignGuard, ClippedClustering). Results are in X's dtype on X's device, never modify X and never require
grad: the coefficients depend on X through cosines and clustering, which are not derived.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import coefficients, exact_geometry, ops
from .validation import (
    check_generator,
    check_int,
    check_matrix,
    check_positive,
    check_real,
)

__all__ = ["clipped_clustering", "fltrust", "foolsgold_weights", "row_norms", "signguard"]


class _Angles(NamedTuple):
    """Norms and cosines of the points (the rows, then the center when given), float64 on the CPU.

    ``norms`` are the Euclidean norms times ``2**-k`` (NaN for a point that is not finite); ``cos`` is the
    ``(m, m)`` cosine matrix, clamped to [-1, 1], 0 where either point is zero or not finite.
    """

    norms: torch.Tensor
    cos: torch.Tensor
    finite: torch.Tensor
    k: int


# The inner product is a difference of terms of size ||x_i||^2 and ||x_j||^2: a cosine loses about log2(r)
# bits when the norms differ by a factor r. Beyond this spread the points are scaled to unit norm first.
_SPREAD = 2.0**6


def _ldexp(x: torch.Tensor, e: int) -> torch.Tensor:
    return x if e == 0 else torch.ldexp(x, torch.tensor(e, dtype=torch.float64))


def _law_of_cosines(D: torch.Tensor, N: torch.Tensor) -> torch.Tensor:
    r"""Cosines from squared distances D and squared norms N on one scale, clamped to [-1, 1].

    Divides by :math:`\sqrt{N_i N_j}` (one rounding, and exactly :math:`N_i` for equal rows, so that copies
    have cosine 1), after a power-of-two rescaling that keeps the products in range.
    """
    usable = torch.isfinite(N) & (N > 0)
    if bool(usable.any()):
        e = -2 * (math.frexp(float(N[usable].max()))[1] // 2)
        D, N = _ldexp(D, e), _ldexp(N, e)
    half = 0.5 * N  # halves first: N_i / 2 + N_j / 2 cannot overflow where N_i + N_j could
    G = (half.reshape(-1, 1) + half.reshape(1, -1)) - 0.5 * D
    return (G / (N.reshape(-1, 1) * N.reshape(1, -1)).sqrt()).clamp(-1.0, 1.0)


def _unit_points(X: torch.Tensor, center: torch.Tensor | None, norms: torch.Tensor, k: int) -> torch.Tensor:
    """The points times powers of two that bring every nonzero finite norm into [0.5, 1): one copy of X.

    Exact (half types are copied to float32, whose range holds every scaled value); the factor is split
    in two so that each stays within the dtype's range.
    """
    usable = torch.isfinite(norms) & (norms > 0)
    e = torch.where(usable, torch.frexp(norms).exponent.to(torch.int64) + k, 0)
    a = torch.div(e, 2, rounding_mode="floor")
    dtype = torch.float32 if X.dtype in (torch.float16, torch.bfloat16) else X.dtype
    one = torch.ones(e.numel(), dtype=torch.float64)
    s1, s2 = (torch.ldexp(one, -p.to(torch.float64)).to(dtype=dtype, device=X.device) for p in (a, e - a))
    P = X if center is None else torch.cat([X, center.reshape(1, -1)])
    Y = P.to(dtype) * s1.reshape(-1, 1)
    return Y.mul_(s2.reshape(-1, 1))


def _tiny_norms(X: torch.Tensor, center: torch.Tensor | None, N: torch.Tensor, norms: torch.Tensor, k: int) -> bool:
    """Whether a nonzero float64 point has a squared norm so small (below 2**-1000) that it lost bits or
    underflowed to 0; such points' norms (times ``2**-k``) are written into ``norms`` from the point itself.

    A zero squared norm of any other dtype means a zero row: its squares cannot underflow in float64.
    """
    if X.dtype != torch.float64:
        return False
    found = False
    for i in (torch.isfinite(N) & (N < exact_geometry.TINY)).nonzero().flatten().tolist():
        p = center if i == X.shape[0] else X[i]
        top = float(p.abs().max()) if p.numel() else 0.0
        if top == 0.0:
            continue
        e = math.frexp(top)[1]
        scaled = p * 2.0 ** -(e // 2) * 2.0 ** -(e - e // 2)  # two factors: 2**-e alone may overflow
        norms[i] = math.ldexp(float(torch.linalg.vector_norm(scaled)), e - k)
        found = found or bool(norms[i] > 0)
    return found


def _angles(X: torch.Tensor, center: torch.Tensor | None = None) -> _Angles:
    """Cosines of the rows of X (and a center) by the law of cosines, from one norm pass and one distance pass.

    When the nonzero finite norms spread beyond ``_SPREAD``, the distances are those of a copy of the
    points scaled to unit norm (:func:`_unit_points`), with the origin as center for their norms.
    """
    parts = [exact_geometry.scaled_row_sq_norms(X)]
    if center is not None:
        parts.append(exact_geometry.scaled_row_sq_norms(center.reshape(1, -1)))
    # The calls may scale the points by different powers of two: bring all to the smallest scale.
    k = max(kp for _, kp in parts)
    N = torch.cat([_ldexp(S.cpu(), -2 * (k - kp)) for S, kp in parts])
    norms = N.sqrt()
    tiny = _tiny_norms(X, center, N, norms, k)
    usable = torch.isfinite(norms) & (norms > 0)
    spread = float(norms[usable].max() / norms[usable].min()) if bool(usable.any()) else 1.0
    if spread <= _SPREAD and not tiny:
        D, finite, kd = exact_geometry.scaled_distances(X, center)
        D, finite = D.cpu(), finite.cpu()
        if kd > k:
            N, norms, k = _ldexp(N, -2 * (kd - k)), _ldexp(norms, -(kd - k)), kd
        cos = _law_of_cosines(_ldexp(D, -2 * (k - kd)), N)
    else:
        Y = _unit_points(X, center, norms, k)
        D, finite, _ = exact_geometry.scaled_distances(Y, torch.zeros_like(Y[0]))
        D, finite = D.cpu(), finite.cpu()[:-1]
        cos = _law_of_cosines(D[:-1, :-1], D[:-1, -1])
    usable = finite & (norms > 0)
    cos = torch.where(usable.reshape(-1, 1) & usable.reshape(1, -1), cos, 0.0)
    return _Angles(torch.where(finite, norms, math.nan), cos, finite, k)


def row_norms(X: torch.Tensor) -> torch.Tensor:
    """The rows' Euclidean norms, ``(n,)`` float64 on the CPU, NaN for a row holding NaN/inf; exact in scale
    for huge and tiny float64 rows (inf only where the norm itself exceeds the float64 range). One pass."""
    check_matrix(X, "row_norms")
    X = X.detach()
    S, k = exact_geometry.scaled_row_sq_norms(X)
    S = S.cpu()
    norms = S.sqrt()
    _tiny_norms(X, None, S, norms, k)
    return torch.where(torch.isfinite(S), _ldexp(norms, k), math.nan)


def _median(values: torch.Tensor) -> float:
    """Median of a non-empty 1-D float64 tensor; the mean of the two middle values for an even count."""
    s = values.sort().values
    m = s.numel()
    return float(s[m // 2]) if m % 2 else float(s[m // 2 - 1] / 2 + s[m // 2] / 2)


def _clip_factors(norms: torch.Tensor, tau: float) -> torch.Tensor:
    """``min(1, tau / norm)``, 1 for a zero norm (the row is zero whatever it is multiplied by)."""
    return torch.where(norms > 0, (tau / norms).clamp(max=1.0), 1.0)


def _zeros(X: torch.Tensor) -> torch.Tensor:
    return torch.zeros(X.shape[1], dtype=X.dtype, device=X.device)


def fltrust(X: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
    r"""FLTrust (Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated Learning via Trust Bootstrapping",
    NDSS 2021).

    With the server's root update :math:`g_0` (``root``), each row's trust score is
    :math:`TS_i = \max(0, \cos(x_i, g_0))`, 0 for a zero row or a row holding NaN/inf (0 for every row when
    the root is zero); each row is rescaled to the root's norm and

    .. math:: \text{out} = \frac{\sum_i TS_i \, \frac{\|g_0\|}{\|x_i\|} \, x_i}{\sum_i TS_i},

    all zeros when :math:`\sum_i TS_i = 0`. ``root``: a ``(d,)`` tensor of X's dtype on X's device with
    finite entries (``ValueError`` otherwise). A float64 row whose norm is below :math:`2^{-1024} \|g_0\|`
    overflows its factor to inf. Two passes over X: the squared norms with the dot products with the root,
    then the combination (float64 rows whose squares leave the float64 range take the law-of-cosines path
    of the module docstring instead).
    """
    rule = "fltrust"
    check_matrix(X, rule)
    if not isinstance(root, torch.Tensor):
        raise TypeError(f"{rule}: root must be a torch.Tensor, got {type(root).__name__}")
    d = X.shape[1]
    if root.shape != (d,):
        raise ValueError(f"{rule}: root must have shape (d,) = ({d},), got {tuple(root.shape)}")
    if root.dtype != X.dtype:
        raise ValueError(f"{rule}: root must have X's dtype {X.dtype}, got {root.dtype}")
    if root.device != X.device:
        raise ValueError(f"{rule}: root is on {root.device} but X is on {X.device}")
    X, root = X.detach(), root.detach()
    trust, ratio = _root_cosines(X, root)
    total = float(trust.sum())
    if total == 0.0:
        return _zeros(X)
    return coefficients.combine(trust / total * torch.where(trust > 0, ratio, 0.0), X)


def _root_cosines(X: torch.Tensor, root: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FLTrust's trust scores ``max(0, cos(x_i, root))`` and the ratios ``||root|| / ||x_i||``, float64 on the CPU.

    One pass over X takes the squared norms and the dot products with the root (direct, so no cancellation
    between norms). Float64 rows or roots so large or small that their squares leave the float64 range
    take the magnitude-safe law-of-cosines path (:func:`_angles`) instead. Raises ``ValueError`` for a
    root with NaN/inf entries.
    """
    NG = ops.row_sq_norms_and_dots(X, root).cpu()
    Nr = float(ops.row_sq_norms(root.reshape(1, -1))[0])
    N, G = NG[0], NG[1]
    usable = torch.isfinite(N)
    in_range = math.isfinite(Nr) and (Nr == 0.0 or Nr >= exact_geometry.TINY)
    if X.dtype == torch.float64:
        # A float64 square may overflow for a finite row, or lose bits below 2**-1000.
        in_range = in_range and bool(((N == 0) | (N >= exact_geometry.TINY))[usable].all())
        in_range = in_range and torch.equal(exact_geometry.finite_by_entries(X, None, ~usable), usable)
    if not math.isfinite(Nr) and not bool(torch.isfinite(root).all()):
        raise ValueError("fltrust: root must be finite, got NaN/inf entries")
    if not in_range:
        n = X.shape[0]
        a = _angles(X, root)
        return a.cos[:n, n].clamp(min=0.0), a.norms[n] / a.norms[:n]
    norms, root_norm = N.sqrt(), math.sqrt(Nr)
    usable &= N > 0
    cos = torch.where(usable, G / norms / root_norm, 0.0) if root_norm > 0 else torch.zeros_like(N)
    return cos.clamp(0.0, 1.0), root_norm / norms


def signguard(
    X: torch.Tensor,
    lower: float = 0.1,
    upper: float = 3.0,
    fraction: float = 0.1,
    generator: torch.Generator | None = None,
    max_iter: int = 100,
) -> torch.Tensor:
    r"""SignGuard (Xu, Huang, Song, Lan, "Byzantine-robust Federated Learning through Collaborative Malicious
    Gradient Filtering", ICDCS 2022), with 2-means (K-means) as its sign clustering.

    Only rows without NaN/inf take part (none: all NaN). With :math:`M` the median of their norms (even
    count: the mean of the two middle ones):

    1. norm filter :math:`S_1 = \{i : \text{lower} \cdot M \le \|x_i\| \le \text{upper} \cdot M\}`;
    2. ``k = max(1, ceil(fraction * d))`` columns ``J = torch.randperm(d, generator=generator)[:k]`` (all
       columns, and no draw, when ``k >= d``); each row's features are the fractions of its entries in J
       that are ``> 0``, ``== 0`` and ``< 0``;
    3. 2-means on the features: the centres start at the features of the lowest-index row a and of the row
       farthest from a (squared Euclidean; the first on ties); all features equal: one cluster. Lloyd steps
       assign each row to the nearer centre (ties to the first) and move each non-empty cluster's centre to
       its mean (an empty cluster keeps its centre), until no assignment changes or after ``max_iter``
       steps. :math:`S_2` is the larger cluster (ties: the one holding the lowest index);
    4. :math:`\text{out} = \frac{1}{|S_1 \cap S_2|} \sum_{i \in S_1 \cap S_2} x_i \min(1, M / \|x_i\|)`, all
       zeros when the intersection is empty.

    The clustering runs on the sign counts (the features times k, exact integers), which gives the same
    clusters with fewer roundings. ``0 <= lower <= upper`` finite, ``0 < fraction <= 1``, ``max_iter >= 1``,
    ``generator`` a CPU ``torch.Generator`` or None (the global RNG). Two passes over X plus the ``n * k``
    sampled entries.
    """
    rule = "signguard"
    check_matrix(X, rule)
    lower = check_real(lower, "lower", rule, low=0.0)
    upper = check_real(upper, "upper", rule, low=0.0)
    if lower > upper:
        raise ValueError(f"{rule}: lower must be <= upper, got lower={lower!r} > upper={upper!r}")
    fraction = check_real(fraction, "fraction", rule, low=0.0, high=1.0, low_open=True)
    generator = check_generator(generator, "generator", rule)
    max_iter = check_int(max_iter, "max_iter", rule, low=1)
    X = X.detach()
    n, d = X.shape
    S, scale = exact_geometry.scaled_row_sq_norms(X)
    S = S.cpu()
    rows = torch.isfinite(S).nonzero().flatten()
    if rows.numel() == 0:
        return coefficients.combine(None, X)
    norms = S.sqrt()
    _tiny_norms(X, None, S, norms, scale)
    norms = norms[rows]  # times 2**-scale: the filter and the clipping compare ratios only
    M = _median(norms)
    in_norm_range = (lower * M <= norms) & (norms <= upper * M)

    k = max(1, math.ceil(fraction * d))
    Z = X if k >= d else X.index_select(1, torch.randperm(d, generator=generator)[:k].to(X.device))
    counts = torch.stack([(Z > 0).sum(1), (Z == 0).sum(1), (Z < 0).sum(1)], dim=1).cpu().to(torch.float64)
    in_cluster = _larger_of_two_means(counts[rows], max_iter)

    chosen = in_norm_range & in_cluster
    if not bool(chosen.any()):
        return _zeros(X)
    c = torch.zeros(n, dtype=torch.float64)
    c[rows[chosen]] = _clip_factors(norms[chosen], M) / int(chosen.sum())
    return coefficients.combine(c, X)


def _sq_dist(F: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances of the rows of an (m, 3) tensor to a point, summed in a fixed order."""
    diff = F - c
    return (diff[:, 0].square() + diff[:, 1].square()) + diff[:, 2].square()


def _larger_of_two_means(F: torch.Tensor, max_iter: int) -> torch.Tensor:
    """(m,) bool: the larger cluster of 2-means on the rows of F (SignGuard's step 3)."""
    m = F.shape[0]
    far = _sq_dist(F, F[0])
    b = int(torch.argmax(far))  # the first maximum
    if float(far[b]) == 0.0:
        return torch.ones(m, dtype=torch.bool)
    centres = torch.stack([F[0], F[b]])
    labels = None
    for _ in range(max_iter):
        new = _sq_dist(F, centres[1]) < _sq_dist(F, centres[0])  # True: centre 1; ties to centre 0
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        for j, members in enumerate((~labels, labels)):
            if bool(members.any()):
                centres[j] = F[members].mean(0)
    ones = int(labels.sum())
    # Equal sizes: the cluster holding row 0 (the lowest index).
    if 2 * ones > m or (2 * ones == m and bool(labels[0])):
        return labels
    return ~labels


def clipped_clustering(X: torch.Tensor, tau: float | None = None) -> torch.Tensor:
    r"""ClippedClustering (Li, Ngai, Voigt, "An Experimental Study of Byzantine-Robust Aggregation Schemes in
    Federated Learning", IEEE Transactions on Big Data, 2023).

    Only rows without NaN/inf take part (none: all NaN). Each is clipped to
    :math:`\tilde x_i = x_i \min(1, \tau / \|x_i\|)`, with :math:`\tau` = ``tau`` or, when None, the median
    of their norms (even count: the mean of the two middle ones); the aggregator object passes the median
    of every norm it has seen. The rows are clustered by agglomerative clustering with average linkage on
    the cosine distance :math:`1 - \cos(x_i, x_j)` (cos = 0 when either row is zero), from singletons down
    to two clusters: each step merges the two clusters of least mean pairwise distance, ties to the pair
    whose (lowest index of the first, lowest index of the second) is smallest. With C the larger cluster
    (ties: the one holding the lowest index; a single row: that row),

    .. math:: \text{out} = \frac{1}{|C|} \sum_{i \in C} \tilde x_i.

    ``tau``: None or a finite real >= 0. Three passes over X (four when the norms spread widely).
    """
    rule = "clipped_clustering"
    check_matrix(X, rule)
    if tau is not None:
        tau = check_real(tau, "tau", rule, low=0.0)
    X = X.detach()
    n = X.shape[0]
    a = _angles(X)
    rows = a.finite.nonzero().flatten()
    if rows.numel() == 0:
        return coefficients.combine(None, X)
    norms = a.norms[rows]
    threshold = _median(norms) if tau is None else math.ldexp(tau, -a.k)
    kept = _larger_of_two_linkage_clusters(1.0 - a.cos[rows][:, rows])
    c = torch.zeros(n, dtype=torch.float64)
    c[rows[kept]] = _clip_factors(norms[kept], threshold) / int(kept.sum())
    return coefficients.combine(c, X)


def _larger_of_two_linkage_clusters(dist: torch.Tensor) -> torch.Tensor:
    """(m,) bool: the larger of the two clusters that average-linkage agglomeration of m points ends with.

    Clusters are kept in slots ordered by their lowest index, ``W`` holding the sums of pairwise distances
    between them: a merge adds the later slot into the earlier one and drops it. The first minimum of the
    upper triangle in row-major order is the tie-break of the docstring above.
    """
    m = dist.shape[0]
    if m == 1:
        return torch.ones(1, dtype=torch.bool)
    W = dist.clone()
    sizes = torch.ones(m, dtype=torch.float64)
    members = [[i] for i in range(m)]
    upper = torch.ones(m, m, dtype=torch.bool).triu(1)
    while len(members) > 2:
        linkage = W / (sizes.reshape(-1, 1) * sizes.reshape(1, -1))
        linkage = torch.where(upper, linkage, math.inf)
        flat = int(torch.argmin(linkage.reshape(-1)))  # the first minimum
        i, j = divmod(flat, len(members))
        W[i] += W[j]
        W[:, i] += W[:, j]
        sizes[i] += sizes[j]
        members[i] += members.pop(j)
        keep = torch.arange(len(members) + 1) != j
        W, sizes, upper = W[keep][:, keep], sizes[keep], upper[keep][:, keep]
    first, second = members
    kept = torch.zeros(m, dtype=torch.bool)
    kept[first if len(first) >= len(second) else second] = True  # slot 0 holds the lowest index
    return kept


def foolsgold_weights(H: torch.Tensor, kappa: float = 1.0) -> torch.Tensor:
    r"""FoolsGold's client weights (Fung, Yoon, Beschastnikh, "The Limitations of Federated Learning in Sybil
    Settings", RAID 2020, Algorithm 1 without the feature-importance weighting).

    ``H``: the clients' histories (each client's updates summed so far), an ``(n, d)`` float tensor; only
    histories without NaN/inf take part (the others get weight 0). Among them, for :math:`i \ne j`:
    :math:`cs_{ij} = \cos(H_i, H_j)` (0 when either is zero) and :math:`v_i = \max_{j \ne i} cs_{ij}`;
    pardoning: :math:`cs_{ij} \leftarrow cs_{ij} v_i / v_j` where :math:`v_i < v_j` and :math:`v_j > 0` (with
    the original v); :math:`\alpha_i = 1 - \max_{j \ne i} cs_{ij}`, clipped to [0, 1]. If
    :math:`\max_i \alpha_i = 0` every weight is 0; else :math:`\alpha \leftarrow \alpha / \max_i \alpha_i`,
    entries equal to 1 become 0.99, and

    .. math:: \alpha_i \leftarrow \mathrm{clip}_{[0, 1]}\left(\kappa \left(\ln \frac{\alpha_i}{1 - \alpha_i}
              + 0.5\right)\right) \qquad (\ln 0 = -\infty).

    A single client taking part gets weight 1. ``kappa``: finite and > 0. Returns the ``(n,)`` float64
    weights on H's device; the aggregate is :math:`\sum_i \alpha_i x_i / \sum_i \alpha_i` (zeros when the sum
    is 0). Two passes over H (three when the norms spread widely).
    """
    rule = "foolsgold_weights"
    check_matrix(H, rule, "H")
    kappa = check_positive(kappa, "kappa", rule)
    H = H.detach()
    n = H.shape[0]
    weights = torch.zeros(n, dtype=torch.float64)
    a = _angles(H)
    rows = a.finite.nonzero().flatten()
    m = rows.numel()
    if m == 1:
        weights[rows] = 1.0
    elif m > 1:
        weights[rows] = _foolsgold_alpha(a.cos[rows][:, rows], kappa)
    return weights.to(H.device)


def _foolsgold_alpha(cs: torch.Tensor, kappa: float) -> torch.Tensor:
    """FoolsGold's weights from the (m, m) cosine matrix of m >= 2 histories."""
    off = ~torch.eye(cs.shape[0], dtype=torch.bool)
    v = torch.where(off, cs, -math.inf).amax(1)
    pardon = off & (v.reshape(-1, 1) < v.reshape(1, -1)) & (v.reshape(1, -1) > 0)
    cs = torch.where(pardon, cs * v.reshape(-1, 1) / v.reshape(1, -1), cs)
    alpha = (1.0 - torch.where(off, cs, -math.inf).amax(1)).clamp(0.0, 1.0)
    top = float(alpha.max())
    if top == 0.0:
        return torch.zeros_like(alpha)
    alpha = alpha / top
    alpha = torch.where(alpha == 1.0, 0.99, alpha)
    return (kappa * (torch.log(alpha / (1.0 - alpha)) + 0.5)).clamp(0.0, 1.0)
