"""Distance rules (SPEC 3) on the CPU against the direct float64 reference.

pairwise_sq_distances, krum, multi_krum, bulyan, geometric_median and
centered_clip, plus the semantics of the native ops they are built from
(pairwise distances with a center row, mix_rows, row_sq_norms).

Selection rules (Krum, Bulyan) are compared exactly, except where two
different rows have scores so close (relative 1e-7) that rounding in the
distances may legitimately swap them: then only the shape and dtype are
checked. Inputs whose finite values are small multiples of 1/2 are computed
exactly by any method, so on them ties are checked strictly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

import robustagg
import robustagg.ops
from robustagg import reference

from conftest import (
    DEVICES,
    DTYPES,
    MatrixSpec,
    assert_exact,
    assert_same_bits,
    assert_sum_close,
    available_isas,
    make_matrix,
    use_isa,
)

ISAS = available_isas()
NEAR_TIE = 1e-7
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------
# Inputs: small n, d up to a few thousand, ties, duplicated rows, non-finite
# rows, clustered rows, non-contiguous layouts


@dataclass(frozen=True)
class RowsSpec:
    n: int
    d: int
    seed: int
    pattern: str  # gaussian | ties | zeros | clustered
    dups: int = 0  # rows overwritten by a copy of another row
    nan_rows: int = 0
    posinf_rows: int = 0
    neginf_rows: int = 0
    partial_rows: int = 0  # rows with a single NaN / +inf / -inf entry
    layout: str = "contiguous"  # contiguous | transposed | strided | rows


ROW_PATTERNS = ["gaussian", "ties", "zeros", "clustered"]
LAYOUTS = ["contiguous", "transposed", "strided", "rows"]


def clustered(n: int, d: int, g: torch.Generator, spread: float = 1e-4) -> torch.Tensor:
    """Rows u + noise with ||u|| = 1 and ||noise|| ~ spread (float64)."""
    u = torch.randn(d, generator=g, dtype=torch.float64)
    u = u / u.norm().clamp_min(1e-300)
    return u + spread * torch.randn(n, d, generator=g, dtype=torch.float64) / math.sqrt(max(d, 1))


def with_layout(X: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values with other strides; padding is NaN so a stray read shows."""
    n, d = X.shape
    if layout == "transposed":
        return X.t().contiguous().t()
    if layout == "strided":
        buf = torch.full((n, 2 * d + 3), math.nan, dtype=X.dtype)
        buf[:, 1 : 2 * d + 1 : 2] = X
        return buf[:, 1 : 2 * d + 1 : 2]
    if layout == "rows":
        buf = torch.full((2 * n, d), math.nan, dtype=X.dtype)
        buf[::2] = X
        return buf[::2]
    return X


def make_rows(spec: RowsSpec, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(spec.seed)
    n, d = spec.n, spec.d
    if spec.pattern == "clustered":
        X = clustered(n, d, g)
    else:
        X = make_matrix(MatrixSpec(n, d, spec.seed, spec.pattern), torch.float64)
    return with_rows_overwritten(X, spec, g, dtype)


def with_rows_overwritten(X: torch.Tensor, spec, g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """X (float64) with ``spec.dups`` rows copied from others, whole rows of NaN / +inf / -inf and rows with
    one non-finite entry (``spec``'s counts, rows drawn from g), cast to dtype in ``spec.layout``."""
    n, d = X.shape
    perm = torch.randperm(n, generator=g).tolist()
    for i in perm[: spec.dups]:
        X[i] = X[int(torch.randint(0, n, (1,), generator=g))]
    rows = torch.randperm(n, generator=g).tolist()
    k = 0
    for count, value in ((spec.nan_rows, math.nan), (spec.posinf_rows, math.inf), (spec.neginf_rows, -math.inf)):
        for i in rows[k : k + count]:
            X[i] = value
        k += count
    if d > 0:
        for i in rows[k : k + spec.partial_rows]:
            X[i, int(torch.randint(0, d, (1,), generator=g))] = [math.nan, math.inf, -math.inf][i % 3]
    return with_layout(X.to(dtype), spec.layout)


@st.composite
def rows_specs(draw, min_n: int = 1, max_n: int = 16, max_d: int = 3000, nonfinite: bool = True):
    n = draw(st.integers(min_n, max_n))
    d = draw(st.one_of(st.integers(0, 24), st.integers(1, max_d)))
    pattern = draw(st.sampled_from(ROW_PATTERNS))
    dups = draw(st.integers(0, n // 2))
    counts = [0, 0, 0, 0]
    if nonfinite and draw(st.booleans()):
        left = n
        for j in range(4):
            counts[j] = draw(st.integers(0, min(left, 3)))
            left -= counts[j]
    layout = draw(st.sampled_from(LAYOUTS))
    return RowsSpec(n, d, draw(st.integers(0, 2**31 - 1)), pattern, dups, *counts, layout=layout)


# ---------------------------------------------------------------------------
# Helpers


def _note(message: str) -> None:
    """hypothesis.note inside a hypothesis example, nothing elsewhere."""
    try:
        note(message)
    except InvalidArgument:
        pass


def finite_rows(X: torch.Tensor) -> list[bool]:
    return [bool(torch.isfinite(r).all()) for r in X.to(torch.float64)]


def exact_data(X: torch.Tensor) -> bool:
    """Finite values all small multiples of 1/2: every distance and score is exact in any method."""
    V = X.to(torch.float64)
    V = V[torch.isfinite(V)]
    return bool(((V * 2).round() == V * 2).all() and (V.abs() <= 8).all())


def near(a: float, b: float, rel: float = NEAR_TIE) -> bool:
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= rel * max(abs(a), abs(b))


def same_row(X64: torch.Tensor, i: int, j: int) -> bool:
    return torch.equal(X64[i], X64[j])


def krum_scores(D: torch.Tensor, rows: list[int], f: int) -> dict[int, float]:
    q = max(len(rows) - f - 2, 0)
    out = {}
    for i in rows:
        s = 0.0
        for v in sorted(float(D[i, j]) for j in rows if j != i)[:q]:
            s += v
        out[i] = s
    return out


def shared_nearest(D: torch.Tensor, rows: list[int], q: int, a: int, b: int) -> bool:
    """One neighbour each (q = 1), and a and b are each other's clear nearest row:
    both scores are the same entry D_ab = D_ba, so they tie exactly in any method."""
    if q != 1:
        return False
    v = float(D[a, b])
    return all(not near(float(D[i, j]), v) and float(D[i, j]) > v for i in (a, b) for j in rows if j not in (a, b))


def rounding_inputs(X: torch.Tensor) -> tuple[torch.Tensor, list[bool], torch.Tensor]:
    """X in float64, its finite rows and the reference distances: what the ambiguity checks read."""
    return X.to(torch.float64), finite_rows(X), reference.pairwise_sq_distances(X)


def krum_ambiguous(X: torch.Tensor, f: int, m: int) -> bool:
    """Whether rounding may swap a row in the m best with one outside them."""
    if exact_data(X):
        return False
    X64, fin, D = rounding_inputs(X)
    n = X.shape[0]
    rows = list(range(n))
    s = krum_scores(D, rows, f)
    order = sorted(rows, key=lambda i: (not fin[i], s[i], i))
    return any(
        fin[a]
        and fin[b]
        and near(s[a], s[b])
        and not same_row(X64, a, b)
        and not shared_nearest(D, rows, n - f - 2, a, b)
        for a in order[:m]
        for b in order[m:]
    )


def bulyan_ambiguous(X: torch.Tensor, f: int) -> bool:
    if exact_data(X):
        return False
    X64, fin, D = rounding_inputs(X)
    n = X.shape[0]
    remaining = list(range(n))
    for _ in range(n - 2 * f):
        s = krum_scores(D, remaining, f)
        order = sorted(remaining, key=lambda i: (not fin[i], s[i], i))
        w = order[0]
        q = len(remaining) - f - 2
        if q > 0 and any(
            fin[w]
            and fin[b]
            and near(s[w], s[b])
            and not same_row(X64, w, b)
            and not shared_nearest(D, remaining, q, w, b)
            for b in order[1:]
        ):
            return True
        remaining.remove(w)
    return False


def assert_vec_close(out: torch.Tensor, exp: torch.Tensor, scale: float, rel: float, what: str = "") -> None:
    """|out - exp| <= 4 eps(dtype) max(|out|, |exp|) + rel * scale, NaN/inf where exp has them."""
    assert out.dtype == exp.dtype and out.shape == exp.shape, (what, out.dtype, exp.dtype, out.shape, exp.shape)
    fi = torch.finfo(out.dtype)
    a, b = out.detach().cpu().to(torch.float64), exp.to(torch.float64)
    tol = 4 * fi.eps * torch.maximum(a.abs(), b.abs()).nan_to_num(posinf=0.0) + fi.eps * fi.tiny + rel * scale
    fin = torch.isfinite(b)
    bad = (torch.isnan(a) != torch.isnan(b)) | (torch.isinf(b) & (a != b))
    bad |= fin & ~(torch.isfinite(a) & ((a - b).abs() <= tol))
    if bad.any():
        j = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} out of tolerance; first at {j}: got {a[j].item()!r}, "
            f"expected {b[j].item()!r}, tol {tol[j].item()!r}"
        )


def is_a_row(out: torch.Tensor, X: torch.Tensor) -> bool:
    """out has the bits of one of X's rows."""
    as_int = {8: torch.int64, 4: torch.int32, 2: torch.int16}[X.element_size()]
    return any(torch.equal(out.view(as_int), r) for r in X.contiguous().view(as_int))


def finite_scale(*tensors: torch.Tensor) -> float:
    m = 0.0
    for T in tensors:
        V = T.to(torch.float64)
        V = V[torch.isfinite(V)]
        if V.numel():
            m = max(m, float(V.abs().max()))
    return m


def assert_d_close(D: torch.Tensor, R: torch.Tensor, X: torch.Tensor, rel: float = 1e-10, what: str = "") -> None:
    """Squared distances: exact +inf / 0-diagonal pattern, exact symmetry, and
    |D - R| <= rel * R + 1e-12 * (||x_i||^2 + ||x_j||^2) on finite entries."""
    m = R.shape[0]
    assert D.dtype == torch.float64 and D.shape == (m, m), (what, D.dtype, D.shape)
    assert torch.equal(D, D.t()), f"{what}: not symmetric"
    assert torch.equal(D.diagonal(), torch.zeros(m, dtype=torch.float64)), f"{what}: diagonal not 0"
    inf = torch.isinf(R)
    assert torch.equal(torch.isinf(D), inf) and not torch.isnan(D).any(), f"{what}: +inf pattern"
    assert (D[inf] > 0).all()
    X64 = X.to(torch.float64)
    sq = (X64 * X64).sum(1).nan_to_num(posinf=0.0)
    if m > X.shape[0]:
        sq = torch.cat([sq, sq.new_zeros(m - X.shape[0])])
    tol = rel * R + 1e-12 * (sq[:, None] + sq[None, :])
    err = (D - R).abs()
    bad = ~inf & (err > tol)
    if bad.any():
        i, j = bad.nonzero()[0].tolist()
        raise AssertionError(f"{what}: D[{i},{j}] = {D[i, j].item()!r}, expected {R[i, j].item()!r}")


# ---------------------------------------------------------------------------
# pairwise_sq_distances


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=30, **SETTINGS)
@given(spec=rows_specs(max_n=24))
def test_pairwise_matches_reference(dtype, spec):
    X = make_rows(spec, dtype)
    before = X.clone()
    D = robustagg.pairwise_sq_distances(X)
    assert_d_close(D, reference.pairwise_sq_distances(X), X, what=repr(spec))
    assert_same_bits(X.reshape(-1), before.reshape(-1), "input modified")


def test_pairwise_known_values():
    nan, inf = math.nan, math.inf
    X = torch.tensor([[0.0, 0.0], [3.0, 4.0], [nan, 1.0], [1.0, 0.0], [0.0, -inf]])
    D = robustagg.pairwise_sq_distances(X)
    expected = torch.tensor(
        [
            [0.0, 25.0, inf, 1.0, inf],
            [25.0, 0.0, inf, 20.0, inf],
            [inf, inf, 0.0, inf, inf],
            [1.0, 20.0, inf, 0.0, inf],
            [inf, inf, inf, inf, 0.0],
        ],
        dtype=torch.float64,
    )
    assert torch.equal(D, expected)


@pytest.mark.parametrize("d", [10_000, 100_000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_pairwise_clustered(d, dtype):
    """Rows within 1e-4 of a unit vector: D ~ 2e-8 * ||x||^2. Expanding
    ||a||^2 + ||b||^2 - 2<a, b> cancels almost all digits: torch.cdist in
    float32 is off by ~1e-5 relative here, and even a float64 Gram matrix
    is off by ~1e-6 at d = 1e5."""
    g = torch.Generator().manual_seed(d)
    X = clustered(9, d, g).to(dtype)
    X[5] = X[2]  # one exact duplicate: D = 0 expected to about 1e-6 of the others
    R = reference.pairwise_sq_distances(X)
    D = robustagg.pairwise_sq_distances(X)
    off = ~torch.eye(9, dtype=torch.bool)
    off[2, 5] = off[5, 2] = False
    rel = ((D - R).abs() / R)[off].max().item()
    assert rel <= 1e-6, f"max relative error {rel:.3g}"
    assert D[2, 5].item() <= 1e-6 * R[off].min().item()
    # Byzantine rows anywhere (first, middle, last) must not cost the honest rows their accuracy
    for bad in ([0, 4], [0, 8], [0, 4, 8]):
        Y = X.clone()
        Y[bad] = math.nan
        R = reference.pairwise_sq_distances(Y)
        D = robustagg.pairwise_sq_distances(Y)
        fin = torch.isfinite(R) & off
        rel = ((D - R).abs() / R)[fin].max().item()
        assert rel <= 1e-6, f"rows {bad} NaN: max relative error {rel:.3g}"
    # Krum and NNM selections on such data are those of the reference
    for f in (0, 2, 3):
        assert_exact(robustagg.krum(X, f), reference.krum(X, f), X, f"krum f={f} on clustered rows")
    assert_vec_close(robustagg.multi_krum(X, 2), reference.multi_krum(X, 2), 1.0, 1e-12, "multi_krum clustered")


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=10, **SETTINGS)
@given(spec=rows_specs(max_n=20, max_d=600), dtype=st.sampled_from(DTYPES))
def test_distance_kernels_each_isa(isa, spec, dtype):
    """The kernels (distances, row norms with and without dot products, distances to a vector, row mixing)
    under each instruction set, against the float64 reference."""
    X = make_rows(spec, dtype)
    n = spec.n
    C = torch.linspace(-1.0, 2.0, 3 * n, dtype=torch.float64).reshape(3, n)
    C[:, ~torch.tensor(finite_rows(X), dtype=torch.bool)] = 0.0  # non-finite rows are not read
    with use_isa(isa):
        D = robustagg.pairwise_sq_distances(X)
        assert_same_bits(D.reshape(-1), robustagg.pairwise_sq_distances(X).reshape(-1), "second call")
        N = robustagg.ops.row_sq_norms(X)
        M = robustagg.ops.mix_rows(C, X)
        v = X[n // 2].flip(0).contiguous()  # a row of X reversed: NaN/inf in v when that row has them
        ND = robustagg.ops.row_sq_norms_and_dots(X, v)
        SD = robustagg.ops.row_sq_distances(X, v)
    assert_d_close(D, reference.pairwise_sq_distances(X), X, what=f"isa={isa} {spec!r}")
    X64 = X.to(torch.float64)
    torch.testing.assert_close(N, (X64 * X64).sum(1), rtol=1e-12, atol=0, equal_nan=True)
    # The dots may cancel: their error is bounded by the sum of the products' magnitudes.
    want = reference.row_sq_norms_and_dots(X, v)
    torch.testing.assert_close(ND[0], want[0], rtol=1e-12, atol=0, equal_nan=True)
    bound = 1e-12 * (X64.abs() * v.to(torch.float64).abs()).sum(1).nan_to_num(0.0, 0.0, 0.0)
    assert torch.equal(torch.isfinite(ND[1]), torch.isfinite(want[1])), f"dots' non-finite pattern, isa={isa}"
    assert torch.equal(torch.isnan(ND[1]), torch.isnan(want[1])), f"dots' NaN pattern, isa={isa}"
    finite = torch.isfinite(want[1])
    assert ((ND[1] - want[1]).abs()[finite] <= bound[finite]).all(), f"dots, isa={isa} {spec!r}"
    torch.testing.assert_close(SD, reference.row_sq_distances(X, v), rtol=1e-12, atol=0, equal_nan=True)
    expected = (C @ X64.nan_to_num(0.0, 0.0, 0.0)).to(dtype)
    assert_vec_close(M, expected, finite_scale(X) * float(C.abs().sum(1).max()), 1e-14, f"mix_rows isa={isa}")


def test_pairwise_deterministic_and_thread_independent():
    X = clustered(33, 20_000, torch.Generator().manual_seed(1)).float()
    X[5, 7] = math.nan
    first = robustagg.pairwise_sq_distances(X)
    assert_same_bits(first.reshape(-1), robustagg.pairwise_sq_distances(X).reshape(-1), "second call")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert_same_bits(first.reshape(-1), robustagg.pairwise_sq_distances(X).reshape(-1), "one thread")
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------
# Native ops: a center row, mix_rows, row_sq_norms, row_sq_norms_and_dots


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_native_pairwise_with_center(dtype):
    g = torch.Generator().manual_seed(2)
    for n, d in ((1, 5), (6, 300), (11, 77)):
        X = (torch.randn(n, d, generator=g) * 3).to(dtype)
        if n > 2:
            X[1, 3] = math.nan
        c = torch.randn(d, generator=g).to(dtype)
        D = robustagg.ops.pairwise_sq_distances(X, c)
        assert_d_close(D, reference.pairwise_sq_distances(X, c), torch.cat([X, c[None]]), what=f"center n={n}")
        D0 = robustagg.ops.pairwise_sq_distances(X)
        assert_d_close(D0, reference.pairwise_sq_distances(X), X, what=f"no center n={n}")
        # a non-finite center is +inf away from every row
        c[0] = math.inf
        D = robustagg.ops.pairwise_sq_distances(X, c)
        assert torch.isinf(D[n, :n]).all() and D[n, n] == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_native_mix_rows(dtype):
    g = torch.Generator().manual_seed(3)
    n, d, k = 7, 1000, 4
    X = torch.randn(n, d, generator=g).to(dtype)
    X[2] = math.nan
    X[5, 10] = math.inf
    c = torch.randn(d, generator=g).to(dtype)
    C = torch.randn(k, n + 1, generator=g, dtype=torch.float64)
    C[:, 2] = 0.0  # the NaN row is never read
    C[1, 5] = 0.0
    C[3] = 0.0
    X64, c64 = X.to(torch.float64), c.to(torch.float64)
    expected = []
    for r in range(k):
        acc = torch.zeros(d, dtype=torch.float64)
        for i in range(n + 1):
            if C[r, i] != 0:
                acc = acc + C[r, i] * (X64[i] if i < n else c64)
        expected.append(acc)
    expected = torch.stack(expected).to(dtype)
    out = robustagg.ops.mix_rows(C, X, c)
    scale = finite_scale(X, c) * float(C.abs().sum(1).max())
    assert_vec_close(out, expected, scale, 1e-14, "mix_rows with center")
    assert not torch.isnan(out[1]).any() and torch.isinf(out[0, 10])
    assert torch.equal(out[3], torch.zeros(d, dtype=dtype))
    out = robustagg.ops.mix_rows(C[:, :n].contiguous(), X[:, ::3])
    ref = torch.stack([sum(C[r, i] * X64[i, ::3] for i in range(n) if C[r, i] != 0) for r in range(k - 1)])
    assert_vec_close(out[: k - 1], ref.to(dtype), scale, 1e-14, "mix_rows strided, no center")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_native_row_sq_norms(dtype):
    g = torch.Generator().manual_seed(4)
    X = (torch.randn(9, 2049, generator=g) * 10).to(dtype)
    X[3, 0] = math.nan
    X[4, 5] = -math.inf
    out = robustagg.ops.row_sq_norms(X[:, 1:])
    assert out.dtype == torch.float64 and out.shape == (9,)
    X64 = X[:, 1:].to(torch.float64)
    expected = torch.stack([(X64[i] * X64[i]).sum() for i in range(9)])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=0, equal_nan=True)
    full = robustagg.ops.row_sq_norms(X)
    assert not torch.isfinite(full[3]) and torch.isinf(full[4])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [1, 7, 2049, 20_001])
def test_native_row_sq_norms_and_dots(dtype, d):
    g = torch.Generator().manual_seed(d)
    X = (torch.randn(9, d + 1, generator=g) * 10).to(dtype)[:, 1:]  # strided rows, unaligned start
    v = (torch.randn(d, generator=g) * 0.1).to(dtype)
    X[3, 0] = math.nan
    X[4, d - 1] = -math.inf
    X[6] = 0.0
    X[7] = X[8] = v  # the same row twice: equal results
    out = robustagg.ops.row_sq_norms_and_dots(X, v)
    assert out.dtype == torch.float64 and out.shape == (2, 9)
    X64, v64 = X.to(torch.float64), v.to(torch.float64)
    for i in (0, 1, 2, 5, 6, 7):
        assert float(out[0, i]) == pytest.approx(float((X64[i] * X64[i]).sum()), rel=1e-13, abs=0)
        dot = float((X64[i] * v64).sum())
        bound = float((X64[i] * v64).abs().sum())  # the dot's condition: cancellation can leave it near 0
        assert abs(float(out[1, i]) - dot) <= 1e-13 * bound
    assert torch.equal(out[:, 7], out[:, 8]) and out[0, 7] == out[1, 7]
    assert out[0, 6] == 0 and out[1, 6] == 0
    assert torch.isnan(out[:, 3]).all() and torch.isinf(out[0, 4]) and not torch.isfinite(out[1, 4])
    torch.testing.assert_close(out[0], robustagg.ops.row_sq_norms(X), rtol=1e-13, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [1, 7, 2049, 20_001])
def test_native_row_sq_distances(dtype, d):
    g = torch.Generator().manual_seed(d + 1)
    X = (torch.randn(8, d + 1, generator=g) * 10 + 1000).to(dtype)[:, 1:]  # far from the origin, strided
    v = X[2].clone()
    X[3, 0] = math.nan
    X[4, d - 1] = math.inf
    X[5] = X[6]  # equal rows: equal distances
    out = robustagg.ops.row_sq_distances(X, v)
    assert out.dtype == torch.float64 and out.shape == (8,)
    X64, v64 = X.to(torch.float64), v.to(torch.float64)
    for i in (0, 1, 5, 6, 7):
        assert float(out[i]) == pytest.approx(float(((X64[i] - v64) ** 2).sum()), rel=1e-13, abs=0)
    assert out[2] == 0 and out[5] == out[6]
    assert torch.isnan(out[3]) and torch.isinf(out[4])


def test_native_row_sq_norms_and_dots_rejects_bad_v():
    X = torch.randn(3, 5)
    with pytest.raises(ValueError, match=r"row_sq_norms_and_dots: v must have shape \(d,\) = \(5,\)"):
        robustagg.ops.row_sq_norms_and_dots(X, torch.randn(4))
    with pytest.raises(TypeError, match="row_sq_norms_and_dots: v must have X's dtype"):
        robustagg.ops.row_sq_norms_and_dots(X, torch.randn(5, dtype=torch.float64))
    with pytest.raises(TypeError, match="row_sq_norms_and_dots: v must be a torch.Tensor"):
        robustagg.ops.row_sq_norms_and_dots(X, [0.0] * 5)
    with pytest.raises(ValueError, match="row_sq_norms_and_dots"):
        robustagg.ops.row_sq_norms_and_dots(torch.randn(5), torch.randn(5))
    with pytest.raises(ValueError, match=r"row_sq_distances: v must have shape \(d,\) = \(5,\)"):
        robustagg.ops.row_sq_distances(X, torch.randn(5, 1))
    with pytest.raises(TypeError, match="row_sq_distances: v must be a torch.Tensor"):
        robustagg.ops.row_sq_distances(X, None)


# ---------------------------------------------------------------------------
# Krum and Multi-Krum


@st.composite
def krum_cases(draw):
    spec = draw(rows_specs(min_n=3, max_n=16))
    f = draw(st.integers(0, (spec.n - 3) // 2))
    m = draw(st.one_of(st.just(1), st.integers(1, spec.n)))
    return spec, f, m


def check_krum(X, f, m, out, what=""):
    if krum_ambiguous(X, f, m):
        _note("near tie at the selection boundary: only the shape is compared")
        assert out.shape == (X.shape[1],) and out.dtype == X.dtype
        return
    expected = reference.krum(X, f, m)
    if m == 1:
        assert_exact(out, expected, X, f"krum f={f} {what}")  # the winning row (bits: test_krum_returns_the_row_bits)
    else:
        assert_sum_close(out, expected, X, f"krum f={f} m={m} {what}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=40, **SETTINGS)
@given(case=krum_cases())
def test_krum_matches_reference(dtype, case):
    spec, f, m = case
    X = make_rows(spec, dtype)
    before = X.clone()
    check_krum(X, f, m, robustagg.krum(X, f, m), repr(spec))
    assert_same_bits(X.reshape(-1), before.reshape(-1), "input modified")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@settings(max_examples=25, **SETTINGS)
@given(case=krum_cases())
def test_multi_krum_matches_reference(dtype, case):
    spec, f, m = case
    X = make_rows(spec, dtype)
    n = X.shape[0]
    check_krum(X, f, n - f, robustagg.multi_krum(X, f), f"default m {spec!r}")
    check_krum(X, f, m, robustagg.multi_krum(X, f, m), repr(spec))
    check_krum(X, f, m, robustagg.multi_krum(X, f, m=m), repr(spec))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_krum_every_f_and_m(dtype):
    """f over 0..(n-3)//2 and m over 1..n for odd and even n, with ties, duplicates and non-finite rows."""
    for n in range(3, 13):
        for pattern in ("gaussian", "ties"):
            spec = RowsSpec(
                n, 29, seed=n, pattern=pattern, dups=n // 4, nan_rows=n // 6, posinf_rows=n // 8, partial_rows=n // 5
            )
            X = make_rows(spec, dtype)
            for f in range((n - 3) // 2 + 1):
                for m in range(1, n + 1):
                    check_krum(X, f, m, robustagg.krum(X, f, m), repr(spec))
                check_krum(X, f, n - f, robustagg.multi_krum(X, f), repr(spec))


def test_krum_uses_n_minus_f_minus_2_neighbours():
    """Points 0, 1, 2, 10, 11 with f = 1: row 1 has the best sum of its
    n - f - 2 = 2 smallest squared distances (1 + 1 = 2; row 0: 1 + 4 = 5,
    row 2: 1 + 4 = 5); with 3 neighbours row 2 would win (1 + 4 + 64 = 69
    against 1 + 1 + 81 = 83)."""
    X = torch.tensor([[0.0, 5.0], [1.0, 5.0], [2.0, 5.0], [10.0, 5.0], [11.0, 5.0]])
    assert torch.equal(robustagg.krum(X, 1), X[1])
    perm = [3, 2, 4, 1, 0]
    assert torch.equal(robustagg.krum(X[perm], 1), X[1])
    # f = 0 (3 neighbours): row 2
    assert torch.equal(robustagg.krum(X, 0), X[2])


def test_krum_ties_to_lower_index():
    """f = 0, q = 2 neighbours: points 5, 0, 1, 6 score 1 + 16 = 17, 1 + 25, 1 + 16 = 17, 1 + 25:
    rows 0 and 2 tie and the lower index wins whatever its value."""
    X = torch.tensor([[5.0], [0.0], [1.0], [6.0]])
    assert robustagg.krum(X, 0).item() == 5.0
    assert robustagg.krum(X[[2, 1, 0, 3]], 0).item() == 1.0
    # all rows equal in value: the first one
    Z = torch.tensor([[-0.0, 1.0]] * 3 + [[0.0, 1.0]] * 2)
    assert is_a_row(robustagg.krum(Z[[3, 0, 1, 2, 4]], 1), Z[3:4])


def test_krum_keeps_signed_zeros():
    """m = 1 returns the winning row with its bits, -0.0 included."""
    Z = torch.tensor([[-0.0, 1.0, -0.0]] * 3 + [[0.0, 1.0, 0.0]] * 2)
    assert_same_bits(robustagg.krum(Z, 1), Z[0], "krum keeps -0.0")


def test_multi_krum_averages_the_m_best():
    """Points 0, 1, 2, 10, 11, f = 1: scores 5, 2, 5, 65, 82 rank rows 1, 0, 2 (tie to the lower index), 3, 4."""
    X = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]], dtype=torch.float64)
    for m, expected in ((2, 0.5), (3, 1.0), (4, 13 / 4), (None, 13 / 4), (5, 24 / 5)):  # None: m = n - f = 4
        assert robustagg.multi_krum(X, 1, m).item() == pytest.approx(expected, rel=1e-15, abs=0), m
    assert robustagg.krum(X, 1, 2).item() == 0.5


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_krum_never_selects_a_non_finite_row(value):
    g = torch.Generator().manual_seed(5)
    X = torch.randn(9, 50, generator=g, dtype=torch.float64) * 0.01
    X[3] = X[0]  # a second copy of row 0 that is not finite anywhere else
    X[3, 17] = value
    X[6] = value
    out = robustagg.krum(X, 2)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, X[3])
    for m in (1, 3, 7):
        check_krum(X, 2, m, robustagg.multi_krum(X, 2, m), f"m={m}")
    # m = n: the mean of the 7 finite rows only
    expected = X[[0, 1, 2, 4, 5, 7, 8]].mean(0)
    assert_sum_close(robustagg.multi_krum(X, 2, 9), expected, X, "m = n")


def test_krum_fewer_finite_rows_than_m():
    X = torch.full((7, 3), math.nan)
    X[4] = torch.tensor([1.0, 2.0, 3.0])
    X[6] = torch.tensor([3.0, 2.0, -1.0])
    X[1, 0] = math.inf
    assert torch.equal(robustagg.krum(X, 1, 5), torch.tensor([2.0, 2.0, 1.0]))
    assert torch.equal(robustagg.krum(X, 2), X[4])
    # no finite row: all NaN
    out = robustagg.krum(torch.full((5, 4), math.inf), 1)
    assert out.shape == (4,) and torch.isnan(out).all()
    out = robustagg.multi_krum(torch.full((5, 4), math.nan, dtype=torch.float16), 1)
    assert out.dtype == torch.float16 and torch.isnan(out).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_krum_returns_the_row_bits(dtype):
    X = make_rows(RowsSpec(11, 333, 7, "gaussian", layout="transposed"), dtype)
    out = robustagg.krum(X, 3)
    assert is_a_row(out, X)
    assert_same_bits(out, reference.krum(X, 3), "krum")
    assert out.is_contiguous() and out.data_ptr() != X.data_ptr()


# ---------------------------------------------------------------------------
# Bulyan


def test_bulyan_hand_built():
    """n = 7, f = 1: theta = 5 rows selected, beta = 3 values averaged per coordinate.

    rows: 0 (0,0)  1 (1,0)  2 (0,1)  3 (9,9)  4 (1,1)  5 (-9,0)  6 (2,1)
    step 1, k=7, 4 neighbours: scores 0:1+1+2+5=9  1:1+1+2+2=6  2:1+1+2+4=8
      3:113+128+145+145  4:1+1+1+2=5  5:81+82+100+101  6:1+2+4+5=12 -> row 4
    step 2, k=6, 3 neighbours: 0:1+1+5=7  1:1+2+2=5  2:1+2+4=7  6:2+4+5=11 (3, 5 far) -> row 1
    step 3, k=5, 2 neighbours: 0:1+5=6  2:1+4=5  6:4+5=9 -> row 2
    step 4, k=4, 1 neighbour: 0:5  3:113  5:81  6:5 -> tie, lower index: row 0
    step 5, k=3, max(3-1-2, 0) = 0 neighbours: every score 0 -> lowest index: row 3
    selected values per coordinate: {1, 1, 0, 0, 9}, median 1, the 3 closest 1, 1, 0 -> 2/3.
    (Choosing row 6 at step 5 would give 1 in the second coordinate.)"""
    X = torch.tensor([[0, 0], [1, 0], [0, 1], [9, 9], [1, 1], [-9, 0], [2, 1]], dtype=torch.float64)
    torch.testing.assert_close(
        robustagg.bulyan(X, 1), torch.tensor([2 / 3, 2 / 3], dtype=torch.float64), rtol=1e-15, atol=0
    )


def test_bulyan_coordinate_step():
    """Rows 0-4 are close, row 5 is far, row 6 is NaN: the selection is rows 0-4.
    Per coordinate: {0,1,2,4,10}: median 2, keeps 2, 1 and, of 0 and 4 (both at
    distance 2), the smaller -> 1;  {3,3,3,-5,7} -> 3;  {5,-5,1,2,3}: median 2 -> 2, 1, 3 -> 2."""
    X = torch.tensor(
        [[0, 3, 5], [1, 3, -5], [2, 3, 1], [4, -5, 2], [10, 7, 3], [1000, 0, 0], [math.nan, 0, 0]], dtype=torch.float64
    )
    for dtype in DTYPES:
        out = robustagg.bulyan(X.to(dtype), 1)
        assert_vec_close(out, torch.tensor([1.0, 3.0, 2.0], dtype=dtype), 0.0, 0.0, f"bulyan {dtype}")
    # f = 0: theta = beta = n, every row is selected and averaged
    Y = X[:5]
    assert_sum_close(robustagg.bulyan(Y, 0), Y.mean(0), Y, "bulyan f=0")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_bulyan_every_f(dtype):
    for n in range(3, 20, 2 if dtype == torch.bfloat16 else 1):
        for pattern in ("gaussian", "ties"):
            spec = RowsSpec(
                n, 31, seed=n, pattern=pattern, dups=n // 5, nan_rows=n // 7, neginf_rows=n // 9, partial_rows=n // 6
            )
            X = make_rows(spec, dtype)
            for f in range((n - 3) // 4 + 1):
                out = robustagg.bulyan(X, f)
                if not bulyan_ambiguous(X, f):
                    assert_sum_close(out, reference.bulyan(X, f), X, f"bulyan f={f} {spec!r}")


@st.composite
def bulyan_cases(draw):
    spec = draw(rows_specs(min_n=3, max_n=19, max_d=400))
    return spec, draw(st.integers(0, (spec.n - 3) // 4))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=25, **SETTINGS)
@given(case=bulyan_cases())
def test_bulyan_matches_reference(dtype, case):
    spec, f = case
    X = make_rows(spec, dtype)
    out = robustagg.bulyan(X, f)
    if bulyan_ambiguous(X, f):
        _note("near tie in a selection step")
        assert out.shape == (spec.d,) and out.dtype == dtype
        return
    assert_sum_close(out, reference.bulyan(X, f), X, f"bulyan f={f} {spec!r}")


# ---------------------------------------------------------------------------
# Geometric median


def weiszfeld_gradient(X: torch.Tensor, z: torch.Tensor, a: torch.Tensor) -> float:
    """|| sum_i a_i (x_i - z) / ||x_i - z|| || / sum_i a_i: 0 at the geometric median."""
    Dv = X.to(torch.float64) - z.to(torch.float64)
    r = Dv.norm(dim=1)
    return float(((a / r)[:, None] * Dv).sum(0).norm() / a.sum())


def skewed(n: int, d: int, seed: int) -> torch.Tensor:
    """A cloud plus n // 3 rows pushed far out along random directions."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    k = n // 3
    X[:k] += torch.linspace(3, 10, k, dtype=torch.float64)[:, None] * torch.randn(d, generator=g, dtype=torch.float64)
    return X


@pytest.mark.parametrize("tol", [1e-10, 1e-12])
@pytest.mark.parametrize("n,d,seed", [(6, 214, 0), (7, 22, 1), (10, 391, 2), (14, 472, 3)])
def test_geometric_median_optimality(n, d, seed, tol):
    X = skewed(n, d, seed)
    a = torch.ones(n, dtype=torch.float64)
    z, info = robustagg.geometric_median(X, tol=tol, return_info=True)
    assert info.converged and 0 < info.iterations < 200
    assert weiszfeld_gradient(X, z, a) <= 1e-4
    # the check tells wrong rules apart: on this data they are far from optimal
    assert weiszfeld_gradient(X, X.mean(0), a) > 0.1
    assert weiszfeld_gradient(X, robustagg.coordinate_median(X), a) > 0.1
    # weighted
    w = torch.linspace(0.5, 3.0, n, dtype=torch.float64)
    zw = robustagg.geometric_median(X, w, tol=tol)
    assert weiszfeld_gradient(X, zw, w) <= 1e-4
    assert weiszfeld_gradient(X, z, w) > 1e-3


def test_geometric_median_known_values():
    # convex quadrilateral: the median is where the diagonals cross, (2, 2)
    X = torch.tensor([[0.0, 0.0], [6.0, 0.0], [4.0, 4.0], [0.0, 3.0]], dtype=torch.float64)
    F_star = 2 * math.sqrt(8) + math.sqrt(20) + math.sqrt(5)
    z, info = robustagg.geometric_median(X, return_info=True)
    assert (z - 2).abs().max() <= 1e-4
    assert abs(info.objective - F_star) <= 1e-9 * F_star
    z = robustagg.geometric_median(X, tol=0.0, max_iter=200)
    assert (z - 2).abs().max() <= 1e-6
    # collinear: the middle point
    z = robustagg.geometric_median(torch.tensor([[0.0], [1.0], [10.0]], dtype=torch.float64))
    assert abs(z.item() - 1.0) <= 1e-5
    # all rows equal: that row, objective 0, converged after one update
    E = torch.tensor([[1.5, -2.0]] * 4)
    z, info = robustagg.geometric_median(E, return_info=True)
    assert torch.equal(z, E[0]) and info.objective == 0.0 and info.converged and info.iterations == 1


EXACTLY = -1.0  # a negative tol never stops the reference: exactly max_iter updates


def gm_distance_error(X, w, z) -> float:
    """Rounding bound for F(z) = sum_i a_i ||x_i - z||. Computed from squared
    distances of magnitude up to D_max, each distance carries an error of about
    min(sqrt(eps D_max), eps D_max / r_i), which matters where z is (nearly) at a
    row (e.g. at the median of a single column); computed in X space, z itself
    is rounded to eps ||z||, which matters for clustered rows."""
    eps = torch.finfo(torch.float64).eps
    a = torch.ones(X.shape[0], dtype=torch.float64) if w is None else w.to(torch.float64)
    used = [i for i, ok in enumerate(finite_rows(X)) if ok and a[i] > 0]
    X64 = X.to(torch.float64)[used]
    D_max = float(max(((X64 - x) ** 2).sum(1).max() for x in X64))
    err = 8 * eps * D_max
    r = (X64 - z.to(torch.float64)).norm(dim=1)
    near_rows = float((a[used] * torch.minimum(torch.full_like(r, math.sqrt(err)), err / r)).sum())
    return near_rows + 4 * eps * float(a[used].sum()) * float(X64.norm(dim=1).max())


def gm_borderline(X, w, nu, tol, lo, hi):
    """Whether the stopping test of every update lo+1..hi is within rounding of
    tol (relative change of F); then stopping anywhere in lo..hi is legitimate."""
    F = []
    z = reference.geometric_median(X.to(torch.float64), w, nu, EXACTLY, hi, trace=F)[0]
    e = 2 * gm_distance_error(X, w, z)
    return all(
        F[j - 1] > 0 and abs(abs(F[j - 1] - F[j]) / F[j - 1] - tol) <= 1e-2 * tol + 1e-13 + e / F[j - 1]
        for j in range(lo + 1, hi + 1)
    )


def check_geometric_median(X, w=None, nu=1e-6, tol=1e-10, max_iter=200, what="", device="cpu"):
    z, info = robustagg.geometric_median(
        X.to(device), None if w is None else w.to(device), nu=nu, tol=tol, max_iter=max_iter, return_info=True
    )
    assert z.device.type == device
    z = z.cpu()
    assert isinstance(info.iterations, int) and isinstance(info.objective, float)
    assert isinstance(info.converged, bool)
    assert z.shape == (X.shape[1],) and z.dtype == X.dtype
    k = info.iterations
    assert 0 <= k <= max_iter
    a = torch.ones(X.shape[0]) if w is None else w.to(torch.float64)
    used = [i for i, ok in enumerate(finite_rows(X)) if ok and a[i] > 0]
    scale = finite_scale(X[used])
    X64 = X.to(torch.float64)
    if all(torch.equal(X64[i], X64[used[0]]) for i in used):
        # F = 0 everywhere it is evaluated exactly, but rounding of the
        # iterate makes the stopping test (0 <= tol * 0) ill-posed: z is that row.
        assert_vec_close(z, X[used[0]], scale, 1e-15, f"geometric_median of equal rows {what}")
        assert info.objective <= 1e-12 * scale * float(a.sum())
        return z, info
    _, it_ref, _ = reference.geometric_median(X, w, nu, tol, max_iter)
    if k != it_ref:
        assert gm_borderline(X, w, nu, tol, min(k, it_ref), max(k, it_ref)), (what, k, it_ref)
    # the iterate after the same number of updates
    z_ref, _, F_ref = reference.geometric_median(X, w, nu, EXACTLY, k)
    assert_vec_close(z, z_ref, scale, 1e-7, f"geometric_median {what}")
    # F from distances: 1e-9 relative plus the rounding near rows, or 1e-6 (the
    # clustered-distance accuracy) when the rows sit within 1% of their norm of each other
    max_norm = max(float(X64[i].norm()) for i in used)
    rel = 1e-6 if F_ref < 1e-2 * float(a[used].sum()) * max_norm else 1e-9
    z64 = reference.geometric_median(X64, w, nu, EXACTLY, k)[0]
    tol_F = rel * F_ref + 2 * gm_distance_error(X, w, z64)
    assert abs(info.objective - F_ref) <= tol_F, (what, info.objective, F_ref, tol_F)
    # converged: the stopping test passed (at k < max_iter, or exactly at max_iter)
    stopped = reference.geometric_median(X, w, nu, tol, max_iter + 1)[1] <= max_iter
    if k == it_ref and not (k > 0 and gm_borderline(X, w, nu, tol, k - 1, k)):
        assert info.converged == stopped, (what, info.converged, stopped)
    return z, info


@st.composite
def gm_cases(draw):
    spec = draw(rows_specs(min_n=1, max_n=12, max_d=2000))
    weighted = draw(st.booleans())
    w = None
    if weighted:
        g = torch.Generator().manual_seed(spec.seed + 1)
        w = torch.rand(spec.n, generator=g, dtype=torch.float64) * 3
        w[torch.randperm(spec.n, generator=g)[: spec.n // 3]] = 0
        if w.sum() == 0:
            w[0] = 1.0
    nu = draw(st.sampled_from([1e-6, 1e-3, 1.0]))
    tol = draw(st.sampled_from([1e-10, 1e-6, 0.0]))
    max_iter = draw(st.sampled_from([0, 1, 3, 50, 200]))
    return spec, w, nu, tol, max_iter


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=30, **SETTINGS)
@given(case=gm_cases())
def test_geometric_median_matches_reference(dtype, case):
    spec, w, nu, tol, max_iter = case
    X = make_rows(spec, dtype)
    fin = finite_rows(X)
    a = torch.ones(spec.n) if w is None else w
    if not any(ok and a[i] > 0 for i, ok in enumerate(fin)):
        return  # no finite row with weight: see test_geometric_median_no_finite_row
    check_geometric_median(X, w, nu, tol, max_iter, repr(spec))


@pytest.mark.parametrize("tol", [1e-4, 1e-6, 1e-8, 1e-10, 1e-12])
def test_geometric_median_stopping_rule(tol):
    """The number of updates is the reference's: the stop is at the first update
    whose relative change of F is <= tol, not one earlier or later."""
    for seed in range(6):
        X = skewed(5 + seed, 20 + 30 * seed, 100 + seed)
        w = None if seed % 2 else torch.linspace(0.5, 2.0, 5 + seed, dtype=torch.float64)
        z, info = check_geometric_median(X, w, tol=tol, what=f"seed={seed}")
        _, it_ref, _ = reference.geometric_median(X, w, 1e-6, tol, 200)
        if not gm_borderline(X, w, 1e-6, tol, it_ref - 1, it_ref):
            assert info.iterations == it_ref and info.converged


def test_geometric_median_max_iter_zero():
    X = skewed(9, 100, 4)
    X[2] = math.nan
    w = torch.tensor([1.0, 2.0, 5.0, 0.0, 1.0, 1.0, 3.0, 1.0, 0.5])
    z, info = robustagg.geometric_median(X, w, max_iter=0, return_info=True)
    keep = [0, 1, 3, 4, 5, 6, 7, 8]
    expected = (w[keep, None].double() * X[keep]).sum(0) / w[keep].sum()
    assert_sum_close(z, expected, X[keep], "weighted mean of the finite rows")
    assert info.iterations == 0 and not info.converged
    F0 = sum(float(w[i]) * float((X[i] - z).norm()) for i in keep)
    assert abs(info.objective - F0) <= 1e-12 * F0
    assert_sum_close(robustagg.geometric_median(X, max_iter=0), X[keep].mean(0), X[keep], "unweighted")


def test_geometric_median_max_iter_reached():
    X = skewed(8, 50, 5)
    z, info = robustagg.geometric_median(X, tol=0.0, max_iter=7, return_info=True)
    assert info.iterations == 7 and not info.converged
    z_ref, _, F_ref = reference.geometric_median(X, None, 1e-6, 0.0, 7)
    assert_vec_close(z, z_ref, finite_scale(X), 1e-10, "7 updates")
    z1, info1 = robustagg.geometric_median(X, max_iter=1, return_info=True)
    assert info1.iterations == 1 and not info1.converged


def test_geometric_median_weights():
    X = skewed(6, 40, 6)
    # integer weights act as repeated rows
    w = torch.tensor([2.0, 1.0, 3.0, 1.0, 1.0, 0.0])
    rep = X[[0, 0, 1, 2, 2, 2, 3, 4]]
    z = robustagg.geometric_median(X, w, tol=1e-14)
    z_rep = robustagg.geometric_median(rep, tol=1e-14)
    assert_vec_close(z, z_rep, finite_scale(X), 1e-7, "weights 2, 1, 3, 1, 1, 0 vs repeated rows")
    # weights of any scale, any float dtype
    for ws in (w * 0.125, w.to(torch.float32), w.to(torch.float16)):
        assert_vec_close(robustagg.geometric_median(X, ws, tol=1e-14), z, finite_scale(X), 1e-9, "scaled weights")
    check_geometric_median(X, w)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_geometric_median_ignores_non_finite_rows(value):
    X = skewed(9, 60, 7)
    Y = X.clone()
    Y[4] = value
    Y[7, 3] = value
    keep = [0, 1, 2, 3, 5, 6, 8]
    for w in (None, torch.arange(1.0, 10.0)):
        z, info = robustagg.geometric_median(Y, w, return_info=True)
        z_keep, info_keep = robustagg.geometric_median(X[keep], None if w is None else w[keep], return_info=True)
        assert torch.isfinite(z).all()
        assert_vec_close(z, z_keep, finite_scale(X), 1e-9, "non-finite rows dropped")
        assert info.iterations == info_keep.iterations
        assert abs(info.objective - info_keep.objective) <= 1e-12 * info_keep.objective
        check_geometric_median(Y, w)


def test_geometric_median_no_finite_row():
    out = robustagg.geometric_median(torch.full((4, 3), math.nan))
    assert out.shape == (3,) and torch.isnan(out).all()


def test_geometric_median_info_matches_plain_call():
    X = skewed(10, 300, 8).float()
    z, info = robustagg.geometric_median(X, return_info=True)
    assert_same_bits(z, robustagg.geometric_median(X), "return_info does not change z")
    assert isinstance(robustagg.geometric_median(X, return_info=False), torch.Tensor)


# ---------------------------------------------------------------------------
# Centered clipping


@st.composite
def cc_cases(draw):
    spec = draw(rows_specs(min_n=1, max_n=12, max_d=2000))
    tau = draw(st.sampled_from([1e-3, 0.1, 1.0, 10.0, math.inf]))
    iters = draw(st.integers(0, 5))
    center = draw(st.sampled_from(["zeros", "random", "row"]))
    return spec, tau, iters, center


def make_center(X: torch.Tensor, kind: str, seed: int) -> torch.Tensor:
    d = X.shape[1]
    if kind == "zeros":
        return torch.zeros(d, dtype=X.dtype)
    if kind == "row":
        for i, ok in enumerate(finite_rows(X)):
            if ok:
                return X[i].clone()
    return torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(X.dtype)


def check_centered_clip(X, center, tau, iters, what=""):
    out = robustagg.centered_clip(X, center, tau, iters)
    expected = reference.centered_clip(X, center, tau, iters)
    assert_vec_close(out, expected, finite_scale(X, center), 1e-9, f"centered_clip tau={tau} iters={iters} {what}")
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=30, **SETTINGS)
@given(case=cc_cases())
def test_centered_clip_matches_reference(dtype, case):
    spec, tau, iters, kind = case
    X = make_rows(spec, dtype)
    scale = max(finite_scale(X), 1e-3) * math.sqrt(max(spec.d, 1))
    center = make_center(X, kind, spec.seed)
    before = (X.clone(), center.clone())
    check_centered_clip(X, center, tau * scale, iters, repr(spec))
    assert_same_bits(X.reshape(-1), before[0].reshape(-1), "X modified")
    assert_same_bits(center, before[1], "center modified")


def test_centered_clip_hand_built():
    X = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    # row 0 is clipped to (0.6, 0.8); row 1 sits at the center and adds 0
    assert torch.allclose(
        robustagg.centered_clip(X, torch.zeros(2, dtype=torch.float64), 1.0),
        torch.tensor([0.3, 0.4], dtype=torch.float64),
        rtol=1e-15,
        atol=0,
    )
    # second iteration from v = (0.3, 0.4): row 0 at distance 4.5, row 1 at 0.5 (kept whole)
    v = torch.tensor([0.3, 0.4], dtype=torch.float64)
    v2 = v + ((X[0] - v) / 4.5 + (X[1] - v)) / 2
    torch.testing.assert_close(
        robustagg.centered_clip(X, torch.zeros(2, dtype=torch.float64), 1.0, 2), v2, rtol=1e-14, atol=1e-15
    )
    # tau = inf: one step is the mean, from any center
    Y = skewed(7, 30, 9)
    c = torch.randn(30, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    assert_sum_close(robustagg.centered_clip(Y, c, math.inf), Y.mean(0), Y, "tau=inf")


@pytest.mark.parametrize("iters", [1, 3, 10])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_centered_clip_non_finite_rows_contribute_zero(value, iters):
    X = skewed(8, 40, 10)
    c = X[1:4].mean(0)
    Y = X.clone()
    Y[5] = value
    Y[2, 7] = value
    out = check_centered_clip(Y, c, 2.0, iters)
    assert torch.isfinite(out).all()
    if iters == 1:
        # the remaining 6 rows' step, divided by 8 instead of 6
        keep = [0, 1, 3, 4, 6, 7]
        step = robustagg.centered_clip(X[keep], c, 2.0) - c
        assert_vec_close(out, c + step * 6 / 8, finite_scale(X), 1e-12, "non-finite rows count in n")


def test_centered_clip_iters_zero_and_center_dtype():
    g = torch.Generator().manual_seed(12)
    X = torch.randn(5, 8, generator=g)
    c = torch.randn(8, generator=g, dtype=torch.float64)
    out = robustagg.centered_clip(X, c, 1.0, 0)
    assert out.dtype == torch.float32 and torch.equal(out, c.float())
    out = robustagg.centered_clip(X, c, 0.5, 3)
    assert out.dtype == torch.float32
    # a float64 center may be rounded to X's dtype first: eps(float32) of the data's scale
    eps32 = torch.finfo(torch.float32).eps
    assert_vec_close(out, reference.centered_clip(X, c, 0.5, 3), finite_scale(X, c), eps32, "float64 center")


def test_centered_clip_many_iterations_converge():
    """Many iterations approach a fixed point v = v + mean((x_i - v) min(1, tau/||x_i - v||))."""
    X = skewed(9, 25, 11)
    v = robustagg.centered_clip(X, torch.zeros(25, dtype=torch.float64), 1.0, 300)
    step = reference.centered_clip(X, v, 1.0, 1) - v
    assert step.norm() <= 1e-8 * X.norm(dim=1).max()
    check_centered_clip(X, torch.zeros(25, dtype=torch.float64), 1.0, 40)


# ---------------------------------------------------------------------------
# Every rule: views give the bits of a contiguous copy; inputs are not modified


def _all_rules(X: torch.Tensor) -> dict[str, torch.Tensor]:
    n, d = X.shape
    center = torch.linspace(-1, 1, d).to(X.dtype)
    return {
        "pairwise_sq_distances": robustagg.pairwise_sq_distances(X),
        "krum": robustagg.krum(X, 2),
        "multi_krum": robustagg.multi_krum(X, 2),
        "bulyan": robustagg.bulyan(X, 1),
        "geometric_median": robustagg.geometric_median(X),
        "centered_clip": robustagg.centered_clip(X, center, 0.5, 3),
        "bucketing": robustagg.bucketing(X, 3, generator=torch.Generator().manual_seed(0)),
        "nnm": robustagg.nnm(X, 2),
        "clip": robustagg.clip(X, 1.0),
        "arc": robustagg.arc(X, 2),
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS[1:])
def test_views_and_inputs_untouched(layout, dtype):
    X = make_rows(RowsSpec(9, 70, 11, "gaussian", dups=1, nan_rows=1, partial_rows=1, layout=layout), dtype)
    assert not X.is_contiguous()
    before = X.clone()
    got = _all_rules(X)
    assert_same_bits(X.reshape(-1), before.reshape(-1), f"input modified ({layout})")
    want = _all_rules(X.contiguous())
    for name in got:
        assert got[name].device == X.device and got[name].is_contiguous(), name
        assert_same_bits(
            got[name].reshape(-1), want[name].reshape(-1), f"{name} on a {layout} view vs a contiguous copy"
        )


# ---------------------------------------------------------------------------
# Each device against the reference and the CPU: distance rules and pre-aggregators. The float64
# distance sums may be ordered differently on two devices, so results are compared within the
# reference tolerances, except Krum's m = 1 output, which is one of X's rows (compared by value).
# The sweeps run on CUDA only: on the CPU they would repeat the tests above at several times
# their cost.


def _on(device: str, fn, X: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    out = fn(X.to(device), *args, **kwargs)
    assert out.device.type == device
    return out.cpu()


def check_rules_on_device(device: str, X: torch.Tensor, f: int, what: str = "") -> None:
    """Every distance rule and pre-aggregator on device against the reference and the CPU."""
    from test_preaggregators import check_rows, nnm_ambiguous_rows  # that module imports this one

    n = X.shape[0]
    R = reference.pairwise_sq_distances(X)
    D = _on(device, robustagg.pairwise_sq_distances, X)
    assert_d_close(D, R, X, what=f"pairwise {what}")
    assert_d_close(D, robustagg.pairwise_sq_distances(X), X, what=f"pairwise vs CPU {what}")
    if n > 2 * f + 2:
        for m in (1, n - f):
            check_krum(X, f, m, _on(device, robustagg.krum, X, f, m), f"{device} {what}")
    if n >= 4 * f + 3 and not bulyan_ambiguous(X, f):
        out = _on(device, robustagg.bulyan, X, f)
        assert_vec_close(out, robustagg.bulyan(X, f), finite_scale(X), 1e-12, f"bulyan vs CPU {what}")
    if torch.isfinite(X).all(1).any():
        w = torch.linspace(0.5, 2.0, n, dtype=torch.float64)
        check_geometric_median(X, what=f"{device} {what}", device=device)
        check_geometric_median(X, w, tol=1e-6, max_iter=30, what=f"{device} weights {what}", device=device)
    c = torch.zeros(X.shape[1], dtype=X.dtype)
    out = robustagg.centered_clip(X.to(device), c.to(device), 1.0, 3)
    assert out.device.type == device
    assert_vec_close(out.cpu(), reference.centered_clip(X, c, 1.0, 3), finite_scale(X), 1e-9, f"centered_clip {what}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    out = _on(device, robustagg.bucketing, X, 3, generator=torch.Generator().manual_seed(n))
    check_rows(out, reference.bucketing(X, 3, perm), X, f"bucketing {what}")
    out = _on(device, robustagg.clip, X, 1.0)
    check_rows(out, reference.clip(X, 1.0), X, f"clip {what}")
    if n > 2 * f:
        out = _on(device, robustagg.arc, X, f)
        check_rows(out, reference.arc(X, f), X, f"arc {what}")
    g = min(f, n - 1)
    out, cpu = _on(device, robustagg.nnm, X, g), robustagg.nnm(X, g)
    for i in sorted(set(range(n)) - nnm_ambiguous_rows(X, g)):
        assert_vec_close(out[i], cpu[i], finite_scale(X), 1e-12, f"nnm row {i} vs CPU {what}")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 3, 7, 8, 11, 16, 33])
def test_cuda_all_rules(n, dtype):
    for pattern, layout in (("gaussian", "contiguous"), ("clustered", "transposed"), ("ties", "strided")):
        spec = RowsSpec(
            n,
            300,
            seed=n,
            pattern=pattern,
            dups=n // 4,
            nan_rows=n // 7,
            posinf_rows=n // 9,
            partial_rows=n // 5,
            layout=layout,
        )
        X = make_rows(spec, dtype)
        for f in sorted({0, 1, (n - 3) // 4 if n >= 3 else 0}):
            check_rules_on_device("cuda", X, f, what=repr(spec))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@settings(max_examples=25, **SETTINGS)
@given(spec=rows_specs(max_n=20, max_d=3000), f=st.integers(0, 4))
def test_cuda_all_rules_random(dtype, spec, f):
    check_rules_on_device("cuda", make_rows(spec, dtype), f, what=repr(spec))


@pytest.mark.cuda
def test_cuda_clustered_large_d():
    """d = 1e6 float32 rows within 1e-4 of a unit vector: CUDA distances to 1e-6 relative."""
    X = clustered(16, 1_000_000, torch.Generator().manual_seed(0)).float()
    R = reference.pairwise_sq_distances(X)
    D = robustagg.pairwise_sq_distances(X.cuda()).cpu()
    off = ~torch.eye(16, dtype=torch.bool)
    assert ((D - R).abs() / R)[off].max() <= 1e-6
    assert torch.equal(robustagg.krum(X.cuda(), 3).cpu(), reference.krum(X, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_devices_mix_rows_and_norms(device):
    g = torch.Generator().manual_seed(1)
    for dtype in DTYPES:
        X = torch.randn(9, 3001, generator=g).to(dtype)
        X[4] = math.nan
        c = torch.randn(3001, generator=g).to(dtype)
        C = torch.randn(5, 10, generator=g, dtype=torch.float64)
        C[:, 4] = 0.0
        out = robustagg.ops.mix_rows(C.to(device), X.to(device), c.to(device)).cpu()
        assert torch.isfinite(out).all()
        assert_vec_close(out, robustagg.ops.mix_rows(C, X, c), finite_scale(X, c) * 10, 1e-14, f"mix_rows {dtype}")
        N = robustagg.ops.row_sq_norms(X.to(device)).cpu()
        torch.testing.assert_close(N, robustagg.ops.row_sq_norms(X), rtol=1e-12, atol=0, equal_nan=True)
        ND = robustagg.ops.row_sq_norms_and_dots(X.to(device), c.to(device)).cpu()
        want = robustagg.ops.row_sq_norms_and_dots(X, c)
        torch.testing.assert_close(ND, want, rtol=1e-12, atol=1e-12 * float(N[0]), equal_nan=True)
        SD = robustagg.ops.row_sq_distances(X.to(device), c.to(device)).cpu()
        torch.testing.assert_close(SD, robustagg.ops.row_sq_distances(X, c), rtol=1e-12, atol=0, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
def test_devices_deterministic(device):
    X = make_rows(RowsSpec(33, 20_000, 3, "clustered", nan_rows=2), torch.float32).to(device)
    assert_same_bits(
        robustagg.pairwise_sq_distances(X), robustagg.pairwise_sq_distances(X), f"pairwise twice on {device}"
    )
    assert_same_bits(
        robustagg.geometric_median(X), robustagg.geometric_median(X), f"geometric_median twice on {device}"
    )
