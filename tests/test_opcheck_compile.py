"""Operator registration: torch.library.opcheck on every op, and the ops inside
a torch.compile(fullgraph=True) graph."""

from __future__ import annotations

import pytest
import torch

import robustagg
from conftest import MatrixSpec, assert_bitwise, cuda_ready, make_matrix

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
@pytest.mark.parametrize("sample", _samples(), ids=_id)
def test_opcheck(sample):
    op, args = sample
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_ready(), reason="needs a CUDA GPU and robustagg built with CUDA kernels")
def test_opcheck_cuda():
    for op, args in _samples("cuda"):
        result = torch.library.opcheck(op, args)
        assert all(v == "SUCCESS" for v in result.values()), (op, result)


def test_fake_tensor_shapes():
    """The fakes give (d,) in X's dtype, as the kernels do."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        X = torch.empty(7, 13, dtype=torch.bfloat16)
        for out in (OPS.mean(X), OPS.mean(X, torch.ones(7)), OPS.coordinate_median(X), OPS.trimmed_mean(X, 2),
                    OPS.meamed(X, 3)):
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
            assert_bitwise(a, b, f"compiled {name} n={n}")
        # the float32 combination may be fused differently by inductor: default float32 tolerance
        torch.testing.assert_close(got[4], want[4], equal_nan=True)
