"""Autograd through the rules (SPEC 1, "Autograd"): a result that requires grad carries the right gradient.

Each derivative is checked against finite differences (torch.autograd.gradcheck,
float64) on inputs without ties, where every rule is differentiable; the rules
that are not derived (geometric median, centered clipping) must return results
that do not require grad.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck

import robustagg
from robustagg import ops


def rows(n: int, d: int, seed: int = 0, **kw) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_(kw.get("requires_grad", True))


def check(fn, *inputs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the autograd fallback warns when an op has no derivative
        assert gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_coordinate_rules(n):
    X = rows(n, 6, seed=n)
    check(ops.coordinate_median, X)
    check(ops.mean, X)
    for f in range((n - 1) // 2 + 1):
        check(lambda X: ops.trimmed_mean(X, f), X)
        check(lambda X: ops.meamed(X, f), X)
    # keep = 1 of an even count: the two middle values tie in exact arithmetic, and which one is
    # kept is decided by the rounding of the distances, so finite differences do not apply.
    for keep in range(1 + (n % 2 == 0), n + 1):
        check(lambda X: ops.mean_around_median(X, keep), X)


def test_gradient_follows_the_value_kept_where_rounding_breaks_a_tie():
    X = rows(2, 2000)
    out = ops.mean_around_median(X, 1)
    out.sum().backward()
    assert torch.equal(X.grad, (X == out).to(torch.float64))


def test_weighted_mean_in_both_arguments():
    X = rows(5, 4)
    w = torch.rand(5, dtype=torch.float64).add_(0.1).requires_grad_(True)
    check(ops.mean, X, w)


@pytest.mark.parametrize("center", [False, True])
def test_distances_norms_and_mixing(center):
    X = rows(5, 7)
    c = rows(1, 7, seed=1)[0].detach().requires_grad_(True) if center else None
    check(lambda X, *c: ops.pairwise_sq_distances(X, *c), X, *([c] if center else []))
    check(ops.row_sq_norms, X)
    v = rows(1, 7, seed=2)[0].detach().requires_grad_(True)
    check(ops.row_sq_norms_and_dots, X, v)
    check(ops.row_sq_distances, X, v)
    m = 6 if center else 5
    C = torch.randn(3, m, dtype=torch.float64, requires_grad=True)
    check(lambda C, X, *c: ops.mix_rows(C, X, *c), C, X, *([c] if center else []))


def test_distances_to_a_non_finite_row_are_constant():
    X = rows(4, 3).detach()
    X[2, 1] = float("nan")
    X.requires_grad_(True)
    D = ops.pairwise_sq_distances(X)
    D[torch.isfinite(D)].sum().backward()
    assert torch.isfinite(X.grad).all()
    assert torch.equal(X.grad[2], torch.zeros(3, dtype=torch.float64))
    Y = X.detach()[[0, 1, 3]].clone().requires_grad_(True)
    ops.pairwise_sq_distances(Y).sum().backward()
    assert torch.allclose(X.grad[[0, 1, 3]], Y.grad)


def test_selection_gradients_skip_trimmed_non_finite_values():
    X = rows(5, 3).detach()
    X[0, 0], X[1, 1] = float("nan"), float("inf")
    X.requires_grad_(True)
    robustagg.trimmed_mean(X, 1).sum().backward()
    assert X.grad[0, 0] == 0 and X.grad[1, 1] == 0
    assert torch.allclose(X.grad.sum(0), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize(
    "rule",
    [
        lambda X: robustagg.krum(X, 1),
        lambda X: robustagg.krum(X, 1, m=3),
        lambda X: robustagg.multi_krum(X, 1),
        lambda X: robustagg.bulyan(X, 1),
        lambda X: robustagg.nnm(X, 2).sum(0),
        lambda X: robustagg.bucketing(X, 2, generator=torch.Generator().manual_seed(0)).sum(0),
        lambda X: robustagg.clip(X, 1.0).sum(0),
        lambda X: robustagg.arc(X, 2).sum(0),
        lambda X: robustagg.TrimmedMean(f=2)(X),
        lambda X: (robustagg.NNM(f=2) >> robustagg.Krum(f=1))(X),
    ],
    ids=["krum", "krum-m3", "multi_krum", "bulyan", "nnm", "bucketing", "clip", "arc", "TrimmedMean", "NNM>>Krum"],
)
def test_rules_built_on_the_ops(rule):
    check(rule, rows(7, 5))


def test_krum_gradient_goes_to_the_selected_row():
    X = rows(7, 4)
    out = robustagg.krum(X, 1)
    chosen = [i for i in range(7) if torch.equal(X[i].detach(), out.detach())]
    assert len(chosen) == 1
    out.sum().backward()
    want = torch.zeros(7, 4, dtype=torch.float64)
    want[chosen[0]] = 1.0
    assert torch.equal(X.grad, want)


def test_underived_rules_do_not_require_grad():
    X = rows(7, 4)
    center = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    weights = torch.ones(7, dtype=torch.float64, requires_grad=True)
    for out in (
        robustagg.geometric_median(X),
        robustagg.geometric_median(X, weights=weights),
        robustagg.centered_clip(X, center, tau=1.0, iters=2),
        robustagg.CenteredClip(tau=1.0)(X),
        robustagg.GeometricMedian()(X),
    ):
        assert not out.requires_grad


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 9),
    d=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    op=st.sampled_from(["coordinate_median", "trimmed_mean", "meamed", "mean_around_median"]),
)
def test_any_shape(n, d, seed, op):
    """Random shapes and seeds: Gaussian values have no ties, so every rule is differentiable there."""
    X = rows(n, d, seed=seed)
    f = (n - 1) // 2
    call = {
        "coordinate_median": ops.coordinate_median,
        "trimmed_mean": lambda X: ops.trimmed_mean(X, f),
        "meamed": lambda X: ops.meamed(X, f),
        "mean_around_median": lambda X: ops.mean_around_median(X, max(1, n - f)),
    }[op]
    check(call, X)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gradients_come_back_in_the_input_dtype(dtype):
    X = torch.randn(5, 4).to(dtype).requires_grad_(True)
    (robustagg.trimmed_mean(X, 1).sum() + robustagg.krum(X, 1).sum() + ops.row_sq_norms(X).sum()).backward()
    assert X.grad.dtype == dtype


def test_gradient_of_extreme_columns_follows_the_contract_ranking():
    """Distances to the median that overflow are ranked at half scale, in the forward and in the gradient."""
    B = 1.7976931348623157e308
    X = torch.tensor([[-B], [-0.9 * B], [0.2 * B], [0.3 * B], [0.35 * B]], dtype=torch.float64, requires_grad=True)
    out = ops.mean_around_median(X, 4)
    out.sum().backward()
    kept = X.grad.flatten() > 0
    assert kept.tolist() == [False, True, True, True, True]
    assert out.item() == pytest.approx(X.detach().flatten()[kept].mean().item(), rel=1e-15)


def test_weighted_mean_gradient_with_weights_summing_beyond_float64():
    B = 1.7976931348623157e308
    X = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([B, B, 1.0], dtype=torch.float64, requires_grad=True)
    ops.mean(X, w).sum().backward()
    assert torch.allclose(X.grad, torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.0, 0.0]], dtype=torch.float64))
    assert torch.isfinite(w.grad).all()
