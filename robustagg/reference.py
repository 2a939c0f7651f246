"""Plain float64 PyTorch versions of every op: the test oracle, never the fast path.

Each function follows docs/spec.md literally and as independently of the
kernels' method as practical: whole-column sorts (``torch.sort`` orders NaN
above +inf, as SPEC 1.4 asks) instead of sorting networks, and an explicit
(distance, value) ranking for MeaMed instead of a sliding window. Results are
computed in float64 and cast to X's dtype.
"""

from __future__ import annotations

import itertools
import math

import torch


def _sorted64(X: torch.Tensor) -> torch.Tensor:
    return torch.sort(X.to(torch.float64), dim=0).values


def _finite_mean(S: torch.Tensor) -> torch.Tensor:
    """Column means of S, finite wherever S is: a sum that overflows is taken again on S / 2**k (SPEC 1)."""
    out = S.sum(0) / S.shape[0]
    redo = ~torch.isfinite(out) & torch.isfinite(S).all(0)
    if redo.any():
        k = S.shape[0].bit_length() + 1
        out[redo] = (S[:, redo] * 2.0**-k).sum(0) / S.shape[0] * 2.0**k
    return out


def median_of_sorted(S: torch.Tensor) -> torch.Tensor:
    n = S.shape[0]
    lo = S[(n - 1) // 2]
    if n % 2 == 1:
        return lo
    hi = S[n // 2]
    mid = (lo + hi) / 2
    # The midpoint of two finite values is finite (SPEC 1): halve first where the sum overflows.
    return torch.where(torch.isfinite(mid) | ~torch.isfinite(lo) | ~torch.isfinite(hi), mid, lo / 2 + hi / 2)


def mean(X: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    X64 = X.to(torch.float64)
    if weights is None:
        return _finite_mean(X64).to(X.dtype)
    u, _ = unit_weights(weights.to(torch.float64))  # the same mean; no sum or product overflows
    out = (u[:, None] * X64).sum(0) / u.sum()
    redo = ~torch.isfinite(out) & torch.isfinite(X64).all(0)
    if redo.any():
        out[redo] = _finite_mean(u[:, None] * X64[:, redo]) * (X64.shape[0] / u.sum())
    return out.to(X.dtype)


def times_power_of_two(x: torch.Tensor, e: int) -> torch.Tensor:
    """x * 2**e in two steps, since 2**e alone may lie outside the float64 range."""
    return x * 2.0 ** (e // 2) * 2.0 ** (e - e // 2)


def unit_weights(w: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(w * 2**-e, e)``: float64 weights times the power of two that brings the largest into [1, 2), as the
    kernels scale them (exact unless a weight is below 2**-1022 of the largest)."""
    e = int(torch.frexp(w.max()).exponent) - 1
    return times_power_of_two(w, -e), e


def coordinate_median(X: torch.Tensor) -> torch.Tensor:
    return median_of_sorted(_sorted64(X)).to(X.dtype)


def trimmed_mean(X: torch.Tensor, f: int) -> torch.Tensor:
    n = X.shape[0]
    return _finite_mean(_sorted64(X)[f : n - f]).to(X.dtype)


def closeness_rank(S: torch.Tensor, med: torch.Tensor) -> torch.Tensor:
    """Positions of the sorted columns S ordered by distance to med, ties to the smaller value.

    Distances are rounded float64 differences; a finite value whose distance
    overflows is farther than every value whose distance does not, nearer than
    every infinite or NaN value, and compared with the other overflowing ones
    at half scale (SPEC 1: finite values are never tied at +inf).
    """
    unit = (S - med).abs()
    half = (S / 2 - med / 2).abs()
    overflow = torch.isinf(unit) & torch.isfinite(S) & torch.isfinite(med)
    dist = torch.where(overflow, half, unit)
    dist = torch.where(torch.isnan(dist), torch.full_like(dist, float("inf")), dist)
    tier = torch.where(overflow, 1, torch.where(torch.isfinite(dist), 0, 2))
    # Stable lexicographic ranking: by value (S is sorted), then distance, then tier.
    by_dist = torch.sort(dist, dim=0, stable=True).indices
    by_tier = torch.sort(torch.gather(tier, 0, by_dist), dim=0, stable=True).indices
    return torch.gather(by_dist, 0, by_tier)


def meamed(X: torch.Tensor, f: int) -> torch.Tensor:
    """Rank each value by (|x - median|, x), NaN distances counting as +inf; average the first n - f."""
    n = X.shape[0]
    S = _sorted64(X)
    order = closeness_rank(S, median_of_sorted(S))[: n - f]
    kept = torch.sort(order, dim=0).values  # ascending sorted positions, summed in order
    return _finite_mean(torch.gather(S, 0, kept)).to(X.dtype)


# ---------------------------------------------------------------------------
# Distance rules and pre-aggregators (SPEC 3, 4)
#
# Written directly from the definitions, in float64, without the kernels'
# method: squared distances are sums of (x_i - x_j)**2 over explicit row pairs
# (no Gram matrix), and Weiszfeld / centered clipping iterate on vectors in X
# space (not on mixing coefficients). Slow on purpose; small n only.


def _rows64(X: torch.Tensor) -> tuple[torch.Tensor, list[bool]]:
    X64 = X.to(torch.float64)
    return X64, [bool(torch.isfinite(X64[i]).all()) for i in range(X64.shape[0])]


def _mean_rows(X64: torch.Tensor, rows: list[int]) -> torch.Tensor:
    acc = torch.zeros(X64.shape[1], dtype=torch.float64)
    for i in rows:
        acc = acc + X64[i]
    return acc / len(rows)


def pairwise_sq_distances(X: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """(m, m) float64 D_ij = sum_k (x_ik - x_jk)**2, center as row n when given;
    +inf to and from rows that are not row-finite, 0 on the diagonal."""
    R = X.to(torch.float64)
    if center is not None:
        R = torch.cat([R, center.to(torch.float64).reshape(1, -1)])
    m = R.shape[0]
    finite = [bool(torch.isfinite(R[i]).all()) for i in range(m)]
    D = torch.zeros(m, m, dtype=torch.float64)
    for i in range(m):
        for j in range(i + 1, m):
            if finite[i] and finite[j]:
                diff = R[i] - R[j]
                v = float((diff * diff).sum())
            else:
                v = float("inf")
            D[i, j] = D[j, i] = v
    return D


def row_sq_norms_and_dots(X: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(2, n) float64: sum_k x_ik**2 (row 0) and sum_k x_ik v_k (row 1), NaN/inf as IEEE arithmetic gives them."""
    X64, v64 = X.to(torch.float64), v.to(torch.float64)
    return torch.stack([(X64 * X64).sum(1), (X64 * v64).sum(1)])


def row_sq_distances(X: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(n,) float64 sum_k (x_ik - v_k)**2, NaN/inf as IEEE arithmetic gives them."""
    return ((X.to(torch.float64) - v.to(torch.float64)) ** 2).sum(1)


def _krum_order(D: torch.Tensor, finite: list[bool], rows: list[int], f: int) -> list[int]:
    """rows ranked by (not finite, sum of the max(k - f - 2, 0) smallest D_ij to
    the other rows of ``rows``, index), k = len(rows)."""
    k = len(rows)
    q = max(k - f - 2, 0)
    keys = []
    for i in rows:
        dists = sorted(float(D[i, j]) for j in rows if j != i)
        score = 0.0
        for v in dists[:q]:
            score += v
        keys.append((not finite[i], score, i))
    return [i for _, _, i in sorted(keys)]


def krum(X: torch.Tensor, f: int, m: int = 1) -> torch.Tensor:
    """Mean of the row-finite rows among the m best Krum scores (n - f - 2
    nearest squared distances); m = 1 gives the winning row itself; all NaN if
    no row is finite."""
    X64, finite = _rows64(X)
    n = X64.shape[0]
    order = _krum_order(pairwise_sq_distances(X), finite, list(range(n)), f)
    chosen = [i for i in order[:m] if finite[i]]
    if not chosen:
        return torch.full((X.shape[1],), float("nan"), dtype=X.dtype)
    if m == 1:
        return X[chosen[0]].clone()
    return _mean_rows(X64, chosen).to(X.dtype)


def multi_krum(X: torch.Tensor, f: int, m: int | None = None) -> torch.Tensor:
    """Krum with m = n - f by default."""
    return krum(X, f, X.shape[0] - f if m is None else m)


def bulyan(X: torch.Tensor, f: int) -> torch.Tensor:
    """theta = n - 2f rows chosen by repeated Krum on the remaining rows, then
    per coordinate the mean of the beta = theta - 2f selected values closest
    to their median (ties: smaller value; NaN infinitely far)."""
    X64, finite = _rows64(X)
    n = X64.shape[0]
    theta = n - 2 * f
    beta = theta - 2 * f
    D = pairwise_sq_distances(X)
    remaining = list(range(n))
    selected = []
    for _ in range(theta):
        best = _krum_order(D, finite, remaining, f)[0]
        selected.append(best)
        remaining.remove(best)
    S = X64[selected]
    d = S.shape[1]
    out = torch.empty(d, dtype=torch.float64)
    nan_last = lambda v: (v != v, v)  # NaN orders above +inf
    for c in range(d):
        vals = sorted((float(v) for v in S[:, c]), key=nan_last)
        lo, hi = vals[(theta - 1) // 2], vals[theta // 2]
        med = lo if theta % 2 else (lo + hi) / 2

        def dist(v):
            r = abs(v - med)
            return float("inf") if r != r else r

        keep = sorted(range(theta), key=lambda t: (dist(vals[t]), t))[:beta]
        acc = 0.0
        for t in sorted(keep):  # ascending value order
            acc += vals[t]
        out[c] = acc / beta
    return out.to(X.dtype)


def geometric_median(
    X: torch.Tensor,
    weights: torch.Tensor | None = None,
    nu: float = 1e-6,
    tol: float = 1e-10,
    max_iter: int = 200,
    trace: list | None = None,
) -> tuple[torch.Tensor, int, float]:
    """Smoothed Weiszfeld in X space; returns (z in X's dtype, iterations, objective at z).
    ``trace``, if given, receives the objective at the start and after each update."""
    X64, finite = _rows64(X)
    n, d = X64.shape
    a = [1.0] * n if weights is None else [float(w) for w in weights.to(torch.float64)]
    a = [a[i] if finite[i] else 0.0 for i in range(n)]
    rows = [i for i in range(n) if finite[i]]

    def combine(coef):
        acc = torch.zeros(d, dtype=torch.float64)
        for i in rows:
            acc = acc + coef[i] * X64[i]
        return acc / sum(coef[i] for i in rows)

    def objective(z):
        return sum(a[i] * float(torch.linalg.vector_norm(X64[i] - z)) for i in rows)

    z = combine(a)
    F = objective(z)
    if trace is not None:
        trace.append(F)
    it = 0
    while it < max_iter:
        b = [0.0] * n
        for i in rows:
            b[i] = a[i] / max(nu, float(torch.linalg.vector_norm(X64[i] - z)))
        z = combine(b)
        F_new = objective(z)
        if trace is not None:
            trace.append(F_new)
        it += 1
        done = abs(F - F_new) <= tol * F
        F = F_new
        if done:
            break
    return z.to(X.dtype), it, F


def centered_clip(X: torch.Tensor, center: torch.Tensor, tau: float, iters: int = 1) -> torch.Tensor:
    """v <- v + (1/n) sum_i (x_i - v) min(1, tau/||x_i - v||), iters times from v = center;
    non-finite rows and rows at v contribute 0."""
    X64, finite = _rows64(X)
    n = X64.shape[0]
    v = center.to(torch.float64).clone()
    for _ in range(iters):
        step = torch.zeros_like(v)
        for i in range(n):
            if not finite[i]:
                continue
            diff = X64[i] - v
            r = float(torch.linalg.vector_norm(diff))
            if r == 0.0:
                continue
            step = step + diff * min(1.0, tau / r)
        v = v + step / n
    return v.to(X.dtype)


def bucketing(X: torch.Tensor, s: int, perm: torch.Tensor) -> torch.Tensor:
    """(ceil(n/s), d): bucket b is the mean of rows perm[b*s:(b+1)*s]."""
    X64 = X.to(torch.float64)
    idx = [int(i) for i in perm]
    buckets = [idx[k : k + s] for k in range(0, len(idx), s)]
    return torch.stack([_mean_rows(X64, b) for b in buckets]).to(X.dtype)


def nnm(X: torch.Tensor, f: int) -> torch.Tensor:
    """Row i -> mean of x_i and its n - f - 1 nearest other rows by (D_ij, j)."""
    X64 = X.to(torch.float64)
    n = X64.shape[0]
    D = pairwise_sq_distances(X)
    out = []
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: (float(D[i, j]), j))
        out.append(_mean_rows(X64, [i] + others[: n - f - 1]))
    return torch.stack(out).reshape(n, X.shape[1]).to(X.dtype)


def _norm(row: torch.Tensor) -> float:
    return float(torch.sqrt((row * row).sum()))


def clip(X: torch.Tensor, c: float) -> torch.Tensor:
    """Row-finite rows scaled by min(1, c/||x_i||); other rows unchanged."""
    X64, finite = _rows64(X)
    out = X64.clone()
    for i in range(X64.shape[0]):
        r = _norm(X64[i])
        if finite[i] and r > c:
            out[i] = X64[i] * (c / r)
    return out.to(X.dtype)


def arc(X: torch.Tensor, f: int) -> torch.Tensor:
    """k = (2f(n - f)) // n; the row-finite rows among the k largest norms
    (non-finite = +inf, ties to the lower index) scaled to the (k+1)-th norm,
    unless that row is not finite."""
    X64, finite = _rows64(X)
    n = X64.shape[0]
    k = (2 * f * (n - f)) // n
    norms = [_norm(X64[i]) if finite[i] else float("inf") for i in range(n)]
    order = sorted(range(n), key=lambda i: (-norms[i], i))
    out = X64.clone()
    target = order[k]
    if finite[target]:
        for i in order[:k]:
            if finite[i] and norms[i] > 0:
                out[i] = X64[i] * (norms[target] / norms[i])
    return out.to(X.dtype)


# ---------------------------------------------------------------------------
# Fused multi-tensor updates (SPEC 6)


def momentum_update(buffers: list[torch.Tensor], grads: list[torch.Tensor], beta: float) -> list[torch.Tensor]:
    """New float64 tensors beta * m_i + (1 - beta) * g_i, one per pair (m_i, g_i),
    computed in float64 with beta and 1 - beta as Python floats; the inputs are
    not modified. NaN/inf follow IEEE arithmetic term by term (0 * inf is NaN)."""
    return [
        beta * m.to(torch.float64) + (1.0 - beta) * g.to(torch.float64) for m, g in zip(buffers, grads, strict=True)
    ]


def client_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    lr: float,
    *,
    anchor_grads: list[torch.Tensor] | None = None,
    control: list[torch.Tensor] | None = None,
    momentum: list[torch.Tensor] | None = None,
    coef_grad: float = 1.0,
    coef_anchor: float = 0.0,
    coef_control: float = 0.0,
    coef_momentum: float = 0.0,
) -> list[torch.Tensor]:
    """New float64 tensors p - lr * (((k_g g + k_a a) + k_c c) + k_m m), one per tensor of params,
    computed in float64 with the coefficients as Python floats; the inputs are not modified.

    An absent list (None) contributes no term at all (not even 0 * x), so its
    NaN/inf could not reach the result; a present list's term is added even
    with a zero coefficient (0 * inf is NaN), as IEEE arithmetic has it.
    """
    n = len(params)
    optional = [(coef_anchor, anchor_grads), (coef_control, control), (coef_momentum, momentum)]
    for _, seq in optional:
        if seq is not None and len(seq) != n:
            raise ValueError("client_step: lists of different lengths")
    out = []
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        d = coef_grad * g.to(torch.float64)
        for k, seq in optional:
            if seq is not None:
                d = d + k * seq[i].to(torch.float64)
        out.append(p.to(torch.float64) - lr * d)
    return out


def adam_client_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avg: list[torch.Tensor],
    exp_avg_sq: list[torch.Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
    *,
    anchor_grads: list[torch.Tensor] | None = None,
    control: list[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """New float64 tensors: the parameters after the step torch.optim.Adam would take from the
    frozen state (exp_avg m, exp_avg_sq v, ``step - 1`` steps taken) with the gradient
    gt = (g - a) + c (absent a / c: no term):

        m' = beta1 m + (1 - beta1) gt,   v' = beta2 v + (1 - beta2) gt^2,
        p - (lr / (1 - beta1^step)) * m' / (sqrt(v') / sqrt(1 - beta2^step) + eps).

    Computed in float64 (the bias corrections as Python floats); the inputs,
    m and v included, are not modified.
    """
    n = len(params)
    for seq in (anchor_grads, control):
        if seq is not None and len(seq) != n:
            raise ValueError("adam_client_step: lists of different lengths")
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    out = []
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avg, exp_avg_sq, strict=True)):
        gt = g.to(torch.float64)
        if anchor_grads is not None:
            gt = gt - anchor_grads[i].to(torch.float64)
        if control is not None:
            gt = gt + control[i].to(torch.float64)
        m1 = beta1 * m.to(torch.float64) + (1.0 - beta1) * gt
        v1 = beta2 * v.to(torch.float64) + (1.0 - beta2) * (gt * gt)
        denom = v1.sqrt() / bc2**0.5 + eps
        out.append(p.to(torch.float64) - (lr / bc1) * (m1 / denom))
    return out


def adam_stats_update(
    exp_avg: list[torch.Tensor], exp_avg_sq: list[torch.Tensor], grads: list[torch.Tensor], beta1: float, beta2: float
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """New float64 tensors (beta1 m + (1 - beta1) g, beta2 v + (1 - beta2) g^2) for every
    (m, v, g) of (exp_avg, exp_avg_sq, grads): two lists; the inputs are not modified."""
    ms, vs = [], []
    for m, v, g in zip(exp_avg, exp_avg_sq, grads, strict=True):
        g64 = g.to(torch.float64)
        ms.append(beta1 * m.to(torch.float64) + (1.0 - beta1) * g64)
        vs.append(beta2 * v.to(torch.float64) + (1.0 - beta2) * (g64 * g64))
    return ms, vs


def mvr_update(
    momentum: list[torch.Tensor], grads: list[torch.Tensor], prev_grads: list[torch.Tensor], a: float
) -> list[torch.Tensor]:
    """New float64 tensors a g + (1 - a) ((m + g) - g_prev) for every (m, g, g_prev) of
    (momentum, grads, prev_grads) (STORM / MVR), computed in float64; the inputs are not modified."""
    out = []
    for m, g, h in zip(momentum, grads, prev_grads, strict=True):
        g64 = g.to(torch.float64)
        out.append(a * g64 + (1.0 - a) * ((m.to(torch.float64) + g64) - h.to(torch.float64)))
    return out


def weighted_step(
    params: list[torch.Tensor],
    grads: list[list[torch.Tensor]],
    weights: list[float],
    lr: float,
    *,
    corrections: list[list[torch.Tensor]] | None = None,
    beta: float = 0.0,
) -> tuple[list[torch.Tensor], list[list[torch.Tensor]] | None]:
    """(new params, new corrections) of the (bias-corrected) weighted averaging step, float64.

    ``u = a_0 g_0 + sum_{i>=1} (a_i g_i + c_i)``, ``p - lr * u``, and
    ``c_i <- (1 - beta) c_i + beta * a_i (g_0 - g_i)`` from the old corrections
    (SPEC 6.3); without corrections the c terms are absent. The inputs are not modified.
    """
    f64 = [[t.to(torch.float64) for t in user] for user in grads]
    new_params, new_corr = [], None if corrections is None else [[] for _ in corrections]
    for j, p in enumerate(params):
        u = weights[0] * f64[0][j]
        for i in range(1, len(grads)):
            u = u + weights[i] * f64[i][j]
            if corrections is not None:
                c = corrections[i - 1][j].to(torch.float64)
                u = u + c
                new_corr[i - 1].append((1.0 - beta) * c + beta * (weights[i] * (f64[0][j] - f64[i][j])))
        new_params.append(p.to(torch.float64) - lr * u)
    return new_params, new_corr


def masked_sgd_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_buffers: list[torch.Tensor],
    lr: float,
    momentum: float,
    *,
    masks: list[torch.Tensor] | None = None,
    weight_decay: float = 0.0,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(new params, new momentum) of SGD with momentum where the bool mask is set, float64.

    ``d = g + wd p`` (no term when wd = 0), ``m' = mu m + d``, ``p' = p - lr m'``
    where the mask is set; elsewhere p and m unchanged (SPEC 6.4). Masks are
    bool tensors shaped like the params (unpack packed masks first).
    """
    new_p, new_m = [], []
    for i, (p, g, m) in enumerate(zip(params, grads, momentum_buffers, strict=True)):
        p64, g64, m64 = p.to(torch.float64), g.to(torch.float64), m.to(torch.float64)
        d = g64 + weight_decay * p64 if weight_decay != 0.0 else g64
        m1 = momentum * m64 + d
        p1 = p64 - lr * m1
        if masks is not None:
            m1 = torch.where(masks[i], m1, m64)
            p1 = torch.where(masks[i], p1, p64)
        new_p.append(p1)
        new_m.append(m1)
    return new_p, new_m


# ---------------------------------------------------------------------------
# Catalogue rules: MDA, MoNNA, SMEA, CAF, DnC, FLTrust, SignGuard, clipped clustering, FoolsGold
#
# Written from the definitions in float64, apart from the kernels' method:
# subsets enumerated with itertools.combinations, squared distances summed over
# coordinates, covariances formed in X space (d x d, eigh) rather than from a
# Gram matrix, DnC's direction from the SVD of the centred rows, clustering by
# explicit loops. Slow on purpose; small n (and small d for SMEA / CAF) only.


def _mean_or_nan(X64: torch.Tensor, finite: list[bool], rows, dtype: torch.dtype) -> torch.Tensor:
    """Mean of the row-finite rows among ``rows`` (all NaN if none), cast to dtype."""
    keep = [i for i in rows if finite[i]]
    if not keep:
        return torch.full((X64.shape[1],), float("nan"), dtype=dtype)
    return _finite_mean(X64[keep]).to(dtype)


def _subset_budget(n: int, f: int, max_subsets: int, rule: str) -> None:
    if math.comb(n, f) > max_subsets:
        raise ValueError(f"{rule}: comb(n, f) = {math.comb(n, f)} subsets exceed max_subsets={max_subsets}")


def _covariance_eigh(Z: torch.Tensor, w: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(eigenvalues ascending, eigenvectors, mu) of (1/sum w) sum_i w_i (z_i - mu)(z_i - mu)^T, d x d,
    with mu = sum w_i z_i / sum w."""
    total = sum(w)
    mu = torch.zeros(Z.shape[1], dtype=torch.float64)
    for wi, z in zip(w, Z):
        mu = mu + wi * z
    mu = mu / total
    sigma = torch.zeros(Z.shape[1], Z.shape[1], dtype=torch.float64)
    for wi, z in zip(w, Z):
        sigma = sigma + wi * torch.outer(z - mu, z - mu)
    values, vectors = torch.linalg.eigh(sigma / total)
    return values, vectors, mu


def subset_values(X: torch.Tensor, f: int, rule: str) -> list[tuple[tuple[int, ...], float]]:
    """(S, value of S) for every (n - f)-subset in combinations order: the diameter max_{i<j} D_ij (MDA) or
    the top eigenvalue of S's covariance (SMEA); +inf for a subset holding a non-row-finite row."""
    X64, finite = _rows64(X)
    n, d = X64.shape
    D = pairwise_sq_distances(X) if rule == "mda" else None
    out = []
    for S in itertools.combinations(range(n), n - f):
        if not all(finite[i] for i in S):
            value = math.inf
        elif rule == "mda":
            value = max((float(D[i, j]) for i, j in itertools.combinations(S, 2)), default=0.0)
        else:
            value = float(_covariance_eigh(X64[list(S)], [1.0] * len(S))[0][-1]) if d > 0 else 0.0
        out.append((S, value))
    return out


def _first_min_subset(values: list[tuple[tuple[int, ...], float]]) -> tuple[int, ...]:
    best, best_value = values[0]
    for S, v in values[1:]:
        if v < best_value:
            best, best_value = S, v
    return best


def mda(X: torch.Tensor, f: int, max_subsets: int = 2**20) -> torch.Tensor:
    """Mean of the first (n - f)-subset of least diameter (non-row-finite rows left out)."""
    _subset_budget(X.shape[0], f, max_subsets, "mda")
    X64, finite = _rows64(X)
    return _mean_or_nan(X64, finite, _first_min_subset(subset_values(X, f, "mda")), X.dtype)


def monna(X: torch.Tensor, f: int, pivot: int = 0) -> torch.Tensor:
    """Mean of the first n - f rows ordered by (D_pivot,j, j), D_pivot,pivot = 0."""
    X64, finite = _rows64(X)
    n = X64.shape[0]
    D = pairwise_sq_distances(X)
    order = sorted(range(n), key=lambda j: (float(D[pivot, j]), j))
    return _mean_or_nan(X64, finite, order[: n - f], X.dtype)


def smea(X: torch.Tensor, f: int, max_subsets: int = 2**20) -> torch.Tensor:
    """Mean of the first (n - f)-subset whose covariance has the least top eigenvalue."""
    _subset_budget(X.shape[0], f, max_subsets, "smea")
    X64, finite = _rows64(X)
    return _mean_or_nan(X64, finite, _first_min_subset(subset_values(X, f, "smea")), X.dtype)


def caf(X: torch.Tensor, f: int, trace: list | None = None) -> torch.Tensor:
    """Covariance-bound agnostic filter; ``trace``, if given, receives one dict per iteration (weights,
    eigenvalues, taus, the weighted mean), then the final weights."""
    X64, finite = _rows64(X)
    n, d = X64.shape
    c = [1.0 if finite[i] else 0.0 for i in range(n)]
    if not any(finite):
        return torch.full((d,), float("nan"), dtype=X.dtype)
    best_lam, best_mu = math.inf, None
    while sum(c) > n - 2 * f:
        act = [i for i in range(n) if c[i] > 0]
        values, vectors, mu = _covariance_eigh(X64[act], [c[i] for i in act])
        lam, v = float(values[-1]), vectors[:, -1]
        tau = {i: float(((X64[i] - mu) * v).sum()) ** 2 for i in act}
        tau_max = max(tau.values())
        if trace is not None:
            trace.append({"c": list(c), "lam": lam, "eigenvalues": values.tolist(), "tau": tau, "mu": mu})
        if best_mu is None or lam < best_lam:
            best_lam, best_mu = lam, mu
        if tau_max == 0.0:
            break
        for i in act:
            c[i] = c[i] * (1.0 - tau[i] / tau_max)
    if trace is not None:
        trace.append({"c": list(c)})
    if best_mu is None:
        return _mean_or_nan(X64, finite, range(n), X.dtype)
    return best_mu.to(X.dtype)


def dnc(
    X: torch.Tensor,
    f: int,
    iters: int = 5,
    subsample: int = 10000,
    c: float = 1.0,
    generator: torch.Generator | None = None,
    trace: list | None = None,
) -> torch.Tensor:
    """Divide-and-Conquer: each iteration drops the floor(c f) rows of largest squared projection on the top
    right singular vector of the centred row-finite rows (on random columns); mean of the rows never dropped.
    ``trace``, if given, receives (columns, scores, singular values) per iteration."""
    X64, finite = _rows64(X)
    n, d = X64.shape
    k = math.floor(c * f)
    rows = [i for i in range(n) if finite[i]]
    dropped: set[int] = set()
    for _ in range(iters):
        J = torch.randperm(d, generator=generator)[:subsample] if subsample < d else torch.arange(d)
        scores = [math.inf] * n
        sv = []
        if rows and len(J) > 0:
            Z = X64[rows][:, J]
            Zc = Z - _finite_mean(Z)
            _, S, Vh = torch.linalg.svd(Zc, full_matrices=False)
            sv = S.tolist()
            for i, z in zip(rows, Zc):
                scores[i] = float((z * Vh[0]).sum()) ** 2
        if trace is not None:
            trace.append((J.tolist(), scores, sv))
        dropped.update(sorted(range(n), key=lambda i: (-scores[i], i))[:k])
    return _mean_or_nan(X64, finite, [i for i in range(n) if i not in dropped], X.dtype)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = _norm(a), _norm(b)
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float((a * b).sum()) / (na * nb)


def _median(values: list[float]) -> float:
    s = sorted(values)
    m = len(s)
    return s[m // 2] if m % 2 else (s[m // 2 - 1] + s[m // 2]) / 2


def fltrust(X: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
    """sum_i TS_i (||root|| / ||x_i||) x_i / sum_i TS_i with TS_i = max(0, cos(x_i, root)); zeros if sum TS = 0."""
    X64, finite = _rows64(X)
    r = root.to(torch.float64)
    rn = _norm(r)
    num = torch.zeros(X64.shape[1], dtype=torch.float64)
    den = 0.0
    for i in range(X64.shape[0]):
        if not finite[i]:
            continue
        ts = max(0.0, _cos(X64[i], r))
        if ts > 0.0:
            num = num + ts * (rn / _norm(X64[i])) * X64[i]
            den += ts
    if den == 0.0:
        return torch.zeros(X64.shape[1], dtype=X.dtype)
    return (num / den).to(X.dtype)


def _clip_factor(norm: float, bound: float) -> float:
    """min(1, bound / norm), 1 for a row no longer than the bound (a zero row included)."""
    return 1.0 if norm <= bound else bound / norm


def _sq(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b))


def signguard(
    X: torch.Tensor,
    lower: float = 0.1,
    upper: float = 3.0,
    fraction: float = 0.1,
    generator: torch.Generator | None = None,
    max_iter: int = 100,
    trace: dict | None = None,
) -> torch.Tensor:
    """SignGuard: norm filter S1, 2-means on sign fractions S2, mean of the norm-clipped rows of S1 & S2.
    ``trace``, if given, receives the norms, M, the features and every step's centres and assignment."""
    X64, finite = _rows64(X)
    n, d = X64.shape
    rows = [i for i in range(n) if finite[i]]
    if not rows:
        return torch.full((d,), float("nan"), dtype=X.dtype)
    norms = {i: _norm(X64[i]) for i in rows}
    M = _median(list(norms.values()))
    S1 = {i for i in rows if lower * M <= norms[i] <= upper * M}
    k = max(1, math.ceil(fraction * d))
    J = torch.randperm(d, generator=generator)[:k].tolist() if k < d else list(range(d))
    feats = {}
    for i in rows:
        vals = [float(X64[i, j]) for j in J]
        feats[i] = (sum(v > 0 for v in vals) / k, sum(v == 0 for v in vals) / k, sum(v < 0 for v in vals) / k)
    a = rows[0]
    b = a
    for i in rows:
        if _sq(feats[i], feats[a]) > _sq(feats[b], feats[a]):
            b = i
    steps = []
    if b == a:  # every feature equal
        S2 = set(rows)
    else:
        centres = [feats[a], feats[b]]
        assign = None
        for _ in range(max_iter):
            new = [0 if _sq(feats[i], centres[0]) <= _sq(feats[i], centres[1]) else 1 for i in rows]
            steps.append((list(centres), new))
            if new == assign:
                break
            assign = new
            for c in (0, 1):
                members = [feats[i] for i, g in zip(rows, assign) if g == c]
                if members:
                    centres[c] = tuple(sum(m[t] for m in members) / len(members) for t in range(3))
        groups = [[i for i, g in zip(rows, assign) if g == c] for c in (0, 1)]
        big = max(groups, key=lambda g: (len(g), -min(g, default=n)))
        S2 = set(big)
    if trace is not None:
        trace.update(norms=norms, M=M, feats=feats, a=a, b=b, steps=steps, S1=S1, S2=S2)
    keep = sorted(S1 & S2)
    if not keep:
        return torch.zeros(d, dtype=X.dtype)
    clipped = torch.stack([X64[i] * _clip_factor(norms[i], M) for i in keep])
    return _finite_mean(clipped).to(X.dtype)


def clipped_clustering(X: torch.Tensor, tau: float | None = None) -> torch.Tensor:
    """Clip the row-finite rows to norm tau (default: their median norm), cluster them into two by average
    linkage on the cosine distance, return the mean of the larger cluster."""
    X64, finite = _rows64(X)
    n, d = X64.shape
    rows = [i for i in range(n) if finite[i]]
    if not rows:
        return torch.full((d,), float("nan"), dtype=X.dtype)
    norms = {i: _norm(X64[i]) for i in rows}
    if tau is None:
        tau = _median(list(norms.values()))
    Y = {i: X64[i] * _clip_factor(norms[i], tau) for i in rows}
    dist = {(i, j): 1.0 - _cos(Y[i], Y[j]) for i in rows for j in rows}
    clusters = [[i] for i in rows]
    while len(clusters) > 2:
        best, pair = math.inf, None
        for a, b in itertools.combinations(range(len(clusters)), 2):
            link = sum(dist[i, j] for i in clusters[a] for j in clusters[b]) / (len(clusters[a]) * len(clusters[b]))
            if pair is None or link < best:
                best, pair = link, (a, b)
        a, b = pair
        merged = sorted(clusters[a] + clusters[b])
        clusters = sorted([g for t, g in enumerate(clusters) if t not in pair] + [merged], key=min)
    kept = max(clusters, key=lambda g: (len(g), -min(g)))
    return _finite_mean(torch.stack([Y[i] for i in kept])).to(X.dtype)


def foolsgold_weights(H: torch.Tensor, kappa: float = 1.0, trace: dict | None = None) -> torch.Tensor:
    """(n,) float64 FoolsGold weights of the row-finite histories (Algorithm 1, no feature importance).
    ``trace``, if given, receives v, the clipped alphas, their maximum and the normalised alphas."""
    H64, finite = _rows64(H)
    n = H64.shape[0]
    rows = [i for i in range(n) if finite[i]]
    w = torch.zeros(n, dtype=torch.float64)
    if len(rows) == 1:
        w[rows[0]] = 1.0
    if len(rows) <= 1:
        return w
    cs = {(i, j): _cos(H64[i], H64[j]) for i in rows for j in rows if i != j}
    v = {i: max(cs[i, j] for j in rows if j != i) for i in rows}
    pardoned = dict(cs)
    for i, j in cs:
        if v[i] < v[j] and v[j] > 0:
            pardoned[i, j] = cs[i, j] * v[i] / v[j]
    alpha = {i: min(1.0, max(0.0, 1.0 - max(pardoned[i, j] for j in rows if j != i))) for i in rows}
    top = max(alpha.values())
    if trace is not None:
        trace.update(v=v, alpha=alpha, top=top, a={i: alpha[i] / top for i in rows} if top > 0.0 else {})
    if top == 0.0:
        return w
    for i in rows:
        a = alpha[i] / top
        if a == 1.0:
            a = 0.99
        logit = math.log(a / (1.0 - a)) if a > 0.0 else -math.inf
        w[i] = min(1.0, max(0.0, kappa * (logit + 0.5)))
    return w
