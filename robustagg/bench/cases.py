"""The table of benchmark cases, one :class:`Case` per op in :data:`CASES`: its family (which default grid
and check slice it gets), robustagg's function, the plain-PyTorch way with its memory estimate, byzfl's
adapter where byzfl has the rule, the float64 reference, the rule for f, the smallest n, the parameter
text and the note that the table and markdown print. Everything that depends on the op (the suite, the
memory child, the checks, the notes, the bench/ scripts) reads this table through the accessors below,
so adding an op is one entry in :data:`CASES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import distance, ops, preaggregators, reference, similarity, spectral
from . import baselines, byzfl_peer
from .baselines import Baseline
from .byzfl_peer import Adapter, byzfl_status
from .params import (
    BUCKET_S,
    BUCKET_SEED,
    CC_ITERS,
    CC_TAU,
    DNC_SUBSAMPLE,
    GM_MAX_ITER,
    GM_NU,
    GM_RTOL,
    GM_TOL,
    GM_TRIAL_T,
    bucket_generator,
    catalogue_f,
    clip_c,
    dist_f,
    draw_generator,
    trim_f,
    zeros_center,
)

__all__ = [
    "ALL_OPS",
    "CASES",
    "CATALOGUE_OPS",
    "CHECK_COLUMNS",
    "DISTANCE_OPS",
    "OPS",
    "OP_GROUPS",
    "PREAGGREGATOR_OPS",
    "Case",
    "byzfl_baseline",
    "case",
    "check_op",
    "expand_ops",
    "min_n",
    "op_callable",
    "op_f",
    "op_family",
    "op_params",
    "torch_baseline",
]


def _no_params(f: int | None, n: int, d: int) -> str:
    return ""


def _f_only(f: int | None, n: int, d: int) -> str:
    return f"f={f}"


@dataclass(frozen=True, kw_only=True)
class Case:
    """One op's benchmark case.

    Every function of a case (``ours``, the torch way's, the reference) takes
    X, and f after it when the case has an f rule (``f``, of n). ``check``,
    where given, returns ``(ours, reference)`` on the checked slice in place
    of ``reference``: for a case whose reference depends on our run.
    """

    name: str
    family: str  # "coordinate", "distance" or "catalogue"
    ours: Callable[..., Any]
    torch: Baseline
    reference: Callable[..., torch.Tensor] | None = None
    check: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    f: Callable[[int], int] | None = None
    min_n: int = 1  # Krum and Bulyan need n > 2f + 2 with f >= 0
    params: Callable[[int | None, int, int], str] = _no_params  # (f, n, d): for the JSON and the notes
    byzfl: Adapter | None = None
    preaggregator: bool = False  # an (n, d) result, in the "preaggregators" group
    note: str | None = None  # semantics and how the baselines differ, for the notes of the table and markdown


def _check_geometric_median(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # the reference runs as many Weiszfeld updates as ours did: both stop on a tolerance, which rounding
    # may meet one update apart
    got, info = distance.geometric_median(X, nu=GM_NU, tol=GM_TOL, max_iter=GM_MAX_ITER, return_info=True)
    return got, reference.geometric_median(X, None, GM_NU, 0.0, info.iterations)[0]


# torch.cdist above 25 rows: X**2, -2X and two concatenated (n, d + 2) copies
_cdist_extra = lambda n, d, s: 4 * n * d * s  # noqa: E731

CASES: tuple[Case, ...] = (
    # The coordinate-wise rules.
    Case(
        name="coordinate_median",
        family="coordinate",
        ours=ops.coordinate_median,
        # CPU: a copy of X plus values and indices; CUDA: a sort (values + int64 indices).
        torch=Baseline("torch.median(X, 0)", baselines.median, lambda n, d, s: n * d * (s + 8) + d * (s + 8)),
        reference=reference.coordinate_median,
        byzfl=byzfl_peer.median,
    ),
    Case(
        name="trimmed_mean",
        family="coordinate",
        ours=ops.trimmed_mean,
        f=trim_f,
        params=_f_only,
        torch=Baseline(
            "X.sort(0)[f:n-f].mean(0)", baselines.sort_trimmed_mean, lambda n, d, s: n * d * (s + 8) + 2 * d * s
        ),
        reference=reference.trimmed_mean,
        byzfl=byzfl_peer.trmean,
    ),
    Case(
        name="meamed",
        family="coordinate",
        ours=ops.meamed,
        f=trim_f,
        params=_f_only,
        # measured on CPU: ~19 bytes per float32 element (S, |S - med|, argsort's values + indices, gather)
        torch=Baseline("sort+argsort+gather", baselines.sort_meamed, lambda n, d, s: n * d * (3 * s + 8)),
        reference=reference.meamed,
        byzfl=byzfl_peer.meamed,
    ),
    Case(
        name="mean",
        family="coordinate",
        ours=ops.mean,
        torch=Baseline("X.mean(0)", lambda X: X.mean(0), lambda n, d, s: d * 8),
        reference=reference.mean,
        byzfl=byzfl_peer.average,
    ),
    # The distance rules: all work from row distances plus one mixing pass.
    Case(
        name="pairwise_sq_distances",
        family="distance",
        ours=distance.pairwise_sq_distances,
        torch=Baseline("torch.cdist(X, X)**2", baselines.sq_cdist, _cdist_extra),
        reference=reference.pairwise_sq_distances,
        note="robustagg returns the (n, n) float64 distances (shifted float64 Gram matrix); torch.cdist works in "
        "X's dtype (above 25 rows as ||x||^2 + ||y||^2 - 2 x.y, inaccurate for close rows); byzfl has none",
    ),
    Case(
        name="krum",
        family="distance",
        ours=distance.krum,
        f=dist_f,
        min_n=3,
        params=lambda f, n, d: f"f={f}, m=1",
        torch=Baseline("cdist+sort+argmin", baselines.krum, _cdist_extra),
        reference=reference.krum,
        byzfl=byzfl_peer.krum,
        note="f = floor((n-3)/4), m = 1; robustagg (SPEC) and the torch baseline score a row by the sum of its "
        "n-f-2 smallest squared distances to the others; byzfl.Krum by the mean of its n-f-1 smallest",
    ),
    Case(
        name="multi_krum",
        family="distance",
        ours=distance.multi_krum,
        f=dist_f,
        min_n=3,
        params=lambda f, n, d: f"f={f}, m={n - f}",
        torch=Baseline("cdist+sort+argsort+X[idx].mean", baselines.multi_krum, lambda n, d, s: 5 * n * d * s),
        reference=reference.multi_krum,
        byzfl=byzfl_peer.multi_krum,
        note="m = n - f best rows averaged; byzfl.MultiKrum ranks with n-f-1 neighbours (as its Krum)",
    ),
    Case(
        name="bulyan",
        family="distance",
        ours=distance.bulyan,
        f=dist_f,
        min_n=3,
        params=_f_only,
        torch=Baseline("cdist+Krum loop+sort/argsort/gather", baselines.bulyan, lambda n, d, s: n * d * (4 * s + 24)),
        reference=reference.bulyan,
        note="f = floor((n-3)/4) (n >= 4f+3): n-2f rows by repeated Krum, then per coordinate the mean of the "
        "n-4f selected values nearest their median; byzfl 0.0.11 has no Bulyan",
    ),
    Case(
        name="geometric_median",
        family="distance",
        ours=lambda X: distance.geometric_median(X, nu=GM_NU, tol=GM_TOL, max_iter=GM_MAX_ITER),
        params=lambda f, n, d: f"nu={GM_NU:g}, tol={GM_TOL:g}, max_iter={GM_MAX_ITER}",
        torch=Baseline(
            "Weiszfeld loop in X space", lambda X: baselines.weiszfeld(X)[0], lambda n, d, s: n * d * (s + 16)
        ),
        check=_check_geometric_median,
        byzfl=byzfl_peer.geometric_median,
        note=f"smoothed Weiszfeld from the mean, nu = {GM_NU:g}, stop when the objective sum_i ||x_i - z|| "
        f"changes by <= {GM_TOL:g} relative (at most {GM_MAX_ITER} updates); the torch baseline is the same loop "
        "in X space (norms accumulated in float64 so that the stopping rule sees the objective, not float32 "
        "rounding); byzfl.GeometricMedian starts at 0 and runs exactly T updates: T is the first of "
        f"{', '.join(map(str, GM_TRIAL_T))} whose objective is within {GM_RTOL:g} (relative) of robustagg's, "
        "found untimed per shape (below)",
    ),
    Case(
        name="centered_clip",
        family="distance",
        ours=lambda X: distance.centered_clip(X, zeros_center(X), CC_TAU, CC_ITERS),
        params=lambda f, n, d: f"tau={CC_TAU:g}, iters={CC_ITERS}, center=0",
        torch=Baseline(f"clipping loop ({CC_ITERS} iters)", baselines.centered_clip, lambda n, d, s: 3 * n * d * s),
        reference=lambda X: reference.centered_clip(X, zeros_center(X), CC_TAU, CC_ITERS),
        byzfl=byzfl_peer.centered_clipping,
        note=f"tau = {CC_TAU:g}, {CC_ITERS} iterations from center 0; byzfl.CenteredClipping(L={CC_ITERS}) "
        "is built per call (it keeps its result as the next call's center)",
    ),
    # The pre-aggregators: row distances or row norms plus one mixing pass, an (n, d) result.
    Case(
        name="nnm",
        family="distance",
        preaggregator=True,
        ours=preaggregators.nnm,
        f=dist_f,
        params=_f_only,
        torch=Baseline("cdist+argsort+scatter+matmul", baselines.nnm, _cdist_extra),
        reference=reference.nnm,
        byzfl=byzfl_peer.nnm,
        note="f = floor((n-3)/4): row i becomes the mean of itself and its n-f-1 nearest rows; byzfl.NNM "
        "(cdist + topk) gathers an (n, n-f, d) tensor of neighbours (skipped where that does not fit)",
    ),
    Case(
        name="bucketing",
        family="distance",
        preaggregator=True,
        ours=lambda X: preaggregators.bucketing(X, BUCKET_S, generator=bucket_generator()),
        params=lambda f, n, d: f"s={BUCKET_S}, generator seed {BUCKET_SEED}",
        torch=Baseline("randperm+X[perm].reshape.mean", baselines.bucketing, lambda n, d, s: 2 * n * d * s),
        reference=lambda X: reference.bucketing(X, BUCKET_S, torch.randperm(X.shape[0], generator=bucket_generator())),
        byzfl=byzfl_peer.bucketing,
        note=f"s = {BUCKET_S}, randperm from a generator seeded per call (torch baseline: the same permutation); "
        "byzfl.Bucketing draws from torch's global generator",
    ),
    Case(
        name="clip",
        family="distance",
        preaggregator=True,
        ours=lambda X: preaggregators.clip(X, clip_c(X)),
        params=lambda f, n, d: f"c=sqrt(d)={math.sqrt(d):.4g}",
        torch=Baseline("X * min(1, c/vector_norm)", lambda X: baselines.clip(X, clip_c(X)), lambda n, d, s: n * d * s),
        reference=lambda X: reference.clip(X, clip_c(X)),
        byzfl=byzfl_peer.clipping,
        note="c = sqrt(d), about the median row norm of the standard-normal inputs (about half the rows clipped); "
        "byzfl.Clipping overwrites its input, so it is timed on a clone made in the call, and loops over rows in "
        "Python",
    ),
    Case(
        name="arc",
        family="distance",
        preaggregator=True,
        ours=preaggregators.arc,
        f=dist_f,
        params=lambda f, n, d: f"f={f}, k={2 * f * (n - f) // n}",
        torch=Baseline("vector_norm+argsort+scale", baselines.arc, lambda n, d, s: n * d * s),
        reference=reference.arc,
        byzfl=byzfl_peer.arc,
        note="f = floor((n-3)/4): the k = floor(2f(n-f)/n) largest rows scaled to the (k+1)-th norm; byzfl.ARC "
        "overwrites its input (timed on a clone made in the call) and loops over rows in Python",
    ),
    # The catalogue's rules: row distances (plus a few sampled columns for DnC) and one mixing pass. MDA and
    # SMEA search comb(n, f) subsets: their grid stays at small n.
    Case(
        name="mda",
        family="catalogue",
        ours=distance.mda,
        f=catalogue_f,
        params=_f_only,
        torch=Baseline("cdist+subset loop+X[S].mean", baselines.mda, _cdist_extra),
        reference=lambda X, f: reference.mda(X, f),
        byzfl=byzfl_peer.mda,
        note="f = floor((n-1)/4): the mean of the first (n-f)-subset of least diameter; robustagg searches the "
        "subsets by branch and bound on the float64 distances",
    ),
    Case(
        name="monna",
        family="catalogue",
        ours=distance.monna,
        f=catalogue_f,
        params=lambda f, n, d: f"f={f}, pivot=0",
        torch=Baseline("cdist to the pivot+argsort+X[idx].mean", baselines.monna, lambda n, d, s: 2 * n * d * s),
        reference=lambda X, f: reference.monna(X, f),
        byzfl=byzfl_peer.monna,
        note="f = floor((n-1)/4): the mean of the n-f rows nearest row 0, row 0 included",
    ),
    Case(
        name="smea",
        family="catalogue",
        ours=spectral.smea,
        f=catalogue_f,
        params=_f_only,
        torch=Baseline("subset loop+svd of the centred rows", baselines.smea, lambda n, d, s: 4 * n * d * s),
        reference=lambda X, f: reference.smea(X, f),
        byzfl=byzfl_peer.smea,
        note="f = floor((n-1)/4): the (n-f)-subset whose covariance has the least top eigenvalue; robustagg and "
        "the torch way compute each eigenvalue exactly, byzfl.SMEA with one power-iteration step from a random "
        "vector",
    ),
    Case(
        name="caf",
        family="catalogue",
        ours=spectral.caf,
        f=catalogue_f,
        params=_f_only,
        torch=Baseline("filter loop+svd of the weighted deviations", baselines.caf, lambda n, d, s: 4 * n * d * s),
        reference=lambda X, f: reference.caf(X, f),
        byzfl=byzfl_peer.caf,
        note="f = floor((n-1)/4): the covariance-bound agnostic filter with exact eigenpairs (robustagg from the "
        "distances, the torch way from an SVD); byzfl.CAF takes one power-iteration step per filter round",
    ),
    Case(
        name="dnc",
        family="catalogue",
        ours=lambda X, f: spectral.dnc(X, f, generator=draw_generator()),
        f=catalogue_f,
        params=lambda f, n, d: f"f={f}, iters=5, subsample={min(d, DNC_SUBSAMPLE)}, c=1",
        torch=Baseline("randperm+svd of the sampled columns+X[kept].mean", baselines.dnc, lambda n, d, s: n * d * s),
        reference=lambda X, f: reference.dnc(X, f, generator=draw_generator()),
        note="f = floor((n-1)/4), 5 draws of 10000 columns from a generator seeded per call; the draws "
        "(torch.randperm(d)) cost more than the rest at large d; byzfl has no DnC",
    ),
    Case(
        name="fltrust",
        family="catalogue",
        ours=lambda X: similarity.fltrust(X, X[0]),
        params=lambda f, n, d: "root=X[0]",
        torch=Baseline(
            "cosine_similarity+vector_norm+weighted sum",
            lambda X: baselines.fltrust(X, X[0]),
            lambda n, d, s: n * d * s,
        ),
        reference=lambda X: reference.fltrust(X, X[0]),
        note="the root update is row 0 of X (a view: no copy); trust max(0, cos(x_i, root)), rows rescaled to "
        "||root||; byzfl has no FLTrust",
    ),
    Case(
        name="signguard",
        family="catalogue",
        ours=lambda X: similarity.signguard(X, generator=draw_generator()),
        params=lambda f, n, d: "lower=0.1, upper=3, fraction=0.1",
        torch=Baseline(
            "vector_norm+quantile+randperm+2-means loop+clipped mean", baselines.signguard, lambda n, d, s: n * d * s
        ),
        reference=lambda X: reference.signguard(X, generator=draw_generator()),
        note="norm filter [0.1 M, 3 M] around the median norm M, 2-means on the sign counts of 10% of the "
        "columns (drawn by torch.randperm(d) from a generator seeded per call), the clipped mean of both; byzfl "
        "has no SignGuard",
    ),
    Case(
        name="clipped_clustering",
        family="catalogue",
        ours=similarity.clipped_clustering,
        params=lambda f, n, d: "tau=median norm",
        torch=Baseline(
            "vector_norm+cosine matrix+average-linkage loop+clipped mean",
            baselines.clipped_clustering,
            lambda n, d, s: 2 * n * d * s,
        ),
        reference=lambda X: reference.clipped_clustering(X),
        note="rows clipped to the median norm, two clusters by average linkage on 1 - cos, the mean of the "
        "larger; byzfl has no ClippedClustering",
    ),
)
_BY_NAME: dict[str, Case] = {c.name: c for c in CASES}

# The coordinate-wise rules (the name predates the distance ops; bench/test_bench_ops.py iterates it).
OPS: tuple[str, ...] = tuple(c.name for c in CASES if c.family == "coordinate")
PREAGGREGATOR_OPS: tuple[str, ...] = tuple(c.name for c in CASES if c.preaggregator)
# The distance rules and the pre-aggregators: all work from row distances or row norms plus one mixing pass.
DISTANCE_OPS: tuple[str, ...] = tuple(c.name for c in CASES if c.family == "distance")
# The catalogue's rules (MDA, MoNNA, SMEA, CAF, DnC, FLTrust, SignGuard, ClippedClustering): grids of small n,
# where comb(n, f) stays small.
CATALOGUE_OPS: tuple[str, ...] = tuple(c.name for c in CASES if c.family == "catalogue")
ALL_OPS: tuple[str, ...] = OPS + DISTANCE_OPS + CATALOGUE_OPS
OP_GROUPS: dict[str, tuple[str, ...]] = {
    "all": ALL_OPS,
    "coordinate": OPS,
    "distance": DISTANCE_OPS,
    "preaggregators": PREAGGREGATOR_OPS,
    "catalogue": CATALOGUE_OPS,
}

# Columns of each input compared with the float64 reference (the distance references loop in Python).
CHECK_COLUMNS = {"coordinate": 65536, "distance": 4096, "catalogue": 32}


def case(op: str) -> Case:
    """The benchmark case of ``op``; ValueError naming the ops for an unknown one."""
    try:
        return _BY_NAME[op]
    except KeyError:
        raise ValueError(f"unknown op {op!r}; expected one of {', '.join(ALL_OPS)}") from None


def expand_ops(names: Sequence[str]) -> list[str]:
    """Op and group names (:data:`OP_GROUPS`; commas also separate) as a list of ops, in order, without repeats."""
    out: list[str] = []
    for name in names:
        for part in filter(None, (p.strip() for p in name.split(","))):
            if part in OP_GROUPS:
                out += OP_GROUPS[part]
            elif part in ALL_OPS:
                out.append(part)
            else:
                raise ValueError(
                    f"unknown op or group {part!r}; groups: {', '.join(OP_GROUPS)}; ops: {', '.join(ALL_OPS)}"
                )
    return list(dict.fromkeys(out))


def op_family(op: str) -> str:
    """``"coordinate"`` or ``"distance"``: which default grid and check slice an op gets."""
    return case(op).family


def min_n(op: str) -> int:
    """Smallest n the op's benchmark case accepts."""
    return case(op).min_n


def op_f(op: str, n: int) -> int | None:
    """The f a case uses (None for the ops without one)."""
    rule = case(op).f
    return None if rule is None else rule(n)


def op_params(op: str, n: int, d: int) -> str:
    """The case's parameters at (n, d), for the JSON and the notes."""
    return case(op).params(op_f(op, n), n, d)


def _at(op: str, fn: Callable[..., Any], n: int) -> Callable[[torch.Tensor], Any]:
    """A function of the case as a one-argument function of X at n (f bound)."""
    f = op_f(op, n)
    return fn if f is None else lambda X: fn(X, f)


def op_callable(op: str, n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """robustagg's op as a one-argument function of X."""
    return _at(op, case(op).ours, n)


def torch_baseline(op: str, n: int) -> Baseline:
    """``(label, fn, extra_bytes_estimate(n, d, itemsize))`` of the plain-PyTorch way to compute ``op``.

    The estimate is a deliberately generous bound on the baseline's extra
    memory, used only to skip it where it would not fit the memory budget.
    """
    way = case(op).torch
    return Baseline(way.name, _at(op, way.fn, n), way.extra)


def byzfl_baseline(op: str, n: int, gm_iterations: int | None = None) -> Baseline | None:
    """byzfl 0.0.11's aggregator for ``op`` as ``(label, fn, extra_bytes_estimate)``, or None without byzfl.

    None too where byzfl lacks the rule (see :mod:`.byzfl_peer`);
    ``gm_iterations`` is the geometric median's T (from
    :func:`~robustagg.bench.calibration.calibrate_geometric_median`; byzfl's
    default 3 when None).
    """
    byzfl, _ = byzfl_status()
    adapter = case(op).byzfl
    if byzfl is None or adapter is None:
        return None
    return adapter(byzfl, op_f(op, n), gm_iterations)


_TOL = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (2e-2, 1e-2),
}


def check_op(op: str, X: torch.Tensor, columns: int | None = None) -> str:
    """Compare the op with the float64 reference on the first ``columns`` columns: ``"ok"`` or what differs.

    ``columns`` defaults to :data:`CHECK_COLUMNS` of the op's family.
    """
    c = case(op)
    Xs = X[:, : min(columns or CHECK_COLUMNS[c.family], X.shape[1])].contiguous()
    if c.check is not None:
        got, want = c.check(Xs)
    else:
        got = op_callable(op, X.shape[0])(Xs)
        want = _at(op, c.reference, X.shape[0])(Xs)
    if got.shape != want.shape:
        return f"MISMATCH (shape {tuple(got.shape)}, reference {tuple(want.shape)})"
    rtol, atol = _TOL.get(X.dtype, (1e-5, 1e-6))
    if torch.allclose(got, want.to(got.dtype), rtol=rtol, atol=atol, equal_nan=True):
        return "ok"
    err = (got.double() - want.double()).abs().nan_to_num(nan=float("inf")).max().item()
    return f"MISMATCH (max abs err {err:.3g} on the first {Xs.shape[1]} columns)"
