"""Fused masked SGD-momentum step (SPEC 6.4): ``robustagg.ops.masked_sgd_step_`` and ``pack_mask``.

``masked_sgd_step_(params, grads, momentum_buffers, lr, momentum, *, masks=None,
weight_decay=0.0)``: where the mask is set, ``d = g (+ wd p)``,
``m <- mu m + d`` (stored, rounded to the dtype), ``p <- p - lr m`` with the
stored m; elsewhere p and m keep their bits. Masks: all bool (shaped like the
param) or all uint8 packed by ``pack_mask`` (bit j of byte k is element 8k + j
in row-major order); None updates every element.

Per element in Acc (float32 for float32/float16/bfloat16, float64 for float64), every scalar
rounded from double to Acc, every operation rounded once (no FMA): bit for bit the step-by-step
PyTorch expression ``fused_cases.sgd_expr``, and within the rounding of the dtype the float64
oracle ``reference.masked_sgd_step``. The CPU kernel cuts tensors into pieces; the CUDA kernel
packs chunks of many tensors into each launch. Tests parametrised by device run the same body on
the CPU and CUDA kernels.
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
from fused_cases import ones

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")
S = "masked_sgd_step_: "


def assert_sgd_close_to_oracle(p_new, m_new, p, m, g, mask, lr, mu, wd, what=""):
    """Within the rounding of the Acc computation of the float64 oracle: the momentum errs by
    <= 3 u (|mu m| + |g| + |wd p|) before its rounding to the dtype (eps(T) |m'|), and the step
    by |lr| times the stored momentum's error plus 3 u (|p| + |lr m'|); plus sa per operation and
    sa times the other factor where a coefficient rounds to a subnormal or 0."""
    u, sa, big, et, st_, tmax = fc.tolerance_units(p.dtype)
    want_p, want_m = reference.masked_sgd_step(
        [p], [g], [m], lr, mu, masks=None if mask is None else [mask], weight_decay=wd
    )
    want_p, want_m = want_p[0], want_m[0]
    p64, m64, g64, L = p.to(torch.float64), m.to(torch.float64), g.to(torch.float64), abs(lr)
    scale = abs(mu) * m64.abs() + g64.abs() + abs(wd) * p64.abs()
    err_m = 2 * (3 * u * scale + 3 * sa * (1 + m64.abs() + p64.abs())) + et * want_m.abs() + st_
    err_p = 2 * (L * err_m + 3 * u * (p64.abs() + L * want_m.abs()) + sa * want_m.abs() + 3 * sa * (1 + L))
    err_p = err_p + et * want_p.abs() + st_
    inter = [scale, L * want_m.abs(), abs(mu) * m64.abs(), abs(wd) * p64.abs()]
    skip_m = fc.skip_mask(big, tmax, want_m, [p64, m64, g64], inter)
    skip_p = skip_m | fc.skip_mask(big, tmax, want_p, [], [])
    if mask is not None:  # inactive elements are compared bit for bit by the callers
        skip_m |= ~mask
        skip_p |= ~mask
    fc.check_tolerance(m_new, want_m, err_m, skip_m, f"{what}: momentum vs oracle")
    fc.check_tolerance(p_new, want_p, err_p, skip_p, f"{what}: params vs oracle")


def unpack(packed: torch.Tensor, shape) -> torch.Tensor:
    """A packed mask (pack_mask's layout) as a bool tensor of the given shape, by NumPy."""
    numel = math.prod(shape)
    bits = np.unpackbits(packed.cpu().numpy(), bitorder="little")[:numel]
    return torch.from_numpy(bits.astype(bool)).reshape(shape)


mus = st.one_of(st.sampled_from([0.0, 0.9, 0.99, 0.5]), st.floats(0.0, 1.0))
wds = st.sampled_from([0.0, 0.0, 1e-4, 0.01, 0.5])


def sgd(params, grads, momentum_buffers, lr, mu, masks=None, wd=0.0):
    robustagg.ops.masked_sgd_step_(params, grads, momentum_buffers, lr, mu, masks=masks, weight_decay=wd)


def check_sgd(specs: list[fc.ParamSpec], kind: str | None, density: float, lr, mu, wd, device: str = "cpu"):
    """params, grads, momentum from specs; masks of the kind (None / "bool" / "packed"); runs the
    op on device and compares with sgd_expr (bits; inactive elements every bit), the oracle, and
    bool vs packed."""
    ps, gs, ms = [s.tensor(0) for s in specs], [s.tensor(1) for s in specs], [s.tensor(2) for s in specs]
    bools = [s.mask(density) for s in specs] if kind else None
    masks = None if kind is None else bools if kind == "bool" else [robustagg.ops.pack_mask(b) for b in bools]
    masks = None if masks is None else [fc.to_device(x, device) for x in masks]
    params, moms = [fc.to_device(p, device) for p in ps], [fc.to_device(m, device) for m in ms]
    grads = [fc.to_device(g, device) for g in gs]
    masks_before = None if masks is None else [x.clone() for x in masks]
    sgd(params, grads, moms, lr, mu, masks, wd)
    for j, spec in enumerate(specs):
        what = f"{device}: param {j} of {len(specs)}: {spec}, masks {kind} ({density}), lr={lr!r}, mu={mu!r}, wd={wd!r}"
        mask = None if bools is None else bools[j]
        want_p, want_m = fc.sgd_expr(ps[j], ms[j], gs[j], lr, mu, wd, mask)
        got_p, got_m = params[j].cpu(), moms[j].cpu()
        assert_same_bits(got_p, want_p, f"{what}: params")
        assert_same_bits(got_m, want_m, f"{what}: momentum")
        if mask is not None:
            assert_identical(got_p[~mask], ps[j][~mask], f"{what}: inactive params")
            assert_identical(got_m[~mask], ms[j][~mask], f"{what}: inactive momentum")
            assert_identical(masks[j], masks_before[j], f"{what}: mask changed")
        assert_identical(grads[j], gs[j], f"{what}: grads changed")
        assert_sgd_close_to_oracle(got_p, got_m, ps[j], ms[j], gs[j], mask, lr, mu, wd, what)
    if kind is not None:  # the other mask kind gives the same bits
        other = [robustagg.ops.pack_mask(b) for b in bools] if kind == "bool" else bools
        params2, moms2 = [fc.to_device(p, device) for p in ps], [fc.to_device(m, device) for m in ms]
        sgd(params2, grads, moms2, lr, mu, [fc.to_device(x, device) for x in other], wd)
        for j in range(len(specs)):
            assert_identical(params2[j], params[j], f"param {j}: bool vs packed masks")
            assert_identical(moms2[j], moms[j], f"param {j}: bool vs packed masks, momentum")


mask_kinds = st.sampled_from([None, "bool", "packed"])
densities = st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0])


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=200, **fc.SETTINGS)
@given(data=st.data(), dtype=st.sampled_from(DTYPES), kind=mask_kinds, density=densities, lr=fc.lrs, mu=mus, wd=wds)
def test_random_lists_one_dtype(device, data, dtype, kind, density, lr, mu, wd):
    check_sgd(
        data.draw(fc.param_lists([dtype], most=3 * fc.PIECE + 300), label="specs"), kind, density, lr, mu, wd, device
    )


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=200, **fc.SETTINGS)
@given(
    specs=fc.param_lists(DTYPES, most=3 * fc.PIECE + 300), kind=mask_kinds, density=densities, lr=fc.lrs, mu=mus, wd=wds
)
def test_random_lists_mixed_dtypes(device, specs, kind, density, lr, mu, wd):
    check_sgd(specs, kind, density, lr, mu, wd, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_piece_boundaries_and_odd_sizes(device, dtype):
    """Sizes at piece boundaries and odd sizes (the packed mask's last byte is partial)."""
    sizes = [1, 7, 9, 15, 17, fc.PIECE - 1, fc.PIECE, fc.PIECE + 1, 2 * fc.PIECE + 5, 3 * fc.PIECE + 13]
    specs = [fc.ParamSpec((s,), dtype, s, ("gaussian", "magnitudes", "gaussian"), 0.0) for s in sizes]
    for kind in (None, "bool", "packed"):
        check_sgd(specs, kind, 0.5, 0.05, 0.9, 1e-2, device)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_known_values(dtype):
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
    bits = {
        torch.float32: [0x7FC00123, 0xFFC00001, 0x7F800001, 0x7FFFFFFF],
        torch.float64: [0x7FF8000000000123, 0xFFF8000000000001, 0x7FF0000000000001, 0x7FFFFFFFFFFFFFFF],
        torch.float16: [0x7E01, 0xFE01, 0x7C01, 0x7FFF],
        torch.bfloat16: [0x7FC1, 0xFFC1, 0x7F81, 0x7FFF],
    }[dtype]
    nbits = torch.finfo(dtype).bits
    signed = [b - (1 << nbits) if b >> (nbits - 1) else b for b in bits]
    nans = torch.tensor(signed, dtype={2: torch.int16, 4: torch.int32, 8: torch.int64}[nbits // 8]).view(dtype)
    assert nans.isnan().all()
    return torch.cat([nans, torch.tensor([math.inf, -math.inf], dtype=dtype)])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["bool", "packed"])
def test_inactive_elements_keep_bits_and_stay_apart(dtype, kind):
    """NaN (with payloads) and inf in the params, momentum and grads of inactive elements: those
    elements keep every bit, and every active element (its neighbours included, across a piece
    boundary) is finite and equals the expression."""
    gen = torch.Generator().manual_seed(13)
    numel = fc.PIECE + 29
    mask = torch.rand(numel, generator=gen) < 0.5
    mask[fc.PIECE - 3 : fc.PIECE + 3] = torch.tensor([True, False, True, False, False, True])
    bad = _payload_nans(dtype)
    lists = []
    for _ in range(3):
        x = fc.randn(numel, gen, dtype)
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
    want_p, want_m = fc.sgd_expr(p0, m0, g0, 0.1, 0.9, 1e-2, mask)
    assert_same_bits(p, want_p, "params")
    assert_same_bits(m, want_m, "momentum")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_all_true_all_false_and_none(dtype):
    """masks=None equals an all-true mask of either kind (padding bits of the packed mask set or
    not); an all-false mask changes no bit."""
    gen = torch.Generator().manual_seed(17)
    shapes = [(fc.PIECE + 3,), (5, 7), (), (0, 4), (3, 3)]
    ps = [fc.randn(s, gen, dtype) for s in shapes]
    ms = [fc.randn(s, gen, dtype) for s in shapes]
    gs = [fc.randn(s, gen, dtype) for s in shapes]
    ps[1][0, 0] = math.nan
    gs[1][1, 1] = math.inf
    ref_p, ref_m = [p.clone() for p in ps], [m.clone() for m in ms]
    sgd(ref_p, gs, ref_m, 0.01, 0.5, None, 1e-3)
    for j in range(len(shapes)):
        want_p, want_m = fc.sgd_expr(ps[j], ms[j], gs[j], 0.01, 0.5, 1e-3)
        assert_same_bits(ref_p[j], want_p, f"masks=None, param {j}")
        assert_same_bits(ref_m[j], want_m, f"masks=None, momentum {j}")
    ones = [torch.ones(s, dtype=torch.bool) for s in shapes]
    padded = [torch.full(((math.prod(s) + 7) // 8,), 255, dtype=torch.uint8) for s in shapes]
    for name, masks in (
        ("bool", ones),
        ("packed", [robustagg.ops.pack_mask(o) for o in ones]),
        ("packed, padding set", padded),
    ):
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
def test_packed_padding_bits_are_ignored(dtype):
    """Odd numel: set bits past the last element of the last byte do not change anything."""
    gen = torch.Generator().manual_seed(19)
    for numel in (1, 3, 9, 13, 8 * 5 + 7, fc.PIECE + 5):
        mask = torch.rand(numel, generator=gen) < 0.5
        packed = robustagg.ops.pack_mask(mask)
        assert packed.numel() == (numel + 7) // 8
        assert int(packed[-1]) >> (numel - 8 * (packed.numel() - 1)) == 0, "pack_mask pads with zeros"
        dirty = packed.clone()
        dirty[-1] |= (0xFF << (numel - 8 * (packed.numel() - 1))) & 0xFF
        p0, m0, g0 = fc.randn(numel, gen, dtype), fc.randn(numel, gen, dtype), fc.randn(numel, gen, dtype)
        out = {}
        for name, mk in (("bool", mask), ("packed", packed), ("padding set", dirty)):
            p, m = p0.clone(), m0.clone()
            sgd([p], [g0], [m], 0.2, 0.6, [mk])
            out[name] = (p, m)
        want_p, want_m = fc.sgd_expr(p0, m0, g0, 0.2, 0.6, 0.0, mask)
        for name, (p, m) in out.items():
            assert_same_bits(p, want_p, f"numel {numel}, {name} mask: params")
            assert_same_bits(m, want_m, f"numel {numel}, {name} mask: momentum")


@pytest.mark.parametrize(
    "shape", [(0,), (1,), (7,), (8,), (9,), (3, 5), (2, 3, 7), (), (4, 0), (fc.PIECE + 3,)], ids=str
)
def test_pack_mask_bit_order(shape):
    """Bit j of byte k is element 8k + j in row-major order, as numpy.packbits(bitorder="little"),
    for contiguous and transposed / sliced masks; 1-D uint8 of ceil(numel / 8) bytes."""
    gen = torch.Generator().manual_seed(len(shape))
    base = torch.rand(*shape, 3, generator=gen) < 0.5
    for name, mask in (
        ("contiguous", base[..., 0].contiguous()),
        ("strided", base[..., 1]),
        ("transposed", base[..., 2].t() if base.dim() == 3 else base[..., 2]),
    ):
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
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} differ by more than one ulp of the terms; "
            f"first at {j}: {got.reshape(-1)[j].item()!r} vs {want.reshape(-1)[j].item()!r}"
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_first_step_matches_torch_optim_sgd(dtype):
    """From a zero momentum buffer the step is torch.optim.SGD's first step (momentum, no
    dampening, no Nesterov, weight decay). SGD evaluates g + wd p and p - lr m with FMAs (add
    with alpha), so the results agree within one ulp of the larger term of each; without weight
    decay the buffer is g itself, bit for bit."""
    gen = torch.Generator().manual_seed(23)
    shapes = [(fc.PIECE + 77,), (31, 9), ()]
    lr, mu = 0.1, 0.9
    for wd in (0.0, 1e-2):
        ps = [fc.randn(s, gen, dtype) for s in shapes]
        gs = [fc.randn(s, gen, dtype, 0.1) for s in shapes]
        ours = [p.clone() for p in ps]
        bufs = [torch.zeros_like(p) for p in ps]
        sgd(ours, gs, bufs, lr, mu, None, wd)
        for foreach in (False, True):
            theirs = [torch.nn.Parameter(p.clone()) for p in ps]
            opt = torch.optim.SGD(
                theirs, lr=lr, momentum=mu, dampening=0, nesterov=False, weight_decay=wd, foreach=foreach
            )
            for t, g in zip(theirs, gs):
                t.grad = g.clone()
            opt.step()
            for j, t in enumerate(theirs):
                what = f"wd={wd} foreach={foreach} param {j}"
                buf = opt.state[t]["momentum_buffer"]
                assert_within_one_ulp_of_terms(
                    bufs[j], buf, [gs[j], wd * ps[j].to(torch.float64), buf], f"{what}: momentum"
                )
                assert_within_one_ulp_of_terms(
                    ours[j], t.detach(), [ps[j], lr * buf.to(torch.float64), t.detach()], f"{what}: params"
                )
                if wd == 0.0:
                    assert_identical(bufs[j], gs[j], what)
                    assert_identical(buf, gs[j], what)


# --- Layouts, aliasing ------------------------------------------------------

VIEWS = fc.views(2 * fc.PIECE + 2 * fc.BLOCK + 6)  # big strided: 3 * (PIECE + BLOCK + 3) elements


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("view", list(VIEWS), ids=str)
def test_non_contiguous(view, dtype):
    """Strided params, momentum, grads and bool masks (a view of a larger bool tensor), packed
    masks as a strided byte view: written views keep storage and strides, their bases change
    exactly under the view, results equal the contiguous call and the expression."""
    fn, base_shape = VIEWS[view]
    gen = torch.Generator().manual_seed(len(view) + 1)
    lr, mu, wd = 0.05, 0.8, 0.01
    for kind in (None, "bool", "packed"):
        base_p, base_m, base_g = (fc.randn(base_shape, gen, dtype) for _ in range(3))
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
        want_p, want_m = fc.sgd_expr(p0, m0, fn(before_g), lr, mu, wd, None if kind is None else mask)
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
def test_aliased_read_lists(dtype):
    """The same grad tensor and the same mask for several params; grads and masks unchanged."""
    gen = torch.Generator().manual_seed(29)
    shape = (3, fc.PIECE // 2 + 5)
    ps = [fc.randn(shape, gen, dtype) for _ in range(3)]
    ms = [fc.randn(shape, gen, dtype) for _ in range(3)]
    g, other_g = fc.randn(shape, gen, dtype), fc.randn(shape, gen, dtype)
    g0 = g.clone()
    mask = torch.rand(shape, generator=gen) < 0.5
    packed = robustagg.ops.pack_mask(mask)
    for masks in ([mask, mask, ~mask], [packed, packed, robustagg.ops.pack_mask(~mask)]):
        bools = [mask, mask, ~mask]
        p, m = [x.clone() for x in ps], [x.clone() for x in ms]
        saved = [x.clone() for x in masks]
        sgd(p, [g, other_g, g], m, 0.1, 0.9, masks, 0.0)
        for j, gj in enumerate([g0, other_g, g0]):
            want_p, want_m = fc.sgd_expr(ps[j], ms[j], gj, 0.1, 0.9, 0.0, bools[j])
            assert_same_bits(p[j], want_p, f"param {j}")
            assert_same_bits(m[j], want_m, f"momentum {j}")
        assert_identical(g, g0, "grads changed")
        for x, x0 in zip(masks, saved):
            assert_identical(x, x0, "masks changed")


# --- Threads, argument checks ------------------------------------------------


def test_thread_count_does_not_change_results():
    gen = torch.Generator().manual_seed(11)
    sizes = [5 * fc.PIECE + 3, 17, 0, 2 * fc.PIECE, fc.PIECE + 1, 3, 4 * fc.PIECE - 1, 1000]
    dtypes = [DTYPES[i % len(DTYPES)] for i in range(len(sizes))]
    ps, gs, ms = ([fc.randn(n, gen, dt) for n, dt in zip(sizes, dtypes)] for _ in range(3))
    masks = [torch.rand(n, generator=gen) < 0.5 for n in sizes]

    def run():
        p, m = [x.clone() for x in ps], [x.clone() for x in ms]
        sgd(p, gs, m, 0.1, 0.9, [robustagg.ops.pack_mask(x) for x in masks], 1e-3)
        return p, m

    def check(result, threads):
        p, m = result
        for j in range(len(sizes)):
            want_p, want_m = fc.sgd_expr(ps[j], ms[j], gs[j], 0.1, 0.9, 1e-3, masks[j])
            assert_same_bits(p[j], want_p, f"tensor {j}, {threads} threads: params")
            assert_same_bits(m[j], want_m, f"tensor {j}, {threads} threads: momentum")

    fc.check_thread_counts(run, check)


def valid() -> dict:
    return dict(
        params=[ones(3), ones(2, 2)],
        grads=[ones(3), ones(2, 2)],
        momentum_buffers=[ones(3), ones(2, 2)],
        lr=0.1,
        momentum=0.9,
        masks=[torch.ones(3, dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool)],
        weight_decay=0.0,
    )


_u8 = dict(dtype=torch.uint8)
_b = dict(dtype=torch.bool)
# id: (op, overrides of valid(), exception, message, also raised by the native op)
ERRORS = {
    # masked_sgd_step_: lists and scalars
    "sgd: grads shorter": (
        "masked_sgd_step_",
        dict(grads=[ones(3)]),
        ValueError,
        S + "params and grads must be equally long lists, got 2 and 1 tensors",
        True,
    ),
    "sgd: momentum longer": (
        "masked_sgd_step_",
        dict(momentum_buffers=[ones(3), ones(2, 2), ones(1)]),
        ValueError,
        S + "params and momentum_buffers must be equally long lists, got 2 and 3 tensors",
        True,
    ),
    "sgd: grads shape": (
        "masked_sgd_step_",
        dict(grads=[ones(3), ones(4)]),
        ValueError,
        S + "grads[1] must have params[1]'s shape [2, 2], got [4]",
        True,
    ),
    "sgd: momentum dtype": (
        "masked_sgd_step_",
        dict(momentum_buffers=[ones(3, dtype=torch.float16), ones(2, 2)]),
        TypeError,
        S + "momentum_buffers[0] must have params[0]'s dtype Float, got Half",
        True,
    ),
    "sgd: integer params": (
        "masked_sgd_step_",
        dict(
            params=[ones(3, dtype=torch.int32)],
            grads=[ones(3, dtype=torch.int32)],
            momentum_buffers=[ones(3, dtype=torch.int32)],
            masks=None,
        ),
        TypeError,
        S + "params[0] must be float32, float64, float16 or bfloat16, got Int",
        True,
    ),
    "sgd: lr nan": ("masked_sgd_step_", dict(lr=math.nan), ValueError, S + "lr must be finite, got lr=nan", True),
    "sgd: momentum inf": (
        "masked_sgd_step_",
        dict(momentum=math.inf),
        ValueError,
        S + "momentum must be finite, got momentum=inf",
        True,
    ),
    "sgd: weight_decay nan": (
        "masked_sgd_step_",
        dict(weight_decay=math.nan),
        ValueError,
        S + "weight_decay must be finite, got weight_decay=nan",
        True,
    ),
    "sgd: lr a str": ("masked_sgd_step_", dict(lr="0.1"), TypeError, S + "lr must be a float, got str", False),
    "sgd: momentum a bool": (
        "masked_sgd_step_",
        dict(momentum=True),
        TypeError,
        S + "momentum must be a float, got bool",
        False,
    ),
    "sgd: grads a tensor": (
        "masked_sgd_step_",
        dict(grads=ones(3)),
        TypeError,
        S + "grads must be a list of tensors, got Tensor",
        False,
    ),
    # masked_sgd_step_: masks
    "sgd: masks a tensor": (
        "masked_sgd_step_",
        dict(masks=torch.ones(3, **_b)),
        TypeError,
        S + "masks must be a list of tensors, got Tensor",
        False,
    ),
    "sgd: masks shorter": (
        "masked_sgd_step_",
        dict(masks=[torch.ones(3, **_b)]),
        ValueError,
        S + "params and masks must be equally long lists, got 2 and 1 tensors",
        True,
    ),
    "sgd: masks longer": (
        "masked_sgd_step_",
        dict(masks=[torch.ones(3, **_b)] * 3),
        ValueError,
        S + "params and masks must be equally long lists, got 2 and 3 tensors",
        True,
    ),
    "sgd: float mask": (
        "masked_sgd_step_",
        dict(masks=[torch.ones(3), torch.ones(2, 2)]),
        TypeError,
        S + "masks[0] must be bool or uint8 (packed bits), got Float",
        True,
    ),
    "sgd: int mask second": (
        "masked_sgd_step_",
        dict(masks=[torch.ones(3, **_b), torch.ones(2, 2, dtype=torch.int8)]),
        TypeError,
        S + "masks[1] must be bool or uint8 (packed bits), got Char",
        True,
    ),
    "sgd: bool then packed": (
        "masked_sgd_step_",
        dict(masks=[torch.ones(3, **_b), torch.zeros(1, **_u8)]),
        TypeError,
        S + "masks must be all bool or all uint8 (packed), masks[0] is Bool and masks[1] Byte",
        True,
    ),
    "sgd: packed then bool": (
        "masked_sgd_step_",
        dict(masks=[torch.zeros(1, **_u8), torch.ones(2, 2, **_b)]),
        TypeError,
        S + "masks must be all bool or all uint8 (packed), masks[0] is Byte and masks[1] Bool",
        True,
    ),
    "sgd: bool mask shape": (
        "masked_sgd_step_",
        dict(masks=[torch.ones(3, **_b), torch.ones(4, **_b)]),
        ValueError,
        S + "masks[1] must have params[1]'s shape [2, 2], got [4]",
        True,
    ),
    "sgd: bool mask transposed shape": (
        "masked_sgd_step_",
        dict(
            params=[ones(3), ones(2, 3)],
            grads=[ones(3), ones(2, 3)],
            momentum_buffers=[ones(3), ones(2, 3)],
            masks=[torch.ones(3, **_b), torch.ones(3, 2, **_b)],
        ),
        ValueError,
        S + "masks[1] must have params[1]'s shape [2, 3], got [3, 2]",
        True,
    ),
    "sgd: packed too long": (
        "masked_sgd_step_",
        dict(masks=[torch.zeros(1, **_u8), torch.zeros(2, **_u8)]),
        ValueError,
        S + "packed masks[1] must be 1-D with ceil(numel / 8) = 1 bytes, got shape [2]",
        True,
    ),
    "sgd: packed too short": (
        "masked_sgd_step_",
        dict(params=[ones(9)], grads=[ones(9)], momentum_buffers=[ones(9)], masks=[torch.zeros(1, **_u8)]),
        ValueError,
        S + "packed masks[0] must be 1-D with ceil(numel / 8) = 2 bytes, got shape [1]",
        True,
    ),
    "sgd: packed unpacked bytes": (
        "masked_sgd_step_",
        dict(params=[ones(9)], grads=[ones(9)], momentum_buffers=[ones(9)], masks=[torch.ones(9, **_u8)]),
        ValueError,
        S + "packed masks[0] must be 1-D with ceil(numel / 8) = 2 bytes, got shape [9]",
        True,
    ),
    "sgd: packed 2-D": (
        "masked_sgd_step_",
        dict(masks=[torch.zeros(1, 1, **_u8), torch.zeros(1, **_u8)]),
        ValueError,
        S + "packed masks[0] must be 1-D with ceil(numel / 8) = 1 bytes, got shape [1, 1]",
        True,
    ),
}


test_errors, test_errors_native_op = fc.error_table_tests(ERRORS, lambda op: valid())


@pytest.mark.parametrize("element", [None, True], ids=str)
def test_mask_element_not_a_tensor(element):
    kwargs = {**valid(), "masks": [torch.ones(3, **_b), element]}
    with pytest.raises(TypeError, match=re.escape(S + "masks[1] must be a torch.Tensor")):
        robustagg.ops.masked_sgd_step_(**kwargs)


def test_empty_lists_are_a_no_op_but_scalars_are_still_checked():
    sgd([], [], [], 0.1, 0.9)
    sgd([], [], [], 0.1, 0.9, masks=[], wd=0.5)
    for kwargs, message in (
        (dict(lr=math.inf), "lr must be finite, got lr=inf"),
        (dict(momentum=math.nan), "momentum must be finite, got momentum=nan"),
        (dict(weight_decay=-math.inf), "weight_decay must be finite, got weight_decay=-inf"),
    ):
        for masks in (None, []):
            args = {**dict(params=[], grads=[], momentum_buffers=[], lr=0.1, momentum=0.9, masks=masks), **kwargs}
            with pytest.raises(ValueError, match=re.escape(S + message)):
                robustagg.ops.masked_sgd_step_(**args)


@pytest.mark.cuda
def test_tensors_on_two_devices_are_refused():
    """grads, momentum, a second param, a mask on the CPU."""

    def c(*shape):
        return torch.ones(shape, device="cuda")

    for params, grads, moms in (
        ([c(3)], [ones(3)], [c(3)]),
        ([c(3)], [c(3)], [ones(3)]),
        ([c(3), ones(2)], [c(3), ones(2)], [c(3), ones(2)]),
    ):
        with pytest.raises(ValueError, match=re.escape(S + "all tensors must be on one device")):
            sgd(params, grads, moms, 0.1, 0.9)
    for masks in (
        [torch.ones(3, dtype=torch.bool), torch.ones(2, dtype=torch.bool, device="cuda")],
        [torch.ones(1, dtype=torch.uint8, device="cuda"), torch.ones(1, dtype=torch.uint8)],
    ):
        k = 0 if masks[0].device.type == "cpu" else 1
        with pytest.raises(ValueError, match=re.escape(f"{S}masks[{k}] is on cpu but params[{k}] on cuda:0")):
            sgd([c(3), c(2)], [c(3), c(2)], [c(3), c(2)], 0.1, 0.9, masks)


# --- Operator registration --------------------------------------------------


def _opcheck_args(kind: str | None, device: str) -> tuple:
    """opcheck_tensors lists (on CUDA with a tensor of more than a chunk) for params, grads and
    momentum; masks of the kind."""
    gen = torch.Generator().manual_seed(6)
    big = fc.CHUNK + 3 if device == "cuda" else None
    params, grads, moms = (fc.opcheck_tensors(gen, device, big) for _ in range(3))
    params[0][0, 0] = math.inf
    masks = None
    if kind is not None:
        bools = [(torch.rand(p.shape, generator=gen) < 0.5).to(device) for p in params]
        masks = bools if kind == "bool" else [robustagg.ops.pack_mask(b) for b in bools]
    return (params, grads, moms, masks, 0.1, 0.9, 0.01)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", [None, "bool", "packed"], ids=["no masks", "bool", "packed"])
def test_opcheck(device, kind):
    """schema (only params and momentum mutated), fake tensor, autograd registration, AOT dispatch."""
    fc.assert_opcheck("masked_sgd_step_", _opcheck_args(kind, device))


# --- Long lists: CUDA launches, CPU pieces ------------------------------------


def _long_lists(device: str, of, gen):
    """50 tensors per list: on CUDA more than MAX_TENSORS per launch and one of MAX_BLOCKS + 1
    chunks + 5 elements (more than one launch) after a few others, on the CPU around and across
    pieces; 0-D, empty, NaN/inf, and a transposed tensor last."""
    if device == "cuda":
        sizes = fc.launch_sizes(fc.CHUNK, (fc.MAX_BLOCKS + 1) * fc.CHUNK + 5, 50)
    else:
        sizes = fc.launch_sizes(fc.PIECE, 3 * fc.PIECE + 5, 50)
    shapes = [(s,) for s in sizes] + [(), (70, 300)]

    def one_list():
        xs = [fc.randn(s, gen, of(i)) for i, s in enumerate(shapes)]
        xs[-1] = xs[-1].t()
        return xs

    ps, ms, gs = one_list(), one_list(), one_list()
    ps[1][5] = math.nan
    gs[2][7] = math.inf
    bools = [torch.rand(s, generator=gen) < 0.5 for s in shapes]
    bools[-1] = bools[-1].t()
    return ps, ms, gs, bools


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + ["mixed"], ids=str)
def test_long_lists_match_the_cpu_kernel_bitwise(device, dtype):
    """The op on device equals the CPU kernel bit for bit for every mask kind, with and without
    weight decay; inactive elements keep every bit on the device too; the CPU result equals the
    expression; grads unchanged, written views keep their layout."""
    gen = torch.Generator().manual_seed(4)
    ps, ms, gs, bools = _long_lists(device, fc.dtype_of(dtype), gen)
    assert len(ps) == 50
    if device == "cuda":
        assert len(ps) > fc.MAX_TENSORS and max(p.numel() for p in ps) > fc.MAX_BLOCKS * fc.CHUNK
    for kind, wd in ((None, 0.0), ("bool", 1e-2), ("packed", 0.0), ("packed", 1e-2)):
        masks = None if kind is None else bools if kind == "bool" else [robustagg.ops.pack_mask(b) for b in bools]
        cpu_p, cpu_m = [p.clone() for p in ps], [m.clone() for m in ms]
        sgd(cpu_p, gs, cpu_m, 0.05, 0.9, masks, wd)
        dev_p, dev_m = [fc.to_device(p, device) for p in ps], [fc.to_device(m, device) for m in ms]
        dev_g = [fc.to_device(g, device) for g in gs]
        dev_masks = None if masks is None else [fc.to_device(x, device) for x in masks]
        layout = [(x.data_ptr(), x.stride()) for x in dev_p + dev_m]
        sgd(dev_p, dev_g, dev_m, 0.05, 0.9, dev_masks, wd)
        fc.synchronize(device)
        assert [(x.data_ptr(), x.stride()) for x in dev_p + dev_m] == layout
        for j in range(len(ps)):
            what = f"param {j} ({ps[j].dtype}, numel {ps[j].numel()}), masks {kind}, wd={wd}"
            assert_same_bits(dev_p[j], cpu_p[j], f"{device} vs CPU: {what}: params")
            assert_same_bits(dev_m[j], cpu_m[j], f"{device} vs CPU: {what}: momentum")
            assert_identical(dev_g[j], gs[j], f"{device}: {what}: grads changed")
            mask = None if kind is None else bools[j]
            if mask is not None:
                assert_identical(dev_p[j].cpu()[~mask], ps[j][~mask], f"{device}: {what}: inactive params")
                assert_identical(dev_m[j].cpu()[~mask], ms[j][~mask], f"{device}: {what}: inactive momentum")
            want_p, want_m = fc.sgd_expr(ps[j], ms[j], gs[j], 0.05, 0.9, wd, mask)
            assert_same_bits(cpu_p[j], want_p, f"CPU vs expression: {what}: params")
            assert_same_bits(cpu_m[j], want_m, f"CPU vs expression: {what}: momentum")
