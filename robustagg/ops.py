"""Typed Python wrappers over ``torch.ops.robustagg.*``, and their fakes.

Each wrapper checks what only Python can (argument types, whether the CUDA
kernels exist) and calls the native op, which validates shapes and values
(SPEC 1) and computes the rule. The fakes let ``torch.compile`` trace the ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _C  # noqa: F401  (loads the library that registers the ops)
from .validation import check_int as _check_int
from .validation import check_tensor as _check_tensor
from .validation import cuda_kernels_built

__all__ = [
    "mean",
    "coordinate_median",
    "trimmed_mean",
    "meamed",
    "mean_around_median",
    "pairwise_sq_distances",
    "mix_rows",
    "row_sq_norms",
    "momentum_update_",
    "cpu_kernel_isa",
    "cuda_kernels_built",
]

_NS = torch.ops.robustagg


def cpu_kernel_isa() -> str:
    """Instruction set the CPU selection kernels use here: ``avx512``, ``avx2`` or ``baseline``.

    Chosen at run time from the CPU; ``ROBUSTAGG_CPU_ISA`` may lower it.
    """
    return _NS.cpu_kernel_isa()


def mean(X: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    r"""Coordinate-wise (weighted) mean, :math:`\sum_i w_i x_i / \sum_i w_i`.

    Not robust: propagates NaN/inf like :func:`torch.mean`. Uniform weights by
    default; ``weights`` must be ``n`` finite non-negative numbers with a
    positive sum. Accumulates in float64.

    Args:
        X: ``(n, d)`` tensor, one row per worker.
        weights: optional ``(n,)`` tensor on X's device.

    Returns:
        ``(d,)`` tensor in X's dtype.
    """
    _check_tensor(X, "mean")
    if weights is not None and not isinstance(weights, torch.Tensor):
        raise TypeError(f"mean: weights must be a torch.Tensor or None, got {type(weights).__name__}")
    return _NS.mean(X, weights)


def coordinate_median(X: torch.Tensor) -> torch.Tensor:
    r"""Coordinate-wise median (Yin et al., ICML 2018).

    For each coordinate, the median of the ``n`` values; for even ``n`` the
    average of the two middle values (NumPy's ``median``, not
    :func:`torch.median`'s lower median). NaN orders above ``+inf``, so a
    coordinate's result is non-finite only when its middle values are.
    """
    _check_tensor(X, "coordinate_median")
    return _NS.coordinate_median(X)


def trimmed_mean(X: torch.Tensor, f: int) -> torch.Tensor:
    r"""Coordinate-wise trimmed mean (Yin et al., ICML 2018).

    For each coordinate, sort the ``n`` values :math:`x_{(1)} \le \dots \le x_{(n)}`
    (NaN largest) and return :math:`\frac{1}{n-2f}\sum_{t=f+1}^{n-f} x_{(t)}`.
    Needs ``n > 2f``.
    """
    _check_tensor(X, "trimmed_mean")
    return _NS.trimmed_mean(X, _check_int(f, "f", "trimmed_mean"))


def meamed(X: torch.Tensor, f: int) -> torch.Tensor:
    r"""Mean around the median, MeaMed (Xie, Koyejo, Gupta 2018, "Generalized Byzantine-tolerant SGD").

    For each coordinate with median :math:`m`, the average of the ``n - f``
    values closest to :math:`m`; ties in distance keep the smaller value and
    NaN counts as infinitely far. Needs ``n > 2f``.
    """
    _check_tensor(X, "meamed")
    return _NS.meamed(X, _check_int(f, "f", "meamed"))


def mean_around_median(X: torch.Tensor, keep: int) -> torch.Tensor:
    r"""Per coordinate, the mean of the ``keep`` values closest to the median (``1 <= keep <= n``).

    The generalisation of :func:`meamed` (``meamed(X, f) == mean_around_median(X, n - f)``)
    to any ``keep``; Bulyan's last stage (El Mhamdi et al. 2018) uses
    ``keep = n - 2f`` of the selected rows. Ties in distance keep the smaller
    value; NaN counts as infinitely far.
    """
    _check_tensor(X, "mean_around_median")
    return _NS.mean_around_median(X, _check_int(keep, "keep", "mean_around_median"))


def distances_and_finite(X: torch.Tensor, center: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distances (as :func:`pairwise_sq_distances`) and an ``(m,)`` bool tensor of the finite rows."""
    _check_tensor(X, "pairwise_sq_distances")
    if center is not None and not isinstance(center, torch.Tensor):
        raise TypeError(f"pairwise_sq_distances: center must be a torch.Tensor or None, got {type(center).__name__}")
    return _NS.pairwise_sq_distances(X, center)


def pairwise_sq_distances(X: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    r"""Squared Euclidean distances :math:`D_{ij} = \|p_i - p_j\|^2` between the rows of X (and ``center``).

    The points are the ``n`` rows of ``X`` and, when ``center`` (a ``(d,)``
    tensor of X's dtype) is given, ``center`` as point ``n``. Returns an
    ``(m, m)`` float64 tensor, symmetric, with a zero diagonal and ``+inf``
    between a point holding NaN/inf and any other point.

    Computed in one pass over X as the float64 Gram matrix of the points
    shifted by a per-column reference (the median of rows 0, (n-1)/2 and n-1),
    :math:`D_{ij} = S_{ii} + S_{jj} - 2 S_{ij}`: the shift leaves distances
    unchanged and keeps them accurate for points that are close to each other
    and far from the origin. Never uses TF32 or float32 accumulation.
    """
    return distances_and_finite(X, center)[0]


def mix_rows(C: torch.Tensor, X: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    r"""Weighted combinations of rows, :math:`\text{out}_r = \sum_i C_{ri}\, p_i`, in one pass over X.

    ``C`` is a ``(k, m)`` float64 tensor on X's device; the points are the rows
    of ``X`` and, when given, ``center`` as point ``n``. A point whose
    coefficient is exactly 0 is not read, so NaN/inf rows with zero weight do
    not reach the output. Accumulates in float64 in index order; returns
    ``(k, d)`` in X's dtype.
    """
    _check_tensor(X, "mix_rows")
    if not isinstance(C, torch.Tensor):
        raise TypeError(f"mix_rows: C must be a torch.Tensor, got {type(C).__name__}")
    return _NS.mix_rows(C, X, center)


def row_sq_norms(X: torch.Tensor) -> torch.Tensor:
    r"""Squared Euclidean norms of the rows of X, :math:`\|x_i\|^2`, as an ``(n,)`` float64 tensor."""
    _check_tensor(X, "row_sq_norms")
    return _NS.row_sq_norms(X)


def momentum_update_(buffers: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], beta: float) -> None:
    r"""In place, for every i: :math:`m_i \leftarrow \beta\, m_i + (1 - \beta)\, g_i` with ``m = buffers``, ``g = grads``.

    One native multi-tensor call for the whole list (each element read and
    written once); the momentum update of worker momentum (Karimireddy, He,
    Jaggi, ICML 2021) and of SGD-with-momentum statistics. Pairs must match in
    shape, dtype and device; all tensors on one device; ``0 <= beta <= 1``.
    Computed in float32 (float64 for float64 tensors), each product and the
    sum rounded once: the bits of ``beta * m + (1 - beta) * g`` evaluated
    step by step in PyTorch.
    """
    for name, seq in (("buffers", buffers), ("grads", grads)):
        if isinstance(seq, torch.Tensor) or not isinstance(seq, Sequence):
            raise TypeError(f"momentum_update_: {name} must be a list of tensors, got {type(seq).__name__}")
        for i, t in enumerate(seq):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"momentum_update_: {name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"momentum_update_: beta must be a float, got {type(beta).__name__}")
    if not buffers and not grads:
        # No tensor to dispatch on: check beta here, as the kernels would, and do nothing.
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"momentum_update_: beta must be in [0, 1], got beta={float(beta):g}")
        return
    if buffers and buffers[0].is_cuda and not cuda_kernels_built():
        _check_tensor(buffers[0], "momentum_update_", "buffers[0]")
    _NS.momentum_update_(list(buffers), list(grads), float(beta))


def _fake_rowwise(X: torch.Tensor) -> torch.Tensor:
    return X.new_empty((X.shape[1],))


@torch.library.register_fake("robustagg::mean")
def _(X, weights=None):
    return _fake_rowwise(X)


@torch.library.register_fake("robustagg::coordinate_median")
def _(X):
    return _fake_rowwise(X)


@torch.library.register_fake("robustagg::trimmed_mean")
def _(X, f):
    return _fake_rowwise(X)


@torch.library.register_fake("robustagg::meamed")
def _(X, f):
    return _fake_rowwise(X)


@torch.library.register_fake("robustagg::mean_around_median")
def _(X, keep):
    return _fake_rowwise(X)


@torch.library.register_fake("robustagg::pairwise_sq_distances")
def _(X, center=None):
    m = X.shape[0] + (0 if center is None else 1)
    return X.new_empty((m, m), dtype=torch.float64), X.new_empty((m,), dtype=torch.bool)


@torch.library.register_fake("robustagg::mix_rows")
def _(C, X, center=None):
    return X.new_empty((C.shape[0], X.shape[1]))


@torch.library.register_fake("robustagg::row_sq_norms")
def _(X):
    return X.new_empty((X.shape[0],), dtype=torch.float64)


@torch.library.register_fake("robustagg::momentum_update_")
def _(buffers, grads, beta):
    return None
