"""Benchmark cases and timing for robustagg's ops: the coordinate-wise rules
(:data:`OPS`), and the distance rules and pre-aggregators (:data:`DISTANCE_OPS`).

Every op is timed on an ``(n, d)`` input against

* one read of the input, ``X.sum(0)`` in the same run: the practical
  bandwidth floor (the "x read" ratio, op time / read time);
* the obvious PyTorch way: ``torch.median(X, dim=0)`` (the lower median, still
  what people use), a ``torch.sort``-based trimmed mean, a sort-based MeaMed in
  plain torch, ``X.mean(0)``; for the distance ops ``torch.cdist`` and short
  plain-torch versions of each rule (``_torch_*`` below, written here and not
  in the library);
* byzfl's aggregators when ``import byzfl`` works (never a requirement); its
  geometric median is run for the number of steps ``T`` that reaches
  robustagg's objective (:func:`calibrate_geometric_median`);
* on CUDA, a device-to-device copy of the same bytes (the "% copy" column: the
  op's bytes moved per second over the copy's).

Timing (:func:`time_fn`): warm up, then the median of the repeats. Inputs
smaller than the rotation target (``max(256 MB, 4 x last-level cache)``, the
L3 on CPU, the L2 on GPU) are cloned and the calls rotate over the copies so
that no timed call finds its input in the cache; an input of 256 MB or more is
used alone. On CUDA each call is bracketed with ``torch.cuda.Event``\\ s.
The op, ``X.sum(0)`` and (CUDA) the copy are timed in turn, call by call
(:func:`time_interleaved`), so that load from other processes on a shared
host weighs on the op and its floor alike; the baselines are timed after.
On CPU the run first pins glibc malloc's mmap threshold (:func:`pin_malloc`)
so that a result's page faults are timed consistently (never, up to 32 MB)
rather than on some calls only.

Memory: each row reports the op's peak *extra* memory, the peak allocated
during one call beyond what existed before it, minus the bytes of the result
itself (``d * itemsize`` for a rule, the ``(n, d)`` rows of a pre-aggregator,
the ``(n, n)`` float64 distances); the design goal is O(d), never a temporary
of size ``n * d``. The figure for the torch baseline is reported alongside.

* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats``,
  minus ``memory_allocated()`` before the call (exact logical bytes, in the
  caching allocator's 512-byte granules).
* CPU: torch's CPU allocator has no statistics, ``tracemalloc`` does not see
  it, and the profiler's ``profile_memory`` turned out not to record the
  allocations made inside these ops. So each shape is measured in a fresh
  child process (:func:`measure_cpu_memory`) that first fixes glibc's mmap
  threshold at 64 KiB (``mallopt(M_MMAP_THRESHOLD)``, which also turns off its
  dynamic raise), so every buffer of 64 KiB or more is a fresh mapping that
  counts in the resident set once touched and leaves it when freed; then, per
  call, resets the peak resident set size (``5 > /proc/self/clear_refs``),
  reads ``VmRSS``, makes the call and reads ``VmHWM``. Peak extra =
  ``VmHWM - VmRSS(before)`` minus the result's pages. robustagg's ops are
  measured first, each after one untimed warm-up call (so one-time costs such
  as the thread pool are not counted), keeping the smaller of two
  measurements; the slow baselines once each. Buffers below 64 KiB that glibc
  serves from already-resident heap are not seen, which is immaterial next
  to the question asked (O(d) or O(n d)). A buffer that is allocated but never
  touched is not counted either (it costs no memory).

The functions here back both ``robustagg bench`` (:mod:`robustagg.cli`) and
the pytest-benchmark suite in ``bench/``.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import distance, ops, preaggregators, reference

__all__ = [
    "OPS",
    "DISTANCE_OPS",
    "ALL_OPS",
    "OP_GROUPS",
    "DTYPES",
    "SuiteConfig",
    "trim_f",
    "dist_f",
    "expand_ops",
    "op_family",
    "min_n",
    "op_params",
    "op_callable",
    "torch_baseline",
    "byzfl_baseline",
    "byzfl_status",
    "gm_objective",
    "calibrate_geometric_median",
    "make_inputs",
    "rotation_count",
    "time_fn",
    "time_interleaved",
    "pin_malloc",
    "measure_cpu_memory",
    "measure_cuda_memory",
    "environment",
    "run_suite",
    "format_table",
    "format_markdown",
    "default_suite",
]

# The coordinate-wise rules (the name predates the distance ops; bench/test_bench_ops.py iterates it).
OPS: tuple[str, ...] = ("coordinate_median", "trimmed_mean", "meamed", "mean")
PREAGGREGATOR_OPS: tuple[str, ...] = ("nnm", "bucketing", "clip", "arc")
# The distance rules and the pre-aggregators: all work from row distances or row norms plus one mixing pass.
DISTANCE_OPS: tuple[str, ...] = (
    "pairwise_sq_distances",
    "krum",
    "multi_krum",
    "bulyan",
    "geometric_median",
    "centered_clip",
) + PREAGGREGATOR_OPS
ALL_OPS: tuple[str, ...] = OPS + DISTANCE_OPS
OP_GROUPS: dict[str, tuple[str, ...]] = {
    "all": ALL_OPS,
    "coordinate": OPS,
    "distance": DISTANCE_OPS,
    "preaggregators": PREAGGREGATOR_OPS,
}

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}

MB = 1 << 20
GB = 1 << 30
ROTATION_MIN_BYTES = 256 * MB
MAX_ROTATION_COPIES = 512

# Parameters of the distance cases.
GM_NU = 1e-6
GM_TOL = 1e-10
GM_MAX_ITER = 200
GM_RTOL = 1e-9  # byzfl's geometric median reaches robustagg's objective F once its own is <= F * (1 + GM_RTOL)
GM_TRIAL_T = (1, 2, 3, 5, 10, 20, 50, 100, 200)
CC_TAU = 1.0
CC_ITERS = 3
BUCKET_S = 2
BUCKET_SEED = 0
# Columns of each input compared with the float64 reference (the distance references loop in Python).
CHECK_COLUMNS = {"coordinate": 65536, "distance": 4096}


# --------------------------------------------------------------------------- cases


def trim_f(n: int) -> int:
    """The number of workers trimmed on each side in the benchmarks: ``floor((n - 1) / 4)``."""
    return (n - 1) // 4


def dist_f(n: int) -> int:
    """f for the distance rules and pre-aggregators: ``floor((n - 3) / 4)`` (0 below n = 3).

    The largest f with Bulyan's ``n >= 4f + 3``; Krum's ``n > 2f + 2``, NNM's
    ``f < n`` and ARC's ``n > 2f`` then hold as well (for n >= 3).
    """
    return max(0, (n - 3) // 4)


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
    if op in OPS:
        return "coordinate"
    if op in DISTANCE_OPS:
        return "distance"
    raise ValueError(f"unknown op {op!r}; expected one of {', '.join(ALL_OPS)}")


def min_n(op: str) -> int:
    """Smallest n the op's benchmark case accepts (Krum and Bulyan need n > 2f + 2 with f >= 0)."""
    return 3 if op in ("krum", "multi_krum", "bulyan") else 1


def op_f(op: str, n: int) -> int | None:
    """The f a case uses (None for the ops without one)."""
    if op in ("trimmed_mean", "meamed"):
        return trim_f(n)
    if op in ("krum", "multi_krum", "bulyan", "nnm", "arc"):
        return dist_f(n)
    return None


def op_params(op: str, n: int, d: int) -> str:
    """The case's parameters at (n, d), for the JSON and the notes."""
    t, g = trim_f(n), dist_f(n)
    return {
        "trimmed_mean": f"f={t}",
        "meamed": f"f={t}",
        "krum": f"f={g}, m=1",
        "multi_krum": f"f={g}, m={n - g}",
        "bulyan": f"f={g}",
        "geometric_median": f"nu={GM_NU:g}, tol={GM_TOL:g}, max_iter={GM_MAX_ITER}",
        "centered_clip": f"tau={CC_TAU:g}, iters={CC_ITERS}, center=0",
        "nnm": f"f={g}",
        "bucketing": f"s={BUCKET_S}, generator seed {BUCKET_SEED}",
        "clip": f"c=sqrt(d)={math.sqrt(d):.4g}",
        "arc": f"f={g}, k={2 * g * (n - g) // n}",
    }.get(op, "")


def _zeros_center(X: torch.Tensor) -> torch.Tensor:
    return torch.zeros(X.shape[1], dtype=X.dtype, device=X.device)


def _bucket_generator() -> torch.Generator:
    # seeded per call: every call (and the torch baseline, and the check) uses the same permutation
    return torch.Generator().manual_seed(BUCKET_SEED)


def _clip_c(X: torch.Tensor) -> float:
    # about the median row norm of standard-normal rows, so that about half the rows are clipped
    return math.sqrt(X.shape[1])


def op_callable(op: str, n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """robustagg's op as a one-argument function of X."""
    f = trim_f(n)
    if op == "coordinate_median":
        return ops.coordinate_median
    if op == "trimmed_mean":
        return lambda X: ops.trimmed_mean(X, f)
    if op == "meamed":
        return lambda X: ops.meamed(X, f)
    if op == "mean":
        return ops.mean
    g = dist_f(n)
    if op == "pairwise_sq_distances":
        return distance.pairwise_sq_distances
    if op == "krum":
        return lambda X: distance.krum(X, g)
    if op == "multi_krum":
        return lambda X: distance.multi_krum(X, g)
    if op == "bulyan":
        return lambda X: distance.bulyan(X, g)
    if op == "geometric_median":
        return lambda X: distance.geometric_median(X, nu=GM_NU, tol=GM_TOL, max_iter=GM_MAX_ITER)
    if op == "centered_clip":
        return lambda X: distance.centered_clip(X, _zeros_center(X), CC_TAU, CC_ITERS)
    if op == "nnm":
        return lambda X: preaggregators.nnm(X, g)
    if op == "bucketing":
        return lambda X: preaggregators.bucketing(X, BUCKET_S, generator=_bucket_generator())
    if op == "clip":
        return lambda X: preaggregators.clip(X, _clip_c(X))
    if op == "arc":
        return lambda X: preaggregators.arc(X, g)
    raise ValueError(f"unknown op {op!r}; expected one of {', '.join(ALL_OPS)}")


def _torch_median(X: torch.Tensor) -> torch.Tensor:
    return torch.median(X, dim=0).values


def _torch_sort_trimmed_mean(X: torch.Tensor, f: int) -> torch.Tensor:
    n = X.shape[0]
    return X.sort(0).values[f : n - f].mean(0)


def _torch_sort_meamed(X: torch.Tensor, f: int) -> torch.Tensor:
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


# Plain-torch baselines of the distance ops: robustagg's semantics (SPEC 3, 4) for finite inputs,
# written the obvious way (torch.cdist for distances, sort/argsort, indexing, matmul).


def _torch_sq_cdist(X: torch.Tensor) -> torch.Tensor:
    return torch.cdist(X, X) ** 2


def _torch_krum_scores(X: torch.Tensor, f: int) -> torch.Tensor:
    """Sum of each row's n - f - 2 smallest squared distances to the other rows."""
    n = X.shape[0]
    D = torch.cdist(X, X) ** 2
    D.fill_diagonal_(math.inf)
    return D.sort(1).values[:, : n - f - 2].sum(1)


def _torch_krum(X: torch.Tensor, f: int) -> torch.Tensor:
    return X[_torch_krum_scores(X, f).argmin()].clone()  # a tensor of its own, as robustagg returns


def _torch_multi_krum(X: torch.Tensor, f: int) -> torch.Tensor:
    best = _torch_krum_scores(X, f).argsort(stable=True)[: X.shape[0] - f]
    return X[best].mean(0)


def _torch_bulyan(X: torch.Tensor, f: int) -> torch.Tensor:
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


def _torch_weiszfeld(
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


def _torch_centered_clip(X: torch.Tensor, tau: float = CC_TAU, iters: int = CC_ITERS) -> torch.Tensor:
    n = X.shape[0]
    v = _zeros_center(X)
    for _ in range(iters):
        diff = X - v
        scale = (tau / torch.linalg.vector_norm(diff, dim=1)).clamp_max(1.0)
        v = v + (scale / n) @ diff
    return v


def _torch_nnm(X: torch.Tensor, f: int) -> torch.Tensor:
    n = X.shape[0]
    D = torch.cdist(X, X) ** 2
    D.fill_diagonal_(-1.0)  # each row first among its own neighbours
    nearest = D.argsort(dim=1, stable=True)[:, : n - f]
    C = torch.zeros(n, n, dtype=X.dtype, device=X.device).scatter_(1, nearest, 1.0 / (n - f))
    return C @ X


def _torch_bucketing(X: torch.Tensor, s: int = BUCKET_S) -> torch.Tensor:
    n, d = X.shape
    perm = torch.randperm(n, generator=_bucket_generator()).to(X.device)
    full = n - n % s
    out = X[perm[:full]].reshape(-1, s, d).mean(1)
    if full < n:
        out = torch.cat([out, X[perm[full:]].mean(0, keepdim=True)])
    return out


def _torch_clip(X: torch.Tensor, c: float) -> torch.Tensor:
    return X * (c / torch.linalg.vector_norm(X, dim=1)).clamp_max(1.0)[:, None]


def _torch_arc(X: torch.Tensor, f: int) -> torch.Tensor:
    n = X.shape[0]
    k = 2 * f * (n - f) // n
    norms = torch.linalg.vector_norm(X, dim=1)
    order = norms.argsort(descending=True, stable=True)
    threshold = norms[order[k]]
    top = order[:k]
    scale = torch.ones_like(norms)
    scale[top] = torch.where(norms[top] > threshold, threshold / norms[top], 1.0)
    return X * scale[:, None]


def torch_baseline(op: str, n: int) -> tuple[str, Callable[[torch.Tensor], torch.Tensor], Callable[[int, int, int], int]]:
    """``(label, fn, extra_bytes_estimate(n, d, itemsize))`` of the plain-PyTorch way to compute ``op``.

    The estimate is a deliberately generous bound on the baseline's extra
    memory, used only to skip it where it would not fit the memory budget.
    """
    f = trim_f(n)
    if op == "coordinate_median":
        # CPU: a copy of X plus values and indices; CUDA: a sort (values + int64 indices).
        return "torch.median(X, 0)", _torch_median, lambda n, d, s: n * d * (s + 8) + d * (s + 8)
    if op == "trimmed_mean":
        return "X.sort(0)[f:n-f].mean(0)", lambda X: _torch_sort_trimmed_mean(X, f), lambda n, d, s: n * d * (s + 8) + 2 * d * s
    if op == "meamed":
        # measured on CPU: ~19 bytes per float32 element (S, |S - med|, argsort's values + indices, gather)
        return "sort+argsort+gather", lambda X: _torch_sort_meamed(X, f), lambda n, d, s: n * d * (3 * s + 8)
    if op == "mean":
        return "X.mean(0)", lambda X: X.mean(0), lambda n, d, s: d * 8
    g = dist_f(n)
    # torch.cdist above 25 rows: X**2, -2X and two concatenated (n, d + 2) copies
    cdist_est = lambda n, d, s: 4 * n * d * s  # noqa: E731
    if op == "pairwise_sq_distances":
        return "torch.cdist(X, X)**2", _torch_sq_cdist, cdist_est
    if op == "krum":
        return "cdist+sort+argmin", lambda X: _torch_krum(X, g), cdist_est
    if op == "multi_krum":
        return "cdist+sort+argsort+X[idx].mean", lambda X: _torch_multi_krum(X, g), lambda n, d, s: 5 * n * d * s
    if op == "bulyan":
        return "cdist+Krum loop+sort/argsort/gather", lambda X: _torch_bulyan(X, g), lambda n, d, s: n * d * (4 * s + 24)
    if op == "geometric_median":
        return "Weiszfeld loop in X space", lambda X: _torch_weiszfeld(X)[0], lambda n, d, s: n * d * (s + 16)
    if op == "centered_clip":
        return f"clipping loop ({CC_ITERS} iters)", _torch_centered_clip, lambda n, d, s: 3 * n * d * s
    if op == "nnm":
        return "cdist+argsort+scatter+matmul", lambda X: _torch_nnm(X, g), cdist_est
    if op == "bucketing":
        return "randperm+X[perm].reshape.mean", _torch_bucketing, lambda n, d, s: 2 * n * d * s
    if op == "clip":
        return "X * min(1, c/vector_norm)", lambda X: _torch_clip(X, _clip_c(X)), lambda n, d, s: n * d * s
    if op == "arc":
        return "vector_norm+argsort+scale", lambda X: _torch_arc(X, g), lambda n, d, s: n * d * s
    raise ValueError(f"unknown op {op!r}")


_BYZFL: dict[str, Any] = {}


def byzfl_status() -> tuple[Any, str]:
    """``(module or None, description)`` of byzfl here; imported once."""
    if "status" not in _BYZFL:
        try:
            import byzfl  # type: ignore[import-not-found]

            version = getattr(byzfl, "__version__", None)
            if version is None:
                try:
                    from importlib.metadata import version as _v

                    version = _v("byzfl")
                except Exception:  # noqa: BLE001
                    version = "?"
            _BYZFL["status"] = (byzfl, f"byzfl {version}")
        except Exception as exc:  # noqa: BLE001  (ImportError, or a missing dependency of byzfl's own)
            _BYZFL["status"] = (None, f"byzfl not importable ({type(exc).__name__}: {exc})")
    return _BYZFL["status"]


def byzfl_baseline(
    op: str, n: int, gm_iterations: int | None = None
) -> tuple[str, Callable[[torch.Tensor], torch.Tensor], Callable[[int, int, int], int]] | None:
    """byzfl 0.0.11's aggregator for ``op`` as ``(label, fn, extra_bytes_estimate)``, or None without byzfl.

    byzfl works on float32 (it calls ``.float()``), its Median is
    ``torch.quantile`` (which some torch versions refuse above 2**24
    elements: the failure is then reported as a skipped baseline), TrMean
    sorts, Meamed is quantile + topk + take. For the distance ops see
    :data:`DISTANCE_NOTES`; ``gm_iterations`` is the geometric median's T
    (from :func:`calibrate_geometric_median`; byzfl's default 3 when None).
    It has no Bulyan and no pairwise-distance function.
    """
    byzfl, _ = byzfl_status()
    if byzfl is None:
        return None
    f = trim_f(n)
    est = lambda n, d, s: n * d * (4 + 8) * 3  # noqa: E731
    if op == "coordinate_median":
        return "byzfl.Median", byzfl.Median(), est
    if op == "trimmed_mean":
        return f"byzfl.TrMean(f={f})", byzfl.TrMean(f=f), est
    if op == "meamed":
        return f"byzfl.Meamed(f={f})", byzfl.Meamed(f=f), est
    if op == "mean":
        return "byzfl.Average", byzfl.Average(), lambda n, d, s: n * d * 4 + d * 8

    def copies(k: int) -> Callable[[int, int, int], int]:
        # k float32 (n, d) temporaries, plus byzfl's float32 copy of an input of another dtype
        return lambda n, d, s: (k + (s != 4)) * n * d * 4

    g = dist_f(n)
    if op == "krum":
        return f"byzfl.Krum(f={g})", byzfl.Krum(f=g), copies(4)
    if op == "multi_krum":
        return f"byzfl.MultiKrum(f={g})", byzfl.MultiKrum(f=g), copies(5)
    if op == "geometric_median":
        T = 3 if gm_iterations is None else gm_iterations
        return f"byzfl.GeometricMedian(nu={GM_NU:g}, T={T})", byzfl.GeometricMedian(nu=GM_NU, T=T), copies(3)
    if op == "centered_clip":
        # a fresh object per call: CenteredClipping keeps its result as the next call's center
        return (
            f"byzfl.CenteredClipping(L={CC_ITERS}, tau={CC_TAU:g})",
            lambda X: byzfl.CenteredClipping(L=CC_ITERS, tau=CC_TAU)(X),
            copies(3),
        )
    if op == "nnm":
        # cdist + topk, then an (n, n - f, d) gather of the neighbours
        return f"byzfl.NNM(f={g})", byzfl.NNM(f=g), lambda n, d, s: (n - g + 4 + (s != 4)) * n * d * 4
    if op == "bucketing":
        return f"byzfl.Bucketing(s={BUCKET_S})", byzfl.Bucketing(s=BUCKET_S), copies(2)
    # Clipping and ARC overwrite their input's rows: each call gets a clone (timed with it)
    if op == "clip":
        return "byzfl.Clipping(c=sqrt(d)) on a clone", lambda X: byzfl.Clipping(c=_clip_c(X))(X.clone()), copies(1)
    if op == "arc":
        return f"byzfl.ARC(f={g}) on a clone", lambda X: byzfl.ARC(f=g)(X.clone()), copies(1)
    return None


# Semantics of each distance case and how its baselines differ (for the notes of the table and markdown).
DISTANCE_NOTES: dict[str, str] = {
    "pairwise_sq_distances": "robustagg returns the (n, n) float64 distances (shifted float64 Gram matrix); "
    "torch.cdist works in X's dtype (above 25 rows as ||x||^2 + ||y||^2 - 2 x.y, inaccurate for close rows); byzfl has none",
    "krum": "f = floor((n-3)/4), m = 1; robustagg (SPEC) and the torch baseline score a row by the sum of its n-f-2 "
    "smallest squared distances to the others; byzfl.Krum by the mean of its n-f-1 smallest",
    "multi_krum": "m = n - f best rows averaged; byzfl.MultiKrum ranks with n-f-1 neighbours (as its Krum)",
    "bulyan": "f = floor((n-3)/4) (n >= 4f+3): n-2f rows by repeated Krum, then per coordinate the mean of the "
    "n-4f selected values nearest their median; byzfl 0.0.11 has no Bulyan",
    "geometric_median": f"smoothed Weiszfeld from the mean, nu = {GM_NU:g}, stop when the objective sum_i ||x_i - z|| "
    f"changes by <= {GM_TOL:g} relative (at most {GM_MAX_ITER} updates); the torch baseline is the same loop in X space "
    "(norms accumulated in float64 so that the stopping rule sees the objective, not float32 rounding); "
    f"byzfl.GeometricMedian starts at 0 and runs exactly T updates: T is the first of {', '.join(map(str, GM_TRIAL_T))} "
    f"whose objective is within {GM_RTOL:g} (relative) of robustagg's, found untimed per shape (below)",
    "centered_clip": f"tau = {CC_TAU:g}, {CC_ITERS} iterations from center 0; byzfl.CenteredClipping(L={CC_ITERS}) "
    "is built per call (it keeps its result as the next call's center)",
    "nnm": "f = floor((n-3)/4): row i becomes the mean of itself and its n-f-1 nearest rows; byzfl.NNM (cdist + topk) "
    "gathers an (n, n-f, d) tensor of neighbours (skipped where that does not fit)",
    "bucketing": f"s = {BUCKET_S}, randperm from a generator seeded per call (torch baseline: the same permutation); "
    "byzfl.Bucketing draws from torch's global generator",
    "clip": "c = sqrt(d), about the median row norm of the standard-normal inputs (about half the rows clipped); "
    "byzfl.Clipping overwrites its input, so it is timed on a clone made in the call, and loops over rows in Python",
    "arc": "f = floor((n-3)/4): the k = floor(2f(n-f)/n) largest rows scaled to the (k+1)-th norm; byzfl.ARC "
    "overwrites its input (timed on a clone made in the call) and loops over rows in Python",
}


def gm_objective(X: torch.Tensor, z: torch.Tensor) -> float:
    """``sum_i ||x_i - z||`` in float64, a block of columns at a time (no ``n x d`` float64 temporary)."""
    n, d = X.shape
    sq = torch.zeros(n, dtype=torch.float64, device=X.device)
    step = 1 << 16
    for c0 in range(0, d, step):
        diff = X[:, c0 : c0 + step].double() - z[c0 : c0 + step].to(device=X.device, dtype=torch.float64)
        sq += (diff * diff).sum(1)
    return float(sq.sqrt().sum())


def calibrate_geometric_median(X: torch.Tensor, torch_loop: bool = True, byzfl_search: bool = True) -> dict[str, Any]:
    """Untimed, once per input: how far each geometric median goes to reach robustagg's objective.

    Returns robustagg's Weiszfeld ``iterations`` and ``objective`` (evaluated
    by :func:`gm_objective` on its returned z, like the others); with
    ``torch_loop``, the plain-torch loop's ``torch_iterations`` and
    ``torch_objective``; with ``byzfl_search`` and byzfl importable,
    ``byzfl_T``: the first T in :data:`GM_TRIAL_T` for which byzfl's
    objective is at most robustagg's times ``1 + GM_RTOL`` (below it counts:
    robustagg stops on its tolerance, not at the optimum), or the largest T
    with ``byzfl_reached`` False; and ``byzfl_objective`` at that T. The
    search costs the sum of the T tried in byzfl updates.
    """
    z, info = distance.geometric_median(X, nu=GM_NU, tol=GM_TOL, max_iter=GM_MAX_ITER, return_info=True)
    target = gm_objective(X, z)
    out: dict[str, Any] = {"iterations": info.iterations, "converged": info.converged, "objective": target}
    if torch_loop:
        zt, it = _torch_weiszfeld(X)
        out.update(torch_iterations=it, torch_objective=gm_objective(X, zt))
    byzfl, _ = byzfl_status()
    if byzfl_search and byzfl is not None:
        for T in GM_TRIAL_T:
            F = gm_objective(X, byzfl.GeometricMedian(nu=GM_NU, T=T)(X))
            if F <= target * (1 + GM_RTOL):
                break
        out.update(byzfl_T=T, byzfl_objective=F, byzfl_reached=F <= target * (1 + GM_RTOL))
    return out


def _reference(op: str, n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    f, g = trim_f(n), dist_f(n)
    return {
        "coordinate_median": reference.coordinate_median,
        "trimmed_mean": lambda X: reference.trimmed_mean(X, f),
        "meamed": lambda X: reference.meamed(X, f),
        "mean": reference.mean,
        "pairwise_sq_distances": reference.pairwise_sq_distances,
        "krum": lambda X: reference.krum(X, g),
        "multi_krum": lambda X: reference.multi_krum(X, g),
        "bulyan": lambda X: reference.bulyan(X, g),
        "centered_clip": lambda X: reference.centered_clip(X, _zeros_center(X), CC_TAU, CC_ITERS),
        "nnm": lambda X: reference.nnm(X, g),
        "bucketing": lambda X: reference.bucketing(X, BUCKET_S, torch.randperm(n, generator=_bucket_generator())),
        "clip": lambda X: reference.clip(X, _clip_c(X)),
        "arc": lambda X: reference.arc(X, g),
    }[op]


_TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-6), torch.float16: (1e-2, 1e-3), torch.bfloat16: (2e-2, 1e-2)}


def check_op(op: str, X: torch.Tensor, columns: int | None = None) -> str:
    """Compare the op with the float64 reference on the first ``columns`` columns: ``"ok"`` or what differs.

    ``columns`` defaults to :data:`CHECK_COLUMNS` of the op's family. The
    geometric median is compared with the reference run for the same number
    of Weiszfeld updates (both stop on a tolerance, which rounding may meet
    one update apart).
    """
    Xs = X[:, : min(columns or CHECK_COLUMNS[op_family(op)], X.shape[1])].contiguous()
    if op == "geometric_median":
        got, info = distance.geometric_median(Xs, nu=GM_NU, tol=GM_TOL, max_iter=GM_MAX_ITER, return_info=True)
        want = reference.geometric_median(Xs, None, GM_NU, 0.0, info.iterations)[0]
    else:
        got = op_callable(op, X.shape[0])(Xs)
        want = _reference(op, X.shape[0])(Xs)
    if got.shape != want.shape:
        return f"MISMATCH (shape {tuple(got.shape)}, reference {tuple(want.shape)})"
    rtol, atol = _TOL.get(X.dtype, (1e-5, 1e-6))
    if torch.allclose(got, want.to(got.dtype), rtol=rtol, atol=atol, equal_nan=True):
        return "ok"
    err = (got.double() - want.double()).abs().nan_to_num(nan=float("inf")).max().item()
    return f"MISMATCH (max abs err {err:.3g} on the first {Xs.shape[1]} columns)"


# --------------------------------------------------------------------------- memory / caches


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cpu_available_bytes() -> int:
    avail = _meminfo("MemAvailable")
    if avail is None:
        try:
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError):
            avail = 8 * GB
    return avail


def cpu_llc_bytes() -> int:
    """Size of the largest CPU cache level, from sysfs (32 MB when unknown)."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(base):
            try:
                with open(os.path.join(base, entry, "size")) as fh:
                    text = fh.read().strip()
            except OSError:
                continue
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
            num = text[:-1] if text[-1:].isalpha() else text
            best = max(best, int(num) * mult)
    except (OSError, ValueError):
        pass
    return best or 32 * MB


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_bytes(device: torch.device) -> int:
    """Last-level cache that the rotation must defeat: L3 on CPU, L2 on a GPU."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * MB))
    return cpu_llc_bytes()


def rotation_count(input_bytes: int, device: torch.device, budget_bytes: int) -> int:
    """How many copies of an input to rotate over.

    Enough that together they exceed ``max(256 MB, 4 x cache)``; one when the
    input alone is at least 256 MB; never more than the budget holds (at least
    one) nor more than 512 copies.
    """
    if input_bytes >= ROTATION_MIN_BYTES:
        return 1
    target = max(ROTATION_MIN_BYTES, 4 * cache_bytes(device))
    want = math.ceil(target / max(input_bytes, 1))
    fit = max(1, budget_bytes // max(input_bytes, 1))
    return int(max(1, min(want, fit, MAX_ROTATION_COPIES)))


def make_inputs(n: int, d: int, dtype: torch.dtype, device: str | torch.device, copies: int = 1, seed: int = 0) -> list[torch.Tensor]:
    """``copies`` distinct ``(n, d)`` tensors holding the same standard-normal values."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    X = torch.randn(n, d, generator=gen, device=device, dtype=torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)
    X = X.to(dtype)
    return [X] + [X.clone() for _ in range(copies - 1)]


# --------------------------------------------------------------------------- timing

_MALLOC_STATE = {"pinned": False}


def pin_malloc() -> str:
    """Make glibc malloc reuse freed buffers of up to 32 MB instead of page-faulting fresh ones.

    By default glibc raises its mmap threshold dynamically and trims the heap,
    so whether a ``(d,)`` result comes from warm heap pages or from a fresh
    mapping that page-faults on first touch depends on the allocation
    history: the same call then takes either its compute time or that plus
    thousands of page faults (about 2-8 us per 4 KB page in a VM: 2-8 ms for a
    4 MB result, as long as reading ~30 MB). Fixing the threshold at its
    maximum (32 MB) and switching trimming off gives every timed function the
    warm steady state that default glibc reaches most of the time; buffers
    above 32 MB (e.g. a sort's ``n x d`` temporaries) are still fresh mappings,
    as they always are with default glibc. Process-wide and irreversible;
    returns a description for the JSON.
    """
    if _MALLOC_STATE["pinned"]:
        return _MALLOC_STATE["desc"]
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        ok = libc.mallopt(M_MMAP_THRESHOLD, 32 * MB) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
        desc = "glibc mallopt: mmap threshold 32 MB, trim off" if ok else "glibc default (mallopt refused)"
    except (OSError, AttributeError):
        desc = "allocator default (no glibc)"
    _MALLOC_STATE.update(pinned=True, desc=desc)
    return desc



def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[torch.Tensor], Any],
    inputs: Sequence[torch.Tensor],
    device: str | torch.device,
    repeats: int = 10,
    warmup: int = 2,
    max_seconds: float | None = None,
    min_repeats: int = 3,
) -> dict[str, Any]:
    """Time ``fn`` on ``inputs`` and return ``{"ms": median, "min_ms", "repeats", "times_ms"}``.

    Calls rotate over ``inputs`` (pass several copies of an input smaller
    than the caches; see :func:`rotation_count`), so consecutive calls never
    reuse a cache-resident input. ``warmup`` untimed calls first (at least
    one); with ``max_seconds``, fewer repeats (not below ``min_repeats``) and
    warm-ups are made when one call is slow. On CUDA each call is bracketed by
    CUDA events; on CPU by ``time.perf_counter``.
    """
    return time_interleaved([fn], inputs, device, repeats, warmup, max_seconds, min_repeats)[0]


def time_interleaved(
    fns: Sequence[Callable[[torch.Tensor], Any]],
    inputs: Sequence[torch.Tensor],
    device: str | torch.device,
    repeats: int = 10,
    warmup: int = 2,
    max_seconds: float | None = None,
    min_repeats: int = 3,
) -> list[dict[str, Any]]:
    """:func:`time_fn` for several functions at once, their calls taken in turn.

    Round ``r`` times one call of each function, so a change in the machine's
    load (other processes on a shared host) hits all of them alike: the
    ratio of their medians is what to quote. The calls share one rotation
    over ``inputs``. ``max_seconds`` applies to all the functions together.
    """
    device = torch.device(device)
    inputs = list(inputs)
    if not inputs:
        raise ValueError("time_fn: no inputs")
    k = len(inputs)
    counter = 0

    def next_input() -> torch.Tensor:
        nonlocal counter
        x = inputs[counter % k]
        counter += 1
        return x

    first = [math.inf] * len(fns)
    for i, fn in enumerate(fns):
        for w in range(max(1, warmup)):
            x = next_input()
            _sync(device)
            t0 = time.perf_counter()
            out = fn(x)
            _sync(device)
            dt = time.perf_counter() - t0
            del out
            first[i] = min(first[i], dt)
            if max_seconds is not None and dt * (w + 1) >= max_seconds / 4:
                break
    n_rep = max(1, repeats)
    per_round = sum(first)
    if max_seconds is not None and per_round > 0:
        n_rep = max(min(repeats, min_repeats), min(repeats, int(max_seconds / per_round)))
    times: list[list[float]] = [[] for _ in fns]
    if device.type == "cuda":
        events = [
            [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in fns] for _ in range(n_rep)
        ]
        _sync(device)
        for r in range(n_rep):
            for i, fn in enumerate(fns):
                start, end = events[r][i]
                x = next_input()
                start.record()
                out = fn(x)
                end.record()
                del out
        _sync(device)
        for r in range(n_rep):
            for i in range(len(fns)):
                start, end = events[r][i]
                times[i].append(start.elapsed_time(end))
    else:
        for _ in range(n_rep):
            for i, fn in enumerate(fns):
                x = next_input()
                t0 = time.perf_counter()
                out = fn(x)
                t1 = time.perf_counter()
                del out
                times[i].append((t1 - t0) * 1e3)
    return [{"ms": statistics.median(t), "min_ms": min(t), "repeats": n_rep, "times_ms": t} for t in times]


# --------------------------------------------------------------------------- memory measurement


def _out_bytes(out: Any) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, (tuple, list)):
        return sum(_out_bytes(o) for o in out)
    return 0


def measure_cuda_memory(fn: Callable[[torch.Tensor], Any], X: torch.Tensor) -> dict[str, int]:
    """Peak bytes allocated by one call of ``fn(X)`` on CUDA (result included) and the result's bytes."""
    out = fn(X)  # warm-up (lazy one-time buffers)
    del out
    torch.cuda.synchronize(X.device)
    base = torch.cuda.memory_allocated(X.device)
    torch.cuda.reset_peak_memory_stats(X.device)
    out = fn(X)
    torch.cuda.synchronize(X.device)
    peak = torch.cuda.max_memory_allocated(X.device) - base
    ob = _out_bytes(out)
    del out
    return {"peak_bytes": int(peak), "out_bytes": int(ob), "extra_bytes": int(max(0, peak - ob))}


def _fn_for(kind: str, op: str, n: int, gm_iterations: int | None = None) -> Callable[[torch.Tensor], Any] | None:
    if kind == "op":
        return op_callable(op, n)
    if kind == "torch":
        return torch_baseline(op, n)[1]
    if kind == "byzfl":
        b = byzfl_baseline(op, n, gm_iterations)
        return None if b is None else b[1]
    if kind == "read":
        return lambda X: X.sum(0)
    raise ValueError(kind)


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _cpu_memory_child(spec_json: str) -> None:
    """Child side of :func:`measure_cpu_memory`: prints one JSON object on stdout."""
    spec = json.loads(spec_json)
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_MMAP_THRESHOLD = -3
        libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    except OSError:
        pass
    torch.set_num_threads(int(spec["threads"]))
    n, d = int(spec["n"]), int(spec["d"])
    X = make_inputs(n, d, DTYPES[spec["dtype"]], "cpu", copies=1, seed=int(spec.get("seed", 0)))[0]
    if any(kind == "byzfl" for _, kind, _ in spec["calls"]):
        byzfl_status()
    # the modules imported so far (byzfl's are many) stay out of the collections below: each took ~0.2 s
    gc.freeze()
    results: dict[str, Any] = {}
    for key, kind, op in spec["calls"]:
        fn = _fn_for(kind, op, n, spec.get("gm_iterations"))
        if fn is None:
            continue
        try:
            # robustagg's ops (cheap): one warm-up call and the smaller of two measurements;
            # the slow baselines: one measurement (the ops' warm-up already started the thread pool)
            tries = 2 if kind in ("op", "read") else 1
            if tries == 2:
                out = fn(X)
                del out
                gc.collect()
            best = None
            for _ in range(tries):
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
                base = _status_bytes("VmRSS")
                out = fn(X)
                peak = _status_bytes("VmHWM") - base
                ob = _out_bytes(out)
                del out
                gc.collect()
                best = peak if best is None else min(best, peak)
            page = os.sysconf("SC_PAGE_SIZE")
            ob_pages = -(-ob // page) * page  # the result occupies whole pages
            results[key] = {"peak_bytes": int(best), "out_bytes": int(ob), "extra_bytes": int(max(0, best - ob_pages))}
        except Exception as exc:  # noqa: BLE001
            results[key] = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(results) + "\n")


def measure_cpu_memory(
    n: int,
    d: int,
    dtype: str,
    calls: Sequence[tuple[str, str, str]],
    threads: int | None = None,
    timeout: float = 1800,
    gm_iterations: int | None = None,
) -> dict[str, Any]:
    """Peak extra CPU memory of several calls on one ``(n, d)`` input, measured in a fresh process.

    ``calls`` holds ``(key, kind, op)`` with kind ``op``, ``torch``, ``byzfl`` or
    ``read``; ``gm_iterations`` is byzfl's geometric-median T. Returns
    ``{key: {"peak_bytes", "out_bytes", "extra_bytes"}}`` (or
    ``{"error": ...}``); the method is described in the module docstring.
    """
    spec = {
        "n": n,
        "d": d,
        "dtype": dtype,
        "threads": threads or torch.get_num_threads(),
        "calls": list(calls),
        "gm_iterations": gm_iterations,
    }
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    code = "import sys; from robustagg.bench import _cpu_memory_child; _cpu_memory_child(sys.argv[1])"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {key: {"error": "memory child timed out"} for key, _, _ in calls}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {key: {"error": f"memory child failed: {tail[0]}"} for key, _, _ in calls}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- environment


def environment(devices: Sequence[str]) -> dict[str, Any]:
    """What a result depends on: versions, ISA, device names, threads."""
    from . import __version__

    env: dict[str, Any] = {
        "robustagg": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_kernel_isa": ops.cpu_kernel_isa(),
        "cuda_kernels_built": ops.cuda_kernels_built(),
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_llc_bytes": cpu_llc_bytes(),
        "mem_total_bytes": _meminfo("MemTotal"),
        "byzfl": byzfl_status()[1],
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
    }
    if "cuda" in devices and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["cuda_device"] = torch.cuda.get_device_name(0)
        env["cuda_version"] = torch.version.cuda
        env["cuda_memory_bytes"] = int(props.total_memory)
        env["cuda_l2_bytes"] = int(getattr(props, "L2_cache_size", 0))
    return env


# --------------------------------------------------------------------------- the suite


@dataclass
class SuiteConfig:
    """One benchmark run: the grid and the timing settings."""

    devices: list[str] = field(default_factory=lambda: ["cpu"])
    ops: list[str] = field(default_factory=lambda: list(ALL_OPS))
    ns: dict[str, list[int]] = field(default_factory=dict)  # per device
    ds: dict[str, list[int]] = field(default_factory=dict)  # per device
    # per op family ("coordinate", "distance"), per device: (ns, ds) used instead of ns / ds
    family_grids: dict[str, dict[str, tuple[list[int], list[int]]]] = field(default_factory=dict)
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    repeats: int = 10
    warmup: int = 2
    max_seconds: float = 10.0  # per timed function: fewer repeats (>= 3) for slow baselines
    baselines: bool = True
    byzfl: bool = True
    memory: bool = True
    check: bool = True
    mem_budget_bytes: dict[str, int] = field(default_factory=dict)  # per device
    seed: int = 0
    quick: bool = False
    pin_malloc: bool = True  # see pin_malloc()

    def grid(self, family: str, device: str) -> tuple[list[int], list[int]]:
        """``(ns, ds)`` for an op family on a device."""
        return self.family_grids.get(family, {}).get(device) or (self.ns[device], self.ds[device])


def default_suite(device: str, quick: bool, family: str = "coordinate") -> tuple[list[int], list[int]]:
    """``(ns, ds)`` of the default grid for ``device`` and an op family (:func:`op_family`).

    The distance family's CPU grid is the one its performance targets are
    stated on (n = 10, 25, 64; d = 1M, 4M); its quick grid is one case,
    n = 25 at d = 100k, since its baselines (cdist, byzfl's NNM) take
    seconds per call at d = 1M and --quick must stay well under a minute.
    """
    if device == "cuda":
        return ([8, 25], [16_000_000]) if quick else ([8, 25, 64, 128], [1_000_000, 16_000_000, 64_000_000])
    if family == "distance":
        return ([25], [100_000]) if quick else ([10, 25, 64], [1_000_000, 4_000_000])
    return ([8, 25], [1_000_000]) if quick else ([8, 25, 32, 64, 128], [4_000_000])


def default_budget(device: str) -> int:
    """Memory a run may use: 60% of available RAM on CPU, 80% of free GPU memory on CUDA."""
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(0.8 * free)
    return int(0.6 * cpu_available_bytes())


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt_d(d: int) -> str:
    if d >= 1_000_000 and d % 1_000_000 == 0:
        return f"{d // 1_000_000}M"
    if d >= 1000 and d % 1000 == 0:
        return f"{d // 1000}k"
    return str(d)


def _mb(b: int | None) -> str:
    if b is None:
        return "-"
    return f"{b / MB:.1f}"


def _plan_baselines(
    cfg: SuiteConfig, ops_: Sequence[str], n: int, d: int, itemsize: int, resident: int, budget: int
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per op, per kind (torch / byzfl): ``{"name", "fn"}``, or ``{"name", "skipped"}`` when it would not fit."""
    plan: dict[str, dict[str, dict[str, Any]]] = {}
    for op in ops_:
        p: dict[str, dict[str, Any]] = {}
        if cfg.baselines:
            getters = [("torch", torch_baseline)] + ([("byzfl", byzfl_baseline)] if cfg.byzfl else [])
            for kind, getter in getters:
                b = getter(op, n)
                if b is None:
                    continue
                label, fn, est = b
                need = est(n, d, itemsize)
                if resident + need > budget:
                    p[kind] = {"name": label, "skipped": f"needs ~{need / GB:.1f} GB extra, budget {budget / GB:.1f} GB"}
                else:
                    p[kind] = {"name": label, "fn": fn}
        plan[op] = p
    return plan


def _calibrate_gm(X: torch.Tensor, n: int, plan: dict[str, dict[str, Any]], progress: Callable[[str], None]) -> dict[str, Any]:
    """:func:`calibrate_geometric_median` for the planned baselines; sets byzfl's entry to the T found."""
    with_torch = "fn" in plan.get("torch", {})
    with_byzfl = "fn" in plan.get("byzfl", {})
    t0 = time.perf_counter()
    try:
        gm = calibrate_geometric_median(X, torch_loop=with_torch, byzfl_search=with_byzfl)
    except (RuntimeError, MemoryError) as exc:
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        if with_byzfl:
            plan["byzfl"] = {"name": plan["byzfl"]["name"], "skipped": f"calibration failed: {why}"}
        return {"error": why}
    if "byzfl_T" in gm:
        label, fn, _ = byzfl_baseline("geometric_median", n, gm["byzfl_T"])
        plan["byzfl"] = {"name": label, "fn": fn}
    progress(f"  geometric_median calibrated in {time.perf_counter() - t0:.1f} s: {_gm_summary(gm)}")
    return gm


def _gm_summary(gm: dict[str, Any]) -> str:
    if "error" in gm:
        return f"calibration failed ({gm['error']})"
    bits = [f"robustagg {gm['iterations']} updates, objective {gm['objective']:.12g}"]
    if "torch_iterations" in gm:
        rel = (gm["torch_objective"] - gm["objective"]) / gm["objective"]
        bits.append(f"torch loop {gm['torch_iterations']} updates (objective {rel:+.1e} relative)")
    if "byzfl_T" in gm:
        rel = (gm["byzfl_objective"] - gm["objective"]) / gm["objective"]
        if gm["byzfl_reached"]:
            bits.append(f"byzfl T={gm['byzfl_T']} (first within {GM_RTOL:g}: objective {rel:+.1e} relative)")
        else:
            bits.append(f"byzfl did not reach it by T={gm['byzfl_T']} (objective {rel:+.1e} relative): timed with that T")
    return "; ".join(bits)


def _run_group(
    cfg: SuiteConfig, dev_name: str, dt_name: str, n: int, d: int, ops_: Sequence[str], case_no: int, total: int,
    t_start: float, progress: Callable[[str], None], failed: list[str],
) -> list[dict[str, Any]]:
    """The ops ``ops_`` (and their baselines) on one (device, dtype, n, d); one progress line per op.

    An op that raises is listed in ``failed`` and the group goes on.
    """
    device = torch.device(dev_name)
    dtype = DTYPES[dt_name]
    itemsize = torch.empty((), dtype=dtype).element_size()
    xbytes = n * d * itemsize
    budget = cfg.mem_budget_bytes.get(dev_name) or default_budget(dev_name)
    if xbytes + 8 * d * itemsize > budget:  # the op itself: input + result + O(d) workspace
        raise _Skip(f"input {xbytes / GB:.2f} GB exceeds the memory budget {budget / GB:.2f} GB")

    copies = rotation_count(xbytes, device, max(xbytes, budget // 4))
    resident = copies * xbytes
    # the rotation set stays resident while the baselines run: a baseline runs only if its estimate fits beside it
    plan = _plan_baselines(cfg, ops_, n, d, itemsize, resident, budget)

    X = make_inputs(n, d, dtype, device, copies=1, seed=cfg.seed)[0]
    # byzfl's geometric median gets the T that reaches robustagg's objective on this input (also in the memory child)
    gm = _calibrate_gm(X, n, plan["geometric_median"], progress) if "geometric_median" in ops_ else None
    gm_T = gm.get("byzfl_T") if gm else None

    mem: dict[str, Any] = {}
    if cfg.memory and device.type == "cpu":
        calls = [(f"op:{op}", "op", op) for op in ops_]
        # --quick leaves out byzfl's memory (JSON only, not in the table): the child would import byzfl, ~4 s
        calls += [
            (f"{kind}:{op}", kind, op)
            for op, p in plan.items()
            for kind, b in p.items()
            if "fn" in b and not (cfg.quick and kind == "byzfl")
        ]
        mem = measure_cpu_memory(n, d, dt_name, calls, gm_iterations=gm_T)

    inputs = [X] + [X.clone() for _ in range(copies - 1)]
    timing = dict(repeats=cfg.repeats, warmup=cfg.warmup, max_seconds=cfg.max_seconds)
    read_fn = lambda X: X.sum(0)  # noqa: E731
    copy_fn = lambda X: torch.empty_like(X).copy_(X)  # noqa: E731
    with_copy = device.type == "cuda" and resident + xbytes <= budget
    rows = []
    for op in ops_:
        case_no += 1
        t_case = time.perf_counter()
        row: dict[str, Any] = {
            "op": op,
            "n": n,
            "d": d,
            "f": op_f(op, n),
            "params": op_params(op, n, d),
            "dtype": dt_name,
            "device": dev_name,
            "input_bytes": xbytes,
            "copies": copies,
        }
        if op == "geometric_median":
            row["gm"] = gm
        try:
            _time_op(cfg, row, plan[op], inputs, device, mem, timing, [read_fn] + ([copy_fn] if with_copy else []), progress)
        except (RuntimeError, MemoryError, ValueError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            why = str(exc).splitlines()[0][:200] if str(exc) else ""
            failed.append(f"{dev_name} {dt_name} n={n} d={d} {op}: {type(exc).__name__}: {why}")
            progress(f"FAILED: {failed[-1]}")
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        rows.append(row)
        bits = [f"{row['ms']:.3f} ms", f"{row['ratio_read']:.2f}x read"]
        for kind in ("torch", "byzfl"):
            e = row["baselines"].get(kind)
            if e is not None:
                bits.append(f"{e['speedup']:.1f}x vs {kind}" if "speedup" in e else f"{kind}: {e['skipped']}")
        if row.get("pct_copy") is not None:
            bits.append(f"{row['pct_copy']:.0f}% copy")
        if row.get("mem") and "extra_bytes" in row["mem"]:
            bits.append(f"extra {_mb(row['mem']['extra_bytes'])} MB")
        progress(
            f"[{case_no}/{total}] {dev_name} {dt_name} n={n} d={_fmt_d(d)} {op}: "
            + ", ".join(bits)
            + f"  ({time.perf_counter() - t_case:.1f} s, {time.perf_counter() - t_start:.0f} s total)"
        )
    return rows


def _time_op(
    cfg: SuiteConfig, row: dict[str, Any], plan: dict[str, dict[str, Any]], inputs: list[torch.Tensor], device: torch.device,
    mem: dict[str, Any], timing: dict[str, Any], floors: list[Callable[[torch.Tensor], Any]], progress: Callable[[str], None],
) -> None:
    """Check, time and measure one op and its baselines, filling ``row``."""
    op, n, xbytes, d = row["op"], row["n"], row["input_bytes"], row["d"]
    itemsize = xbytes // (n * d)
    if cfg.check:
        row["check"] = check_op(op, inputs[0])
        if row["check"] != "ok":
            progress(f"WARNING: {op} n={n} d={d} {row['dtype']} {row['device']}: {row['check']}")
    fn = op_callable(op, n)
    # the op, one read of X (and on CUDA the copy) timed in turn, so that the machine's load
    # (other processes on a shared host) weighs on all of them alike
    res = time_interleaved([fn] + floors, inputs, device, **timing)
    t, read = res[0], res[1]
    row.update(ms=t["ms"], min_ms=t["min_ms"], repeats=t["repeats"])
    row["gbps"] = xbytes / (t["ms"] * 1e-3) / 1e9
    row["read_ms"] = read["ms"]
    row["read_gbps"] = xbytes / (read["ms"] * 1e-3) / 1e9
    row["ratio_read"] = t["ms"] / read["ms"]
    row["ratio_read_min"] = t["min_ms"] / read["min_ms"]  # fastest call over fastest call: less sensitive to load
    if len(res) > 2:
        copy_bw = 2 * xbytes / (res[2]["ms"] * 1e-3)
        row["copy_ms"] = res[2]["ms"]
        row["copy_gbps"] = copy_bw / 1e9
        row["pct_copy"] = 100.0 * ((xbytes + d * itemsize) / (t["ms"] * 1e-3)) / copy_bw
    if cfg.memory:
        row["mem"] = measure_cuda_memory(fn, inputs[0]) if device.type == "cuda" else mem.get(f"op:{op}")
        if row["mem"] is not None:
            row["mem"]["method"] = "cuda max_memory_allocated" if device.type == "cuda" else "child process VmHWM"
    else:
        row["mem"] = None
    row["baselines"] = {}
    for kind, b in plan.items():
        entry: dict[str, Any] = {"name": b["name"]}
        if "fn" not in b:
            entry["skipped"] = b["skipped"]
        else:
            try:
                tb = time_fn(b["fn"], inputs, device, **timing)
                entry.update(ms=tb["ms"], repeats=tb["repeats"], speedup=tb["ms"] / t["ms"], ratio_read=tb["ms"] / read["ms"])
                if cfg.memory:
                    entry["mem"] = measure_cuda_memory(b["fn"], inputs[0]) if device.type == "cuda" else mem.get(f"{kind}:{op}")
            except Exception as exc:  # noqa: BLE001  (a baseline failing, e.g. out of memory, is reported, not fatal)
                entry["skipped"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        row["baselines"][kind] = entry
        row[f"speedup_{kind}"] = entry.get("speedup")


class _Skip(Exception):
    pass


def _groups(cfg: SuiteConfig) -> tuple[list[tuple[str, str, int, int, list[str]]], list[str]]:
    """``(device, dtype, n, d, ops)`` per input shape, ops in ``cfg.ops`` order; and the cases skipped for their n.

    Ops of different families share a group (one input, one rotation set)
    where their grids meet.
    """
    where: dict[tuple[str, str, int, int], list[str]] = {}
    skipped: list[str] = []
    for dev in cfg.devices:
        for dt in cfg.dtypes:
            for op in cfg.ops:
                ns, ds = cfg.grid(op_family(op), dev)
                for d in ds:
                    for n in ns:
                        if n < min_n(op):
                            skipped.append(f"{dev} {dt} n={n} d={d}: {op} needs n >= {min_n(op)}")
                        else:
                            where.setdefault((dev, dt, n, d), []).append(op)
    order = sorted(where, key=lambda k: (cfg.devices.index(k[0]), cfg.dtypes.index(k[1]), k[3], k[2]))
    return [(dev, dt, n, d, where[(dev, dt, n, d)]) for dev, dt, n, d in order], skipped


def run_suite(cfg: SuiteConfig, progress: Callable[[str], None] = _progress) -> dict[str, Any]:
    """Run the grid; return ``{"env", "config", "rows", "skipped", "failed"}`` (the JSON document).

    A group (device, dtype, n, d) whose input does not fit the memory budget
    is listed in ``skipped`` (so is an op that the group's n does not admit);
    an op or group that raised (e.g. out of memory) in ``failed``, and the
    run goes on.
    """
    env = environment(cfg.devices)
    env["malloc"] = pin_malloc() if cfg.pin_malloc else "allocator default"
    rows: list[dict[str, Any]] = []
    groups, skipped = _groups(cfg)
    for s in skipped:
        progress(f"skip: {s}")
    failed: list[str] = []
    total = sum(len(g[4]) for g in groups)
    case_no = 0
    t_start = time.perf_counter()
    for dev_name, dt_name, n, d, ops_ in groups:
        try:
            rows += _run_group(cfg, dev_name, dt_name, n, d, ops_, case_no, total, t_start, progress, failed)
        except _Skip as exc:
            skipped.append(f"{dev_name} {dt_name} n={n} d={d}: {exc}")
            progress(f"skip: {skipped[-1]}")
        except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            why = str(exc).splitlines()[0][:200] if str(exc) else ""
            failed.append(f"{dev_name} {dt_name} n={n} d={d}: {type(exc).__name__}: {why}")
            progress(f"FAILED: {failed[-1]}")
        finally:
            case_no += len(ops_)
            gc.collect()
            if dev_name == "cuda":
                torch.cuda.empty_cache()
    config = {
        "devices": cfg.devices,
        "ops": cfg.ops,
        "n": cfg.ns,
        "d": cfg.ds,
        "family_grids": cfg.family_grids,
        "dtypes": cfg.dtypes,
        "repeats": cfg.repeats,
        "warmup": cfg.warmup,
        "max_seconds": cfg.max_seconds,
        "baselines": cfg.baselines,
        "byzfl": cfg.byzfl,
        "memory": cfg.memory,
        "quick": cfg.quick,
        "f": "floor((n - 1) / 4) for trimmed_mean and meamed; floor((n - 3) / 4) for krum, multi_krum, bulyan, nnm, arc",
        "distance_params": {
            "geometric_median": {
                "nu": GM_NU, "tol": GM_TOL, "max_iter": GM_MAX_ITER, "byzfl_rtol": GM_RTOL, "byzfl_trial_T": list(GM_TRIAL_T)
            },
            "centered_clip": {"tau": CC_TAU, "iters": CC_ITERS, "center": "zeros"},
            "bucketing": {"s": BUCKET_S, "seed": BUCKET_SEED},
            "clip": {"c": "sqrt(d)"},
            "multi_krum": {"m": "n - f"},
            "krum": {"m": 1},
        },
        "pin_malloc": cfg.pin_malloc,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    return {"env": env, "config": config, "rows": rows, "skipped": skipped, "failed": failed}


# --------------------------------------------------------------------------- output

_COLUMNS = [
    # (header, width, getter)
    ("op", 21, lambda r: r["op"]),
    ("n", 4, lambda r: str(r["n"])),
    ("d", 5, lambda r: _fmt_d(r["d"])),
    ("dtype", 8, lambda r: r["dtype"]),
    ("dev", 4, lambda r: r["device"]),
    ("ms", 9, lambda r: f"{r['ms']:.3f}"),
    ("GB/s", 7, lambda r: f"{r['gbps']:.1f}"),
    ("x read", 6, lambda r: f"{r['ratio_read']:.2f}"),
    ("vs torch", 8, lambda r: _speedup(r, "torch")),
    ("vs byzfl", 8, lambda r: _speedup(r, "byzfl")),
    ("% copy", 6, lambda r: f"{r['pct_copy']:.0f}" if r.get("pct_copy") is not None else "-"),
    ("extra MB", 8, lambda r: _extra(r.get("mem"))),
    ("torch extra MB", 14, lambda r: _extra((r["baselines"].get("torch") or {}).get("mem"))),
]


def _speedup(r: dict[str, Any], kind: str) -> str:
    e = r["baselines"].get(kind)
    if e is None:
        return "-"
    if "speedup" in e:
        return f"{e['speedup']:.1f}x"
    return "skip"


def _extra(m: dict[str, Any] | None) -> str:
    if not m:
        return "-"
    if "extra_bytes" not in m:
        return "err"
    return _mb(m["extra_bytes"])


def _header_lines(result: dict[str, Any]) -> list[str]:
    env = result["env"]
    lines = [
        f"robustagg {env['robustagg']}  torch {env['torch']}  python {env['python']}  {env['date']}",
        f"CPU: {env['cpu']} ({env['cpu_count']} cores, LLC {env['cpu_llc_bytes'] // MB} MB), torch threads {env['threads']}, "
        f"robustagg CPU ISA {env['cpu_kernel_isa']}, {env.get('malloc', '')}",
    ]
    if "cuda_device" in env:
        lines.append(
            f"GPU: {env['cuda_device']} ({env['cuda_memory_bytes'] / GB:.0f} GB, L2 {env['cuda_l2_bytes'] // MB} MB), "
            f"CUDA {env['cuda_version']}, CUDA kernels built: {env['cuda_kernels_built']}"
        )
    lines.append(f"peer library: {env['byzfl']}")
    lines.append(
        "ms = median time; GB/s = bytes of X / time; x read = time / X.sum(0) time (same run); "
        "vs torch/byzfl = their time / ours; % copy = (X + out bytes)/time over D2D copy bandwidth; "
        "extra MB = peak memory beyond the result; f = floor((n-1)/4) (trimmed_mean, meamed), "
        "floor((n-3)/4) (distance rules, nnm, arc)"
    )
    return lines


def _torch_names(result: dict[str, Any]) -> str:
    names: dict[str, str] = {}
    for r in result["rows"]:
        e = r["baselines"].get("torch")
        if e:
            names.setdefault(r["op"], e["name"])
    return "; ".join(f"{op}: {name}" for op, name in names.items())


def format_table(result: dict[str, Any]) -> str:
    """The fixed-width text table (with its header) for stdout."""
    out = _header_lines(result)
    names = _torch_names(result)
    if names:
        out.append(f"torch baselines: {names}")
    out.append("")
    out.append("  ".join(h.rjust(w) if i > 0 else h.ljust(w) for i, (h, w, _) in enumerate(_COLUMNS)))
    out.append("  ".join("-" * w for _, w, _ in _COLUMNS))
    for r in result["rows"]:
        cells = [g(r) for _, _, g in _COLUMNS]
        out.append("  ".join(c.rjust(w) if i > 0 else c.ljust(w) for i, (c, (_, w, _)) in enumerate(zip(cells, _COLUMNS))))
    notes = _notes(result)
    if notes:
        out.append("")
        out.extend(notes)
    return "\n".join(out) + "\n"


def _notes(result: dict[str, Any]) -> list[str]:
    notes = [f"skipped: {s}" for s in result["skipped"]] + [f"FAILED: {s}" for s in result.get("failed", [])]
    seen = set()
    for r in result["rows"]:
        for kind, e in r["baselines"].items():
            if "skipped" in e:
                key = (kind, r["op"], e["skipped"])
                if key not in seen:
                    seen.add(key)
                    notes.append(f"{kind} baseline for {r['op']} n={r['n']} d={_fmt_d(r['d'])} skipped: {e['skipped']}")
        if r.get("check", "ok") != "ok":
            notes.append(f"CHECK {r['op']} n={r['n']} d={_fmt_d(r['d'])} {r['dtype']} {r['device']}: {r['check']}")
    for op in dict.fromkeys(r["op"] for r in result["rows"]):
        if op in DISTANCE_NOTES:
            notes.append(f"{op}: {DISTANCE_NOTES[op]}.")
    for r in result["rows"]:
        if r.get("gm"):
            notes.append(f"geometric_median n={r['n']} d={_fmt_d(r['d'])} {r['dtype']} {r['device']}: {_gm_summary(r['gm'])}.")
    return notes


def format_markdown(result: dict[str, Any], command: str | None = None) -> str:
    """A markdown table with a short header, ready for docs/results/."""
    env = result["env"]
    devs = sorted({r["device"] for r in result["rows"]})
    has_cuda = "cuda" in devs
    has_byzfl = any("byzfl" in r["baselines"] for r in result["rows"])
    lines = []
    where = env["cpu"] + f" ({env['cpu_count']} cores, {env['threads']} torch threads, robustagg CPU ISA {env['cpu_kernel_isa']})"
    if has_cuda and "cuda_device" in env:
        where = f"{env['cuda_device']} (CUDA {env['cuda_version']}); host CPU {where}"
    lines.append(f"Device: {where}. robustagg {env['robustagg']}, torch {env['torch']}, {env['date']}.")
    lines.append("")
    if command:
        lines.append(f"Command: `{command}`")
        lines.append("")
    names = _torch_names(result)
    lines.append(
        "ms: median time. GB/s: bytes of X read per second. x read: time over one read of X (`X.sum(0)`) in the same run. "
        "vs torch" + (" / vs byzfl" if has_byzfl else "") + ": baseline time over ours"
        + (f" ({names})" if names else "")
        + ". extra MB: peak memory of one call beyond its result ((d,), or (n, d) for the pre-aggregators). "
        "f = floor((n-1)/4) for trimmed_mean and meamed, floor((n-3)/4) for the distance rules, nnm and arc."
        + (" % copy: (X + result bytes)/time as a share of the device-to-device copy bandwidth." if has_cuda else "")
    )
    lines.append("")
    head = ["op", "n", "d", "dtype"] + (["device"] if len(devs) > 1 else []) + ["ms", "GB/s", "x read", "vs torch"]
    head += ["vs byzfl"] if has_byzfl else []
    head += ["% copy"] if has_cuda else []
    head += ["extra MB", "torch extra MB"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" if i < 4 else "---:" for i in range(len(head))) + "|")
    for r in result["rows"]:
        cells = [r["op"], str(r["n"]), _fmt_d(r["d"]), r["dtype"]] + ([r["device"]] if len(devs) > 1 else [])
        cells += [f"{r['ms']:.3f}", f"{r['gbps']:.1f}", f"{r['ratio_read']:.2f}", _speedup(r, "torch")]
        cells += [_speedup(r, "byzfl")] if has_byzfl else []
        cells += [f"{r['pct_copy']:.0f}" if r.get("pct_copy") is not None else "-"] if has_cuda else []
        cells += [_extra(r.get("mem")), _extra((r["baselines"].get("torch") or {}).get("mem"))]
        lines.append("| " + " | ".join(cells) + " |")
    notes = _notes(result)
    if notes:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines) + "\n"
