"""Typed Python wrappers over ``torch.ops.robustagg.*``, and their fakes.

Each wrapper checks what only Python can (argument types, whether the CUDA
kernels exist) and calls the native op, which validates shapes and values
(SPEC 1) and computes the rule. The fakes let ``torch.compile`` trace the ops.
"""

from __future__ import annotations

import torch

from . import _C  # noqa: F401  (loads the library that registers the ops)

__all__ = ["mean", "coordinate_median", "trimmed_mean", "meamed", "cpu_kernel_isa", "cuda_kernels_built"]

_NS = torch.ops.robustagg


def cuda_kernels_built() -> bool:
    """Whether this build of robustagg holds CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("robustagg::coordinate_median", "CUDA")


def cpu_kernel_isa() -> str:
    """Instruction set the CPU selection kernels use here: ``avx512``, ``avx2`` or ``baseline``.

    Chosen at run time from the CPU; ``ROBUSTAGG_CPU_ISA`` may lower it.
    """
    return _NS.cpu_kernel_isa()


def _check_tensor(X: object, rule: str) -> None:
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"{rule}: X must be a torch.Tensor, got {type(X).__name__}")
    if X.device.type == "cuda" and not cuda_kernels_built():
        raise RuntimeError(
            f"{rule}: X is a CUDA tensor but robustagg was built without CUDA kernels; rebuild with a "
            "CUDA build of torch and nvcc on PATH (pip install --no-build-isolation -e .) or move X to the CPU"
        )


def _check_int(value: object, name: str, rule: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{rule}: {name} must be an int, got {type(value).__name__} {value!r}")
    return value


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
