"""Fused client-side updates (SPEC 6): ``robustagg.ops.client_step_``, ``adam_client_step_``,
``adam_stats_update_`` and ``mvr_update_``.

The contract of the fused updates (fused_cases): every coefficient is rounded from double to the
accumulation dtype Acc (float32; float64 for float64 tensors), each operation is rounded once in
the order written (no FMA), and the result is cast once to the storage dtype. What was verified
on this machine (torch 2.14 CPU, AVX512), per op, for all four dtypes and for values from
subnormals to near overflow, signed zeros and scattered NaN/inf:

* client_step_, adam_stats_update_, mvr_update_: bit for bit the step-by-step PyTorch
  expressions of fused_cases (torch's CPU +, -, * and / with a tensor or a Python float are
  correctly rounded).
* adam_client_step_: bit for bit as well, once the square root is correctly rounded. torch.sqrt
  on CPU is not: on this build, for uniformly drawn inputs, about one float32 result in five and
  one float64 result in seventy is 1 ulp off the IEEE square root (its vectorised sqrt is not the
  sqrtps/sqrtpd instruction), while the kernels' std::sqrt is correctly rounded. With torch.sqrt
  in the expression 1 ulp differences show up in every dtype; with the root taken by NumPy (the
  IEEE instruction) none do. Division by a Python scalar is not a cause: x / s and
  x / full_like(x, s) give the same bits.
* torch.add(x, y, alpha=k) and torch._foreach_add_(xs, ys, alpha=k) cannot serve as
  expressions: the vectorised CPU kernel evaluates x + k * y as an FMA, which differs from the
  two rounded operations on a few results in ten thousand.

So every result is compared bit for bit with its expression, and with the float64 oracle in
robustagg.reference within a bound of the rounding error of the Acc computation derived
operation by operation (``*_error`` below), doubled to cover second-order terms and the
oracle's own float64 rounding, plus the final rounding to the storage dtype. Tests parametrised
by device run the same body on the CPU and CUDA kernels.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import robustagg.ops
from robustagg import reference

import fused_cases as fc
from conftest import DEVICES, DTYPES, MatrixSpec, assert_same_bits, make_matrix

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

OP_LISTS = {  # every list of each op, in the order of its signature
    "client_step_": ("params", "grads", "anchor_grads", "control", "momentum"),
    "adam_client_step_": ("params", "grads", "anchor_grads", "control", "exp_avg", "exp_avg_sq"),
    "adam_stats_update_": ("exp_avg", "exp_avg_sq", "grads"),
    "mvr_update_": ("momentum", "grads", "prev_grads"),
}
OPTIONAL = {
    "client_step_": ("anchor_grads", "control", "momentum"),
    "adam_client_step_": ("anchor_grads", "control"),
    "adam_stats_update_": (),
    "mvr_update_": (),
}
NON_NEGATIVE = {"adam_client_step_": ("exp_avg_sq",)}  # Adam's second moment, as the optimizer keeps it
UPDATE_OPS = list(OP_LISTS)
# One set of scalars per op for the layout, thread and long-list tests: every coefficient
# non-trivial, so a coefficient applied to the wrong list changes the result.
SCALARS = {
    "client_step_": dict(lr=0.05, coef_grad=0.3, coef_anchor=-0.45, coef_control=0.7, coef_momentum=1.25),
    "adam_client_step_": dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-3, step=3),
    "adam_stats_update_": dict(beta1=0.8, beta2=0.95),
    "mvr_update_": dict(a=0.2),
}


def call_op(op: str, lists: dict, scalars: dict) -> None:
    """robustagg.ops.<op> (looked up at call time) with the lists present in ``lists``."""
    getattr(robustagg.ops, op)(**{k: v for k, v in lists.items() if v is not None}, **scalars)


def expression_values(op: str, t: dict, s: dict) -> dict:
    """The written tensors' new values by the step-by-step expression; t maps list names to
    one tensor each (None: list absent), s holds the op's scalars."""
    if op == "client_step_":
        return {
            "params": fc.client_expr(
                t["params"], t["grads"], t.get("anchor_grads"), t.get("control"), t.get("momentum"), **s
            )
        }
    if op == "adam_client_step_":
        return {
            "params": fc.adam_client_expr(
                t["params"], t["grads"], t.get("anchor_grads"), t.get("control"), t["exp_avg"], t["exp_avg_sq"], **s
            )
        }
    if op == "adam_stats_update_":
        m, v = fc.adam_stats_expr(t["exp_avg"], t["exp_avg_sq"], t["grads"], **s)
        return {"exp_avg": m, "exp_avg_sq": v}
    return {"momentum": fc.mvr_expr(t["momentum"], t["grads"], t["prev_grads"], **s)}


# --- Oracle comparison --------------------------------------------------------
# Notation: u = eps(Acc)/2 (unit roundoff), sa = smallest subnormal of Acc.
# Rounding a double coefficient k to Acc errs by <= u|k| + sa; one product,
# sum or quotient rounds with a relative error <= u plus an absolute sa when
# it lands among the subnormals (sums of floats are exact there). Each bound
# below is the first-order propagation of those errors through the
# operations, in the order the kernel does them; x64 are the exact inputs.


def _f64(x):
    return None if x is None else x.to(torch.float64)


def _units(dtype):
    fa = torch.finfo(fc.acc_dtype(dtype))
    return fa.eps / 2, fa.tiny * fa.eps, fa.max


def _all_finite(*xs):
    fin = None
    for x in xs:
        if x is not None:
            fin = x.isfinite() if fin is None else fin & x.isfinite()
    return fin


def _exceeds(big, *xs):
    """Entries where a finite intermediate (exact, in float64) is beyond a quarter of Acc's
    largest value: the kernel may overflow there (float32 g^2 for g = 1e20; then inf - inf
    or inf / inf can make NaN where the exact value is finite or infinite)."""
    out = None
    for x in xs:
        over = x.isfinite() & (x.abs() > big / 4)
        out = over if out is None else out | over
    return out


def _scalar_underflows(dtype, *xs) -> bool:
    """A non-zero scalar that rounds to 0 in Acc: 0 * inf = NaN where the exact product is inf."""
    return any(x != 0 and fc.acc_scalar(x, dtype) == 0 for x in xs)


def client_error(t, s):
    """d = ((k_g g + k_a a) + k_c c) + k_m m over n present terms: each term 2u (coefficient,
    product), the n - 1 sums (n - 1)u of S = sum |k x|, plus sa per term and coefficient;
    then lr (rounded) times d, and p minus that, each rounded once."""
    u, sa, big = _units(t["params"].dtype)
    p = _f64(t["params"])
    terms = [(s.get("coef_grad", 1.0), _f64(t["grads"]))]
    terms += [
        (s.get(k, 0.0), _f64(t.get(n)))
        for n, k in (("anchor_grads", "coef_anchor"), ("control", "coef_control"), ("momentum", "coef_momentum"))
    ]
    terms = [(k, x) for k, x in terms if x is not None]
    X = sum(x.abs() for _, x in terms)
    S = sum(abs(k) * x.abs() for k, x in terms)
    n, L = len(terms), abs(s["lr"])
    e_d = (n + 1) * u * S + sa * (X + n)
    err = L * e_d + (2 * u * L + sa) * S + u * (p.abs() + L * S) + sa
    fin = _all_finite(p, *(x for _, x in terms))
    skip = _exceeds(big, S, L * S, *(k * x for k, x in terms), *(L * k * x for k, x in terms))
    if _scalar_underflows(t["params"].dtype, s["lr"], *(k for k, _ in terms)):
        skip |= ~fin
    return err, skip


def adam_client_error(t, s):
    """Bound for gt = (g - a) + c, m' = b1 m + t1 gt, v' = b2 v + t2 gt^2,
    D = sqrt(v') / sb + eps, q = m' / D, p - ss q (ss = lr / bc1, sb = sqrt(bc2) rounded to
    Acc); for the square root |sqrt(x') - sqrt(x)| <= min(|x' - x| / sqrt(x), sqrt(|x' - x|)).
    Entries whose exact intermediates leave Acc's range (float32 gt^2 of 1e20 overflows;
    the float64 oracle does not) are skipped, and so are those where the bound on D
    exceeds D (the kernel's D could be 0)."""
    dtype = t["params"].dtype
    u, sa, big = _units(dtype)
    p, g, a, c = _f64(t["params"]), _f64(t["grads"]), _f64(t.get("anchor_grads")), _f64(t.get("control"))
    m, v = _f64(t["exp_avg"]), _f64(t["exp_avg_sq"])
    b1, b2, eps, step = s["beta1"], s["beta2"], s["eps"], s["step"]
    t1, t2 = 1.0 - b1, 1.0 - b2
    ss = abs(s["lr"] / (1.0 - b1**step))
    sb = math.sqrt(1.0 - b2**step)
    gt, G, adds = g, g.abs(), 0
    for x, sign in ((a, -1.0), (c, 1.0)):
        if x is not None:
            gt, G, adds = gt + sign * x, G + x.abs(), adds + 1
    e_gt = adds * u * G
    m1 = b1 * m + t1 * gt
    e_m1 = 3 * u * (b1 * m.abs() + t1 * gt.abs()) + t1 * e_gt + sa * (m.abs() + gt.abs() + e_gt + 2)
    gg = gt * gt
    e_gg = 2 * gt.abs() * e_gt + e_gt * e_gt + u * gg + sa
    v1 = b2 * v + t2 * gg
    e_v1 = 3 * u * (b2 * v.abs() + t2 * gg) + t2 * e_gg + sa * (v.abs() + gg + 2)
    root = v1.clamp(min=0).sqrt()
    e_s = torch.minimum(torch.where(root > 0, e_v1 / root, torch.inf), e_v1.sqrt()) + u * root
    e_q0 = e_s / sb + 2 * u * root / sb + sa
    D = root / sb + eps
    e_D = e_q0 + u * (eps + D) + sa
    D_lo = D - e_D
    q = m1 / D
    e_q = (e_m1 + m1.abs() * e_D / D_lo) / D_lo + u * q.abs() + sa
    err = (u * ss + sa) * (q.abs() + e_q) + ss * e_q + u * ss * q.abs() + sa + u * (p.abs() + ss * q.abs())
    fin = _all_finite(p, g, a, c, m, v)
    skip = (fin & (D_lo <= 0)) | _exceeds(
        big, G, gt, gg, b2 * v, t2 * gg, v1, b1 * m, t1 * gt, m1, root / sb, D, q, ss * q
    )
    if _scalar_underflows(dtype, s["lr"] / (1.0 - b1**step), b1, t1, b2, t2, sb, eps):
        skip |= ~fin
    return err, skip


def adam_stats_error(t, s):
    """m' = b1 m + t1 g: 3u of the terms; v' = b2 v + t2 g^2: 4u (g^2 rounds too); sa each."""
    u, sa, big = _units(t["exp_avg"].dtype)
    m, v, g = _f64(t["exp_avg"]), _f64(t["exp_avg_sq"]), _f64(t["grads"])
    b1, b2 = s["beta1"], s["beta2"]
    gg = g * g
    err_m = 3 * u * (b1 * m.abs() + (1 - b1) * g.abs()) + sa * (m.abs() + g.abs() + 2)
    err_v = 4 * u * (b2 * v.abs() + (1 - b2) * gg) + sa * (v.abs() + gg + 3)
    fin = _all_finite(m, v, g)
    skip = _exceeds(big, gg, b2 * v, (1 - b2) * gg, b2 * v + (1 - b2) * gg, b1 * m, (1 - b1) * g, m.abs() + g.abs())
    if _scalar_underflows(t["exp_avg"].dtype, b1, 1 - b1, b2, 1 - b2):
        skip |= ~fin
    return {"exp_avg": (err_m, skip), "exp_avg_sq": (err_v, skip)}


def mvr_error(t, s):
    """S = (m + g) - h: 2u of |m| + |g| + |h|; a g and (1 - a) S: 2u each (coefficient,
    product) plus the error of S; the last sum u."""
    u, sa, big = _units(t["momentum"].dtype)
    m, g, h = _f64(t["momentum"]), _f64(t["grads"]), _f64(t["prev_grads"])
    a = s["a"]
    S = (m + g) - h
    e_S = 2 * u * (m.abs() + g.abs() + h.abs())
    err = 3 * u * (a * g.abs() + (1 - a) * S.abs()) + (1 - a) * e_S + sa * (g.abs() + S.abs() + e_S + 2)
    fin = _all_finite(m, g, h)
    skip = _exceeds(big, m.abs() + g.abs() + h.abs())
    if _scalar_underflows(t["momentum"].dtype, a, 1 - a):
        skip |= ~fin
    return err, skip


def oracle(op: str, t: dict, s: dict) -> dict:
    """{written list: (float64 oracle value, error bound, entries to skip)}."""
    one = {k: (None if v is None else [v]) for k, v in t.items()}
    if op == "client_step_":
        want = reference.client_step(
            one["params"],
            one["grads"],
            anchor_grads=one.get("anchor_grads"),
            control=one.get("control"),
            momentum=one.get("momentum"),
            **s,
        )[0]
        return {"params": (want, *client_error(t, s))}
    if op == "adam_client_step_":
        want = reference.adam_client_step(
            one["params"],
            one["grads"],
            one["exp_avg"],
            one["exp_avg_sq"],
            anchor_grads=one.get("anchor_grads"),
            control=one.get("control"),
            **s,
        )[0]
        return {"params": (want, *adam_client_error(t, s))}
    if op == "adam_stats_update_":
        ms, vs = reference.adam_stats_update(one["exp_avg"], one["exp_avg_sq"], one["grads"], **s)
        errs = adam_stats_error(t, s)
        return {"exp_avg": (ms[0], *errs["exp_avg"]), "exp_avg_sq": (vs[0], *errs["exp_avg_sq"])}
    want = reference.mvr_update(one["momentum"], one["grads"], one["prev_grads"], **s)[0]
    return {"momentum": (want, *mvr_error(t, s))}


def assert_within(
    got: torch.Tensor,
    want: torch.Tensor,
    err: torch.Tensor,
    what: str,
    skip: torch.Tensor | None = None,
    inputs: dict | None = None,
) -> None:
    """got (any dtype) against the float64 oracle: |got - want| <= 2 err + eps(dtype) |want|
    + 4 subnormal steps of the dtype (the final rounding); NaN exactly where want has NaN;
    infinities equal, or got = +-inf where want is within that tolerance of the dtype's
    overflow threshold; where the bound is not finite (non-finite inputs) got must equal
    want. Entries in skip are left to the bit-exact comparison."""
    ft = torch.finfo(got.dtype)
    got64 = got.to(torch.float64)
    tol = 2 * err + ft.eps * want.abs() + 4 * ft.tiny * ft.eps
    bad = got64.isnan() != want.isnan()
    bad |= want.isinf() & (got64 != want)
    close = got64.isfinite() & ((got64 - want).abs() <= tol)
    overflow = got64.isinf() & (got64.sign() == want.sign()) & (want.abs() + tol >= ft.max)
    bad |= want.isfinite() & ~(close | overflow | (got64 == want))
    if skip is not None:
        bad &= ~skip
    if bad.any():
        j = int(bad.reshape(-1).nonzero()[0])
        at = ", ".join(f"{k}={v.reshape(-1)[j].item()!r}" for k, v in (inputs or {}).items() if v is not None)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} out of tolerance; first at flat index {j} ({at}): "
            f"got {got64.reshape(-1)[j].item()!r}, oracle {want.reshape(-1)[j].item()!r}, "
            f"tol {tol.reshape(-1)[j].item()!r}"
        )


def check_written(op: str, t: dict, s: dict, got: dict, what: str, with_oracle: bool = True) -> None:
    """The written tensors (got: name -> new value) against the expression (bits) and the oracle."""
    want_bits = expression_values(op, t, s)
    for name in fc.WRITTEN[op]:
        assert_same_bits(got[name], want_bits[name], f"{what}: {name} vs expression")
    if with_oracle:
        for name, (want, err, skip) in oracle(op, t, s).items():
            assert_within(got[name], want, err, f"{what}: {name} vs oracle", skip, t)


# --- Random lists ---------------------------------------------------------------


coefs = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 0.9, 0.1, -0.1, 0.5, 1 / 3]), st.floats(-2.0, 2.0))
unit_open = st.one_of(st.sampled_from([0.0, 0.9, 0.99, 0.999, 0.5]), st.floats(0.0, 1.0, exclude_max=True))
SCALAR_STRATEGIES = {
    "client_step_": dict(
        lr=st.one_of(st.sampled_from([0.1, 1.0, 1e-3, 0.0, -0.5]), st.floats(-2.0, 2.0)),
        coef_grad=coefs,
        coef_anchor=coefs,
        coef_control=coefs,
        coef_momentum=coefs,
    ),
    "adam_client_step_": dict(
        lr=st.one_of(st.sampled_from([1e-3, 0.1, 1.0, 0.0, -0.01]), st.floats(-1.0, 1.0)),
        beta1=unit_open,
        beta2=unit_open,
        eps=st.one_of(st.sampled_from([1e-8, 1e-6, 1e-3, 0.1]), st.floats(1e-12, 1.0)),
        step=st.one_of(st.sampled_from([1, 2, 10, 1000]), st.integers(1, 10**6)),
    ),
    "adam_stats_update_": dict(beta1=fc.unit_interval, beta2=fc.unit_interval),
    "mvr_update_": dict(a=fc.unit_interval),
}


def run_random_case(op: str, specs: list, present: dict, scalars: dict, device: str = "cpu") -> None:
    """Build the lists, run the op on device, check every tensor: written ones in place, bit for
    bit against the expression and within rounding of the oracle; read ones unchanged."""
    names = OP_LISTS[op]
    cols = [spec.tensors(names, NON_NEGATIVE.get(op, ())) for spec in specs]
    lists = {n: ([fc.to_device(c[n], device) for c in cols] if present.get(n, True) else None) for n in names}
    ptrs = {n: [x.data_ptr() for x in lists[n]] for n in fc.WRITTEN[op]}
    call_op(op, lists, scalars)
    for i, (spec, col) in enumerate(zip(specs, cols)):
        what = (
            f"{device}: {op} tensor {i} of {len(specs)}: {spec}, {scalars}, "
            f"absent {[n for n in names if lists[n] is None]}"
        )
        t = {n: (col[n] if lists[n] is not None else None) for n in names}
        for n in fc.WRITTEN[op]:
            assert lists[n][i].data_ptr() == ptrs[n][i], f"{what}: {n} not updated in place"
        check_written(op, t, scalars, {n: lists[n][i].cpu() for n in fc.WRITTEN[op]}, what)
        for n in names:
            if n not in fc.WRITTEN[op] and lists[n] is not None:
                assert_same_bits(lists[n][i], col[n], f"{what}: {n} written")


@st.composite
def random_cases(draw, op, dtypes):
    specs = draw(fc.lists_specs(len(OP_LISTS[op]), dtypes))
    present = {n: draw(st.booleans()) for n in OPTIONAL[op]}
    scalars = {k: draw(v) for k, v in SCALAR_STRATEGIES[op].items()}
    return specs, present, scalars


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", UPDATE_OPS)
@settings(max_examples=30, **fc.SETTINGS)
@given(data=st.data())
def test_random_lists_one_dtype(device, op, dtype, data):
    run_random_case(op, *data.draw(random_cases(op, [dtype])), device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", UPDATE_OPS)
@settings(max_examples=50, **fc.SETTINGS)
@given(data=st.data())
def test_random_lists_mixed_dtypes(device, op, data):
    run_random_case(op, *data.draw(random_cases(op, DTYPES)), device)


# --- Hand-derived cases ----------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_client_step_each_coefficient_weighs_its_own_list(dtype):
    """One list at a time holds values, the others zeros: p - lr k x with that list's k."""
    names = ("grads", "anchor_grads", "control", "momentum")
    k = dict(coef_grad=1.0, coef_anchor=2.0, coef_control=4.0, coef_momentum=8.0)
    for j, name in enumerate(names):
        vals = {n: torch.zeros(3, dtype=dtype) for n in names}
        vals[name] = torch.tensor([1.0, -2.0, 0.5], dtype=dtype)
        p = torch.full((3,), 16.0, dtype=dtype)
        robustagg.ops.client_step_(
            [p],
            [vals["grads"]],
            2.0,
            anchor_grads=[vals["anchor_grads"]],
            control=[vals["control"]],
            momentum=[vals["momentum"]],
            **k,
        )
        w = 2.0**j
        assert p.tolist() == [16.0 - 2 * w, 16.0 + 4 * w, 16.0 - w], (name, p.tolist())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_client_step_sgd_is_p_minus_lr_g(dtype):
    """coef_grad = 1 alone: 1 * g is g, so the step is exactly fl(p - fl(lr g)) in Acc; for
    float32/float64 that is p - lr * g in the dtype itself."""
    gen = torch.Generator().manual_seed(21)
    p = fc.randn(3 * fc.PIECE + 5, gen, dtype)
    g = make_matrix(MatrixSpec(1, 3 * fc.PIECE + 5, 4, "magnitudes"), dtype).reshape(-1)
    lr = 0.05
    got = p.clone()
    robustagg.ops.client_step_([got], [g], lr)
    A = fc.acc_dtype(dtype)
    assert_same_bits(got, (p.to(A) - g.to(A) * fc.acc_scalar(lr, dtype)).to(dtype), "p - lr g in Acc")
    if dtype in (torch.float32, torch.float64):
        assert_same_bits(got, p - lr * g, "p - lr * g")
    small = torch.tensor([1.0, -3.0, 0.0], dtype=dtype)
    robustagg.ops.client_step_([small], [torch.tensor([0.25, 0.5, -4.0], dtype=dtype)], 2.0)
    assert small.tolist() == [0.5, -4.0, 8.0]  # p - lr g, not p + lr g


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_client_step_mime_sgdm_with_grads_equal_to_anchor(dtype):
    """Mime with SGDm: k_g = 1 - b, k_a = -(1 - b), k_c = 1 - b, k_m = b. With a = g the
    first two products are x and -x exactly (rounding is symmetric), their sum is 0, and
    0 + y = y, so the step is exactly the frozen-momentum step (1 - b) c + b m on (c, m)
    (MimeLite coefficients with c as the gradient), up to the sign of a zero result;
    and within rounding of p - lr ((1 - b) c + b m)."""
    gen = torch.Generator().manual_seed(22)
    n = 2 * fc.PIECE + 9
    p, g, c, m = (fc.randn(n, gen, dtype) for _ in range(4))
    b, lr = 0.9, 0.1
    mime = p.clone()
    robustagg.ops.client_step_(
        [mime],
        [g],
        lr,
        anchor_grads=[g.clone()],
        control=[c],
        momentum=[m],
        coef_grad=1 - b,
        coef_anchor=-(1 - b),
        coef_control=1 - b,
        coef_momentum=b,
    )
    lite = p.clone()
    robustagg.ops.client_step_([lite], [c], lr, momentum=[m], coef_grad=1 - b, coef_momentum=b)
    assert torch.equal(mime, lite)
    want = p.double() - lr * ((1 - b) * c.double() + b * m.double())
    t = dict(params=p, grads=g, anchor_grads=g, control=c, momentum=m)
    err, _ = client_error(t, dict(lr=lr, coef_grad=1 - b, coef_anchor=-(1 - b), coef_control=1 - b, coef_momentum=b))
    assert_within(mime, want, err, "Mime SGDm vs p - lr((1 - b) c + b m)")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_client_step_absent_lists_are_not_read(dtype):
    """A present list is read and its term added even with coefficient 0 (0 * NaN and
    0 * inf are NaN); an absent list holding the same NaN/inf is not read: finite result.
    And an absent term is not added at all, not even as +0: with p = g = -0.0 and lr = 1,
    absent lists give -0 - (1 * -0) = +0, while a present zero list with coefficient 0 makes
    d = -0 + 0 = +0 and p - d = -0."""
    gen = torch.Generator().manual_seed(23)
    p, g = fc.randn((40, 50), gen, dtype), fc.randn((40, 50), gen, dtype)
    for bad_value in (math.nan, math.inf):
        poison = torch.full((40, 50), bad_value, dtype=dtype)
        for name in OPTIONAL["client_step_"]:
            got = p.clone()
            robustagg.ops.client_step_([got], [g], 0.1, **{name: [poison]})  # its coefficient defaults to 0
            assert got.isnan().all(), (name, bad_value)
            got = p.clone()
            robustagg.ops.client_step_(
                [got], [g], 0.1, **{name: [poison]}, coef_anchor=0.0, coef_control=0.0, coef_momentum=0.0
            )
            assert got.isnan().all(), (name, bad_value)
    got = p.clone()
    robustagg.ops.client_step_([got], [g], 0.1, coef_anchor=1.0, coef_control=1.0, coef_momentum=1.0)
    assert got.isfinite().all()
    assert_same_bits(got, fc.client_expr(p, g, None, None, None, 0.1), "absent lists")
    neg_zero = torch.tensor([-0.0], dtype=dtype)
    absent = neg_zero.clone()
    robustagg.ops.client_step_([absent], [neg_zero], 1.0)
    assert absent.item() == 0 and not absent.signbit().item(), "absent terms: -0 - (-0) = +0"
    for name in OPTIONAL["client_step_"]:
        present = neg_zero.clone()
        robustagg.ops.client_step_([present], [neg_zero], 1.0, **{name: [torch.zeros(1, dtype=dtype)]})
        assert present.item() == 0 and present.signbit().item(), f"present zero {name}: -0 - (+0) = -0"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_adam_client_step_absent_lists_are_not_read(dtype):
    """As for client_step_: a present NaN/inf anchor or control poisons the corrected gradient
    (inf - inf or inf / inf gives NaN), an absent one is not read; and an absent term is not
    added as a zero (p = g = m = -0, v = 0: absent gives +0, a present -0 anchor or +0
    control turns gt, m' and the step into +0 and the result into -0)."""
    gen = torch.Generator().manual_seed(24)
    shape = (fc.PIECE + 3,)
    p, g, m = (fc.randn(shape, gen, dtype) for _ in range(3))
    v = fc.randn(shape, gen, dtype).abs()
    s = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, step=4)
    for name in OPTIONAL["adam_client_step_"]:
        for bad_value in (math.nan, math.inf):
            got = p.clone()
            robustagg.ops.adam_client_step_(
                [got], [g], [m], [v], **s, **{name: [torch.full(shape, bad_value, dtype=dtype)]}
            )
            assert got.isnan().all(), (name, bad_value)
    got = p.clone()
    robustagg.ops.adam_client_step_([got], [g], [m], [v], **s)
    assert got.isfinite().all()
    assert_same_bits(got, fc.adam_client_expr(p, g, None, None, m, v, **s), "absent anchor and control")
    nz = torch.tensor([-0.0], dtype=dtype)
    zero = torch.zeros(1, dtype=dtype)
    absent = nz.clone()
    robustagg.ops.adam_client_step_([absent], [nz], [nz], [zero], **s)
    assert absent.item() == 0 and not absent.signbit().item()
    for name, z in (("anchor_grads", nz), ("control", zero)):
        present = nz.clone()
        robustagg.ops.adam_client_step_([present], [nz], [nz], [zero], **s, **{name: [z]})
        assert present.item() == 0 and present.signbit().item(), name


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_adam_client_step_first_step_from_zero_state(dtype):
    """From m = v = 0 at step 1: m' = (1 - b1) g, v' = (1 - b2) g^2, bc1 = 1 - b1 and
    bc2 = 1 - b2, so the step is lr/(1 - b1) (1 - b1) g / (sqrt((1 - b2) g^2)/sqrt(1 - b2) + eps)
    = lr g / (|g| + eps): a sign step for |g| >> eps, whatever the betas.

    With b1 = b2 = 0 it is even exact in Acc: bc1 = bc2 = 1, so lr / bc1 = lr and
    sqrt(bc2) = 1 exactly, m' = 1 * g = g, v' = fl(g^2), and sqrt(fl(g^2)) = |g| in binary
    floating point (no under/overflow): the result is fl(p - fl(fl(g / fl(|g| + eps)) lr)).
    With b1 = 0.9, b2 = 0.999 the roundings of (1 - b), the products and the corrections
    leave a relative error of a few u on the step (lr |g| / (|g| + eps) <= |lr|): allowed
    16 u |lr| + the rounding of p - step and of the final cast."""
    gen = torch.Generator().manual_seed(25)
    n = 2 * fc.PIECE + 1
    p, g = fc.randn(n, gen, dtype), fc.randn(n, gen, dtype, scale=1e-3)
    g[:5] = torch.tensor([0.0, -0.0, 1e-8, -3e-8, 2.0])
    zero = torch.zeros(n, dtype=dtype)
    A = fc.acc_dtype(dtype)
    for lr, eps in ((1e-2, 1e-8), (0.5, 1e-4), (-1e-3, 1.0)):
        got = p.clone()
        robustagg.ops.adam_client_step_([got], [g], [zero], [zero], lr, 0.0, 0.0, eps, 1)
        ga = g.to(A)
        want = (p.to(A) - (ga / (ga.abs() + fc.acc_scalar(eps, dtype))) * fc.acc_scalar(lr, dtype)).to(dtype)
        assert_same_bits(got, want, f"b1 = b2 = 0, lr={lr}, eps={eps}")
        u = torch.finfo(A).eps / 2
        for b1, b2 in ((0.9, 0.999), (0.5, 0.9), (0.99, 0.0)):
            got = p.clone()
            robustagg.ops.adam_client_step_([got], [g], [zero], [zero], lr, b1, b2, eps, 1)
            p64, g64 = p.double(), g.double()
            want = p64 - lr * g64 / (g64.abs() + eps)
            err = 16 * u * abs(lr) + u * (p64.abs() + abs(lr))
            assert_within(got, want, err, f"b1={b1}, b2={b2}, lr={lr}, eps={eps}: p - lr g / (|g| + eps)")
    got = p.clone()
    robustagg.ops.adam_client_step_([got], [g], [zero], [zero], 0.1, 0.9, 0.999, 1e-8, 1)
    assert torch.equal(got[:2], p[:2]), "g = 0 from zero state: no step"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_adam_client_step_constant_gradient_at_any_step(dtype):
    """After t - 1 Adam steps of the same gradient g from zero state, m = (1 - b1^(t-1)) g and
    v = (1 - b2^(t-1)) g^2; the bias-corrected step t is again lr g / (|g| + eps). A wrong
    bias correction (step - 1, bc2 for sqrt(bc2), none) fails for small t. Stored in the
    dtype, m and v carry one rounding each: allowed 32 eps(dtype) |lr| + eps(dtype) |p|."""
    gen = torch.Generator().manual_seed(26)
    n = 1000
    p, g = fc.randn(n, gen, dtype), fc.randn(n, gen, dtype, scale=1e-2)
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    for t in (1, 2, 3, 10, 1000):
        g64 = g.double()
        m = ((1 - b1 ** (t - 1)) * g64).to(dtype)
        v = ((1 - b2 ** (t - 1)) * g64 * g64).to(dtype)
        got = p.clone()
        robustagg.ops.adam_client_step_([got], [g], [m], [v], lr, b1, b2, eps, t)
        want = p.double() - lr * g64 / (g64.abs() + eps)
        ft = torch.finfo(dtype)
        err = 32 * ft.eps * lr + ft.eps * p.double().abs()
        assert_within(got, want, err / 2, f"constant gradient, step {t}")
        oracle_p = reference.adam_client_step([p], [g], [m], [v], lr, b1, b2, eps, t)[0]
        assert_within(oracle_p.to(dtype), want, err / 2, f"oracle, constant gradient, step {t}")


def test_adam_ops_match_torch_optim_adam():
    """float64: adam_client_step_ is the parameter update torch.optim.Adam (foreach=False)
    makes from state (m, v, t - 1 steps) with gradient (g - a) + c, and adam_stats_update_
    is the state it leaves (torch uses lerp for m, so rounding differs slightly)."""
    gen = torch.Generator().manual_seed(27)
    for t, (b1, b2), eps, lr in (
        (1, (0.9, 0.999), 1e-8, 1e-3),
        (5, (0.8, 0.99), 1e-6, 0.1),
        (1234, (0.5, 0.9), 1e-3, 1.0),
    ):
        p, g, a, c, m = (fc.randn((17, 33), gen, torch.float64) for _ in range(5))
        v = fc.randn((17, 33), gen, torch.float64) ** 2
        gt = (g - a) + c
        q = p.clone()
        opt = torch.optim.Adam([q], lr=lr, betas=(b1, b2), eps=eps, foreach=False)
        opt.state[q] = {"step": torch.tensor(float(t - 1)), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
        q.grad = gt.clone()
        opt.step()
        got = p.clone()
        robustagg.ops.adam_client_step_([got], [g], [m], [v], lr, b1, b2, eps, t, anchor_grads=[a], control=[c])
        torch.testing.assert_close(got, q.detach(), rtol=1e-12, atol=1e-15 * lr)
        ms, vs = m.clone(), v.clone()
        robustagg.ops.adam_stats_update_([ms], [vs], [gt], b1, b2)
        scale_m = b1 * m.abs() + (1 - b1) * gt.abs()
        scale_v = b2 * v + (1 - b2) * gt * gt
        assert ((ms - opt.state[q]["exp_avg"]).abs() <= 1e-14 * scale_m).all()
        assert ((vs - opt.state[q]["exp_avg_sq"]).abs() <= 1e-14 * scale_v).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_adam_stats_known_values_and_edge_betas(dtype):
    """b1 on m and g, b2 on v and g^2 (not swapped, and g squared): m = 8, v = 4, g = 3,
    b1 = 0.75, b2 = 0.5 give m = 6 + 0.75 = 6.75 and v = 2 + 4.5 = 6.5. beta = 0 takes g
    (and fl(g^2)), beta = 1 keeps the state for finite g."""
    m, v = torch.full((3,), 8.0, dtype=dtype), torch.full((3,), 4.0, dtype=dtype)
    robustagg.ops.adam_stats_update_([m], [v], [torch.full((3,), 3.0, dtype=dtype)], 0.75, 0.5)
    assert m.tolist() == [6.75] * 3 and v.tolist() == [6.5] * 3, (m, v)
    gen = torch.Generator().manual_seed(28)
    m0, v0, g = (fc.randn(fc.PIECE + 7, gen, dtype) for _ in range(3))
    m, v = m0.clone(), v0.clone()
    robustagg.ops.adam_stats_update_([m], [v], [g], 0.0, 0.0)
    A = fc.acc_dtype(dtype)
    assert torch.equal(m, g) and torch.equal(v, (g.to(A) * g.to(A)).to(dtype))
    m, v = m0.clone(), v0.clone()
    robustagg.ops.adam_stats_update_([m], [v], [g], 1.0, 1.0)
    assert torch.equal(m, m0) and torch.equal(v, v0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mvr_known_values(dtype):
    """a = 1 gives g exactly (0 * finite adds nothing); a = 0 gives (m + g) - g_prev in Acc;
    m = 8, g = 4, g_prev = 2, a = 0.25: 0.25 * 4 + 0.75 * (12 - 2) = 8.5 (a on g, g_prev
    subtracted)."""
    m = torch.full((2,), 8.0, dtype=dtype)
    robustagg.ops.mvr_update_([m], [torch.full((2,), 4.0, dtype=dtype)], [torch.full((2,), 2.0, dtype=dtype)], 0.25)
    assert m.tolist() == [8.5, 8.5], m
    gen = torch.Generator().manual_seed(29)
    m0, g, h = (fc.randn(2 * fc.PIECE + 3, gen, dtype) for _ in range(3))
    got = m0.clone()
    robustagg.ops.mvr_update_([got], [g], [h], 1.0)
    assert torch.equal(got, g)
    got = m0.clone()
    robustagg.ops.mvr_update_([got], [g], [h], 0.0)
    A = fc.acc_dtype(dtype)
    assert_same_bits(got, ((m0.to(A) + g.to(A)) - h.to(A)).to(dtype), "a = 0")
    if dtype in (torch.float32, torch.float64):
        assert_same_bits(got, (m0 + g) - h, "a = 0 in the dtype")


# --- Layouts, threads, empty lists -------------------------------------------------


def _op_tensors(op: str, shape, gen, dtype) -> dict:
    """One tensor per list of op (Adam's second moment non-negative)."""
    out = {}
    for name in OP_LISTS[op]:
        x = fc.randn(shape, gen, dtype)
        out[name] = x.abs() if name in NON_NEGATIVE.get(op, ()) else x
    return out


VIEWS = fc.views(4 * fc.PIECE + 6)  # big strided: 3 * (2 * PIECE + 3) elements


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("view", list(VIEWS), ids=str)
@pytest.mark.parametrize("op", UPDATE_OPS)
def test_non_contiguous(device, op, view, dtype):
    """Every list strided at once, then strided written lists with contiguous read lists: the
    written views keep their storage and strides, their bases change exactly under the view,
    every read list (the Adam state of adam_client_step_ included) is untouched."""
    fn, base_shape = VIEWS[view]
    gen = torch.Generator().manual_seed(len(view) + len(op))
    s = SCALARS[op]
    for strided_reads in (True, False):
        bases = {n: b.to(device) for n, b in _op_tensors(op, base_shape, gen, dtype).items()}
        before = {n: b.clone() for n, b in bases.items()}
        lists = {n: fn(b) if (strided_reads or n in fc.WRITTEN[op]) else fn(b).contiguous() for n, b in bases.items()}
        old = {n: x.clone() for n, x in lists.items()}
        layout = {n: (x.data_ptr(), x.stride()) for n, x in lists.items()}
        assert not lists[fc.WRITTEN[op][0]].is_contiguous()
        call_op(op, {n: [x] for n, x in lists.items()}, s)
        what = f"{device}: {op}, {view}, strided reads {strided_reads}"
        check_written(op, {n: x.cpu() for n, x in old.items()}, s, lists, what, with_oracle=False)
        for n, x in lists.items():
            assert (x.data_ptr(), x.stride()) == layout[n], f"{what}: {n} lost its storage or strides"
            if n in fc.WRITTEN[op]:
                expected_base = before[n].clone()
                fn(expected_base).copy_(x)
                assert_same_bits(bases[n], expected_base, f"{what}: base of {n}")
            else:
                assert_same_bits(x, old[n], f"{what}: {n} written")
                if strided_reads:
                    assert_same_bits(bases[n], before[n], f"{what}: base of {n} written")


def test_thread_count_does_not_change_results():
    gen = torch.Generator().manual_seed(31)
    sizes = [5 * fc.PIECE + 3, 17, 0, 2 * fc.PIECE, fc.PIECE + 1, 3, 4 * fc.PIECE - 1, 1000, 7 * fc.PIECE]
    for op in UPDATE_OPS:
        cols = [_op_tensors(op, (n,), gen, DTYPES[i % len(DTYPES)]) for i, n in enumerate(sizes)]

        def run():
            lists = {name: [c[name].clone() for c in cols] for name in OP_LISTS[op]}
            call_op(op, lists, SCALARS[op])
            return lists

        def check(lists, threads):
            for i, col in enumerate(cols):
                want = expression_values(op, col, SCALARS[op])
                for name in fc.WRITTEN[op]:
                    assert_same_bits(lists[name][i], want[name], f"{op} {name}[{i}], {threads} threads")

        fc.check_thread_counts(run, check)


def test_empty_lists_are_a_no_op_but_scalars_are_still_checked():
    ops = robustagg.ops
    ops.client_step_([], [], 0.1)
    ops.client_step_([], [], 0.1, anchor_grads=[], control=[], momentum=[], coef_anchor=1.0)
    ops.adam_client_step_([], [], [], [], 1e-3, 0.9, 0.999, 1e-8, 1, anchor_grads=[], control=[])
    ops.adam_stats_update_([], [], [], 0.9, 0.999)
    ops.mvr_update_([], [], [], 0.5)
    bad = [
        (lambda: ops.client_step_([], [], math.nan), ValueError, "client_step_: lr must be finite, got lr=nan"),
        (
            lambda: ops.client_step_([], [], 0.1, control=[], coef_control=math.inf),
            ValueError,
            "client_step_: coef_control must be finite, got coef_control=inf",
        ),
        (lambda: ops.client_step_([], [], "0.1"), TypeError, "client_step_: lr must be a float, got str"),
        (
            lambda: ops.adam_client_step_([], [], [], [], 1e-3, 1.0, 0.999, 1e-8, 1),
            ValueError,
            "adam_client_step_: beta1 must be in [0, 1), got beta1=1",
        ),
        (
            lambda: ops.adam_client_step_([], [], [], [], 1e-3, 0.9, 0.999, 0.0, 1),
            ValueError,
            "adam_client_step_: eps must be finite and > 0, got eps=0",
        ),
        (
            lambda: ops.adam_client_step_([], [], [], [], 1e-3, 0.9, 0.999, 1e-8, 0, control=[]),
            ValueError,
            "adam_client_step_: step must be >= 1, got step=0",
        ),
        (
            lambda: ops.adam_stats_update_([], [], [], 0.9, 1.5),
            ValueError,
            "adam_stats_update_: beta2 must be in [0, 1], got beta2=1.5",
        ),
        (lambda: ops.mvr_update_([], [], [], -0.5), ValueError, "mvr_update_: a must be in [0, 1], got a=-0.5"),
        (lambda: ops.mvr_update_([], [], [], True), TypeError, "mvr_update_: a must be a float, got bool"),
    ]
    for call, exc, message in bad:
        with pytest.raises(exc, match=re.escape(message)):
            call()


@pytest.mark.parametrize("op", ["client_step_", "adam_client_step_"])
def test_empty_params_with_a_non_empty_optional_list_is_a_length_error(op):
    lists = {n: [] for n in OP_LISTS[op]}
    lists["control"] = [torch.ones(3)]
    with pytest.raises(
        ValueError, match=re.escape(f"{op}: params and control must be equally long lists, got 0 and 1 tensors")
    ):
        call_op(op, lists, SCALARS[op])


# --- Argument checks ------------------------------------------------------------------


def valid(op: str) -> dict:
    """Valid arguments of op (two tensors per list) as keywords of its wrapper."""
    return {**{n: [fc.ones(3), fc.ones(2, 2)] for n in OP_LISTS[op]}, **SCALARS[op]}


_int = dict(dtype=torch.int64)
_LIST_MSG = "must be equally long lists, got 2 and "
# id: (op, overrides of the valid arguments, exception, message, also raised by the native op)
ERRORS = {
    # client_step_
    "client: grads shorter": (
        "client_step_",
        dict(grads=[fc.ones(3)]),
        ValueError,
        "client_step_: params and grads must be equally long lists, got 2 and 1 tensors",
        True,
    ),
    "client: anchor_grads longer": (
        "client_step_",
        dict(anchor_grads=[fc.ones(3), fc.ones(2, 2), fc.ones(1)]),
        ValueError,
        "client_step_: params and anchor_grads " + _LIST_MSG + "3 tensors",
        True,
    ),
    "client: control shape": (
        "client_step_",
        dict(control=[fc.ones(3), fc.ones(4)]),
        ValueError,
        "client_step_: control[1] must have params[1]'s shape [2, 2], got [4]",
        True,
    ),
    "client: momentum dtype": (
        "client_step_",
        dict(momentum=[fc.ones(3), fc.ones(2, 2, dtype=torch.float64)]),
        TypeError,
        "client_step_: momentum[1] must have params[1]'s dtype Float, got Double",
        True,
    ),
    "client: integer params": (
        "client_step_",
        dict(params=[fc.ones(3, **_int)], grads=[fc.ones(3, **_int)], anchor_grads=None, control=None, momentum=None),
        TypeError,
        "client_step_: params[0] must be float32, float64, float16 or bfloat16, got Long",
        True,
    ),
    "client: integer control": (
        "client_step_",
        dict(control=[fc.ones(3, dtype=torch.int32), fc.ones(2, 2)]),
        TypeError,
        "client_step_: control[0] must have params[0]'s dtype Float, got Int",
        True,
    ),
    "client: lr nan": (
        "client_step_",
        dict(lr=math.nan),
        ValueError,
        "client_step_: lr must be finite, got lr=nan",
        True,
    ),
    "client: lr inf": (
        "client_step_",
        dict(lr=math.inf),
        ValueError,
        "client_step_: lr must be finite, got lr=inf",
        True,
    ),
    "client: coef_grad -inf": (
        "client_step_",
        dict(coef_grad=-math.inf),
        ValueError,
        "client_step_: coef_grad must be finite, got coef_grad=-inf",
        True,
    ),
    "client: coef_anchor nan": (
        "client_step_",
        dict(coef_anchor=math.nan),
        ValueError,
        "client_step_: coef_anchor must be finite, got coef_anchor=nan",
        True,
    ),
    "client: coef_control inf": (
        "client_step_",
        dict(coef_control=math.inf),
        ValueError,
        "client_step_: coef_control must be finite, got coef_control=inf",
        True,
    ),
    "client: coef_momentum nan, list absent": (
        "client_step_",
        dict(momentum=None, coef_momentum=math.nan),
        ValueError,
        "client_step_: coef_momentum must be finite, got coef_momentum=nan",
        True,
    ),
    "client: params a tensor": (
        "client_step_",
        dict(params=fc.ones(3)),
        TypeError,
        "client_step_: params must be a list of tensors, got Tensor",
        False,
    ),
    "client: momentum a generator": (
        "client_step_",
        dict(momentum=(t for t in [fc.ones(3), fc.ones(2, 2)])),
        TypeError,
        "client_step_: momentum must be a list of tensors, got generator",
        False,
    ),
    "client: grads element": (
        "client_step_",
        dict(grads=[fc.ones(3), None]),
        TypeError,
        "client_step_: grads[1] must be a torch.Tensor, got NoneType",
        False,
    ),
    "client: lr a bool": (
        "client_step_",
        dict(lr=True),
        TypeError,
        "client_step_: lr must be a float, got bool",
        False,
    ),
    "client: coef_control a str": (
        "client_step_",
        dict(coef_control="1"),
        TypeError,
        "client_step_: coef_control must be a float, got str",
        False,
    ),
    # adam_client_step_
    "adam: exp_avg shorter": (
        "adam_client_step_",
        dict(exp_avg=[fc.ones(3)]),
        ValueError,
        "adam_client_step_: params and exp_avg must be equally long lists, got 2 and 1 tensors",
        True,
    ),
    "adam: exp_avg_sq shape": (
        "adam_client_step_",
        dict(exp_avg_sq=[fc.ones(3), fc.ones(2, 3)]),
        ValueError,
        "adam_client_step_: exp_avg_sq[1] must have params[1]'s shape [2, 2], got [2, 3]",
        True,
    ),
    "adam: anchor_grads dtype": (
        "adam_client_step_",
        dict(anchor_grads=[fc.ones(3, dtype=torch.float16), fc.ones(2, 2)]),
        TypeError,
        "adam_client_step_: anchor_grads[0] must have params[0]'s dtype Float, got Half",
        True,
    ),
    "adam: control longer": (
        "adam_client_step_",
        dict(control=[fc.ones(3), fc.ones(2, 2), fc.ones(2)]),
        ValueError,
        "adam_client_step_: params and control " + _LIST_MSG + "3 tensors",
        True,
    ),
    "adam: integer params": (
        "adam_client_step_",
        {n: [fc.ones(3, **_int)] for n in OP_LISTS["adam_client_step_"]},
        TypeError,
        "adam_client_step_: params[0] must be float32, float64, float16 or bfloat16, got Long",
        True,
    ),
    "adam: lr nan": (
        "adam_client_step_",
        dict(lr=math.nan),
        ValueError,
        "adam_client_step_: lr must be finite, got lr=nan",
        True,
    ),
    "adam: beta1 = 1": (
        "adam_client_step_",
        dict(beta1=1.0),
        ValueError,
        "adam_client_step_: beta1 must be in [0, 1), got beta1=1",
        True,
    ),
    "adam: beta1 < 0": (
        "adam_client_step_",
        dict(beta1=-0.1),
        ValueError,
        "adam_client_step_: beta1 must be in [0, 1), got beta1=-0.1",
        True,
    ),
    "adam: beta2 = 1": (
        "adam_client_step_",
        dict(beta2=1.0),
        ValueError,
        "adam_client_step_: beta2 must be in [0, 1), got beta2=1",
        True,
    ),
    "adam: beta2 nan": (
        "adam_client_step_",
        dict(beta2=math.nan),
        ValueError,
        "adam_client_step_: beta2 must be in [0, 1), got beta2=nan",
        True,
    ),
    "adam: eps = 0": (
        "adam_client_step_",
        dict(eps=0.0),
        ValueError,
        "adam_client_step_: eps must be finite and > 0, got eps=0",
        True,
    ),
    "adam: eps < 0": (
        "adam_client_step_",
        dict(eps=-1e-8),
        ValueError,
        "adam_client_step_: eps must be finite and > 0, got eps=-1e-08",
        True,
    ),
    "adam: eps inf": (
        "adam_client_step_",
        dict(eps=math.inf),
        ValueError,
        "adam_client_step_: eps must be finite and > 0, got eps=inf",
        True,
    ),
    "adam: step 0": (
        "adam_client_step_",
        dict(step=0),
        ValueError,
        "adam_client_step_: step must be >= 1, got step=0",
        True,
    ),
    "adam: step < 0": (
        "adam_client_step_",
        dict(step=-3),
        ValueError,
        "adam_client_step_: step must be >= 1, got step=-3",
        True,
    ),
    "adam: step a float": (
        "adam_client_step_",
        dict(step=1.0),
        TypeError,
        "adam_client_step_: step must be an int, got float",
        False,
    ),
    "adam: step a bool": (
        "adam_client_step_",
        dict(step=True),
        TypeError,
        "adam_client_step_: step must be an int, got bool",
        False,
    ),
    "adam: beta2 a str": (
        "adam_client_step_",
        dict(beta2="0.99"),
        TypeError,
        "adam_client_step_: beta2 must be a float, got str",
        False,
    ),
    "adam: exp_avg a tensor": (
        "adam_client_step_",
        dict(exp_avg=fc.ones(3)),
        TypeError,
        "adam_client_step_: exp_avg must be a list of tensors, got Tensor",
        False,
    ),
    "adam: exp_avg_sq element": (
        "adam_client_step_",
        dict(exp_avg_sq=[fc.ones(3), 2.0]),
        TypeError,
        "adam_client_step_: exp_avg_sq[1] must be a torch.Tensor, got float",
        False,
    ),
    # adam_stats_update_
    "stats: exp_avg_sq shorter": (
        "adam_stats_update_",
        dict(exp_avg_sq=[fc.ones(3)]),
        ValueError,
        "adam_stats_update_: exp_avg and exp_avg_sq must be equally long lists, got 2 and 1 tensors",
        True,
    ),
    "stats: grads shape": (
        "adam_stats_update_",
        dict(grads=[fc.ones(4), fc.ones(2, 2)]),
        ValueError,
        "adam_stats_update_: grads[0] must have exp_avg[0]'s shape [3], got [4]",
        True,
    ),
    "stats: grads dtype": (
        "adam_stats_update_",
        dict(grads=[fc.ones(3), fc.ones(2, 2, dtype=torch.bfloat16)]),
        TypeError,
        "adam_stats_update_: grads[1] must have exp_avg[1]'s dtype Float, got BFloat16",
        True,
    ),
    "stats: integer exp_avg": (
        "adam_stats_update_",
        {n: [fc.ones(3, **_int)] for n in OP_LISTS["adam_stats_update_"]},
        TypeError,
        "adam_stats_update_: exp_avg[0] must be float32, float64, float16 or bfloat16, got Long",
        True,
    ),
    "stats: beta1 > 1": (
        "adam_stats_update_",
        dict(beta1=1.5),
        ValueError,
        "adam_stats_update_: beta1 must be in [0, 1], got beta1=1.5",
        True,
    ),
    "stats: beta2 < 0": (
        "adam_stats_update_",
        dict(beta2=-0.25),
        ValueError,
        "adam_stats_update_: beta2 must be in [0, 1], got beta2=-0.25",
        True,
    ),
    "stats: beta2 nan": (
        "adam_stats_update_",
        dict(beta2=math.nan),
        ValueError,
        "adam_stats_update_: beta2 must be in [0, 1], got beta2=nan",
        True,
    ),
    "stats: beta1 a bool": (
        "adam_stats_update_",
        dict(beta1=False),
        TypeError,
        "adam_stats_update_: beta1 must be a float, got bool",
        False,
    ),
    "stats: grads a tensor": (
        "adam_stats_update_",
        dict(grads=fc.ones(3)),
        TypeError,
        "adam_stats_update_: grads must be a list of tensors, got Tensor",
        False,
    ),
    # mvr_update_
    "mvr: prev_grads shorter": (
        "mvr_update_",
        dict(prev_grads=[fc.ones(3)]),
        ValueError,
        "mvr_update_: momentum and prev_grads must be equally long lists, got 2 and 1 tensors",
        True,
    ),
    "mvr: grads shape": (
        "mvr_update_",
        dict(grads=[fc.ones(3), fc.ones(4)]),
        ValueError,
        "mvr_update_: grads[1] must have momentum[1]'s shape [2, 2], got [4]",
        True,
    ),
    "mvr: prev_grads dtype": (
        "mvr_update_",
        dict(prev_grads=[fc.ones(3, dtype=torch.float64), fc.ones(2, 2)]),
        TypeError,
        "mvr_update_: prev_grads[0] must have momentum[0]'s dtype Float, got Double",
        True,
    ),
    "mvr: integer momentum": (
        "mvr_update_",
        {n: [fc.ones(3, dtype=torch.int16)] for n in OP_LISTS["mvr_update_"]},
        TypeError,
        "mvr_update_: momentum[0] must be float32, float64, float16 or bfloat16, got Short",
        True,
    ),
    "mvr: a > 1": ("mvr_update_", dict(a=1.5), ValueError, "mvr_update_: a must be in [0, 1], got a=1.5", True),
    "mvr: a < 0": ("mvr_update_", dict(a=-1e-3), ValueError, "mvr_update_: a must be in [0, 1], got a=-0.001", True),
    "mvr: a nan": ("mvr_update_", dict(a=math.nan), ValueError, "mvr_update_: a must be in [0, 1], got a=nan", True),
    "mvr: a inf": ("mvr_update_", dict(a=math.inf), ValueError, "mvr_update_: a must be in [0, 1], got a=inf", True),
    "mvr: a a str": ("mvr_update_", dict(a="0.5"), TypeError, "mvr_update_: a must be a float, got str", False),
    "mvr: prev_grads element": (
        "mvr_update_",
        dict(prev_grads=[fc.ones(3), 1.0]),
        TypeError,
        "mvr_update_: prev_grads[1] must be a torch.Tensor, got float",
        False,
    ),
}


test_errors, test_errors_native_op = fc.error_table_tests(ERRORS, valid)


@pytest.mark.cuda
@pytest.mark.parametrize("op", UPDATE_OPS)
def test_tensors_on_two_devices_are_refused(op):
    message = re.escape(f"{op}: all tensors must be on one device")
    names = OP_LISTS[op]
    # A second tensor of the first list on the CPU; then each other list's only tensor on the CPU.
    lists = {n: [torch.ones(3, device="cuda"), torch.ones(3)] for n in names}
    with pytest.raises(ValueError, match=message):
        call_op(op, lists, SCALARS[op])
    for other in names[1:]:
        lists = {n: [torch.ones(3, device="cuda")] for n in names}
        lists[other] = [torch.ones(3)]
        with pytest.raises(ValueError, match=message):
            call_op(op, lists, SCALARS[op])


# --- Operator registration --------------------------------------------------------------


def _opcheck_args(op: str, present, device: str) -> tuple:
    """A small mixed list per list of op (opcheck_tensors; on CUDA with a tensor of more than a
    chunk), the given optional lists present, one +inf in the first written."""
    gen = torch.Generator().manual_seed(5)
    big = fc.CHUNK + 3 if device == "cuda" else None
    lists = {}
    for name in OP_LISTS[op]:
        xs = fc.opcheck_tensors(gen, device, big)
        lists[name] = [x.abs() for x in xs] if name in NON_NEGATIVE.get(op, ()) else xs
    lists[fc.WRITTEN[op][0]][0][0, 0] = math.inf
    kwargs = {**{n: x for n, x in lists.items() if n not in OPTIONAL[op] or n in present}, **SCALARS[op]}
    return tuple(fc.native_args(op, kwargs))


OPCHECK_CASES = [
    ("client_step_", ()),
    ("client_step_", ("anchor_grads", "control", "momentum")),
    ("client_step_", ("momentum",)),
    ("adam_client_step_", ()),
    ("adam_client_step_", ("anchor_grads", "control")),
    ("adam_stats_update_", ()),
    ("mvr_update_", ()),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: f"{c[0]}-{'+'.join(c[1]) or 'required'}")
def test_opcheck(device, case):
    """schema (only the written lists mutated), fake tensor, autograd registration, AOT dispatch."""
    op, present = case
    fc.assert_opcheck(op, _opcheck_args(op, present, device))


# --- Long lists: CUDA launches, CPU pieces ----------------------------------------------------


def _long_lists(op: str, device: str, of) -> list[dict]:
    """50 tensors per list: on CUDA more than MAX_TENSORS per launch and one of MAX_BLOCKS chunks
    + 5 elements (its chunks span launches) after a few others, on the CPU around and across
    pieces; 0-D, empty, NaN/inf entries, and a transposed tensor last."""
    if device == "cuda":
        sizes = fc.launch_sizes(fc.CHUNK, fc.MAX_BLOCKS * fc.CHUNK + 5, 50)
    else:
        sizes = fc.launch_sizes(fc.PIECE, 3 * fc.PIECE + 5, 50)
    gen = torch.Generator().manual_seed(3)
    cols = [_op_tensors(op, (n,), gen, of(i)) for i, n in enumerate(sizes)]
    first, second = OP_LISTS[op][0], OP_LISTS[op][1]
    cols[1][first][5] = math.nan
    cols[2][second][7] = math.inf
    cols.append({k: x.reshape(()) for k, x in _op_tensors(op, (1,), gen, of(48)).items()})
    cols.append({k: x.reshape(70, 300).t() for k, x in _op_tensors(op, (70 * 300,), gen, of(49)).items()})
    return cols


LONG_LIST_SCALARS = {
    "client_step_": [
        ({}, SCALARS["client_step_"]),
        ({"anchor_grads", "control", "momentum"}, SCALARS["client_step_"]),
        ({"momentum"}, dict(lr=0.1, coef_grad=0.1, coef_momentum=0.9)),
    ],
    "adam_client_step_": [
        ({}, SCALARS["adam_client_step_"]),
        ({"anchor_grads", "control"}, dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=1)),
    ],
    "adam_stats_update_": [({}, SCALARS["adam_stats_update_"]), ({}, dict(beta1=0.0, beta2=1.0))],
    "mvr_update_": [({}, SCALARS["mvr_update_"]), ({}, dict(a=1.0)), ({}, dict(a=0.0))],
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + ["mixed"], ids=str)
@pytest.mark.parametrize("op", UPDATE_OPS)
def test_long_lists_match_the_cpu_kernel_bitwise(device, op, dtype):
    """The op on device (inputs with the CPU tensors' strides) equals the CPU kernel bit for bit;
    the CPU kernel equals the expression; written views keep their layout, read lists unchanged."""
    cols = _long_lists(op, device, fc.dtype_of(dtype))
    names = OP_LISTS[op]
    assert len(cols) == 50
    if device == "cuda":
        assert len(cols) > fc.MAX_TENSORS and max(c[names[0]].numel() for c in cols) > fc.MAX_BLOCKS * fc.CHUNK
    for k, (present, s) in enumerate(LONG_LIST_SCALARS[op]):
        use = [n for n in names if n not in OPTIONAL[op] or n in present]
        cpu = {n: [c[n].clone() for c in cols] for n in use}
        call_op(op, cpu, s)
        dev = {n: [fc.to_device(c[n], device) for c in cols] for n in use}
        layout = {n: [(x.data_ptr(), x.stride()) for x in dev[n]] for n in fc.WRITTEN[op]}
        call_op(op, dev, s)
        fc.synchronize(device)
        for i, col in enumerate(cols):
            what = f"{op} tensor {i} ({col[names[0]].dtype}, numel {col[names[0]].numel()}), {s}, lists {use}"
            for n in use:
                if n in fc.WRITTEN[op]:
                    assert (dev[n][i].data_ptr(), dev[n][i].stride()) == layout[n][i], what
                    assert_same_bits(dev[n][i], cpu[n][i], f"{device} vs CPU: {what}: {n}")
                else:
                    assert_same_bits(dev[n][i], col[n], f"{device}: {what}: {n} written")
            if k == 0:
                t = {n: (col[n] if n in use else None) for n in names}
                check_written(op, t, s, {n: cpu[n][i] for n in fc.WRITTEN[op]}, f"CPU: {what}", with_oracle=False)
