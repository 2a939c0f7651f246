"""Fused multi-tensor momentum update (SPEC 6): ``robustagg.ops.momentum_update_``.

In place, for every i: ``buffers[i] <- beta * buffers[i] + (1 - beta) * grads[i]``.
The kernels compute in float32 for float32/float16/bfloat16 and in float64
for float64, with ``keep = acc(beta)`` and ``take = acc(1.0 - beta)`` (the
subtraction in double), each product and the sum rounded once (no FMA), then
one cast to the storage dtype. That is exactly what the step-by-step PyTorch
expression in ``step_by_step`` computes, so results are compared with it bit
for bit (NaN payloads aside; signed zeros included), and with the float64
oracle ``reference.momentum_update`` within the rounding of the dtype.

The CPU kernel cuts the tensors into pieces of 16384 elements spread over the
threads; the CUDA kernel packs chunks of 65536 elements of up to 36 tensors
(320 chunks) into one launch. The CUDA test is marked ``cuda`` and skipped
without a GPU and the CUDA kernels, as in test_cuda.py.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import robustagg.ops
from conftest import DTYPES, MatrixSpec, assert_bitwise, cuda_ready, make_matrix
from robustagg import reference

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
PIECE = 1 << 14  # CPU kernel: elements per parallel piece
CHUNK = 65536  # CUDA kernel: elements per block
MAX_BLOCKS = 320  # CUDA kernel: chunks per launch
MAX_TENSORS = 36  # CUDA kernel: tensors per launch


def update(buffers, grads, beta):
    robustagg.ops.momentum_update_(buffers, grads, beta)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def step_by_step(m: torch.Tensor, g: torch.Tensor, beta: float) -> torch.Tensor:
    """The contract as PyTorch evaluates it: keep = beta rounded to the accumulation
    dtype (a Python float of that value), take = 1.0 - beta in double (torch casts
    the Python scalar to float32 when it multiplies a float32 tensor), two
    products, one sum, each rounded once, then the cast to m's dtype."""
    acc = acc_dtype(m.dtype)
    keep = torch.tensor(beta, dtype=torch.float64).to(acc).item()
    return ((m.to(acc) * keep) + (g.to(acc) * (1.0 - beta))).to(m.dtype)


def assert_same_bits(got: torch.Tensor, want: torch.Tensor, what: str = "") -> None:
    """Same dtype, shape and bits (stronger than torch.equal: -0.0 != +0.0); NaN where want has NaN."""
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert_bitwise(got.reshape(-1), want.reshape(-1), what)
    if not want.isnan().any():
        assert torch.equal(got, want), what


def assert_close_to_oracle(got: torch.Tensor, m: torch.Tensor, g: torch.Tensor, beta: float, what: str = "") -> None:
    """got within the rounding of the contract of the float64 oracle.

    With u = eps/2 of the accumulation dtype: keep, take, both products and the
    sum each add a relative error <= u of their terms, so the float32/float64
    value is within 3u (|beta m| + |(1 - beta) g|) of the exact one, plus the
    error of keep when beta is subnormal in that dtype (<= one subnormal step
    times |m|), plus the final rounding to the dtype (<= eps(dtype) |result|)
    and a few subnormal steps where the products or the result underflow.
    NaN exactly where the oracle has NaN, infinities equal; except that a beta
    below the smallest float32 subnormal (about 7e-46) gives keep = 0 in
    float32, so a non-finite buffer entry gives NaN (0 * inf) where the exact
    beta * inf is inf: those entries are left to the bit-exact comparison.
    """
    want = reference.momentum_update([m], [g], beta)[0]
    got64, m64, g64 = got.to(torch.float64), m.to(torch.float64), g.to(torch.float64)
    fa, ft = torch.finfo(acc_dtype(got.dtype)), torch.finfo(got.dtype)
    sub_a, sub_t = fa.tiny * fa.eps, ft.tiny * ft.eps
    scale = (beta * m64).abs() + ((1.0 - beta) * g64).abs()
    tol = 2 * fa.eps * scale + sub_a * (m64.abs() + g64.abs()) + ft.eps * want.abs() + 4 * sub_t
    nan_got, nan_want = got64.isnan(), want.isnan()
    bad = nan_got != nan_want
    bad |= want.isinf() & (got64 != want)
    fin = want.isfinite()
    bad |= fin & ~(got64.isfinite() & ((got64 - want).abs() <= tol))
    if beta > 0 and torch.tensor(beta, dtype=torch.float64).to(acc_dtype(got.dtype)).item() == 0:
        bad &= m64.isfinite()
    if bad.any():
        j = int(bad.reshape(-1).nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} out of tolerance; first at flat index {j}: "
            f"m={m64.reshape(-1)[j].item()!r} g={g64.reshape(-1)[j].item()!r} beta={beta!r}: "
            f"got {got64.reshape(-1)[j].item()!r}, oracle {want.reshape(-1)[j].item()!r}, "
            f"tol {tol.reshape(-1)[j].item()!r}"
        )


# ---------------------------------------------------------------------------
# Random lists: hypothesis draws a description of each pair, torch builds the
# values from a seed (make_matrix patterns: gaussian, ties, signed zeros,
# magnitudes down to subnormals, mixed; scattered NaN/+inf/-inf).


@dataclass(frozen=True)
class PairSpec:
    shape: tuple
    dtype: torch.dtype
    seed: int
    m_pattern: str
    g_pattern: str
    scatter: float

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        numel = math.prod(self.shape)
        m = make_matrix(MatrixSpec(1, numel, self.seed, self.m_pattern, scatter=self.scatter), self.dtype)
        g = make_matrix(MatrixSpec(1, numel, self.seed + 1, self.g_pattern, scatter=self.scatter), self.dtype)
        return m.reshape(self.shape), g.reshape(self.shape)


PATTERNS = ["gaussian", "ties", "zeros", "magnitudes", "mixed"]

betas = st.one_of(st.sampled_from([0.0, 1.0, 0.9, 0.5, 0.99, 0.999, 0.1]), st.floats(0.0, 1.0))


@st.composite
def small_shapes(draw):
    """0-D to 3-D, with empty dimensions."""
    ndim = draw(st.integers(0, 3))
    dim = st.one_of(st.integers(1, 9), st.just(0), st.integers(10, 40))
    return tuple(draw(dim) for _ in range(ndim))


@st.composite
def big_shapes(draw):
    """More than one CPU piece (16384 elements), piece boundaries included."""
    numel = draw(st.one_of(st.sampled_from([PIECE + 1, 2 * PIECE, 2 * PIECE + 1, 3 * PIECE + 7]),
                           st.integers(PIECE + 1, 70_000)))
    if draw(st.booleans()):
        return (numel,)
    rows = draw(st.integers(2, 7))
    return (rows, -(-numel // rows))


@st.composite
def pair_lists(draw, dtypes):
    k = draw(st.integers(1, 6))
    big_at = draw(st.one_of(st.integers(0, k - 1), st.none()))
    out = []
    for i in range(k):
        shape = draw(big_shapes() if i == big_at else small_shapes())
        out.append(PairSpec(shape, draw(st.sampled_from(dtypes)), draw(st.integers(0, 2**31 - 2)),
                            draw(st.sampled_from(PATTERNS)), draw(st.sampled_from(PATTERNS)),
                            draw(st.sampled_from([0.0, 0.0, 0.01, 0.2]))))
    return out


def check_random_list(specs: list[PairSpec], beta: float) -> None:
    pairs = [s.tensors() for s in specs]
    buffers = [m.clone() for m, _ in pairs]
    grads = [g.clone() for _, g in pairs]
    ptrs = [b.data_ptr() for b in buffers]
    update(buffers, grads, beta)
    for i, (spec, (m, g)) in enumerate(zip(specs, pairs)):
        what = f"pair {i} of {len(specs)}: {spec}, beta={beta!r}"
        assert buffers[i].data_ptr() == ptrs[i], f"{what}: buffer not updated in place"
        assert_same_bits(buffers[i], step_by_step(m, g, beta), what)
        assert_close_to_oracle(buffers[i], m, g, beta, what)
        assert_same_bits(grads[i], g, f"{what}: grads changed")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=60, **SETTINGS)
@given(data=st.data(), beta=betas)
def test_random_lists_one_dtype(dtype, data, beta):
    check_random_list(data.draw(pair_lists([dtype])), beta)


@settings(max_examples=80, **SETTINGS)
@given(specs=pair_lists(DTYPES), beta=betas)
def test_random_lists_mixed_dtypes(specs, beta):
    check_random_list(specs, beta)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_piece_boundaries_and_known_betas(dtype):
    """Every element of tensors at and around piece boundaries, for fixed betas."""
    sizes = [1, PIECE - 1, PIECE, PIECE + 1, 2 * PIECE, 2 * PIECE + 1, 3 * PIECE + 5]
    for beta in (0.0, 1.0, 0.9, 0.25, 1 / 3):
        specs = [PairSpec((n,), dtype, n, "gaussian", "magnitudes", 0.0) for n in sizes]
        check_random_list(specs, beta)


def test_beta_is_on_the_buffer():
    """beta weighs the buffer and 1 - beta the gradient, not the other way round."""
    for dtype in DTYPES:
        m, g = torch.full((3,), 8.0, dtype=dtype), torch.full((3,), 4.0, dtype=dtype)
        update([m], [g], 0.75)
        assert m.tolist() == [7.0, 7.0, 7.0], dtype  # 0.75 * 8 + 0.25 * 4


# ---------------------------------------------------------------------------
# Layouts, in-place semantics, aliasing


VIEWS = {
    "transposed": (lambda t: t.t(), (12, 9)),
    "step slice": (lambda t: t[:, 1::3], (10, 20)),
    "row step": (lambda t: t[::2], (11, 7)),
    "permuted 3-D": (lambda t: t.permute(2, 0, 1), (4, 5, 6)),
    "big strided": (lambda t: t[:, ::2], (3, 4 * PIECE + 6)),  # 3 * (2 * PIECE + 3) elements
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("view", list(VIEWS), ids=str)
def test_non_contiguous(dtype, view):
    fn, base_shape = VIEWS[view]
    gen = torch.Generator().manual_seed(len(view))
    base_m = torch.randn(base_shape, generator=gen, dtype=torch.float64).to(dtype)
    base_g = torch.randn(base_shape, generator=gen, dtype=torch.float64).to(dtype)
    before_m, before_g = base_m.clone(), base_g.clone()
    m, g_strided = fn(base_m), fn(base_g)
    g_contig = torch.randn(m.shape, generator=gen, dtype=torch.float64).to(dtype)
    ptr, stride = m.data_ptr(), m.stride()
    assert not m.is_contiguous()
    # A strided buffer with a strided grad, and a contiguous buffer with a strided grad.
    plain = torch.randn(m.shape, generator=gen, dtype=torch.float64).to(dtype)
    plain0 = plain.clone()
    m0 = m.clone()
    buffers, grads = [m, plain], [g_strided, g_strided]
    update(buffers, grads, 0.8)
    assert m.data_ptr() == ptr and m.stride() == stride, "buffer must keep its storage and strides"
    # Same result as the same update on contiguous copies.
    contig = [m0.clone(memory_format=torch.contiguous_format), plain0.clone()]
    update(contig, [g_strided.contiguous(), g_strided.contiguous()], 0.8)
    assert_same_bits(m, contig[0], f"{view} buffer")
    assert_same_bits(plain, contig[1], f"contiguous buffer, {view} grad")
    assert_same_bits(m, step_by_step(m0, fn(before_g), 0.8), f"{view} buffer vs expression")
    # The base tensor changed exactly where the view is: the gaps are untouched.
    expected_base = before_m.clone()
    fn(expected_base).copy_(contig[0])
    assert_same_bits(base_m, expected_base, f"{view}: base of the buffer")
    assert_same_bits(base_g, before_g, f"{view}: grads changed")
    # Strided buffer with a contiguous grad.
    m1 = m.clone()
    update([m], [g_contig], 0.3)
    assert_same_bits(m, step_by_step(m1, g_contig, 0.3), f"{view} buffer, contiguous grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_grads_unchanged_and_aliasing(dtype):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3 * PIECE + 11, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randn(40, 30, generator=gen, dtype=torch.float64).to(dtype)
    other_m = torch.randn(5, generator=gen, dtype=torch.float64).to(dtype)
    other_g = torch.randn(5, generator=gen, dtype=torch.float64).to(dtype)
    x0, y0, om0, og0 = x.clone(), y.clone(), other_m.clone(), other_g.clone()
    beta = 0.37
    # The same tensor as buffer and grad of one pair (contiguous, and a transposed view).
    update([x, other_m, y.t()], [x, other_g, y.t()], beta)
    assert_same_bits(x, step_by_step(x0, x0, beta), "aliased contiguous pair")
    assert_same_bits(y, step_by_step(y0, y0, beta), "aliased transposed pair")
    assert_same_bits(other_m, step_by_step(om0, og0, beta), "pair next to aliased ones")
    assert_same_bits(other_g, og0, "grads changed")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_inf_follow_the_formula(dtype):
    """Non-finite values go through the formula as IEEE arithmetic: no term is skipped.

    In particular beta = 0 does not copy the gradient: 0 * NaN and 0 * inf are NaN,
    so a NaN or inf buffer stays NaN (and beta = 1 likewise keeps a NaN/inf gradient's
    NaN). A kernel that special-cased beta = 0 / 1 or swapped the weights fails here.
    """
    nan, inf = math.nan, math.inf
    cases = [  # (beta, m, g, expected)
        (0.5, 1.0, inf, inf),
        (0.5, -inf, 2.0, -inf),
        (0.5, -inf, inf, nan),
        (0.9, nan, 1.0, nan),
        (0.9, 1.0, nan, nan),
        (0.0, nan, 2.0, nan),  # 0 * NaN = NaN
        (0.0, inf, 2.0, nan),  # 0 * inf = NaN
        (0.0, 3.0, 2.0, 2.0),
        (0.0, 3.0, -inf, -inf),
        (1.0, 3.0, nan, nan),  # (1 - 1) * NaN = NaN
        (1.0, 3.0, -inf, nan),
        (1.0, inf, 2.0, inf),
        (1.0, 3.0, 2.0, 3.0),
    ]
    for beta, mv, gv, ev in cases:
        m = torch.tensor([mv, 1.0], dtype=dtype)
        g = torch.tensor([gv, 1.0], dtype=dtype)
        m0 = m.clone()
        update([m], [g], beta)
        got = m[0].item()
        assert (math.isnan(got) and math.isnan(ev)) or got == ev, f"beta={beta} m={mv} g={gv}: got {got}, want {ev}"
        assert m[1].item() == 1.0
        assert_same_bits(m, step_by_step(m0, g, beta), f"beta={beta} m={mv} g={gv}")


def test_thread_count_does_not_change_results():
    gen = torch.Generator().manual_seed(11)
    sizes = [5 * PIECE + 3, 17, 0, 2 * PIECE, PIECE + 1, 3, 4 * PIECE - 1, 1000, 7 * PIECE]
    dtypes = [DTYPES[i % len(DTYPES)] for i in range(len(sizes))]
    ms = [torch.randn(n, generator=gen, dtype=torch.float64).to(dt) for n, dt in zip(sizes, dtypes)]
    gs = [torch.randn(n, generator=gen, dtype=torch.float64).to(dt) for n, dt in zip(sizes, dtypes)]
    threads = torch.get_num_threads()
    results = {}
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            buffers = [m.clone() for m in ms]
            update(buffers, gs, 0.9)
            results[t] = buffers
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    for i, (m, g) in enumerate(zip(ms, gs)):
        want = step_by_step(m, g, 0.9)
        assert_same_bits(results[1][i], want, f"pair {i}, 1 thread")
        assert_same_bits(results[2][i], want, f"pair {i}, 2 threads")


# ---------------------------------------------------------------------------
# Argument checks


def _f(*shape, dtype=torch.float32):
    return torch.ones(shape, dtype=dtype)


RULE = "momentum_update_: "
BETA_RANGE = RULE + "beta must be in [0, 1]"

# id: (arguments, exception, message, also raised by the native op itself)
ERRORS = {
    "lengths differ": (lambda: ([_f(3), _f(2)], [_f(3), _f(2), _f(1)], 0.5), ValueError,
                       RULE + "buffers and grads must be equally long lists, got 2 and 3 tensors", True),
    "shape mismatch": (lambda: ([_f(3), _f(2, 3)], [_f(3), _f(3, 2)], 0.5), ValueError,
                       RULE + "grads[1] must have buffers[1]'s shape [2, 3], got [3, 2]", True),
    "dtype mismatch": (lambda: ([_f(3), _f(4)], [_f(3), _f(4, dtype=torch.float64)], 0.5), TypeError,
                       RULE + "grads[1] must have buffers[1]'s dtype Float, got Double", True),
    "integer buffer": (lambda: ([_f(3), _f(2), _f(2, dtype=torch.int64)],
                                [_f(3), _f(2), _f(2, dtype=torch.int64)], 0.5), TypeError,
                       RULE + "buffers[2] must be float32, float64, float16 or bfloat16, got Long", True),
    "integer grad": (lambda: ([_f(3)], [_f(3, dtype=torch.int32)], 0.5), TypeError,
                     RULE + "grads[0] must have buffers[0]'s dtype Float, got Int", True),
    "beta < 0": (lambda: ([_f(3)], [_f(3)], -0.1), ValueError, BETA_RANGE + ", got beta=-0.1", True),
    "beta > 1": (lambda: ([_f(3)], [_f(3)], 1.5), ValueError, BETA_RANGE + ", got beta=1.5", True),
    "beta just > 1": (lambda: ([_f(3)], [_f(3)], 1.0 + 2**-40), ValueError, BETA_RANGE, True),
    "beta NaN": (lambda: ([_f(3)], [_f(3)], math.nan), ValueError, BETA_RANGE + ", got beta=nan", True),
    "beta inf": (lambda: ([_f(3)], [_f(3)], math.inf), ValueError, BETA_RANGE + ", got beta=inf", True),
    "buffers a tensor": (lambda: (_f(3), [_f(3)], 0.5), TypeError,
                         RULE + "buffers must be a list of tensors, got Tensor", False),
    "buffers a generator": (lambda: ((t for t in [_f(3)]), [_f(3)], 0.5), TypeError,
                            RULE + "buffers must be a list of tensors, got generator", False),
    "grads an int": (lambda: ([_f(3)], 3, 0.5), TypeError, RULE + "grads must be a list of tensors, got int", False),
    "buffer element": (lambda: ([_f(3), 1.0], [_f(3), _f(3)], 0.5), TypeError,
                       RULE + "buffers[1] must be a torch.Tensor, got float", False),
    "grad element": (lambda: ([_f(3), _f(2)], [_f(3), None], 0.5), TypeError,
                     RULE + "grads[1] must be a torch.Tensor, got NoneType", False),
    "beta a string": (lambda: ([_f(3)], [_f(3)], "0.5"), TypeError, RULE + "beta must be a float, got str", False),
    "beta a bool": (lambda: ([_f(3)], [_f(3)], True), TypeError, RULE + "beta must be a float, got bool", False),
}
NATIVE_ERRORS = [k for k, v in ERRORS.items() if v[3]]


@pytest.mark.parametrize("case", list(ERRORS), ids=str)
def test_errors(case):
    make, exc, message, _ = ERRORS[case]
    buffers, grads, beta = make()
    tensors = [b for b in buffers if isinstance(b, torch.Tensor)] if isinstance(buffers, list) else []
    before = [b.clone() for b in tensors]
    with pytest.raises(exc, match=re.escape(message)):
        update(buffers, grads, beta)
    # Checked before anything is written: the valid pairs before the bad one are unchanged.
    for b, b0 in zip(tensors, before):
        assert_same_bits(b, b0, f"{case}: buffer written before the error")


@pytest.mark.parametrize("case", NATIVE_ERRORS, ids=str)
def test_errors_native_op(case):
    """The native op itself raises the same errors (the wrapper only adds type checks)."""
    make, exc, message, _ = ERRORS[case]
    with pytest.raises(exc, match=re.escape(message)):
        torch.ops.robustagg.momentum_update_(*make())


def test_beta_bounds_are_accepted():
    for beta in (0.0, -0.0, 1.0, 0, 1):
        m, g = _f(4) * 2, _f(4) * 6
        update([m], [g], beta)
        assert m.tolist() == [6.0 if beta == 0 else 2.0] * 4, beta


def test_empty_lists_are_a_no_op_but_beta_is_still_checked():
    update([], [], 0.9)
    with pytest.raises(ValueError, match=r"momentum_update_: beta must be in \[0, 1\], got beta=1.5"):
        update([], [], 1.5)


# ---------------------------------------------------------------------------
# Operator registration


def test_opcheck():
    """schema (buffers mutated, grads not), fake tensor, autograd registration and
    AOT dispatch on a small mixed list (no NaN: opcheck compares with equal_nan=False)."""
    gen = torch.Generator().manual_seed(5)
    buffers = [
        torch.randn(3, 4, generator=gen),
        torch.randn(5, generator=gen, dtype=torch.float64),
        torch.randn(4, 6, generator=gen).t(),
        torch.randn(2, 3, generator=gen).to(torch.bfloat16),
        torch.tensor(1.5, dtype=torch.float16),
        torch.empty(0, 3),
    ]
    grads = [torch.randn(b.shape, generator=gen).to(b.dtype) for b in buffers]
    buffers[0][0, 0] = math.inf
    result = torch.library.opcheck(torch.ops.robustagg.momentum_update_.default, (buffers, grads, 0.9))
    assert all(v == "SUCCESS" for v in result.values()), result


# ---------------------------------------------------------------------------
# CUDA: bit-for-bit parity with the CPU kernel across launches


def _cuda_case(dtype_of) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """50 tensors (more than 36 per launch), one of 320 * 65536 + 5 elements (its
    chunks span launches) after a few others, 0-D, empty, chunk-boundary sizes."""
    gen = torch.Generator().manual_seed(3)
    sizes = [7, CHUNK - 1, CHUNK, CHUNK + 1, MAX_BLOCKS * CHUNK + 5, 0, 2 * CHUNK + 3]
    sizes += [1 + (37 * k) % 1500 for k in range(50 - len(sizes) - 2)]
    ms, gs = [], []
    for i, n in enumerate(sizes):
        dt = dtype_of(i)
        ms.append(torch.randn(n, generator=gen, dtype=torch.float64).to(dt))
        gs.append(torch.randn(n, generator=gen, dtype=torch.float64).to(dt))
    ms[1][5] = math.nan
    gs[2][7] = math.inf
    # a 0-D pair and a transposed (non-contiguous) pair
    ms.append(torch.tensor(2.5, dtype=dtype_of(48)))
    gs.append(torch.tensor(-1.0, dtype=dtype_of(48)))
    ms.append(torch.randn(300, 70, generator=gen, dtype=torch.float64).to(dtype_of(49)).t())
    gs.append(torch.randn(70, 300, generator=gen, dtype=torch.float64).to(dtype_of(49)))
    return ms, gs


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_ready(), reason="needs a CUDA GPU and robustagg built with CUDA kernels")
@pytest.mark.parametrize("dtype", DTYPES + ["mixed"], ids=str)
def test_cuda_matches_cpu_bitwise(dtype):
    dtype_of = (lambda i: DTYPES[i % len(DTYPES)]) if dtype == "mixed" else (lambda i: dtype)
    ms, gs = _cuda_case(dtype_of)
    assert len(ms) == 50 > MAX_TENSORS and sum(m.numel() for m in ms) > MAX_BLOCKS * CHUNK
    for beta in (0.9, 0.0, 1.0, 0.123):
        cpu = [m.clone() for m in ms]
        update(cpu, gs, beta)
        gpu = [m.cuda() if m.is_contiguous() else m.t().contiguous().cuda().t() for m in ms]
        ggpu = [g.cuda() for g in gs]
        ptrs = [b.data_ptr() for b in gpu]
        update(gpu, ggpu, beta)
        torch.cuda.synchronize()
        for i in range(len(ms)):
            what = f"pair {i} ({ms[i].dtype}, numel {ms[i].numel()}), beta={beta}"
            assert gpu[i].data_ptr() == ptrs[i] and gpu[i].stride() == ms[i].stride(), what
            assert_same_bits(gpu[i].cpu(), cpu[i], f"CUDA vs CPU: {what}")
            assert_same_bits(cpu[i], step_by_step(ms[i], gs[i], beta), f"CPU vs expression: {what}")
            assert_same_bits(ggpu[i].cpu(), gs[i], f"CUDA grads changed: {what}")


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_ready(), reason="needs a CUDA GPU and robustagg built with CUDA kernels")
def test_cuda_opcheck_and_device_errors():
    buffers = [torch.randn(3, 4, device="cuda"), torch.randn(5, device="cuda", dtype=torch.float64),
               torch.randn(4, 6, device="cuda").t(), torch.randn(CHUNK + 3, device="cuda").to(torch.bfloat16)]
    grads = [torch.randn_like(b) for b in buffers]
    result = torch.library.opcheck(torch.ops.robustagg.momentum_update_.default, (buffers, grads, 0.9))
    assert all(v == "SUCCESS" for v in result.values()), result
    with pytest.raises(ValueError, match=re.escape("momentum_update_: all tensors must be on one device")):
        update([torch.ones(3, device="cuda"), torch.ones(3)], [torch.ones(3, device="cuda"), torch.ones(3)], 0.5)
    with pytest.raises(ValueError, match=re.escape("momentum_update_: all tensors must be on one device")):
        update([torch.ones(3, device="cuda")], [torch.ones(3)], 0.5)
    with pytest.raises(ValueError, match=re.escape("momentum_update_: beta must be in [0, 1], got beta=2")):
        update([torch.ones(3, device="cuda")], [torch.ones(3, device="cuda")], 2.0)
