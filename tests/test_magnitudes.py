"""Finite means finite (SPEC 1): no finite input is treated as NaN/inf, at any magnitude.

float64 values are drawn over the whole range, from subnormals to the
largest finite double. Midpoints, sums, distances to the median, norms and
squared distances of such values overflow when computed directly; every
rule must still return what it returns at a safe scale. The rules are
positively homogeneous (or scale their length parameter along), so the
oracle is the float64 reference on ``X * 2**-k``, scaled back.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import robustagg
from robustagg import exact_geometry, ops, reference

from conftest import assert_exact, assert_sum_close

BIG = 1.7976931348623157e308


@st.composite
def wide_matrices(draw, max_n: int = 9, max_d: int = 6):
    """(n, d) float64 matrices whose entries are signed, with exponents anywhere in the float64 range,
    ties and the largest double included."""
    n = draw(st.integers(1, max_n))
    d = draw(st.integers(1, max_d))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    exponents = torch.randint(-1074, 1024, (n, d), generator=g).to(torch.float64)
    mantissa = torch.rand(n, d, generator=g, dtype=torch.float64) + 0.5
    X = torch.ldexp(mantissa, exponents.to(torch.int64)).clamp(max=BIG)
    X = X * torch.where(torch.rand(n, d, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    if draw(st.booleans()):
        X[torch.rand(n, d, generator=g) < 0.3] = BIG
    if draw(st.booleans()) and n > 1:
        X[1] = X[0]  # ties
    return X


def exponent_of(X: torch.Tensor) -> int:
    """k such that every sum and midpoint of X's values times 2**-k stays finite."""
    return X.shape[0].bit_length() + 1


@settings(max_examples=150, deadline=None)
@given(X=wide_matrices(), data=st.data())
def test_coordinate_rules_stay_finite_and_match_the_reference(X, data):
    n = X.shape[0]
    f = data.draw(st.integers(0, (n - 1) // 2))
    for name, rule, ref in [
        ("coordinate_median", robustagg.coordinate_median, reference.coordinate_median),
        ("mean", robustagg.mean, reference.mean),
        ("trimmed_mean", lambda X: robustagg.trimmed_mean(X, f), lambda X: reference.trimmed_mean(X, f)),
        ("meamed", lambda X: robustagg.meamed(X, f), lambda X: reference.meamed(X, f)),
    ]:
        out = rule(X)
        assert torch.isfinite(out).all(), f"{name}: finite input gave {out}"
        want = ref(X)
        assert torch.isfinite(want).all(), f"reference {name}: {want}"
        if name == "coordinate_median":
            assert_exact(out, want, X, name)
        else:
            assert_sum_close(out, want, X, name)


def test_the_reference_is_the_rule_at_a_safe_scale():
    """The oracle itself: on values where nothing overflows, scaling commutes with every coordinate rule."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(7, 50, generator=g, dtype=torch.float64) * 1e300
    k = exponent_of(X)
    for rule in (
        reference.coordinate_median,
        reference.mean,
        lambda X: reference.trimmed_mean(X, 2),
        lambda X: reference.meamed(X, 2),
    ):
        scaled = rule(X * 2.0**-k) * 2.0**k
        assert torch.equal(rule(X), scaled)


@pytest.mark.parametrize(
    ("column", "keep", "want"),
    [
        ([BIG, BIG], 2, BIG),  # midpoint and sum of two largest doubles
        ([-BIG, -BIG / 2, BIG], 2, -0.75 * BIG),  # the distance from BIG to the median overflows
        ([-BIG, -BIG, BIG / 2, BIG, BIG], 3, BIG / 6 + BIG / 3 + BIG / 3),
        ([-math.inf, -BIG, BIG, BIG, BIG], 4, 0.5 * BIG),  # a finite value whose distance overflows beats -inf
        ([-BIG, BIG], 1, -BIG),  # equal overflowing distances: the smaller value
    ],
)
def test_mean_around_the_median_of_extreme_values(column, keep, want):
    X = torch.tensor(column, dtype=torch.float64).reshape(-1, 1)
    out = ops.mean_around_median(X, keep)
    assert out.item() == pytest.approx(want, rel=1e-15)


def test_huge_weights_and_products():
    ones = torch.ones(3, 2, dtype=torch.float64)
    assert torch.equal(robustagg.mean(ones, torch.tensor([BIG, BIG, 1.0], dtype=torch.float64)), ones[0])
    big = torch.full((3, 2), 1e300, dtype=torch.float64)
    out = robustagg.mean(big, torch.tensor([1e10, 1.0, 1.0], dtype=torch.float64))
    assert out.tolist() == pytest.approx([1e300, 1e300], rel=1e-15)


def scale_for(X: torch.Tensor, *extra: torch.Tensor) -> float:
    """2**-k bringing every squared distance of the rows (and extra points) far inside the float64 range."""
    top = max(float(t.abs().max()) for t in (X, *extra))
    return 2.0 ** -max(0, math.frexp(top)[1] + 1 + math.ceil(math.log2(X.shape[1]) / 2) - 500)


@st.composite
def far_rows(draw):
    """Rows whose squared distances overflow float64: a common magnitude 1e150..1e308, some rows far larger."""
    n = draw(st.integers(6, 11))
    d = draw(st.integers(1, 8))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    magnitude = 10.0 ** draw(st.floats(150, 300))
    X = torch.randn(n, d, generator=g, dtype=torch.float64) * magnitude
    far = draw(st.integers(0, (n - 3) // 4))  # no more far rows than the rules' f: their scores stay well apart
    X[:far] *= 10.0 ** draw(st.floats(0, 308 - math.log10(magnitude) - 0.5))
    X = X.clamp(-BIG, BIG)
    return X[torch.randperm(n, generator=g)]


@settings(max_examples=60, deadline=None)
@given(X=far_rows())
def test_distance_rules_of_far_finite_rows(X):
    n = X.shape[0]
    f = (n - 3) // 4
    s = scale_for(X)
    D, finite = exact_geometry.distances_and_finite(X)
    assert finite.all()
    assert torch.equal(robustagg.krum(X, f), reference.krum(X * s, f) / s)
    assert_sum_close(robustagg.multi_krum(X, f), reference.multi_krum(X * s, f) / s, X, "multi_krum")
    assert_sum_close(robustagg.bulyan(X, f), reference.bulyan(X * s, f) / s, X, "bulyan")
    assert_sum_close(robustagg.nnm(X, f), reference.nnm(X * s, f) / s, X, "nnm")
    z = robustagg.geometric_median(X)
    z_ref = reference.geometric_median(X * s, nu=1e-6 * s)[0] / s
    assert torch.isfinite(z).all()
    assert ((z - z_ref).abs() <= 1e-6 * X.abs().max()).all()
    center = torch.zeros(X.shape[1], dtype=torch.float64)
    cc = robustagg.centered_clip(X, center, tau=float(X.abs().max()) / 4, iters=2)
    want = reference.centered_clip(X * s, center, tau=float(X.abs().max()) / 4 * s, iters=2) / s
    # A combination of rows up to 1e10 times the result: rounding is relative to the rows.
    assert ((cc - want).abs() <= 1e-12 * X.abs().max()).all()


def test_distances_below_the_float64_max_whose_sums_overflow():
    """Each squared distance fits in float64 but Krum's score, a sum of them, would not: the rows are scaled."""
    X = torch.randn(9, 5, generator=torch.Generator().manual_seed(99), dtype=torch.float64) * 10.0**153.45
    s = scale_for(X)
    exact = torch.cdist(X * s, X * s) ** 2 / s**2
    assert torch.isfinite(exact).all() and exact.max() > BIG / 2  # the premise: finite, and two of them overflow
    D, finite, k = exact_geometry.scaled_distances(X)
    assert finite.all() and k > 0 and torch.isfinite(D.sum(1)).all()
    assert torch.equal(robustagg.krum(X, 1), reference.krum(X * s, 1) / s)
    assert_sum_close(robustagg.multi_krum(X, 1), reference.multi_krum(X * s, 1) / s, X, "multi_krum")


@settings(max_examples=60, deadline=None)
@given(X=far_rows())
def test_clipping_far_finite_rows(X):
    s = scale_for(X)
    c = float(X.abs().max())
    out = robustagg.clip(X, c)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, reference.clip(X * s, c * s) / s, rtol=1e-12, atol=0)
    n = X.shape[0]
    f = (n - 1) // 2
    assert torch.allclose(robustagg.arc(X, f), reference.arc(X * s, f) / s, rtol=1e-12, atol=0)


def test_rows_of_1e200_through_every_distance_rule():
    X = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1e200
    for out in (
        robustagg.krum(X, 1),
        robustagg.multi_krum(X, 1),
        robustagg.geometric_median(X),
        robustagg.centered_clip(X, torch.zeros(4, dtype=torch.float64), 1.0),
    ):
        assert torch.isfinite(out).all()
    s = 2.0**-700
    assert not torch.equal(robustagg.clip(X, 1.0), X)  # clipped, not returned as they were
    norms = (robustagg.clip(X, 1e200) * s).norm(dim=1) / (1e200 * s)
    assert torch.allclose(norms, ((X * s).norm(dim=1) / (1e200 * s)).clamp(max=1.0))


def test_a_row_is_not_finite_only_when_an_entry_is_not():
    X = torch.randn(4, 3, dtype=torch.float64) * 1e200
    X[2, 1] = math.nan
    X[3, 0] = BIG
    D, finite = exact_geometry.distances_and_finite(X)
    assert finite.tolist() == [True, True, False, True]
    assert torch.isinf(D[2, [0, 1, 3]]).all()
    # Squared distances beyond the float64 range are +inf (their rounding), though the rows are finite.
    assert torch.isinf(D[0, 1])
    # A zero center far from rows of 1e156: shifted by the rows, its squared norm overflows, yet it is finite.
    near = torch.full((2, 3), 1e156, dtype=torch.float64)
    near[1] += 1e150
    D, finite = exact_geometry.distances_and_finite(near, torch.zeros(3, dtype=torch.float64))
    assert finite.all()
    assert D[0, 1].item() == pytest.approx(3e300, rel=1e-9)
    assert torch.isinf(D[0, 2]) and torch.isinf(D[1, 2])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(4, 12),
    d=st.integers(1, 50),
    seed=st.integers(0, 2**31 - 1),
    far=st.floats(1e3, 1e15),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    outliers=st.sampled_from(["ends", "all-refs", "ends-nan"]),
)
def test_far_rows_at_the_reference_positions(n, d, seed, far, dtype, outliers):
    """Rows far from the rest at the positions whose median shifts the Gram matrix (0, (n-1)/2, n-1) must not
    wash out the distances between the other rows."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    refs = [0, n - 1] if outliers != "all-refs" else [0, (n - 1) // 2, n - 1]
    X[refs] = X[refs].abs() * far  # same sign: the median of the references is an outlier's value
    if outliers == "ends-nan":
        X[0, 0] = math.nan
    X = X.to(dtype)
    D = ops.pairwise_sq_distances(X)
    want = reference.pairwise_sq_distances(X)
    finite = torch.isfinite(want)
    rel = ((D - want)[finite].abs() / want[finite].clamp_min(1e-300)).max()
    assert rel < 1e-9, f"relative error {rel.item():.3g}"
    f = len(refs)  # as many as the far rows: the others' scores are then not swamped by distances to them
    if n > 2 * f + 2:
        assert torch.equal(robustagg.krum(X, f), reference.krum(X, f))


def test_weights_beyond_float64_with_float32_values():
    X = torch.full((3, 2), 1e30)
    out = robustagg.mean(X, torch.tensor([1e300, 1e300, 1.0], dtype=torch.float64))
    assert torch.equal(out, X[0])


def test_overflowing_rows_at_the_reference_positions():
    """Both repairs at once: squared distances beyond float64, and far rows where the Gram's shift is taken."""
    c = math.sqrt(BIG / 4)
    X = torch.tensor([[c, c], [0.1, 0.2], [0.3, -0.1], [-c, -c], [0.5, 0.7], [c, c]], dtype=torch.float64)
    D, finite = exact_geometry.distances_and_finite(X)
    assert finite.all()
    assert D[1, 4].item() == pytest.approx(0.41, rel=1e-12)
    assert D[1, 2].item() == pytest.approx(0.13, rel=1e-12)


def test_far_references_with_a_center_and_three_rows():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3, 4, generator=g, dtype=torch.float64)
    X[[0, 2]] = X[[0, 2]].abs() * 1e9
    center = X[1] + 1e-3 * torch.randn(4, generator=g, dtype=torch.float64)
    D = ops.pairwise_sq_distances(X, center)
    assert D[1, 3].item() == pytest.approx(float((X[1] - center).square().sum()), rel=1e-9)


def test_copies_of_one_row_keep_their_zero_distances():
    """Identical (Byzantine) rows are exactly 0 apart: no repair changes that."""
    X = torch.randn(12, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    X[[0, 5, 11]] = X[0] * 1e6
    D = ops.pairwise_sq_distances(X)
    assert D[0, 5] == 0 and D[5, 11] == 0
    want = reference.pairwise_sq_distances(X)
    assert torch.allclose(D, want, rtol=1e-9, atol=0)
