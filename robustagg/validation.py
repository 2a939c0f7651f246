"""Argument checks shared by the Python layer; messages name the rule, the argument and its value (SPEC 1)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import numpy
import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


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


def check_matrix(X: object, rule: str, name: str = "X") -> None:
    """X (called ``name`` in messages) is an (n, d) floating tensor with n >= 1, as the native ops require."""
    check_tensor(X, rule, name)
    if X.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{rule}: {name} must be float32, float64, float16 or bfloat16, got {X.dtype}")
    if X.dim() != 2:
        raise ValueError(f"{rule}: {name} must be 2-D (n, d), got {X.dim()}-D with shape {list(X.shape)}")
    if X.shape[0] < 1:
        raise ValueError(f"{rule}: {name} needs at least one row, got n=0")


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def check_int(value: object, name: str, rule: str, low: int | None = None, high: int | None = None) -> int:
    """An int (bool refused) in [low, high], both bounds optional, and always within int64.

    Checked here so that no value reaches the 64-bit native checks out of range.
    """
    if isinstance(value, (bool, numpy.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{rule}: {name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{rule}: {name} must be >= {low}, got {name}={value}")
    if high is not None and value > high:
        raise ValueError(f"{rule}: {name} must be <= {high}, got {name}={value}")
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"{rule}: {name} must fit in 64 bits, got {name}={value}")
    return value


def check_choice(value: object, choices: Sequence[str], name: str, rule: str) -> None:
    """``value`` is one of ``choices`` (a ValueError listing them otherwise)."""
    if value not in choices:
        raise ValueError(f"{rule}: unknown {name}={value!r}; choose from {', '.join(choices)}")


def check_trim(f: object, n: int, rule: str) -> int:
    """The number of values a rule drops on each side: an int with 0 <= f and n > 2f."""
    f = check_int(f, "f", rule, low=0)
    if n <= 2 * f:
        raise ValueError(f"{rule}: f={f} needs n > 2*f, got n={n}")
    return f


def check_positive(value: object, name: str, rule: str, allow_inf: bool = False) -> float:
    """A real number > 0 (and finite unless allow_inf)."""
    if isinstance(value, (bool, numpy.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{rule}: {name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not value > 0 or (math.isinf(value) and not allow_inf):
        allowed = "> 0" if allow_inf else "finite and > 0"
        raise ValueError(f"{rule}: {name} must be {allowed}, got {name}={value!r}")
    return value


def describe_interval(low: float | None, high: float | None, low_open: bool, high_open: bool, allow_inf: bool) -> str:
    """How check_real states its condition: ``in [0, 1)``, ``finite and > 0``, ``> 0``, ``finite``, ..."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    bounds = [f"{'>' if low_open else '>='} {low:g}"] if low is not None else []
    bounds += [f"{'<' if high_open else '<='} {high:g}"] if high is not None else []
    if allow_inf:
        return " and ".join(bounds) or "a number (not NaN)"
    return " and ".join(["finite", *bounds])


def check_real(
    value: object,
    name: str,
    rule: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
) -> float:
    """A real number (bool, complex, strings and tensors refused with TypeError), not NaN, finite unless
    allow_inf, and within the bounds given (each inclusive unless its ``*_open`` flag is set)."""
    if isinstance(value, (bool, numpy.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{rule}: {name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    ok = not math.isnan(value) and (allow_inf or math.isfinite(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(
            f"{rule}: {name} must be {describe_interval(low, high, low_open, high_open, allow_inf)}, "
            f"got {name}={value!r}"
        )
    return value


def check_optional_tensor(value: object, name: str, rule: str) -> torch.Tensor | None:
    """None or a tensor (its shape and values are checked where it is used)."""
    if value is not None and not isinstance(value, torch.Tensor):
        raise TypeError(f"{rule}: {name} must be a torch.Tensor or None, got {type(value).__name__}")
    return value


def check_row_weights(weights: object, X: torch.Tensor, rule: str) -> torch.Tensor:
    """Weights of X's rows as a CPU float64 tensor (ones when None): shape (n,), on X's device, finite,
    >= 0, with a positive sum."""
    n = X.shape[0]
    if weights is None:
        return torch.ones(n, dtype=torch.float64)
    check_optional_tensor(weights, "weights", rule)
    if weights.is_complex() or weights.dtype == torch.bool:
        raise TypeError(f"{rule}: weights must be a real tensor, got {weights.dtype}")
    if weights.shape != (n,):
        raise ValueError(f"{rule}: weights must have shape (n,) = ({n},), got {tuple(weights.shape)}")
    if weights.device != X.device:
        raise ValueError(f"{rule}: weights are on {weights.device} but X is on {X.device}")
    a = weights.detach().to(device="cpu", dtype=torch.float64)
    bad = ~(torch.isfinite(a) & (a >= 0))
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"{rule}: weights must be finite and >= 0, got weights[{i}]={a[i].item()}")
    if a.sum() <= 0:
        raise ValueError(f"{rule}: weights must have a positive sum, got {a.sum().item()}")
    return a


def check_generator(generator: object, name: str, rule: str) -> torch.Generator | None:
    """None or a torch.Generator: anything else would reach torch's samplers and fail there, or not at all."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{rule}: {name} must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def check_counts(counts: object, name: str, rule: str) -> list[float]:
    """Example counts (the weights of an average): a non-empty list of finite reals >= 0 with a positive sum."""
    if isinstance(counts, (str, bytes, torch.Tensor)) or not isinstance(counts, (Sequence, numpy.ndarray)):
        raise TypeError(f"{rule}: {name} must be a list of numbers, got {type(counts).__name__}")
    out = [check_real(c, f"{name}[{i}]", rule, low=0.0) for i, c in enumerate(counts)]
    if not math.fsum(out) > 0:
        raise ValueError(f"{rule}: {name} must have a positive sum, got {name}={out!r}")
    return out


def check_tensor_list(
    values: object, like: Sequence[torch.Tensor], name: str, rule: str, like_name: str = "params"
) -> list[torch.Tensor]:
    """One tensor per tensor of ``like``, each with its shape, dtype and device.

    Checked in full before an update writes anything, so that a list missing a
    tensor (shorter, longer, a None entry) or holding a mismatched one is refused
    with the entry named, instead of failing half-way through the writes.
    """
    if isinstance(values, (str, bytes, torch.Tensor)) or not isinstance(values, Sequence):
        raise TypeError(
            f"{rule}: {name} must be a list of {len(like)} tensors shaped like {like_name}, got {type(values).__name__}"
        )
    if len(values) != len(like):
        k = min(len(values), len(like))
        what = (
            f"no tensor for {like_name}[{k}]"
            if len(values) < len(like)
            else f"{len(values) - len(like)} more than {like_name}"
        )
        raise ValueError(
            f"{rule}: {name} must hold {len(like)} tensors, one per tensor of {like_name}, got {len(values)} ({what})"
        )
    for j, (t, p) in enumerate(zip(values, like)):
        if t is None:
            raise ValueError(f"{rule}: {name}[{j}] is None; the tensor for {like_name}[{j}] is missing")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{rule}: {name}[{j}] must be a torch.Tensor, got {type(t).__name__}")
        if t.shape != p.shape:
            raise ValueError(
                f"{rule}: {name}[{j}] must have {like_name}[{j}]'s shape {list(p.shape)}, got {list(t.shape)}"
            )
        if t.dtype != p.dtype:
            raise TypeError(f"{rule}: {name}[{j}] must have {like_name}[{j}]'s dtype {p.dtype}, got {t.dtype}")
        if t.device != p.device:
            raise ValueError(f"{rule}: {name}[{j}] is on {t.device} but {like_name}[{j}] on {p.device}")
    return list(values)


def check_tensors(values: object, name: str, rule: str) -> list[torch.Tensor]:
    """A non-empty list of floating tensors (the parameters an optimizer writes)."""
    if isinstance(values, (str, bytes, torch.Tensor)) or not isinstance(values, Iterable):
        raise TypeError(f"{rule}: {name} must be a list of tensors, got {type(values).__name__}")
    values = list(values)
    if not values:
        raise ValueError(f"{rule}: {name} is empty")
    for j, t in enumerate(values):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{rule}: {name}[{j}] must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{rule}: {name}[{j}] must be float32, float64, float16 or bfloat16, got {t.dtype}")
    return values


def check_disjoint(written: Sequence[torch.Tensor], read: Sequence[torch.Tensor], rule: str) -> None:
    """Tensors an optimizer writes in several native calls (one per group) share memory with no tensor of the step.

    Each call checks its own tensors before writing (SPEC 1, "Writes"); this
    is the same test across the calls, so that a refusal in a later group
    cannot come after earlier groups were stepped. Address ranges are
    compared, as the native check does.
    """
    spans = []
    for kind, tensors in (("params", written), ("grads", read)):
        for i, t in enumerate(tensors):
            if t.numel() == 0:
                continue
            extent = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
            if kind == "params" and extent < t.numel():
                raise ValueError(
                    f"{rule}: params[{i}] has several elements at one address (an expanded view); clone() it"
                )
            begin = t.data_ptr()
            spans.append((begin, begin + extent * t.element_size(), kind, i))
    spans.sort()
    reach = None  # the span reaching furthest so far
    for span in spans:
        if reach is not None and reach[1] > span[0] and "params" in (reach[2], span[2]):
            raise ValueError(
                f"{rule}: {reach[2]}[{reach[3]}] and {span[2]}[{span[3]}] share memory; clone() one of them"
            )
        if reach is None or span[1] > reach[1]:
            reach = span


def check_honest_majority(X: torch.Tensor, f: int, rule: str) -> int:
    """X is an (n, d) matrix and f an int with n > 2f (an honest majority), as the subset and spectral rules need."""
    check_matrix(X, rule)
    f = check_int(f, "f", rule, low=0)
    n = X.shape[0]
    if n <= 2 * f:
        raise ValueError(f"{rule}: f={f} needs n > 2*f, got n={n}")
    return f
