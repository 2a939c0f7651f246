"""Fused momentum update (SPEC 6): ``robustagg.ops.momentum_update_``.

In place, for every i: ``buffers[i] <- beta * buffers[i] + (1 - beta) * grads[i]``, with
``keep = acc(beta)`` and ``take = acc(1.0 - beta)`` (the subtraction in double), each product
and the sum rounded once (no FMA), then one cast to the storage dtype. That is exactly what
``fused_cases.momentum_expr`` computes, so results are compared with it bit for bit (NaN
payloads aside; signed zeros included), and with the float64 oracle
``reference.momentum_update`` within the rounding of the dtype. Tests parametrised by device
run the same body on the CPU and CUDA kernels.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import robustagg.ops
from robustagg import reference

import fused_cases as fc
from conftest import DEVICES, DTYPES, assert_same_bits

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")
NAMES = ("buffers", "grads")


def update(buffers, grads, beta):
    robustagg.ops.momentum_update_(buffers, grads, beta)


def assert_close_to_oracle(got: torch.Tensor, m: torch.Tensor, g: torch.Tensor, beta: float, what: str = "") -> None:
    """got (on the CPU) within the rounding of the contract of the float64 oracle.

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
    fa, ft = torch.finfo(fc.acc_dtype(got.dtype)), torch.finfo(got.dtype)
    sub_a, sub_t = fa.tiny * fa.eps, ft.tiny * ft.eps
    scale = (beta * m64).abs() + ((1.0 - beta) * g64).abs()
    tol = 2 * fa.eps * scale + sub_a * (m64.abs() + g64.abs()) + ft.eps * want.abs() + 4 * sub_t
    nan_got, nan_want = got64.isnan(), want.isnan()
    bad = nan_got != nan_want
    bad |= want.isinf() & (got64 != want)
    fin = want.isfinite()
    bad |= fin & ~(got64.isfinite() & ((got64 - want).abs() <= tol))
    if beta > 0 and torch.tensor(beta, dtype=torch.float64).to(fc.acc_dtype(got.dtype)).item() == 0:
        bad &= m64.isfinite()
    fc.raise_if_bad(
        bad,
        got64,
        want,
        tol,
        what,
        lambda j: f"m={m64.reshape(-1)[j].item()!r} g={g64.reshape(-1)[j].item()!r} beta={beta!r}: ",
    )


# ---------------------------------------------------------------------------
# Random lists


def check_random_list(specs: list[fc.ListsSpec], beta: float, device: str = "cpu") -> None:
    pairs = [s.tensors(NAMES) for s in specs]
    buffers = [fc.to_device(p["buffers"], device) for p in pairs]
    grads = [fc.to_device(p["grads"], device) for p in pairs]
    ptrs = [b.data_ptr() for b in buffers]
    update(buffers, grads, beta)
    for i, (spec, pair) in enumerate(zip(specs, pairs)):
        m, g = pair["buffers"], pair["grads"]
        what = f"{device}: pair {i} of {len(specs)}: {spec}, beta={beta!r}"
        assert buffers[i].data_ptr() == ptrs[i], f"{what}: buffer not updated in place"
        assert_same_bits(buffers[i], fc.momentum_expr(m, g, beta), what)
        assert_close_to_oracle(buffers[i].cpu(), m, g, beta, what)
        assert_same_bits(grads[i], g, f"{what}: grads changed")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=60, **fc.SETTINGS)
@given(data=st.data(), beta=fc.unit_interval)
def test_random_lists_one_dtype(device, dtype, data, beta):
    check_random_list(data.draw(fc.lists_specs(2, [dtype])), beta, device)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=80, **fc.SETTINGS)
@given(specs=fc.lists_specs(2, DTYPES), beta=fc.unit_interval)
def test_random_lists_mixed_dtypes(device, specs, beta):
    check_random_list(specs, beta, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_piece_boundaries_and_known_betas(device, dtype):
    """Every element of tensors at and around piece boundaries, for fixed betas."""
    sizes = [1, fc.PIECE - 1, fc.PIECE, fc.PIECE + 1, 2 * fc.PIECE, 2 * fc.PIECE + 1, 3 * fc.PIECE + 5]
    for beta in (0.0, 1.0, 0.9, 0.25, 1 / 3):
        specs = [fc.ListsSpec((n,), dtype, n, ("gaussian", "magnitudes"), 0.0) for n in sizes]
        check_random_list(specs, beta, device)


@pytest.mark.parametrize("device", DEVICES)
def test_beta_is_on_the_buffer(device):
    """beta weighs the buffer and 1 - beta the gradient, not the other way round."""
    for dtype in DTYPES:
        m = torch.full((3,), 8.0, dtype=dtype, device=device)
        g = torch.full((3,), 4.0, dtype=dtype, device=device)
        update([m], [g], 0.75)
        assert m.tolist() == [7.0, 7.0, 7.0], dtype  # 0.75 * 8 + 0.25 * 4


# ---------------------------------------------------------------------------
# Layouts, in-place semantics, aliasing

VIEWS = fc.views(4 * fc.PIECE + 6)  # big strided: 3 * (2 * PIECE + 3) elements


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("view", list(VIEWS), ids=str)
def test_non_contiguous(device, dtype, view):
    fn, base_shape = VIEWS[view]
    gen = torch.Generator().manual_seed(len(view))
    base_m = fc.randn(base_shape, gen, dtype).to(device)
    base_g = fc.randn(base_shape, gen, dtype).to(device)
    before_m, before_g = base_m.clone(), base_g.clone()
    m, g_strided = fn(base_m), fn(base_g)
    g_contig = fc.randn(m.shape, gen, dtype).to(device)
    ptr, stride = m.data_ptr(), m.stride()
    assert not m.is_contiguous()
    # A strided buffer with a strided grad, and a contiguous buffer with a strided grad.
    plain = fc.randn(m.shape, gen, dtype).to(device)
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
    assert_same_bits(m, fc.momentum_expr(m0.cpu(), fn(before_g).cpu(), 0.8), f"{view} buffer vs expression")
    # The base tensor changed exactly where the view is: the gaps are untouched.
    expected_base = before_m.clone()
    fn(expected_base).copy_(contig[0])
    assert_same_bits(base_m, expected_base, f"{view}: base of the buffer")
    assert_same_bits(base_g, before_g, f"{view}: grads changed")
    # Strided buffer with a contiguous grad.
    m1 = m.clone()
    update([m], [g_contig], 0.3)
    assert_same_bits(m, fc.momentum_expr(m1.cpu(), g_contig.cpu(), 0.3), f"{view} buffer, contiguous grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_grads_unchanged_and_aliasing(device, dtype):
    gen = torch.Generator().manual_seed(7)
    x = fc.randn(3 * fc.PIECE + 11, gen, dtype)
    y = fc.randn((40, 30), gen, dtype)
    other_m = fc.randn(5, gen, dtype)
    other_g = fc.randn(5, gen, dtype)
    x0, y0, om0, og0 = x.clone(), y.clone(), other_m.clone(), other_g.clone()
    x, y, other_m, other_g = (t.to(device) for t in (x, y, other_m, other_g))
    beta = 0.37
    # The same tensor as buffer and grad of one pair (contiguous, and a transposed view).
    update([x, other_m, y.t()], [x, other_g, y.t()], beta)
    assert_same_bits(x, fc.momentum_expr(x0, x0, beta), "aliased contiguous pair")
    assert_same_bits(y, fc.momentum_expr(y0, y0, beta), "aliased transposed pair")
    assert_same_bits(other_m, fc.momentum_expr(om0, og0, beta), "pair next to aliased ones")
    assert_same_bits(other_g, og0, "grads changed")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_inf_follow_the_formula(device, dtype):
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
        m0 = torch.tensor([mv, 1.0], dtype=dtype)
        g = torch.tensor([gv, 1.0], dtype=dtype)
        m = fc.to_device(m0, device)
        update([m], [fc.to_device(g, device)], beta)
        got = m[0].item()
        assert (math.isnan(got) and math.isnan(ev)) or got == ev, f"beta={beta} m={mv} g={gv}: got {got}, want {ev}"
        assert m[1].item() == 1.0
        assert_same_bits(m, fc.momentum_expr(m0, g, beta), f"beta={beta} m={mv} g={gv}")


def test_thread_count_does_not_change_results():
    gen = torch.Generator().manual_seed(11)
    sizes = [5 * fc.PIECE + 3, 17, 0, 2 * fc.PIECE, fc.PIECE + 1, 3, 4 * fc.PIECE - 1, 1000, 7 * fc.PIECE]
    dtypes = [DTYPES[i % len(DTYPES)] for i in range(len(sizes))]
    ms = [fc.randn(n, gen, dt) for n, dt in zip(sizes, dtypes)]
    gs = [fc.randn(n, gen, dt) for n, dt in zip(sizes, dtypes)]

    def run():
        buffers = [m.clone() for m in ms]
        update(buffers, gs, 0.9)
        return buffers

    def check(buffers, threads):
        for i, (m, g) in enumerate(zip(ms, gs)):
            assert_same_bits(buffers[i], fc.momentum_expr(m, g, 0.9), f"pair {i}, {threads} threads")

    fc.check_thread_counts(run, check)


# ---------------------------------------------------------------------------
# Long lists: CUDA launches (chunks of many tensors, a tensor whose chunks span launches), CPU pieces


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + ["mixed"], ids=str)
def test_long_lists_match_the_cpu_kernel_bitwise(device, dtype):
    """50 pairs: on CUDA more than MAX_TENSORS per launch and one of MAX_BLOCKS chunks + 5 elements
    (its chunks span launches) after a few others, on the CPU around and across pieces; 0-D,
    empty, and a transposed buffer; NaN/inf entries. The op on device (inputs with the CPU
    tensors' strides) equals the CPU kernel bit for bit, and the CPU kernel the expression."""
    if device == "cuda":
        sizes = fc.launch_sizes(fc.CHUNK, fc.MAX_BLOCKS * fc.CHUNK + 5, 50)
    else:
        sizes = fc.launch_sizes(fc.PIECE, 3 * fc.PIECE + 5, 50)
    of = fc.dtype_of(dtype)
    gen = torch.Generator().manual_seed(3)
    ms, gs = [], []
    for i, n in enumerate(sizes):
        ms.append(fc.randn(n, gen, of(i)))
        gs.append(fc.randn(n, gen, of(i)))
    ms[1][5] = math.nan
    gs[2][7] = math.inf
    ms.append(torch.tensor(2.5, dtype=of(48)))
    gs.append(torch.tensor(-1.0, dtype=of(48)))
    ms.append(fc.randn((300, 70), gen, of(49)).t())
    gs.append(fc.randn((70, 300), gen, of(49)))
    assert len(ms) == 50
    if device == "cuda":
        assert len(ms) > fc.MAX_TENSORS and sum(m.numel() for m in ms) > fc.MAX_BLOCKS * fc.CHUNK
    for beta in (0.9, 0.0, 1.0, 0.123):
        cpu = [m.clone() for m in ms]
        update(cpu, gs, beta)
        dev = [fc.to_device(m, device) for m in ms]
        dev_g = [fc.to_device(g, device) for g in gs]
        ptrs = [b.data_ptr() for b in dev]
        update(dev, dev_g, beta)
        fc.synchronize(device)
        for i in range(len(ms)):
            what = f"pair {i} ({ms[i].dtype}, numel {ms[i].numel()}), beta={beta}"
            assert dev[i].data_ptr() == ptrs[i] and dev[i].stride() == ms[i].stride(), what
            assert_same_bits(dev[i], cpu[i], f"{device} vs CPU: {what}")
            assert_same_bits(cpu[i], fc.momentum_expr(ms[i], gs[i], beta), f"CPU vs expression: {what}")
            assert_same_bits(dev_g[i], gs[i], f"{device} grads changed: {what}")


# ---------------------------------------------------------------------------
# Argument checks

M = "momentum_update_: "
BETA_RANGE = M + "beta must be in [0, 1]"
VALID = dict(buffers=[fc.ones(3)], grads=[fc.ones(3)], beta=0.5)
# id: (op, overrides of VALID, exception, message, also raised by the native op)
ERRORS = {
    "lengths differ": (
        "momentum_update_",
        dict(buffers=[fc.ones(3), fc.ones(2)], grads=[fc.ones(3), fc.ones(2), fc.ones(1)]),
        ValueError,
        M + "buffers and grads must be equally long lists, got 2 and 3 tensors",
        True,
    ),
    "shape mismatch": (
        "momentum_update_",
        dict(buffers=[fc.ones(3), fc.ones(2, 3)], grads=[fc.ones(3), fc.ones(3, 2)]),
        ValueError,
        M + "grads[1] must have buffers[1]'s shape [2, 3], got [3, 2]",
        True,
    ),
    "dtype mismatch": (
        "momentum_update_",
        dict(buffers=[fc.ones(3), fc.ones(4)], grads=[fc.ones(3), fc.ones(4, dtype=torch.float64)]),
        TypeError,
        M + "grads[1] must have buffers[1]'s dtype Float, got Double",
        True,
    ),
    "integer buffer": (
        "momentum_update_",
        dict(
            buffers=[fc.ones(3), fc.ones(2), fc.ones(2, dtype=torch.int64)],
            grads=[fc.ones(3), fc.ones(2), fc.ones(2, dtype=torch.int64)],
        ),
        TypeError,
        M + "buffers[2] must be float32, float64, float16 or bfloat16, got Long",
        True,
    ),
    "integer grad": (
        "momentum_update_",
        dict(grads=[fc.ones(3, dtype=torch.int32)]),
        TypeError,
        M + "grads[0] must have buffers[0]'s dtype Float, got Int",
        True,
    ),
    "beta < 0": ("momentum_update_", dict(beta=-0.1), ValueError, BETA_RANGE + ", got beta=-0.1", True),
    "beta > 1": ("momentum_update_", dict(beta=1.5), ValueError, BETA_RANGE + ", got beta=1.5", True),
    "beta just > 1": ("momentum_update_", dict(beta=1.0 + 2**-40), ValueError, BETA_RANGE, True),
    "beta NaN": ("momentum_update_", dict(beta=math.nan), ValueError, BETA_RANGE + ", got beta=nan", True),
    "beta inf": ("momentum_update_", dict(beta=math.inf), ValueError, BETA_RANGE + ", got beta=inf", True),
    "buffers a tensor": (
        "momentum_update_",
        dict(buffers=fc.ones(3)),
        TypeError,
        M + "buffers must be a list of tensors, got Tensor",
        False,
    ),
    "buffers a generator": (
        "momentum_update_",
        dict(buffers=(t for t in [fc.ones(3)])),
        TypeError,
        M + "buffers must be a list of tensors, got generator",
        False,
    ),
    "grads an int": (
        "momentum_update_",
        dict(grads=3),
        TypeError,
        M + "grads must be a list of tensors, got int",
        False,
    ),
    "buffer element": (
        "momentum_update_",
        dict(buffers=[fc.ones(3), 1.0], grads=[fc.ones(3), fc.ones(3)]),
        TypeError,
        M + "buffers[1] must be a torch.Tensor, got float",
        False,
    ),
    "grad element": (
        "momentum_update_",
        dict(buffers=[fc.ones(3), fc.ones(2)], grads=[fc.ones(3), None]),
        TypeError,
        M + "grads[1] must be a torch.Tensor, got NoneType",
        False,
    ),
    "beta a string": ("momentum_update_", dict(beta="0.5"), TypeError, M + "beta must be a float, got str", False),
    "beta a bool": ("momentum_update_", dict(beta=True), TypeError, M + "beta must be a float, got bool", False),
}


test_errors, test_errors_native_op = fc.error_table_tests(ERRORS, lambda op: VALID)


def test_beta_bounds_are_accepted():
    for beta in (0.0, -0.0, 1.0, 0, 1):
        m, g = fc.ones(4) * 2, fc.ones(4) * 6
        update([m], [g], beta)
        assert m.tolist() == [6.0 if beta == 0 else 2.0] * 4, beta


def test_empty_lists_are_a_no_op_but_beta_is_still_checked():
    update([], [], 0.9)
    with pytest.raises(ValueError, match=r"momentum_update_: beta must be in \[0, 1\], got beta=1.5"):
        update([], [], 1.5)


@pytest.mark.cuda
def test_tensors_on_two_devices_are_refused():
    message = "momentum_update_: all tensors must be on one device"
    with pytest.raises(ValueError, match=message):
        update([torch.ones(3, device="cuda"), torch.ones(3)], [torch.ones(3, device="cuda"), torch.ones(3)], 0.5)
    with pytest.raises(ValueError, match=message):
        update([torch.ones(3, device="cuda")], [torch.ones(3)], 0.5)
    with pytest.raises(ValueError, match=r"momentum_update_: beta must be in \[0, 1\], got beta=2"):
        update([torch.ones(3, device="cuda")], [torch.ones(3, device="cuda")], 2.0)


# ---------------------------------------------------------------------------
# Operator registration


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    """schema (buffers mutated, grads not), fake tensor, autograd registration and AOT dispatch
    on a small mixed list (on CUDA with a tensor of more than a chunk)."""
    gen = torch.Generator().manual_seed(5)
    big = fc.CHUNK + 3 if device == "cuda" else None
    buffers = fc.opcheck_tensors(gen, device, big)
    grads = fc.opcheck_tensors(gen, device, big)
    buffers[0][0, 0] = math.inf
    fc.assert_opcheck("momentum_update_", (buffers, grads, 0.9))
