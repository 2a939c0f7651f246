"""Similarity rules (robustagg.similarity): FLTrust, SignGuard, ClippedClustering, FoolsGold's weights.

Unit tests on small hand-computed inputs: argument errors, the documented choices (tie-breaks, the
column sample, empty selections), NaN/inf rows, output dtype and shape, inputs left as they were,
determinism and layouts. Comparisons against float64 references are elsewhere.
"""

from __future__ import annotations

import math

import pytest
import torch

from robustagg.similarity import clipped_clustering, fltrust, foolsgold_weights, signguard

from conftest import DEVICES, DTYPES, assert_identical, assert_same_bits

F64 = torch.float64


def t(rows, dtype=F64):
    return torch.tensor(rows, dtype=dtype)


def close(got, want, tol=1e-12):
    torch.testing.assert_close(got, want.to(got.dtype), rtol=tol, atol=tol, equal_nan=True)


def g(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------
# Argument errors


X3 = torch.randn(4, 3, generator=g(0))

COMMON_BAD = [
    ([[1.0, 2.0]], TypeError, "must be a torch.Tensor"),
    (torch.ones(3, 2, dtype=torch.int64), TypeError, "must be float32"),
    (torch.ones(3), ValueError, "must be 2-D"),
    (torch.ones(2, 3, 4), ValueError, "must be 2-D"),
    (torch.ones(0, 3), ValueError, "at least one row"),
]


@pytest.mark.parametrize("X, error, match", COMMON_BAD)
@pytest.mark.parametrize("name", ["fltrust", "signguard", "clipped_clustering", "foolsgold_weights"])
def test_bad_matrix(name, X, error, match):
    calls = {
        "fltrust": lambda: fltrust(X, torch.ones(3)),
        "signguard": lambda: signguard(X),
        "clipped_clustering": lambda: clipped_clustering(X),
        "foolsgold_weights": lambda: foolsgold_weights(X),
    }
    with pytest.raises(error, match=f"^{name}: .*{match}"):
        calls[name]()


def test_foolsgold_names_h():
    with pytest.raises(ValueError, match="^foolsgold_weights: H must be 2-D"):
        foolsgold_weights(torch.ones(3))


@pytest.mark.parametrize(
    "root, error, match",
    [
        ([1.0, 2.0, 3.0], TypeError, "root must be a torch.Tensor"),
        (torch.ones(2), ValueError, r"root must have shape \(d,\) = \(3,\)"),
        (torch.ones(1, 3), ValueError, "root must have shape"),
        (torch.ones(3, dtype=F64), ValueError, "root must have X's dtype"),
        (torch.ones(3, device="meta"), ValueError, "root is on meta but X is on cpu"),
        (torch.tensor([1.0, math.nan, 0.0]), ValueError, "root must be finite"),
        (torch.tensor([1.0, math.inf, 0.0]), ValueError, "root must be finite"),
    ],
)
def test_fltrust_bad_root(root, error, match):
    with pytest.raises(error, match=f"^fltrust: {match}"):
        fltrust(X3, root)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(lower=-0.1), ValueError, "lower must be finite and >= 0"),
        (dict(lower=math.nan), ValueError, "lower must be"),
        (dict(lower=True), TypeError, "lower must be a real number"),
        (dict(upper=math.inf), ValueError, "upper must be finite"),
        (dict(upper="3"), TypeError, "upper must be a real number"),
        (dict(lower=2.0, upper=1.0), ValueError, "lower must be <= upper"),
        (dict(fraction=0.0), ValueError, r"fraction must be in \(0, 1\]"),
        (dict(fraction=1.5), ValueError, "fraction must be"),
        (dict(fraction=math.nan), ValueError, "fraction must be"),
        (dict(generator=0), TypeError, "generator must be a torch.Generator"),
        (dict(max_iter=0), ValueError, "max_iter must be >= 1"),
        (dict(max_iter=1.0), TypeError, "max_iter must be an int"),
        (dict(max_iter=True), TypeError, "max_iter must be an int"),
    ],
)
def test_signguard_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=f"^signguard: {match}"):
        signguard(X3, **kwargs)


@pytest.mark.parametrize(
    "tau, error, match",
    [
        (-1.0, ValueError, "tau must be finite and >= 0"),
        (math.inf, ValueError, "tau must be"),
        (math.nan, ValueError, "tau must be"),
        ("1", TypeError, "tau must be a real number"),
        (torch.tensor(1.0), TypeError, "tau must be a real number"),
    ],
)
def test_clipped_clustering_bad_tau(tau, error, match):
    with pytest.raises(error, match=f"^clipped_clustering: {match}"):
        clipped_clustering(X3, tau)


@pytest.mark.parametrize(
    "kappa, error",
    [(0.0, ValueError), (-1.0, ValueError), (math.inf, ValueError), (math.nan, ValueError), (None, TypeError)],
)
def test_foolsgold_bad_kappa(kappa, error):
    with pytest.raises(error, match="^foolsgold_weights: kappa must be"):
        foolsgold_weights(X3, kappa)


def test_accepted_bounds():
    signguard(X3, lower=0.0, upper=0.0, fraction=1.0, max_iter=1)
    signguard(X3, lower=2, upper=2, fraction=1e-9, max_iter=2**62)
    clipped_clustering(X3, tau=0)
    foolsgold_weights(X3, kappa=1e-300)


# ---------------------------------------------------------------------------
# FLTrust


def test_fltrust_hand_example():
    # TS = (1, 1/sqrt 2); the rows rescaled to |root| = 1: (1, 0) and (1, 1)/sqrt 2.
    got = fltrust(t([[1.0, 0.0], [1.0, 1.0]]), t([1.0, 0.0]))
    s = 1 / math.sqrt(2)
    close(got, t([1.0 + s * s, s * s]) / (1.0 + s))


def test_fltrust_opposite_row_gets_weight_zero():
    root = t([1.0, 2.0, -1.0])
    other = t([0.5, 1.0, 1.0])
    X = torch.stack([2 * root, -3 * root, other])
    without = fltrust(X[[0, 2]], root)
    assert_same_bits(fltrust(X, root), without)
    ts = float(other @ root / (other.norm() * root.norm()))
    close(without, (root + ts * other * root.norm() / other.norm()) / (1 + ts))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_fltrust_positive_multiples_of_root_give_root(dtype):
    root = torch.randn(40, generator=g(1), dtype=dtype)
    X = root * torch.tensor([0.5, 3.0, 1e-3, 7.0], dtype=dtype).reshape(-1, 1)
    close(fltrust(X, root), root, tol=1e-6 if dtype == torch.float32 else 1e-12)


def test_fltrust_zero_cases():
    root = t([1.0, 1.0])
    X = t([[-1.0, -1.0], [0.0, 0.0], [1.0, -1.0]])  # opposite, zero, orthogonal: every TS is 0
    assert_same_bits(fltrust(X, root), torch.zeros(2, dtype=F64))
    assert_same_bits(fltrust(t([[1.0, 2.0]]), t([0.0, 0.0])), torch.zeros(2, dtype=F64))


def test_fltrust_non_finite_rows_take_no_part():
    root = t([1.0, 0.5])
    X = t([[1.0, 1.0], [math.nan, 1.0], [math.inf, 0.0], [2.0, 0.5]])
    assert_same_bits(fltrust(X, root), fltrust(X[[0, 3]], root))
    assert_same_bits(fltrust(X[[1, 2]], root), torch.zeros(2, dtype=F64))


def test_fltrust_huge_float64_rows():
    # Squared norms overflow float64; the rule works on a power-of-two scale.
    root = t([1.0, 2.0])
    X = t([[1e200, 2e200], [3e-200, 6e-200]])
    close(fltrust(X, root), root)


# ---------------------------------------------------------------------------
# SignGuard


def test_signguard_drops_row_ten_times_the_median_norm():
    # Norms sqrt2, sqrt5, sqrt5, 20 sqrt2: M = sqrt5 and the last row is above 3M; no row is clipped.
    X = t([[1.0, 1.0], [1.0, 2.0], [2.0, 1.0], [20.0, 20.0]])
    close(signguard(X, fraction=1.0), t([4.0, 4.0]) / 3)


def test_signguard_clips_to_the_median_norm():
    X = t([[3.0, 4.0], [6.0, 8.0], [0.3, 0.4]])  # norms 5, 10, 0.5: M = 5; all in [0.5, 15]
    close(signguard(X, fraction=1.0), t([3.0 + 3.0 + 0.3, 4.0 + 4.0 + 0.4]) / 3)


def test_signguard_keeps_the_larger_sign_cluster():
    honest = t([[1.0, 2.0, 3.0, 1.0], [2.0, 1.0, 1.0, 3.0], [3.0, 1.0, 2.0, 1.0]])
    honest = honest / honest.norm(dim=1, keepdim=True)  # equal norms: no clipping
    X = torch.cat([-honest[:2], honest])  # two sign-flipped rows
    close(signguard(X, fraction=1.0), honest.mean(0))


def test_signguard_empty_intersection_gives_zeros():
    # Larger sign cluster (the negative rows) lies entirely outside [0.1 M, 3 M], M = sqrt 2.
    X = t([[-0.01, -0.01], [-0.01, -0.01], [1.0, 1.0], [1.0, 1.0], [-10.0, -10.0]])
    assert_same_bits(signguard(X, fraction=1.0), torch.zeros(2, dtype=F64))


def test_signguard_equal_features_form_one_cluster():
    X = t([[1.0, 1.0], [2.0, 2.0], [1.5, 3.0], [2.0, 1.0]])
    norms = X.norm(dim=1)
    M = float(norms.sort().values[1:3].mean())
    want = (X * (M / norms).clamp(max=1.0).reshape(-1, 1)).mean(0)
    close(signguard(X, fraction=1.0), want)


def test_signguard_counts_zero_entries_as_their_own_sign():
    # Rows 0-2 have zeros where rows 3-4 are positive: two clusters by the "== 0" fraction. M = 1 clips none.
    X = t([[1.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.8, 0.0, 0.0], [1.0, 1.0, 1.0], [1.2, 1.2, 1.2]])
    close(signguard(X, fraction=1.0), X[:3].mean(0))


def test_signguard_ties_between_clusters_keep_the_lowest_index():
    X = t([[1.0, 1.0], [-1.0, -1.0]])
    assert_same_bits(signguard(X, fraction=1.0), X[0])
    assert_same_bits(signguard(X.flip(0), fraction=1.0), X[1])


def test_signguard_samples_the_documented_columns():
    n, d, fraction, seed = 7, 50, 0.2, 7
    k = math.ceil(fraction * d)
    J = torch.randperm(d, generator=g(seed))[:k]
    # Random signs, equal norms; on the sampled columns rows 0-3 are negative and rows 4-6 positive.
    X = torch.randint(0, 2, (n, d), generator=g(1)).to(F64) * 2 - 1
    X[:4, J] = -1.0
    X[4:, J] = 1.0
    want = X[:4].mean(0)
    close(signguard(X, fraction=fraction, generator=g(seed)), want)
    assert not torch.equal(signguard(X, fraction=fraction, generator=g(seed + 1)), want)


def test_signguard_draws_only_when_sampling():
    X = torch.randn(6, 10, generator=g(2), dtype=F64)
    gen = g(3)
    state = gen.get_state()
    signguard(X, fraction=1.0, generator=gen)
    assert torch.equal(gen.get_state(), state)
    signguard(X, fraction=0.5, generator=gen)
    assert not torch.equal(gen.get_state(), state)


def test_signguard_deterministic_with_seeded_generator():
    X = torch.randn(12, 300, generator=g(4))
    X[:4] *= -1.5
    a = signguard(X, fraction=0.05, generator=g(11))
    b = signguard(X, fraction=0.05, generator=g(11))
    assert_identical(a, b)


def test_signguard_non_finite_rows():
    X = t([[1.0, 1.0], [math.nan, 1.0], [2.0, 1.0], [-math.inf, 0.0]])
    assert_same_bits(signguard(X, fraction=1.0), signguard(X[[0, 2]], fraction=1.0))
    assert torch.isnan(signguard(X[[1, 3]], fraction=1.0)).all()


def test_signguard_max_iter_one_stops_after_the_first_assignment():
    from robustagg import reference

    # A matrix whose 2-means moves after its first assignment (the reference's trace shows a second
    # assignment that differs), so that stopping after one step keeps a different set of rows.
    for seed in range(200):
        X = torch.randn(9, 20, generator=g(seed), dtype=F64) + torch.linspace(-1.5, 1.5, 9, dtype=F64)[:, None]
        trace: dict = {}
        reference.signguard(X, fraction=1.0, trace=trace)
        if len(trace["steps"]) >= 2 and trace["steps"][0][1] != trace["steps"][1][1]:
            break
    else:
        raise AssertionError("no matrix in 200 seeds needs a second 2-means step")
    one = signguard(X, fraction=1.0, max_iter=1)
    torch.testing.assert_close(one, reference.signguard(X, fraction=1.0, max_iter=1), rtol=1e-14, atol=0)
    assert not torch.allclose(one, signguard(X, fraction=1.0), rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------
# ClippedClustering


def test_clipped_clustering_keeps_the_larger_cluster():
    a = t([[1.0, 0.1, 0.0], [1.0, -0.1, 0.05], [1.0, 0.0, -0.1], [1.0, 0.05, 0.1]])
    b = t([[0.0, 0.1, 1.0], [0.05, -0.1, 1.0]])
    a = a / a.norm(dim=1, keepdim=True)
    b = 5.0 * b / b.norm(dim=1, keepdim=True)
    X = torch.cat([b[:1], a[:2], b[1:], a[2:]])
    # Median norm (1, 1, 1, 1, 5, 5) is 1: the kept rows are not clipped.
    close(clipped_clustering(X), a.mean(0))


def test_clipped_clustering_clips_to_tau():
    X = t([[3.0, 4.0], [6.0, 8.0], [0.3, 0.4], [-3.0, -4.0]])
    # Cosine distances: rows 0-2 coincide (0), row 3 opposite (2): keep rows 0-2, each clipped to 2.
    close(clipped_clustering(X, tau=2.0), t([0.6 * 2 + 0.6 * 2 + 0.3, 0.8 * 2 + 0.8 * 2 + 0.4]) / 3)
    # Default tau: the median norm 5 (the mean of 5 and 5).
    close(clipped_clustering(X), t([3.0 + 3.0 + 0.3, 4.0 + 4.0 + 0.4]) / 3)
    close(clipped_clustering(X, tau=0.0), torch.zeros(2, dtype=F64))


def test_clipped_clustering_ties_keep_the_lowest_index():
    X = t([[3.0, 4.0], [0.0, 1.0]])
    assert_same_bits(clipped_clustering(X, tau=100.0), X[0])
    # Four rows, two clusters of two: the one holding row 0.
    X = t([[1.0, 0.0], [0.0, 1.0], [1.0, 0.01], [0.01, 1.0]])
    close(clipped_clustering(X, tau=100.0), X[[0, 2]].mean(0))


def test_clipped_clustering_single_and_non_finite_rows():
    X = t([[math.nan, 0.0], [3.0, 4.0], [math.inf, 1.0]])
    close(clipped_clustering(X, tau=1.0), t([0.6, 0.8]))
    close(clipped_clustering(X), t([3.0, 4.0]))
    assert torch.isnan(clipped_clustering(X[[0, 2]])).all()


def test_clipped_clustering_zero_rows_have_cosine_zero():
    # A zero row is at distance 1 from every row; two opposite rows are at distance 2.
    X = t([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])
    # Merge (0, 1) (distance 1, before (1, 2)); keep {0, 1}.
    close(clipped_clustering(X, tau=10.0), t([0.5, 0.0]))


# ---------------------------------------------------------------------------
# FoolsGold


def test_foolsgold_identical_histories_get_low_weight():
    H = t([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    w = foolsgold_weights(H)
    assert w.dtype == F64 and w.shape == (4,)
    # Sybils: alpha = 0; the others: alpha = 1 -> 0.99 -> ln 99 + 0.5 > 1 -> 1.
    assert_same_bits(w, t([1.0, 0.0, 0.0, 1.0]))


def test_foolsgold_single_client_weight_one():
    assert_same_bits(foolsgold_weights(t([[1.0, 2.0]])), t([1.0]))
    assert_same_bits(foolsgold_weights(t([[math.nan, 2.0], [1.0, 2.0], [0.0, math.inf]])), t([0.0, 1.0, 0.0]))
    assert_same_bits(foolsgold_weights(t([[math.nan, 2.0]])), t([0.0]))


def test_foolsgold_all_identical_gives_zeros():
    H = t([[1.0, 2.0], [2.0, 4.0], [0.5, 1.0]])
    assert_same_bits(foolsgold_weights(H), torch.zeros(3, dtype=F64))


def test_foolsgold_hand_example_with_pardoning():
    # cos01 = c, cos02 = cos12 = 0, cos23 = 0 (3 orthogonal to 0 and 1 and 2).
    c = 0.8
    H = t([[1.0, 0.0, 0.0, 0.0], [c, math.sqrt(1 - c * c), 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.6, 0.8]])
    # v = (c, c, 0.6, 0.6); pardoning rescales cs_20 and cs_21 (0) and cs_23 (v_2 = v_3: untouched).
    alpha = t([1 - c, 1 - c, 0.4, 0.4])
    alpha = alpha / 0.4
    alpha = torch.where(alpha == 1.0, 0.99, alpha)
    for kappa in (1.0, 0.25):
        want = (kappa * (torch.log(alpha / (1 - alpha)) + 0.5)).clamp(0, 1)
        close(foolsgold_weights(H, kappa), want)


def test_foolsgold_pardons_the_less_similar_client():
    # Client 2 is similar to client 0 (0.5), less than 0 and 1 are to each other (0.9):
    # cs_20 is pardoned to 0.5 * 0.5 / 0.9.
    H = t([[1.0, 0.0, 0.0], [0.9, math.sqrt(1 - 0.81), 0.0], [0.5, 0.0, math.sqrt(0.75)]])
    cos12 = 0.9 * 0.5
    v = [0.9, 0.9, 0.5]
    alpha = t([1 - 0.9, 1 - 0.9, 1 - max(0.5 * v[2] / v[0], cos12 * v[2] / v[1])])
    alpha = alpha / alpha.max()
    alpha = torch.where(alpha == 1.0, 0.99, alpha)
    close(foolsgold_weights(H), (torch.log(alpha / (1 - alpha)) + 0.5).clamp(0, 1))


def test_foolsgold_zero_history_is_dissimilar():
    H = t([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    assert_same_bits(foolsgold_weights(H), t([0.0, 0.0, 1.0]))


# ---------------------------------------------------------------------------
# Cosines of rows whose norms differ by many orders of magnitude


@pytest.mark.parametrize("dtype", DTYPES)
def test_cosines_of_widely_spread_norms(dtype):
    from robustagg.similarity import _angles

    spread = {torch.float16: 3, torch.bfloat16: 12}.get(dtype, 30)
    for seed in range(4):
        gen = g(seed)
        X = torch.randn(7, 40, generator=gen, dtype=F64)
        X *= 10.0 ** torch.randint(-spread, spread + 1, (7, 1), generator=gen).to(F64)
        X = X.to(dtype)
        center = X[0] - X[1] if dtype == F64 else None
        P = X.to(F64) if center is None else torch.cat([X, center[None]]).to(F64)
        unit = P / P.norm(dim=1, keepdim=True)
        close(_angles(X, center).cos, (unit @ unit.T).clamp(-1, 1), tol=1e-14)


def test_tiny_and_huge_float64_rows():
    root = t([1.0, 2.0, 2.0])
    for scale in (1e-200, 1e-300, 1e200):
        # Positive multiples of root, one of them tiny or huge: the result is root.
        X = torch.stack([root * scale, 2 * root, -root])
        close(fltrust(X, root), root)
    X = t([[1e-200, 0.0], [3e-200, 1e-210], [0.0, 1e-205]])
    assert_same_bits(clipped_clustering(X, tau=1.0), X[:2].mean(0))
    H = t([[1e-300, 0.0, 0.0], [0.0, 5e-300, 0.0], [0.0, 1e-200, 0.0]])
    assert_same_bits(foolsgold_weights(H), t([1.0, 0.0, 0.0]))
    # Squared norms underflow float64: the norms come from the rows (2**-700 scales exactly).
    X = t([[1.0, 1.0], [2.0, 1.0], [1.0, 3.0], [-1.0, -1.0], [40.0, 0.0]])
    tiny = X * 2.0**-700
    assert_same_bits(signguard(tiny, fraction=1.0, lower=0.5), signguard(X, fraction=1.0, lower=0.5) * 2.0**-700)


def test_fltrust_with_rows_of_very_different_norms():
    root = t([1.0, 0.0])
    X = t([[1e-9, 1e-9], [-1e9, 1e9], [3.0, 0.0]])  # TS = (1/sqrt 2, 0, 1)
    s = 1 / math.sqrt(2)
    close(fltrust(X, root), (s * t([s, s]) + t([1.0, 0.0])) / (1 + s))


# ---------------------------------------------------------------------------
# Every rule: dtype, shape, inputs, grad, layouts, d = 0


def run_all(X, root):
    return {
        "fltrust": fltrust(X, root),
        "signguard": signguard(X, fraction=0.3, generator=g(9)),
        "clipped_clustering": clipped_clustering(X),
        "clipped_clustering_tau": clipped_clustering(X, tau=0.7),
        "foolsgold_weights": foolsgold_weights(X),
    }


def sample(n=9, d=33, dtype=torch.float32, device="cpu"):
    X = torch.randn(n, d, generator=g(21), dtype=F64)
    X[:3] = -2.0 * X[:3] + 0.1
    X[4, 5] = math.nan
    root = X[3:].nan_to_num().mean(0)
    return X.to(dtype=dtype, device=device), root.to(dtype=dtype, device=device)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_and_shape(dtype):
    X, root = sample(dtype=dtype)
    for name, out in run_all(X, root).items():
        if name == "foolsgold_weights":
            assert out.dtype == F64 and out.shape == (X.shape[0],), name
        else:
            assert out.dtype == dtype and out.shape == (X.shape[1],), name
            assert torch.isfinite(out).all(), name


def test_inputs_not_modified():
    X, root = sample(dtype=F64)
    X0, r0 = X.clone(), root.clone()
    run_all(X, root)
    assert_identical(X, X0)
    assert_identical(root, r0)


def test_results_do_not_require_grad():
    X, root = sample(dtype=F64)
    X.requires_grad_()
    root.requires_grad_()
    for name, out in run_all(X, root).items():
        assert not out.requires_grad, name


def test_non_contiguous_input_gives_the_same_bits():
    X, root = sample(dtype=torch.float32)
    Xt = X.t().contiguous().t()
    assert not Xt.is_contiguous()
    want = run_all(X, root)
    for name, out in run_all(Xt, root[::1]).items():
        assert_same_bits(out, want[name], name)
    strided_root = torch.stack([root, root], 1)[:, 0]
    assert_same_bits(fltrust(X, strided_root), want["fltrust"])


def test_repeated_calls_give_the_same_bits():
    X, root = sample()
    a, b = run_all(X, root), run_all(X, root)
    for name in a:
        assert_identical(a[name], b[name], name)


def test_zero_columns():
    X = torch.empty(4, 0)
    for out in (fltrust(X, torch.empty(0)), signguard(X), clipped_clustering(X)):
        assert out.shape == (0,) and out.dtype == torch.float32
    # Zero histories have cosine 0 with every other: alpha = 1 each, then 0.99 and weight 1.
    assert_same_bits(foolsgold_weights(X), torch.ones(4, dtype=F64))


@pytest.mark.parametrize("device", DEVICES)
def test_devices_agree(device):
    X, root = sample(device=device)
    Xc, rc = X.cpu(), root.cpu()
    want = run_all(Xc, rc)
    for name, out in run_all(X, root).items():
        assert out.device == X.device, name
        assert_same_bits(out, want[name], name)
