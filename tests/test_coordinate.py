"""Coordinate-wise rules (SPEC 2) on the CPU against robustagg.reference.

coordinate_median must equal the reference exactly; mean, trimmed_mean and
meamed are float64 sums and are compared with ``assert_sum_close``.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import robustagg
from robustagg import reference

from conftest import (
    DEVICES,
    DTYPES,
    OPS,
    TRIM_OPS,
    MatrixSpec,
    assert_exact,
    assert_matches_reference,
    assert_same_bits,
    assert_sum_close,
    available_isas,
    make_matrix,
    matrix_specs,
    run_op,
    spec_and_f,
    use_isa,
)

ISAS = available_isas()


# ---------------------------------------------------------------------------
# Property tests against the reference


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS)
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=spec_and_f())
def test_matches_reference(op, dtype, case):
    spec, f = case
    X = make_matrix(spec, dtype)
    assert_matches_reference(op, X, f if op in TRIM_OPS else 0, what=repr(spec))


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=spec_and_f(max_elements=40_000), dtype=st.sampled_from(DTYPES), op=st.sampled_from(OPS[1:]))
def test_matches_reference_each_isa(isa, case, dtype, op):
    spec, f = case
    X = make_matrix(spec, dtype)
    with use_isa(isa):
        assert_matches_reference(op, X, f, what=f"isa={isa} {spec!r}")


@pytest.mark.parametrize("op", TRIM_OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_f(op, dtype):
    """f over its whole range 0..(n-1)//2 for odd and even n, with ties and non-finite rows."""
    for n in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 16, 17, 31, 32, 33, 64, 65]:
        for pattern, rows in (("gaussian", (0, 0, 0)), ("ties", (0, 0, 0)), ("mixed", (n // 5, n // 7, n // 6))):
            spec = MatrixSpec(
                n,
                37,
                seed=n * 31 + len(pattern),
                pattern=pattern,
                nan_rows=rows[0],
                posinf_rows=rows[1],
                neginf_rows=rows[2],
            )
            X = make_matrix(spec, dtype)
            for f in range((n - 1) // 2 + 1):
                assert_matches_reference(op, X, f, what=repr(spec))


# ---------------------------------------------------------------------------
# Known values (independent of the reference)


def _col(values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype).reshape(-1, 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_known_values(dtype):
    inf, nan = math.inf, math.nan
    cases = [
        # (op, column, f, expected)
        ("coordinate_median", [3.0, 1.0, 2.0], 0, 2.0),
        ("coordinate_median", [4.0, 1.0, 3.0, 2.0], 0, 2.5),  # NumPy median, not the lower median
        ("coordinate_median", [nan, inf, 1.0], 0, inf),  # NaN above +inf
        ("coordinate_median", [nan, nan, inf], 0, nan),
        ("coordinate_median", [-inf, nan, 0.0], 0, 0.0),
        ("coordinate_median", [0.0, 1.0, inf, nan], 0, inf),
        ("coordinate_median", [1.0, inf, nan, nan], 0, nan),
        ("coordinate_median", [-inf, inf], 0, nan),
        ("coordinate_median", [nan, -inf, -inf], 0, -inf),
        ("trimmed_mean", [nan, 1.0, 2.0, 3.0, -inf], 1, 2.0),
        ("trimmed_mean", [nan, nan, 1.0, 2.0, 3.0, inf, -inf], 2, inf),  # keeps 2, 3, inf
        ("trimmed_mean", [nan, nan, 1.0, 2.0, 3.0, inf, -inf, 4.0, -5.0], 3, 3.0),
        ("trimmed_mean", [5.0, 1.0, 3.0], 0, 3.0),
        ("trimmed_mean", [10.0, 1.0, 2.0, 3.0, 4.0, -10.0], 1, 2.5),
        ("meamed", [0.0, 1.0, 2.0, 10.0, 11.0], 2, 1.0),  # median 2, keeps 0, 1, 2
        ("meamed", [0.0, 2.0, 4.0], 1, 1.0),  # tie at distance 2: the smaller value stays
        ("meamed", [4.0, 2.0, 0.0], 1, 1.0),
        ("meamed", [1.0, 2.0, 3.0, 4.0], 1, 2.0),  # median 2.5: all at 0.5/1.5, ties keep the smaller
        ("meamed", [nan, 1.0, 2.0, 3.0, 100.0], 2, 2.0),  # NaN is infinitely far
        ("meamed", [-inf, 1.0, 2.0, 3.0, inf], 2, 2.0),
        ("mean", [1.0, 2.0, 3.0, 6.0], 0, 3.0),
        ("mean", [1.0, nan], 0, nan),
        ("mean", [inf, 1.0], 0, inf),
        ("mean", [inf, -inf], 0, nan),
    ]
    for op, column, f, expected in cases:
        X = _col(column).to(dtype)
        out = run_op(op, X, f)
        assert out.shape == (1,) and out.dtype == dtype
        got = out.double().item()
        if math.isnan(expected):
            assert math.isnan(got), (op, column, f, got)
        else:
            assert got == expected, (op, column, f, got, expected)


def test_signed_zero_median_value():
    """-0.0 and +0.0 compare equal: the median of zeros is zero (either sign)."""
    X = torch.tensor([[-0.0, 0.0], [0.0, -0.0], [-0.0, -0.0]])
    out = robustagg.coordinate_median(X)
    assert torch.equal(out, torch.zeros(2))
    assert torch.equal(robustagg.trimmed_mean(X, 1), torch.zeros(2))


# ---------------------------------------------------------------------------
# Exhaustive 0-1 test of the sorting / selection networks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_zero_one_principle(dtype):
    """Every binary column for n = 1..16: by the 0-1 principle a comparator
    network that selects correctly on all of them does on every input. With
    0/1 values every sum is exact, so all rules must match bit for bit."""
    isas = ISAS if dtype == torch.float32 else ISAS[-1:]
    for n in range(1, 17):
        cols = torch.arange(2**n, dtype=torch.int64)
        X = ((cols[None, :] >> torch.arange(n)[:, None]) & 1).to(dtype)
        expected = {("coordinate_median", 0): reference.coordinate_median(X)}
        for f in range((n - 1) // 2 + 1):
            expected["trimmed_mean", f] = reference.trimmed_mean(X, f)
            expected["meamed", f] = reference.meamed(X, f)
        for isa in isas if n <= 12 else ISAS[-1:]:
            with use_isa(isa):
                for (op, f), exp in expected.items():
                    assert_exact(run_op(op, X, f), exp, X, f"0-1 {op} n={n} f={f} isa={isa}")


# ---------------------------------------------------------------------------
# Shapes: tails, task boundaries, large n


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_column_tails(dtype):
    """d not a multiple of the SIMD width (16 keys, 8 for float64) nor of the
    4096-column parallel task; the matrix is a view into a NaN-padded buffer so
    that a read past column d would show up as NaN."""
    for d in [1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 4095, 4097, 8191 + 16]:
        for n in [1, 2, 5, 8]:
            if n * d > 60_000 and n > 2:
                continue
            X0 = make_matrix(MatrixSpec(n, d, seed=d * 7 + n, pattern="gaussian"), dtype)
            buf = torch.full((n, d + 19), math.nan, dtype=dtype)
            buf[:, :d] = X0
            X = buf[:, :d]
            for op in OPS:
                for f in sorted({0, (n - 1) // 2}):
                    assert_matches_reference(op, X, f, what=f"tail d={d}")


@pytest.mark.parametrize("n,d", [(257, 33), (1000, 21), (511, 16), (513, 17), (2049, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_large_n(n, d, dtype):
    spec = MatrixSpec(
        n, d, seed=n + d, pattern="mixed", nan_rows=n // 10, posinf_rows=n // 20, neginf_rows=n // 15, scatter=0.01
    )
    X = make_matrix(spec, dtype)
    assert_matches_reference("coordinate_median", X)
    assert_matches_reference("mean", X)
    for f in sorted({0, 1, n // 4, (n - 1) // 2 - 1, (n - 1) // 2}):
        assert_matches_reference("trimmed_mean", X, f)
        assert_matches_reference("meamed", X, f)


# ---------------------------------------------------------------------------
# Non-contiguous inputs


def _views(dtype):
    """(name, view) pairs; each view is compared with the reference on itself."""
    g = torch.Generator().manual_seed(7)
    base = make_matrix(MatrixSpec(9, 70, seed=3, pattern="mixed", nan_rows=1, posinf_rows=1, scatter=0.05), dtype)
    t = make_matrix(MatrixSpec(45, 11, seed=4, pattern="gaussian", neginf_rows=2), dtype)
    row = torch.randn(1, 37, generator=g).to(dtype)
    col = torch.randn(8, 1, generator=g).to(dtype)
    return [
        ("column slice X[:, ::2]", base[:, ::2]),
        ("column offset X[:, 3:]", base[:, 3:]),
        ("transposed (d, n).t()", t.t()),
        ("row-strided X[::2]", base[::2]),
        ("expanded row x.expand(n, d)", row.expand(6, 37)),
        ("expanded column c.expand(n, d)", col.expand(8, 40)),
        ("single row with a large stride", base[4:5, ::3]),
        ("sliced both ways", t.t()[1:, 2:9]),
    ]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_non_contiguous(op, dtype):
    for name, V in _views(dtype):
        assert not V.is_contiguous() or V.shape[0] == 1, name
        n = V.shape[0]
        for f in sorted({0, (n - 1) // 2}) if op in TRIM_OPS else [0]:
            out = run_op(op, V, f)
            assert_matches_reference(op, V, f, out=out, what=name)
            # and the same bits as on a contiguous copy
            assert_same_bits(out, run_op(op, V.contiguous(), f), f"{op} {name} vs contiguous copy")


# ---------------------------------------------------------------------------
# Instruction sets, determinism, threads


def test_isa_env_var(monkeypatch):
    best = ISAS[-1]
    for isa in ISAS:
        monkeypatch.setenv("ROBUSTAGG_CPU_ISA", isa)
        assert robustagg.cpu_kernel_isa() == isa
    # never raised above what the CPU supports; unknown values leave the best
    monkeypatch.setenv("ROBUSTAGG_CPU_ISA", "avx512")
    assert robustagg.cpu_kernel_isa() == best
    monkeypatch.setenv("ROBUSTAGG_CPU_ISA", "nonsense")
    assert robustagg.cpu_kernel_isa() == best
    monkeypatch.delenv("ROBUSTAGG_CPU_ISA")
    assert robustagg.cpu_kernel_isa() == best


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_isa_sweep(isa, dtype, monkeypatch):
    """Each instruction-set build against the reference, and bit-identical to
    the best one (same source, same operation order, no FMA contraction)."""
    for n in [1, 2, 3, 4, 7, 8, 9, 16, 17, 33, 64, 100]:
        spec = MatrixSpec(
            n, 53, seed=100 + n, pattern="mixed", nan_rows=n // 4, posinf_rows=n // 6, neginf_rows=n // 8, scatter=0.05
        )
        X = make_matrix(spec, dtype)
        for op in OPS[1:]:
            for f in sorted({0, 1 if n > 2 else 0, (n - 1) // 2}):
                monkeypatch.setenv("ROBUSTAGG_CPU_ISA", isa)
                out = run_op(op, X, f)
                assert_matches_reference(op, X, f, out=out, what=f"isa={isa}")
                monkeypatch.setenv("ROBUSTAGG_CPU_ISA", ISAS[-1])
                assert_same_bits(out, run_op(op, X, f), f"{op} n={n} f={f}: isa {isa} vs {ISAS[-1]}")


@pytest.mark.parametrize("op", OPS)
def test_deterministic_and_thread_independent(op):
    X = make_matrix(MatrixSpec(33, 20_000, seed=5, pattern="mixed", nan_rows=2, scatter=0.01), torch.float32)
    f = 5
    first = run_op(op, X, f)
    assert_same_bits(first, run_op(op, X, f), f"{op}: second call")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert_same_bits(first, run_op(op, X, f), f"{op}: one thread vs {threads}")
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------
# Weighted mean


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("wdtype", [torch.float64, torch.float32, torch.float16, torch.int64], ids=str)
def test_weighted_mean(dtype, wdtype):
    g = torch.Generator().manual_seed(11)
    for n, d in [(1, 5), (2, 17), (7, 100), (64, 301), (300, 40)]:
        X = make_matrix(MatrixSpec(n, d, seed=n, pattern="gaussian"), dtype)
        w = (torch.rand(n, generator=g, dtype=torch.float64) * 10).to(wdtype)
        if n > 1:
            w[torch.randperm(n, generator=g)[: n // 2]] = 0  # zero weights for some rows
        if w.sum() == 0:
            w[0] = 1
        assert_matches_reference("mean", X, weights=w, what=f"weights {wdtype}")


def test_weighted_mean_semantics():
    X = torch.tensor([[1.0, 10.0], [3.0, 20.0], [100.0, -5.0]], dtype=torch.float64)
    out = robustagg.mean(X, torch.tensor([1.0, 3.0, 0.0]))
    assert torch.equal(out, torch.tensor([2.5, 17.5], dtype=torch.float64))
    # uniform weights of any scale are the plain mean
    Y = make_matrix(MatrixSpec(13, 77, seed=2, pattern="gaussian"), torch.float64)
    assert_sum_close(robustagg.mean(Y, torch.full((13,), 0.25)), robustagg.mean(Y), Y, "uniform weights")
    # a zero-weight row still propagates NaN/inf (0 * NaN is NaN), as sum(w * x) does
    Z = torch.tensor([[1.0], [math.nan]])
    assert torch.isnan(robustagg.mean(Z, torch.tensor([1.0, 0.0]))).all()


# ---------------------------------------------------------------------------
# Result metadata, input untouched


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_result_metadata_and_input_untouched(op, dtype):
    X = make_matrix(MatrixSpec(8, 45, seed=1, pattern="mixed", nan_rows=1, scatter=0.1), dtype)[:, 2:]
    before = X.clone()
    out = run_op(op, X, 2)
    assert out.shape == (43,)
    assert out.dtype == dtype
    assert out.device == X.device
    assert out.is_contiguous()
    assert not out.requires_grad
    assert_same_bits(X.reshape(-1), before.reshape(-1), f"{op} modified its input")
    assert out.data_ptr() != X.data_ptr()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fixed_examples_from_hypothesis_space(dtype):
    """A few deterministic, non-random shapes the strategy may miss: n=1 and n=2 with every pattern."""
    for n in (1, 2):
        for pattern in ("gaussian", "ties", "zeros", "magnitudes", "mixed"):
            spec = MatrixSpec(n, 129, seed=n, pattern=pattern, nan_rows=0, scatter=0.2)
            X = make_matrix(spec, dtype)
            for op in OPS:
                assert_matches_reference(op, X, 0, what=repr(spec))


# ---------------------------------------------------------------------------
# More than 2**31 elements (the CPU case opt-in: ~12 GB of memory and minutes on few cores)


@pytest.mark.parametrize("device", DEVICES)
def test_more_than_2_31_elements(device):
    """n * d > 2**31 (64-bit index arithmetic): stripes at both ends and the middle against the
    reference; on CUDA also bit for bit against the CPU kernel on the same columns. The CPU case
    is opt-in (ROBUSTAGG_BIG_TESTS=1: ~12 GB of memory, minutes on few cores)."""
    n = 3
    d = 2**31 // n + 4099
    if device == "cpu" and os.environ.get("ROBUSTAGG_BIG_TESTS") != "1":
        pytest.skip("set ROBUSTAGG_BIG_TESTS=1 (needs ~12 GB of memory)")
    if device == "cuda" and torch.cuda.mem_get_info()[0] < 16 * 2**30:
        pytest.skip("needs 16 GiB of free GPU memory")
    X = torch.empty(n, d, dtype=torch.float16, device=device)
    X.normal_(generator=torch.Generator(device=device).manual_seed(0))
    X[1, -5000::7] = math.nan
    stripes = [slice(0, 3000), slice(d // 2 - 1500, d // 2 + 1500), slice(d - 3000, d)]
    for op in OPS:
        out = run_op(op, X, 1)
        assert out.shape == (d,)
        for s in stripes:
            Xs, got = X[:, s].cpu(), out[s].cpu()
            if device == "cuda":
                assert_same_bits(got, run_op(op, Xs, 1), f"{op} n*d > 2**31, columns {s}")
            assert_matches_reference(op, Xs, 1, out=got, what=f"n*d > 2**31, columns {s}")
        del out


# mean_around_median(X, keep): the mean of the `keep` values closest to each
# coordinate's median, for any 1 <= keep <= n (Bulyan keeps fewer than half,
# where MeaMed's window has fewer positions than it may slide over). The
# reference ranks by (distance, value), so meamed's oracle with f = n - keep
# is its oracle too.


@st.composite
def spec_and_keep(draw, **kwargs):
    spec = draw(matrix_specs(**kwargs))
    return spec, draw(st.integers(1, max(1, spec.n)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=spec_and_keep(max_n=150, max_elements=40_000))
def test_mean_around_median_matches_reference(dtype, case):
    spec, keep = case
    X = make_matrix(spec, dtype)
    out = robustagg.ops.mean_around_median(X, keep)
    assert_sum_close(out, reference.meamed(X, X.shape[0] - keep), X, f"mean_around_median(n={spec.n}, keep={keep})")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [3, 7, 8, 13, 64, 65, 100])
def test_mean_around_median_every_keep_each_isa(isa, n, monkeypatch):
    monkeypatch.setenv("ROBUSTAGG_CPU_ISA", isa)
    g = torch.Generator().manual_seed(n)
    X = torch.randint(-4, 5, (n, 131), generator=g).to(torch.float32)  # many ties
    X[:, ::5] = torch.randn(n, 27, generator=g)
    X[n // 2, ::3] = math.nan
    X[0, 1::4] = math.inf
    for keep in range(1, n + 1):
        out = robustagg.ops.mean_around_median(X, keep)
        assert_sum_close(out, reference.meamed(X, n - keep), X, f"{isa} n={n} keep={keep}")


def test_mean_around_median_is_meamed():
    X = torch.randn(9, 300, dtype=torch.float64)
    for f in range(5):
        assert_same_bits(robustagg.ops.mean_around_median(X, 9 - f), robustagg.meamed(X, f), f"f={f}")


# ---------------------------------------------------------------------------
# Each device against the CPU kernels and the reference. The CPU and CUDA kernels are written
# to produce the same bits: selection by the same key order, order statistics combined in
# float64 in ascending order, mean accumulated row by row in float64, no FMA contraction on
# either side, one rounding to the output dtype (half types through float32). So results on a
# device are compared bit for bit with the CPU kernels (NaN payloads aside; on the CPU that is
# a second run), and with the reference under the usual contract. The sweeps over the CUDA
# kernels' sizes (rows across the register and shared-memory kernels, millions of columns) run
# on CUDA only: on the CPU the tests above cover the same contract at the CPU kernels' sizes.

DEVICE_NS = [1, 2, 3, 7, 8, 9, 16, 17, 25, 32, 33, 63, 64, 65, 100, 128, 129, 300, 1000]


def _device_fs(n: int) -> list[int]:
    top = (n - 1) // 2
    if n <= 33:
        return list(range(top + 1))
    return sorted({0, 1, 2, n // 8, n // 4, n // 3, top - 1, top})


def check_on_device(
    device: str,
    op: str,
    X: torch.Tensor,
    f: int,
    X_dev: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    what: str = "",
) -> None:
    """op on device (X_dev: X's copy there, by default X.to(device)) equals the CPU kernel bit for
    bit, and the reference under the op's contract."""
    X_dev = X.to(device) if X_dev is None else X_dev
    w_dev = None if weights is None else weights.to(device)
    got = run_op(op, X_dev, f, w_dev)
    assert got.device == X_dev.device and got.dtype == X_dev.dtype and got.shape == (X_dev.shape[1],)
    label = f"{op}(n={X.shape[0]}, d={X.shape[1]}, f={f}, {X.dtype}) {what}"
    assert_same_bits(got, run_op(op, X, f, weights), f"{device} vs CPU: {label}")
    assert_matches_reference(op, X, f, weights=weights, out=got.cpu(), what=f"{device} {what}")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", DEVICE_NS)
def test_cuda_all_ops(n, dtype):
    """n across the CUDA register and shared-memory kernels, every f for small n."""
    device = "cuda"
    d = 257 if n <= 300 else 67
    spec = MatrixSpec(
        n, d, seed=n, pattern="mixed", nan_rows=n // 6, posinf_rows=n // 9, neginf_rows=n // 11, scatter=0.03
    )
    X = make_matrix(spec, dtype)
    check_on_device(device, "coordinate_median", X, 0)
    check_on_device(device, "mean", X, 0)
    for f in _device_fs(n):
        check_on_device(device, "trimmed_mean", X, f)
        check_on_device(device, "meamed", X, f)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=spec_and_f(max_n=1000), op=st.sampled_from(OPS))
def test_cuda_random(dtype, case, op):
    spec, f = case
    X = make_matrix(spec, dtype)
    check_on_device("cuda", op, X, f if op in TRIM_OPS else 0, what=repr(spec))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_ties_and_zeros(dtype):
    for n in (4, 5, 16, 33, 64, 65, 129):
        for pattern in ("ties", "zeros"):
            X = make_matrix(MatrixSpec(n, 1000, seed=n, pattern=pattern), dtype)
            for op in OPS:
                for f in sorted({0, (n - 1) // 2}):
                    check_on_device("cuda", op, X, f, what=pattern)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_devices_non_contiguous(device, dtype):
    base = make_matrix(MatrixSpec(40, 300, seed=9, pattern="mixed", nan_rows=3, posinf_rows=2, scatter=0.02), dtype)
    dev = base.to(device)
    views = [
        ("X[:, ::2]", base[:, ::2], dev[:, ::2]),
        ("X[:, 5:]", base[:, 5:], dev[:, 5:]),
        ("X[::2]", base[::2], dev[::2]),
        ("X.t() of (d, n)", base.t().contiguous().t(), dev.t().contiguous().t()),
        ("row.expand", base[3:4].expand(9, 300), dev[3:4].expand(9, 300)),
        ("col.expand", base[:, 7:8].expand(40, 50), dev[:, 7:8].expand(40, 50)),
    ]
    for name, V, W in views:
        for op in OPS:
            for f in sorted({0, 1, (V.shape[0] - 1) // 2}):
                check_on_device(device, op, V, f, X_dev=W, what=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_devices_weighted_mean(device, dtype):
    g = torch.Generator().manual_seed(3)
    for n in (1, 2, 9, 64, 300):
        X = make_matrix(MatrixSpec(n, 513, seed=n, pattern="gaussian", posinf_rows=n // 10), dtype)
        w = torch.rand(n, generator=g, dtype=torch.float64) * 3
        w[torch.randperm(n, generator=g)[: n // 3]] = 0
        if w.sum() == 0:
            w[0] = 1.0
        for wd in (torch.float64, torch.float32):
            check_on_device(device, "mean", X, 0, weights=w.to(wd), what=f"weights {wd}")


@pytest.mark.parametrize("device", DEVICES)
def test_devices_tails_and_empty(device):
    for dtype in DTYPES:
        for d in (0, 1, 127, 128, 129, 255):
            X = make_matrix(MatrixSpec(11, d, seed=d, pattern="gaussian"), dtype)
            for op in OPS:
                got = run_op(op, X.to(device), 3)
                assert got.shape == (d,) and got.dtype == dtype and got.device.type == device
                if d:
                    assert_same_bits(got, run_op(op, X, 3), f"{op} d={d}")


@pytest.mark.parametrize("device", DEVICES)
def test_devices_deterministic(device):
    X = make_matrix(MatrixSpec(129, 20_000, seed=1, pattern="mixed", nan_rows=5, scatter=0.01), torch.float32)
    X = X.to(device)
    for op in OPS:
        assert_same_bits(run_op(op, X, 10), run_op(op, X, 10), f"{op} twice on {device}")


@pytest.mark.parametrize("device", DEVICES)
def test_devices_input_not_modified(device):
    X = make_matrix(MatrixSpec(33, 1000, seed=2, pattern="mixed", nan_rows=2), torch.float16).to(device)
    before = X.clone()
    for op in OPS:
        run_op(op, X, 4)
    assert_same_bits(X, before, f"op on {device} modified its input")


@pytest.mark.cuda
def test_cuda_large_d():
    """d = 3,000,000 columns, n = 8: CUDA against the CPU kernels over every column."""
    for dtype in (torch.float32, torch.float16):
        g = torch.Generator().manual_seed(0)
        X = torch.randn(8, 3_000_000, generator=g).to(dtype)
        X[2, ::1001] = math.nan
        X[5, ::997] = math.inf
        for op in OPS:
            got = run_op(op, X.cuda(), 3)
            assert_same_bits(got, run_op(op, X, 3), f"{op} d=3e6 {dtype}")


@pytest.mark.cuda
def test_cuda_too_many_rows_is_a_clear_error():
    """Beyond the shared-memory tile (of 32-bit keys for float32) the CUDA kernel refuses with a
    ValueError naming the limit and the way out."""
    rows = robustagg._C.COORDINATE_CUDA_MAX_ROWS
    X = torch.randn(rows + 1, 3, device="cuda")
    with pytest.raises(ValueError, match=rf"n <= {rows} .* got n={rows + 1}; move X to the CPU"):
        robustagg.coordinate_median(X)
