"""Attacks (SPEC 5): each against its formula on hand-made inputs or a NumPy
float64 reference written here, the line searches against brute force, state,
dtypes, f = 0 and bad arguments. MinMax, MinSum and Fang's attacks against
their definitions: test_tailored_attacks.py."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import robustagg
from robustagg import attacks
from robustagg.attacks import (
    ALIE,
    ATTACKS,
    IPM,
    FangKrum,
    FangTrimmedMean,
    Gaussian,
    InfAttack,
    LabelFlip,
    Mimic,
    MinMax,
    MinSum,
    NaNAttack,
    NoAttack,
    OptimalALIE,
    OptimalIPM,
    SignFlip,
    alie_z,
    check_attack_rows,
    make_attack,
)

NAMES = (
    "none sign_flip ipm alie gaussian nan inf mimic label_flip optimal_alie optimal_ipm"
    " minmax minsum fang_trimmed_mean fang_krum"
).split()


def _make(name: str):
    if name.startswith("optimal"):
        return make_attack(name, aggregator=robustagg.CoordinateMedian())
    if name in ("gaussian", "fang_trimmed_mean"):
        return make_attack(name, generator=torch.Generator().manual_seed(0))
    return make_attack(name)


def _rows(h, d, seed, dtype=torch.float64, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (shift + scale * torch.randn(h, d, generator=g, dtype=torch.float64)).to(dtype)


def _np(X):
    return X.double().numpy()


# ---------------------------------------------------------------------------
# Formulas on hand-made inputs


def test_none_returns_a_copy():
    H, B = _rows(4, 3, 0), _rows(2, 3, 1)
    out = NoAttack()(H, B)
    assert torch.equal(out, B) and out.data_ptr() != B.data_ptr()


def test_sign_flip():
    H = torch.zeros(2, 3, dtype=torch.float64)
    B = torch.tensor([[1.0, -2.0, 3.5], [0.0, 4.0, -0.25]], dtype=torch.float64)
    assert torch.equal(SignFlip()(H, B), torch.tensor([[-1.0, 2.0, -3.5], [0.0, -4.0, 0.25]], dtype=torch.float64))


def test_ipm_hand():
    H = torch.tensor([[1.0, 2.0], [3.0, 6.0]], dtype=torch.float64)  # mu = [2, 4]
    B = torch.full((3, 2), 7.0, dtype=torch.float64)
    assert torch.equal(IPM(eps=0.5)(H, B), torch.tensor([[-1.0, -2.0]] * 3, dtype=torch.float64))
    assert torch.allclose(IPM()(H, B), torch.tensor([[-0.2, -0.4]] * 3, dtype=torch.float64), rtol=0, atol=1e-15)


def test_alie_explicit_z_uses_unbiased_std():
    # column 0: mean 2, squared deviations 4+0+4 -> var 8/2 = 4; column 1: mean 4, 9+1+16 -> var 26/2 = 13
    H = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]], dtype=torch.float64)
    B = torch.zeros(2, 2, dtype=torch.float64)
    expected = torch.tensor([[2 - 1.5 * 2, 4 - 1.5 * math.sqrt(13)]] * 2, dtype=torch.float64)
    assert torch.allclose(ALIE(z=1.5)(H, B), expected, rtol=1e-15, atol=1e-15)
    assert torch.allclose(ALIE(z=-0.5)(H, B), torch.tensor([[3.0, 4 + 0.5 * math.sqrt(13)]] * 2, dtype=torch.float64))


def test_alie_z_published_values():
    # n=25, f=5: s = 13 - 5 = 8, ratio (20 - 8) / 20; f=11: s = 2, ratio (14 - 2) / 14
    assert alie_z(25, 5) == pytest.approx(0.2533, abs=1e-4)
    assert alie_z(25, 11) == pytest.approx(1.0676, abs=1e-4)
    assert alie_z(25, 5) == NormalDist().inv_cdf(12 / 20)
    assert alie_z(25, 11) == NormalDist().inv_cdf(12 / 14)
    assert alie_z(10, 3) == NormalDist().inv_cdf((7 - 3) / 7)  # s = 6 - 3 = 3


def test_alie_default_z_from_n_and_f():
    H, B = _rows(20, 6, 2), _rows(5, 6, 3)
    Hn = _np(H)
    expected = Hn.mean(0) - NormalDist().inv_cdf(0.6) * Hn.std(0, ddof=1)
    assert np.allclose(_np(ALIE()(H, B)), np.tile(expected, (5, 1)), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("n,f", [(25, 13), (25, 20), (2, 0), (1, 0), (5, 5), (4, 7)])
def test_alie_z_undefined(n, f):
    with pytest.raises(ValueError, match=rf"^alie: default z needs .*got n={n}, f={f}"):
        alie_z(n, f)


def test_alie_z_bad_types_and_sign():
    with pytest.raises(ValueError, match="^alie: f must be >= 0, got f=-1"):
        alie_z(25, -1)
    with pytest.raises(TypeError, match="^alie: n must be an int"):
        alie_z(25.0, 3)
    H, B = _rows(3, 2, 0), _rows(4, 2, 1)  # n = 7, f = 4: no default z
    with pytest.raises(ValueError, match="^alie: default z needs .*n=7, f=4"):
        ALIE()(H, B)


def test_gaussian_seeded_and_distribution():
    H, B = _rows(3, 500, 0, shift=100.0), torch.zeros(200, 500, dtype=torch.float64)
    a = Gaussian(std=3.0, generator=torch.Generator().manual_seed(7))(H, B)
    b = Gaussian(std=3.0, generator=torch.Generator().manual_seed(7))(H, B)
    c = Gaussian(std=3.0, generator=torch.Generator().manual_seed(8))(H, B)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # 100k draws: the mean's standard error is 0.0095, the std's 0.0067
    assert abs(a.mean().item()) < 0.05
    assert abs(a.std().item() - 3.0) < 0.06
    assert abs(a.std(0).mean().item() - 3.0) < 0.06  # rows independent, not one row repeated
    a32 = Gaussian(std=3.0, generator=torch.Generator().manual_seed(7))(H.float(), B.float())
    assert torch.equal(a32, a.float())  # drawn in float64 then cast


def test_nan_and_inf_rows():
    H, B = _rows(3, 4, 0), _rows(2, 4, 1)
    assert NaNAttack()(H, B).isnan().all()
    out = InfAttack()(H, B)
    assert out.shape == (2, 4) and (out == math.inf).all()


# ---------------------------------------------------------------------------
# Mimic


def test_mimic_fixed_index():
    H, B = _rows(5, 3, 0), _rows(4, 3, 1)
    out = Mimic(index=2)(H, B)
    assert torch.equal(out, H[2].expand(4, 3))
    with pytest.raises(ValueError, match="^mimic: index 5 is out of range for h=5"):
        Mimic(index=5)(H, B)


def _dominant(perm_seed, d=6):
    """Rows c + a_i u + small noise; the largest deviation is the a = 4 row, along +u."""
    a = torch.tensor([4.0, -2.0, 1.0, 0.5, -1.0, 1.5], dtype=torch.float64)
    a = a[torch.randperm(6, generator=torch.Generator().manual_seed(perm_seed))]
    u = torch.ones(d, dtype=torch.float64) / math.sqrt(d)
    c = _rows(1, d, 99, scale=5.0)
    return c + a[:, None] * u + 0.01 * _rows(6, d, perm_seed + 100), int(torch.argmax(a)), u


def test_mimic_learns_the_dominant_direction_then_freezes():
    attack = Mimic(warmup=3)
    B = torch.zeros(2, 6, dtype=torch.float64)
    targets = []
    for call in range(3):
        H, best, u = _dominant(call)
        out = attack(H, B)
        assert attack.target == best and torch.equal(out, H[best].expand(2, 6))
        assert torch.dot(attack.direction, u).item() > 0.999
        targets.append(best)
    assert len(set(targets)) > 1  # the permutations moved the best row
    H, best, _ = _dominant(10)
    assert best != targets[-1]
    assert torch.equal(attack(H, B), H[targets[-1]].expand(2, 6)) and attack.calls == 3
    attack.reset()
    assert attack.direction is None and attack.calls == 0 and attack.target is None
    assert torch.equal(attack(H, B), H[best].expand(2, 6))


def test_mimic_ties_to_lowest_index():
    H = torch.tensor([[3.0, 0.0], [0.0, 0.0], [0.5, 0.0], [3.0, 0.0], [0.2, 0.0]], dtype=torch.float64)
    attack = Mimic()
    attack(H, torch.zeros(1, 2, dtype=torch.float64))
    assert attack.target == 0


def _np_normalise(v):
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


@settings(max_examples=30, deadline=None)
@given(h=st.integers(3, 6), d=st.integers(1, 5), seed=st.integers(0, 2**31))  # h = 2: both deviations tie in norm
def test_mimic_update_matches_documented_formula(h, d, seed):
    attack, warmup = Mimic(warmup=2), 2
    z, target = None, None
    for t in range(4):
        H = _rows(h, d, seed + t, scale=float(t + 1))
        out = attack(H, torch.zeros(1, d, dtype=torch.float64))
        if t < warmup:
            Hn = _np(H)
            D = Hn - Hn.mean(0)
            if z is None or not z.any():
                z = _np_normalise(D[np.argmax(np.linalg.norm(D, axis=1))])
            p = _np_normalise(D.T @ (D @ z) / h)
            z = _np_normalise(t / (t + 1) * z + p / (t + 1))
            target = int(np.argmax(Hn @ z))
            assert np.allclose(attack.direction.numpy(), z, rtol=1e-10, atol=1e-12)
        assert attack.target == target and torch.equal(out[0], H[target])


def test_mimic_f0_leaves_state():
    attack = Mimic()
    assert attack(_rows(3, 2, 0), torch.zeros(0, 2, dtype=torch.float64)).shape == (0, 2)
    assert attack.calls == 0 and attack.direction is None


# ---------------------------------------------------------------------------
# Label flip


def test_label_flip():
    attack = LabelFlip(num_classes=10)
    assert attack.flips_labels and not any(ATTACKS[n].flips_labels for n in NAMES if n != "label_flip")
    assert torch.equal(attack.flip_labels(torch.tensor([0, 3, 9, 5])), torch.tensor([9, 6, 0, 4]))
    assert torch.equal(LabelFlip(3).flip_labels(torch.arange(3)), torch.tensor([2, 1, 0]))
    H, B = _rows(3, 4, 0), _rows(2, 4, 1)
    assert torch.equal(attack(H, B), B)
    with pytest.raises(ValueError, match=r"^label_flip: labels must lie in \[0, 10\), got range \[0, 10\]"):
        attack.flip_labels(torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"^label_flip: labels must lie in \[0, 10\)"):
        attack.flip_labels(torch.tensor([-1, 2]))
    with pytest.raises(TypeError, match="^label_flip: y must be an integer tensor"):
        attack.flip_labels(torch.tensor([1.0]))
    with pytest.raises(TypeError, match="^label_flip: y must be an integer tensor"):
        attack.flip_labels([1, 2])


# ---------------------------------------------------------------------------
# Line searches against brute force (NumPy aggregators written here)


def np_median(X):
    return np.median(X, axis=0)


def np_mean(X):
    return X.mean(0)


def np_trimmed(X, f=4):
    return np.sort(X, axis=0)[f : X.shape[0] - f].mean(0)


def np_krum(X, f=4):
    D = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    scores = [np.sort(np.delete(D[i], i))[: X.shape[0] - f - 2].sum() for i in range(X.shape[0])]
    return X[int(np.argmin(scores))]


RULES = {
    "median": (robustagg.CoordinateMedian(), np_median),
    "mean": (robustagg.Mean(), np_mean),
    "trimmed_mean": (robustagg.TrimmedMean(4), np_trimmed),
    "krum": (robustagg.Krum(4), np_krum),
}
H_OPT = _rows(12, 4, 6, shift=0.3)  # every rule but Krum-IPM has a non-trivial optimum here
F_OPT = 4


def _deviation(np_rule, Hn, row):
    return np.linalg.norm(np_rule(np.vstack([Hn, np.tile(row, (F_OPT, 1))])) - Hn.mean(0))


def _brute(np_rule, upper, row_at):
    Hn = _np(H_OPT)
    scales = np.linspace(0.0, upper, 4001)
    devs = np.array([_deviation(np_rule, Hn, row_at(s)) for s in scales])
    k = int(np.argmax(devs))  # first maximum: ties to the smaller scale
    return scales[k], devs[k], scales[1] - scales[0]


def _setup(kind, rule):
    agg, np_rule = RULES[rule]
    Hn = _np(H_OPT)
    mu, sigma = Hn.mean(0), Hn.std(0, ddof=1)
    if kind == "alie":
        return OptimalALIE(agg, z_max=5.0), np_rule, 5.0, lambda s: mu - s * sigma
    return OptimalIPM(agg, eps_max=8.0), np_rule, 8.0, lambda s: -s * mu


@pytest.mark.parametrize("kind", ["alie", "ipm"])
@pytest.mark.parametrize("rule", ["median", "mean", "trimmed_mean"])
def test_optimal_matches_brute_force(rule, kind):
    attack, np_rule, upper, row_at = _setup(kind, rule)
    out = attack(H_OPT, torch.zeros(F_OPT, 4, dtype=torch.float64))
    s = attack.last_scale
    assert np.allclose(_np(out), np.tile(row_at(s), (F_OPT, 1)), rtol=1e-15, atol=1e-15)
    best_s, best_dev, fine = _brute(np_rule, upper, row_at)
    assert best_s > 0.5  # not a flat objective
    # coarse spacing upper/10, then two zooms of 11 points over +-1 spacing
    resolution = upper / 10 * (2 / 10) ** 2
    assert abs(s - best_s) <= resolution + fine
    assert _deviation(np_rule, _np(H_OPT), row_at(s)) >= best_dev * (1 - 1e-3)


@pytest.mark.parametrize("kind", ["alie", "ipm"])
def test_optimal_against_krum(kind):
    """Krum's objective is piecewise and jumps, so a peak narrower than the coarse
    spacing can be missed; the search still beats its coarse grid and is a local
    maximum to within its resolution."""
    attack, np_rule, upper, row_at = _setup(kind, "krum")
    attack(H_OPT, torch.zeros(F_OPT, 4, dtype=torch.float64))
    Hn, s = _np(H_OPT), attack.last_scale
    found = _deviation(np_rule, Hn, row_at(s))
    assert found >= max(_deviation(np_rule, Hn, row_at(x)) for x in np.linspace(0, upper, 11))
    nearby = np.linspace(max(0.0, s - upper / 10), min(upper, s + upper / 10), 801)
    assert found >= max(_deviation(np_rule, Hn, row_at(x)) for x in nearby) * (1 - 0.05)


@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "krum"])
def test_optimal_alie_beats_default_alie(rule):
    agg, np_rule = RULES[rule]
    B = torch.zeros(F_OPT, 4, dtype=torch.float64)
    Hn = _np(H_OPT)
    default = _deviation(np_rule, Hn, _np(ALIE()(H_OPT, B))[0])
    optimal = _deviation(np_rule, Hn, _np(OptimalALIE(agg)(H_OPT, B))[0])
    assert optimal >= default - 1e-12 and optimal > 0


def test_optimal_leaves_stateful_aggregators_alone():
    c0 = _rows(1, 4, 9)[0]
    agg = robustagg.CenteredClip(tau=0.5, center=c0.clone())
    center = agg.center
    attack = OptimalALIE(agg)
    attack(H_OPT, torch.zeros(F_OPT, 4, dtype=torch.float64))
    assert agg.center is center and torch.equal(center, c0)
    # every trial saw the same center: same choice as with a fresh aggregator per trial
    fresh = OptimalALIE(lambda X: robustagg.CenteredClip(tau=0.5, center=c0.clone())(X))
    fresh(H_OPT, torch.zeros(F_OPT, 4, dtype=torch.float64))
    assert attack.last_scale == fresh.last_scale
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    pipe = robustagg.Bucketing(2, g) >> robustagg.CenteredClip(tau=0.5)
    OptimalIPM(pipe)(H_OPT, torch.zeros(F_OPT, 4, dtype=torch.float64))
    assert pipe.rule.center is None and torch.equal(g.get_state(), state)


def test_optimal_cost_and_ties():
    calls = []

    def constant(X):
        calls.append(1)
        return torch.zeros(4, dtype=X.dtype)

    attack = OptimalALIE(constant)
    assert attack.last_scale is None
    attack(H_OPT, torch.zeros(F_OPT, 4, dtype=torch.float64))
    assert len(calls) == 33 and attack.last_scale == 0.0  # every deviation ties: the smallest scale
    attack.reset()
    assert attack.last_scale is None


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_optimal_never_chooses_non_finite(bad):
    """The mean's deviation grows with z; a non-finite aggregate beyond z = 3 must never be chosen."""
    sigma, B = H_OPT.std(0), torch.zeros(F_OPT, 4, dtype=torch.float64)

    def bad_beyond_3(X):
        z = ((H_OPT.mean(0) - X[-1]) / sigma).mean().item()
        return X.mean(0) if z <= 3.0 else torch.full((4,), bad, dtype=X.dtype)

    attack = OptimalALIE(bad_beyond_3, z_max=10.0)
    assert torch.isfinite(attack(H_OPT, B)).all()
    assert 3.0 - 0.04 <= attack.last_scale <= 3.0 + 1e-9
    attack = OptimalIPM(lambda X: torch.full((4,), bad, dtype=X.dtype))
    assert torch.equal(attack(H_OPT, B), torch.zeros(F_OPT, 4, dtype=torch.float64)) and attack.last_scale == 0.0


# ---------------------------------------------------------------------------
# Properties, dtypes, f = 0


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(2, 9),
    f=st.integers(1, 4),
    d=st.integers(1, 7),
    seed=st.integers(0, 2**31),
    z=st.floats(-5, 5),
    eps=st.floats(1e-3, 100),
)
def test_alie_and_ipm_properties(h, f, d, seed, z, eps):
    H, B = _rows(h, d, seed, scale=10.0, shift=3.0), _rows(f, d, seed + 1)
    Hn = _np(H)
    alie = _np(ALIE(z=z)(H, B))
    assert np.allclose(alie, np.tile(Hn.mean(0) - z * Hn.std(0, ddof=1), (f, 1)), rtol=1e-12, atol=1e-12)
    ipm = _np(IPM(eps=eps)(H, B))
    assert np.allclose(ipm, np.tile(-eps * Hn.mean(0), (f, 1)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_dtype_device_shape_and_inputs_untouched(name, dtype):
    H, B = _rows(7, 5, 0, dtype), _rows(3, 5, 1, dtype)
    H0, B0 = H.clone(), B.clone()
    out = _make(name)(H, B)
    assert out.shape == (3, 5) and out.dtype == dtype and out.device == H.device
    assert torch.equal(H, H0) and torch.equal(B, B0)
    assert out.data_ptr() not in (H.data_ptr(), B.data_ptr())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_statistics_in_float64(dtype):
    H, B = _rows(6, 8, 4, dtype, scale=3.0, shift=50.0), _rows(2, 8, 5, dtype)
    Hn = _np(H)
    expected = torch.from_numpy(Hn.mean(0) - 1.3 * Hn.std(0, ddof=1)).to(dtype)
    assert torch.equal(ALIE(z=1.3)(H, B)[0], expected)
    assert torch.equal(IPM(eps=0.3)(H, B)[1], torch.from_numpy(-0.3 * Hn.mean(0)).to(dtype))


@pytest.mark.parametrize("name", NAMES)
def test_f_zero(name):
    attack = _make(name)
    out = attack(_rows(1, 4, 0, torch.float32), torch.zeros(0, 4))
    assert out.shape == (0, 4) and out.dtype == torch.float32


# ---------------------------------------------------------------------------
# Registry and bad arguments


def test_registry():
    assert sorted(ATTACKS) == sorted(NAMES)
    assert all(cls.name == name for name, cls in ATTACKS.items())
    assert all(hasattr(attacks, n) for n in attacks.__all__)
    a = make_attack("alie", z=0.7)
    assert isinstance(a, ALIE) and a.z == 0.7
    with pytest.raises(
        ValueError, match="^make_attack: unknown attack 'lie'; valid names: " + ", ".join(sorted(NAMES))
    ):
        make_attack("lie")


def test_repr():
    agg = robustagg.CoordinateMedian()
    assert repr(NoAttack()) == "NoAttack()"
    assert repr(ALIE(z=1.5)) == "ALIE(z=1.5)" and repr(ALIE()) == "ALIE(z=None)"
    assert repr(Gaussian(2.0, torch.Generator())) == "Gaussian(std=2.0)"
    assert repr(Mimic()) == "Mimic(index=None, warmup=20)"
    assert repr(OptimalIPM(agg, steps=5)) == f"OptimalIPM(aggregator={agg!r}, eps_max=10.0, steps=5)"
    assert repr(MinMax()) == "MinMax(perturbation='std', gamma_max=100.0)"
    assert repr(MinSum("sign", 5)) == "MinSum(perturbation='sign', gamma_max=5.0)"
    assert repr(FangTrimmedMean(3, torch.Generator())) == "FangTrimmedMean(b=3.0)"
    assert repr(FangKrum()) == "FangKrum(threshold=1e-05)"


@pytest.mark.parametrize("name", NAMES)
def test_bad_rows(name):
    attack = _make(name)
    H, B = _rows(4, 3, 0), _rows(2, 3, 1)
    with pytest.raises(TypeError, match=f"^{name}: honest must be a torch.Tensor, got list"):
        attack(H.tolist(), B)
    with pytest.raises(TypeError, match=f"^{name}: byzantine must be a torch.Tensor, got ndarray"):
        attack(H, B.numpy())
    with pytest.raises(ValueError, match=rf"^{name}: honest must be 2-D \(h, d\), got 1-D with shape \[3\]"):
        attack(H[0], B)
    with pytest.raises(ValueError, match=rf"^{name}: byzantine must be 2-D \(f, d\), got 3-D"):
        attack(H, B[None])
    with pytest.raises(ValueError, match=f"^{name}: byzantine has d=2 columns, honest has d=3"):
        attack(H, B[:, :2])
    with pytest.raises(TypeError, match=f"^{name}: byzantine is torch.float32, honest is torch.float64"):
        attack(H, B.float())
    with pytest.raises(ValueError, match=f"^{name}: byzantine is on meta, honest on cpu; they must match"):
        attack(H, B.to("meta"))
    with pytest.raises(
        TypeError, match=f"^{name}: honest must be float32, float64, float16 or bfloat16, got torch.int64"
    ):
        attack(H.long(), B.long())


@pytest.mark.parametrize(
    "name,h,message",
    [
        ("alie", 1, "alie: needs at least 2 honest rows for the standard deviation, got h=1"),
        ("optimal_alie", 1, "optimal_alie: needs at least 2 honest rows for the standard deviation, got h=1"),
        ("ipm", 0, "ipm: needs at least 1 honest row for the mean, got h=0"),
        ("optimal_ipm", 0, "optimal_ipm: needs at least 1 honest row for the mean, got h=0"),
        ("mimic", 0, "mimic: needs at least 1 honest row to copy, got h=0"),
        ("minmax", 1, "minmax: needs at least 2 honest rows for the distances, got h=1"),
        ("minsum", 1, "minsum: needs at least 2 honest rows for the distances, got h=1"),
        ("fang_trimmed_mean", 0, "fang_trimmed_mean: needs at least 1 honest row for the mean, got h=0"),
        ("fang_krum", 0, "fang_krum: needs at least 1 honest row for the mean, got h=0"),
    ],
)
def test_too_few_honest_rows(name, h, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        _make(name)(_rows(h, 3, 0), _rows(2, 3, 1))
    before = message.replace(f"got h={h}", f"got {h} of n={h + 2} with f=2")  # the same refusal, before the run
    with pytest.raises(ValueError, match=f"^{before}$"):
        check_attack_rows(name, h + 2, 2)


@pytest.mark.parametrize("h,f", [(1, 1), (3, 1), (2, 2), (4, 2), (5, 3)])
def test_fang_krum_needs_more_than_2f_plus_2_rows(h, f):
    n = h + f
    message = f"^fang_krum: needs n > 2f \\+ 2 for Krum, got n={n} with f={f}$"
    with pytest.raises(ValueError, match=message):
        FangKrum()(_rows(h, 3, 0), _rows(f, 3, 1))
    with pytest.raises(ValueError, match=message):
        check_attack_rows("fang_krum", n, f)
    check_attack_rows("fang_krum", 2 * f + 3, f)  # the fewest rows it accepts
    assert FangKrum()(_rows(f + 3, 3, 0), _rows(f, 3, 1)).shape == (f, 3)


@pytest.mark.parametrize("name", NAMES)
def test_check_attack_rows_accepts_what_the_call_accepts(name):
    check_attack_rows(name, 10, 3)
    check_attack_rows(name, 4, 0)  # f = 0: nothing to send, nothing needed
    assert _make(name)(_rows(7, 5, 0), _rows(3, 5, 1)).shape == (3, 5)


@pytest.mark.parametrize(
    "build,exc,message",
    [
        (lambda: IPM(eps=0), ValueError, "ipm: eps must be finite and > 0, got eps=0.0"),
        (lambda: IPM(eps=-1.0), ValueError, "ipm: eps must be finite and > 0"),
        (lambda: IPM(eps=math.nan), ValueError, "ipm: eps must be finite and > 0"),
        (lambda: IPM(eps="0.1"), TypeError, "ipm: eps must be a real number"),
        (lambda: ALIE(z=math.inf), ValueError, "alie: z must be finite, got z=inf"),
        (lambda: ALIE(z="1"), TypeError, "alie: z must be a real number"),
        (lambda: Gaussian(std=0.0), ValueError, "gaussian: std must be finite and > 0"),
        (lambda: Gaussian(std=-2.0), ValueError, "gaussian: std must be finite and > 0"),
        (lambda: Gaussian(generator=3), TypeError, "gaussian: generator must be a torch.Generator"),
        (lambda: Mimic(index=-1), ValueError, "mimic: index must be >= 0, got index=-1"),
        (lambda: Mimic(index=1.0), TypeError, "mimic: index must be an int"),
        (lambda: Mimic(warmup=0), ValueError, "mimic: warmup must be >= 1, got warmup=0"),
        (lambda: LabelFlip(num_classes=1), ValueError, "label_flip: num_classes must be >= 2"),
        (lambda: OptimalALIE(robustagg.Mean(), steps=1), ValueError, "optimal_alie: steps must be >= 2, got steps=1"),
        (lambda: OptimalIPM(robustagg.Mean(), steps=2.5), TypeError, "optimal_ipm: steps must be an int"),
        (lambda: OptimalALIE(robustagg.Mean(), z_max=0.0), ValueError, "optimal_alie: z_max must be finite and > 0"),
        (
            lambda: OptimalIPM(robustagg.Mean(), eps_max=math.inf),
            ValueError,
            "optimal_ipm: eps_max must be finite and > 0",
        ),
        (lambda: OptimalIPM(3), TypeError, "optimal_ipm: aggregator must be callable"),
        (lambda: MinMax("gauss"), ValueError, "minmax: unknown perturbation='gauss'; choose from std, unit, sign"),
        (lambda: MinSum(gamma_max=0), ValueError, "minsum: gamma_max must be finite and > 0, got gamma_max=0.0"),
        (lambda: FangTrimmedMean(b=1.0), ValueError, "fang_trimmed_mean: b must be finite and > 1, got b=1.0"),
        (lambda: FangTrimmedMean(b="2"), TypeError, "fang_trimmed_mean: b must be a real number"),
        (lambda: FangTrimmedMean(generator=0), TypeError, "fang_trimmed_mean: generator must be a torch.Generator"),
        (lambda: FangKrum(threshold=0.0), ValueError, "fang_krum: threshold must be finite and > 0, got threshold=0.0"),
        (lambda: FangKrum(threshold=True), TypeError, "fang_krum: threshold must be a real number"),
    ],
)
def test_bad_parameters(build, exc, message):
    with pytest.raises(exc, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        build()


def test_aggregator_returning_wrong_shape():
    with pytest.raises(
        ValueError, match=r"^optimal_alie: aggregator returned \[3, 4\], expected a tensor of shape \[4\]"
    ):
        OptimalALIE(lambda X: X[:3])(H_OPT, torch.zeros(2, 4, dtype=torch.float64))
