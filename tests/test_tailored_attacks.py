"""The attacks tailored to the honest rows (SPEC 5), each against its definition written here in float64.

- MinMax and MinSum (Shejwalkar, Houmansadr, NDSS 2021): ``last_gamma`` against a 200-halving
  bisection of the paper's condition, for every perturbation, over random rows; the condition holds
  at gamma and fails just above it; the rows are ``mu + gamma * p``; one example of each worked by
  hand; the cap gamma_max; p = 0; rows of magnitude 1e150 and 1e-150; NaN; float32, float16 and
  bfloat16; non-contiguous rows; bad parameters.
- FangTrimmedMean (Fang, Cao, Jia, Gong, USENIX Security 2020): every value inside its interval, per
  coordinate and sign case; the draws' seeding and how much of the generator they consume; the cast.
- FangKrum (same paper): ``last_lambda`` against a halving loop written here around
  :func:`robustagg.krum`, from a float64 lambda_0; lambda = 0 below the threshold and for non-finite
  rows.

The checks shared with the other attacks (registry, bad rows, f = 0, too few honest rows, FangKrum's
n > 2f + 2) are in test_attacks.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import robustagg
from robustagg.attacks import PERTURBATIONS, FangKrum, FangTrimmedMean, MinMax, MinSum

from conftest import HALF_DTYPES

F64 = torch.float64


def _rows(h, d, seed, dtype=F64, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (shift + scale * torch.randn(h, d, generator=g, dtype=F64)).to(dtype)


def _np(X):
    return X.double().numpy()


# ---------------------------------------------------------------------------
# MinMax and MinSum: the paper's conditions, written from their definitions


def _perturbation(Hn, kind):
    mu = Hn.mean(0)
    if kind == "std":
        return -Hn.std(0, ddof=1)
    if kind == "unit":
        norm = np.linalg.norm(mu)
        return -mu / norm if norm > 0 else np.zeros_like(mu)
    return -np.sign(mu)


def _minmax_sides(Hn, m):
    """``(max_i ||m - h_i||, max_ij ||h_i - h_j||)``: MinMax holds when the first is at most the second."""
    return np.linalg.norm(m - Hn, axis=1).max(), np.linalg.norm(Hn[:, None] - Hn[None], axis=2).max()


def _minsum_sides(Hn, m):
    """``(sum_i ||m - h_i||^2, max_i sum_j ||h_i - h_j||^2)``."""
    return ((m - Hn) ** 2).sum(), ((Hn[:, None] - Hn[None]) ** 2).sum((1, 2)).max()


TAILORED = {"minmax": (MinMax, _minmax_sides), "minsum": (MinSum, _minsum_sides)}


def _bisect(sides, Hn, p, gamma_max, halvings=200):
    """The paper's search: the largest gamma in [0, gamma_max] at which ``m = mu + gamma p`` meets the condition."""
    mu = Hn.mean(0)

    def holds(gamma):
        lhs, rhs = sides(Hn, mu + gamma * p)
        return lhs <= rhs

    if holds(gamma_max):
        return gamma_max
    lo, hi = 0.0, gamma_max
    for _ in range(halvings):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if holds(mid) else (lo, mid)
    return lo


@pytest.mark.parametrize("name", TAILORED)
@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(2, 8),
    d=st.integers(1, 6),
    seed=st.integers(0, 2**31),
    perturbation=st.sampled_from(PERTURBATIONS),
    scale=st.sampled_from([1e-3, 1.0, 40.0]),
    shift=st.sampled_from([0.0, 0.4, 3.0]),
    gamma_max=st.sampled_from([100.0, 1.5, 0.2]),
)
def test_gamma_is_the_limit_of_the_papers_bisection(name, h, d, seed, perturbation, scale, shift, gamma_max):
    cls, sides = TAILORED[name]
    H = _rows(h, d, seed, scale=scale, shift=shift * scale)
    attack = cls(perturbation, gamma_max)
    out = attack(H, torch.zeros(3, d, dtype=F64))
    gamma, Hn = attack.last_gamma, _np(H)
    mu, p = Hn.mean(0), _perturbation(Hn, perturbation)
    assert 0 < gamma <= gamma_max
    assert gamma == pytest.approx(_bisect(sides, Hn, p, gamma_max), rel=1e-9, abs=0)
    lhs, rhs = sides(Hn, mu + gamma * p)
    assert lhs <= rhs * (1 + 1e-10)
    if gamma < gamma_max:
        above, _ = sides(Hn, mu + gamma * (1 + 1e-6) * p)
        assert above > rhs
    assert out.dtype == F64
    atol = 1e-14 * (np.abs(mu).max() + gamma * np.abs(p).max())  # mu + gamma p may cancel
    np.testing.assert_allclose(_np(out), np.tile(mu + gamma * p, (3, 1)), rtol=1e-13, atol=atol)


# Worked by hand. Rows h1 = (0, 0), h2 = (6, 0), h3 = (3, 12): mu = (3, 4), ||mu|| = 5, so "unit" is
# p = -(3/5, 4/5) and m = (1 - gamma/5) mu. Squared distances between the rows: 36, 153, 153.
# Rows 0, 2, 4 (1-D): mu = 2, sigma^2 = (4 + 0 + 4) / 2 = 4, so "std" is p = -2 and m = 2 - 2 gamma.
TRIANGLE = [[0.0, 0.0], [6.0, 0.0], [3.0, 12.0]]
LINE = [[0.0], [2.0], [4.0]]


def test_minmax_by_hand():
    """MinMax, T = max_ij ||h_i - h_j||^2.

    Triangle, "unit": T = 153, and ||m - h_i||^2 <= 153 reads
    h1: (5 - gamma)^2 <= 153, gamma <= 5 + sqrt(153);
    h2: gamma^2 - 14/5 gamma + 25 <= 153, roots of gamma^2 - 2.8 gamma - 128: gamma <= (2.8 + 22.8) / 2 = 64/5;
    h3: gamma^2 + 64/5 gamma + 64 <= 153, roots of gamma^2 + 12.8 gamma - 89: gamma <= (-12.8 + 22.8) / 2 = 5.
    gamma = 5, m = (0, 0) (h3 binds: ||m - h3||^2 = 9 + 144 = 153).

    Line, "std": T = 16; |m - 4| = 2 + 2 gamma <= 4 and |m - 0| = |2 - 2 gamma| <= 4: gamma = 1, m = 0.
    """
    for rows, perturbation, gamma, m in [(TRIANGLE, "unit", 5.0, [0.0, 0.0]), (LINE, "std", 1.0, [0.0])]:
        attack = MinMax(perturbation)
        out = attack(torch.tensor(rows, dtype=F64), torch.zeros(2, len(m), dtype=F64))
        assert attack.last_gamma == pytest.approx(gamma, rel=0, abs=1e-12)
        torch.testing.assert_close(out, torch.tensor([m, m], dtype=F64), rtol=0, atol=1e-12)


def test_minsum_by_hand():
    """MinSum: sum_i ||m - h_i||^2 <= max_i sum_j ||h_i - h_j||^2.

    Triangle, "unit" (||p|| = 1): the right side is max(0 + 36 + 153, 36 + 0 + 153, 153 + 153 + 0) = 306;
    the left side is sum_i ||h_i - mu||^2 + 3 gamma^2 = (25 + 25 + 64) + 3 gamma^2 = 114 + 3 gamma^2
    (the cross terms sum to 0 around the mean): gamma^2 <= 64, gamma = 8, m = mu - 8 (3/5, 4/5) =
    (-9/5, -12/5). Directly: ||m - h_i||^2 = 9, 333/5, 1152/5, summing to 306.

    Line, "std" (||p||^2 = 4): right side max(0 + 4 + 16, 4 + 0 + 4, 16 + 4 + 0) = 20; left side
    (4 + 0 + 4) + 3 * 4 gamma^2 = 8 + 12 gamma^2: gamma = 1, m = 0.
    """
    for rows, perturbation, gamma, m in [(TRIANGLE, "unit", 8.0, [-1.8, -2.4]), (LINE, "std", 1.0, [0.0])]:
        attack = MinSum(perturbation)
        out = attack(torch.tensor(rows, dtype=F64), torch.zeros(2, len(m), dtype=F64))
        assert attack.last_gamma == pytest.approx(gamma, rel=0, abs=1e-12)
        torch.testing.assert_close(out, torch.tensor([m, m], dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", TAILORED)
def test_gamma_max_caps_gamma(name):
    H = torch.tensor(TRIANGLE, dtype=F64)  # gamma = 5 (MinMax), 8 (MinSum) uncapped
    attack = TAILORED[name][0]("unit", gamma_max=2.5)
    out = attack(H, torch.zeros(2, 2, dtype=F64))
    assert attack.last_gamma == 2.5
    torch.testing.assert_close(out, torch.tensor([[1.5, 2.0]] * 2, dtype=F64), rtol=0, atol=1e-15)
    attack.reset()
    assert attack.last_gamma is None


@pytest.mark.parametrize("name", TAILORED)
@pytest.mark.parametrize(
    "perturbation,rows",
    [
        ("std", [[0.5, -1.25, 3.0]] * 4),  # identical rows: sigma = 0
        ("unit", [[1.0, -2.0, 3.0], [-1.0, 2.0, -3.0], [4.0, 0.0, 1.0], [-4.0, 0.0, -1.0]]),  # mu = 0
        ("sign", [[1.0, -2.0, 3.0], [-1.0, 2.0, -3.0], [4.0, 0.0, 1.0], [-4.0, 0.0, -1.0]]),
    ],
)
def test_zero_perturbation_sends_the_mean(name, perturbation, rows):
    H = torch.tensor(rows, dtype=F64)
    attack = TAILORED[name][0](perturbation)
    out = attack(H, torch.ones(3, 3, dtype=F64))
    assert attack.last_gamma == 0.0
    assert torch.equal(out, H.mean(0).expand(3, 3))


@pytest.mark.parametrize("name", TAILORED)
@pytest.mark.parametrize("perturbation", PERTURBATIONS)
@pytest.mark.parametrize("k", [1e150, 1e-150, 2.0**500, 2.0**-500, 1e300, 1e-300])
def test_magnitudes_scale_gamma_as_the_condition_does(name, perturbation, k):
    """Rows k H: mu, the distances and "std"'s p scale by k, "unit"'s and "sign"'s p do not. So gamma is
    the same for "std" and k times as large for "unit" and "sign"; the rows mu + gamma p are k times as
    large for all three. (Unscaled, ||p||^2 (C p)^2 would overflow or underflow here, and at 1e+-300 the
    squares in the std and the norm of mu too.)"""
    cls = TAILORED[name][0]
    H, B = _rows(6, 4, 11, shift=0.5), torch.zeros(2, 4, dtype=F64)
    base, scaled = cls(perturbation, gamma_max=1e308), cls(perturbation, gamma_max=1e308)
    rows, rows_k = base(H, B), scaled(H * k, B)
    factor = 1.0 if perturbation == "std" else k
    assert 0 < base.last_gamma < 1e3
    assert scaled.last_gamma == pytest.approx(base.last_gamma * factor, rel=1e-13)
    assert torch.isfinite(rows_k).all()
    torch.testing.assert_close(rows_k / k, rows, rtol=1e-13, atol=0)


@pytest.mark.parametrize("name", TAILORED)
@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_non_finite_honest_values_give_nan(name, perturbation):
    """A NaN or inf honest value, in a whole row or one entry: gamma is NaN and so is every sent value."""
    cls, B = TAILORED[name][0], torch.zeros(2, 4, dtype=F64)
    for row, col, bad in ((3, slice(None), math.nan), (1, 2, math.nan), (0, 1, math.inf)):
        H = _rows(5, 4, 2)
        H[row, col] = bad
        attack = cls(perturbation)
        assert attack(H, B).isnan().all()
        assert math.isnan(attack.last_gamma)


@pytest.mark.parametrize("name", TAILORED)
@pytest.mark.parametrize("perturbation", PERTURBATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, *HALF_DTYPES], ids=str)
def test_low_precision_rows_computed_in_float64(name, perturbation, dtype):
    cls = TAILORED[name][0]
    H = _rows(6, 5, 3, dtype, shift=0.5)
    low, wide = cls(perturbation), cls(perturbation)
    out = low(H, torch.zeros(2, 5, dtype=dtype))
    expected = wide(H.double(), torch.zeros(2, 5, dtype=F64))
    assert out.dtype == dtype and low.last_gamma == wide.last_gamma > 0
    assert torch.equal(out, expected.to(dtype))


@pytest.mark.parametrize("name", ["minmax", "minsum", "fang_trimmed_mean", "fang_krum"])
def test_non_contiguous_rows(name):
    H, B = _rows(12, 7, 4, shift=0.3).T[:, ::3], _rows(12, 3, 5).T[:, ::3]  # (7, 4) and (3, 4)
    assert not H.is_contiguous() and not B.is_contiguous()

    def build():
        if name == "fang_trimmed_mean":
            return FangTrimmedMean(generator=torch.Generator().manual_seed(1))
        return {"minmax": MinMax, "minsum": MinSum, "fang_krum": FangKrum}[name]()

    assert torch.equal(build()(H, B), build()(H.contiguous(), B.contiguous()))


@pytest.mark.parametrize("cls", [MinMax, MinSum])
def test_bad_perturbation_and_gamma_max(cls):
    for bad in ("STD", "gaussian", "", 1, None):
        with pytest.raises(
            ValueError, match=f"^{cls.name}: unknown perturbation={bad!r}; choose from std, unit, sign$"
        ):
            cls(perturbation=bad)
    for bad in (0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match=f"^{cls.name}: gamma_max must be finite and > 0, got gamma_max="):
            cls(gamma_max=bad)
    for bad in ("1", True, None, torch.tensor(1.0)):
        with pytest.raises(TypeError, match=f"^{cls.name}: gamma_max must be a real number"):
            cls(gamma_max=bad)


# ---------------------------------------------------------------------------
# FangTrimmedMean


def _fang_interval(column, b):
    """The documented interval of one coordinate, from the honest values of that coordinate."""
    mu, w_max, w_min = float(np.mean(column)), float(np.max(column)), float(np.min(column))
    if mu > 0:
        return (w_min / b, w_min) if w_min > 0 else (b * w_min, w_min)
    return (w_max, b * w_max) if w_max > 0 else (w_max, w_max / b)


# Columns: mu > 0 with w_min > 0, = 0 and < 0; mu < 0 with w_max > 0, = 0 and < 0; mu = 0.
CASES = np.array(
    [
        [1.0, 0.0, -1.0, 1.0, 0.0, -1.0, -1.0],
        [2.0, 1.0, 2.0, -2.0, -1.0, -2.0, 0.0],
        [3.0, 2.0, 5.0, -5.0, -2.0, -3.0, 1.0],
    ]
)
CASE_INTERVALS = [(1 / 3, 1.0), (0.0, 0.0), (-3.0, -1.0), (1.0, 3.0), (0.0, 0.0), (-1.0, -1 / 3), (1.0, 3.0)]


def test_fang_trimmed_mean_intervals_per_sign_case():
    assert [_fang_interval(col, 3.0) for col in CASES.T] == CASE_INTERVALS
    attack = FangTrimmedMean(b=3.0, generator=torch.Generator().manual_seed(0))
    out = _np(attack(torch.from_numpy(CASES), torch.zeros(4000, 7, dtype=F64)))
    for j, (lo, hi) in enumerate(CASE_INTERVALS):
        col, width = out[:, j], hi - lo
        assert lo <= col.min() and col.max() <= hi, j
        # uniform on [lo, hi]: 4000 draws reach within 1 % of each end, and their mean is near the middle
        assert col.min() <= lo + 0.01 * width and col.max() >= hi - 0.01 * width, j
        assert abs(col.mean() - (lo + hi) / 2) <= 0.02 * width, j
    assert abs(np.corrcoef(out[:, 0], out[:, 2])[0, 1]) < 0.1  # coordinates drawn independently


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 7),
    d=st.integers(1, 8),
    f=st.integers(1, 5),
    seed=st.integers(0, 2**31),
    shift=st.sampled_from([-2.0, -0.3, 0.0, 0.3, 2.0]),
    b=st.floats(1.001, 20.0),
)
def test_fang_trimmed_mean_values_in_their_intervals(h, d, f, seed, shift, b):
    H = _rows(h, d, seed, shift=shift)
    out = _np(FangTrimmedMean(b, torch.Generator().manual_seed(seed))(H, torch.zeros(f, d, dtype=F64)))
    for j, col in enumerate(_np(H).T):
        lo, hi = _fang_interval(col, b)
        assert (lo <= out[:, j]).all() and (out[:, j] <= hi).all(), (j, lo, hi, out[:, j])


def test_fang_trimmed_mean_generator():
    H, B = _rows(5, 6, 0), torch.zeros(3, 6, dtype=F64)

    def draw(seed):
        return FangTrimmedMean(generator=torch.Generator().manual_seed(seed))(H, B)

    assert torch.equal(draw(4), draw(4)) and not torch.equal(draw(4), draw(5))
    # one call draws f * d float64 uniforms from the generator, nothing more
    used, twin = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    attack = FangTrimmedMean(generator=used)
    first = attack(H, B)
    torch.rand(B.shape, generator=twin, dtype=F64)
    assert torch.equal(used.get_state(), twin.get_state())
    second = attack(H, B)
    assert not torch.equal(first, second)
    assert torch.equal(second, FangTrimmedMean(generator=twin)(H, B))
    with torch.random.fork_rng():  # without a generator: torch's default one
        torch.manual_seed(9)
        a = FangTrimmedMean()(H, B)
        torch.manual_seed(9)
        assert torch.equal(a, FangTrimmedMean()(H, B))


def test_fang_trimmed_mean_b_must_exceed_one():
    for bad in (1.0, 1, 0.5, -2.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="^fang_trimmed_mean: b must be finite and > 1, got b="):
            FangTrimmedMean(b=bad)
    assert FangTrimmedMean(b=1.0 + 1e-12).b == 1.0 + 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, *HALF_DTYPES], ids=str)
def test_fang_trimmed_mean_cast_to_the_honest_dtype(dtype):
    H = _rows(5, 6, 1, dtype, shift=0.2)
    out = FangTrimmedMean(generator=torch.Generator().manual_seed(2))(H, torch.zeros(3, 6, dtype=dtype))
    wide = FangTrimmedMean(generator=torch.Generator().manual_seed(2))(H.double(), torch.zeros(3, 6, dtype=F64))
    assert out.dtype == dtype and torch.equal(out, wide.to(dtype))


# ---------------------------------------------------------------------------
# FangKrum


def _lambda_0(Hn, f):
    """The paper's upper bound, n = h + f, the reference model's gradient 0."""
    h, d = Hn.shape
    n = h + f
    dist = np.sqrt(((Hn[:, None] - Hn[None]) ** 2).sum(-1))
    spread = min(sum(sorted(np.delete(dist[i], i))[: n - f - 2]) for i in range(h))
    return spread / ((n - 2 * f - 1) * math.sqrt(d)) + max(np.linalg.norm(row) for row in Hn) / math.sqrt(d)


def _krum_picks_crafted(H, f, lam):
    crafted = (lam * -torch.sign(H.double().mean(0))).to(H.dtype).expand(f, -1)
    return torch.equal(robustagg.krum(torch.cat([H, crafted]), f), crafted[0])


def _halve_until_krum_picks(H, f, threshold):
    """(lambda, lambda_0, k): lambda_0 halved k times until Krum picks a crafted row; 0 once below the threshold."""
    lam, k = _lambda_0(_np(H), f), 0
    while lam >= threshold:
        if _krum_picks_crafted(H, f, lam):
            return lam, lam * 2**k, k
        lam, k = lam / 2, k + 1
    return 0.0, lam * 2**k, k


@settings(max_examples=50, deadline=None)
@given(
    f=st.integers(1, 3),
    extra=st.integers(0, 5),
    d=st.integers(1, 6),
    seed=st.integers(0, 2**31),
    shift=st.sampled_from([0.0, 0.3, 1.0]),
    dtype=st.sampled_from([F64, torch.float32]),
)
def test_fang_krum_lambda_is_the_first_halving_krum_picks(f, extra, d, seed, shift, dtype):
    h = f + 3 + extra  # n = h + f >= 2f + 3
    H = _rows(h, d, seed, dtype, shift=shift)
    attack = FangKrum()
    out = attack(H, torch.zeros(f, d, dtype=dtype))
    lam, lam0, k = _halve_until_krum_picks(H, f, 1e-5)
    assert attack.last_lambda == pytest.approx(lam, rel=1e-12, abs=0)
    expected = (-attack.last_lambda * np.sign(_np(H).mean(0))).astype(np.float64)
    assert out.dtype == dtype and torch.equal(out, torch.from_numpy(expected).to(dtype).expand(f, d))
    if lam > 0:
        assert attack.last_lambda == pytest.approx(lam0 / 2**k, rel=1e-12)
        assert _krum_picks_crafted(H, f, attack.last_lambda)
        if k > 0:  # the previous halving was not picked
            assert not _krum_picks_crafted(H, f, 2 * attack.last_lambda)


def test_fang_krum_outcomes():
    """Rows of both outcomes: Krum picks a crafted row after some halvings, or never (lambda = 0). (At
    lambda_0 itself the crafted rows lie beyond every honest row's norm, and Krum did not pick them here.)"""
    outcomes = set()
    for seed in range(12):
        H = _rows(7, 3, seed, shift=0.3)
        attack = FangKrum()
        attack(H, torch.zeros(2, 3, dtype=F64))
        lam, _, k = _halve_until_krum_picks(H, 2, 1e-5)
        assert attack.last_lambda == pytest.approx(lam, rel=1e-12, abs=0)
        outcomes.add("zero" if lam == 0 else "first" if k == 0 else "halved")
    assert outcomes == {"zero", "halved"}


def test_fang_krum_far_cluster_gives_zero():
    """A tight cluster far from the origin: the single crafted row, at -lambda sign(mu), between the
    origin and -lambda_0 sign(mu), is never Krum's pick, so lambda is halved below the threshold and set to 0."""
    H = torch.full((5, 4), 10.0, dtype=F64) + 0.01 * _rows(5, 4, 0)
    attack = FangKrum(threshold=1e-3)
    out = attack(H, torch.zeros(1, 4, dtype=F64))
    assert attack.last_lambda == 0.0 and _halve_until_krum_picks(H, 1, 1e-3)[0] == 0.0
    assert torch.equal(out, torch.zeros(1, 4, dtype=F64))
    attack.reset()
    assert attack.last_lambda is None


def test_fang_krum_threshold():
    """lambda is kept while lambda >= threshold: Krum picks these rows at lambda_0 / 4."""
    H, B = _rows(7, 3, 1, shift=0.3), torch.zeros(2, 3, dtype=F64)
    found = FangKrum()
    found(H, B)
    lam, lam0 = found.last_lambda, _lambda_0(_np(H), 2)
    assert lam == pytest.approx(lam0 / 4, rel=1e-12)
    for threshold, expected in [(lam, lam), (lam * (1 + 1e-9), 0.0), (lam0 * 1.001, 0.0)]:
        attack = FangKrum(threshold=threshold)
        out = attack(H, B)
        assert attack.last_lambda == expected
        assert torch.equal(out, (-expected * torch.sign(H.mean(0))).expand(2, 3))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_fang_krum_non_finite_rows_give_zero(bad):
    H = _rows(6, 3, 1, shift=0.3)
    H[2, 1] = bad
    attack = FangKrum()
    out = attack(H, torch.zeros(2, 3, dtype=F64))
    assert attack.last_lambda == 0.0
    assert torch.equal(out, torch.zeros(2, 3, dtype=F64))  # 0 * -sign(mu), torch's sign(NaN) being 0
