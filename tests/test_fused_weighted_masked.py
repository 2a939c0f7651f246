"""Fused weighted-averaging step and masked SGD-momentum step (SPEC 6.3, 6.4):
``robustagg.ops.weighted_step_``, ``masked_sgd_step_`` and ``pack_mask``.

``weighted_step_(params, grads, weights, lr, *, corrections=None, beta=0.0)``:
``grads`` holds N + 1 gradient lists (user 0 is the one trained, 1..N its
collaborators), ``corrections`` N lists. Per element, in Acc (float32 for
float32/float16/bfloat16, float64 for float64), every scalar rounded from
double to Acc, every operation rounded once (no FMA):

    u = a0 g0;  for i = 1..N:  u = u + ai gi;  u = u + ci  (the old ci)
                               ci <- keep ci + take (ai (g0 - gi)),  keep = 1 - beta, take = beta
    p <- p - lr u

``masked_sgd_step_(params, grads, momentum_buffers, lr, momentum, *, masks=None,
weight_decay=0.0)``: where the mask is set, ``d = g (+ wd p)``,
``m <- mu m + d`` (stored, rounded to the dtype), ``p <- p - lr m`` with the
stored m; elsewhere p and m keep their bits. Masks: all bool (shaped like the
param) or all uint8 packed by ``pack_mask`` (bit j of byte k is element 8k + j
in row-major order); None updates every element.

Both are therefore bit for bit the step-by-step PyTorch expressions
``wga_expr`` and ``sgd_expr`` below (torch's CPU +, -, * with a tensor or a
Python float are correctly rounded; ``torch.add(alpha=)`` and ``addcmul``
are not usable there, the vectorised CPU kernel fuses them into an FMA), and
within the rounding of the dtype of the float64 oracles in
``robustagg.reference``.

The CPU kernels cut tensors into pieces of 16384 elements (the weighted step
works through a piece in blocks of 256); the CUDA weighted step reads a device
address table with chunks of 8192 elements, the masked step packs chunks of
65536 elements of up to 36 tensors (320 chunks) into one launch. The CUDA
tests are marked ``cuda`` and skipped without a GPU and the CUDA kernels.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import robustagg.ops
from conftest import DTYPES, MatrixSpec, assert_same_bits, cuda_ready, make_matrix, native_args
from robustagg import reference

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PIECE = 1 << 14  # CPU kernels: elements per parallel piece
BLOCK = 256  # CPU weighted step: elements per block of a piece
TABLE_CHUNK = 8192  # CUDA weighted step: elements per block
CHUNK = 65536  # CUDA masked step: elements per block
MAX_BLOCKS = 320  # CUDA masked step: chunks per launch
MAX_TENSORS = 36  # CUDA masked step: tensors per launch
INT_OF = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}
requires_cuda = pytest.mark.skipif(not cuda_ready(), reason="needs a CUDA GPU and robustagg built with CUDA kernels")


@pytest.fixture(autouse=True)
def one_intra_op_thread(request):
    """The CPU tests here run torch (the kernels and the element-wise expressions) on one
    intra-op thread: on a loaded machine every parallel region of a second thread costs tens
    of milliseconds, and these tests make thousands of small calls. The results do not depend
    on the thread count; test_thread_count_does_not_change_results checks 1 and 2 threads. The
    CUDA tests (large tensors, few calls) keep every thread."""
    if request.node.get_closest_marker("cuda") is not None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def acc_scalar(x: float, dtype: torch.dtype) -> float:
    """x (a double) rounded to the accumulation dtype of dtype, as a Python float: the
    kernels' static_cast<Acc>(double)."""
    return torch.tensor(x, dtype=torch.float64).to(acc_dtype(dtype)).item()


# ---------------------------------------------------------------------------
# Expected values


def wga_expr(p, gs, weights, lr, cs=None, beta=0.0):
    """weighted_step_ on one parameter as PyTorch evaluates it step by step in Acc:
    (new p, [new c_1..c_N] or None). gs: the N + 1 users' gradients, cs: the N corrections."""
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
    """masked_sgd_step_ on one parameter step by step in Acc: (new p, new m); the step takes
    the momentum as stored (rounded to the dtype); torch.where keeps the inactive bits."""
    T, A, r = p.dtype, acc_dtype(p.dtype), (lambda x: acc_scalar(x, p.dtype))
    d = g.to(A)
    if wd != 0.0:
        d = d + p.to(A) * r(wd)
    m1 = (m.to(A) * r(mu) + d).to(T)
    p1 = (p.to(A) - m1.to(A) * r(lr)).to(T)
    if mask is None:
        return p1, m1
    return torch.where(mask, p1, p), torch.where(mask, m1, m)


def unpack(packed: torch.Tensor, shape) -> torch.Tensor:
    """A packed mask (pack_mask's layout) as a bool tensor of the given shape, by NumPy."""
    numel = math.prod(shape)
    bits = np.unpackbits(packed.cpu().numpy(), bitorder="little")[:numel]
    return torch.from_numpy(bits.astype(bool)).reshape(shape)


# ---------------------------------------------------------------------------
# Comparisons


def raw_bits(x: torch.Tensor) -> torch.Tensor:
    return x.detach().cpu().contiguous().view(INT_OF[x.element_size()])


def assert_identical(got: torch.Tensor, want: torch.Tensor, what: str = "") -> None:
    """Every bit equal, NaN payloads included (an element that was not written)."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    bad = raw_bits(got) != raw_bits(want)
    if bad.any():
        j = int(bad.reshape(-1).nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} elements changed their bits; first at "
                             f"flat index {j}: {got.reshape(-1)[j].item()!r} vs {want.reshape(-1)[j].item()!r}")


def _check_tolerance(got, want, tol, skip, what):
    """got (any dtype) within tol of the float64 want where not skipped; NaN / inf as want has them."""
    got64 = got.to(torch.float64)
    bad = got64.isnan() != want.isnan()
    bad |= want.isinf() & (got64 != want)
    fin = want.isfinite()
    bad |= fin & ~(got64.isfinite() & ((got64 - want).abs() <= tol))
    bad &= ~skip
    if bad.any():
        j = int(bad.reshape(-1).nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} out of tolerance; first at flat index {j}: "
                             f"got {got64.reshape(-1)[j].item()!r}, oracle {want.reshape(-1)[j].item()!r}, "
                             f"tol {tol.reshape(-1)[j].item()!r}")


def _units(dtype):
    fa, ft = torch.finfo(acc_dtype(dtype)), torch.finfo(dtype)
    return fa.eps / 2, fa.tiny * fa.eps, fa.max, ft.eps, ft.tiny * ft.eps, ft.max


def _skip_mask(big, out_max, want, inputs, intermediates):
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


def assert_wga_close_to_oracle(p_new, c_new, p, gs, cs, weights, lr, beta, what=""):
    """The kernel's results within the first-order rounding bound of the Acc computation of the
    float64 oracle, doubled, plus the final rounding to the dtype. With u = eps(Acc) / 2 and
    S = |a0 g0| + sum_i (|ai gi| + |ci|): u accumulates <= (2N + 2) u S (each coefficient,
    product and sum), the step adds 3 u (|p| + |lr| S); a new correction errs by
    <= 3 u |keep c| + 6 u |beta ai| (|g0| + |gi|); subnormal steps sa per operation, and sa
    times the other factor where a coefficient (lr, a weight, beta) rounds to a subnormal or 0."""
    u, sa, big, et, st_, tmax = _units(p.dtype)
    n = len(gs) - 1
    want_p, want_c = reference.weighted_step([p], [[g] for g in gs], weights, lr,
                                             corrections=None if cs is None else [[c] for c in cs], beta=beta)
    want_p = want_p[0]
    g64 = [g.to(torch.float64) for g in gs]
    c64 = [] if cs is None else [c.to(torch.float64) for c in cs]
    p64, L = p.to(torch.float64), abs(lr)
    terms = [abs(w) * g.abs() for w, g in zip(weights, g64)] + [c.abs() for c in c64]
    S = sum(terms)
    G = sum(g.abs() for g in g64) + sum((c.abs() for c in c64), torch.zeros_like(p64))
    err = (2 * n + 2) * u * L * S + 3 * u * (p64.abs() + L * S) + sa * S + (3 * n + 3) * sa * (L * G + L + 1)
    tol = 2 * err + et * want_p.abs() + st_
    skip = _skip_mask(big, tmax, want_p, [p64, *g64, *c64], [S, L * S, *terms, *(L * t for t in terms)])
    _check_tolerance(p_new, want_p, tol, skip, f"{what}: params vs oracle")
    if cs is None:
        return
    keep = abs(1.0 - beta)
    for i in range(1, n + 1):
        want = want_c[i - 1][0]
        c, d = c64[i - 1], g64[0].abs() + g64[i].abs()
        err = 3 * u * keep * c.abs() + 6 * u * abs(beta * weights[i]) * d + 6 * sa * (1 + c.abs() + d)
        tol = 2 * err + et * want.abs() + st_
        skip = _skip_mask(big, tmax, want, [c, g64[0], g64[i]], [keep * c, abs(weights[i]) * d])
        _check_tolerance(c_new[i - 1], want, tol, skip, f"{what}: corrections[{i - 1}] vs oracle")


def assert_sgd_close_to_oracle(p_new, m_new, p, m, g, mask, lr, mu, wd, what=""):
    """Within the rounding of the Acc computation of the float64 oracle: the momentum errs by
    <= 3 u (|mu m| + |g| + |wd p|) before its rounding to the dtype (eps(T) |m'|), and the step
    by |lr| times the stored momentum's error plus 3 u (|p| + |lr m'|); plus sa per operation and
    sa times the other factor where a coefficient rounds to a subnormal or 0."""
    u, sa, big, et, st_, tmax = _units(p.dtype)
    want_p, want_m = reference.masked_sgd_step([p], [g], [m], lr, mu, masks=None if mask is None else [mask],
                                               weight_decay=wd)
    want_p, want_m = want_p[0], want_m[0]
    p64, m64, g64, L = p.to(torch.float64), m.to(torch.float64), g.to(torch.float64), abs(lr)
    scale = abs(mu) * m64.abs() + g64.abs() + abs(wd) * p64.abs()
    err_m = 2 * (3 * u * scale + 3 * sa * (1 + m64.abs() + p64.abs())) + et * want_m.abs() + st_
    err_p = 2 * (L * err_m + 3 * u * (p64.abs() + L * want_m.abs()) + sa * want_m.abs() + 3 * sa * (1 + L))
    err_p = err_p + et * want_p.abs() + st_
    inter = [scale, L * want_m.abs(), abs(mu) * m64.abs(), abs(wd) * p64.abs()]
    skip_m = _skip_mask(big, tmax, want_m, [p64, m64, g64], inter)
    skip_p = skip_m | _skip_mask(big, tmax, want_p, [], [])
    if mask is not None:  # inactive elements are compared bit for bit by the callers
        skip_m |= ~mask
        skip_p |= ~mask
    _check_tolerance(m_new, want_m, err_m, skip_m, f"{what}: momentum vs oracle")
    _check_tolerance(p_new, want_p, err_p, skip_p, f"{what}: params vs oracle")


# ---------------------------------------------------------------------------
# Random lists: hypothesis draws a description of each parameter, torch builds
# the values from a seed (conftest's make_matrix patterns: gaussian, ties,
# signed zeros, magnitudes down to subnormals, mixed; scattered NaN/+inf/-inf).

PATTERNS = ["gaussian", "ties", "zeros", "magnitudes", "mixed"]


@dataclass(frozen=True)
class ParamSpec:
    shape: tuple
    dtype: torch.dtype
    seed: int
    patterns: tuple  # one per tensor role, cycled
    scatter: float

    def tensor(self, k: int) -> torch.Tensor:
        """Tensor k of this parameter (params, a gradient, a correction, a buffer...)."""
        numel = math.prod(self.shape)
        pattern = self.patterns[k % len(self.patterns)]
        spec = MatrixSpec(1, numel, (self.seed + 7919 * k) % 2**31, pattern, scatter=self.scatter)
        return make_matrix(spec, self.dtype).reshape(self.shape)

    def mask(self, density: float) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return torch.rand(self.shape, generator=g) < density


@st.composite
def small_shapes(draw):
    """0-D to 3-D, with empty dimensions."""
    ndim = draw(st.integers(0, 3))
    dim = st.one_of(st.integers(1, 9), st.just(0), st.integers(10, 40))
    return tuple(draw(dim) for _ in range(ndim))


@st.composite
def big_shapes(draw, most: int):
    """Block (256) and piece (16384) boundaries, and more than one piece."""
    numel = draw(st.one_of(
        st.sampled_from([BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5, PIECE - 1, PIECE, PIECE + 1, PIECE + BLOCK + 3,
                         2 * PIECE + 1]),
        st.integers(BLOCK + 1, most)))
    if draw(st.booleans()):
        return (numel,)
    rows = draw(st.integers(2, 7))
    return (rows, -(-numel // rows))


@st.composite
def param_lists(draw, dtypes, most: int = 2 * PIECE + 300):
    k = draw(st.integers(1, 5))
    big_at = draw(st.one_of(st.integers(0, k - 1), st.none()))
    out = []
    for i in range(k):
        shape = draw(big_shapes(most) if i == big_at else small_shapes())
        out.append(ParamSpec(shape, draw(st.sampled_from(dtypes)), draw(st.integers(0, 2**31 - 2)),
                             tuple(draw(st.sampled_from(PATTERNS)) for _ in range(3)),
                             draw(st.sampled_from([0.0, 0.0, 0.01, 0.2]))))
    return out


weights_st = st.one_of(st.sampled_from([1.0, 0.5, 0.0, -0.25, 1 / 3, 0.1]), st.floats(-2.0, 2.0))
lrs = st.one_of(st.sampled_from([0.1, 1.0, 1e-3, 0.0, -0.5]), st.floats(-3.0, 3.0))
betas = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 0.9, 0.1]), st.floats(0.0, 1.0))
mus = st.one_of(st.sampled_from([0.0, 0.9, 0.99, 0.5]), st.floats(0.0, 1.0))
wds = st.sampled_from([0.0, 0.0, 1e-4, 0.01, 0.5])


# ===========================================================================
# weighted_step_


def wga(params, grads, weights, lr, corrections=None, beta=0.0):
    robustagg.ops.weighted_step_(params, grads, weights, lr, corrections=corrections, beta=beta)


def check_wga(specs: list[ParamSpec], n: int, weights, lr, beta, corrected: bool):
    """Builds params, N + 1 gradient lists and (corrected) N correction lists from specs, runs the
    op and compares every written tensor with wga_expr (bits) and the oracle; grads unchanged."""
    ps = [s.tensor(0) for s in specs]
    gs = [[s.tensor(1 + u) for s in specs] for u in range(n + 1)]
    cs = [[s.tensor(2 + n + i) for s in specs] for i in range(n)] if corrected else None
    params = [p.clone() for p in ps]
    grads = [[g.clone() for g in gl] for gl in gs]
    corr = None if cs is None else [[c.clone() for c in cl] for cl in cs]
    ptrs = [p.data_ptr() for p in params]
    wga(params, grads, weights, lr, corr, beta)
    for j, spec in enumerate(specs):
        what = f"param {j} of {len(specs)}: {spec}, N={n}, weights={weights}, lr={lr!r}, beta={beta!r}"
        assert params[j].data_ptr() == ptrs[j], f"{what}: not updated in place"
        g_j = [gl[j] for gl in gs]
        c_j = None if cs is None else [cl[j] for cl in cs]
        want_p, want_c = wga_expr(ps[j], g_j, weights, lr, c_j, beta)
        assert_same_bits(params[j], want_p, f"{what}: params")
        for i in range(n if corrected else 0):
            assert_same_bits(corr[i][j], want_c[i], f"{what}: corrections[{i}]")
        for u in range(n + 1):
            assert_identical(grads[u][j], gs[u][j], f"{what}: grads[{u}] changed")
        assert_wga_close_to_oracle(params[j], None if cs is None else [cl[j] for cl in corr], ps[j], g_j, c_j,
                                   weights, lr, beta, what)


@settings(max_examples=200, **SETTINGS)
@given(data=st.data(), dtype=st.sampled_from(DTYPES), corrected=st.booleans())
def test_wga_random_lists_one_dtype(data, dtype, corrected):
    n = data.draw(st.integers(0, 9), label="N")
    specs = data.draw(param_lists([dtype], most=2 * PIECE + 300 if n < 4 else PIECE + 300), label="specs")
    weights = data.draw(st.lists(weights_st, min_size=n + 1, max_size=n + 1), label="weights")
    check_wga(specs, n, weights, data.draw(lrs, label="lr"), data.draw(betas, label="beta"), corrected)


@settings(max_examples=200, **SETTINGS)
@given(data=st.data(), corrected=st.booleans())
def test_wga_random_lists_mixed_dtypes(data, corrected):
    n = data.draw(st.integers(0, 9), label="N")
    specs = data.draw(param_lists(DTYPES, most=2 * PIECE + 300 if n < 4 else PIECE + 300), label="specs")
    weights = data.draw(st.lists(weights_st, min_size=n + 1, max_size=n + 1), label="weights")
    check_wga(specs, n, weights, data.draw(lrs, label="lr"), data.draw(betas, label="beta"), corrected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_wga_block_and_piece_boundaries(dtype):
    """Every element of tensors at and around block and piece boundaries, N = 0, 1, 3."""
    sizes = [1, BLOCK - 1, BLOCK, BLOCK + 1, PIECE - 1, PIECE, PIECE + 1, 2 * PIECE + BLOCK + 7]
    specs = [ParamSpec((s,), dtype, s, ("gaussian", "gaussian", "magnitudes"), 0.0) for s in sizes]
    for n, weights in ((0, [0.75]), (1, [0.5, 0.25]), (3, [0.4, 0.3, -0.2, 0.1])):
        for corrected in (False, True):
            check_wga(specs, n, weights, 0.125, 0.3, corrected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_wga_single_user_weight_one_is_sgd(dtype):
    """N = 0, a0 = 1: 1 * g is g, so the step is fl(p - fl(lr g)) in Acc; for float32 and
    float64 that is p - lr * g in the dtype itself."""
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(3 * PIECE + 17, generator=gen, dtype=torch.float64).to(dtype)
    g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
    for lr in (0.1, 1e-3, 1.0, 0.0):
        got = p.clone()
        wga([got], [[g]], [1.0], lr)
        A = acc_dtype(dtype)
        want = (p.to(A) - g.to(A) * acc_scalar(lr, dtype)).to(dtype)
        if dtype in (torch.float32, torch.float64):
            assert_same_bits(want, p - lr * g, "expression in the dtype itself")
        assert_same_bits(got, want, f"lr={lr}")
        got_c = p.clone()
        wga([got_c], [[g]], [1.0], lr, corrections=[], beta=0.7)  # no collaborator: nothing to correct
        assert_same_bits(got_c, want, f"lr={lr}, empty corrections")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_wga_each_weight_weighs_its_own_user(dtype):
    """One user at a time holds values, the others zeros: p - lr a_i g_i with that user's a_i."""
    n = 3
    weights = [1.0, 2.0, 4.0, 8.0]
    for i in range(n + 1):
        grads = [[torch.zeros(3, dtype=dtype)] for _ in range(n + 1)]
        grads[i][0] = torch.tensor([1.0, -2.0, 0.5], dtype=dtype)
        p = torch.full((3,), 64.0, dtype=dtype)
        wga([p], grads, weights, 2.0)
        w = 2.0**i
        assert p.tolist() == [64.0 - 2 * w, 64.0 + 4 * w, 64.0 - w], (i, p.tolist())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_wga_plain_ignores_beta(dtype):
    """Without corrections beta has no term: any beta gives the bits of beta = 0."""
    specs = [ParamSpec((PIECE + 99,), dtype, 3, ("gaussian",), 0.01), ParamSpec((7, 5), dtype, 4, ("mixed",), 0.1)]
    n, weights = 2, [0.5, 0.3, 0.2]
    ps = [s.tensor(0) for s in specs]
    gs = [[s.tensor(1 + u) for s in specs] for u in range(n + 1)]
    base = [p.clone() for p in ps]
    wga(base, gs, weights, 0.1, beta=0.0)
    for j in range(len(specs)):
        assert_same_bits(base[j], wga_expr(ps[j], [gl[j] for gl in gs], weights, 0.1)[0], f"param {j}")
    for beta in (0.3, 1.0, 0.999):
        got = [p.clone() for p in ps]
        wga(got, gs, weights, 0.1, beta=beta)
        for j in range(len(specs)):
            assert_identical(got[j], base[j], f"beta={beta}, param {j}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_wga_correction_applies_from_the_next_step(dtype):
    """Two steps by hand (every value exact in every dtype), N = 2, weights (1/2, 1/4, 1/8),
    lr = 1/2, beta = 1/4, corrections starting at (1, -2), the same gradients g = (4, 2, -4):

    step 1: u = 2 + 1/2 + 1 - 1/2 - 2 = 1,  p = 10 - 1/2 = 9.5,
            c1 = 3/4 * 1 + 1/4 * (1/4 * 2) = 0.875,  c2 = 3/4 * (-2) + 1/4 * (1/8 * 8) = -1.25;
    step 2: u = 2 + 1/2 + 0.875 - 1/2 - 1.25 = 1.625,  p = 9.5 - 0.8125 = 8.6875,
            c1 = 3/4 * 0.875 + 1/8 = 0.78125,  c2 = 3/4 * (-1.25) + 1/4 = -0.6875.
    (Swapping keep and take, the sign of g0 - gi, or using the new corrections in the step,
    each changes these numbers.)"""
    def full(v):
        return torch.full((2, 3), v, dtype=dtype)

    p = full(10.0)
    c = [full(1.0), full(-2.0)]
    grads = [[full(4.0)], [full(2.0)], [full(-4.0)]]
    weights, lr, beta = [0.5, 0.25, 0.125], 0.5, 0.25
    for want_p, want_c in ((9.5, (0.875, -1.25)), (8.6875, (0.78125, -0.6875))):
        wga([p], grads, weights, lr, corrections=[[c[0]], [c[1]]], beta=beta)
        assert p.unique().tolist() == [want_p]
        assert [x.unique().tolist() for x in c] == [[want_c[0]], [want_c[1]]]
    # beta = 0 keeps the corrections; beta = 1 replaces them with a_i (g0 - g_i).
    c = [full(1.0), full(-2.0)]
    wga([full(0.0)], grads, weights, lr, corrections=[[c[0]], [c[1]]], beta=0.0)
    assert [x.unique().tolist() for x in c] == [[1.0], [-2.0]]
    wga([full(0.0)], grads, weights, lr, corrections=[[c[0]], [c[1]]], beta=1.0)
    assert [x.unique().tolist() for x in c] == [[0.5], [1.0]]


def test_wga_weights_as_a_tensor_or_ints():
    gen = torch.Generator().manual_seed(2)
    p = torch.randn(40, generator=gen)
    gs = [[torch.randn(40, generator=gen)] for _ in range(3)]
    for w, other in (([0.2, 0.5, 0.3], torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)),
                     ([2.0, 0.0, -1.0], [2, 0, -1]), ([1.0, 1.0, 1.0], (1, 1.0, torch.tensor(1.0).item()))):
        a, b = p.clone(), p.clone()
        wga([a], gs, w, 0.1)
        wga([b], gs, other, 0.1)
        assert_identical(a, b, f"weights {w} given as {other!r}")
        assert_same_bits(a, wga_expr(p, [g[0] for g in gs], w, 0.1)[0], f"weights {w}")


# --- Layouts, aliasing ------------------------------------------------------

VIEWS = {
    "transposed": (lambda t: t.t(), (12, 9)),
    "step slice": (lambda t: t[:, 1::3], (10, 20)),
    "row step": (lambda t: t[::2], (11, 7)),
    "permuted 3-D": (lambda t: t.permute(2, 0, 1), (4, 5, 6)),
    "big strided": (lambda t: t[:, ::2], (3, 2 * PIECE + 2 * BLOCK + 6)),  # 3 * (PIECE + BLOCK + 3) elements
}


def _randn(shape, gen, dtype, scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("view", list(VIEWS), ids=str)
def test_wga_non_contiguous(view, dtype):
    """Strided params, corrections and grads (user 1 strided, user 0 and 2 contiguous and strided
    in turn): the written views keep storage and strides, their bases change exactly under the
    view, the result equals the same call on contiguous copies and the expression."""
    fn, base_shape = VIEWS[view]
    gen = torch.Generator().manual_seed(len(view))
    n, weights, lr, beta = 2, [0.5, -0.3, 0.8], 0.25, 0.4
    for strided_reads in (True, False):
        base_p = _randn(base_shape, gen, dtype)
        base_c = [_randn(base_shape, gen, dtype) for _ in range(n)]
        base_g = [_randn(base_shape, gen, dtype) for _ in range(n + 1)]
        before_p, before_c, before_g = base_p.clone(), [c.clone() for c in base_c], [g.clone() for g in base_g]
        p, cs = fn(base_p), [fn(c) for c in base_c]
        gs = [fn(g) if (strided_reads or u == 1) else fn(g).contiguous() for u, g in enumerate(base_g)]
        assert not p.is_contiguous()
        p0, c0, g0 = p.clone(), [c.clone() for c in cs], [g.clone() for g in gs]
        layout = [(x.data_ptr(), x.stride()) for x in (p, *cs)]
        wga([p], [[g] for g in gs], weights, lr, corrections=[[c] for c in cs], beta=beta)
        assert [(x.data_ptr(), x.stride()) for x in (p, *cs)] == layout, "written views must keep storage and strides"
        contig_p = p0.clone(memory_format=torch.contiguous_format)
        contig_c = [c.clone(memory_format=torch.contiguous_format) for c in c0]
        wga([contig_p], [[g.contiguous()] for g in g0], weights, lr, corrections=[[c] for c in contig_c], beta=beta)
        want_p, want_c = wga_expr(p0, g0, weights, lr, c0, beta)
        what = f"{view}, strided reads {strided_reads}"
        assert_same_bits(p, contig_p, f"{what}: params vs contiguous")
        assert_same_bits(p, want_p, f"{what}: params vs expression")
        for i in range(n):
            assert_same_bits(cs[i], contig_c[i], f"{what}: corrections[{i}] vs contiguous")
            assert_same_bits(cs[i], want_c[i], f"{what}: corrections[{i}] vs expression")
        for base, before, new in ((base_p, before_p, p), *zip(base_c, before_c, cs)):
            expected = before.clone()
            fn(expected).copy_(new)
            assert_identical(base, expected, f"{what}: base of a written view")
        for base, before in zip(base_g, before_g):
            assert_identical(base, before, f"{what}: grads changed")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_wga_aliased_grads(dtype):
    """Read-only lists may alias: the same gradient list object for two users, and one tensor
    in three users' lists (one of them through a transposed view); grads stay unchanged."""
    gen = torch.Generator().manual_seed(7)
    shapes = [(2 * PIECE + 11,), (40, 30), (5,)]
    ps = [_randn(s, gen, dtype) for s in shapes]
    shared_list = [_randn(s, gen, dtype) for s in shapes]
    other = [_randn(s, gen, dtype) for s in shapes]
    x = _randn((30, 40), gen, dtype)
    third = [other[0], x.t(), other[2]]
    grads = [shared_list, other, shared_list, third]
    grads_before = [[g.clone() for g in gl] for gl in grads]
    cs = [[_randn(s, gen, dtype) for s in shapes] for _ in range(3)]
    c0 = [[c.clone() for c in cl] for cl in cs]
    weights = [0.4, 0.3, -0.2, 0.5]
    params = [p.clone() for p in ps]
    wga(params, grads, weights, 0.5, corrections=cs, beta=0.6)
    for j in range(len(shapes)):
        want_p, want_c = wga_expr(ps[j], [gl[j] for gl in grads_before], weights, 0.5, [cl[j] for cl in c0], 0.6)
        assert_same_bits(params[j], want_p, f"param {j}")
        for i in range(3):
            assert_same_bits(cs[i][j], want_c[i], f"corrections[{i}][{j}]")
    for gl, gl0 in zip(grads, grads_before):
        for g, g0 in zip(gl, gl0):
            assert_identical(g, g0, "grads changed")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_wga_nan_inf_follow_the_formula(dtype):
    """Non-finite values go through the formula as IEEE arithmetic: a zero weight does not skip
    its user (0 * inf = NaN), beta = 0 still multiplies the new term by 0, beta = 1 the old
    correction by 0; the neighbouring elements stay finite."""
    nan, inf = math.nan, math.inf
    cases = [  # (weights, beta, g0, g1, c1, expected p with p = 1, lr = 1, expected c1)
        ([1.0, 1.0], 0.5, inf, 1.0, 0.0, -inf, inf),
        ([1.0, 0.0], 0.5, 1.0, inf, 0.0, nan, nan),
        ([0.0, 1.0], 0.5, nan, 1.0, 0.0, nan, nan),
        ([1.0, 1.0], 0.0, 1.0, inf, 2.0, -inf, nan),  # 0 * (1 * (1 - inf)) = NaN
        ([1.0, 1.0], 1.0, 1.0, 2.0, inf, -inf, nan),  # (1 - 1) * inf = NaN
        ([1.0, 1.0], 0.5, 1.0, 2.0, -inf, inf, -inf),
        ([1.0, 1.0], 0.5, inf, inf, 0.0, -inf, nan),
        ([1.0, -1.0], 0.5, inf, inf, 0.0, nan, nan),
        ([1.0, -1.0], 0.5, inf, -inf, 0.0, -inf, -inf),
    ]
    for weights, beta, g0, g1, c1, ep, ec in cases:
        p = torch.tensor([1.0, 1.0], dtype=dtype)
        gs = [torch.tensor([g0, 1.0], dtype=dtype), torch.tensor([g1, 1.0], dtype=dtype)]
        c = torch.tensor([c1, 1.0], dtype=dtype)
        p0, c0 = p.clone(), c.clone()
        wga([p], [[gs[0]], [gs[1]]], weights, 1.0, corrections=[[c]], beta=beta)
        case = f"weights={weights} beta={beta} g=({g0}, {g1}) c={c1}"
        for got, ev in ((p[0].item(), ep), (c[0].item(), ec)):
            assert (math.isnan(got) and math.isnan(ev)) or got == ev, f"{case}: got {got}, want {ev}"
        assert math.isfinite(p[1].item()) and math.isfinite(c[1].item()), case
        want_p, want_c = wga_expr(p0, gs, weights, 1.0, [c0], beta)
        assert_same_bits(p, want_p, case)
        assert_same_bits(c, want_c[0], case)


# ===========================================================================
# masked_sgd_step_ and pack_mask


def sgd(params, grads, momentum_buffers, lr, mu, masks=None, wd=0.0):
    robustagg.ops.masked_sgd_step_(params, grads, momentum_buffers, lr, mu, masks=masks, weight_decay=wd)


def check_sgd(specs: list[ParamSpec], kind: str | None, density: float, lr, mu, wd):
    """params, grads, momentum from specs; masks of the kind (None / "bool" / "packed"); compares
    with sgd_expr (bits; inactive elements every bit), the oracle, and bool vs packed."""
    ps, gs, ms = [s.tensor(0) for s in specs], [s.tensor(1) for s in specs], [s.tensor(2) for s in specs]
    bools = [s.mask(density) for s in specs] if kind else None
    masks = None if kind is None else bools if kind == "bool" else [robustagg.ops.pack_mask(b) for b in bools]
    params, moms = [p.clone() for p in ps], [m.clone() for m in ms]
    grads = [g.clone() for g in gs]
    masks_before = None if masks is None else [x.clone() for x in masks]
    sgd(params, grads, moms, lr, mu, masks, wd)
    for j, spec in enumerate(specs):
        what = f"param {j} of {len(specs)}: {spec}, masks {kind} ({density}), lr={lr!r}, mu={mu!r}, wd={wd!r}"
        mask = None if bools is None else bools[j]
        want_p, want_m = sgd_expr(ps[j], ms[j], gs[j], lr, mu, wd, mask)
        assert_same_bits(params[j], want_p, f"{what}: params")
        assert_same_bits(moms[j], want_m, f"{what}: momentum")
        if mask is not None:
            assert_identical(params[j][~mask], ps[j][~mask], f"{what}: inactive params")
            assert_identical(moms[j][~mask], ms[j][~mask], f"{what}: inactive momentum")
            assert_identical(masks[j], masks_before[j], f"{what}: mask changed")
        assert_identical(grads[j], gs[j], f"{what}: grads changed")
        assert_sgd_close_to_oracle(params[j], moms[j], ps[j], ms[j], gs[j], mask, lr, mu, wd, what)
    if kind is not None:  # the other mask kind gives the same bits
        other = [robustagg.ops.pack_mask(b) for b in bools] if kind == "bool" else bools
        params2, moms2 = [p.clone() for p in ps], [m.clone() for m in ms]
        sgd(params2, gs, moms2, lr, mu, other, wd)
        for j in range(len(specs)):
            assert_identical(params2[j], params[j], f"param {j}: bool vs packed masks")
            assert_identical(moms2[j], moms[j], f"param {j}: bool vs packed masks, momentum")


mask_kinds = st.sampled_from([None, "bool", "packed"])
densities = st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0])


@settings(max_examples=200, **SETTINGS)
@given(data=st.data(), dtype=st.sampled_from(DTYPES), kind=mask_kinds, density=densities, lr=lrs, mu=mus, wd=wds)
def test_sgd_random_lists_one_dtype(data, dtype, kind, density, lr, mu, wd):
    check_sgd(data.draw(param_lists([dtype], most=3 * PIECE + 300), label="specs"), kind, density, lr, mu, wd)


@settings(max_examples=200, **SETTINGS)
@given(specs=param_lists(DTYPES, most=3 * PIECE + 300), kind=mask_kinds, density=densities, lr=lrs, mu=mus, wd=wds)
def test_sgd_random_lists_mixed_dtypes(specs, kind, density, lr, mu, wd):
    check_sgd(specs, kind, density, lr, mu, wd)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sgd_piece_boundaries_and_odd_sizes(dtype):
    """Sizes at piece boundaries and odd sizes (the packed mask's last byte is partial)."""
    sizes = [1, 7, 9, 15, 17, PIECE - 1, PIECE, PIECE + 1, 2 * PIECE + 5, 3 * PIECE + 13]
    specs = [ParamSpec((s,), dtype, s, ("gaussian", "magnitudes", "gaussian"), 0.0) for s in sizes]
    for kind in (None, "bool", "packed"):
        check_sgd(specs, kind, 0.5, 0.05, 0.9, 1e-2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sgd_known_values(dtype):
    """By hand: d = g + wd p, m = mu m + d, p = p - lr m (the new m) where set; weight decay 0
    adds no term (0 * inf would be NaN)."""
    p = torch.tensor([4.0, 4.0, 4.0, math.inf], dtype=dtype)
    m = torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=dtype)
    g = torch.tensor([1.0, -3.0, 0.5, 1.0], dtype=dtype)
    mask = torch.tensor([True, True, False, True])
    sgd([p], [g], [m], 0.5, 0.75, [mask], 0.25)
    # d = 1 + 1 = 2, m = 1.5 + 2 = 3.5, p = 4 - 1.75; d = -3 + 1 = -2, m = -0.5, p = 4.25; p = inf: NaN
    assert m.tolist()[:3] == [3.5, -0.5, 2.0] and math.isinf(m[3].item()), m.tolist()
    assert p.tolist()[:3] == [2.25, 4.25, 4.0] and math.isnan(p[3].item()), p.tolist()
    p = torch.tensor([4.0, math.inf], dtype=dtype)
    m = torch.tensor([2.0, 2.0], dtype=dtype)
    sgd([p], [torch.tensor([1.0, 1.0], dtype=dtype)], [m], 0.5, 0.75)
    assert p.tolist() == [2.75, math.inf] and m.tolist() == [2.5, 2.5]


def _payload_nans(dtype) -> torch.Tensor:
    """NaNs with distinct payloads (negative and signalling ones too), and infinities."""
    bits = {torch.float32: [0x7FC00123, 0xFFC00001, 0x7F800001, 0x7FFFFFFF],
            torch.float64: [0x7FF8000000000123, 0xFFF8000000000001, 0x7FF0000000000001, 0x7FFFFFFFFFFFFFFF],
            torch.float16: [0x7E01, 0xFE01, 0x7C01, 0x7FFF],
            torch.bfloat16: [0x7FC1, 0xFFC1, 0x7F81, 0x7FFF]}[dtype]
    nbits = torch.finfo(dtype).bits
    signed = [b - (1 << nbits) if b >> (nbits - 1) else b for b in bits]
    nans = torch.tensor(signed, dtype=INT_OF[nbits // 8]).view(dtype)
    assert nans.isnan().all()
    return torch.cat([nans, torch.tensor([math.inf, -math.inf], dtype=dtype)])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["bool", "packed"])
def test_sgd_inactive_elements_keep_bits_and_stay_apart(dtype, kind):
    """NaN (with payloads) and inf in the params, momentum and grads of inactive elements: those
    elements keep every bit, and every active element (its neighbours included, across a piece
    boundary) is finite and equals the expression."""
    gen = torch.Generator().manual_seed(13)
    numel = PIECE + 29
    mask = torch.rand(numel, generator=gen) < 0.5
    mask[PIECE - 3 : PIECE + 3] = torch.tensor([True, False, True, False, False, True])
    bad = _payload_nans(dtype)
    lists = []
    for _ in range(3):
        x = _randn(numel, gen, dtype)
        pick = torch.randint(0, len(bad), (numel,), generator=gen)
        x[~mask] = bad[pick][~mask]
        lists.append(x)
    p0, g0, m0 = lists
    p, g, m = p0.clone(), g0.clone(), m0.clone()
    masks = [mask] if kind == "bool" else [robustagg.ops.pack_mask(mask)]
    sgd([p], [g], [m], 0.1, 0.9, masks, 1e-2)
    assert_identical(p[~mask], p0[~mask], "inactive params")
    assert_identical(m[~mask], m0[~mask], "inactive momentum")
    assert_identical(g, g0, "grads changed")
    assert p[mask].isfinite().all() and m[mask].isfinite().all(), "a non-finite value reached an active element"
    want_p, want_m = sgd_expr(p0, m0, g0, 0.1, 0.9, 1e-2, mask)
    assert_same_bits(p, want_p, "params")
    assert_same_bits(m, want_m, "momentum")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sgd_all_true_all_false_and_none(dtype):
    """masks=None equals an all-true mask of either kind (padding bits of the packed mask set or
    not); an all-false mask changes no bit."""
    gen = torch.Generator().manual_seed(17)
    shapes = [(PIECE + 3,), (5, 7), (), (0, 4), (3, 3)]
    ps = [_randn(s, gen, dtype) for s in shapes]
    ms = [_randn(s, gen, dtype) for s in shapes]
    gs = [_randn(s, gen, dtype) for s in shapes]
    ps[1][0, 0] = math.nan
    gs[1][1, 1] = math.inf
    ref_p, ref_m = [p.clone() for p in ps], [m.clone() for m in ms]
    sgd(ref_p, gs, ref_m, 0.01, 0.5, None, 1e-3)
    for j in range(len(shapes)):
        want_p, want_m = sgd_expr(ps[j], ms[j], gs[j], 0.01, 0.5, 1e-3)
        assert_same_bits(ref_p[j], want_p, f"masks=None, param {j}")
        assert_same_bits(ref_m[j], want_m, f"masks=None, momentum {j}")
    ones = [torch.ones(s, dtype=torch.bool) for s in shapes]
    padded = [torch.full(((math.prod(s) + 7) // 8,), 255, dtype=torch.uint8) for s in shapes]
    for name, masks in (("bool", ones), ("packed", [robustagg.ops.pack_mask(o) for o in ones]),
                        ("packed, padding set", padded)):
        p, m = [x.clone() for x in ps], [x.clone() for x in ms]
        sgd(p, gs, m, 0.01, 0.5, masks, 1e-3)
        for j in range(len(shapes)):
            assert_identical(p[j], ref_p[j], f"all-true {name} vs None, param {j}")
            assert_identical(m[j], ref_m[j], f"all-true {name} vs None, momentum {j}")
    zeros = [torch.zeros(s, dtype=torch.bool) for s in shapes]
    for name, masks in (("bool", zeros), ("packed", [robustagg.ops.pack_mask(z) for z in zeros])):
        p, m = [x.clone() for x in ps], [x.clone() for x in ms]
        sgd(p, gs, m, 0.01, 0.5, masks, 1e-3)
        for j in range(len(shapes)):
            assert_identical(p[j], ps[j], f"all-false {name}, param {j}")
            assert_identical(m[j], ms[j], f"all-false {name}, momentum {j}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sgd_packed_padding_bits_are_ignored(dtype):
    """Odd numel: set bits past the last element of the last byte do not change anything."""
    gen = torch.Generator().manual_seed(19)
    for numel in (1, 3, 9, 13, 8 * 5 + 7, PIECE + 5):
        mask = torch.rand(numel, generator=gen) < 0.5
        packed = robustagg.ops.pack_mask(mask)
        assert packed.numel() == (numel + 7) // 8
        assert int(packed[-1]) >> (numel - 8 * (packed.numel() - 1)) == 0, "pack_mask pads with zeros"
        dirty = packed.clone()
        dirty[-1] |= (0xFF << (numel - 8 * (packed.numel() - 1))) & 0xFF
        p0, m0, g0 = _randn(numel, gen, dtype), _randn(numel, gen, dtype), _randn(numel, gen, dtype)
        out = {}
        for name, mk in (("bool", mask), ("packed", packed), ("padding set", dirty)):
            p, m = p0.clone(), m0.clone()
            sgd([p], [g0], [m], 0.2, 0.6, [mk])
            out[name] = (p, m)
        want_p, want_m = sgd_expr(p0, m0, g0, 0.2, 0.6, 0.0, mask)
        for name, (p, m) in out.items():
            assert_same_bits(p, want_p, f"numel {numel}, {name} mask: params")
            assert_same_bits(m, want_m, f"numel {numel}, {name} mask: momentum")


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (8,), (9,), (3, 5), (2, 3, 7), (), (4, 0), (PIECE + 3,)], ids=str)
def test_pack_mask_bit_order(shape):
    """Bit j of byte k is element 8k + j in row-major order, as numpy.packbits(bitorder="little"),
    for contiguous and transposed / sliced masks; 1-D uint8 of ceil(numel / 8) bytes."""
    gen = torch.Generator().manual_seed(len(shape))
    base = torch.rand(*shape, 3, generator=gen) < 0.5
    for name, mask in (("contiguous", base[..., 0].contiguous()), ("strided", base[..., 1]),
                       ("transposed", base[..., 2].t() if base.dim() == 3 else base[..., 2])):
        packed = robustagg.ops.pack_mask(mask)
        want = np.packbits(mask.numpy().reshape(-1), bitorder="little")
        assert packed.dtype == torch.uint8 and packed.shape == ((mask.numel() + 7) // 8,), (name, packed.shape)
        assert packed.tolist() == want.tolist(), name
        assert torch.equal(unpack(packed, mask.shape), mask), name
    # One set element at a time lands on its bit.
    for i in (0, 1, 7, 8, 13):
        one = torch.zeros(16, dtype=torch.bool)
        one[i] = True
        assert robustagg.ops.pack_mask(one).tolist() == [1 << i if i < 8 else 0, 1 << (i - 8) if i >= 8 else 0]


def test_pack_mask_errors():
    for bad in (torch.ones(3), torch.ones(3, dtype=torch.uint8), [True, False], None):
        with pytest.raises(TypeError, match=re.escape("pack_mask: mask must be a bool tensor")):
            robustagg.ops.pack_mask(bad)


def assert_within_one_ulp_of_terms(got, want, terms, what=""):
    """|got - want| <= one unit in the last place of the largest term of the computation, the
    result included (an FMA skips the rounding of a product: the results may differ by the
    product's rounding, which cancellation makes large relative to the result), in got's dtype."""
    eps = torch.finfo(got.dtype).eps
    scale = torch.stack([t.to(torch.float64).abs().reshape(-1) for t in terms]).amax(0)
    diff = (got.to(torch.float64) - want.to(torch.float64)).abs().reshape(-1)
    tol = eps * scale + torch.finfo(got.dtype).tiny
    bad = ~(diff <= tol)
    if bad.any():
        j = int(bad.nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} differ by more than one ulp of the terms; "
                             f"first at {j}: {got.reshape(-1)[j].item()!r} vs {want.reshape(-1)[j].item()!r}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sgd_first_step_matches_torch_optim_sgd(dtype):
    """From a zero momentum buffer the step is torch.optim.SGD's first step (momentum, no
    dampening, no Nesterov, weight decay). SGD evaluates g + wd p and p - lr m with FMAs (add
    with alpha), so the results agree within one ulp of the larger term of each; without weight
    decay the buffer is g itself, bit for bit."""
    gen = torch.Generator().manual_seed(23)
    shapes = [(PIECE + 77,), (31, 9), ()]
    lr, mu = 0.1, 0.9
    for wd in (0.0, 1e-2):
        ps = [_randn(s, gen, dtype) for s in shapes]
        gs = [_randn(s, gen, dtype, 0.1) for s in shapes]
        ours = [p.clone() for p in ps]
        bufs = [torch.zeros_like(p) for p in ps]
        sgd(ours, gs, bufs, lr, mu, None, wd)
        for foreach in (False, True):
            theirs = [torch.nn.Parameter(p.clone()) for p in ps]
            opt = torch.optim.SGD(theirs, lr=lr, momentum=mu, dampening=0, nesterov=False, weight_decay=wd,
                                  foreach=foreach)
            for t, g in zip(theirs, gs):
                t.grad = g.clone()
            opt.step()
            for j, t in enumerate(theirs):
                what = f"wd={wd} foreach={foreach} param {j}"
                buf = opt.state[t]["momentum_buffer"]
                assert_within_one_ulp_of_terms(bufs[j], buf, [gs[j], wd * ps[j].to(torch.float64), buf],
                                               f"{what}: momentum")
                assert_within_one_ulp_of_terms(ours[j], t.detach(), [ps[j], lr * buf.to(torch.float64), t.detach()],
                                               f"{what}: params")
                if wd == 0.0:
                    assert_identical(bufs[j], gs[j], what)
                    assert_identical(buf, gs[j], what)


# --- Layouts, aliasing ------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("view", list(VIEWS), ids=str)
def test_sgd_non_contiguous(view, dtype):
    """Strided params, momentum, grads and bool masks (a view of a larger bool tensor), packed
    masks as a strided byte view: written views keep storage and strides, their bases change
    exactly under the view, results equal the contiguous call and the expression."""
    fn, base_shape = VIEWS[view]
    gen = torch.Generator().manual_seed(len(view) + 1)
    lr, mu, wd = 0.05, 0.8, 0.01
    for kind in (None, "bool", "packed"):
        base_p, base_m, base_g = (_randn(base_shape, gen, dtype) for _ in range(3))
        before_p, before_m, before_g = base_p.clone(), base_m.clone(), base_g.clone()
        p, m, g = fn(base_p), fn(base_m), fn(base_g)
        assert not p.is_contiguous()
        bool_base = torch.rand(base_shape, generator=gen) < 0.6
        mask = fn(bool_base)
        masks = None
        if kind == "bool":
            masks = [mask]
        elif kind == "packed":
            packed = robustagg.ops.pack_mask(mask)
            spread = torch.zeros(2 * packed.numel(), dtype=torch.uint8)
            spread[::2] = packed
            spread[1::2] = 0xA5  # what lies between the strided bytes must not be read as mask bits
            masks = [spread[::2]]
            assert not masks[0].is_contiguous() or packed.numel() <= 1
        p0, m0 = p.clone(), m.clone()
        layout = [(x.data_ptr(), x.stride()) for x in (p, m)]
        sgd([p], [g], [m], lr, mu, masks, wd)
        assert [(x.data_ptr(), x.stride()) for x in (p, m)] == layout, "written views must keep storage and strides"
        cp, cm = p0.clone(memory_format=torch.contiguous_format), m0.clone(memory_format=torch.contiguous_format)
        sgd([cp], [g.contiguous()], [cm], lr, mu, None if kind is None else [mask.contiguous()], wd)
        want_p, want_m = sgd_expr(p0, m0, fn(before_g), lr, mu, wd, None if kind is None else mask)
        what = f"{view}, masks {kind}"
        assert_same_bits(p, cp, f"{what}: params vs contiguous")
        assert_same_bits(m, cm, f"{what}: momentum vs contiguous")
        assert_same_bits(p, want_p, f"{what}: params vs expression")
        assert_same_bits(m, want_m, f"{what}: momentum vs expression")
        for base, before, new in ((base_p, before_p, p), (base_m, before_m, m)):
            expected = before.clone()
            fn(expected).copy_(new)
            assert_identical(base, expected, f"{what}: base of a written view")
        assert_identical(base_g, before_g, f"{what}: grads changed")
        if kind == "bool":  # contiguous params and grads, the mask alone strided
            cp, cm = p0.clone(memory_format=torch.contiguous_format), m0.clone(memory_format=torch.contiguous_format)
            sgd([cp], [fn(before_g).contiguous()], [cm], lr, mu, [mask], wd)
            assert_same_bits(cp, want_p, f"{what}: contiguous params, strided mask")
            assert_same_bits(cm, want_m, f"{what}: contiguous momentum, strided mask")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sgd_aliased_read_lists(dtype):
    """The same grad tensor and the same mask for several params; grads and masks unchanged."""
    gen = torch.Generator().manual_seed(29)
    shape = (3, PIECE // 2 + 5)
    ps = [_randn(shape, gen, dtype) for _ in range(3)]
    ms = [_randn(shape, gen, dtype) for _ in range(3)]
    g, other_g = _randn(shape, gen, dtype), _randn(shape, gen, dtype)
    g0 = g.clone()
    mask = torch.rand(shape, generator=gen) < 0.5
    packed = robustagg.ops.pack_mask(mask)
    for masks in ([mask, mask, ~mask], [packed, packed, robustagg.ops.pack_mask(~mask)]):
        bools = [mask, mask, ~mask]
        p, m = [x.clone() for x in ps], [x.clone() for x in ms]
        saved = [x.clone() for x in masks]
        sgd(p, [g, other_g, g], m, 0.1, 0.9, masks, 0.0)
        for j, gj in enumerate([g0, other_g, g0]):
            want_p, want_m = sgd_expr(ps[j], ms[j], gj, 0.1, 0.9, 0.0, bools[j])
            assert_same_bits(p[j], want_p, f"param {j}")
            assert_same_bits(m[j], want_m, f"momentum {j}")
        assert_identical(g, g0, "grads changed")
        for x, x0 in zip(masks, saved):
            assert_identical(x, x0, "masks changed")


# ===========================================================================
# Both ops: threads, argument checks, registration


def test_thread_count_does_not_change_results():
    gen = torch.Generator().manual_seed(11)
    sizes = [5 * PIECE + 3, 17, 0, 2 * PIECE, PIECE + 1, 3, 4 * PIECE - 1, 1000]
    dtypes = [DTYPES[i % len(DTYPES)] for i in range(len(sizes))]
    ps = [_randn(n, gen, dt) for n, dt in zip(sizes, dtypes)]
    gs = [[_randn(n, gen, dt) for n, dt in zip(sizes, dtypes)] for _ in range(3)]
    cs = [[_randn(n, gen, dt) for n, dt in zip(sizes, dtypes)] for _ in range(2)]
    ms = [_randn(n, gen, dt) for n, dt in zip(sizes, dtypes)]
    masks = [torch.rand(n, generator=gen) < 0.5 for n in sizes]
    threads = torch.get_num_threads()
    results = {}
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            p, c = [x.clone() for x in ps], [[x.clone() for x in cl] for cl in cs]
            wga(p, gs, [0.5, 0.3, 0.2], 0.1, corrections=c, beta=0.25)
            sp, sm = [x.clone() for x in ps], [x.clone() for x in ms]
            sgd(sp, gs[0], sm, 0.1, 0.9, [robustagg.ops.pack_mask(x) for x in masks], 1e-3)
            results[t] = (p, c, sp, sm)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    for j in range(len(sizes)):
        want_p, want_c = wga_expr(ps[j], [gl[j] for gl in gs], [0.5, 0.3, 0.2], 0.1, [cl[j] for cl in cs], 0.25)
        want_sp, want_sm = sgd_expr(ps[j], ms[j], gs[0][j], 0.1, 0.9, 1e-3, masks[j])
        for t, (p, c, sp, sm) in results.items():
            what = f"tensor {j}, {t} threads"
            assert_same_bits(p[j], want_p, f"{what}: weighted params")
            for i in range(2):
                assert_same_bits(c[i][j], want_c[i], f"{what}: corrections[{i}]")
            assert_same_bits(sp[j], want_sp, f"{what}: masked params")
            assert_same_bits(sm[j], want_sm, f"{what}: masked momentum")


def _f(*shape, dtype=torch.float32):
    return torch.ones(shape, dtype=dtype)


def _wga_valid() -> dict:
    """Valid wrapper arguments: two params, N = 2, corrections."""
    return dict(params=[_f(3), _f(2, 2)], grads=[[_f(3), _f(2, 2)] for _ in range(3)], weights=[0.5, 0.3, 0.2],
                lr=0.1, corrections=[[_f(3), _f(2, 2)] for _ in range(2)], beta=0.5)


def _sgd_valid() -> dict:
    return dict(params=[_f(3), _f(2, 2)], grads=[_f(3), _f(2, 2)], momentum_buffers=[_f(3), _f(2, 2)], lr=0.1,
                momentum=0.9, masks=[torch.ones(3, dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool)],
                weight_decay=0.0)


def _native_args(op: str, kwargs: dict) -> list:
    """native_args, with the weighted step's gradient and correction lists flattened user-major."""
    if op == "weighted_step_":
        kwargs = dict(kwargs)
        kwargs["grads"] = [t for gl in kwargs["grads"] for t in gl]
        if kwargs.get("corrections") is not None:
            kwargs["corrections"] = [t for cl in kwargs["corrections"] for t in cl]
        kwargs["weights"] = [float(w) for w in kwargs["weights"]]
    return native_args(op, kwargs)


W, S = "weighted_step_: ", "masked_sgd_step_: "
_u8 = dict(dtype=torch.uint8)
_b = dict(dtype=torch.bool)
# id: (op, overrides of the valid arguments, exception, message, also raised by the native op)
ERRORS = {
    # weighted_step_: lists
    "wga: grads not a list": ("weighted_step_", dict(grads=_f(3), corrections=None), TypeError,
                              W + "grads must be a non-empty list of N + 1 gradient lists, got Tensor", False),
    "wga: grads empty": ("weighted_step_", dict(grads=[], corrections=None), TypeError,
                         W + "grads must be a non-empty list of N + 1 gradient lists, got list", False),
    "wga: weights shorter": ("weighted_step_", dict(weights=[0.5, 0.5]), ValueError,
                             W + "weights must hold one number per gradient list (3), got [0.5, 0.5]", False),
    "wga: weights longer": ("weighted_step_", dict(weights=[0.5, 0.5, 0.1, 0.1]), ValueError,
                            W + "weights must hold one number per gradient list (3)", False),
    "wga: weights a float": ("weighted_step_", dict(weights=1.0), ValueError,
                             W + "weights must hold one number per gradient list (3), got 1.0", False),
    "wga: weight a str": ("weighted_step_", dict(weights=[0.5, "0.3", 0.2]), TypeError,
                          W + "weights[1] must be a float, got str", False),
    "wga: weight a bool": ("weighted_step_", dict(weights=[0.5, 0.3, True]), TypeError,
                           W + "weights[2] must be a float, got bool", False),
    "wga: corrections too many": ("weighted_step_", dict(corrections=[[_f(3), _f(2, 2)]] * 3), ValueError,
                                  W + "corrections must hold N = 2 lists (one per collaborator), got 3", False),
    "wga: corrections too few": ("weighted_step_", dict(corrections=[[_f(3), _f(2, 2)]]), ValueError,
                                 W + "corrections must hold N = 2 lists (one per collaborator), got 1", False),
    "wga: corrections a tensor": ("weighted_step_", dict(corrections=_f(3)), TypeError,
                                  W + "corrections must be a list of N correction lists, got Tensor", False),
    "wga: grads[1] shorter": ("weighted_step_", dict(grads=[[_f(3), _f(2, 2)], [_f(3)], [_f(3), _f(2, 2)]]),
                              ValueError, W + "params and grads[1] must be equally long lists, got 2 and 1 tensors",
                              False),
    "wga: corrections[1] longer": ("weighted_step_", dict(corrections=[[_f(3), _f(2, 2)], [_f(3), _f(2, 2), _f(1)]]),
                                   ValueError,
                                   W + "params and corrections[1] must be equally long lists, got 2 and 3 tensors",
                                   False),
    "wga: grads[2] a tensor": ("weighted_step_", dict(grads=[[_f(3), _f(2, 2)], [_f(3), _f(2, 2)], _f(3)]),
                               TypeError, W + "grads[2] must be a list of tensors, got Tensor", False),
    "wga: grads[0] element": ("weighted_step_", dict(grads=[[_f(3), 1.0], [_f(3), _f(2, 2)], [_f(3), _f(2, 2)]]),
                              TypeError, W + "grads[0][1] must be a torch.Tensor, got float", False),
    "wga: lr a str": ("weighted_step_", dict(lr="0.1"), TypeError, W + "lr must be a float, got str", False),
    "wga: beta None": ("weighted_step_", dict(beta=None), TypeError, W + "beta must be a float, got NoneType", False),
    # weighted_step_: values and tensors (the native op checks these)
    "wga: weight nan": ("weighted_step_", dict(weights=[0.5, math.nan, 0.2]), ValueError,
                        W + "weights must be finite, got weights[1]=nan", True),
    "wga: weight inf": ("weighted_step_", dict(weights=[0.5, 0.3, -math.inf]), ValueError,
                        W + "weights must be finite, got weights[2]=-inf", True),
    "wga: lr nan": ("weighted_step_", dict(lr=math.nan), ValueError, W + "lr must be finite, got lr=nan", True),
    "wga: lr inf": ("weighted_step_", dict(lr=math.inf), ValueError, W + "lr must be finite, got lr=inf", True),
    "wga: beta > 1": ("weighted_step_", dict(beta=1.5), ValueError, W + "beta must be in [0, 1], got beta=1.5", True),
    "wga: beta < 0": ("weighted_step_", dict(beta=-0.1), ValueError, W + "beta must be in [0, 1], got beta=-0.1",
                      True),
    "wga: beta just > 1": ("weighted_step_", dict(beta=1.0 + 2**-40), ValueError, W + "beta must be in [0, 1]", True),
    "wga: beta nan": ("weighted_step_", dict(beta=math.nan), ValueError, W + "beta must be in [0, 1], got beta=nan",
                      True),
    "wga: beta checked without corrections": ("weighted_step_", dict(beta=2.0, corrections=None), ValueError,
                                              W + "beta must be in [0, 1], got beta=2", True),
    "wga: grads[2] shape": ("weighted_step_", dict(grads=[[_f(3), _f(2, 2)], [_f(3), _f(2, 2)], [_f(3), _f(4)]]),
                            ValueError, W + "grads[2][1] must have params[1]'s shape [2, 2], got [4]", True),
    "wga: grads[0] dtype": ("weighted_step_",
                            dict(grads=[[_f(3, dtype=torch.float64), _f(2, 2)], [_f(3), _f(2, 2)], [_f(3), _f(2, 2)]]),
                            TypeError, W + "grads[0][0] must have params[0]'s dtype Float, got Double", True),
    "wga: corrections[1] shape": ("weighted_step_", dict(corrections=[[_f(3), _f(2, 2)], [_f(3), _f(2, 3)]]),
                                  ValueError, W + "corrections[1][1] must have params[1]'s shape [2, 2], got [2, 3]",
                                  True),
    "wga: corrections[0] dtype": ("weighted_step_",
                                  dict(corrections=[[_f(3, dtype=torch.bfloat16), _f(2, 2)], [_f(3), _f(2, 2)]]),
                                  TypeError, W + "corrections[0][0] must have params[0]'s dtype Float, got BFloat16",
                                  True),
    "wga: integer params": ("weighted_step_", dict(params=[_f(3, dtype=torch.int64)],
                                                   grads=[[_f(3, dtype=torch.int64)]] * 3, corrections=None),
                            TypeError, W + "params[0] must be float32, float64, float16 or bfloat16, got Long", True),
    # masked_sgd_step_: lists and scalars
    "sgd: grads shorter": ("masked_sgd_step_", dict(grads=[_f(3)]), ValueError,
                           S + "params and grads must be equally long lists, got 2 and 1 tensors", True),
    "sgd: momentum longer": ("masked_sgd_step_", dict(momentum_buffers=[_f(3), _f(2, 2), _f(1)]), ValueError,
                             S + "params and momentum_buffers must be equally long lists, got 2 and 3 tensors", True),
    "sgd: grads shape": ("masked_sgd_step_", dict(grads=[_f(3), _f(4)]), ValueError,
                         S + "grads[1] must have params[1]'s shape [2, 2], got [4]", True),
    "sgd: momentum dtype": ("masked_sgd_step_", dict(momentum_buffers=[_f(3, dtype=torch.float16), _f(2, 2)]),
                            TypeError, S + "momentum_buffers[0] must have params[0]'s dtype Float, got Half", True),
    "sgd: integer params": ("masked_sgd_step_", dict(params=[_f(3, dtype=torch.int32)],
                                                     grads=[_f(3, dtype=torch.int32)],
                                                     momentum_buffers=[_f(3, dtype=torch.int32)], masks=None),
                            TypeError, S + "params[0] must be float32, float64, float16 or bfloat16, got Int", True),
    "sgd: lr nan": ("masked_sgd_step_", dict(lr=math.nan), ValueError, S + "lr must be finite, got lr=nan", True),
    "sgd: momentum inf": ("masked_sgd_step_", dict(momentum=math.inf), ValueError,
                          S + "momentum must be finite, got momentum=inf", True),
    "sgd: weight_decay nan": ("masked_sgd_step_", dict(weight_decay=math.nan), ValueError,
                              S + "weight_decay must be finite, got weight_decay=nan", True),
    "sgd: lr a str": ("masked_sgd_step_", dict(lr="0.1"), TypeError, S + "lr must be a float, got str", False),
    "sgd: momentum a bool": ("masked_sgd_step_", dict(momentum=True), TypeError,
                             S + "momentum must be a float, got bool", False),
    "sgd: grads a tensor": ("masked_sgd_step_", dict(grads=_f(3)), TypeError,
                            S + "grads must be a list of tensors, got Tensor", False),
    # masked_sgd_step_: masks
    "sgd: masks a tensor": ("masked_sgd_step_", dict(masks=torch.ones(3, **_b)), TypeError,
                            S + "masks must be a list of tensors, got Tensor", False),
    "sgd: masks shorter": ("masked_sgd_step_", dict(masks=[torch.ones(3, **_b)]), ValueError,
                           S + "params and masks must be equally long lists, got 2 and 1 tensors", True),
    "sgd: masks longer": ("masked_sgd_step_", dict(masks=[torch.ones(3, **_b)] * 3), ValueError,
                          S + "params and masks must be equally long lists, got 2 and 3 tensors", True),
    "sgd: float mask": ("masked_sgd_step_", dict(masks=[torch.ones(3), torch.ones(2, 2)]), TypeError,
                        S + "masks[0] must be bool or uint8 (packed bits), got Float", True),
    "sgd: int mask second": ("masked_sgd_step_", dict(masks=[torch.ones(3, **_b), torch.ones(2, 2, dtype=torch.int8)]),
                             TypeError, S + "masks[1] must be bool or uint8 (packed bits), got Char", True),
    "sgd: bool then packed": ("masked_sgd_step_", dict(masks=[torch.ones(3, **_b), torch.zeros(1, **_u8)]), TypeError,
                              S + "masks must be all bool or all uint8 (packed), masks[0] is Bool and masks[1] Byte",
                              True),
    "sgd: packed then bool": ("masked_sgd_step_", dict(masks=[torch.zeros(1, **_u8), torch.ones(2, 2, **_b)]),
                              TypeError,
                              S + "masks must be all bool or all uint8 (packed), masks[0] is Byte and masks[1] Bool",
                              True),
    "sgd: bool mask shape": ("masked_sgd_step_", dict(masks=[torch.ones(3, **_b), torch.ones(4, **_b)]), ValueError,
                             S + "masks[1] must have params[1]'s shape [2, 2], got [4]", True),
    "sgd: bool mask transposed shape": ("masked_sgd_step_", dict(params=[_f(3), _f(2, 3)], grads=[_f(3), _f(2, 3)],
                                                                 momentum_buffers=[_f(3), _f(2, 3)],
                                                                 masks=[torch.ones(3, **_b), torch.ones(3, 2, **_b)]),
                                        ValueError, S + "masks[1] must have params[1]'s shape [2, 3], got [3, 2]",
                                        True),
    "sgd: packed too long": ("masked_sgd_step_", dict(masks=[torch.zeros(1, **_u8), torch.zeros(2, **_u8)]),
                             ValueError,
                             S + "packed masks[1] must be 1-D with ceil(numel / 8) = 1 bytes, got shape [2]",
                             True),
    "sgd: packed too short": ("masked_sgd_step_", dict(params=[_f(9)], grads=[_f(9)], momentum_buffers=[_f(9)],
                                                       masks=[torch.zeros(1, **_u8)]),
                              ValueError,
                              S + "packed masks[0] must be 1-D with ceil(numel / 8) = 2 bytes, got shape [1]",
                              True),
    "sgd: packed unpacked bytes": ("masked_sgd_step_", dict(params=[_f(9)], grads=[_f(9)], momentum_buffers=[_f(9)],
                                                            masks=[torch.ones(9, **_u8)]),
                                   ValueError,
                                   S + "packed masks[0] must be 1-D with ceil(numel / 8) = 2 bytes, got shape [9]",
                                   True),
    "sgd: packed 2-D": ("masked_sgd_step_", dict(masks=[torch.zeros(1, 1, **_u8), torch.zeros(1, **_u8)]), ValueError,
                        S + "packed masks[0] must be 1-D with ceil(numel / 8) = 1 bytes, got shape [1, 1]", True),
}
NATIVE_ERRORS = [k for k, v in ERRORS.items() if v[4]]
WRITTEN = {"weighted_step_": ("params", "corrections"), "masked_sgd_step_": ("params", "momentum_buffers")}
VALID = {"weighted_step_": _wga_valid, "masked_sgd_step_": _sgd_valid}


@pytest.mark.parametrize("case", list(ERRORS), ids=str)
def test_errors(case):
    op, overrides, exc, message, _ = ERRORS[case]
    kwargs = {**VALID[op](), **overrides}
    written = [t for n in WRITTEN[op] if isinstance(kwargs.get(n), list)
               for x in kwargs[n] for t in (x if isinstance(x, list) else [x]) if isinstance(t, torch.Tensor)]
    before = [t.clone() for t in written]
    with pytest.raises(exc, match=re.escape(message)):
        getattr(robustagg.ops, op)(**kwargs)
    for t, t0 in zip(written, before):  # checked before anything is written
        assert_identical(t, t0, f"{case}: written before the error")


@pytest.mark.parametrize("case", NATIVE_ERRORS, ids=str)
def test_errors_native_op(case):
    """The native op itself raises the same errors (the wrappers only add type and list checks)."""
    op, overrides, exc, message, _ = ERRORS[case]
    args = _native_args(op, {**VALID[op](), **overrides})
    with pytest.raises(exc, match=re.escape(message)):
        getattr(torch.ops.robustagg, op)(*args)


NATIVE_ONLY = {  # list counts that only the native op sees (the wrapper builds them)
    "grads count": (([_f(3), _f(2, 2)], [_f(3), _f(2, 2), _f(3)], None, [0.5, 0.5], 0.1, 0.0), ValueError,
                    W + "grads must hold N + 1 = 2 lists of 2 tensors, got 3 tensors"),
    "grads count, one user": (([_f(3)], [_f(3), _f(3)], None, [1.0], 0.1, 0.0), ValueError,
                              W + "grads must hold N + 1 = 1 lists of 1 tensors, got 2 tensors"),
    "no weights": (([_f(3)], [], None, [], 0.1, 0.0), ValueError, W + "weights must hold N + 1 >= 1 numbers, got none"),
    "corrections count": (([_f(3)], [_f(3)] * 3, [_f(3)], [0.2, 0.3, 0.5], 0.1, 0.5), ValueError,
                          W + "corrections must hold N = 2 lists of 1 tensors, got 1 tensors"),
    "corrections for N = 0": (([_f(3)], [_f(3)], [_f(3)], [1.0], 0.1, 0.5), ValueError,
                              W + "corrections must hold N = 0 lists of 1 tensors, got 1 tensors"),
}


@pytest.mark.parametrize("case", list(NATIVE_ONLY), ids=str)
def test_errors_native_op_list_counts(case):
    args, exc, message = NATIVE_ONLY[case]
    with pytest.raises(exc, match=re.escape(message)):
        torch.ops.robustagg.weighted_step_(*args)


@pytest.mark.parametrize("element", [None, True], ids=str)
def test_sgd_mask_element_not_a_tensor(element):
    kwargs = {**_sgd_valid(), "masks": [torch.ones(3, **_b), element]}
    with pytest.raises(TypeError, match=re.escape(S + "masks[1] must be a torch.Tensor")):
        robustagg.ops.masked_sgd_step_(**kwargs)


def test_empty_lists_are_a_no_op_but_scalars_are_still_checked():
    wga([], [[]], [1.0], 0.1)
    wga([], [[], [], []], [0.2, 0.3, 0.5], 0.1, corrections=[[], []], beta=0.5)
    sgd([], [], [], 0.1, 0.9)
    sgd([], [], [], 0.1, 0.9, masks=[], wd=0.5)
    for kwargs, message in ((dict(lr=math.nan), "lr must be finite, got lr=nan"),
                            (dict(beta=1.5), "beta must be in [0, 1], got beta=1.5"),
                            (dict(weights=[0.5, math.inf]), "weights must be finite, got weights[1]=inf")):
        args = {**dict(params=[], grads=[[], []], weights=[0.5, 0.5], lr=0.1, corrections=[[]], beta=0.5), **kwargs}
        with pytest.raises(ValueError, match=re.escape(W + message)):
            robustagg.ops.weighted_step_(**args)
    with pytest.raises(ValueError, match=re.escape(W + "weights must hold one number per gradient list (2)")):
        wga([], [[], []], [1.0], 0.1)


def test_weights_as_numpy_array():
    p, g = [torch.ones(3)], [[torch.full((3,), 2.0)], [torch.full((3,), 4.0)]]
    robustagg.ops.weighted_step_(p, g, np.array([0.25, 0.75]), 0.5)
    assert torch.equal(p[0], torch.full((3,), 1.0 - 0.5 * (0.25 * 2.0 + 0.75 * 4.0)))
    for kwargs, message in ((dict(lr=math.inf), "lr must be finite, got lr=inf"),
                            (dict(momentum=math.nan), "momentum must be finite, got momentum=nan"),
                            (dict(weight_decay=-math.inf), "weight_decay must be finite, got weight_decay=-inf")):
        for masks in (None, []):
            args = {**dict(params=[], grads=[], momentum_buffers=[], lr=0.1, momentum=0.9, masks=masks), **kwargs}
            with pytest.raises(ValueError, match=re.escape(S + message)):
                robustagg.ops.masked_sgd_step_(**args)


# --- Operator registration --------------------------------------------------


def _opcheck_tensors(gen, device="cpu") -> list[torch.Tensor]:
    """A small mixed list: several dtypes, transposed, 0-D and empty tensors (no NaN: opcheck
    compares with equal_nan=False)."""
    shapes = [((3, 4), torch.float32), ((5,), torch.float64), ((6, 4), torch.float32), ((2, 3), torch.bfloat16),
              ((), torch.float16), ((0, 3), torch.float32)]
    xs = [_randn(s, gen, dt).to(device) for s, dt in shapes]
    xs[2] = xs[2].t()
    return xs


def _opcheck_wga_args(n: int, corrected: bool, device="cpu") -> tuple:
    gen = torch.Generator().manual_seed(5 + n)
    params = _opcheck_tensors(gen, device)
    params[0][0, 0] = math.inf
    grads = [t for _ in range(n + 1) for t in _opcheck_tensors(gen, device)]
    corr = [t for _ in range(n) for t in _opcheck_tensors(gen, device)] if corrected else None
    return (params, grads, corr, [0.5 + 0.1 * i for i in range(n + 1)], 0.1, 0.3)


def _opcheck_sgd_args(kind: str | None, device="cpu") -> tuple:
    gen = torch.Generator().manual_seed(6)
    params, grads, moms = (_opcheck_tensors(gen, device) for _ in range(3))
    params[0][0, 0] = math.inf
    masks = None
    if kind is not None:
        bools = [(torch.rand(p.shape, generator=gen) < 0.5).to(device) for p in params]
        masks = bools if kind == "bool" else [robustagg.ops.pack_mask(b) for b in bools]
    return (params, grads, moms, masks, 0.1, 0.9, 0.01)


OPCHECK_CASES = {"weighted N=0": ("weighted_step_", lambda d: _opcheck_wga_args(0, False, d)),
                 "weighted N=2": ("weighted_step_", lambda d: _opcheck_wga_args(2, False, d)),
                 "weighted N=2 corrections": ("weighted_step_", lambda d: _opcheck_wga_args(2, True, d)),
                 "masked no masks": ("masked_sgd_step_", lambda d: _opcheck_sgd_args(None, d)),
                 "masked bool": ("masked_sgd_step_", lambda d: _opcheck_sgd_args("bool", d)),
                 "masked packed": ("masked_sgd_step_", lambda d: _opcheck_sgd_args("packed", d))}


@pytest.mark.parametrize("case", list(OPCHECK_CASES), ids=str)
def test_opcheck(case):
    """schema (only params / corrections / momentum mutated), fake tensor, autograd registration,
    AOT dispatch."""
    op, make = OPCHECK_CASES[case]
    result = torch.library.opcheck(getattr(torch.ops.robustagg, op).default, make("cpu"))
    assert all(v == "SUCCESS" for v in result.values()), result


# ===========================================================================
# CUDA: bit-for-bit parity with the CPU kernels


def _to_device(x: torch.Tensor, device) -> torch.Tensor:
    """A copy on device with x's strides (x dense: contiguous or a permutation)."""
    return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=device).copy_(x)


def _dtype_of(dtype):
    return (lambda i: DTYPES[i % len(DTYPES)]) if dtype == "mixed" else (lambda i: dtype)


def _wga_cuda_shapes() -> list[tuple]:
    """40 tensors: sizes around the 8192-element table chunks (one of several chunks), 0-D,
    empty, and a transposed one last (made by the caller)."""
    sizes = [7, TABLE_CHUNK - 1, TABLE_CHUNK, TABLE_CHUNK + 1, 4 * TABLE_CHUNK + 5, 0, 2 * TABLE_CHUNK + 3]
    sizes += [1 + (37 * k) % 700 for k in range(40 - len(sizes) - 2)]
    return [(n,) for n in sizes] + [(), (70, 30)]


def _wga_cuda_lists(dtype_of, n: int, gen):
    shapes = _wga_cuda_shapes()

    def one_list():
        xs = [_randn(s, gen, dtype_of(i)) for i, s in enumerate(shapes)]
        xs[-1] = xs[-1].t()
        return xs

    params = one_list()
    grads = [one_list() for _ in range(n + 1)]
    corr = [one_list() for _ in range(n)]
    params[1][5] = math.nan
    grads[-1][2][7] = math.inf
    if n:
        corr[0][3][TABLE_CHUNK] = -math.inf
    return params, grads, corr


def check_wga_parity(n: int, dtype, device: str = "cuda") -> None:
    """The op on device (inputs with the CPU tensors' strides) equals the CPU op bit for bit;
    the CPU result equals the expression; grads unchanged, written views keep their layout."""
    gen = torch.Generator().manual_seed(3 + n)
    params, grads, corr = _wga_cuda_lists(_dtype_of(dtype), n, gen)
    weights = [0.9 - 0.05 * i for i in range(n + 1)]
    for corrected, lr, beta in ((True, 0.1, 0.3), (False, 0.5, 0.7), (True, 1.0, 1.0)):
        cs = corr if corrected else None
        cpu_p = [p.clone() for p in params]
        cpu_c = None if cs is None else [[c.clone() for c in cl] for cl in cs]
        wga(cpu_p, grads, weights, lr, cpu_c, beta)
        dev_p = [_to_device(p, device) for p in params]
        dev_g = [[_to_device(g, device) for g in gl] for gl in grads]
        dev_c = None if cs is None else [[_to_device(c, device) for c in cl] for cl in cs]
        layout = [(x.data_ptr(), x.stride()) for x in dev_p + [c for cl in (dev_c or []) for c in cl]]
        wga(dev_p, dev_g, weights, lr, dev_c, beta)
        if device != "cpu":
            torch.cuda.synchronize()
        assert [(x.data_ptr(), x.stride()) for x in dev_p + [c for cl in (dev_c or []) for c in cl]] == layout
        for j in range(len(params)):
            what = f"N={n}, param {j} ({params[j].dtype}, numel {params[j].numel()}), corrected {corrected}"
            assert_same_bits(dev_p[j].cpu(), cpu_p[j], f"CUDA vs CPU: {what}: params")
            for i in range(n if corrected else 0):
                assert_same_bits(dev_c[i][j].cpu(), cpu_c[i][j], f"CUDA vs CPU: {what}: corrections[{i}]")
            for u in range(n + 1):
                assert_identical(dev_g[u][j].cpu(), grads[u][j], f"CUDA: {what}: grads[{u}] changed")
            want_p, want_c = wga_expr(params[j], [gl[j] for gl in grads], weights, lr,
                                      None if cs is None else [cl[j] for cl in cs], beta)
            assert_same_bits(cpu_p[j], want_p, f"CPU vs expression: {what}")
            for i in range(n if corrected else 0):
                assert_same_bits(cpu_c[i][j], want_c[i], f"CPU vs expression: {what}: corrections[{i}]")


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES + ["mixed"], ids=str)
@pytest.mark.parametrize("n", [0, 1, 8, 33])
def test_wga_cuda_matches_cpu_bitwise(n, dtype):
    check_wga_parity(n, dtype)


def _sgd_cuda_lists(dtype_of, gen):
    """50 tensors per list (more than 36 per launch), one of 321 chunks + 5 elements (more than
    one launch of 320 chunks) after a few others, 0-D, empty, chunk-boundary sizes, NaN/inf,
    and a transposed tensor last."""
    sizes = [7, CHUNK - 1, CHUNK, CHUNK + 1, (MAX_BLOCKS + 1) * CHUNK + 5, 0, 2 * CHUNK + 3]
    sizes += [1 + (37 * k) % 1500 for k in range(50 - len(sizes) - 2)]
    shapes = [(s,) for s in sizes] + [(), (70, 300)]

    def one_list():
        xs = [_randn(s, gen, dtype_of(i)) for i, s in enumerate(shapes)]
        xs[-1] = xs[-1].t()
        return xs

    ps, ms, gs = one_list(), one_list(), one_list()
    ps[1][5] = math.nan
    gs[2][7] = math.inf
    bools = [torch.rand(s, generator=gen) < 0.5 for s in shapes]
    bools[-1] = bools[-1].t()
    return ps, ms, gs, bools


def check_sgd_parity(dtype, device: str = "cuda") -> None:
    """As check_wga_parity, for every mask kind, with and without weight decay; inactive
    elements keep every bit on the device too."""
    gen = torch.Generator().manual_seed(4)
    ps, ms, gs, bools = _sgd_cuda_lists(_dtype_of(dtype), gen)
    assert len(ps) == 50 > MAX_TENSORS and max(p.numel() for p in ps) > MAX_BLOCKS * CHUNK
    for kind, wd in ((None, 0.0), ("bool", 1e-2), ("packed", 0.0), ("packed", 1e-2)):
        masks = None if kind is None else bools if kind == "bool" else [robustagg.ops.pack_mask(b) for b in bools]
        cpu_p, cpu_m = [p.clone() for p in ps], [m.clone() for m in ms]
        sgd(cpu_p, gs, cpu_m, 0.05, 0.9, masks, wd)
        dev_p, dev_m = [_to_device(p, device) for p in ps], [_to_device(m, device) for m in ms]
        dev_g = [_to_device(g, device) for g in gs]
        dev_masks = None if masks is None else [_to_device(x, device) for x in masks]
        layout = [(x.data_ptr(), x.stride()) for x in dev_p + dev_m]
        sgd(dev_p, dev_g, dev_m, 0.05, 0.9, dev_masks, wd)
        if device != "cpu":
            torch.cuda.synchronize()
        assert [(x.data_ptr(), x.stride()) for x in dev_p + dev_m] == layout
        for j in range(len(ps)):
            what = f"param {j} ({ps[j].dtype}, numel {ps[j].numel()}), masks {kind}, wd={wd}"
            assert_same_bits(dev_p[j].cpu(), cpu_p[j], f"CUDA vs CPU: {what}: params")
            assert_same_bits(dev_m[j].cpu(), cpu_m[j], f"CUDA vs CPU: {what}: momentum")
            assert_identical(dev_g[j].cpu(), gs[j], f"CUDA: {what}: grads changed")
            mask = None if kind is None else bools[j]
            if mask is not None:
                assert_identical(dev_p[j].cpu()[~mask], ps[j][~mask], f"CUDA: {what}: inactive params")
                assert_identical(dev_m[j].cpu()[~mask], ms[j][~mask], f"CUDA: {what}: inactive momentum")
            want_p, want_m = sgd_expr(ps[j], ms[j], gs[j], 0.05, 0.9, wd, mask)
            assert_same_bits(cpu_p[j], want_p, f"CPU vs expression: {what}: params")
            assert_same_bits(cpu_m[j], want_m, f"CPU vs expression: {what}: momentum")


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES + ["mixed"], ids=str)
def test_sgd_cuda_matches_cpu_bitwise(dtype):
    check_sgd_parity(dtype)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("case", list(OPCHECK_CASES), ids=str)
def test_cuda_opcheck(case):
    op, make = OPCHECK_CASES[case]
    result = torch.library.opcheck(getattr(torch.ops.robustagg, op).default, make("cuda"))
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.cuda
@requires_cuda
def test_cuda_device_errors():
    one_device = "all tensors must be on one device"

    def c(*shape):
        return torch.ones(shape, device="cuda")

    # weighted_step_: a second param, a collaborator's gradient, a correction on the CPU.
    cases = [([c(3), _f(2)], [[c(3), _f(2)], [c(3), _f(2)]], [[c(3), _f(2)]]),
             ([c(3)], [[c(3)], [_f(3)]], [[c(3)]]),
             ([c(3)], [[c(3)], [c(3)]], [[_f(3)]])]
    for params, grads, corr in cases:
        with pytest.raises(ValueError, match=re.escape(W + one_device)):
            wga(params, grads, [0.5, 0.5], 0.1, corrections=corr, beta=0.5)
    with pytest.raises(ValueError, match=re.escape(W + "beta must be in [0, 1], got beta=2")):
        wga([c(3)], [[c(3)]], [1.0], 0.1, beta=2.0)
    # masked_sgd_step_: grads, momentum, a mask on the CPU.
    for params, grads, moms in (([c(3)], [_f(3)], [c(3)]), ([c(3)], [c(3)], [_f(3)]),
                                ([c(3), _f(2)], [c(3), _f(2)], [c(3), _f(2)])):
        with pytest.raises(ValueError, match=re.escape(S + one_device)):
            sgd(params, grads, moms, 0.1, 0.9)
    for masks in ([torch.ones(3, dtype=torch.bool), torch.ones(2, dtype=torch.bool, device="cuda")],
                  [torch.ones(1, dtype=torch.uint8, device="cuda"), torch.ones(1, dtype=torch.uint8)]):
        k = 0 if masks[0].device.type == "cpu" else 1
        with pytest.raises(ValueError, match=re.escape(f"{S}masks[{k}] is on cpu but params[{k}] on cuda:0")):
            sgd([c(3), c(2)], [c(3), c(2)], [c(3), c(2)], 0.1, 0.9, masks)
