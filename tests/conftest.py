"""Shared strategies and comparison helpers for the robustagg test suite.

Matrices are drawn in two steps: hypothesis draws a small description (shape,
seed, value pattern, how many Byzantine rows / scattered non-finite entries),
and ``make_matrix`` builds the tensor from it with a seeded torch generator.
Drawing 200k floats through hypothesis itself would dominate the run time;
drawing the description keeps examples cheap and shrinkable.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import pytest
import torch
from hypothesis import strategies as st

import robustagg
from robustagg import reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
HALF_DTYPES = (torch.float16, torch.bfloat16)
OPS = ["mean", "coordinate_median", "trimmed_mean", "meamed"]
TRIM_OPS = ("trimmed_mean", "meamed")

# Orders of magnitude (powers of ten) for the "magnitudes" pattern, per dtype:
# as far as the dtype reaches (subnormals included) without letting a sum of
# a few hundred values overflow float64 or the result's dtype.
_EXP_RANGE = {torch.float64: (-310, 300), torch.float32: (-44, 34), torch.bfloat16: (-40, 34), torch.float16: (-7, 4)}

PATTERNS = ["gaussian", "ties", "zeros", "magnitudes", "mixed"]
MAX_ELEMENTS = 200_000


# ---------------------------------------------------------------------------
# Devices: tests marked cuda are skipped without a GPU and the CUDA kernels


def cuda_ready() -> bool:
    return torch.cuda.is_available() and robustagg.cuda_kernels_built()


# Parametrise a test with ``@pytest.mark.parametrize("device", DEVICES)``: one body checks
# the CPU kernels and the CUDA kernels. (A parametrisation, not a fixture: hypothesis refuses
# function-scoped fixtures.)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU and robustagg built with CUDA kernels")
    if cuda_ready():
        return
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_intra_op_thread(request):
    """Run a CPU test's torch calls (kernels and expressions) on one intra-op thread: on a loaded
    machine every parallel region of a second thread costs tens of milliseconds, and the fused
    update tests make thousands of small calls. Their results do not depend on the thread count
    (each of those files checks 1 and 2 threads). Tests marked cuda keep every thread. Used
    through ``pytestmark = pytest.mark.usefixtures("one_intra_op_thread")``."""
    if request.node.get_closest_marker("cuda") is not None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------
# CPU instruction sets


_ISA_ORDER = ["baseline", "avx2", "avx512"]


def available_isas() -> list[str]:
    """The ROBUSTAGG_CPU_ISA values this machine runs (those <= its best)."""
    saved = os.environ.pop("ROBUSTAGG_CPU_ISA", None)
    try:
        best = robustagg.cpu_kernel_isa()
    finally:
        if saved is not None:
            os.environ["ROBUSTAGG_CPU_ISA"] = saved
    return _ISA_ORDER[: _ISA_ORDER.index(best) + 1]


class use_isa:
    """Context manager setting ROBUSTAGG_CPU_ISA (usable inside hypothesis tests)."""

    def __init__(self, isa: str):
        self.isa = isa

    def __enter__(self):
        self.saved = os.environ.get("ROBUSTAGG_CPU_ISA")
        os.environ["ROBUSTAGG_CPU_ISA"] = self.isa
        assert robustagg.cpu_kernel_isa() == self.isa
        return self

    def __exit__(self, *exc):
        if self.saved is None:
            os.environ.pop("ROBUSTAGG_CPU_ISA", None)
        else:
            os.environ["ROBUSTAGG_CPU_ISA"] = self.saved


# ---------------------------------------------------------------------------
# Matrix generation


@dataclass(frozen=True)
class MatrixSpec:
    n: int
    d: int
    seed: int
    pattern: str
    nan_rows: int = 0
    posinf_rows: int = 0
    neginf_rows: int = 0
    scatter: float = 0.0  # probability of a NaN / +inf / -inf entry


def _values(pattern: str, n: int, d: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """float64 values of one pattern, before the cast to dtype."""
    if pattern == "gaussian":
        scale = 10.0 ** float(torch.randint(-3, 4, (1,), generator=g))
        return torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    if pattern == "ties":
        pool = torch.tensor([-1.0, 0.0, 1.0, 2.0], dtype=torch.float64)
        return pool[torch.randint(0, 4, (n, d), generator=g)]
    if pattern == "zeros":
        # signed zeros mixed with a few tied values: the key order puts -0.0
        # below +0.0, the reference calls them equal; results must agree in value.
        pool = torch.tensor([-0.0, 0.0, 0.0, -0.0, 1.0, -1.0, 0.5], dtype=torch.float64)
        return pool[torch.randint(0, len(pool), (n, d), generator=g)]
    if pattern == "magnitudes":
        lo, hi = _EXP_RANGE[dtype]
        exps = torch.randint(lo, hi + 1, (n, d), generator=g).to(torch.float64)
        signs = torch.randint(0, 2, (n, d), generator=g).to(torch.float64) * 2 - 1
        mant = torch.rand(n, d, generator=g, dtype=torch.float64) + 0.5
        return signs * mant * torch.pow(10.0, exps)
    if pattern == "mixed":
        # each column gets its own pattern
        parts = [_values(p, n, d, dtype, g) for p in ("gaussian", "ties", "zeros", "magnitudes")]
        which = torch.randint(0, 4, (d,), generator=g)
        out = parts[0].clone()
        for k in range(1, 4):
            out[:, which == k] = parts[k][:, which == k]
        return out
    raise ValueError(pattern)


def make_matrix(spec: MatrixSpec, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(spec.seed)
    X = _values(spec.pattern, spec.n, spec.d, dtype, g)
    # Byzantine rows: whole rows of NaN / +inf / -inf, at random positions.
    perm = torch.randperm(spec.n, generator=g)
    k = 0
    for count, value in ((spec.nan_rows, math.nan), (spec.posinf_rows, math.inf), (spec.neginf_rows, -math.inf)):
        rows = perm[k : k + count]
        X[rows] = value
        k += count
    if spec.scatter > 0 and X.numel() > 0:
        u = torch.rand(spec.n, spec.d, generator=g)
        kind = torch.randint(0, 3, (spec.n, spec.d), generator=g)
        hit = u < spec.scatter
        X[hit & (kind == 0)] = math.nan
        X[hit & (kind == 1)] = math.inf
        X[hit & (kind == 2)] = -math.inf
    return X.to(dtype)


@st.composite
def matrix_specs(draw, max_n: int = 300, max_d: int = 5000, max_elements: int = MAX_ELEMENTS, min_d: int = 0):
    # Mix small and full-size draws: plain integers() shrink towards (and
    # are biased to) their bounds, which would make most matrices tiny.
    n = draw(st.one_of(st.integers(1, min(20, max_n)), st.integers(1, max_n)))
    d_max = max(min_d, min(max_d, max_elements // n))
    size = draw(st.sampled_from(["small", "any", "largest"]))
    if size == "small":
        d = draw(st.integers(min_d, min(d_max, 40)))
    elif size == "any":
        d = draw(st.integers(min_d, d_max))
    else:
        d = d_max - draw(st.integers(0, min(20, d_max - min_d)))
    pattern = draw(st.sampled_from(PATTERNS))
    seed = draw(st.integers(0, 2**31 - 1))
    nonfinite = draw(st.sampled_from(["none", "rows", "scatter", "both"]))
    nan_rows = posinf_rows = neginf_rows = 0
    scatter = 0.0
    if nonfinite in ("rows", "both"):
        nan_rows = draw(st.integers(0, n))
        posinf_rows = draw(st.integers(0, n - nan_rows))
        neginf_rows = draw(st.integers(0, n - nan_rows - posinf_rows))
    if nonfinite in ("scatter", "both"):
        scatter = draw(st.sampled_from([0.01, 0.1, 0.4]))
    return MatrixSpec(n, d, seed, pattern, nan_rows, posinf_rows, neginf_rows, scatter)


@st.composite
def spec_and_f(draw, **kwargs):
    """A matrix spec and an f in the whole valid range 0..(n-1)//2."""
    spec = draw(matrix_specs(**kwargs))
    f = draw(st.integers(0, (spec.n - 1) // 2))
    return spec, f


# ---------------------------------------------------------------------------
# Running ops


def run_op(op: str, X: torch.Tensor, f: int = 0, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The coordinate-wise rule ``op`` of robustagg on X (f where it takes one, weights for the mean)."""
    return _call(robustagg, op, X, f, weights)


def run_reference(op: str, X: torch.Tensor, f: int = 0, weights: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`run_op` through the float64 oracle."""
    return _call(reference, op, X, f, weights)


def _call(module, op: str, X: torch.Tensor, f: int, weights: torch.Tensor | None) -> torch.Tensor:
    if op == "mean":
        return module.mean(X, weights)
    if op == "coordinate_median":
        return module.coordinate_median(X)
    return getattr(module, op)(X, f)


# ---------------------------------------------------------------------------
# Comparisons. Equality, from the weakest to the strictest:
#   assert_exact      equal values: NaN == NaN, -0.0 == +0.0
#   assert_same_bits  equal bits except NaN payloads: -0.0 != +0.0
#   assert_identical  equal bits, NaN payloads included
# and, for results that are sums, assert_sum_close within the summation's rounding.


def _column_report(X: torch.Tensor | None, j: int) -> str:
    if X is None:
        return ""
    col = X[:, j].to(torch.float64)
    sorted_col = torch.sort(col).values.tolist()
    if len(sorted_col) > 40:
        return f"\n  column {j} (n={len(sorted_col)}, sorted, first/last 20): {sorted_col[:20]} ... {sorted_col[-20:]}"
    return f"\n  column {j} sorted: {sorted_col}"


def _check_meta(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype, f"dtype {a.dtype} != {b.dtype}"
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert a.device == b.device, f"device {a.device} != {b.device}"


def assert_exact(a: torch.Tensor, b: torch.Tensor, X: torch.Tensor | None = None, what: str = "") -> None:
    """Equal values: a == b element for element, NaN exactly where b has NaN, -0.0 == +0.0.
    Same dtype, shape and device."""
    _check_meta(a, b)
    a64, b64 = a.detach().cpu().to(torch.float64), b.detach().cpu().to(torch.float64)
    nan_a, nan_b = torch.isnan(a64), torch.isnan(b64)
    bad = (nan_a != nan_b) | (~nan_a & ~nan_b & (a64 != b64))
    if bad.any():
        j = int(bad.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} results differ; first at column {j}: "
            f"got {a64[j].item()!r}, expected {b64[j].item()!r}" + _column_report(X, j)
        )
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


_INT_OF_SIZE = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


def _raw_bits(x: torch.Tensor) -> torch.Tensor:
    """x's elements as integers of the same width, flattened, on the CPU."""
    return x.detach().cpu().reshape(-1).view(_INT_OF_SIZE[x.element_size()])


def _first_difference(got: torch.Tensor, want: torch.Tensor, bad: torch.Tensor, what: str, how: str) -> None:
    if bad.any():
        j = int(bad.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements {how}; first at flat index {j}: "
            f"{got.reshape(-1)[j].item()!r} vs {want.reshape(-1)[j].item()!r}"
        )


def assert_same_bits(got: torch.Tensor, want: torch.Tensor, what: str = "") -> None:
    """Same dtype and shape; NaN exactly where want has NaN, whatever its payload (kernels and
    torch make different NaNs); every other element the same bit pattern, so -0.0 != +0.0.
    got and want may be on different devices (CPU/CUDA parity)."""
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    g, w = got.detach().cpu().reshape(-1), want.detach().cpu().reshape(-1)
    nan_g, nan_w = torch.isnan(g), torch.isnan(w)
    bad = (nan_g != nan_w) | (~nan_w & (_raw_bits(g) != _raw_bits(w)))
    _first_difference(g, w, bad, what, "differ in their bits")


def assert_identical(got: torch.Tensor, want: torch.Tensor, what: str = "") -> None:
    """Same dtype and shape, and every bit equal, NaN payloads and the sign of zero included
    (a tensor that must not have been written, two runs that must agree). Any dtype; got and
    want may be on different devices."""
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    _first_difference(got, want, _raw_bits(got) != _raw_bits(want), what, "changed their bits")


def assert_sum_close(a: torch.Tensor, b: torch.Tensor, X: torch.Tensor, what: str = "") -> None:
    """Tolerance for results that are sums of the column's values (mean,
    trimmed_mean, meamed): the kernel and the reference both sum in float64 but
    in different orders, then round once to the output dtype.

    Allowed per coordinate j:
        4 * eps(dtype) * max(|a|, |b|)      (the final rounding: a few ulps;
                                             for half dtypes that is 1 ulp of
                                             the half dtype, via float32)
      + eps(dtype) * tiny(dtype)            (one ulp at the subnormal bottom)
      + 1e-12 * max_i |X_ij| over finite X_ij   (float64 summation-order error)
    NaN must sit exactly where the reference has NaN, and infinities must match
    in sign.
    """
    _check_meta(a, b)
    fi = torch.finfo(a.dtype)
    a64, b64 = a.detach().cpu().to(torch.float64), b.detach().cpu().to(torch.float64)
    X64 = X.detach().cpu().to(torch.float64)
    if X64.shape[1] == 0:
        return
    colmax = X64.abs().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).amax(0)
    rel = (1.0 if a.dtype in HALF_DTYPES else 4.0) * fi.eps
    tol = rel * torch.maximum(a64.abs(), b64.abs()).nan_to_num(posinf=0.0) + fi.eps * fi.tiny + 1e-12 * colmax
    nan_a, nan_b = torch.isnan(a64), torch.isnan(b64)
    inf_b = torch.isinf(b64)
    fin_b = torch.isfinite(b64)
    bad = nan_a != nan_b
    bad |= inf_b & (a64 != b64)
    bad |= fin_b & ~(torch.isfinite(a64) & ((a64 - b64).abs() <= tol))
    if bad.any():
        j = int(bad.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} results out of tolerance; first at column {j}: "
            f"got {a64[j].item()!r}, expected {b64[j].item()!r}, |diff|={abs(a64[j] - b64[j]).item()!r}, "
            f"tol={tol[j].item()!r}" + _column_report(X, j)
        )


def assert_matches_reference(
    op: str,
    X: torch.Tensor,
    f: int = 0,
    weights: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    what: str = "",
) -> None:
    """Run op (unless out is given) and compare with the reference under the op's contract."""
    if out is None:
        out = run_op(op, X, f, weights)
    expected = run_reference(op, X.cpu(), f, None if weights is None else weights.cpu())
    label = f"{op}(n={X.shape[0]}, d={X.shape[1]}, f={f}, dtype={X.dtype}) {what}"
    if op == "coordinate_median":
        assert_exact(out.cpu(), expected, X, label)
    else:
        assert_sum_close(out.cpu(), expected, X, label)
