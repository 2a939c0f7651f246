"""Fused weighted-averaging step (SPEC 6.3): ``robustagg.ops.weighted_step_``.

``weighted_step_(params, grads, weights, lr, *, corrections=None, beta=0.0)``:
``grads`` holds N + 1 gradient lists (user 0 is the one trained, 1..N its
collaborators), ``corrections`` N lists. Per element, in Acc (float32 for
float32/float16/bfloat16, float64 for float64), every scalar rounded from
double to Acc, every operation rounded once (no FMA):

    u = a0 g0;  for i = 1..N:  u = u + ai gi;  u = u + ci  (the old ci)
                               ci <- keep ci + take (ai (g0 - gi)),  keep = 1 - beta, take = beta
    p <- p - lr u

That is bit for bit the step-by-step PyTorch expression ``fused_cases.wga_expr``, and within
the rounding of the dtype the float64 oracle ``reference.weighted_step``. The CPU kernel cuts
tensors into pieces and works through a piece in blocks; the CUDA kernel reads a device address
table of chunks. Tests parametrised by device run the same body on the CPU and CUDA kernels.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import robustagg.ops
from robustagg import reference

import fused_cases as fc
from conftest import DEVICES, DTYPES, assert_identical, assert_same_bits

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")
W = "weighted_step_: "


def assert_wga_close_to_oracle(p_new, c_new, p, gs, cs, weights, lr, beta, what=""):
    """The kernel's results within the first-order rounding bound of the Acc computation of the
    float64 oracle, doubled, plus the final rounding to the dtype. With u = eps(Acc) / 2 and
    S = |a0 g0| + sum_i (|ai gi| + |ci|): u accumulates <= (2N + 2) u S (each coefficient,
    product and sum), the step adds 3 u (|p| + |lr| S); a new correction errs by
    <= 3 u |keep c| + 6 u |beta ai| (|g0| + |gi|); subnormal steps sa per operation, and sa
    times the other factor where a coefficient (lr, a weight, beta) rounds to a subnormal or 0."""
    u, sa, big, et, st_, tmax = fc.tolerance_units(p.dtype)
    n = len(gs) - 1
    want_p, want_c = reference.weighted_step(
        [p], [[g] for g in gs], weights, lr, corrections=None if cs is None else [[c] for c in cs], beta=beta
    )
    want_p = want_p[0]
    g64 = [g.to(torch.float64) for g in gs]
    c64 = [] if cs is None else [c.to(torch.float64) for c in cs]
    p64, L = p.to(torch.float64), abs(lr)
    terms = [abs(w) * g.abs() for w, g in zip(weights, g64)] + [c.abs() for c in c64]
    S = sum(terms)
    G = sum(g.abs() for g in g64) + sum((c.abs() for c in c64), torch.zeros_like(p64))
    err = (2 * n + 2) * u * L * S + 3 * u * (p64.abs() + L * S) + sa * S + (3 * n + 3) * sa * (L * G + L + 1)
    tol = 2 * err + et * want_p.abs() + st_
    skip = fc.skip_mask(big, tmax, want_p, [p64, *g64, *c64], [S, L * S, *terms, *(L * t for t in terms)])
    fc.check_tolerance(p_new, want_p, tol, skip, f"{what}: params vs oracle")
    if cs is None:
        return
    keep = abs(1.0 - beta)
    for i in range(1, n + 1):
        want = want_c[i - 1][0]
        c, d = c64[i - 1], g64[0].abs() + g64[i].abs()
        err = 3 * u * keep * c.abs() + 6 * u * abs(beta * weights[i]) * d + 6 * sa * (1 + c.abs() + d)
        tol = 2 * err + et * want.abs() + st_
        skip = fc.skip_mask(big, tmax, want, [c, g64[0], g64[i]], [keep * c, abs(weights[i]) * d])
        fc.check_tolerance(c_new[i - 1], want, tol, skip, f"{what}: corrections[{i - 1}] vs oracle")


weights_st = st.one_of(st.sampled_from([1.0, 0.5, 0.0, -0.25, 1 / 3, 0.1]), st.floats(-2.0, 2.0))
betas = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 0.9, 0.1]), st.floats(0.0, 1.0))


def wga(params, grads, weights, lr, corrections=None, beta=0.0):
    robustagg.ops.weighted_step_(params, grads, weights, lr, corrections=corrections, beta=beta)


def check_wga(specs: list[fc.ParamSpec], n: int, weights, lr, beta, corrected: bool, device: str = "cpu"):
    """Builds params, N + 1 gradient lists and (corrected) N correction lists from specs, runs the
    op on device and compares every written tensor with wga_expr (bits) and the oracle; grads
    unchanged."""
    ps = [s.tensor(0) for s in specs]
    gs = [[s.tensor(1 + u) for s in specs] for u in range(n + 1)]
    cs = [[s.tensor(2 + n + i) for s in specs] for i in range(n)] if corrected else None
    params = [fc.to_device(p, device) for p in ps]
    grads = [[fc.to_device(g, device) for g in gl] for gl in gs]
    corr = None if cs is None else [[fc.to_device(c, device) for c in cl] for cl in cs]
    ptrs = [p.data_ptr() for p in params]
    wga(params, grads, weights, lr, corr, beta)
    for j, spec in enumerate(specs):
        what = f"{device}: param {j} of {len(specs)}: {spec}, N={n}, weights={weights}, lr={lr!r}, beta={beta!r}"
        assert params[j].data_ptr() == ptrs[j], f"{what}: not updated in place"
        g_j = [gl[j] for gl in gs]
        c_j = None if cs is None else [cl[j] for cl in cs]
        want_p, want_c = fc.wga_expr(ps[j], g_j, weights, lr, c_j, beta)
        assert_same_bits(params[j], want_p, f"{what}: params")
        for i in range(n if corrected else 0):
            assert_same_bits(corr[i][j], want_c[i], f"{what}: corrections[{i}]")
        for u in range(n + 1):
            assert_identical(grads[u][j], gs[u][j], f"{what}: grads[{u}] changed")
        assert_wga_close_to_oracle(
            params[j].cpu(),
            None if cs is None else [cl[j].cpu() for cl in corr],
            ps[j],
            g_j,
            c_j,
            weights,
            lr,
            beta,
            what,
        )


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=200, **fc.SETTINGS)
@given(data=st.data(), dtype=st.sampled_from(DTYPES), corrected=st.booleans())
def test_random_lists_one_dtype(device, data, dtype, corrected):
    n = data.draw(st.integers(0, 9), label="N")
    specs = data.draw(fc.param_lists([dtype], most=2 * fc.PIECE + 300 if n < 4 else fc.PIECE + 300), label="specs")
    weights = data.draw(st.lists(weights_st, min_size=n + 1, max_size=n + 1), label="weights")
    check_wga(specs, n, weights, data.draw(fc.lrs, label="lr"), data.draw(betas, label="beta"), corrected, device)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=200, **fc.SETTINGS)
@given(data=st.data(), corrected=st.booleans())
def test_random_lists_mixed_dtypes(device, data, corrected):
    n = data.draw(st.integers(0, 9), label="N")
    specs = data.draw(fc.param_lists(DTYPES, most=2 * fc.PIECE + 300 if n < 4 else fc.PIECE + 300), label="specs")
    weights = data.draw(st.lists(weights_st, min_size=n + 1, max_size=n + 1), label="weights")
    check_wga(specs, n, weights, data.draw(fc.lrs, label="lr"), data.draw(betas, label="beta"), corrected, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_block_and_piece_boundaries(device, dtype):
    """Every element of tensors at and around block and piece boundaries, N = 0, 1, 3."""
    sizes = [1, fc.BLOCK - 1, fc.BLOCK, fc.BLOCK + 1, fc.PIECE - 1, fc.PIECE, fc.PIECE + 1, 2 * fc.PIECE + fc.BLOCK + 7]
    specs = [fc.ParamSpec((s,), dtype, s, ("gaussian", "gaussian", "magnitudes"), 0.0) for s in sizes]
    for n, weights in ((0, [0.75]), (1, [0.5, 0.25]), (3, [0.4, 0.3, -0.2, 0.1])):
        for corrected in (False, True):
            check_wga(specs, n, weights, 0.125, 0.3, corrected, device)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_single_user_weight_one_is_sgd(dtype):
    """N = 0, a0 = 1: 1 * g is g, so the step is fl(p - fl(lr g)) in Acc; for float32 and
    float64 that is p - lr * g in the dtype itself."""
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(3 * fc.PIECE + 17, generator=gen, dtype=torch.float64).to(dtype)
    g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
    for lr in (0.1, 1e-3, 1.0, 0.0):
        got = p.clone()
        wga([got], [[g]], [1.0], lr)
        A = fc.acc_dtype(dtype)
        want = (p.to(A) - g.to(A) * fc.acc_scalar(lr, dtype)).to(dtype)
        if dtype in (torch.float32, torch.float64):
            assert_same_bits(want, p - lr * g, "expression in the dtype itself")
        assert_same_bits(got, want, f"lr={lr}")
        got_c = p.clone()
        wga([got_c], [[g]], [1.0], lr, corrections=[], beta=0.7)  # no collaborator: nothing to correct
        assert_same_bits(got_c, want, f"lr={lr}, empty corrections")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_each_weight_weighs_its_own_user(dtype):
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
def test_plain_ignores_beta(dtype):
    """Without corrections beta has no term: any beta gives the bits of beta = 0."""
    specs = [
        fc.ParamSpec((fc.PIECE + 99,), dtype, 3, ("gaussian",), 0.01),
        fc.ParamSpec((7, 5), dtype, 4, ("mixed",), 0.1),
    ]
    n, weights = 2, [0.5, 0.3, 0.2]
    ps = [s.tensor(0) for s in specs]
    gs = [[s.tensor(1 + u) for s in specs] for u in range(n + 1)]
    base = [p.clone() for p in ps]
    wga(base, gs, weights, 0.1, beta=0.0)
    for j in range(len(specs)):
        assert_same_bits(base[j], fc.wga_expr(ps[j], [gl[j] for gl in gs], weights, 0.1)[0], f"param {j}")
    for beta in (0.3, 1.0, 0.999):
        got = [p.clone() for p in ps]
        wga(got, gs, weights, 0.1, beta=beta)
        for j in range(len(specs)):
            assert_identical(got[j], base[j], f"beta={beta}, param {j}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_correction_applies_from_the_next_step(dtype):
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


def test_weights_as_a_tensor_or_ints():
    gen = torch.Generator().manual_seed(2)
    p = torch.randn(40, generator=gen)
    gs = [[torch.randn(40, generator=gen)] for _ in range(3)]
    for w, other in (
        ([0.2, 0.5, 0.3], torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)),
        ([2.0, 0.0, -1.0], [2, 0, -1]),
        ([1.0, 1.0, 1.0], (1, 1.0, torch.tensor(1.0).item())),
    ):
        a, b = p.clone(), p.clone()
        wga([a], gs, w, 0.1)
        wga([b], gs, other, 0.1)
        assert_identical(a, b, f"weights {w} given as {other!r}")
        assert_same_bits(a, fc.wga_expr(p, [g[0] for g in gs], w, 0.1)[0], f"weights {w}")


# --- Layouts, aliasing ------------------------------------------------------

VIEWS = fc.views(2 * fc.PIECE + 2 * fc.BLOCK + 6)  # big strided: 3 * (PIECE + BLOCK + 3) elements


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("view", list(VIEWS), ids=str)
def test_non_contiguous(view, dtype):
    """Strided params, corrections and grads (user 1 strided, user 0 and 2 contiguous and strided
    in turn): the written views keep storage and strides, their bases change exactly under the
    view, the result equals the same call on contiguous copies and the expression."""
    fn, base_shape = VIEWS[view]
    gen = torch.Generator().manual_seed(len(view))
    n, weights, lr, beta = 2, [0.5, -0.3, 0.8], 0.25, 0.4
    for strided_reads in (True, False):
        base_p = fc.randn(base_shape, gen, dtype)
        base_c = [fc.randn(base_shape, gen, dtype) for _ in range(n)]
        base_g = [fc.randn(base_shape, gen, dtype) for _ in range(n + 1)]
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
        want_p, want_c = fc.wga_expr(p0, g0, weights, lr, c0, beta)
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
def test_aliased_grads(dtype):
    """Read-only lists may alias: the same gradient list object for two users, and one tensor
    in three users' lists (one of them through a transposed view); grads stay unchanged."""
    gen = torch.Generator().manual_seed(7)
    shapes = [(2 * fc.PIECE + 11,), (40, 30), (5,)]
    ps = [fc.randn(s, gen, dtype) for s in shapes]
    shared_list = [fc.randn(s, gen, dtype) for s in shapes]
    other = [fc.randn(s, gen, dtype) for s in shapes]
    x = fc.randn((30, 40), gen, dtype)
    third = [other[0], x.t(), other[2]]
    grads = [shared_list, other, shared_list, third]
    grads_before = [[g.clone() for g in gl] for gl in grads]
    cs = [[fc.randn(s, gen, dtype) for s in shapes] for _ in range(3)]
    c0 = [[c.clone() for c in cl] for cl in cs]
    weights = [0.4, 0.3, -0.2, 0.5]
    params = [p.clone() for p in ps]
    wga(params, grads, weights, 0.5, corrections=cs, beta=0.6)
    for j in range(len(shapes)):
        want_p, want_c = fc.wga_expr(ps[j], [gl[j] for gl in grads_before], weights, 0.5, [cl[j] for cl in c0], 0.6)
        assert_same_bits(params[j], want_p, f"param {j}")
        for i in range(3):
            assert_same_bits(cs[i][j], want_c[i], f"corrections[{i}][{j}]")
    for gl, gl0 in zip(grads, grads_before):
        for g, g0 in zip(gl, gl0):
            assert_identical(g, g0, "grads changed")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_inf_follow_the_formula(dtype):
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
        want_p, want_c = fc.wga_expr(p0, gs, weights, 1.0, [c0], beta)
        assert_same_bits(p, want_p, case)
        assert_same_bits(c, want_c[0], case)


# --- Threads, argument checks ------------------------------------------------


def test_thread_count_does_not_change_results():
    gen = torch.Generator().manual_seed(11)
    sizes = [5 * fc.PIECE + 3, 17, 0, 2 * fc.PIECE, fc.PIECE + 1, 3, 4 * fc.PIECE - 1, 1000]
    dtypes = [DTYPES[i % len(DTYPES)] for i in range(len(sizes))]
    ps = [fc.randn(n, gen, dt) for n, dt in zip(sizes, dtypes)]
    gs = [[fc.randn(n, gen, dt) for n, dt in zip(sizes, dtypes)] for _ in range(3)]
    cs = [[fc.randn(n, gen, dt) for n, dt in zip(sizes, dtypes)] for _ in range(2)]

    def run():
        p, c = [x.clone() for x in ps], [[x.clone() for x in cl] for cl in cs]
        wga(p, gs, [0.5, 0.3, 0.2], 0.1, corrections=c, beta=0.25)
        return p, c

    def check(result, threads):
        p, c = result
        for j in range(len(sizes)):
            want_p, want_c = fc.wga_expr(ps[j], [gl[j] for gl in gs], [0.5, 0.3, 0.2], 0.1, [cl[j] for cl in cs], 0.25)
            what = f"tensor {j}, {threads} threads"
            assert_same_bits(p[j], want_p, f"{what}: params")
            for i in range(2):
                assert_same_bits(c[i][j], want_c[i], f"{what}: corrections[{i}]")

    fc.check_thread_counts(run, check)


def valid() -> dict:
    """Valid wrapper arguments: two params, N = 2, corrections."""
    return dict(
        params=[fc.ones(3), fc.ones(2, 2)],
        grads=[[fc.ones(3), fc.ones(2, 2)] for _ in range(3)],
        weights=[0.5, 0.3, 0.2],
        lr=0.1,
        corrections=[[fc.ones(3), fc.ones(2, 2)] for _ in range(2)],
        beta=0.5,
    )


# id: (op, overrides of valid(), exception, message, also raised by the native op)
ERRORS = {
    # weighted_step_: lists
    "wga: grads not a list": (
        "weighted_step_",
        dict(grads=fc.ones(3), corrections=None),
        TypeError,
        W + "grads must be a non-empty list of N + 1 gradient lists, got Tensor",
        False,
    ),
    "wga: grads empty": (
        "weighted_step_",
        dict(grads=[], corrections=None),
        TypeError,
        W + "grads must be a non-empty list of N + 1 gradient lists, got list",
        False,
    ),
    "wga: weights shorter": (
        "weighted_step_",
        dict(weights=[0.5, 0.5]),
        ValueError,
        W + "weights must hold one number per gradient list (3), got [0.5, 0.5]",
        False,
    ),
    "wga: weights longer": (
        "weighted_step_",
        dict(weights=[0.5, 0.5, 0.1, 0.1]),
        ValueError,
        W + "weights must hold one number per gradient list (3)",
        False,
    ),
    "wga: weights a float": (
        "weighted_step_",
        dict(weights=1.0),
        ValueError,
        W + "weights must hold one number per gradient list (3), got 1.0",
        False,
    ),
    "wga: weight a str": (
        "weighted_step_",
        dict(weights=[0.5, "0.3", 0.2]),
        TypeError,
        W + "weights[1] must be a float, got str",
        False,
    ),
    "wga: weight a bool": (
        "weighted_step_",
        dict(weights=[0.5, 0.3, True]),
        TypeError,
        W + "weights[2] must be a float, got bool",
        False,
    ),
    "wga: corrections too many": (
        "weighted_step_",
        dict(corrections=[[fc.ones(3), fc.ones(2, 2)]] * 3),
        ValueError,
        W + "corrections must hold N = 2 lists (one per collaborator), got 3",
        False,
    ),
    "wga: corrections too few": (
        "weighted_step_",
        dict(corrections=[[fc.ones(3), fc.ones(2, 2)]]),
        ValueError,
        W + "corrections must hold N = 2 lists (one per collaborator), got 1",
        False,
    ),
    "wga: corrections a tensor": (
        "weighted_step_",
        dict(corrections=fc.ones(3)),
        TypeError,
        W + "corrections must be a list of N correction lists, got Tensor",
        False,
    ),
    "wga: grads[1] shorter": (
        "weighted_step_",
        dict(grads=[[fc.ones(3), fc.ones(2, 2)], [fc.ones(3)], [fc.ones(3), fc.ones(2, 2)]]),
        ValueError,
        W + "params and grads[1] must be equally long lists, got 2 and 1 tensors",
        False,
    ),
    "wga: corrections[1] longer": (
        "weighted_step_",
        dict(corrections=[[fc.ones(3), fc.ones(2, 2)], [fc.ones(3), fc.ones(2, 2), fc.ones(1)]]),
        ValueError,
        W + "params and corrections[1] must be equally long lists, got 2 and 3 tensors",
        False,
    ),
    "wga: grads[2] a tensor": (
        "weighted_step_",
        dict(grads=[[fc.ones(3), fc.ones(2, 2)], [fc.ones(3), fc.ones(2, 2)], fc.ones(3)]),
        TypeError,
        W + "grads[2] must be a list of tensors, got Tensor",
        False,
    ),
    "wga: grads[0] element": (
        "weighted_step_",
        dict(grads=[[fc.ones(3), 1.0], [fc.ones(3), fc.ones(2, 2)], [fc.ones(3), fc.ones(2, 2)]]),
        TypeError,
        W + "grads[0][1] must be a torch.Tensor, got float",
        False,
    ),
    "wga: lr a str": ("weighted_step_", dict(lr="0.1"), TypeError, W + "lr must be a float, got str", False),
    "wga: beta None": ("weighted_step_", dict(beta=None), TypeError, W + "beta must be a float, got NoneType", False),
    # weighted_step_: values and tensors (the native op checks these)
    "wga: weight nan": (
        "weighted_step_",
        dict(weights=[0.5, math.nan, 0.2]),
        ValueError,
        W + "weights must be finite, got weights[1]=nan",
        True,
    ),
    "wga: weight inf": (
        "weighted_step_",
        dict(weights=[0.5, 0.3, -math.inf]),
        ValueError,
        W + "weights must be finite, got weights[2]=-inf",
        True,
    ),
    "wga: lr nan": ("weighted_step_", dict(lr=math.nan), ValueError, W + "lr must be finite, got lr=nan", True),
    "wga: lr inf": ("weighted_step_", dict(lr=math.inf), ValueError, W + "lr must be finite, got lr=inf", True),
    "wga: beta > 1": ("weighted_step_", dict(beta=1.5), ValueError, W + "beta must be in [0, 1], got beta=1.5", True),
    "wga: beta < 0": ("weighted_step_", dict(beta=-0.1), ValueError, W + "beta must be in [0, 1], got beta=-0.1", True),
    "wga: beta just > 1": ("weighted_step_", dict(beta=1.0 + 2**-40), ValueError, W + "beta must be in [0, 1]", True),
    "wga: beta nan": (
        "weighted_step_",
        dict(beta=math.nan),
        ValueError,
        W + "beta must be in [0, 1], got beta=nan",
        True,
    ),
    "wga: beta checked without corrections": (
        "weighted_step_",
        dict(beta=2.0, corrections=None),
        ValueError,
        W + "beta must be in [0, 1], got beta=2",
        True,
    ),
    "wga: grads[2] shape": (
        "weighted_step_",
        dict(grads=[[fc.ones(3), fc.ones(2, 2)], [fc.ones(3), fc.ones(2, 2)], [fc.ones(3), fc.ones(4)]]),
        ValueError,
        W + "grads[2][1] must have params[1]'s shape [2, 2], got [4]",
        True,
    ),
    "wga: grads[0] dtype": (
        "weighted_step_",
        dict(
            grads=[
                [fc.ones(3, dtype=torch.float64), fc.ones(2, 2)],
                [fc.ones(3), fc.ones(2, 2)],
                [fc.ones(3), fc.ones(2, 2)],
            ]
        ),
        TypeError,
        W + "grads[0][0] must have params[0]'s dtype Float, got Double",
        True,
    ),
    "wga: corrections[1] shape": (
        "weighted_step_",
        dict(corrections=[[fc.ones(3), fc.ones(2, 2)], [fc.ones(3), fc.ones(2, 3)]]),
        ValueError,
        W + "corrections[1][1] must have params[1]'s shape [2, 2], got [2, 3]",
        True,
    ),
    "wga: corrections[0] dtype": (
        "weighted_step_",
        dict(corrections=[[fc.ones(3, dtype=torch.bfloat16), fc.ones(2, 2)], [fc.ones(3), fc.ones(2, 2)]]),
        TypeError,
        W + "corrections[0][0] must have params[0]'s dtype Float, got BFloat16",
        True,
    ),
    "wga: integer params": (
        "weighted_step_",
        dict(params=[fc.ones(3, dtype=torch.int64)], grads=[[fc.ones(3, dtype=torch.int64)]] * 3, corrections=None),
        TypeError,
        W + "params[0] must be float32, float64, float16 or bfloat16, got Long",
        True,
    ),
}


test_errors, test_errors_native_op = fc.error_table_tests(ERRORS, lambda op: valid())


NATIVE_ONLY = {  # list counts that only the native op sees (the wrapper builds them)
    "grads count": (
        ([fc.ones(3), fc.ones(2, 2)], [fc.ones(3), fc.ones(2, 2), fc.ones(3)], None, [0.5, 0.5], 0.1, 0.0),
        ValueError,
        W + "grads must hold N + 1 = 2 lists of 2 tensors, got 3 tensors",
    ),
    "grads count, one user": (
        ([fc.ones(3)], [fc.ones(3), fc.ones(3)], None, [1.0], 0.1, 0.0),
        ValueError,
        W + "grads must hold N + 1 = 1 lists of 1 tensors, got 2 tensors",
    ),
    "no weights": (
        ([fc.ones(3)], [], None, [], 0.1, 0.0),
        ValueError,
        W + "weights must hold N + 1 >= 1 numbers, got none",
    ),
    "corrections count": (
        ([fc.ones(3)], [fc.ones(3)] * 3, [fc.ones(3)], [0.2, 0.3, 0.5], 0.1, 0.5),
        ValueError,
        W + "corrections must hold N = 2 lists of 1 tensors, got 1 tensors",
    ),
    "corrections for N = 0": (
        ([fc.ones(3)], [fc.ones(3)], [fc.ones(3)], [1.0], 0.1, 0.5),
        ValueError,
        W + "corrections must hold N = 0 lists of 1 tensors, got 1 tensors",
    ),
}


@pytest.mark.parametrize("case", list(NATIVE_ONLY), ids=str)
def test_errors_native_op_list_counts(case):
    args, exc, message = NATIVE_ONLY[case]
    with pytest.raises(exc, match=re.escape(message)):
        torch.ops.robustagg.weighted_step_(*args)


def test_empty_lists_are_a_no_op_but_scalars_are_still_checked():
    wga([], [[]], [1.0], 0.1)
    wga([], [[], [], []], [0.2, 0.3, 0.5], 0.1, corrections=[[], []], beta=0.5)
    for kwargs, message in (
        (dict(lr=math.nan), "lr must be finite, got lr=nan"),
        (dict(beta=1.5), "beta must be in [0, 1], got beta=1.5"),
        (dict(weights=[0.5, math.inf]), "weights must be finite, got weights[1]=inf"),
    ):
        args = {**dict(params=[], grads=[[], []], weights=[0.5, 0.5], lr=0.1, corrections=[[]], beta=0.5), **kwargs}
        with pytest.raises(ValueError, match=re.escape(W + message)):
            robustagg.ops.weighted_step_(**args)
    with pytest.raises(ValueError, match=re.escape(W + "weights must hold one number per gradient list (2)")):
        wga([], [[], []], [1.0], 0.1)


def test_weights_as_numpy_array():
    p, g = [torch.ones(3)], [[torch.full((3,), 2.0)], [torch.full((3,), 4.0)]]
    robustagg.ops.weighted_step_(p, g, np.array([0.25, 0.75]), 0.5)
    assert torch.equal(p[0], torch.full((3,), 1.0 - 0.5 * (0.25 * 2.0 + 0.75 * 4.0)))


@pytest.mark.cuda
def test_tensors_on_two_devices_are_refused():
    """A second param, a collaborator's gradient, a correction on the CPU; beta still checked."""

    def c(*shape):
        return torch.ones(shape, device="cuda")

    cases = [
        ([c(3), fc.ones(2)], [[c(3), fc.ones(2)], [c(3), fc.ones(2)]], [[c(3), fc.ones(2)]]),
        ([c(3)], [[c(3)], [fc.ones(3)]], [[c(3)]]),
        ([c(3)], [[c(3)], [c(3)]], [[fc.ones(3)]]),
    ]
    for params, grads, corr in cases:
        with pytest.raises(ValueError, match=re.escape(W + "all tensors must be on one device")):
            wga(params, grads, [0.5, 0.5], 0.1, corrections=corr, beta=0.5)
    with pytest.raises(ValueError, match=re.escape(W + "beta must be in [0, 1], got beta=2")):
        wga([c(3)], [[c(3)]], [1.0], 0.1, beta=2.0)


# --- Operator registration --------------------------------------------------


def _opcheck_args(n: int, corrected: bool, device: str) -> tuple:
    """opcheck_tensors lists (on CUDA with a tensor of more than a table chunk) for params, N + 1
    users and N corrections."""
    gen = torch.Generator().manual_seed(5 + n)
    big = fc.TABLE_CHUNK + 3 if device == "cuda" else None
    params = fc.opcheck_tensors(gen, device, big)
    params[0][0, 0] = math.inf
    grads = [t for _ in range(n + 1) for t in fc.opcheck_tensors(gen, device, big)]
    corr = [t for _ in range(n) for t in fc.opcheck_tensors(gen, device, big)] if corrected else None
    return (params, grads, corr, [0.5 + 0.1 * i for i in range(n + 1)], 0.1, 0.3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,corrected", [(0, False), (2, False), (2, True)], ids=["N=0", "N=2", "N=2 corrections"])
def test_opcheck(device, n, corrected):
    """schema (only params and corrections mutated), fake tensor, autograd registration, AOT dispatch."""
    fc.assert_opcheck("weighted_step_", _opcheck_args(n, corrected, device))


# --- Long lists: CUDA address-table chunks, CPU blocks and pieces --------------


def _long_lists(device: str, of, n: int, gen):
    """40 tensors per list: sizes around table chunks (CUDA; one of several chunks) or blocks and
    pieces (CPU), 0-D, empty, and a transposed one last; params, N + 1 gradient lists, N
    correction lists, with NaN/inf entries."""
    if device == "cuda":
        sizes = fc.launch_sizes(fc.TABLE_CHUNK, 4 * fc.TABLE_CHUNK + 5, 40, small=700)
    else:
        sizes = fc.launch_sizes(fc.BLOCK, 2 * fc.PIECE + 5, 40, small=700)
    shapes = [(s,) for s in sizes] + [(), (70, 30)]

    def one_list():
        xs = [fc.randn(s, gen, of(i)) for i, s in enumerate(shapes)]
        xs[-1] = xs[-1].t()
        return xs

    params = one_list()
    grads = [one_list() for _ in range(n + 1)]
    corr = [one_list() for _ in range(n)]
    params[1][5] = math.nan
    grads[-1][2][7] = math.inf
    if n:
        corr[0][3][-1] = -math.inf  # the last element of a chunk or block and one more
    return params, grads, corr


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + ["mixed"], ids=str)
@pytest.mark.parametrize("n", [0, 1, 8, 33])
def test_long_lists_match_the_cpu_kernel_bitwise(device, n, dtype):
    """The op on device (inputs with the CPU tensors' strides) equals the CPU kernel bit for bit;
    the CPU result equals the expression; grads unchanged, written views keep their layout."""
    gen = torch.Generator().manual_seed(3 + n)
    params, grads, corr = _long_lists(device, fc.dtype_of(dtype), n, gen)
    weights = [0.9 - 0.05 * i for i in range(n + 1)]
    for corrected, lr, beta in ((True, 0.1, 0.3), (False, 0.5, 0.7), (True, 1.0, 1.0)):
        cs = corr if corrected else None
        cpu_p = [p.clone() for p in params]
        cpu_c = None if cs is None else [[c.clone() for c in cl] for cl in cs]
        wga(cpu_p, grads, weights, lr, cpu_c, beta)
        dev_p = [fc.to_device(p, device) for p in params]
        dev_g = [[fc.to_device(g, device) for g in gl] for gl in grads]
        dev_c = None if cs is None else [[fc.to_device(c, device) for c in cl] for cl in cs]
        layout = [(x.data_ptr(), x.stride()) for x in dev_p + [c for cl in (dev_c or []) for c in cl]]
        wga(dev_p, dev_g, weights, lr, dev_c, beta)
        fc.synchronize(device)
        assert [(x.data_ptr(), x.stride()) for x in dev_p + [c for cl in (dev_c or []) for c in cl]] == layout
        for j in range(len(params)):
            what = f"N={n}, param {j} ({params[j].dtype}, numel {params[j].numel()}), corrected {corrected}"
            assert_same_bits(dev_p[j], cpu_p[j], f"{device} vs CPU: {what}: params")
            for i in range(n if corrected else 0):
                assert_same_bits(dev_c[i][j], cpu_c[i][j], f"{device} vs CPU: {what}: corrections[{i}]")
            for u in range(n + 1):
                assert_identical(dev_g[u][j], grads[u][j], f"{device}: {what}: grads[{u}] changed")
            want_p, want_c = fc.wga_expr(
                params[j], [gl[j] for gl in grads], weights, lr, None if cs is None else [cl[j] for cl in cs], beta
            )
            assert_same_bits(cpu_p[j], want_p, f"CPU vs expression: {what}")
            for i in range(n if corrected else 0):
                assert_same_bits(cpu_c[i][j], want_c[i], f"CPU vs expression: {what}: corrections[{i}]")
