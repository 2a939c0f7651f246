"""The plain-PyTorch way to compute each benchmark case, written the obvious way and not in the library:
``torch.median``, a ``torch.sort`` trimmed mean, a sort/argsort/gather MeaMed, and for the distance ops
``torch.cdist`` with sort/argsort, indexing and matmul, giving robustagg's semantics (SPEC 3, 4) for
finite inputs. Each function takes X, and f after it where its case has one; :mod:`.cases` names them,
with their memory estimates, as the cases' torch ways.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .params import (
    BUCKET_S,
    CC_ITERS,
    CC_TAU,
    DNC_SUBSAMPLE,
    GM_MAX_ITER,
    GM_NU,
    GM_TOL,
    bucket_generator,
    draw_generator,
    zeros_center,
)

__all__ = [
    "Baseline",
    "arc",
    "bucketing",
    "bulyan",
    "caf",
    "centered_clip",
    "clip",
    "clipped_clustering",
    "dnc",
    "fltrust",
    "krum",
    "krum_scores",
    "mda",
    "median",
    "monna",
    "multi_krum",
    "signguard",
    "nnm",
    "smea",
    "sort_meamed",
    "sort_trimmed_mean",
    "sq_cdist",
    "weiszfeld",
]


class Baseline(NamedTuple):
    """A way to compute a case other than robustagg's: its label, its function and its extra-memory estimate.

    ``extra(n, d, itemsize)`` is a deliberately generous bound on the bytes it
    allocates beyond its input, used only to skip it where it would not fit
    the memory budget.
    """

    name: str
    fn: Callable[..., Any]
    extra: Callable[[int, int, int], int]


def median(X: torch.Tensor) -> torch.Tensor:
    return torch.median(X, dim=0).values


def sort_trimmed_mean(X: torch.Tensor, f: int) -> torch.Tensor:
    n = X.shape[0]
    return X.sort(0).values[f : n - f].mean(0)


def sort_meamed(X: torch.Tensor, f: int) -> torch.Tensor:
    """MeaMed the plain-torch way: sort, median, stable argsort of the distances, gather, mean.

    Sorting by value first and then stably by distance keeps the smaller value
    on a tie in distance, as robustagg does (NaN aside).
    """
    n = X.shape[0]
    S = X.sort(0).values
    med = (S[(n - 1) // 2] + S[n // 2]) / 2
    dist = S.sub(med).abs_()
    idx = dist.argsort(dim=0, stable=True)[: n - f]
    del dist
    return S.gather(0, idx).mean(0)


def sq_cdist(X: torch.Tensor) -> torch.Tensor:
    return torch.cdist(X, X) ** 2


def krum_scores(X: torch.Tensor, f: int) -> torch.Tensor:
    """Sum of each row's n - f - 2 smallest squared distances to the other rows."""
    n = X.shape[0]
    D = torch.cdist(X, X) ** 2
    D.fill_diagonal_(math.inf)
    return D.sort(1).values[:, : n - f - 2].sum(1)


def krum(X: torch.Tensor, f: int) -> torch.Tensor:
    return X[krum_scores(X, f).argmin()].clone()  # a tensor of its own, as robustagg returns


def multi_krum(X: torch.Tensor, f: int) -> torch.Tensor:
    best = krum_scores(X, f).argsort(stable=True)[: X.shape[0] - f]
    return X[best].mean(0)


def bulyan(X: torch.Tensor, f: int) -> torch.Tensor:
    """Repeated Krum over the remaining rows on one cdist, then MeaMed's sort/argsort/gather on the selection."""
    n = X.shape[0]
    D = torch.cdist(X, X) ** 2
    D.fill_diagonal_(math.inf)
    remaining = list(range(n))
    selected = []
    for _ in range(n - 2 * f):
        scores = D[remaining][:, remaining].sort(1).values[:, : max(len(remaining) - f - 2, 0)].sum(1)
        selected.append(remaining.pop(int(scores.argmin())))
    theta, beta = n - 2 * f, n - 4 * f
    S = X[selected].sort(0).values
    med = (S[(theta - 1) // 2] + S[theta // 2]) / 2
    keep = (S - med).abs_().argsort(dim=0, stable=True)[:beta]
    return S.gather(0, keep).mean(0)


def weiszfeld(
    X: torch.Tensor, nu: float = GM_NU, tol: float = GM_TOL, max_iter: int = GM_MAX_ITER
) -> tuple[torch.Tensor, int]:
    """Smoothed Weiszfeld in X space with robustagg's start (the mean), nu and stopping rule: ``(z, updates)``.

    The row norms accumulate in float64: in float32 their rounding (~1e-8
    relative) exceeds tol, and the stopping rule would fire late or never.
    """
    z = X.mean(0)
    dist = torch.linalg.vector_norm(X - z, dim=1, dtype=torch.float64)
    objective = float(dist.sum())
    it = 0
    while it < max_iter:
        b = 1.0 / dist.clamp_min(nu)
        z = (b / b.sum()).to(X.dtype) @ X
        dist = torch.linalg.vector_norm(X - z, dim=1, dtype=torch.float64)
        new = float(dist.sum())
        it += 1
        done = abs(objective - new) <= tol * objective
        objective = new
        if done:
            break
    return z, it


def centered_clip(X: torch.Tensor, tau: float = CC_TAU, iters: int = CC_ITERS) -> torch.Tensor:
    n = X.shape[0]
    v = zeros_center(X)
    for _ in range(iters):
        diff = X - v
        scale = (tau / torch.linalg.vector_norm(diff, dim=1)).clamp_max(1.0)
        v = v + (scale / n) @ diff
    return v


def nnm(X: torch.Tensor, f: int) -> torch.Tensor:
    n = X.shape[0]
    D = torch.cdist(X, X) ** 2
    D.fill_diagonal_(-1.0)  # each row first among its own neighbours
    nearest = D.argsort(dim=1, stable=True)[:, : n - f]
    C = torch.zeros(n, n, dtype=X.dtype, device=X.device).scatter_(1, nearest, 1.0 / (n - f))
    return C @ X


def bucketing(X: torch.Tensor, s: int = BUCKET_S) -> torch.Tensor:
    n, d = X.shape
    perm = torch.randperm(n, generator=bucket_generator()).to(X.device)
    full = n - n % s
    out = X[perm[:full]].reshape(-1, s, d).mean(1)
    if full < n:
        out = torch.cat([out, X[perm[full:]].mean(0, keepdim=True)])
    return out


def clip(X: torch.Tensor, c: float) -> torch.Tensor:
    return X * (c / torch.linalg.vector_norm(X, dim=1)).clamp_max(1.0)[:, None]


def arc(X: torch.Tensor, f: int) -> torch.Tensor:
    n = X.shape[0]
    k = 2 * f * (n - f) // n
    norms = torch.linalg.vector_norm(X, dim=1)
    order = norms.argsort(descending=True, stable=True)
    threshold = norms[order[k]]
    top = order[:k]
    scale = torch.ones_like(norms)
    scale[top] = torch.where(norms[top] > threshold, threshold / norms[top], 1.0)
    return X * scale[:, None]


def mda(X: torch.Tensor, f: int) -> torch.Tensor:
    """cdist, then the diameter of every (n - f)-subset."""
    n = X.shape[0]
    D = torch.cdist(X, X)
    best = min(itertools.combinations(range(n), n - f), key=lambda S: float(D[list(S)][:, list(S)].max()))
    return X[list(best)].mean(0)


def monna(X: torch.Tensor, f: int, pivot: int = 0) -> torch.Tensor:
    n = X.shape[0]
    dist = torch.cdist(X, X[pivot : pivot + 1])[:, 0]
    dist[pivot] = -1.0  # the pivot first among its own neighbours
    return X[dist.argsort(stable=True)[: n - f]].mean(0)


def _top_singular(Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest singular value and its right singular vector of a wide matrix Y (torch.linalg.svd)."""
    _, S, Vh = torch.linalg.svd(Y, full_matrices=False)
    return S[0], Vh[0]


def smea(X: torch.Tensor, f: int) -> torch.Tensor:
    """Per (n - f)-subset: centre, the top singular value (exact, not a power step), keep the least."""
    n, k = X.shape[0], X.shape[0] - f

    def top_eigenvalue(S: tuple[int, ...]) -> float:
        Y = X[list(S)]
        return float(_top_singular(Y - Y.mean(0))[0]) ** 2 / k

    best = min(itertools.combinations(range(n), k), key=top_eigenvalue)
    return X[list(best)].mean(0)


def caf(X: torch.Tensor, f: int) -> torch.Tensor:
    """CAF's loop in X space, each eigenpair from the SVD of the weighted deviations."""
    n = X.shape[0]
    c = torch.ones(n, dtype=X.dtype, device=X.device)
    best, best_mu = math.inf, X.mean(0)
    while float(c.sum()) > n - 2 * f:
        mu = (c[:, None] * X).sum(0) / c.sum()
        Y = X - mu
        sigma, v = _top_singular((c / c.sum()).sqrt()[:, None] * Y)
        if float(sigma) ** 2 < best:
            best, best_mu = float(sigma) ** 2, mu
        tau = (Y @ v) ** 2
        c = c * (1 - tau / tau[c > 0].max()).clamp_min(0.0)
    return best_mu


def dnc(X: torch.Tensor, f: int) -> torch.Tensor:
    """Divide-and-Conquer with the SVD of each centred coordinate sample."""
    n, d = X.shape
    generator = draw_generator()
    kept = torch.ones(n, dtype=torch.bool)
    for _ in range(5):
        J = torch.randperm(d, generator=generator)[:DNC_SUBSAMPLE] if DNC_SUBSAMPLE < d else torch.arange(d)
        Z = X[:, J.to(X.device)]
        Zc = Z - Z.mean(0)
        scores = (Zc @ _top_singular(Zc)[1]) ** 2
        kept[scores.argsort(descending=True, stable=True)[:f].cpu()] = False
    return X[kept.to(X.device)].mean(0)


def fltrust(X: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
    trust = torch.nn.functional.cosine_similarity(X, root[None], dim=1).relu()
    scale = torch.linalg.vector_norm(root) / torch.linalg.vector_norm(X, dim=1)
    return ((trust * scale)[:, None] * X).sum(0) / trust.sum()


def _median_norm(norms: torch.Tensor) -> torch.Tensor:
    """The median norm, the mean of the two middle ones for an even count."""
    return torch.quantile(norms, 0.5)


def signguard(X: torch.Tensor) -> torch.Tensor:
    """SignGuard with its defaults: norm filter [0.1 M, 3 M], 2-means on the sign counts of 10% of the columns
    (from row 0 and the row farthest from it, Lloyd steps until no row moves), the mean of both filters'
    rows clipped to M."""
    n, d = X.shape
    norms = torch.linalg.vector_norm(X, dim=1)
    M = _median_norm(norms)
    in_range = (0.1 * M <= norms) & (norms <= 3.0 * M)
    k = math.ceil(0.1 * d)
    Z = X[:, torch.randperm(d, generator=draw_generator())[:k].to(X.device)] if k < d else X
    F = torch.stack([(Z > 0).sum(1), (Z == 0).sum(1), (Z < 0).sum(1)], dim=1).double()
    centres = F[[0, int(((F - F[0]) ** 2).sum(1).argmax())]]
    second = torch.zeros(n, dtype=torch.bool, device=X.device)
    for step in range(100):
        dist = ((F[:, None, :] - centres[None]) ** 2).sum(2)
        moved = dist[:, 1] < dist[:, 0]
        if step > 0 and torch.equal(moved, second):
            break
        second = moved
        for j, members in enumerate((~second, second)):
            if members.any():
                centres[j] = F[members].mean(0)
    larger = second if int(second.sum()) > n - int(second.sum()) else ~second
    chosen = in_range & larger
    return (X[chosen] * (M / norms[chosen]).clamp(max=1.0)[:, None]).mean(0)


def clipped_clustering(X: torch.Tensor) -> torch.Tensor:
    """ClippedClustering: rows clipped to the median norm, average-linkage agglomeration on 1 - cos down to two
    clusters, the mean of the larger's clipped rows."""
    n = X.shape[0]
    norms = torch.linalg.vector_norm(X, dim=1)
    U = X / norms[:, None]
    dist = 1.0 - (U @ U.T).double()
    clusters = [[i] for i in range(n)]
    while len(clusters) > 2:
        pairs = itertools.combinations(range(len(clusters)), 2)
        a, b = min(pairs, key=lambda p: float(dist[clusters[p[0]]][:, clusters[p[1]]].mean()))
        clusters[a] = sorted(clusters[a] + clusters.pop(b))
    larger = max(clusters, key=len)
    clipped = X * (_median_norm(norms) / norms).clamp(max=1.0)[:, None]
    return clipped[larger].mean(0)
