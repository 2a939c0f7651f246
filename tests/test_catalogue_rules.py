"""Catalogue rules against the float64 reference: MDA, MoNNA (robustagg.distance), SMEA, CAF, DnC
(robustagg.spectral), FLTrust, SignGuard, clipped clustering and FoolsGold's weights (robustagg.similarity).

Selection rules are compared exactly (within the float64 summation of the chosen rows' mean), except where
two candidates' scores lie within a relative 1e-7 of each other, where rounding may legitimately swap them:
then the result must be the mean of one of the near-tied candidates (subset rules, MoNNA, clipped
clustering), or only its shape and dtype are checked (CAF, DnC, SignGuard). Inputs whose finite values are
small multiples of 1/2 (times a power of two) give exact squared distances, norms and sign fractions in any
method, so on them the distance ties are checked strictly. Eigenvalues and cosines are never exact: their
ties are always near ties.

Inputs: gaussian rows, rows with exact ties, signed zeros, tight clusters, a shifted outlier group;
duplicated rows; whole rows of NaN / +inf / -inf and rows with one non-finite entry; contiguous, transposed
and strided layouts; float64 (also times 2**498 or 2**-498: huge and tiny finite magnitudes), float32,
float16 and bfloat16 (the reference computed from the same values and cast to the dtype).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from test_distance import _note, assert_vec_close, clustered, finite_scale, near, with_rows_overwritten

import robustagg.distance
import robustagg.similarity
import robustagg.spectral
from robustagg import reference

from conftest import DEVICES, assert_same_bits, assert_sum_close

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
NEAR_TIE = 1e-7
F64 = torch.float64
# float64 drawn more often: it is the dtype at which the rules are compared most tightly
INPUT_DTYPES = [F64, F64, torch.float32, torch.float16, torch.bfloat16]
PATTERNS = ["gaussian", "ties", "zeros", "clustered", "outliers"]
LAYOUTS = ["contiguous", "transposed", "strided"]
HUGE, TINY = 498, -498  # X * 2**498 ~ 1e150 and X * 2**-498 ~ 1e-150: no square over- or underflows


# ---------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class CaseSpec:
    n: int
    d: int
    seed: int
    pattern: str
    dups: int = 0  # rows overwritten by a copy of another row
    nan_rows: int = 0
    posinf_rows: int = 0
    neginf_rows: int = 0
    partial_rows: int = 0  # rows with a single NaN / +inf / -inf entry
    layout: str = "contiguous"
    exponent: int = 0  # values times 2**exponent (float64 only)


def _values(spec: CaseSpec, g: torch.Generator) -> torch.Tensor:
    n, d = spec.n, spec.d
    if spec.pattern == "ties":
        pool = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0], dtype=F64)
        return pool[torch.randint(0, len(pool), (n, d), generator=g)]
    if spec.pattern == "zeros":
        pool = torch.tensor([-0.0, 0.0, 0.0, 1.0, -1.0, 0.5], dtype=F64)
        return pool[torch.randint(0, len(pool), (n, d), generator=g)]
    if spec.pattern == "clustered":
        return clustered(n, d, g, spread=1e-3)
    X = torch.randn(n, d, generator=g, dtype=F64)
    if spec.pattern == "outliers" and n > 1:
        bad = torch.randperm(n, generator=g)[: int(torch.randint(1, n // 2 + 1, (1,), generator=g))]
        X[bad] += 6.0 * torch.randn(d, generator=g, dtype=F64)
    return X


def make_case(spec: CaseSpec, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(spec.seed)
    return with_rows_overwritten(_values(spec, g) * 2.0**spec.exponent, spec, g, dtype)


@st.composite
def cases(draw, min_n: int = 1, max_n: int = 12, max_d: int = 40, scaled: bool = True, nonfinite: bool = True):
    """(spec, dtype): a matrix of up to max_n rows and max_d columns."""
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, max_d))
    dtype = draw(st.sampled_from(INPUT_DTYPES))
    counts = [0, 0, 0, 0]
    if nonfinite and draw(st.booleans()):
        left = n
        for j in range(4):
            counts[j] = draw(st.integers(0, min(left, 2)))
            left -= counts[j]
    exponent = draw(st.sampled_from([0, 0, HUGE, TINY])) if scaled and dtype == F64 else 0
    spec = CaseSpec(
        n,
        d,
        draw(st.integers(0, 2**31 - 1)),
        draw(st.sampled_from(PATTERNS)),
        draw(st.integers(0, n // 2)),
        *counts,
        layout=draw(st.sampled_from(LAYOUTS)),
        exponent=exponent,
    )
    return spec, dtype


def f_values(n: int):
    """f from 0 to its limit (n - 1) // 2, both ends drawn often."""
    top = (n - 1) // 2
    return st.one_of(st.just(0), st.just(top), st.integers(0, top))


# ---------------------------------------------------------------------------
# Helpers


def record(what: str) -> None:
    """A note and a statistics event inside a hypothesis example; nothing elsewhere."""
    _note(what)
    try:
        event(what)
    except InvalidArgument:
        pass


def skip_values(why: str) -> None:
    record(f"shape only: {why}")


def rows64(X: torch.Tensor) -> tuple[torch.Tensor, list[bool]]:
    X64 = X.detach().cpu().to(F64)
    return X64, [bool(torch.isfinite(r).all()) for r in X64]


def exact_data(X: torch.Tensor, exponent: int = 0) -> bool:
    """Finite values all small multiples of 1/2 (times 2**exponent): every squared distance, norm and sign
    fraction is exact in any method."""
    V = X.detach().cpu().to(F64)
    V = V[torch.isfinite(V)] * 2.0**-exponent
    return bool(((V * 2).round() == V * 2).all() and (V.abs() <= 8).all())


def spread2(X: torch.Tensor) -> float:
    """max_i ||x_i - mean||^2 over the row-finite rows (0 if fewer than two): the scale of a covariance."""
    X64, fin = rows64(X)
    R = X64[[i for i, ok in enumerate(fin) if ok]]
    if R.shape[0] < 2:
        return 0.0
    C = R - R.mean(0)
    return float((C * C).sum(1).max())


def check_shape(out: torch.Tensor, X: torch.Tensor, what: str) -> None:
    assert out.shape == (X.shape[1],) and out.dtype == X.dtype and out.device == X.device, (
        what,
        out.shape,
        out.dtype,
        out.device,
    )


def rows_mean(X: torch.Tensor, rows) -> torch.Tensor:
    """The float64 mean of the row-finite rows among ``rows`` (all NaN if none), cast to X's dtype."""
    X64, fin = rows64(X)
    return reference._mean_or_nan(X64, fin, list(rows), X.dtype)


def assert_one_of(out: torch.Tensor, candidates: list[torch.Tensor], X: torch.Tensor, what: str) -> None:
    """out matches (assert_sum_close) the first candidate, the reference's choice, or one of the others."""
    out = out.detach().cpu()
    X = X.detach().cpu()
    errors = []
    for cand in candidates:
        try:
            assert_sum_close(out, cand, X, what)
            return
        except AssertionError as e:
            errors.append(e)
    if len(candidates) > 1:
        raise AssertionError(f"{what}: matches none of {len(candidates)} near-tied candidates; {errors[0]}")
    raise errors[0]


def restore_input(X: torch.Tensor):
    before = X.clone()

    def check(what: str = "input modified") -> None:
        assert_same_bits(X.reshape(-1), before.reshape(-1), what)

    return check


# ---------------------------------------------------------------------------
# MDA and SMEA: subset searches


def _top_pair(D: torch.Tensor, S: tuple[int, ...]) -> tuple[tuple[int, int] | None, bool]:
    """S's pair of largest D (the first in combinations order) and whether no other pair of S is near it."""
    pairs = sorted(itertools.combinations(S, 2), key=lambda p: -float(D[p]))
    if not pairs:
        return None, True
    top = float(D[pairs[0]])
    return pairs[0], all(not near(float(D[p]), top) and float(D[p]) != top for p in pairs[1:])


def mda_candidates(X: torch.Tensor, f: int, exact: bool) -> list[tuple[int, ...]]:
    """The reference's subset first, then every subset whose diameter is near it, unless both diameters are
    the same clear largest pair (then equal in any method and the first subset wins)."""
    values = reference.subset_values(X.cpu(), f, "mda")
    best = reference._first_min_subset(values)
    vbest = dict(values)[best]
    if exact or not math.isfinite(vbest):
        return [best]
    D = reference.pairwise_sq_distances(X.cpu())
    pair, unique = _top_pair(D, best)
    out = [best]
    for S, v in values:
        if S != best and (v == vbest or near(v, vbest)):
            p, u = _top_pair(D, S)
            if not (unique and u and p == pair):
                out.append(S)
    return out


def smea_candidates(X: torch.Tensor, f: int) -> list[tuple[int, ...]]:
    """The reference's subset first, then every subset whose top eigenvalue is within a relative 1e-7 of it
    (or of the rounding of a covariance: 1e-12 of the rows' spread)."""
    values = reference.subset_values(X.cpu(), f, "smea")
    best = reference._first_min_subset(values)
    vbest = dict(values)[best]
    if not math.isfinite(vbest):
        return [best]
    floor = 1e-12 * spread2(X)
    return [best] + [
        S
        for S, v in values
        if S != best and math.isfinite(v) and abs(v - vbest) <= NEAR_TIE * max(abs(v), abs(vbest)) + floor
    ]


def check_subset_rule(rule: str, X: torch.Tensor, f: int, out: torch.Tensor, exponent: int = 0, what: str = ""):
    label = f"{rule}(n={X.shape[0]}, d={X.shape[1]}, f={f}, {X.dtype}) {what}"
    check_shape(out, X, label)
    expected = getattr(reference, rule)(X.cpu(), f)
    cands = mda_candidates(X, f, exact_data(X, exponent)) if rule == "mda" else smea_candidates(X, f)
    assert_sum_close(rows_mean(X, cands[0]), expected, X.cpu(), f"{label}: candidate 0 is the reference")
    if len(cands) > 1:
        record("several near-tied subsets")
    assert_one_of(out, [rows_mean(X, S) for S in cands], X, label)


@st.composite
def subset_cases(draw, max_n: int = 9, max_d: int = 40):
    spec, dtype = draw(cases(max_n=max_n, max_d=max_d))
    return spec, dtype, draw(f_values(spec.n))


@settings(max_examples=60, **SETTINGS)
@given(case=subset_cases())
def test_mda_matches_reference(case):
    spec, dtype, f = case
    X = make_case(spec, dtype)
    untouched = restore_input(X)
    check_subset_rule("mda", X, f, robustagg.distance.mda(X, f), spec.exponent, repr(spec))
    untouched()


@settings(max_examples=40, **SETTINGS)
@given(case=subset_cases(max_n=8, max_d=24))
def test_smea_matches_reference(case):
    spec, dtype, f = case
    X = make_case(spec, dtype)
    untouched = restore_input(X)
    check_subset_rule("smea", X, f, robustagg.spectral.smea(X, f), spec.exponent, repr(spec))
    untouched()


def test_mda_hand_built():
    """1-D points 0, 1, 3, 10 and f = 1: diameters 9 ({0,1,3}), 100, 100, 81: the mean of 0, 1, 3.
    Points 0, 2, 4: {0,2} and {2,4} both have diameter 4: the first, mean 1. NaN row: infinite diameter."""
    X = torch.tensor([[0.0], [1.0], [3.0], [10.0]], dtype=F64)
    assert reference.mda(X, 1).item() == pytest.approx(4 / 3, rel=1e-15)
    assert robustagg.distance.mda(X, 1).item() == pytest.approx(4 / 3, rel=1e-15)
    Y = torch.tensor([[0.0], [2.0], [4.0]], dtype=F64)
    assert reference.mda(Y, 1).item() == pytest.approx(1.0, rel=1e-15)
    assert robustagg.distance.mda(Y, 1).item() == pytest.approx(1.0, rel=1e-15)
    Z = torch.tensor([[math.nan], [2.0], [4.0]], dtype=F64)
    assert reference.mda(Z, 1).item() == pytest.approx(3.0, rel=1e-15)
    assert robustagg.distance.mda(Z, 1).item() == pytest.approx(3.0, rel=1e-15)
    # more than f non-finite rows: every subset is infinite, the first one ({0, 1, 2}) is chosen, rows 0 and 2
    # left out; with no finite row in it, all NaN
    W = torch.tensor([[math.nan], [2.0], [math.inf], [-math.inf], [6.0]], dtype=F64)
    for fn in (reference.mda, robustagg.distance.mda):
        assert fn(W, 2).item() == pytest.approx(2.0, rel=1e-15)
        assert math.isnan(fn(W[[0, 2, 3, 1, 4]], 2).item())


def test_smea_hand_built():
    """(1,0), (-1,0), (0,1), (0,-1), f = 1: every 3-subset has covariance eigenvalues 2/3 and 2/9 (for
    {0,1,2}: the points (+-1, -1/3), (0, 2/3) about the mean (0, 1/3)); the first subset wins, mean (0, 1/3).
    0, 4, 5, 6, 100 and f = 1: {0, 4, 5, 6} has variance 20.75 / 4, far below any subset holding 100."""
    X = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=F64)
    values = dict(reference.subset_values(X, 1, "smea"))
    for v in values.values():
        assert abs(v - 2 / 3) <= 1e-15
    torch.testing.assert_close(reference.smea(X, 1), torch.tensor([0.0, 1 / 3], dtype=F64), rtol=1e-15, atol=1e-16)
    Y = torch.tensor([[0.0], [4.0], [5.0], [6.0], [100.0]], dtype=F64)
    assert abs(dict(reference.subset_values(Y, 1, "smea"))[(0, 1, 2, 3)] - 20.75 / 4) <= 1e-14
    assert reference.smea(Y, 1).item() == pytest.approx(3.75, rel=1e-15)
    assert robustagg.spectral.smea(Y, 1).item() == pytest.approx(3.75, rel=1e-15)


@pytest.mark.parametrize("rule", ["mda", "smea"])
def test_subset_budget(rule):
    fn = getattr(robustagg.distance if rule == "mda" else robustagg.spectral, rule)
    X = torch.randn(9, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    # comb(9, 4) = 126 candidate subsets
    with pytest.raises(ValueError, match=rf"{rule}.*max_subsets"):
        fn(X, 4, max_subsets=125)
    with pytest.raises(ValueError, match=rule):
        getattr(reference, rule)(X, 4, max_subsets=125)
    check_subset_rule(rule, X, 4, fn(X, 4, max_subsets=126), what="budget exactly met")
    # the default budget, 2**20, refuses comb(30, 14) ~ 1.5e8 before any work
    with pytest.raises(ValueError, match=rf"{rule}.*max_subsets"):
        fn(torch.zeros(30, 2), 14)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_subsets"):
            fn(X, 1, max_subsets=bad)


# ---------------------------------------------------------------------------
# MoNNA


def monna_candidates(X: torch.Tensor, f: int, pivot: int, exact: bool) -> list[list[int]]:
    """The reference's rows first, then every choice among the rows whose distance to the pivot is near the
    (n - f)-th one."""
    n = X.shape[0]
    D = reference.pairwise_sq_distances(X.cpu())
    dist = [float(D[pivot, j]) for j in range(n)]
    order = sorted(range(n), key=lambda j: (dist[j], j))
    first = order[: n - f]
    edge = dist[first[-1]]
    if exact or not math.isfinite(edge):
        return [first]
    tied = [j for j in range(n) if dist[j] == edge or near(dist[j], edge)]
    inside = [j for j in first if j not in tied]
    out = [first]
    for extra in itertools.combinations(tied, n - f - len(inside)):
        if sorted(inside + list(extra)) != sorted(first):
            out.append(inside + list(extra))
    return out


@settings(max_examples=60, **SETTINGS)
@given(case=cases(), data=st.data())
def test_monna_matches_reference(case, data):
    spec, dtype = case
    f = data.draw(f_values(spec.n), label="f")
    pivot = data.draw(st.integers(0, spec.n - 1), label="pivot")
    X = make_case(spec, dtype)
    untouched = restore_input(X)
    out = robustagg.distance.monna(X, f, pivot)
    label = f"monna(f={f}, pivot={pivot}) {spec!r} {dtype}"
    check_shape(out, X, label)
    cands = monna_candidates(X, f, pivot, exact_data(X, spec.exponent))
    if len(cands) > 1:
        record("several near-tied choices at the cut")
    assert_sum_close(rows_mean(X, cands[0]), reference.monna(X, f, pivot), X, label)
    assert_one_of(out, [rows_mean(X, rows) for rows in cands], X, label)
    untouched()


def test_monna_hand_built():
    """5, 0, 4, 6, NaN with f = 2: distances to row 0 are 0, 25, 1, 1, inf: rows 0, 2, 3, mean 5. From the
    NaN row (distance 0 to itself, +inf to every other): rows 4, 0, 1, the NaN left out: mean 2.5. From
    row 2 (4): distances 1, 16, 0, 4: rows 2, 0, 3, mean 5. 5, 3, 6, 7, 0 from row 0: distances 0, 4, 1, 4,
    25: rows 1 and 3 tie at the cut, the lower index is taken: rows 0, 2, 1, mean 14/3."""
    X = torch.tensor([[5.0], [0.0], [4.0], [6.0], [math.nan]], dtype=F64)
    Y = torch.tensor([[5.0], [3.0], [6.0], [7.0], [0.0]], dtype=F64)
    for fn in (reference.monna, robustagg.distance.monna):
        assert fn(X, 2).item() == pytest.approx(5.0, rel=1e-15)
        assert fn(X, 2, pivot=4).item() == pytest.approx(2.5, rel=1e-15)
        assert fn(X, 2, pivot=2).item() == pytest.approx(5.0, rel=1e-15)
        assert fn(Y, 2).item() == pytest.approx(14 / 3, rel=1e-15)


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16], ids=str)
def test_monna_both_rankings_choose_the_same_rows(dtype, monkeypatch):
    """The one-pass distances to the pivot and the full distance matrix (the path taken when a row holds
    NaN/inf) pick the same rows, duplicates and ties at the cut included, on rows far from the origin."""
    g = torch.Generator().manual_seed(11)
    for n, f in ((7, 3), (10, 2), (12, 5)):
        X = (torch.randn(n, 333, generator=g) + 40.0).to(dtype)
        X[n - 1] = X[1]  # a duplicate: its tie with row 1 goes to row 1
        X[n - 2] = 2 * X[0] - X[1]  # as far from row 0 as rows 1 and n-1 are (exactly, in float64)
        for pivot in (0, n // 2):
            fast = robustagg.distance.monna(X, f, pivot)
            with monkeypatch.context() as m:
                m.setattr(robustagg.distance, "_pivot_distances", lambda X, pivot: None)
                assert torch.equal(robustagg.distance.monna(X, f, pivot), fast), (n, f, pivot, dtype)


# ---------------------------------------------------------------------------
# CAF


def caf_ambiguous(X: torch.Tensor, f: int, trace: list) -> str | None:
    """Why rounding may change CAF's result on X (None if it may not): a nearly degenerate top eigenvalue, a
    row nearly tied for the largest tau (which one reaches weight 0), a weight sum near n - 2f, or two
    nearly equal smallest eigenvalues with different means."""
    n = X.shape[0]
    X64, _ = rows64(X)
    floor = 1e-12 * spread2(X)
    seen = []
    for state in trace:
        c = state["c"]
        if any(0.0 < ci < 1.0 for ci in c) and abs(sum(c) - (n - 2 * f)) <= 1e-9 * n:
            return "weight sum near n - 2f"
        if "lam" not in state:
            continue
        ev, lam = state["eigenvalues"], state["lam"]
        if lam <= floor:
            seen.append((lam, state["mu"]))
            continue
        if len(ev) > 1 and ev[-1] - ev[-2] <= 1e-6 * lam:
            return "degenerate top eigenvalue"
        tau = state["tau"]
        imax = max(tau, key=lambda i: (tau[i], -i))
        tmax = tau[imax]
        for j, t in tau.items():
            if j != imax and t >= tmax * (1 - NEAR_TIE) and not torch.equal(X64[j], X64[imax]):
                return "largest tau nearly tied"
        seen.append((lam, state["mu"]))
    if seen:
        lam0, mu0 = min(seen, key=lambda s: s[0])
        scale = finite_scale(X)
        for lam, mu in seen:
            if abs(lam - lam0) <= NEAR_TIE * max(abs(lam), abs(lam0)) + floor:
                if float((mu - mu0).abs().max()) > 1e-9 * scale:
                    return "smallest eigenvalue nearly tied"
    return None


def check_caf(X: torch.Tensor, f: int, out: torch.Tensor, what: str = "") -> None:
    label = f"caf(n={X.shape[0]}, d={X.shape[1]}, f={f}, {X.dtype}) {what}"
    check_shape(out, X, label)
    trace: list = []
    expected = reference.caf(X.cpu(), f, trace=trace)
    why = caf_ambiguous(X.cpu(), f, trace)
    if why is not None:
        skip_values(why)
        return
    assert_vec_close(out.cpu(), expected, finite_scale(X.cpu()), 1e-9, label)


@settings(max_examples=60, **SETTINGS)
@given(case=cases(max_n=12, max_d=30), data=st.data())
def test_caf_matches_reference(case, data):
    spec, dtype = case
    f = data.draw(f_values(spec.n), label="f")
    X = make_case(spec, dtype)
    untouched = restore_input(X)
    check_caf(X, f, robustagg.spectral.caf(X, f), repr(spec))
    untouched()


def test_caf_hand_built():
    """1-D 0, 2, 4, 12, f = 1 (stop at weight sum <= 2). Step 1: mean 4.5, variance 83/4, tau = 20.25,
    6.25, 0.25, 56.25: weights 16/25, 8/9, 224/225, 0 (sum 568/225 > 2). Step 2: mean 1296/568 = 162/71 and
    a smaller variance; its largest tau (row 0) leaves a weight sum below 2: the result is 162/71.
    0, 0, 0, 10: step 1 leaves weights 8/9 on the three zeros, whose variance 0 ends the loop: 0."""
    X = torch.tensor([[0.0], [2.0], [4.0], [12.0]], dtype=F64)
    trace: list = []
    assert abs(reference.caf(X, 1, trace=trace).item() - 162 / 71) <= 1e-15
    assert trace[0]["lam"] == 83 / 4 and trace[1]["c"][3] == 0.0
    assert abs(sum(trace[1]["c"]) - 568 / 225) <= 1e-15
    assert abs(robustagg.spectral.caf(X, 1).item() - 162 / 71) <= 1e-14
    Y = torch.tensor([[0.0], [0.0], [0.0], [10.0]], dtype=F64)
    assert reference.caf(Y, 1).item() == 0.0
    assert abs(robustagg.spectral.caf(Y, 1).item()) <= 1e-15
    # 0, 1, 3, f = 1 (stop at weight sum <= 1): step 1, mean 4/3, tau 16/9, 1/9, 25/9: weights 9/25, 24/25,
    # 0; step 2, mean 8/11 and variance 792/3993 < 14/9, weight sum 0.825 after it: 8/11, at any scale
    W = torch.tensor([[0.0], [1.0], [3.0]], dtype=F64)
    for scale in (1.0, 1e150, 1e-150):
        assert reference.caf(W * scale, 1).item() == pytest.approx(8 / 11 * scale, rel=1e-15)
        assert robustagg.spectral.caf(W * scale, 1).item() == pytest.approx(8 / 11 * scale, rel=1e-14)
    # f = 0: the loop never runs, the mean of the finite rows
    Z = torch.tensor([[1.0], [math.nan], [2.0]], dtype=F64)
    assert reference.caf(Z, 0).item() == pytest.approx(1.5, rel=1e-15)
    assert robustagg.spectral.caf(Z, 0).item() == pytest.approx(1.5, rel=1e-15)


def test_caf_weights_op():
    """The host filter op: normalised weights of the best round (the hand-built 0, 2, 4, 12 case above:
    16/25, 8/9, 224/225, 0 over 568/225), all 0 without a finite row, and clear errors for bad input."""
    D = torch.tensor([[0.0, 4, 16, 144], [4, 0, 4, 100], [16, 4, 0, 64], [144, 100, 64, 0]], dtype=F64)
    op = torch.ops.robustagg.caf_weights
    expected = torch.tensor([16 / 25, 8 / 9, 224 / 225, 0.0], dtype=F64) / (568 / 225)
    torch.testing.assert_close(op(D, torch.ones(4, dtype=torch.bool), 1), expected, rtol=1e-15, atol=0)
    assert torch.equal(op(D, torch.zeros(4, dtype=torch.bool), 1), torch.zeros(4, dtype=F64))
    # f = 0: the loop never runs, equal weights on the finite rows
    assert torch.equal(
        op(D, torch.tensor([True, False, True, True]), 0), torch.tensor([1 / 3, 0, 1 / 3, 1 / 3], dtype=F64)
    )
    for args, exc, pattern in (
        ((D[:3], torch.ones(3, dtype=torch.bool), 1), ValueError, r"square \(n, n\)"),
        ((D.float(), torch.ones(4, dtype=torch.bool), 1), TypeError, "must be float64"),
        ((D, torch.ones(4), 1), TypeError, "finite must be bool"),
        ((D, torch.ones(3, dtype=torch.bool), 1), ValueError, r"finite must have shape \(4\)"),
        ((D, torch.ones(4, dtype=torch.bool), 2), ValueError, "needs 0 <= f and n > 2\\*f"),
        ((D, torch.ones(4, dtype=torch.bool), -1), ValueError, "needs 0 <= f"),
    ):
        with pytest.raises(exc, match=pattern):
            op(*args)


def test_caf_identical_rows_leave_together():
    """-1, -1, 3, 0, 3 and f = 2 (stop at weight sum <= 1). Step 1: mean 4/5, tau 3.24, 3.24, 4.84, 0.64,
    4.84: both rows at 3 share the largest tau and reach weight 0 together; weights 1.6, 1.6, 4.2 (/ 4.84)
    remain. Step 2: mean -3.2 / 7.4 = -16/37, a smaller variance, then the rows at -1 leave and the weight
    sum drops below 1: -16/37. (A row left with a rounding-sized weight would still count in tau_max.)"""
    X = torch.tensor([[-1.0], [-1.0], [3.0], [0.0], [3.0]], dtype=F64)
    assert reference.caf(X, 2).item() == pytest.approx(-16 / 37, rel=1e-15)
    assert robustagg.spectral.caf(X, 2).item() == pytest.approx(-16 / 37, rel=1e-12)


def _caf_exact_1d(xs: list[int], f: int) -> Fraction | None:
    """CAF in exact rationals on 1-D points (v = +-1, tau_i = (x_i - mu)^2); None when an exact tie (a weight
    sum equal to n - 2f, two equal smallest variances) makes float rounding decide."""
    n = len(xs)
    x = [Fraction(v) for v in xs]
    c = [Fraction(1)] * n
    best = None
    while sum(c) > n - 2 * f:
        act = [i for i in range(n) if c[i] > 0]
        total = sum(c[i] for i in act)
        mu = sum(c[i] * x[i] for i in act) / total
        lam = sum(c[i] * (x[i] - mu) ** 2 for i in act) / total
        if best is not None and lam == best[0] and mu != best[1]:
            return None
        if best is None or lam < best[0]:
            best = (lam, mu)
        tau = {i: (x[i] - mu) ** 2 for i in act}
        top = max(tau.values())
        if top == 0:
            break
        for i in act:
            c[i] = c[i] * (1 - tau[i] / top)
        if sum(c) == n - 2 * f:
            return None
    return best[1] if best is not None else sum(x) / n


def test_caf_reference_exact_in_1d():
    """The reference against exact rational arithmetic on small integer points (ties and duplicates)."""
    g = torch.Generator().manual_seed(0)
    checked = 0
    for _ in range(150):
        n = int(torch.randint(3, 9, (1,), generator=g))
        f = int(torch.randint(1, (n - 1) // 2 + 1, (1,), generator=g))
        xs = torch.randint(-2, 4, (n,), generator=g).tolist()
        want = _caf_exact_1d(xs, f)
        if want is None:
            continue
        got = reference.caf(torch.tensor(xs, dtype=F64).reshape(-1, 1), f).item()
        assert abs(got - float(want)) <= 1e-12 * 4, (xs, f, got, float(want))
        checked += 1
    assert checked >= 100


# ---------------------------------------------------------------------------
# Divide-and-Conquer


def dnc_ambiguous(X: torch.Tensor, k: int, trace: list) -> str | None:
    """Why rounding may change the rows DnC drops: a nearly degenerate top singular value, or a dropped and a
    kept row (different on the drawn columns) with nearly equal scores."""
    if k == 0:
        return None
    X64, fin = rows64(X)
    n = X.shape[0]
    noise = 1e-12 * math.sqrt(n * X.shape[1]) * max(finite_scale(X), 1e-300)
    for J, scores, sv in trace:
        if len(sv) > 1 and sv[0] > noise and sv[0] ** 2 - sv[1] ** 2 <= 1e-6 * sv[0] ** 2:
            return "degenerate top singular value"
        order = sorted(range(n), key=lambda i: (-scores[i], i))
        floor = 1e-12 * (sv[0] ** 2 if sv else 0.0)
        for a in order[:k]:
            for b in order[k:]:
                sa, sb = scores[a], scores[b]
                if fin[a] and fin[b] and abs(sa - sb) <= NEAR_TIE * max(sa, sb) + floor:
                    if not torch.equal(X64[a, J], X64[b, J]):
                        return "scores nearly tied at the cut"
    return None


@st.composite
def dnc_cases(draw):
    spec, dtype = draw(cases(max_n=12, max_d=40, scaled=False))
    n, d = spec.n, spec.d
    c = draw(st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0]))
    f = draw(st.integers(0, n))
    if math.floor(c * f) >= n:
        f = 0
    iters = draw(st.integers(1, 4))
    subsample = draw(st.one_of(st.integers(1, d), st.just(10000)))
    return spec, dtype, f, iters, subsample, c, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=60, **SETTINGS)
@given(case=dnc_cases())
def test_dnc_matches_reference(case):
    spec, dtype, f, iters, subsample, c, seed = case
    X = make_case(spec, dtype)
    untouched = restore_input(X)
    g_out, g_ref = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    out = robustagg.spectral.dnc(X, f, iters=iters, subsample=subsample, c=c, generator=g_out)
    trace: list = []
    expected = reference.dnc(X, f, iters, subsample, c, generator=g_ref, trace=trace)
    label = f"dnc(f={f}, iters={iters}, subsample={subsample}, c={c}) {spec!r} {dtype}"
    check_shape(out, X, label)
    # the generator is consumed as the contract says: one randperm(d) per iteration when subsample < d
    assert torch.equal(g_out.get_state(), g_ref.get_state()), f"{label}: generator consumed differently"
    why = dnc_ambiguous(X, math.floor(c * f), trace)
    if why is not None:
        skip_values(why)
    else:
        assert_sum_close(out, expected, X, label)
    untouched()


def test_dnc_equal_rows_tie_at_the_cut_to_the_lower_index():
    """Five equal rows score the third largest: their scores must be equal exactly (the eigensolver's
    rounding made them differ in the last bit), so that each iteration drops the same, lowest one."""
    spec = CaseSpec(n=9, d=40, seed=0, pattern="zeros", dups=4)
    X = make_case(spec, torch.float64)
    for seed in range(4):
        out = robustagg.spectral.dnc(X, 6, iters=2, subsample=9, c=0.5, generator=torch.Generator().manual_seed(seed))
        expected = reference.dnc(X, 6, 2, 9, 0.5, generator=torch.Generator().manual_seed(seed))
        assert_sum_close(out, expected, X, f"seed {seed}")


def test_dnc_hand_built():
    """1-D -1, 0, 1, f = 1, one iteration: scores 1, 0, 1; the tie drops the lower index (row 0): mean 0.5.
    0, 1, 2, 10: scores (x - 3.25)^2, the largest is row 3's: mean 1. Non-finite rows score +inf and go
    first: with f = 1 the NaN row is dropped and the others are all kept, mean 4."""
    X = torch.tensor([[-1.0], [0.0], [1.0]], dtype=F64)
    Y = torch.tensor([[0.0], [1.0], [2.0], [10.0]], dtype=F64)
    Z = torch.tensor([[0.0], [math.nan], [2.0], [10.0]], dtype=F64)
    for fn in (reference.dnc, robustagg.spectral.dnc):
        assert fn(X, 1, iters=1).item() == pytest.approx(0.5, rel=1e-15)
        assert fn(Y, 1, iters=1).item() == pytest.approx(1.0, rel=1e-15)
        assert fn(Z, 1, iters=3).item() == pytest.approx(4.0, rel=1e-15)
        # f = 0 drops nothing: the mean of every row
        assert fn(Y, 0).item() == pytest.approx(13 / 4, rel=1e-15)


def test_dnc_tie_between_rows_equal_on_the_drawn_column():
    """subsample = 1 column, f = 2 (k = 2): on the drawn column the rows read 2, -1, -1 (mean 0, scores 4, 1,
    1); row 0 is dropped, then rows 1 and 2 tie and the lower index, row 1, is dropped: row 2 is kept. On
    the other column they differ (0, 1, 2), so the tie decides the result."""
    j = int(torch.randperm(2, generator=torch.Generator().manual_seed(0))[0])
    X = torch.zeros(3, 2, dtype=F64)
    X[:, j] = torch.tensor([2.0, -1.0, -1.0])
    X[:, 1 - j] = torch.tensor([0.0, 1.0, 2.0])
    for fn in (reference.dnc, robustagg.spectral.dnc):
        out = fn(X, 2, iters=1, subsample=1, generator=torch.Generator().manual_seed(0))
        assert torch.equal(out, X[2]), (fn.__module__, out, X[2])


def test_dnc_draws_columns_without_finite_rows():
    """Every iteration draws its columns when subsample < d, whatever the rows hold: the generator ends as
    after iters draws of randperm(d); the result is all NaN."""
    X = torch.full((3, 4), math.nan, dtype=F64)
    X[1, 2] = 1.0
    g = torch.Generator().manual_seed(5)
    out = robustagg.spectral.dnc(X, 1, iters=3, subsample=2, generator=g)
    assert torch.isnan(out).all()
    want = torch.Generator().manual_seed(5)
    for _ in range(3):
        torch.randperm(4, generator=want)
    assert torch.equal(g.get_state(), want.get_state()), "generator not consumed as by 3 draws"
    g = torch.Generator().manual_seed(5)
    assert torch.isnan(reference.dnc(X, 1, 3, 2, generator=g)).all()
    assert torch.equal(g.get_state(), want.get_state())


def test_dnc_global_rng():
    """generator=None draws from torch's global generator, as the reference does."""
    X = make_case(CaseSpec(10, 30, 3, "outliers", dups=1, nan_rows=1), F64)
    for subsample in (1, 7, 29, 30):
        torch.manual_seed(11)
        out = robustagg.spectral.dnc(X, 2, iters=3, subsample=subsample)
        after = torch.random.get_rng_state()
        torch.manual_seed(11)
        trace: list = []
        expected = reference.dnc(X, 2, 3, subsample, trace=trace)
        assert torch.equal(after, torch.random.get_rng_state()), f"subsample={subsample}: RNG consumed differently"
        if dnc_ambiguous(X, 2, trace) is None:
            assert_sum_close(out, expected, X, f"dnc global RNG subsample={subsample}")


# ---------------------------------------------------------------------------
# FLTrust


def make_root(X: torch.Tensor, kind: str, seed: int) -> torch.Tensor:
    X64, fin = rows64(X)
    d = X.shape[1]
    g = torch.Generator().manual_seed(seed)
    finite_rows = [i for i, ok in enumerate(fin) if ok]
    scale = max(finite_scale(X), 1e-300)
    if kind == "zero":
        r = torch.zeros(d, dtype=F64)
    elif kind == "row" and finite_rows:
        r = X64[finite_rows[int(torch.randint(0, len(finite_rows), (1,), generator=g))]]
    elif kind == "mean" and finite_rows:
        r = X64[finite_rows].mean(0) + 0.1 * scale * torch.randn(d, generator=g, dtype=F64)
    elif kind == "negated" and finite_rows:
        r = -X64[finite_rows].mean(0)
    else:
        r = scale * torch.randn(d, generator=g, dtype=F64)
    return r.to(X.dtype)


def check_fltrust(X: torch.Tensor, root: torch.Tensor, out: torch.Tensor, exact: bool, what: str = "") -> None:
    label = f"fltrust(n={X.shape[0]}, d={X.shape[1]}, {X.dtype}) {what}"
    check_shape(out, X, label)
    X, root = X.cpu(), root.cpu()
    expected = reference.fltrust(X, root)
    X64, fin = rows64(X)
    r = root.to(F64)
    cos = [reference._cos(X64[i], r) for i in range(X.shape[0]) if fin[i]]
    total = sum(max(0.0, c) for c in cos)
    flip = any((0.0 < abs(c) <= 1e-9) or (c == 0.0 and not exact) for c in cos) and float(r.abs().max()) > 0
    if total == 0.0 and not flip:
        assert torch.equal(out.cpu(), torch.zeros_like(expected)), f"{label}: no positive trust score, not zeros"
        return
    if total < 1e-5:
        skip_values("trust scores sum nearly to 0")
        return
    assert_vec_close(out.cpu(), expected, reference._norm(r), 1e-9, label)


@settings(max_examples=60, **SETTINGS)
@given(case=cases(), root_kind=st.sampled_from(["zero", "row", "mean", "negated", "random"]))
def test_fltrust_matches_reference(case, root_kind):
    spec, dtype = case
    X = make_case(spec, dtype)
    root = make_root(X, root_kind, spec.seed)
    untouched, root_untouched = restore_input(X), restore_input(root)
    out = robustagg.similarity.fltrust(X, root)
    check_fltrust(X, root, out, exact_data(X, spec.exponent) and exact_data(root, spec.exponent), repr(spec))
    untouched()
    root_untouched("root modified")


def test_fltrust_hand_built():
    """root (1, 0); rows (2, 0), (0, 3), (1, 1), (-1, 0), NaN: cosines 1, 0, 1/sqrt 2, -1: trust 1, 0,
    1/sqrt 2, 0. Rows rescaled to ||root|| = 1: (1, 0) and (1, 1)/sqrt 2; the result
    ((1, 0) + (1, 1) / 2) / (1 + 1/sqrt 2)."""
    X = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0], [-1.0, 0.0], [math.nan, 0.0]], dtype=F64)
    root = torch.tensor([1.0, 0.0], dtype=F64)
    want = torch.tensor([1.5, 0.5], dtype=F64) / (1 + 1 / math.sqrt(2))
    for fn in (reference.fltrust, robustagg.similarity.fltrust):
        torch.testing.assert_close(fn(X, root), want, rtol=1e-15, atol=0)
        assert torch.equal(fn(X, torch.zeros(2, dtype=F64)), torch.zeros(2, dtype=F64))
        assert torch.equal(fn(X[[1, 3]], root), torch.zeros(2, dtype=F64))  # no positive cosine
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="fltrust"):
            robustagg.similarity.fltrust(X, torch.tensor([1.0, bad], dtype=F64))


def test_fltrust_is_the_same_on_its_magnitude_safe_path():
    """FLTrust does not change when a row is scaled (its cosine and its rescaled row stay): a float64 row
    scaled by 2**600, whose squares overflow, sends the call down the law-of-cosines path, and by 2**-506,
    whose squares sum below 2**-1000, too; both give the one-pass path's result. So does a tiny root."""
    g = torch.Generator().manual_seed(5)
    X = torch.randn(7, 300, generator=g, dtype=F64)
    root = X[:5].mean(0) + 0.3 * torch.randn(300, generator=g, dtype=F64)
    X[6] = -X[6]
    fast = robustagg.similarity.fltrust(X, root)
    assert_vec_close(fast, reference.fltrust(X, root), reference._norm(root), 1e-12, "one-pass path")
    for e in (600, -506):
        Y = X.clone()
        Y[2] *= 2.0**e
        assert_vec_close(robustagg.similarity.fltrust(Y, root), fast, reference._norm(root), 1e-12, f"2**{e}")
    tiny = 2.0**-506
    assert_vec_close(
        robustagg.similarity.fltrust(X, root * tiny), fast * tiny, reference._norm(root) * tiny, 1e-12, "tiny root"
    )


# ---------------------------------------------------------------------------
# SignGuard


def _dyadic(values, bits: int = 20) -> bool:
    return all(math.ldexp(v, bits).is_integer() for v in values)


def signguard_ambiguous(trace: dict, lower: float, upper: float, k: int, exact: bool) -> str | None:
    """Why rounding may change SignGuard's sets: a norm near a bound (inexact norms), or a near tie in the
    2-means (the farthest row, an assignment) that is not computed exactly (features and centres not
    dyadic)."""
    if not trace:
        return None
    M, norms = trace["M"], trace["norms"]
    if not exact:
        for v in norms.values():
            for factor in (lower, upper):
                bound = factor * M
                if factor == 1.0 and v == M and len(norms) % 2 == 1:
                    continue  # the median row itself: its norm is M in any method
                if v == bound or near(v, bound, 1e-10):
                    return "a norm at a bound"
    feats, a, b = trace["feats"], trace["a"], trace["b"]
    dyadic = k & (k - 1) == 0 and k <= 2**20
    if not dyadic:
        far = reference._sq(feats[b], feats[a])
        for fi in feats.values():
            dist = reference._sq(fi, feats[a])
            if fi != feats[b] and (dist == far or near(dist, far, 1e-9)):
                return "farthest row nearly tied"
    for centres, _ in trace["steps"]:
        exact_step = dyadic and _dyadic(centres[0] + centres[1])
        if exact_step:
            continue
        for fi in feats.values():
            d0, d1 = reference._sq(fi, centres[0]), reference._sq(fi, centres[1])
            if d0 == d1 or near(d0, d1, 1e-9):
                return "assignment nearly tied"
    return None


@st.composite
def signguard_cases(draw):
    spec, dtype = draw(cases(scaled=False))
    if draw(st.booleans()):  # sign fractions over a power-of-two count of columns: exact 2-means
        d = draw(st.sampled_from([4, 8, 16, 32]))
        spec = dataclasses.replace(spec, d=d)
        fraction = draw(st.sampled_from([0.125, 0.25, 0.5, 1.0]))
    else:
        fraction = draw(st.sampled_from([0.05, 0.1, 0.3, 0.5, 1.0]))
    lower = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    upper = draw(st.sampled_from([1.0, 1.5, 3.0, 10.0]))
    max_iter = draw(st.sampled_from([1, 2, 100]))
    return spec, dtype, lower, upper, fraction, max_iter, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=60, **SETTINGS)
@given(case=signguard_cases())
def test_signguard_matches_reference(case):
    spec, dtype, lower, upper, fraction, max_iter, seed = case
    X = make_case(spec, dtype)
    untouched = restore_input(X)
    g_out, g_ref = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    out = robustagg.similarity.signguard(X, lower, upper, fraction, generator=g_out, max_iter=max_iter)
    trace: dict = {}
    expected = reference.signguard(X, lower, upper, fraction, g_ref, max_iter, trace=trace)
    label = f"signguard(lower={lower}, upper={upper}, fraction={fraction}, max_iter={max_iter}) {spec!r} {dtype}"
    check_shape(out, X, label)
    assert torch.equal(g_out.get_state(), g_ref.get_state()), f"{label}: generator consumed differently"
    k = max(1, math.ceil(fraction * spec.d))
    why = signguard_ambiguous(trace, lower, upper, k, exact_data(X))
    if why is not None:
        skip_values(why)
    else:
        assert_sum_close(out, expected, X, label)
    untouched()


def test_signguard_hand_built():
    """d = 4, fraction 1 (all columns, no draw). Norms 2, 2, 2, 4, 0.1: M = 2, S1 drops row 4 (below 0.2).
    Sign fractions (>0, =0, <0): (1,0,0), (.75,0,.25), (0,0,1), (1,0,0), (.25,.75,0). 2-means from row 0's
    and the farthest row's (row 2) features: {0, 1, 3, 4} and {2}, stable after one update. S1 & S2 = {0, 1,
    3}, row 3 clipped to norm 2: mean of (1,1,1,1), (1,1,1,-1), (1,1,1,1) = (1, 1, 1, 1/3)."""
    X = torch.tensor(
        [[1.0, 1, 1, 1], [1, 1, 1, -1], [-1, -1, -1, -1], [2, 2, 2, 2], [0.1, 0, 0, 0]],
        dtype=F64,
    )
    want = torch.tensor([1.0, 1.0, 1.0, 1 / 3], dtype=F64)
    trace: dict = {}
    torch.testing.assert_close(reference.signguard(X, fraction=1.0, trace=trace), want, rtol=1e-15, atol=0)
    assert trace["S1"] == {0, 1, 2, 3} and trace["S2"] == {0, 1, 3, 4} and trace["b"] == 2
    torch.testing.assert_close(robustagg.similarity.signguard(X, fraction=1.0), want, rtol=1e-15, atol=0)
    # every feature equal: one cluster of all finite rows; no finite row: NaN; empty S1 & S2: zeros
    Y = torch.tensor([[3.0, 4.0], [4.0, 3.0], [math.nan, 1.0]], dtype=F64)
    for fn in (reference.signguard, robustagg.similarity.signguard):
        assert torch.equal(fn(Y, fraction=1.0), torch.tensor([3.5, 3.5], dtype=F64))
        assert torch.isnan(fn(torch.full((3, 2), math.inf, dtype=F64))).all()
        assert torch.equal(fn(Y, lower=2.0, upper=3.0, fraction=1.0), torch.zeros(2, dtype=F64))


def test_signguard_global_rng():
    X = make_case(CaseSpec(9, 40, 5, "zeros", nan_rows=1), F64)
    torch.manual_seed(3)
    out = robustagg.similarity.signguard(X, fraction=0.25)
    after = torch.random.get_rng_state()
    torch.manual_seed(3)
    trace: dict = {}
    expected = reference.signguard(X, fraction=0.25, trace=trace)
    assert torch.equal(after, torch.random.get_rng_state()), "global RNG consumed differently"
    if signguard_ambiguous(trace, 0.1, 3.0, 10, exact_data(X)) is None:
        assert_sum_close(out, expected, X, "signguard, global RNG")


# ---------------------------------------------------------------------------
# Clipped clustering


LINK_TIE = 1e-10  # cosine distances lie in [0, 2]: linkages this close may be swapped by rounding
MAX_STATES = 400


def clustering_outcomes(X: torch.Tensor, tau: float | None) -> list[list[int]] | None:
    """The kept clusters that average-linkage clustering reaches when each near tie (LINK_TIE) between
    linkages may go either way, the reference's own outcome first; None if there are too many states."""
    X64, fin = rows64(X)
    rows = [i for i, ok in enumerate(fin) if ok]
    norms = {i: reference._norm(X64[i]) for i in rows}
    if tau is None:
        tau = reference._median(list(norms.values()))
    Y = {i: X64[i] * reference._clip_factor(norms[i], tau) for i in rows}
    dist = {(i, j): 1.0 - reference._cos(Y[i], Y[j]) for i in rows for j in rows}
    outcomes: list[list[int]] = []
    seen: set = set()

    def walk(clusters: list[list[int]]) -> None:
        key = frozenset(tuple(g) for g in clusters)
        if key in seen:
            return
        seen.add(key)
        if len(seen) > MAX_STATES:
            raise OverflowError
        if len(clusters) <= 2:
            kept = max(clusters, key=lambda g: (len(g), -min(g)))
            if kept not in outcomes:
                outcomes.append(kept)
            return
        links = []
        for a, b in itertools.combinations(range(len(clusters)), 2):
            total = sum(dist[i, j] for i in clusters[a] for j in clusters[b])
            links.append((total / (len(clusters[a]) * len(clusters[b])), a, b))
        best = min(links, key=lambda t: t[0])  # the first of the least: the reference's merge, walked first
        for _link, a, b in [best] + [t for t in links if t is not best and t[0] - best[0] <= LINK_TIE]:
            merged = sorted(clusters[a] + clusters[b])
            walk(sorted([g for t, g in enumerate(clusters) if t not in (a, b)] + [merged], key=min))

    try:
        walk([[i] for i in rows])
    except OverflowError:
        return None
    return outcomes


def clipped_mean(X: torch.Tensor, kept: list[int], tau: float | None) -> torch.Tensor:
    X64, fin = rows64(X)
    rows = [i for i, ok in enumerate(fin) if ok]
    norms = {i: reference._norm(X64[i]) for i in rows}
    if tau is None:
        tau = reference._median(list(norms.values()))
    Y = torch.stack([X64[i] * reference._clip_factor(norms[i], tau) for i in kept])
    return reference._finite_mean(Y).to(X.dtype)


def check_clipped_clustering(X: torch.Tensor, tau: float | None, out: torch.Tensor, what: str = "") -> None:
    label = f"clipped_clustering(tau={tau}, n={X.shape[0]}, d={X.shape[1]}, {X.dtype}) {what}"
    check_shape(out, X, label)
    X = X.cpu()
    expected = reference.clipped_clustering(X, tau)
    if not any(rows64(X)[1]):
        assert torch.isnan(out).all(), f"{label}: no finite row, not all NaN"
        return
    outcomes = clustering_outcomes(X, tau)
    if outcomes is None:
        skip_values("too many near-tied merges")
        return
    if len(outcomes) > 1:
        record("several outcomes of near-tied merges")
    cands = [clipped_mean(X, kept, tau) for kept in outcomes]
    assert_sum_close(cands[0], expected, X, f"{label}: outcome 0 is the reference")
    assert_one_of(out, cands, X, label)


@settings(max_examples=60, **SETTINGS)
@given(case=cases(scaled=False), tau_kind=st.sampled_from([None, None, 0.5, 2.0, "fixed"]))
def test_clipped_clustering_matches_reference(case, tau_kind):
    spec, dtype = case
    X = make_case(spec, dtype)
    X64, fin = rows64(X)
    norms = [reference._norm(X64[i]) for i, ok in enumerate(fin) if ok]
    if tau_kind is None or not norms:
        tau = None
    elif tau_kind == "fixed":
        tau = 1.0
    else:
        tau = tau_kind * reference._median(norms)
    untouched = restore_input(X)
    check_clipped_clustering(X, tau, robustagg.similarity.clipped_clustering(X, tau), repr(spec))
    untouched()


def test_clipped_clustering_hand_built():
    """(1,0), (2,0), (0,1), (4,0), (0,3): median norm 2, rows 3 and 4 clipped to (2,0), (0,2). Cosine
    distances 0 within {0,1,3} and {2,4}, 1 across: the merges build them; the larger, {0,1,3}, averaged
    clipped: (5/3, 0). (1,0), (0,1), (-1,0), (0,-1): distances 1 (neighbours) and 2 (opposite), exact. The
    first merge is a tie among four pairs: (0,1) first; then {2,3} (1 against linkage 1.5); sizes tie: the
    cluster holding row 0, mean (1/2, 1/2)."""
    X = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [4.0, 0.0], [0.0, 3.0]], dtype=F64)
    Y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=F64)
    for fn in (reference.clipped_clustering, robustagg.similarity.clipped_clustering):
        torch.testing.assert_close(fn(X), torch.tensor([5 / 3, 0.0], dtype=F64), rtol=1e-15, atol=0)
        assert torch.equal(fn(Y), torch.tensor([0.5, 0.5], dtype=F64))
        # rows 1 and 3 swapped: now the first merge is (0, 1) = (1,0), (0,-1), then {2, 3}
        assert torch.equal(fn(Y[[0, 3, 2, 1]]), torch.tensor([0.5, -0.5], dtype=F64))
        # one finite row: that row (clipped to tau)
        Z = torch.tensor([[math.nan, 0.0], [3.0, 4.0]], dtype=F64)
        assert torch.equal(fn(Z), torch.tensor([3.0, 4.0], dtype=F64))
        torch.testing.assert_close(fn(Z, 1.0), torch.tensor([0.6, 0.8], dtype=F64), rtol=1e-15, atol=0)
        assert torch.isnan(fn(torch.full((3, 2), math.nan, dtype=F64))).all()


# ---------------------------------------------------------------------------
# FoolsGold weights


def check_foolsgold(H: torch.Tensor, kappa: float, out: torch.Tensor, exact: bool, what: str = "") -> None:
    label = f"foolsgold_weights(kappa={kappa}, n={H.shape[0]}, {H.dtype}) {what}"
    n = H.shape[0]
    assert out.shape == (n,) and out.dtype == F64 and out.device == H.device, (label, out.shape, out.dtype)
    out = out.cpu()
    trace: dict = {}
    expected = reference.foolsgold_weights(H.cpu(), kappa, trace=trace)
    _, fin = rows64(H)
    for i in range(n):
        if not fin[i]:
            assert out[i] == 0.0, f"{label}: row {i} not finite, weight {out[i].item()}"
    if not trace:
        assert torch.equal(out, expected), f"{label}: {out} != {expected}"
        return
    v, top, a = trace["v"], trace["top"], trace["a"]
    if any(0.0 < abs(x) <= 1e-9 or (x == 0.0 and not exact) for x in v.values()):
        skip_values("a largest similarity near 0 (pardoning switches)")
        return
    if top <= 1e-9:
        skip_values("every alpha near 0")
        return
    logit = lambda x: min(1.0, max(0.0, kappa * (math.log(x / (1 - x)) + 0.5)))  # noqa: E731
    # alpha / max alpha is exactly 1 for the largest alpha in any method; rows whose alpha rounding may
    # make the largest (or not) may get 0.99 or an alpha just below 1
    at_top = [i for i, x in trace["alpha"].items() if x >= top * (1 - 1e-9)]
    for i, ai in a.items():
        got, want = float(out[i]), float(expected[i])
        slope = kappa / max(ai * (1 - ai), 1e-300) if 0.0 < ai < 1.0 else 0.0
        tol = 1e-9 + slope * 1e-13 / top
        if abs(got - want) <= tol:
            continue
        if len(at_top) > 1 and i in at_top:  # 0.99, or a logit beyond 20
            if abs(got - logit(0.99)) <= 1e-12 or min(1.0, kappa * 20.0) - 1e-12 <= got <= 1.0:
                continue
        raise AssertionError(f"{label}: weight {i} is {got!r}, expected {want!r} (alpha/max {ai!r}, tol {tol:.3g})")


@settings(max_examples=60, **SETTINGS)
@given(case=cases(), kappa=st.sampled_from([1.0, 0.1, 0.5, 2.0]))
def test_foolsgold_weights_match_reference(case, kappa):
    spec, dtype = case
    H = make_case(spec, dtype)
    untouched = restore_input(H)
    check_foolsgold(H, kappa, robustagg.similarity.foolsgold_weights(H, kappa), exact_data(H, spec.exponent))
    untouched()


def test_foolsgold_hand_built():
    """H = (1,0), (3,4), (0,1): cos 0.6 (0-1), 0 (0-2), 0.8 (1-2); v = 0.6, 0.8, 0.8. Pardoning lowers
    cs_01 to 0.6 * 0.6 / 0.8 = 0.45 (v_0 < v_1), alpha = 0.55, 0.2, 0.2, normalised 1 (-> 0.99), 4/11, 4/11:
    weights clip(ln 99 + 0.5) = 1 and clip(ln(4/7) + 0.5) = 0 (without pardoning: 1, 0.5, 0.5).
    H = (1,0), (1,1), (0,1), kappa 0.1: every alpha equal, all 0.99: weights 0.1 (ln 99 + 0.5)."""
    H = torch.tensor([[1.0, 0.0], [3.0, 4.0], [0.0, 1.0], [math.nan, 1.0]], dtype=F64)
    G = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=F64)
    for fn in (reference.foolsgold_weights, robustagg.similarity.foolsgold_weights):
        assert torch.equal(fn(H), torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64))
        torch.testing.assert_close(fn(G, 0.1), torch.full((3,), 0.1 * (math.log(99) + 0.5), dtype=F64))
        # one history taking part: weight 1; none: all 0
        assert torch.equal(fn(H[[0, 3]]), torch.tensor([1.0, 0.0], dtype=F64))
        assert torch.equal(fn(H[[3, 3]]), torch.zeros(2, dtype=F64))


# ---------------------------------------------------------------------------
# Every f, odd and even n, huge and tiny magnitudes, devices


@pytest.mark.parametrize("pattern", ["gaussian", "ties", "outliers"])
def test_every_f(pattern):
    """f over its whole range 0..(n-1)//2 for n = 1..9, with a duplicate and a NaN row."""
    for n in range(1, 10):
        X = make_case(CaseSpec(n, 6, n, pattern, dups=n // 4, nan_rows=n // 5, layout="transposed"), F64)
        exact = exact_data(X)
        for f in range((n - 1) // 2 + 1):
            what = f"{pattern} n={n} f={f}"
            check_subset_rule("mda", X, f, robustagg.distance.mda(X, f), what=what)
            check_subset_rule("smea", X, f, robustagg.spectral.smea(X, f), what=what)
            cands = monna_candidates(X, f, n - 1, exact)
            out = robustagg.distance.monna(X, f, n - 1)
            assert_one_of(out, [rows_mean(X, rows) for rows in cands], X, f"monna {what}")
            check_caf(X, f, robustagg.spectral.caf(X, f), what)
            trace: list = []
            expected = reference.dnc(X, f, 2, 4, generator=torch.Generator().manual_seed(n), trace=trace)
            out = robustagg.spectral.dnc(X, f, 2, 4, generator=torch.Generator().manual_seed(n))
            if dnc_ambiguous(X, f, trace) is None:
                assert_sum_close(out, expected, X, f"dnc {what}")


def magnitude_rows(scale: float) -> torch.Tensor:
    """9 gaussian rows of 12 (two shifted away, one duplicate) times scale."""
    g = torch.Generator().manual_seed(7)
    X = torch.randn(9, 12, generator=g, dtype=F64)
    X[[2, 6]] += 5.0
    X[4] = X[1]
    X = X * scale
    assert torch.isfinite(X).all()
    return X


@pytest.mark.parametrize("scale", [1e150, 1e-150, 2.0**500, 2.0**-500])
def test_huge_and_tiny_magnitudes(scale):
    """Finite rows far from 1 in float64: no square over- or underflows in a correct float64 method."""
    X = magnitude_rows(scale)
    for f in (0, 2, 4):
        check_subset_rule("mda", X, f, robustagg.distance.mda(X, f), what=f"scale {scale}")
        check_subset_rule("smea", X, f, robustagg.spectral.smea(X, f), what=f"scale {scale}")
        cands = monna_candidates(X, f, 3, False)
        assert_one_of(robustagg.distance.monna(X, f, 3), [rows_mean(X, r) for r in cands], X, f"monna {scale}")
    root = X[[0, 1, 3]].mean(0)
    check_fltrust(X, root, robustagg.similarity.fltrust(X, root), False, f"scale {scale}")
    check_fltrust(X, -root, robustagg.similarity.fltrust(X, -root), False, f"negated root, scale {scale}")


@pytest.mark.parametrize("scale", [1e150, 1e-150, 2.0**500, 2.0**-500])
def test_caf_huge_and_tiny_magnitudes(scale):
    X = magnitude_rows(scale)
    for f in (0, 2, 4):
        check_caf(X, f, robustagg.spectral.caf(X, f), f"scale {scale}")


@pytest.mark.parametrize("device", DEVICES)
def test_rules_on_device(device):
    """Each rule on the device against the reference (CPU generator for the random columns)."""
    for pattern in ("gaussian", "ties", "outliers"):
        spec = CaseSpec(9, 24, 5, pattern, dups=2, nan_rows=1, partial_rows=1, layout="transposed")
        for dtype in (F64, torch.float32):
            X = make_case(spec, dtype)
            Xd = X.to(device)
            what = f"{pattern} {dtype} on {device}"
            check_subset_rule("mda", X, 2, robustagg.distance.mda(Xd, 2).cpu(), what=what)
            check_subset_rule("smea", X, 2, robustagg.spectral.smea(Xd, 2).cpu(), what=what)
            cands = monna_candidates(X, 3, 1, exact_data(X))
            assert_one_of(robustagg.distance.monna(Xd, 3, 1).cpu(), [rows_mean(X, r) for r in cands], X, what)
            check_caf(X, 3, robustagg.spectral.caf(Xd, 3).cpu(), what)
            trace: list = []
            expected = reference.dnc(X, 2, 3, 10, generator=torch.Generator().manual_seed(1), trace=trace)
            out = robustagg.spectral.dnc(Xd, 2, 3, 10, generator=torch.Generator().manual_seed(1))
            assert out.device == Xd.device
            if dnc_ambiguous(X, 2, trace) is None:
                assert_sum_close(out.cpu(), expected, X, f"dnc {what}")
            root = make_root(X, "mean", 1)
            check_fltrust(X, root, robustagg.similarity.fltrust(Xd, root.to(device)).cpu(), False, what)
            trace2: dict = {}
            expected = reference.signguard(X, fraction=0.5, generator=torch.Generator().manual_seed(2), trace=trace2)
            out = robustagg.similarity.signguard(Xd, fraction=0.5, generator=torch.Generator().manual_seed(2))
            assert out.device == Xd.device
            if signguard_ambiguous(trace2, 0.1, 3.0, 12, exact_data(X)) is None:
                assert_sum_close(out.cpu(), expected, X, f"signguard {what}")
            check_clipped_clustering(X, None, robustagg.similarity.clipped_clustering(Xd).cpu(), what)
            w = robustagg.similarity.foolsgold_weights(Xd)
            assert w.device == Xd.device
            check_foolsgold(X, 1.0, w.cpu(), exact_data(X), what)


def test_mda_with_many_rows_and_no_byzantine():
    """f = 0 leaves one candidate, the n rows: the search is n levels deep (an iterative walk, no recursion
    limit) and the result is the mean."""
    X = torch.randn(1500, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert_sum_close(robustagg.distance.mda(X, 0), X.mean(0), X, "mda(n=1500, f=0)")


def test_smea_subsets_with_an_overflowed_distance_lose():
    """Distances summed over buckets (the distributed paths) can overflow between finite rows: a subset
    holding such a pair has value +inf, never 0."""
    D = torch.tensor([[0.0, 1.0, 4.0], [1.0, 0.0, math.inf], [4.0, math.inf, 0.0]], dtype=F64)
    c = robustagg.subsets.smea_coefficients(D, torch.ones(3, dtype=torch.bool), 1)
    assert c.tolist() == [0.5, 0.5, 0.0]  # {0, 1}: spread 1/4; {0, 2}: 1; {1, 2}: +inf


def test_dnc_result_follows_the_kept_rows_gradient():
    X = torch.tensor([[0.0], [1.0], [2.0], [10.0]], dtype=F64, requires_grad=True)
    robustagg.spectral.dnc(X, 1, iters=1).sum().backward()
    assert X.grad.flatten().tolist() == [1 / 3, 1 / 3, 1 / 3, 0.0]
