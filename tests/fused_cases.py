"""Machinery shared by the fused multi-tensor update tests (SPEC 6), test_fused_*.py.

* The kernels' sizes, read from the compiled module: the CPU kernels cut every tensor into
  pieces of PIECE elements (the weighted step works through a piece in blocks of BLOCK); the
  CUDA kernels pack chunks of CHUNK elements of up to MAX_TENSORS tensors, MAX_BLOCKS chunks
  per launch, except the weighted step, which reads an address table of TABLE_CHUNK-element
  chunks. Tests aim at those boundaries.
* Inputs: shapes, lists of tensors drawn from a seed in conftest's value patterns, strided views.
* The step-by-step PyTorch expressions of every op. Every op computes in Acc (float32 for
  float32/float16/bfloat16, float64 for float64) with every scalar rounded once from double to
  Acc, every operation rounded once in the order written (no FMA), and one cast to the storage
  dtype; torch's CPU +, -, * and / with a tensor or a Python float are correctly rounded, so
  these expressions give the kernels' bits. (torch.add(alpha=), addcmul and _foreach_add_ do
  not: the vectorised CPU kernel fuses them into an FMA. torch.sqrt on CPU is not correctly
  rounded: about one float32 root in five is 1 ulp off, so roots are taken by NumPy.)
* The error-table harness: a table maps an id to ``(op, overrides of the op's valid arguments,
  exception, message, native)``, native saying whether the native op raises it too (the
  wrappers add type and list checks of their own).
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck
from hypothesis import strategies as st

import robustagg._C as _kernels
import robustagg.ops

from conftest import DTYPES, PATTERNS, MatrixSpec, assert_identical, make_matrix

PIECE = _kernels.FUSED_CPU_PIECE
BLOCK = _kernels.FUSED_CPU_BLOCK
CHUNK = _kernels.FUSED_CUDA_CHUNK
MAX_BLOCKS = _kernels.FUSED_CUDA_MAX_BLOCKS
MAX_TENSORS = _kernels.FUSED_CUDA_MAX_TENSORS
TABLE_CHUNK = _kernels.FUSED_CUDA_TABLE_CHUNK

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def acc_scalar(x: float, dtype: torch.dtype) -> float:
    """x (a double) rounded to the accumulation dtype of dtype, as a Python float: the kernels'
    static_cast<Acc>(double). Passing it to torch avoids relying on how torch converts a Python
    scalar."""
    return torch.tensor(x, dtype=torch.float64).to(acc_dtype(dtype)).item()


def sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded square root (NumPy's, the IEEE instruction); torch.sqrt on CPU is not."""
    with np.errstate(invalid="ignore"):
        return torch.from_numpy(np.asarray(np.sqrt(x.numpy())))


# ---------------------------------------------------------------------------
# Tensors and devices


def randn(shape, gen: torch.Generator, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def ones(*shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.ones(shape, dtype=dtype)


def to_device(x: torch.Tensor, device: str) -> torch.Tensor:
    """A copy on device with x's strides (x dense: contiguous or a permutation)."""
    return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=device).copy_(x)


def dtype_of(dtype):
    """i -> the dtype of tensor i of a list: dtype, or the four dtypes in turn for "mixed"."""
    return (lambda i: DTYPES[i % len(DTYPES)]) if dtype == "mixed" else (lambda i: dtype)


def synchronize(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize()


def launch_sizes(unit: int, longest: int, count: int, small: int = 1500) -> list[int]:
    """count - 2 sizes of 1-D tensors (the caller adds a 0-D and a transposed one): around one and
    two units (CUDA chunks, CPU pieces), one of ``longest`` elements after a few others, an empty
    one, and small ones below ``small``."""
    sizes = [7, unit - 1, unit, unit + 1, longest, 0, 2 * unit + 3]
    return sizes + [1 + (37 * k) % small for k in range(count - len(sizes) - 2)]


# ---------------------------------------------------------------------------
# Shapes and random lists: hypothesis draws a description of each tensor, torch builds the
# values from a seed (make_matrix's patterns: gaussian, ties, signed zeros, magnitudes down to
# subnormals, mixed; scattered NaN/+inf/-inf).


@st.composite
def small_shapes(draw):
    """0-D to 3-D, with empty dimensions."""
    ndim = draw(st.integers(0, 3))
    dim = st.one_of(st.integers(1, 9), st.just(0), st.integers(10, 40))
    return tuple(draw(dim) for _ in range(ndim))


@st.composite
def piece_shapes(draw):
    """More than one CPU piece, piece boundaries included."""
    numel = draw(
        st.one_of(st.sampled_from([PIECE + 1, 2 * PIECE, 2 * PIECE + 1, 3 * PIECE + 7]), st.integers(PIECE + 1, 70_000))
    )
    if draw(st.booleans()):
        return (numel,)
    rows = draw(st.integers(2, 7))
    return (rows, -(-numel // rows))


@st.composite
def block_shapes(draw, most: int):
    """Block and piece boundaries, and more than one piece (up to most elements)."""
    numel = draw(
        st.one_of(
            st.sampled_from(
                [
                    BLOCK - 1,
                    BLOCK,
                    BLOCK + 1,
                    3 * BLOCK + 5,
                    PIECE - 1,
                    PIECE,
                    PIECE + 1,
                    PIECE + BLOCK + 3,
                    2 * PIECE + 1,
                ]
            ),
            st.integers(BLOCK + 1, most),
        )
    )
    if draw(st.booleans()):
        return (numel,)
    rows = draw(st.integers(2, 7))
    return (rows, -(-numel // rows))


@dataclass(frozen=True)
class ListsSpec:
    """Tensor i of each of an op's lists: one shape and dtype, a value pattern per list."""

    shape: tuple
    dtype: torch.dtype
    seed: int
    patterns: tuple
    scatter: float

    def tensors(self, names, non_negative=()) -> dict:
        numel = math.prod(self.shape)
        out = {}
        for k, (name, pattern) in enumerate(zip(names, self.patterns)):
            x = make_matrix(MatrixSpec(1, numel, self.seed + k, pattern, scatter=self.scatter), self.dtype)
            out[name] = (x.abs() if name in non_negative else x).reshape(self.shape)
        return out


@st.composite
def lists_specs(draw, k: int, dtypes):
    """1 to 6 tensors for each of k lists (0-D, empty and more than a piece among them)."""
    count = draw(st.integers(1, 6))
    big_at = draw(st.one_of(st.integers(0, count - 1), st.none()))
    out = []
    for i in range(count):
        shape = draw(piece_shapes() if i == big_at else small_shapes())
        out.append(
            ListsSpec(
                shape,
                draw(st.sampled_from(dtypes)),
                draw(st.integers(0, 2**31 - 8)),
                tuple(draw(st.sampled_from(PATTERNS)) for _ in range(k)),
                draw(st.sampled_from([0.0, 0.0, 0.01, 0.2])),
            )
        )
    return out


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of the weighted or masked step: its params, gradients, corrections,
    buffers are tensors 0, 1, 2... of it."""

    shape: tuple
    dtype: torch.dtype
    seed: int
    patterns: tuple  # one per tensor, cycled
    scatter: float

    def tensor(self, k: int) -> torch.Tensor:
        numel = math.prod(self.shape)
        pattern = self.patterns[k % len(self.patterns)]
        spec = MatrixSpec(1, numel, (self.seed + 7919 * k) % 2**31, pattern, scatter=self.scatter)
        return make_matrix(spec, self.dtype).reshape(self.shape)

    def mask(self, density: float) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return torch.rand(self.shape, generator=g) < density


@st.composite
def param_lists(draw, dtypes, most: int = 2 * PIECE + 300):
    k = draw(st.integers(1, 5))
    big_at = draw(st.one_of(st.integers(0, k - 1), st.none()))
    out = []
    for i in range(k):
        shape = draw(block_shapes(most) if i == big_at else small_shapes())
        out.append(
            ParamSpec(
                shape,
                draw(st.sampled_from(dtypes)),
                draw(st.integers(0, 2**31 - 2)),
                tuple(draw(st.sampled_from(PATTERNS)) for _ in range(3)),
                draw(st.sampled_from([0.0, 0.0, 0.01, 0.2])),
            )
        )
    return out


# Beta-like coefficients in [0, 1] (the bounds and typical values first), learning rates.
unit_interval = st.one_of(st.sampled_from([0.0, 1.0, 0.9, 0.5, 0.99, 0.999, 0.1]), st.floats(0.0, 1.0))
lrs = st.one_of(st.sampled_from([0.1, 1.0, 1e-3, 0.0, -0.5]), st.floats(-3.0, 3.0))


def views(big_cols: int) -> dict:
    """name -> (view of a base tensor, the base's shape); "big strided" takes every other column
    of a (3, big_cols) base, more than a piece when big_cols > 2 PIECE."""
    return {
        "transposed": (lambda t: t.t(), (12, 9)),
        "step slice": (lambda t: t[:, 1::3], (10, 20)),
        "row step": (lambda t: t[::2], (11, 7)),
        "permuted 3-D": (lambda t: t.permute(2, 0, 1), (4, 5, 6)),
        "big strided": (lambda t: t[:, ::2], (3, big_cols)),
    }


def check_thread_counts(run, check) -> None:
    """run() at 1 and 2 intra-op threads (the thread count restored after), then check(results, t)
    for each; run's results must not depend on the thread count."""
    threads = torch.get_num_threads()
    results = {}
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            results[t] = run()
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    for t, result in results.items():
        check(result, t)


# ---------------------------------------------------------------------------
# Step-by-step expressions: the new values of the written tensors, one parameter at a time


def momentum_expr(m, g, beta):
    """momentum_update_: keep = beta rounded to Acc, take = 1.0 - beta in double (torch rounds the
    Python scalar to float32 when it multiplies a float32 tensor), two products, one sum."""
    A = acc_dtype(m.dtype)
    return ((m.to(A) * acc_scalar(beta, m.dtype)) + (g.to(A) * (1.0 - beta))).to(m.dtype)


def client_expr(p, g, a, c, m, lr, coef_grad=1.0, coef_anchor=0.0, coef_control=0.0, coef_momentum=0.0):
    """client_step_; a, c, m may be None (no term)."""
    A, r = acc_dtype(p.dtype), (lambda x: acc_scalar(x, p.dtype))
    d = g.to(A) * r(coef_grad)
    for x, k in ((a, coef_anchor), (c, coef_control), (m, coef_momentum)):
        if x is not None:
            d = d + x.to(A) * r(k)
    return (p.to(A) - d * r(lr)).to(p.dtype)


def adam_client_expr(p, g, a, c, m, v, lr, beta1, beta2, eps, step):
    """adam_client_step_; lr / bc1 and sqrt(bc2) in double, then rounded."""
    A, r = acc_dtype(p.dtype), (lambda x: acc_scalar(x, p.dtype))
    bc1, bc2 = 1.0 - beta1**step, 1.0 - beta2**step
    gt = g.to(A)
    if a is not None:
        gt = gt - a.to(A)
    if c is not None:
        gt = gt + c.to(A)
    m1 = m.to(A) * r(beta1) + gt * r(1.0 - beta1)
    v1 = v.to(A) * r(beta2) + (gt * gt) * r(1.0 - beta2)
    denom = sqrt_rn(v1) / r(math.sqrt(bc2)) + r(eps)
    return (p.to(A) - (m1 / denom) * r(lr / bc1)).to(p.dtype)


def adam_stats_expr(m, v, g, beta1, beta2):
    """adam_stats_update_: (new exp_avg, new exp_avg_sq)."""
    A, r = acc_dtype(m.dtype), (lambda x: acc_scalar(x, m.dtype))
    gg = g.to(A)
    return (
        (m.to(A) * r(beta1) + gg * r(1.0 - beta1)).to(m.dtype),
        (v.to(A) * r(beta2) + (gg * gg) * r(1.0 - beta2)).to(m.dtype),
    )


def mvr_expr(m, g, h, a):
    A, r = acc_dtype(m.dtype), (lambda x: acc_scalar(x, m.dtype))
    gg = g.to(A)
    return (gg * r(a) + ((m.to(A) + gg) - h.to(A)) * r(1.0 - a)).to(m.dtype)


def wga_expr(p, gs, weights, lr, cs=None, beta=0.0):
    """weighted_step_: (new p, [new c_1..c_N] or None); gs: the N + 1 users' gradients, cs: the
    N corrections."""
    A, r = acc_dtype(p.dtype), (lambda x: acc_scalar(x, p.dtype))
    g0 = gs[0].to(A)
    u = g0 * r(weights[0])
    new_c = None if cs is None else []
    for i in range(1, len(gs)):
        gi = gs[i].to(A)
        u = u + gi * r(weights[i])
        if cs is not None:
            c = cs[i - 1].to(A)
            u = u + c
            new_c.append((c * r(1.0 - beta) + ((g0 - gi) * r(weights[i])) * r(beta)).to(p.dtype))
    return (p.to(A) - u * r(lr)).to(p.dtype), new_c


def sgd_expr(p, m, g, lr, mu, wd=0.0, mask=None):
    """masked_sgd_step_: (new p, new m); the step takes the momentum as stored (rounded to the
    dtype); torch.where keeps the inactive bits."""
    T, A, r = p.dtype, acc_dtype(p.dtype), (lambda x: acc_scalar(x, p.dtype))
    d = g.to(A)
    if wd != 0.0:
        d = d + p.to(A) * r(wd)
    m1 = (m.to(A) * r(mu) + d).to(T)
    p1 = (p.to(A) - m1.to(A) * r(lr)).to(T)
    if mask is None:
        return p1, m1
    return torch.where(mask, p1, p), torch.where(mask, m1, m)


# ---------------------------------------------------------------------------
# Oracle tolerances of the weighted and masked steps


def tolerance_units(dtype: torch.dtype) -> tuple:
    """(u, sa, max) of Acc and (eps, smallest subnormal, max) of dtype: u = eps(Acc) / 2 is the
    unit roundoff, sa the smallest subnormal of Acc."""
    fa, ft = torch.finfo(acc_dtype(dtype)), torch.finfo(dtype)
    return fa.eps / 2, fa.tiny * fa.eps, fa.max, ft.eps, ft.tiny * ft.eps, ft.max


def skip_mask(big, out_max, want, inputs, intermediates) -> torch.Tensor:
    """Entries left to the bit-exact comparison: a non-finite input, an intermediate beyond a
    quarter of Acc's range (the kernel may overflow where the exact value does not), a result
    beyond half of the dtype's range (the final rounding may overflow)."""
    skip = torch.zeros(want.shape, dtype=torch.bool)
    for x in inputs:
        skip |= ~x.isfinite()
    for x in intermediates:
        skip |= x.isfinite() & (x.abs() > big / 4)
    skip |= want.isfinite() & (want.abs() > out_max / 2)
    return skip


def check_tolerance(got, want, tol, skip, what) -> None:
    """got (any dtype, on the CPU) within tol of the float64 want where not skipped; NaN / inf as
    want has them."""
    got64 = got.to(torch.float64)
    bad = got64.isnan() != want.isnan()
    bad |= want.isinf() & (got64 != want)
    fin = want.isfinite()
    bad |= fin & ~(got64.isfinite() & ((got64 - want).abs() <= tol))
    bad &= ~skip
    raise_if_bad(bad, got64, want, tol, what)


def raise_if_bad(bad, got64, want, tol, what, inputs=lambda j: "") -> None:
    """An AssertionError naming how many entries ``bad`` flags and the first of them (with
    ``inputs(j)``, a description of that entry's inputs, when given)."""
    if bad.any():
        j = int(bad.reshape(-1).nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} out of tolerance; first at flat index {j}: {inputs(j)}"
            f"got {got64.reshape(-1)[j].item()!r}, oracle {want.reshape(-1)[j].item()!r}, "
            f"tol {tol.reshape(-1)[j].item()!r}"
        )


# ---------------------------------------------------------------------------
# Argument checks

WRITTEN = {  # the arguments each op writes
    "momentum_update_": ("buffers",),
    "client_step_": ("params",),
    "adam_client_step_": ("params",),
    "adam_stats_update_": ("exp_avg", "exp_avg_sq"),
    "mvr_update_": ("momentum",),
    "weighted_step_": ("params", "corrections"),
    "masked_sgd_step_": ("params", "momentum_buffers"),
}


def native_args(op: str, kwargs: dict) -> list:
    """A robustagg.ops wrapper's keywords as the native op's positional arguments (schema order);
    the weighted step's gradient and correction lists flattened user-major, its weights floats."""
    if op == "weighted_step_":
        kwargs = dict(kwargs)
        kwargs["grads"] = [t for gl in kwargs["grads"] for t in gl]
        if kwargs.get("corrections") is not None:
            kwargs["corrections"] = [t for cl in kwargs["corrections"] for t in cl]
        kwargs["weights"] = [float(w) for w in kwargs["weights"]]
    bound = inspect.signature(getattr(robustagg.ops, op)).bind(**kwargs)
    bound.apply_defaults()
    return [bound.arguments[a.name] for a in getattr(torch.ops.robustagg, op).default._schema.arguments]


def native_cases(errors: dict) -> list[str]:
    """The ids of an error table's cases that the native op raises too."""
    return [k for k, v in errors.items() if v[4]]


def error_table_tests(errors: dict, valid):
    """The two tests of an error table ``{id: (op, overrides, exc, message, native)}``.

    ``valid(op)`` gives valid keyword arguments; each case overrides some. The
    first test calls the wrapper, the second the native op (for the cases it
    raises too: the wrapper adds type and list checks). Bind both at module
    level, under names starting with ``test_``, for pytest to collect them.
    """

    @pytest.mark.parametrize("case", list(errors), ids=str)
    def test_errors(case):
        op, overrides, exc, message, _ = errors[case]
        assert_refused(op, {**valid(op), **overrides}, exc, message, case)

    @pytest.mark.parametrize("case", native_cases(errors), ids=str)
    def test_errors_native_op(case):
        op, overrides, exc, message, _ = errors[case]
        assert_refused_by_native_op(op, {**valid(op), **overrides}, exc, message)

    return test_errors, test_errors_native_op


def assert_refused(op: str, kwargs: dict, exc: type, message: str, what: str) -> None:
    """robustagg.ops.<op>(**kwargs) raises exc with message, and before writing anything: every
    tensor of the written arguments keeps its bits."""
    written = [
        t
        for n in WRITTEN[op]
        if isinstance(kwargs.get(n), list)
        for x in kwargs[n]
        for t in (x if isinstance(x, list) else [x])
        if isinstance(t, torch.Tensor)
    ]
    before = [t.clone() for t in written]
    with pytest.raises(exc, match=re.escape(message)):
        getattr(robustagg.ops, op)(**kwargs)
    for t, t0 in zip(written, before):
        assert_identical(t, t0, f"{what}: written before the error")


def assert_refused_by_native_op(op: str, kwargs: dict, exc: type, message: str) -> None:
    """The native op, given kwargs as its positional arguments, raises exc with message."""
    with pytest.raises(exc, match=re.escape(message)):
        getattr(torch.ops.robustagg, op)(*native_args(op, kwargs))


def assert_opcheck(op: str, args: tuple) -> None:
    """torch.library.opcheck: schema (only the written arguments mutated), fake tensor, autograd
    registration, AOT dispatch."""
    result = torch.library.opcheck(getattr(torch.ops.robustagg, op).default, args)
    assert all(v == "SUCCESS" for v in result.values()), result


def opcheck_tensors(gen: torch.Generator, device: str, big: int | None = None) -> list[torch.Tensor]:
    """A small mixed list: several dtypes, transposed, 0-D, empty, and one of big elements if
    given (no NaN: opcheck compares with equal_nan=False)."""
    shapes = [
        ((3, 4), torch.float32),
        ((5,), torch.float64),
        ((6, 4), torch.float32),
        ((2, 3), torch.bfloat16),
        ((), torch.float16),
        ((0, 3), torch.float32),
    ] + ([((big,), torch.bfloat16)] if big else [])
    xs = [randn(s, gen, dt) for s, dt in shapes]
    xs[2] = xs[2].t()
    return [to_device(x, device) for x in xs]
