"""Pre-aggregators (SPEC 4) against the direct float64 reference, and their
composition with the rules: bucketing, nnm, clip, arc, ``pre >> rule``."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_distance import (
    SETTINGS,
    RowsSpec,
    _note,
    assert_vec_close,
    clustered,
    exact_data,
    finite_rows,
    finite_scale,
    make_rows,
    near,
    rows_specs,
    same_row,
)

import robustagg
from robustagg import reference

from conftest import DTYPES, assert_same_bits


def check_rows(out: torch.Tensor, expected: torch.Tensor, X: torch.Tensor, what: str = "") -> None:
    """Each output row is a float64 combination of a few rows, rounded once."""
    assert_vec_close(out, expected, finite_scale(X), 1e-13, what)


# ---------------------------------------------------------------------------
# Bucketing


@st.composite
def bucketing_cases(draw):
    spec = draw(rows_specs(max_n=20))
    return spec, draw(st.integers(1, spec.n + 2)), draw(st.integers(0, 2**31 - 1))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=30, **SETTINGS)
@given(case=bucketing_cases())
def test_bucketing_matches_reference(dtype, case):
    spec, s, seed = case
    X = make_rows(spec, dtype)
    before = X.clone()
    out = robustagg.bucketing(X, s, generator=torch.Generator().manual_seed(seed))
    assert out.shape == (math.ceil(spec.n / s), spec.d) and out.dtype == dtype
    perm = torch.randperm(spec.n, generator=torch.Generator().manual_seed(seed))
    check_rows(out, reference.bucketing(X, s, perm), X, f"bucketing s={s} {spec!r}")
    assert_same_bits(X.reshape(-1), before.reshape(-1), "input modified")


def test_bucketing_reproducible():
    X = torch.randn(11, 70, generator=torch.Generator().manual_seed(0))
    a = robustagg.bucketing(X, 3, generator=torch.Generator().manual_seed(42))
    b = robustagg.bucketing(X, 3, generator=torch.Generator().manual_seed(42))
    assert a.shape == (4, 70)
    assert_same_bits(a.reshape(-1), b.reshape(-1), "same seed")
    # one generator, two calls: two consecutive permutations
    g, g_ref = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(2):
        out = robustagg.bucketing(X, 2, generator=g)
        check_rows(out, reference.bucketing(X, 2, torch.randperm(11, generator=g_ref)), X, "consecutive calls")
    # generator=None draws from torch's global generator
    torch.manual_seed(123)
    out = robustagg.bucketing(X, 4)
    torch.manual_seed(123)
    check_rows(out, reference.bucketing(X, 4, torch.randperm(11)), X, "global generator")


def test_bucketing_sizes():
    X = torch.arange(12.0).reshape(6, 2)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(3))
    # s = 1: the permuted rows themselves
    out = robustagg.bucketing(X, 1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, X[perm])
    # s >= n: one bucket, the mean
    for s in (6, 7, 100):
        out = robustagg.bucketing(X, s, generator=torch.Generator().manual_seed(3))
        assert out.shape == (1, 2) and torch.allclose(out[0], X.mean(0), rtol=1e-6, atol=0)
    # last bucket smaller: buckets of 4 and 2
    out = robustagg.bucketing(X, 4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, torch.stack([X[perm[:4]].mean(0), X[perm[4:]].mean(0)]))


# ---------------------------------------------------------------------------
# Nearest-neighbour mixing


def nnm_ambiguous_rows(X: torch.Tensor, f: int) -> set[int]:
    """Rows whose neighbour set rounding may change (a near tie across the cut)."""
    if exact_data(X):
        return set()
    X64 = X.to(torch.float64)
    n = X.shape[0]
    D = reference.pairwise_sq_distances(X)
    out = set()
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: (float(D[i, j]), j))
        inside, outside = others[: n - f - 1], others[n - f - 1 :]
        if any(near(float(D[i, a]), float(D[i, b])) and not same_row(X64, a, b) for a in inside for b in outside):
            out.add(i)
    return out


@st.composite
def nnm_cases(draw):
    spec = draw(rows_specs(max_n=16))
    return spec, draw(st.integers(0, spec.n - 1))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=30, **SETTINGS)
@given(case=nnm_cases())
def test_nnm_matches_reference(dtype, case):
    spec, f = case
    X = make_rows(spec, dtype)
    out = robustagg.nnm(X, f)
    assert out.shape == X.shape and out.dtype == dtype
    expected = reference.nnm(X, f)
    fin = finite_rows(X)
    skip = nnm_ambiguous_rows(X, f)
    if skip:
        _note(f"near ties for rows {sorted(skip)}")
    for i in range(spec.n):
        if not fin[i]:
            assert not torch.isfinite(out[i]).all(), f"row {i} became finite"
        elif i not in skip:
            check_rows(out[i], expected[i], X, f"nnm f={f} row {i} {spec!r}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_nnm_every_f(dtype):
    for n in range(1, 14):
        for pattern in ("gaussian", "ties"):
            spec = RowsSpec(n, 19, seed=n, pattern=pattern, dups=n // 4, nan_rows=n // 6, partial_rows=n // 5)
            X = make_rows(spec, dtype)
            fin = finite_rows(X)
            for f in range(n):
                out, expected = robustagg.nnm(X, f), reference.nnm(X, f)
                skip = nnm_ambiguous_rows(X, f)
                for i in range(n):
                    if fin[i] and i not in skip:
                        check_rows(out[i], expected[i], X, f"nnm f={f} row {i} {spec!r}")
                    elif not fin[i]:
                        assert not torch.isfinite(out[i]).all()


def test_nnm_hand_built():
    # f = 1, two neighbours each: 0 -> {1, 3}, 1 -> {0, 3}, 3 -> {1, 0}, 10 -> {3, 1}
    X = torch.tensor([[0.0], [1.0], [3.0], [10.0]], dtype=torch.float64)
    torch.testing.assert_close(
        robustagg.nnm(X, 1),
        torch.tensor([[4 / 3], [4 / 3], [4 / 3], [14 / 3]], dtype=torch.float64),
        rtol=1e-15,
        atol=0,
    )
    # f = 2, one neighbour: row 0 has rows 1 and 2 at distance 1, the lower index wins
    X = torch.tensor([[0.0], [1.0], [-1.0], [5.0]], dtype=torch.float64)
    assert torch.equal(robustagg.nnm(X, 2), torch.tensor([[0.5], [0.5], [-0.5], [3.0]], dtype=torch.float64))
    # f = 0: every row becomes the mean
    Y = torch.randn(7, 13, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    check_rows(robustagg.nnm(Y, 0), Y.mean(0).expand(7, 13), Y, "f=0")
    # f = n - 1: no neighbours, the rows themselves
    check_rows(robustagg.nnm(Y, 6), Y, Y, "f=n-1")


def test_nnm_non_finite_rows():
    X = torch.tensor([[0.0, 0.0], [1.0, 0.0], [math.nan, 0.0], [0.0, 1.0], [math.inf, 5.0], [9.0, 9.0]])
    out = robustagg.nnm(X, 2)  # three neighbours: the two non-finite rows are the farthest
    assert not torch.isfinite(out[2]).all() and not torch.isfinite(out[4]).all()
    torch.testing.assert_close(out[0], torch.tensor([2.5, 2.5]))  # itself and its nearest three: rows 1, 3, 5
    assert torch.isfinite(out[[0, 1, 3, 5]]).all()
    check_rows(out, reference.nnm(X, 2), X)


@pytest.mark.parametrize("d", [10_000, 50_000])
def test_nnm_clustered(d):
    """Rows within 1e-4 of a unit vector (float32): the neighbour sets are the reference's."""
    g = torch.Generator().manual_seed(d)
    X = clustered(10, d, g).float()
    out = robustagg.nnm(X, 3)
    skip = nnm_ambiguous_rows(X, 3)
    assert not skip
    expected = reference.nnm(X, 3)
    # a wrong neighbour moves a row by ~1e-5 / 7 per coordinate scale; the tolerance is rounding only
    assert_vec_close(out, expected, 1.0 / math.sqrt(d), 1e-6, "nnm clustered")


# ---------------------------------------------------------------------------
# Clipping


@st.composite
def clip_cases(draw):
    spec = draw(rows_specs(max_n=16))
    return spec, draw(st.sampled_from([1e-3, 0.1, 0.5, 1.0, 3.0, math.inf]))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=30, **SETTINGS)
@given(case=clip_cases())
def test_clip_matches_reference(dtype, case):
    spec, rel_c = case
    X = make_rows(spec, dtype)
    norms = [float(r.norm()) for r, ok in zip(X.to(torch.float64), finite_rows(X)) if ok]
    c = rel_c * (max(norms) if norms and max(norms) > 0 else 1.0)
    before = X.clone()
    out = robustagg.clip(X, c)
    assert out.shape == X.shape and out.dtype == dtype
    check_rows(out, reference.clip(X, c), X, f"clip c={c} {spec!r}")
    assert_same_bits(X.reshape(-1), before.reshape(-1), "input modified")


def test_clip_hand_built():
    X = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.3, 0.4], [math.nan, 1.0], [0.0, -2.0], [math.inf, 0.0]])
    out = robustagg.clip(X, 1.0)
    expected = torch.tensor([[0.6, 0.8], [0.0, 0.0], [0.3, 0.4], [math.nan, 1.0], [0.0, -1.0], [math.inf, 0.0]])
    torch.testing.assert_close(out, expected, equal_nan=True, rtol=1e-7, atol=0)
    assert torch.equal(out[2], X[2])  # norm 0.5 <= 1: unchanged, bit for bit
    assert torch.equal(out[1], X[1])
    out = robustagg.clip(X, math.inf)
    torch.testing.assert_close(out, X, equal_nan=True, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# ARC


@st.composite
def arc_cases(draw):
    spec = draw(rows_specs(max_n=20))
    return spec, draw(st.integers(0, (spec.n - 1) // 2))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=30, **SETTINGS)
@given(case=arc_cases())
def test_arc_matches_reference(dtype, case):
    spec, f = case
    X = make_rows(spec, dtype)
    out = robustagg.arc(X, f)
    assert out.shape == X.shape and out.dtype == dtype
    check_rows(out, reference.arc(X, f), X, f"arc f={f} {spec!r}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_arc_every_f(dtype):
    for n in range(1, 16):
        spec = RowsSpec(n, 23, seed=n, pattern="gaussian", dups=n // 4, nan_rows=n // 5, posinf_rows=n // 7)
        X = make_rows(spec, dtype)
        for f in range((n - 1) // 2 + 1):
            check_rows(robustagg.arc(X, f), reference.arc(X, f), X, f"arc f={f} {spec!r}")


def test_arc_hand_built():
    # n = 5, f = 1: k = floor(2 * 1 * 4 / 5) = 1; norms 1, 5, 2, 3, 0.5: row 1 goes to norm 3
    X = torch.tensor([[1.0, 0.0], [3.0, 4.0], [0.0, 2.0], [0.0, -3.0], [0.5, 0.0]], dtype=torch.float64)
    expected = X.clone()
    expected[1] = torch.tensor([1.8, 2.4], dtype=torch.float64)
    torch.testing.assert_close(robustagg.arc(X, 1), expected, rtol=1e-15, atol=0)
    assert torch.equal(robustagg.arc(X, 0), X)  # k = 0
    # n = 10, f = 4: k = floor(48 / 10) = 4 (not round(4.8) = 5): norms 10..1, the top 4 go to norm 6
    u = torch.tensor([0.6, -0.8], dtype=torch.float64)
    norms = torch.arange(10.0, 0.0, -1.0, dtype=torch.float64)
    Y = norms[:, None] * u
    perm = [3, 7, 0, 9, 1, 5, 2, 8, 4, 6]
    Y, norms = Y[perm], norms[perm]
    out = robustagg.arc(Y, 4)
    got = out.norm(dim=1)
    torch.testing.assert_close(got, norms.clamp(max=6.0), rtol=1e-14, atol=0)
    torch.testing.assert_close(out / got[:, None], u.expand(10, 2), rtol=1e-14, atol=1e-15)


def test_arc_non_finite_rows():
    nan = math.nan
    base = torch.tensor([[1.0, 0.0], [3.0, 4.0], [0.0, 2.0], [0.0, -3.0], [0.5, 0.0]], dtype=torch.float64)
    # f = 1, k = 1: the NaN row takes the top rank and stays; nothing else is scaled
    X = base.clone()
    X[4] = torch.tensor([nan, 1.0])
    torch.testing.assert_close(robustagg.arc(X, 1), X, equal_nan=True, rtol=0, atol=0)
    # f = 2, k = floor(12 / 5) = 2: the NaN row and row 1; row 1 goes to norm 3 (row 3)
    expected = X.clone()
    expected[1] = torch.tensor([1.8, 2.4], dtype=torch.float64)
    torch.testing.assert_close(robustagg.arc(X, 2), expected, equal_nan=True, rtol=1e-15, atol=0)
    # three non-finite rows: the (k+1)-th is not finite, nothing is scaled
    X[2] = math.inf
    X[0, 1] = -math.inf
    torch.testing.assert_close(robustagg.arc(X, 2), X, equal_nan=True, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# Composition with the rules


def test_bucketing_then_geometric_median():
    X = make_rows(RowsSpec(13, 200, 1, "gaussian", nan_rows=1), torch.float32)
    out = (robustagg.Bucketing(2, generator=torch.Generator().manual_seed(9)) >> robustagg.GeometricMedian())(X)
    expected = robustagg.geometric_median(robustagg.bucketing(X, 2, generator=torch.Generator().manual_seed(9)))
    assert_same_bits(out, expected, "Bucketing(2) >> GeometricMedian()")
    # the bucket holding the NaN row is non-finite and gets weight 0 in the median
    B = robustagg.bucketing(X, 2, generator=torch.Generator().manual_seed(9))
    assert sum(not ok for ok in finite_rows(B)) == 1 and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_chains(dtype):
    X = make_rows(RowsSpec(12, 300, 2, "gaussian", nan_rows=1, posinf_rows=1), dtype)
    f, c = 2, 10.0
    pipe = robustagg.NNM(f) >> robustagg.Clip(c) >> robustagg.Krum(f)
    out = pipe(X)
    assert_same_bits(out, robustagg.krum(robustagg.clip(robustagg.nnm(X, f), c), f), "NNM >> Clip >> Krum")
    # and end to end against the reference chain
    expected = reference.krum(reference.clip(reference.nnm(X, f), c), f)
    assert_vec_close(out, expected, finite_scale(X), 1e-13, "NNM >> Clip >> Krum vs reference")
    # a chain of pre-aggregators alone returns rows
    rows = (robustagg.NNM(f) >> robustagg.Clip(c))(X)
    assert_same_bits(rows.reshape(-1), robustagg.clip(robustagg.nnm(X, f), c).reshape(-1), "NNM >> Clip")
    # with a coordinate-wise rule
    out = (robustagg.ARC(f) >> robustagg.TrimmedMean(f))(X)
    assert_same_bits(out, robustagg.trimmed_mean(robustagg.arc(X, f), f), "ARC >> TrimmedMean")
    out = (
        robustagg.Clip(c)
        >> robustagg.Bucketing(3, generator=torch.Generator().manual_seed(1))
        >> robustagg.MultiKrum(0)
    )(X)
    expected = robustagg.multi_krum(
        robustagg.bucketing(robustagg.clip(X, c), 3, generator=torch.Generator().manual_seed(1)), 0
    )
    assert_same_bits(out, expected, "Clip >> Bucketing >> MultiKrum")


def test_preaggregator_objects_match_functions():
    X = make_rows(RowsSpec(9, 40, 3, "gaussian", neginf_rows=1), torch.float32)
    cases = [
        (robustagg.NNM(2), robustagg.nnm(X, 2)),
        (robustagg.Clip(1.5), robustagg.clip(X, 1.5)),
        (robustagg.ARC(3), robustagg.arc(X, 3)),
        (
            robustagg.Bucketing(4, generator=torch.Generator().manual_seed(0)),
            robustagg.bucketing(X, 4, generator=torch.Generator().manual_seed(0)),
        ),
    ]
    for pre, expected in cases:
        out = pre(X)
        assert_same_bits(out.reshape(-1), expected.reshape(-1), repr(pre))
    # other input forms: a list of per-worker tensors gives the same (n', d) rows
    grads = [X[i].reshape(4, 10).clone() for i in range(9)]
    out = robustagg.NNM(2)(grads)
    assert out.shape == (9, 40)
    assert_same_bits(out.reshape(-1), robustagg.nnm(X, 2).reshape(-1), "NNM on a list")


def test_pipeline_on_parameter_lists():
    X = make_rows(RowsSpec(9, 23, 4, "gaussian", nan_rows=1), torch.float64)
    shapes = [(3, 5), (8,)]
    params = [[X[i, :15].reshape(3, 5).clone(), X[i, 15:].clone()] for i in range(9)]
    out = (robustagg.Clip(2.0) >> robustagg.GeometricMedian())(params)
    assert isinstance(out, list) and [t.shape for t in out] == [torch.Size(s) for s in shapes]
    expected = robustagg.geometric_median(robustagg.clip(X, 2.0))
    assert_same_bits(torch.cat([t.reshape(-1) for t in out]), expected, "Clip >> GeometricMedian on parameter lists")
