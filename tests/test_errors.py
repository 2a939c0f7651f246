"""Bad arguments (SPEC 1): the error type and a message naming the argument,
its value and the rule. Messages come from robustagg/ops.py and csrc/common.h."""

from __future__ import annotations

import math
import re

import pytest
import torch

import robustagg
import robustagg.ops
from conftest import DTYPES, OPS, TRIM_OPS, cuda_ready, run_op


def _call(op, X, f=1, weights=None):
    return run_op(op, X, f, weights)


# ---------------------------------------------------------------------------
# X


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("bad", [None, 3.0, [[1.0, 2.0]], "X"], ids=["None", "float", "list", "str"])
def test_x_not_a_tensor(op, bad):
    with pytest.raises(TypeError, match=rf"^{op}: X must be a torch.Tensor, got {type(bad).__name__}"):
        _call(op, bad)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(
    "shape,ndim", [((), 0), ((5,), 1), ((2, 3, 4), 3), ((1, 1, 1, 1), 4)], ids=["0-D", "1-D", "3-D", "4-D"]
)
def test_not_2d(op, shape, ndim):
    X = torch.zeros(shape)
    with pytest.raises(ValueError, match=rf"^{op}: X must be 2-D \(n, d\), got {ndim}-D with shape"):
        _call(op, X, 0)


@pytest.mark.parametrize("op", OPS)
def test_no_rows(op):
    with pytest.raises(ValueError, match=rf"^{op}: X needs at least one row, got n=0"):
        _call(op, torch.empty(0, 5), 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_no_columns_gives_empty_result(op, dtype):
    for n in (1, 4, 7):
        out = _call(op, torch.empty(n, 0, dtype=dtype), (n - 1) // 2)
        assert out.shape == (0,)
        assert out.dtype == dtype
        assert out.device.type == "cpu"
    # argument checks still apply when d == 0
    if op in TRIM_OPS:
        with pytest.raises(ValueError, match=rf"{op}: f=2 needs n > 2\*f, got n=4"):
            _call(op, torch.empty(4, 0, dtype=dtype), 2)
    if op == "mean":
        out = robustagg.mean(torch.empty(3, 0, dtype=dtype), torch.ones(3))
        assert out.shape == (0,) and out.dtype == dtype
        with pytest.raises(ValueError, match=r"mean: weights must have shape \(n,\) = \(3,\)"):
            robustagg.mean(torch.empty(3, 0, dtype=dtype), torch.ones(2))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(
    "dtype,name",
    [
        (torch.int64, "Long"),
        (torch.int32, "Int"),
        (torch.uint8, "Byte"),
        (torch.bool, "Bool"),
        (torch.complex64, "ComplexFloat"),
        (torch.complex128, "ComplexDouble"),
    ],
    ids=str,
)
def test_unsupported_dtype(op, dtype, name):
    X = torch.zeros(5, 3, dtype=dtype)
    with pytest.raises(TypeError, match=rf"^{op}: X must be float32, float64, float16 or bfloat16, got {name}"):
        _call(op, X, 1)


# ---------------------------------------------------------------------------
# f


@pytest.mark.parametrize("op", TRIM_OPS)
def test_negative_f(op):
    with pytest.raises(ValueError, match=rf"^{op}: f must be >= 0, got f=-1"):
        _call(op, torch.zeros(5, 3), -1)
    with pytest.raises(ValueError, match=rf"^{op}: f must be >= 0, got f=-7"):
        _call(op, torch.zeros(5, 3), -7)


@pytest.mark.parametrize("op", TRIM_OPS)
@pytest.mark.parametrize("n,f", [(6, 3), (1, 1), (2, 1), (4, 2), (7, 4), (9, 100)])
def test_f_too_large(op, n, f):
    with pytest.raises(ValueError, match=rf"^{op}: f={f} needs n > 2\*f, got n={n}$"):
        _call(op, torch.zeros(n, 3), f)


def test_f_message_exactly_as_spec():
    with pytest.raises(ValueError) as info:
        robustagg.trimmed_mean(torch.zeros(6, 2), 3)
    assert str(info.value).splitlines()[0] == "trimmed_mean: f=3 needs n > 2*f, got n=6"


@pytest.mark.parametrize("op", TRIM_OPS)
def test_f_largest_valid(op):
    for n in (1, 2, 3, 6, 7):
        out = _call(op, torch.arange(float(n)).reshape(n, 1), (n - 1) // 2)
        assert out.shape == (1,)


@pytest.mark.parametrize("op", TRIM_OPS)
@pytest.mark.parametrize(
    "f,shown",
    [(1.5, "float 1.5"), (True, "bool True"), (False, "bool False"), ("2", "str '2'"), (None, "NoneType None"),
     (2.0, "float 2.0")],
    ids=["1.5", "True", "False", "'2'", "None", "2.0"],
)
def test_f_not_an_int(op, f, shown):
    with pytest.raises(TypeError, match=rf"^{op}: f must be an int, got {re.escape(shown)}"):
        _call(op, torch.zeros(5, 3), f)


# ---------------------------------------------------------------------------
# weights


X5 = torch.arange(15.0).reshape(5, 3)


@pytest.mark.parametrize("bad", [[1.0] * 5, (1,) * 5, 1.0, "w"], ids=["list", "tuple", "float", "str"])
def test_weights_wrong_python_type(bad):
    with pytest.raises(TypeError, match=rf"^mean: weights must be a torch.Tensor or None, got {type(bad).__name__}"):
        robustagg.mean(X5, bad)


@pytest.mark.parametrize("dtype,name", [(torch.complex64, "ComplexFloat"), (torch.bool, "Bool")], ids=str)
def test_weights_wrong_dtype(dtype, name):
    with pytest.raises(TypeError, match=rf"^mean: weights must be a real tensor, got {name}"):
        robustagg.mean(X5, torch.ones(5, dtype=dtype))


@pytest.mark.parametrize(
    "w,shape",
    [
        (torch.ones(4), r"\[4\]"),
        (torch.ones(6), r"\[6\]"),
        (torch.ones(0), r"\[0\]"),
        (torch.ones(5, 1), r"\[5, 1\]"),
        (torch.ones(1, 5), r"\[1, 5\]"),
        (torch.tensor(1.0), r"\[\]"),
    ],
    ids=["short", "long", "empty", "5x1", "1x5", "0-D"],
)
def test_weights_wrong_shape(w, shape):
    with pytest.raises(ValueError, match=rf"^mean: weights must have shape \(n,\) = \(5,\), got {shape}"):
        robustagg.mean(X5, w)


@pytest.mark.parametrize(
    "value,index,shown",
    [(-1.0, 1, "-1"), (math.nan, 3, "nan"), (math.inf, 0, "inf"), (-math.inf, 4, "-inf"), (-1e-300, 2, "-1e-300")],
    ids=["negative", "nan", "inf", "-inf", "tiny-negative"],
)
def test_weights_bad_values(value, index, shown):
    w = torch.ones(5, dtype=torch.float64)
    w[index] = value
    with pytest.raises(ValueError, match=rf"^mean: weights must be finite and >= 0, got weights\[{index}\]={shown}"):
        robustagg.mean(X5, w)


def test_weights_negative_integer():
    with pytest.raises(ValueError, match=r"^mean: weights must be finite and >= 0, got weights\[2\]=-3"):
        robustagg.mean(X5, torch.tensor([1, 1, -3, 1, 1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64], ids=str)
def test_weights_all_zero(dtype):
    with pytest.raises(ValueError, match=r"^mean: weights must have a positive sum, got 0"):
        robustagg.mean(X5, torch.zeros(5, dtype=dtype))


def test_weights_underflowing_sum_is_positive():
    """Subnormal but positive weights are valid: the rule is a positive sum."""
    out = robustagg.mean(X5.double(), torch.full((5,), 5e-324, dtype=torch.float64))
    assert torch.isfinite(out).all()


@pytest.mark.skipif(not cuda_ready(), reason="needs a CUDA GPU and robustagg built with CUDA kernels")
def test_weights_on_another_device():
    with pytest.raises(ValueError, match=r"^mean: weights are on cuda:0 but X is on cpu"):
        robustagg.mean(X5, torch.ones(5, device="cuda"))
    with pytest.raises(ValueError, match=r"^mean: weights are on cpu but X is on cuda:0"):
        robustagg.mean(X5.cuda(), torch.ones(5))


# ---------------------------------------------------------------------------
# CUDA tensor without CUDA kernels


@pytest.mark.parametrize("op", OPS)
def test_cuda_tensor_without_cuda_kernels(op, monkeypatch):
    """The wrapper tells how to build the CUDA kernels. A FakeTensor on a
    'cuda' device stands in for a real one, so this runs without a GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    try:
        with FakeTensorMode():
            X = torch.zeros(5, 3, device="cuda")
    except Exception as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"cannot make a fake CUDA tensor here: {exc}")
    assert X.device.type == "cuda"
    monkeypatch.setattr(robustagg.ops, "cuda_kernels_built", lambda: False)
    with pytest.raises(RuntimeError, match=rf"^{op}: X is a CUDA tensor but robustagg was built without CUDA kernels") as info:
        _call(op, X, 1)
    msg = str(info.value)
    assert "nvcc" in msg and "pip install --no-build-isolation -e ." in msg and "move X to the CPU" in msg


def test_cuda_kernels_built_is_bool():
    assert isinstance(robustagg.cuda_kernels_built(), bool)
