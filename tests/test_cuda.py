"""CUDA kernels: parity with the CPU kernels and agreement with the reference.

The CPU and CUDA kernels are written to produce the same bits: selection by
the same key order, order statistics combined in float64 in ascending order,
mean accumulated row by row in float64, no FMA contraction on either side,
one rounding to the output dtype (half types through float32). So every op is
compared bit for bit with the CPU (NaN payloads aside), and with the
reference under the usual contract.

Every test here is marked ``cuda`` and skipped without a GPU and CUDA kernels.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import robustagg
from conftest import (
    DTYPES,
    OPS,
    TRIM_OPS,
    MatrixSpec,
    assert_bitwise,
    assert_matches_reference,
    make_matrix,
    run_op,
    spec_and_f,
)

pytestmark = pytest.mark.cuda

NS = [1, 2, 3, 7, 8, 9, 16, 17, 25, 32, 33, 63, 64, 65, 100, 128, 129, 300, 1000]


def _fs(n: int) -> list[int]:
    top = (n - 1) // 2
    if n <= 33:
        return list(range(top + 1))
    return sorted({0, 1, 2, n // 8, n // 4, n // 3, top - 1, top})


def _check_parity(op: str, X_cpu: torch.Tensor, f: int, X_gpu: torch.Tensor | None = None,
                  weights: torch.Tensor | None = None, what: str = "") -> None:
    X_gpu = X_cpu.cuda() if X_gpu is None else X_gpu
    w_gpu = None if weights is None else weights.cuda()
    got = run_op(op, X_gpu, f, w_gpu)
    assert got.device == X_gpu.device and got.dtype == X_gpu.dtype and got.shape == (X_gpu.shape[1],)
    cpu = run_op(op, X_cpu, f, weights)
    label = f"{op}(n={X_cpu.shape[0]}, d={X_cpu.shape[1]}, f={f}, {X_cpu.dtype}) {what}"
    assert_bitwise(got, cpu, f"CUDA vs CPU: {label}")
    assert_matches_reference(op, X_cpu, f, weights=weights, out=got.cpu(), what=f"CUDA {what}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", NS)
def test_parity_all_ops(n, dtype):
    d = 257 if n <= 300 else 67
    spec = MatrixSpec(n, d, seed=n, pattern="mixed", nan_rows=n // 6, posinf_rows=n // 9, neginf_rows=n // 11,
                      scatter=0.03)
    X = make_matrix(spec, dtype)
    _check_parity("coordinate_median", X, 0)
    _check_parity("mean", X, 0)
    for f in _fs(n):
        _check_parity("trimmed_mean", X, f)
        _check_parity("meamed", X, f)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=spec_and_f(max_n=1000), op=st.sampled_from(OPS))
def test_parity_random(dtype, case, op):
    spec, f = case
    X = make_matrix(spec, dtype)
    _check_parity(op, X, f if op in TRIM_OPS else 0, what=repr(spec))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_parity_ties_and_zeros(dtype):
    for n in (4, 5, 16, 33, 64, 65, 129):
        for pattern in ("ties", "zeros"):
            X = make_matrix(MatrixSpec(n, 1000, seed=n, pattern=pattern), dtype)
            for op in OPS:
                for f in sorted({0, (n - 1) // 2}):
                    _check_parity(op, X, f, what=pattern)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_parity_non_contiguous(dtype):
    base = make_matrix(MatrixSpec(40, 300, seed=9, pattern="mixed", nan_rows=3, posinf_rows=2, scatter=0.02), dtype)
    gpu = base.cuda()
    views = [
        ("X[:, ::2]", base[:, ::2], gpu[:, ::2]),
        ("X[:, 5:]", base[:, 5:], gpu[:, 5:]),
        ("X[::2]", base[::2], gpu[::2]),
        ("X.t() of (d, n)", base.t().contiguous().t(), gpu.t().contiguous().t()),
        ("row.expand", base[3:4].expand(9, 300), gpu[3:4].expand(9, 300)),
        ("col.expand", base[:, 7:8].expand(40, 50), gpu[:, 7:8].expand(40, 50)),
    ]
    for name, V, W in views:
        for op in OPS:
            for f in sorted({0, 1, (V.shape[0] - 1) // 2}):
                _check_parity(op, V, f, X_gpu=W, what=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_parity_weighted_mean(dtype):
    g = torch.Generator().manual_seed(3)
    for n in (1, 2, 9, 64, 300):
        X = make_matrix(MatrixSpec(n, 513, seed=n, pattern="gaussian", posinf_rows=n // 10), dtype)
        w = torch.rand(n, generator=g, dtype=torch.float64) * 3
        w[torch.randperm(n, generator=g)[: n // 3]] = 0
        if w.sum() == 0:
            w[0] = 1.0
        for wd in (torch.float64, torch.float32):
            _check_parity("mean", X, 0, weights=w.to(wd), what=f"weights {wd}")


def test_tails_and_empty():
    for dtype in DTYPES:
        for d in (0, 1, 127, 128, 129, 255):
            X = make_matrix(MatrixSpec(11, d, seed=d, pattern="gaussian"), dtype)
            for op in OPS:
                got = run_op(op, X.cuda(), 3)
                assert got.shape == (d,) and got.dtype == dtype and got.is_cuda
                if d:
                    assert_bitwise(got, run_op(op, X, 3), f"{op} d={d}")


def test_deterministic():
    X = make_matrix(MatrixSpec(129, 20_000, seed=1, pattern="mixed", nan_rows=5, scatter=0.01), torch.float32).cuda()
    for op in OPS:
        a = run_op(op, X, 10)
        b = run_op(op, X, 10)
        assert_bitwise(a, b, f"{op} twice on CUDA")


def test_input_not_modified():
    X = make_matrix(MatrixSpec(33, 1000, seed=2, pattern="mixed", nan_rows=2), torch.float16).cuda()
    before = X.clone()
    for op in OPS:
        run_op(op, X, 4)
    assert_bitwise(X.reshape(-1), before.reshape(-1), "CUDA op modified its input")


def test_large_d():
    """d = 3,000,000 columns, n = 8: CUDA vs CPU over every column."""
    for dtype in (torch.float32, torch.float16):
        g = torch.Generator().manual_seed(0)
        X = torch.randn(8, 3_000_000, generator=g).to(dtype)
        X[2, ::1001] = math.nan
        X[5, ::997] = math.inf
        for op in OPS:
            got = run_op(op, X.cuda(), 3)
            assert_bitwise(got, run_op(op, X, 3), f"{op} d=3e6 {dtype}")


def test_more_than_2_31_elements():
    """n * d > 2**31 (64-bit index arithmetic): check stripes at both ends and
    the middle against the CPU kernel run on the same columns."""
    n = 3
    d = 2**31 // n + 4099
    free, _ = torch.cuda.mem_get_info()
    if free < 16 * 2**30:
        pytest.skip("needs 16 GiB of free GPU memory")
    X = torch.empty(n, d, dtype=torch.float16, device="cuda")
    X.normal_(generator=torch.Generator(device="cuda").manual_seed(0))
    X[1, -5000::7] = math.nan
    stripes = [slice(0, 3000), slice(d // 2 - 1500, d // 2 + 1500), slice(d - 3000, d)]
    for op in OPS:
        out = run_op(op, X, 1)
        assert out.shape == (d,)
        for s in stripes:
            Xs = X[:, s].cpu()
            assert_bitwise(out[s].cpu(), run_op(op, Xs, 1), f"{op} n*d > 2**31, columns {s}")
            assert_matches_reference(op, Xs, 1, out=out[s].cpu(), what=f"n*d > 2**31, columns {s}")
        del out


def test_too_many_rows_is_a_clear_error():
    """Beyond the shared-memory tile (16384 rows of 32-bit keys) the CUDA
    kernel refuses with a ValueError naming the limit and the way out."""
    X = torch.randn(20_000, 3, device="cuda")
    with pytest.raises(ValueError, match=r"n <= 16384 .* got n=20000; move X to the CPU"):
        robustagg.coordinate_median(X)


# ---------------------------------------------------------------------------
# Distance rules and pre-aggregators: CUDA against the reference and the CPU.
# The float64 distance sums may be ordered differently on the two devices, so
# results are compared within the reference tolerances, except Krum's m = 1
# output, which is one of X's rows (compared by value).

from test_distance import (  # noqa: E402
    RowsSpec,
    assert_d_close,
    assert_vec_close,
    bulyan_ambiguous,
    check_geometric_median,
    check_krum,
    finite_scale,
    make_rows,
    rows_specs,
)
from test_preaggregators import check_rows, nnm_ambiguous_rows  # noqa: E402

from robustagg import reference  # noqa: E402


def _on(device, fn, X, *args, **kwargs):
    out = fn(X.to(device), *args, **kwargs)
    assert out.device.type == device
    return out.cpu()


def distance_parity(X: torch.Tensor, f: int, device: str = "cuda", what: str = "") -> None:
    """Every distance rule and pre-aggregator on `device` against the reference and the CPU."""
    n = X.shape[0]
    R = reference.pairwise_sq_distances(X)
    D = _on(device, robustagg.pairwise_sq_distances, X)
    assert_d_close(D, R, X, what=f"pairwise {what}")
    assert_d_close(D, robustagg.pairwise_sq_distances(X), X, what=f"pairwise vs CPU {what}")
    if n > 2 * f + 2:
        for m in (1, n - f):
            check_krum(X, f, m, _on(device, robustagg.krum, X, f, m), f"{device} {what}")
    if n >= 4 * f + 3 and not bulyan_ambiguous(X, f):
        out = _on(device, robustagg.bulyan, X, f)
        assert_vec_close(out, robustagg.bulyan(X, f), finite_scale(X), 1e-12, f"bulyan vs CPU {what}")
    if torch.isfinite(X).all(1).any():
        w = torch.linspace(0.5, 2.0, n, dtype=torch.float64)
        check_geometric_median(X, what=f"{device} {what}", device=device)
        check_geometric_median(X, w, tol=1e-6, max_iter=30, what=f"{device} weights {what}", device=device)
    c = torch.zeros(X.shape[1], dtype=X.dtype)
    out = robustagg.centered_clip(X.to(device), c.to(device), 1.0, 3)
    assert out.device.type == device
    assert_vec_close(out.cpu(), reference.centered_clip(X, c, 1.0, 3), finite_scale(X), 1e-9, f"centered_clip {what}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    out = _on(device, robustagg.bucketing, X, 3, generator=torch.Generator().manual_seed(n))
    check_rows(out, reference.bucketing(X, 3, perm), X, f"bucketing {what}")
    out = _on(device, robustagg.clip, X, 1.0)
    check_rows(out, reference.clip(X, 1.0), X, f"clip {what}")
    if n > 2 * f:
        out = _on(device, robustagg.arc, X, f)
        check_rows(out, reference.arc(X, f), X, f"arc {what}")
    g = min(f, n - 1)
    out, cpu = _on(device, robustagg.nnm, X, g), robustagg.nnm(X, g)
    for i in sorted(set(range(n)) - nnm_ambiguous_rows(X, g)):
        assert_vec_close(out[i], cpu[i], finite_scale(X), 1e-12, f"nnm row {i} vs CPU {what}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 3, 7, 8, 11, 16, 33])
def test_distance_parity(n, dtype):
    for pattern, layout in (("gaussian", "contiguous"), ("clustered", "transposed"), ("ties", "strided")):
        spec = RowsSpec(n, 300, seed=n, pattern=pattern, dups=n // 4, nan_rows=n // 7, posinf_rows=n // 9,
                        partial_rows=n // 5, layout=layout)
        X = make_rows(spec, dtype)
        for f in sorted({0, 1, (n - 3) // 4 if n >= 3 else 0}):
            distance_parity(X, f, what=repr(spec))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=rows_specs(max_n=20, max_d=3000), f=st.integers(0, 4))
def test_distance_parity_random(dtype, spec, f):
    distance_parity(make_rows(spec, dtype), f, what=repr(spec))


def test_distance_clustered_large_d():
    """d = 1e6 float32 rows within 1e-4 of a unit vector: CUDA distances to 1e-6 relative."""
    from test_distance import clustered

    X = clustered(16, 1_000_000, torch.Generator().manual_seed(0)).float()
    R = reference.pairwise_sq_distances(X)
    D = robustagg.pairwise_sq_distances(X.cuda()).cpu()
    off = ~torch.eye(16, dtype=torch.bool)
    assert ((D - R).abs() / R)[off].max() <= 1e-6
    assert torch.equal(robustagg.krum(X.cuda(), 3).cpu(), reference.krum(X, 3))


def test_mix_rows_and_norms_parity():
    g = torch.Generator().manual_seed(1)
    for dtype in DTYPES:
        X = torch.randn(9, 3001, generator=g).to(dtype)
        X[4] = math.nan
        c = torch.randn(3001, generator=g).to(dtype)
        C = torch.randn(5, 10, generator=g, dtype=torch.float64)
        C[:, 4] = 0.0
        out = robustagg.ops.mix_rows(C.cuda(), X.cuda(), c.cuda()).cpu()
        assert torch.isfinite(out).all()
        assert_vec_close(out, robustagg.ops.mix_rows(C, X, c), finite_scale(X, c) * 10, 1e-14, f"mix_rows {dtype}")
        N = robustagg.ops.row_sq_norms(X.cuda()).cpu()
        torch.testing.assert_close(N, robustagg.ops.row_sq_norms(X), rtol=1e-12, atol=0, equal_nan=True)


def test_distance_deterministic():
    X = make_rows(RowsSpec(33, 20_000, 3, "clustered", nan_rows=2), torch.float32).cuda()
    assert_bitwise(robustagg.pairwise_sq_distances(X).reshape(-1), robustagg.pairwise_sq_distances(X).reshape(-1),
                   "pairwise twice on CUDA")
    assert_bitwise(robustagg.geometric_median(X), robustagg.geometric_median(X), "geometric_median twice on CUDA")
