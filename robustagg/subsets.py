"""Searches over the (n - f)-subsets of the rows, in distance space: MDA's and SMEA's selections.

Both rules pick the first subset, in ``itertools.combinations(range(n), n - f)``
order, that minimises a value computed from the subset's squared distances
alone: its diameter (MDA) or the largest eigenvalue of its covariance (SMEA,
through the subset's centred Gram matrix). Neither reads X; the budget
:data:`MAX_SUBSETS` bounds ``comb(n, f)``, the number of candidates.
"""

from __future__ import annotations

import itertools
import math

import torch

from .coefficients import centered_gram, mean_of
from .validation import check_int

__all__ = [
    "MAX_SUBSETS",
    "check_budget",
    "mda_coefficients",
    "min_diameter_subset",
    "min_spread_subset",
    "smea_coefficients",
]

#: Default largest number of candidate subsets, ``comb(n, f)``, that MDA and SMEA search.
MAX_SUBSETS = 2**20

_BATCH = 4096  # subsets whose eigenvalues are computed in one batched call
_BATCH_VALUES = 2**22  # at most this many distances (32 MB) staged per batch


def check_budget(n: int, f: int, max_subsets: object, rule: str) -> None:
    """ValueError when ``comb(n, f)`` subsets exceed ``max_subsets`` (an int >= 1)."""
    max_subsets = check_int(max_subsets, "max_subsets", rule, low=1)
    count = math.comb(n, f)
    if count > max_subsets:
        raise ValueError(
            f"{rule}: n={n}, f={f} has comb(n, f) = {count} candidate subsets, more than max_subsets={max_subsets}; "
            "pass a larger max_subsets to search them all, or use a rule whose cost does not grow with comb(n, f)"
        )


def min_diameter_subset(D: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the first k-subset of least diameter ``max_{i<j in S} D_ij`` (ties: combinations order).

    Branch and bound: a depth-first walk in combinations order, so the first
    subset reaching a value is the first in that order; a partial subset whose
    diameter already reaches the best one found is pruned, since adding rows
    never lowers a diameter. An infinite D (a non-finite row) is never
    improved on, so when every subset has one the first subset wins.
    """
    A = D.tolist()  # Python floats: the walk reads a few entries at a time, where array indexing costs more
    n = len(A)
    best, best_set = math.inf, list(range(k))
    # Iterative, not recursive: the walk is n - f levels deep.
    chosen: list[int] = []
    diameters = [0.0]  # diameters[t]: the diameter of chosen[:t]
    i = 0
    while True:
        t = len(chosen)
        if t == k or i > n - (k - t):
            if t == k:
                best, best_set = diameters[t], chosen[:]
            if not chosen:
                break
            i = chosen.pop() + 1  # backtrack: the next candidate at the level above
            diameters.pop()
            continue
        row = A[i]
        grown = max(diameters[t], max([row[j] for j in chosen])) if chosen else 0.0
        if grown < best:
            chosen.append(i)
            diameters.append(grown)
        i += 1
    return torch.tensor(best_set)


def min_spread_subset(D: torch.Tensor, finite: torch.Tensor, k: int) -> torch.Tensor:
    r"""Indices of the first k-subset whose covariance has the least top eigenvalue (ties: combinations order).

    The covariance :math:`\frac1k \sum_{i \in S} (x_i - \mu_S)(x_i - \mu_S)^T` has the nonzero eigenvalues
    of :math:`G_S / k`, with :math:`G_S` the subset's centred Gram matrix
    (:func:`robustagg.coefficients.centered_gram`); subsets holding a non-finite row have value +inf.
    """
    n = D.shape[0]
    infinite = ~torch.isfinite(D)  # rows that are not finite, or distances that overflowed
    Df = torch.where(infinite, 0.0, D)
    bad = ~finite
    w = torch.full((k,), 1.0 / k, dtype=torch.float64)
    combos = itertools.combinations(range(n), k)
    best, best_set = math.inf, torch.arange(k)
    batch_size = max(1, min(_BATCH, _BATCH_VALUES // (k * k)))
    while batch := list(itertools.islice(combos, batch_size)):
        S = torch.tensor(batch)
        sub = Df[S.unsqueeze(2), S.unsqueeze(1)]
        top = torch.linalg.eigvalsh(centered_gram(sub, w))[:, -1] / k
        top[bad[S].any(1) | infinite[S.unsqueeze(2), S.unsqueeze(1)].flatten(1).any(1)] = math.inf
        i = int(torch.argmin(top))  # the first minimum
        if float(top[i]) < best:
            best, best_set = float(top[i]), S[i]
    return best_set


def mda_coefficients(D: torch.Tensor, finite: torch.Tensor, f: int) -> torch.Tensor | None:
    """MDA's row coefficients: the mean of the finite rows of the first (n - f)-subset of least diameter, a
    row that is not finite infinitely far from the others (None: no finite row chosen)."""
    both = finite.reshape(-1, 1) & finite.reshape(1, -1)
    D = torch.where(both, D, math.inf).fill_diagonal_(0.0)
    return mean_of(min_diameter_subset(D, D.shape[0] - f), finite)


def smea_coefficients(D: torch.Tensor, finite: torch.Tensor, f: int) -> torch.Tensor | None:
    """SMEA's row coefficients: the mean of the finite rows of the first (n - f)-subset whose covariance has
    the least top eigenvalue (None: no finite row chosen)."""
    return mean_of(min_spread_subset(D, finite, D.shape[0] - f), finite)
