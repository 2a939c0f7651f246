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
    [
        (1.5, "float 1.5"),
        (True, "bool True"),
        (False, "bool False"),
        ("2", "str '2'"),
        (None, "NoneType None"),
        (2.0, "float 2.0"),
    ],
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
    monkeypatch.setattr(robustagg.validation, "cuda_kernels_built", lambda: False)
    with pytest.raises(
        RuntimeError, match=rf"^{op}: X is a CUDA tensor but robustagg was built without CUDA kernels"
    ) as info:
        _call(op, X, 1)
    msg = str(info.value)
    assert "nvcc" in msg and "pip install --no-build-isolation -e ." in msg and "move X to the CPU" in msg


def test_cuda_kernels_built_is_bool():
    assert isinstance(robustagg.cuda_kernels_built(), bool)


# ---------------------------------------------------------------------------
# Distance rules and pre-aggregators (SPEC 3, 4). Messages are matched on the
# rule's name and the argument's name.


def _center_for(X):
    d = X.shape[-1] if isinstance(X, torch.Tensor) and X.dim() >= 1 else 3
    return torch.zeros(d)


DISTANCE_RULES = {
    "pairwise_sq_distances": lambda X: robustagg.pairwise_sq_distances(X),
    "krum": lambda X: robustagg.krum(X, 0),
    "multi_krum": lambda X: robustagg.multi_krum(X, 0),
    "bulyan": lambda X: robustagg.bulyan(X, 0),
    "geometric_median": lambda X: robustagg.geometric_median(X),
    "centered_clip": lambda X: robustagg.centered_clip(X, _center_for(X), 1.0),
    "bucketing": lambda X: robustagg.bucketing(X, 2),
    "nnm": lambda X: robustagg.nnm(X, 0),
    "clip": lambda X: robustagg.clip(X, 1.0),
    "arc": lambda X: robustagg.arc(X, 0),
}


def _raises(exc, rule, arg):
    return pytest.raises(exc, match=rf"^{rule}: .*\b{arg}\b")


@pytest.mark.parametrize("rule", DISTANCE_RULES)
@pytest.mark.parametrize("bad", [None, [[1.0, 2.0]], "X"], ids=["None", "list", "str"])
def test_distance_rules_x_not_a_tensor(rule, bad):
    with pytest.raises(TypeError, match=rf"^{rule}: X"):
        DISTANCE_RULES[rule](bad)


@pytest.mark.parametrize("rule", DISTANCE_RULES)
@pytest.mark.parametrize("shape", [(), (5,), (2, 3, 4)], ids=["0-D", "1-D", "3-D"])
def test_distance_rules_not_2d(rule, shape):
    with pytest.raises(ValueError, match=rf"^{rule}: X"):
        DISTANCE_RULES[rule](torch.zeros(shape))


@pytest.mark.parametrize("rule", DISTANCE_RULES)
def test_distance_rules_no_rows(rule):
    with pytest.raises(ValueError, match=rf"^{rule}: X"):
        DISTANCE_RULES[rule](torch.empty(0, 3))


@pytest.mark.parametrize("rule", DISTANCE_RULES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64], ids=str)
def test_distance_rules_unsupported_dtype(rule, dtype):
    with pytest.raises(TypeError, match=rf"^{rule}: X"):
        DISTANCE_RULES[rule](torch.zeros(7, 3, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_distance_rules_no_columns(dtype):
    n = 7
    X = torch.empty(n, 0, dtype=dtype)
    D = robustagg.pairwise_sq_distances(X)
    assert D.shape == (n, n) and D.dtype == torch.float64 and (D == 0).all()
    for out in (
        robustagg.krum(X, 1),
        robustagg.multi_krum(X, 2),
        robustagg.bulyan(X, 1),
        robustagg.geometric_median(X),
        robustagg.centered_clip(X, torch.empty(0, dtype=dtype), 1.0),
    ):
        assert out.shape == (0,) and out.dtype == dtype
    for out, rows in (
        (robustagg.bucketing(X, 3), 3),
        (robustagg.nnm(X, 2), n),
        (robustagg.clip(X, 1.0), n),
        (robustagg.arc(X, 3), n),
    ):
        assert out.shape == (rows, 0) and out.dtype == dtype
    # argument checks still apply when d == 0
    with _raises(ValueError, "krum", "f"):
        robustagg.krum(X, 3)


@pytest.mark.parametrize("rule", ["krum", "multi_krum"])
def test_krum_bad_f(rule):
    fn = getattr(robustagg, rule)
    X = torch.zeros(8, 3)
    for f in (-1, 3, 4, 100):
        with _raises(ValueError, rule, "f"):
            fn(X, f)
    fn(X, 2)  # n = 8 > 2*2 + 2
    for f in (2.0, "1", True, None):
        with _raises(TypeError, rule, "f"):
            fn(X, f)


def test_krum_message_as_documented():
    with pytest.raises(ValueError) as info:
        robustagg.krum(torch.zeros(8, 2), 3)
    assert str(info.value).splitlines()[0] == "krum: f=3 needs n > 2*f + 2, got n=8"


@pytest.mark.parametrize("rule", ["krum", "multi_krum"])
def test_krum_bad_m(rule):
    fn = getattr(robustagg, rule)
    X = torch.zeros(8, 3)
    for m in (0, -1, 9):
        with _raises(ValueError, rule, "m"):
            fn(X, 1, m)
    assert fn(X, 1, 8).shape == (3,)
    for m in (1.0, 2.5, "2"):
        with _raises(TypeError, rule, "m"):
            fn(X, 1, m)


def test_bulyan_bad_f():
    for n, f in ((6, 1), (10, 2), (2, 0), (7, -1)):
        with _raises(ValueError, "bulyan", "f"):
            robustagg.bulyan(torch.zeros(n, 3), f)
    robustagg.bulyan(torch.zeros(11, 3), 2)  # n = 4*2 + 3
    with _raises(TypeError, "bulyan", "f"):
        robustagg.bulyan(torch.zeros(7, 3), 1.0)


def test_geometric_median_bad_arguments():
    X = torch.randn(5, 3)
    gm = robustagg.geometric_median
    for nu in (0.0, -1.0, math.nan, 0):
        with _raises(ValueError, "geometric_median", "nu"):
            gm(X, nu=nu)
    for tol in (-1e-3, math.nan):
        with _raises(ValueError, "geometric_median", "tol"):
            gm(X, tol=tol)
    with _raises(ValueError, "geometric_median", "max_iter"):
        gm(X, max_iter=-1)
    for max_iter in (2.0, "3", None):
        with _raises(TypeError, "geometric_median", "max_iter"):
            gm(X, max_iter=max_iter)
    for w in (
        torch.ones(4),
        torch.ones(6),
        torch.ones(5, 1),
        torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0]),
        torch.tensor([1.0, 1.0, math.nan, 1.0, 1.0]),
        torch.zeros(5),
    ):
        with _raises(ValueError, "geometric_median", "weights"):
            gm(X, w)
    with _raises(TypeError, "geometric_median", "weights"):
        gm(X, [1.0] * 5)
    gm(X, torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]), nu=1.0, tol=0.0, max_iter=0)  # all valid


@pytest.mark.skipif(not cuda_ready(), reason="needs a CUDA GPU and robustagg built with CUDA kernels")
def test_geometric_median_weights_on_another_device():
    with _raises(ValueError, "geometric_median", "weights"):
        robustagg.geometric_median(torch.randn(5, 3), torch.ones(5, device="cuda"))


def test_centered_clip_bad_arguments():
    X = torch.randn(5, 3)
    cc = robustagg.centered_clip
    for center in (
        torch.zeros(4),
        torch.zeros(1, 3),
        torch.zeros(()),
        torch.tensor([0.0, math.nan, 0.0]),
        torch.tensor([math.inf, 0.0, 0.0]),
    ):
        with _raises(ValueError, "centered_clip", "center"):
            cc(X, center, 1.0)
    for tau in (0.0, -1.0, math.nan):
        with _raises(ValueError, "centered_clip", "tau"):
            cc(X, torch.zeros(3), tau)
    with _raises(ValueError, "centered_clip", "iters"):
        cc(X, torch.zeros(3), 1.0, -1)
    for iters in (1.5, 2.0, "1"):
        with _raises(TypeError, "centered_clip", "iters"):
            cc(X, torch.zeros(3), 1.0, iters)
    cc(X, torch.zeros(3), math.inf, 0)  # all valid


@pytest.mark.parametrize(
    "rule, arg, value_errors, type_errors",
    [
        ("bucketing", "s", (0, -2), ("2", 2.0, None)),
        ("nnm", "f", (-1, 6, 7), (1.5,)),
        ("clip", "c", (0.0, -1.0, math.nan), ()),
        ("arc", "f", (-1, 3, 4), ("1",)),
    ],
)
def test_preaggregators_bad_arguments(rule, arg, value_errors, type_errors):
    X = torch.randn(6, 3)
    fn = getattr(robustagg, rule)
    for exc, values in ((ValueError, value_errors), (TypeError, type_errors)):
        for v in values:
            with _raises(exc, rule, arg):
                fn(X, v)


def test_preaggregators_valid_arguments_at_their_limits():
    X = torch.randn(6, 3)
    robustagg.arc(X, 2), robustagg.nnm(X, 5), robustagg.clip(X, math.inf), robustagg.bucketing(X, 7)


@pytest.mark.parametrize("rule", DISTANCE_RULES)
def test_distance_rules_cuda_tensor_without_cuda_kernels(rule, monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    try:
        with FakeTensorMode():
            X = torch.zeros(7, 3, device="cuda")
    except Exception as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"cannot make a fake CUDA tensor here: {exc}")
    monkeypatch.setattr(robustagg.validation, "cuda_kernels_built", lambda: False)
    with pytest.raises(
        RuntimeError, match=rf"^{rule}: X is a CUDA tensor but robustagg was built without CUDA kernels"
    ) as info:
        DISTANCE_RULES[rule](X)
    assert "move X to the CPU" in str(info.value)


@pytest.mark.parametrize("keep", [0, -1, 6])
def test_mean_around_median_bad_keep(keep):
    with pytest.raises(ValueError, match=rf"^mean_around_median: keep must be in \[1, n=5\], got keep={keep}"):
        robustagg.ops.mean_around_median(torch.zeros(5, 3), keep)


def test_mean_around_median_keep_type():
    with pytest.raises(TypeError, match=r"^mean_around_median: keep must be an int"):
        robustagg.ops.mean_around_median(torch.zeros(5, 3), 2.0)
