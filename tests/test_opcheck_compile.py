"""Operator registration: torch.library.opcheck on every op, and the ops inside
a torch.compile(fullgraph=True) graph."""

from __future__ import annotations

import pytest
import torch

import robustagg

from conftest import MatrixSpec, assert_same_bits, cuda_ready, make_matrix

OPS = torch.ops.robustagg


def _samples(device="cpu"):
    """(op, args) pairs: several dtypes, odd/even n, f at both ends, non-contiguous, weights or not."""
    out = []
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for n, d in ((1, 3), (6, 17), (9, 40)):
            # opcheck compares outputs with assert_close(equal_nan=False): no NaN
            # in the inputs (a +inf row is fine: inf == inf).
            X = make_matrix(MatrixSpec(n, d, seed=n + d, pattern="gaussian", posinf_rows=n // 5), dtype).to(device)
            out.append((OPS.mean.default, (X, None)))
            out.append((OPS.mean.default, (X, torch.rand(n, generator=g, dtype=torch.float64).add(0.1).to(device))))
            out.append((OPS.coordinate_median.default, (X,)))
            for f in sorted({0, (n - 1) // 2}):
                out.append((OPS.trimmed_mean.default, (X, f)))
                out.append((OPS.meamed.default, (X, f)))
            for keep in sorted({1, max(1, n // 3), n}):
                out.append((OPS.mean_around_median.default, (X, keep)))
    Xt = torch.randn(30, 7, generator=g).t().to(device)  # non-contiguous (7, 30)
    out += [(OPS.coordinate_median.default, (Xt,)), (OPS.trimmed_mean.default, (Xt, 2)), (OPS.mean.default, (Xt, None))]
    return out


def _id(sample):
    op, args = sample
    X = args[0]
    extra = "" if len(args) == 1 else f"-{'w' if isinstance(args[1], torch.Tensor) else args[1]}"
    return f"{op.name().split('::')[1]}-{str(X.dtype).split('.')[1]}-{X.shape[0]}x{X.shape[1]}{extra}"


# The default test_utils (test_schema, test_autograd_registration,
# test_faketensor, test_aot_dispatch_dynamic) all apply: the samples do not
# require grad, so test_autograd_registration has nothing to complain about.
def _assert_opcheck(op, args):
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), (op, result)


@pytest.mark.parametrize("sample", _samples(), ids=_id)
def test_opcheck(sample):
    _assert_opcheck(*sample)


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_ready(), reason="needs a CUDA GPU and robustagg built with CUDA kernels")
def test_opcheck_cuda():
    for op, args in _samples("cuda"):
        _assert_opcheck(op, args)


def test_fake_tensor_shapes():
    """The fakes give (d,) in X's dtype, as the kernels do."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        X = torch.empty(7, 13, dtype=torch.bfloat16)
        for out in (
            OPS.mean(X),
            OPS.mean(X, torch.ones(7)),
            OPS.coordinate_median(X),
            OPS.trimmed_mean(X, 2),
            OPS.meamed(X, 3),
        ):
            assert out.shape == (13,) and out.dtype == torch.bfloat16


def _pipeline(X, w):
    y = X * 2 + 1
    m = robustagg.mean(y, w)
    med = robustagg.coordinate_median(y)
    tm = robustagg.trimmed_mean(y, 1)
    mm = robustagg.meamed(y, 2)
    return m, med, tm, mm, torch.tanh(med) - tm * mm + m.sum()


def test_compile_fullgraph():
    """One compiled function calling all four ops between other torch ops:
    no graph break (fullgraph=True), the same results as eager, and a second
    shape runs too."""
    torch._dynamo.reset()
    compiled = torch.compile(_pipeline, fullgraph=True)
    for n, d, seed in ((9, 40, 0), (12, 33, 1)):
        X = make_matrix(MatrixSpec(n, d, seed=seed, pattern="mixed", nan_rows=1), torch.float32)
        w = torch.rand(n, generator=torch.Generator().manual_seed(seed)) + 0.5
        got = compiled(X, w)
        want = _pipeline(X, w)
        # the op outputs come from the same kernels on the same y = 2X + 1 (exact)
        for name, a, b in zip(("mean", "median", "trimmed_mean", "meamed"), got[:4], want[:4]):
            assert_same_bits(a, b, f"compiled {name} n={n}")
        # the float32 combination may be fused differently by inductor: default float32 tolerance
        torch.testing.assert_close(got[4], want[4], equal_nan=True)


# ---------------------------------------------------------------------------
# Distance ops: pairwise_sq_distances (with or without a center row),
# mix_rows, row_sq_norms, row_sq_norms_and_dots


def _distance_samples(device="cpu"):
    out = []
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for n, d in ((1, 3), (6, 17), (9, 40)):
            X = make_matrix(MatrixSpec(n, d, seed=n * d, pattern="gaussian", posinf_rows=n // 5), dtype)
            if n > 2:
                X[1, 2] = float("nan")  # distances to it are +inf; a zero coefficient skips it
            c = torch.randn(d, generator=g).to(dtype)
            C = torch.randn(3, n + 1, generator=g, dtype=torch.float64)
            C[:, ~torch.isfinite(torch.cat([X, c[None]]).double()).all(1)] = 0.0
            X, c, C = X.to(device), c.to(device), C.to(device)
            out.append((OPS.pairwise_sq_distances.default, (X, None)))
            out.append((OPS.pairwise_sq_distances.default, (X, c)))
            out.append((OPS.mix_rows.default, (C, X, c)))
            out.append((OPS.mix_rows.default, (C[:, :n].contiguous(), X, None)))
            # rows without the NaN: opcheck compares outputs without equal_nan
            out.append((OPS.row_sq_norms.default, (X[::2, 1:],)))
            finite_rows = X[torch.isfinite(X.double()).all(1)][:, 1:]  # an inf row's dots may be NaN
            out.append((OPS.row_sq_norms_and_dots.default, (finite_rows, c[1:])))
            out.append((OPS.row_sq_distances.default, (finite_rows, c[1:])))
    Xt = torch.randn(30, 7, generator=g).t().to(device)  # non-contiguous (7, 30)
    out += [
        (OPS.pairwise_sq_distances.default, (Xt, None)),
        (OPS.row_sq_norms.default, (Xt,)),
        (OPS.row_sq_norms_and_dots.default, (Xt, Xt[0])),
        (OPS.row_sq_distances.default, (Xt, Xt[1])),
        (OPS.mix_rows.default, (torch.rand(2, 7, generator=g, dtype=torch.float64).to(device), Xt, None)),
    ]
    if device == "cpu":  # CAF's host filter: CPU tensors only
        Y = torch.randn(9, 5, generator=g, dtype=torch.float64)
        D, finite = OPS.pairwise_sq_distances(Y, None)
        out += [(OPS.caf_weights.default, (D, finite, f)) for f in (0, 2, 4)]
    return out


def _distance_id(sample):
    op, args = sample
    X = args[1] if op is OPS.mix_rows.default else args[0]
    center = args[-1] is not None and op in (OPS.pairwise_sq_distances.default, OPS.mix_rows.default)
    return (
        f"{op.name().split('::')[1]}-{str(X.dtype).split('.')[1]}-{X.shape[0]}x{X.shape[1]}"
        f"{'-center' if center else ''}-{'contig' if X.is_contiguous() else 'strided'}"
        f"{f'-f{args[2]}' if op is OPS.caf_weights.default else ''}"
    )


@pytest.mark.parametrize("sample", _distance_samples(), ids=_distance_id)
def test_opcheck_distance_ops(sample):
    _assert_opcheck(*sample)


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_ready(), reason="needs a CUDA GPU and robustagg built with CUDA kernels")
def test_opcheck_distance_ops_cuda():
    for op, args in _distance_samples("cuda"):
        _assert_opcheck(op, args)


def test_fake_tensor_shapes_distance_ops():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        X = torch.empty(7, 13, dtype=torch.bfloat16)
        c = torch.empty(13, dtype=torch.bfloat16)
        assert robustagg.ops.pairwise_sq_distances(X).shape == (7, 7)
        D = robustagg.ops.pairwise_sq_distances(X, c)
        assert D.shape == (8, 8) and D.dtype == torch.float64
        M = robustagg.ops.mix_rows(torch.empty(4, 8, dtype=torch.float64), X, c)
        assert M.shape == (4, 13) and M.dtype == torch.bfloat16
        N = robustagg.ops.row_sq_norms(X)
        assert N.shape == (7,) and N.dtype == torch.float64
        ND = robustagg.ops.row_sq_norms_and_dots(X, c)
        assert ND.shape == (2, 7) and ND.dtype == torch.float64
        SD = robustagg.ops.row_sq_distances(X, c)
        assert SD.shape == (7,) and SD.dtype == torch.float64
        W = OPS.caf_weights(torch.empty(7, 7, dtype=torch.float64), torch.empty(7, dtype=torch.bool), 2)
        assert W.shape == (7,) and W.dtype == torch.float64


def _distance_pipeline(X, C, c):
    y = X * 2 + 1
    v = c * 2 + 1
    D = robustagg.ops.pairwise_sq_distances(y, v)
    N = robustagg.ops.row_sq_norms(y)
    M = robustagg.ops.mix_rows(C, y, v)
    return D, N, M, torch.softmax(-D[-1], 0) @ torch.cat([N, N[:1]]) + M.sum()


def test_compile_fullgraph_distance_ops():
    """The three distance ops inside one compiled function: no graph break,
    the same results as eager, and a second shape runs too."""
    torch._dynamo.reset()
    compiled = torch.compile(_distance_pipeline, fullgraph=True)
    for n, d, seed in ((9, 40, 0), (12, 33, 1)):
        g = torch.Generator().manual_seed(seed)
        X = make_matrix(MatrixSpec(n, d, seed=seed, pattern="gaussian", nan_rows=1), torch.float32)
        c = torch.randn(d, generator=g)
        C = torch.rand(2, n + 1, generator=g, dtype=torch.float64)
        C[:, torch.cat([~torch.isfinite(X).all(1), torch.tensor([False])])] = 0.0  # the NaN row is not read
        got = compiled(X, C, c)
        want = _distance_pipeline(X, C, c)
        for name, a, b in zip(("pairwise_sq_distances", "row_sq_norms", "mix_rows"), got[:3], want[:3]):
            assert_same_bits(a.reshape(-1), b.reshape(-1), f"compiled {name} n={n}")
        torch.testing.assert_close(got[3], want[3], equal_nan=True)
