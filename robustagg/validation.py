"""Argument checks shared by the Python layer; messages name the rule, the argument and its value (SPEC 1)."""

from __future__ import annotations

import math

import torch

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def cuda_kernels_built() -> bool:
    """Whether this build of robustagg holds CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("robustagg::coordinate_median", "CUDA")


def check_tensor(X: object, rule: str, name: str = "X") -> None:
    """X is a tensor on a device whose kernels exist."""
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"{rule}: {name} must be a torch.Tensor, got {type(X).__name__}")
    if X.device.type == "cuda" and not cuda_kernels_built():
        raise RuntimeError(
            f"{rule}: {name} is a CUDA tensor but robustagg was built without CUDA kernels; rebuild with a "
            f"CUDA build of torch and nvcc on PATH (pip install --no-build-isolation -e .) or move {name} to the CPU"
        )


def check_matrix(X: object, rule: str) -> None:
    """X is an (n, d) floating tensor with n >= 1, as the native ops require."""
    check_tensor(X, rule)
    if X.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{rule}: X must be float32, float64, float16 or bfloat16, got {X.dtype}")
    if X.dim() != 2:
        raise ValueError(f"{rule}: X must be 2-D (n, d), got {X.dim()}-D with shape {list(X.shape)}")
    if X.shape[0] < 1:
        raise ValueError(f"{rule}: X needs at least one row, got n=0")


def check_int(value: object, name: str, rule: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{rule}: {name} must be an int, got {type(value).__name__} {value!r}")
    return value


def check_positive(value: object, name: str, rule: str, allow_inf: bool = False) -> float:
    """A real number > 0 (and finite unless allow_inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{rule}: {name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not value > 0 or (math.isinf(value) and not allow_inf):
        allowed = "> 0" if allow_inf else "finite and > 0"
        raise ValueError(f"{rule}: {name} must be {allowed}, got {name}={value!r}")
    return value
