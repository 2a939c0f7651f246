"""Aggregator objects: the three input forms, agreement with the functional ops
on the stacked matrix, shapes, errors and repr."""

from __future__ import annotations

import pytest
import torch

import robustagg

from conftest import MatrixSpec, assert_same_bits, make_matrix


def _aggregators():
    w = torch.tensor([1.0, 2.0, 0.0, 0.5, 3.0, 1.0, 1.0])
    return [
        (robustagg.Mean(), lambda X: robustagg.mean(X)),
        (robustagg.Mean(weights=w), lambda X: robustagg.mean(X, w)),
        (robustagg.CoordinateMedian(), robustagg.coordinate_median),
        (robustagg.TrimmedMean(2), lambda X: robustagg.trimmed_mean(X, 2)),
        (robustagg.MeaMed(3), lambda X: robustagg.meamed(X, 3)),
        (robustagg.TrimmedMean(0), lambda X: robustagg.trimmed_mean(X, 0)),
        (robustagg.Krum(2), lambda X: robustagg.krum(X, 2)),
        (robustagg.Krum(1, m=3), lambda X: robustagg.krum(X, 1, 3)),
        (robustagg.MultiKrum(1), lambda X: robustagg.multi_krum(X, 1)),
        (robustagg.Bulyan(1), lambda X: robustagg.bulyan(X, 1)),
        (robustagg.GeometricMedian(), robustagg.geometric_median),
        (
            robustagg.GeometricMedian(weights=w, nu=1e-3, tol=1e-8, max_iter=20),
            lambda X: robustagg.geometric_median(X, w, nu=1e-3, tol=1e-8, max_iter=20),
        ),
        (robustagg.NNM(2) >> robustagg.Krum(2), lambda X: robustagg.krum(robustagg.nnm(X, 2), 2)),
        (robustagg.Clip(1.0) >> robustagg.Mean(), lambda X: robustagg.mean(robustagg.clip(X, 1.0))),
        (robustagg.ARC(2) >> robustagg.TrimmedMean(2), lambda X: robustagg.trimmed_mean(robustagg.arc(X, 2), 2)),
        (robustagg.MDA(2), lambda X: robustagg.mda(X, 2)),
        (robustagg.MoNNA(2, pivot=1), lambda X: robustagg.monna(X, 2, 1)),
        (robustagg.SMEA(2), lambda X: robustagg.smea(X, 2)),
        (robustagg.CAF(2), lambda X: robustagg.caf(X, 2)),
        # every column (no draw), so the object and the function see the same columns
        (robustagg.DnC(2, subsample=10**6), lambda X: robustagg.dnc(X, 2, subsample=10**6)),
        (robustagg.SignGuard(fraction=1.0), lambda X: robustagg.signguard(X, fraction=1.0)),
        (robustagg.ClippedClustering(tau=1.0), lambda X: robustagg.clipped_clustering(X, 1.0)),
    ]


AGGS = _aggregators()
IDS = [
    "Mean",
    "Mean-weights",
    "CoordinateMedian",
    "TrimmedMean2",
    "MeaMed3",
    "TrimmedMean0",
    "Krum2",
    "Krum1-m3",
    "MultiKrum1",
    "Bulyan1",
    "GeometricMedian",
    "GeometricMedian-weights",
    "NNM-Krum",
    "Clip-Mean",
    "ARC-TrimmedMean",
    "MDA2",
    "MoNNA2-pivot1",
    "SMEA2",
    "CAF2",
    "DnC2",
    "SignGuard",
    "ClippedClustering-tau1",
]
N = 7


def _worker_params(seed, dtype=torch.float32):
    """N workers, each with a parameter list of three tensors of different shapes."""
    shapes = [(3, 4), (5,), (2, 1, 3)]
    total = sum(torch.Size(s).numel() for s in shapes)
    X = make_matrix(MatrixSpec(N, total, seed=seed, pattern="mixed", nan_rows=1, scatter=0.05), dtype)
    params = []
    for i in range(N):
        parts = torch.split(X[i], [torch.Size(s).numel() for s in shapes])
        params.append([p.reshape(s).clone() for p, s in zip(parts, shapes)])
    return X, params, shapes


@pytest.mark.parametrize("agg,fn", AGGS, ids=IDS)
def test_matrix_form(agg, fn):
    X = make_matrix(MatrixSpec(N, 50, seed=1, pattern="mixed", nan_rows=1), torch.float32)
    out = agg(X)
    assert out.shape == (50,)
    assert_same_bits(out, fn(X), repr(agg))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("agg,fn", AGGS, ids=IDS)
def test_list_of_tensors_form(agg, fn, dtype):
    X = make_matrix(MatrixSpec(N, 60, seed=2, pattern="gaussian", posinf_rows=1), dtype)
    grads = [X[i].reshape(3, 4, 5).clone() for i in range(N)]
    out = agg(grads)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (3, 4, 5) and out.dtype == dtype
    assert_same_bits(out.reshape(-1), fn(X), repr(agg))


@pytest.mark.parametrize("agg,fn", AGGS, ids=IDS)
def test_list_of_parameter_lists_form(agg, fn):
    X, params, shapes = _worker_params(seed=3)
    out = agg(params)
    assert isinstance(out, list) and len(out) == len(shapes)
    for t, s in zip(out, shapes):
        assert isinstance(t, torch.Tensor) and t.shape == s and t.dtype == torch.float32
    assert_same_bits(torch.cat([t.reshape(-1) for t in out]), fn(X), repr(agg))


def test_non_contiguous_worker_tensors():
    base = torch.randn(N, 6, 8)
    grads = [base[i].t() for i in range(N)]  # (8, 6) views, non-contiguous
    out = robustagg.CoordinateMedian()(grads)
    assert out.shape == (8, 6)
    assert torch.equal(out, robustagg.coordinate_median(torch.stack([g.reshape(-1) for g in grads])).reshape(8, 6))


def test_single_worker_and_scalar_tensors():
    out = robustagg.TrimmedMean(0)([torch.tensor(3.0)])
    assert out.shape == () and out.item() == 3.0
    out = robustagg.CoordinateMedian()([torch.tensor(1.0), torch.tensor(5.0), torch.tensor(2.0)])
    assert out.shape == () and out.item() == 2.0


def test_inputs_not_modified():
    X, params, _ = _worker_params(seed=4)
    before = [[p.clone() for p in ps] for ps in params]
    robustagg.MeaMed(2)(params)
    for ps, bs in zip(params, before):
        for p, b in zip(ps, bs):
            assert_same_bits(p.reshape(-1), b.reshape(-1), "parameter list modified")


# ---------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("bad", [[], (), "abc", 3, None], ids=["empty-list", "empty-tuple", "str", "int", "None"])
def test_not_a_contribution(bad):
    with pytest.raises(TypeError, match="aggregator: expected an \\(n, d\\) tensor or a non-empty list"):
        robustagg.CoordinateMedian()(bad)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()], ids=["1-D", "3-D", "0-D"])
def test_tensor_input_not_2d(shape):
    with pytest.raises(ValueError, match=r"aggregator: a tensor input must be \(n, d\), got shape"):
        robustagg.Mean()(torch.zeros(shape))


def test_mismatched_tensor_shapes():
    with pytest.raises(ValueError, match=r"aggregator: worker 2 sent \(3, 5\), expected a tensor of shape \(3, 4\)"):
        robustagg.TrimmedMean(1)([torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(3, 5)])
    with pytest.raises(ValueError, match=r"aggregator: worker 1 sent \(12,\), expected a tensor of shape \(3, 4\)"):
        robustagg.TrimmedMean(0)([torch.zeros(3, 4), torch.zeros(12)])
    with pytest.raises(ValueError, match=r"aggregator: worker 1 sent list"):
        robustagg.TrimmedMean(0)([torch.zeros(3, 4), [torch.zeros(3, 4)]])


def test_mismatched_parameter_lists():
    good = [torch.zeros(2, 2), torch.zeros(3)]
    with pytest.raises(ValueError, match=r"aggregator: worker 1's parameter list does not match worker 0's shapes"):
        robustagg.MeaMed(0)([good, [torch.zeros(2, 2)]])
    with pytest.raises(ValueError, match=r"aggregator: worker 2's parameter list does not match worker 0's shapes"):
        robustagg.MeaMed(0)([good, good, [torch.zeros(2, 2), torch.zeros(4)]])
    with pytest.raises(ValueError, match=r"aggregator: worker 1's parameter list does not match"):
        robustagg.MeaMed(0)([good, torch.zeros(3)])
    with pytest.raises(ValueError, match=r"aggregator: worker 0 sent an empty parameter list"):
        robustagg.MeaMed(0)([[], []])


def test_rule_errors_pass_through():
    with pytest.raises(ValueError, match=r"trimmed_mean: f=2 needs n > 2\*f, got n=4"):
        robustagg.TrimmedMean(2)([torch.zeros(3)] * 4)
    with pytest.raises(TypeError, match=r"meamed: f must be an int, got float 1.5"):
        robustagg.MeaMed(1.5)(torch.zeros(5, 2))
    with pytest.raises(ValueError, match=r"mean: weights must have shape \(n,\) = \(3,\)"):
        robustagg.Mean(torch.ones(4))([torch.zeros(2)] * 3)


def test_repr():
    assert repr(robustagg.TrimmedMean(2)) == "TrimmedMean(f=2)"
    assert repr(robustagg.MeaMed(3)) == "MeaMed(f=3)"
    assert repr(robustagg.CoordinateMedian()) == "CoordinateMedian()"
    assert repr(robustagg.Mean()) == "Mean(weights=None)"
    assert repr(robustagg.Mean(torch.tensor([1.0, 2.0]))).startswith("Mean(weights=tensor([1., 2.]")


def test_base_class_is_abstract():
    with pytest.raises(NotImplementedError):
        robustagg.Aggregator()(torch.zeros(3, 2))
    assert isinstance(robustagg.MeaMed(1), robustagg.Aggregator)


# ---------------------------------------------------------------------------
# Distance rules: state and info


def test_geometric_median_info():
    agg = robustagg.GeometricMedian(tol=1e-12)
    for seed in (5, 6):
        X = make_matrix(MatrixSpec(N, 80, seed=seed, pattern="gaussian", nan_rows=1), torch.float64)
        out = agg(X)
        z, info = robustagg.geometric_median(X, tol=1e-12, return_info=True)
        assert_same_bits(out, z, "GeometricMedian")
        assert (agg.info.iterations, agg.info.objective, agg.info.converged) == (
            info.iterations,
            info.objective,
            info.converged,
        )
        assert agg.info.converged and agg.info.iterations > 0


def test_centered_clip_state():
    X1 = make_matrix(MatrixSpec(N, 30, seed=7, pattern="gaussian"), torch.float64)
    X2 = make_matrix(MatrixSpec(N, 30, seed=8, pattern="gaussian", nan_rows=1), torch.float64)
    zeros = torch.zeros(30, dtype=torch.float64)
    agg = robustagg.CenteredClip(tau=0.5, iters=2)
    out1 = agg(X1)
    assert_same_bits(out1, robustagg.centered_clip(X1, zeros, 0.5, 2), "first call starts at zeros")
    out2 = agg(X2)
    assert_same_bits(out2, robustagg.centered_clip(X2, out1, 0.5, 2), "second call starts at the first output")
    out3 = agg(X2)
    assert_same_bits(out3, robustagg.centered_clip(X2, out2, 0.5, 2), "third call")
    assert not torch.equal(out3, out2)
    agg.reset()
    assert_same_bits(agg(X2), robustagg.centered_clip(X2, zeros, 0.5, 2), "after reset: zeros again")
    # an initial center, then the previous output; reset goes back to zeros
    v = torch.full((30,), 0.25, dtype=torch.float64)
    agg = robustagg.CenteredClip(tau=0.5, center=v)
    out1 = agg(X1)
    assert_same_bits(out1, robustagg.centered_clip(X1, v, 0.5), "given center")
    assert_same_bits(agg(X1), robustagg.centered_clip(X1, out1, 0.5), "then the previous output")
    agg.reset()
    assert_same_bits(agg(X1), robustagg.centered_clip(X1, zeros, 0.5), "reset")


def test_centered_clip_state_on_structured_input():
    X, params, shapes = _worker_params(seed=9, dtype=torch.float64)
    X[~torch.isfinite(X)] = 0.0
    params = [[p.nan_to_num(0.0, 0.0, 0.0) for p in ps] for ps in params]
    agg = robustagg.CenteredClip(tau=1.0, iters=3)
    first = agg(params)
    zeros = torch.zeros(X.shape[1], dtype=torch.float64)
    expected1 = robustagg.centered_clip(X, zeros, 1.0, 3)
    assert_same_bits(torch.cat([t.reshape(-1) for t in first]), expected1, "parameter lists, first call")
    second = agg(params)
    assert_same_bits(
        torch.cat([t.reshape(-1) for t in second]),
        robustagg.centered_clip(X, expected1, 1.0, 3),
        "parameter lists, second call",
    )


def test_distance_rule_errors_pass_through():
    with pytest.raises(ValueError, match=r"^krum: .*\bf\b"):
        robustagg.Krum(3)(torch.zeros(8, 2))
    with pytest.raises(ValueError, match=r"^bulyan: .*\bf\b"):
        robustagg.Bulyan(2)([torch.zeros(3)] * 10)
    with pytest.raises(ValueError, match=r"^geometric_median: .*\bnu\b"):
        robustagg.GeometricMedian(nu=0.0)(torch.zeros(5, 2))
    with pytest.raises(ValueError, match=r"^centered_clip: .*\btau\b"):
        robustagg.CenteredClip(tau=-1.0)(torch.zeros(5, 2))
    with pytest.raises(ValueError, match=r"^nnm: .*\bf\b"):
        (robustagg.NNM(5) >> robustagg.Mean())(torch.zeros(5, 2))
    with pytest.raises(TypeError, match=r"^bucketing: .*\bs\b"):
        (robustagg.Bucketing("2") >> robustagg.Mean())(torch.zeros(5, 2))
    with pytest.raises(TypeError):
        robustagg.NNM(1) >> 3


def test_pre_aggregator_shapes():
    X = make_matrix(MatrixSpec(N, 12, seed=10, pattern="gaussian"), torch.float32)
    assert robustagg.Bucketing(3)(X).shape == (3, 12)
    assert robustagg.NNM(1)(X).shape == (N, 12)
    assert (robustagg.Bucketing(2) >> robustagg.NNM(1) >> robustagg.Clip(1.0))(X).shape == (4, 12)
    assert isinstance(robustagg.NNM(1) >> robustagg.Krum(1), robustagg.Aggregator)


def test_make_aggregator_builds_every_named_rule() -> None:
    X = torch.randn(9, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name in robustagg.aggregators.RULES:
        f = 1 if name in robustagg.aggregators.RULES_WITH_F else None
        options = {"tau": 1.0} if name == "cc" else {"root": X[0]} if name == "fltrust" else {}
        out = robustagg.aggregators.make_aggregator(name, f, **options)(X)
        assert out.shape == (5,) and torch.isfinite(out).all(), name
    assert isinstance(robustagg.aggregators.make_aggregator("krum", 2, m=3), robustagg.Krum)
    with pytest.raises(ValueError, match="unknown rule 'median'"):
        robustagg.aggregators.make_aggregator("median")
    with pytest.raises(ValueError, match="rule 'tm' needs f"):
        robustagg.aggregators.make_aggregator("tm")
    with pytest.raises(ValueError, match="rule 'cm' takes no f"):
        robustagg.aggregators.make_aggregator("cm", 1)
    with pytest.raises(ValueError, match="rule 'cc' needs tau"):
        robustagg.aggregators.make_aggregator("cc")


# ---------------------------------------------------------------------------
# The catalogue's objects with per-round inputs or state


def test_fltrust_root_is_set_per_call() -> None:
    X = torch.randn(6, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rule = robustagg.FLTrust()
    with pytest.raises(ValueError, match="^fltrust: no root update"):
        rule(X)
    for root in (X[2], -X[4]):
        rule.root = root
        assert_same_bits(rule(X), robustagg.fltrust(X, root))
    # a root shaped as the contributions (a parameter list) is flattened like them
    shapes = [(3, 2), (6,)]
    params = [list(torch.split(x, [6, 6])) for x in X]
    params = [[p[0].reshape(3, 2), p[1]] for p in params]
    rule.root = [X[1][:6].reshape(shapes[0]), X[1][6:]]
    out = rule(params)
    assert [t.shape for t in out] == [torch.Size(s) for s in shapes]
    assert_same_bits(torch.cat([t.reshape(-1) for t in out]), robustagg.fltrust(X, X[1]))
    rule.root = X[0][:5]
    with pytest.raises(ValueError, match=r"^fltrust: root must have shape \(d,\) = \(12,\)"):
        rule(X)


def test_clipped_clustering_clips_at_the_median_of_every_norm_seen() -> None:
    g = torch.Generator().manual_seed(4)
    A = torch.randn(5, 8, generator=g, dtype=torch.float64)
    B = 10 * torch.randn(4, 8, generator=g, dtype=torch.float64)
    B[1] = float("nan")  # its norm is not recorded
    rule = robustagg.ClippedClustering()
    assert_same_bits(rule(A), robustagg.clipped_clustering(A, float(A.norm(dim=1).median())))
    out = rule(B)
    norms = torch.cat([A.norm(dim=1), B[[0, 2, 3]].norm(dim=1)])
    assert len(rule.norms) == 8
    torch.testing.assert_close(torch.tensor(sorted(rule.norms), dtype=torch.float64), norms.sort().values)
    tau = float(norms.sort().values[3:5].mean())  # even count: the mean of the two middle norms
    torch.testing.assert_close(out, robustagg.clipped_clustering(B, tau), rtol=1e-14, atol=0)
    rule.reset()
    assert rule.norms == []
    fixed = robustagg.ClippedClustering(tau=0.5)
    assert_same_bits(fixed(B), robustagg.clipped_clustering(B, 0.5))
    assert fixed.norms == []
    assert repr(rule) == "ClippedClustering(tau=None)"


def _foolsgold_mean(H: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    alpha = robustagg.foolsgold_weights(H)
    return (alpha.reshape(-1, 1) * X.double()).sum(0) / alpha.sum()


def test_foolsgold_keeps_a_history_per_client() -> None:
    g = torch.Generator().manual_seed(5)
    X1, X2 = (torch.randn(4, 10, generator=g, dtype=torch.float64) for _ in range(2))
    X1[3] = X1[2]  # clients 2 and 3 send the same row: sybils
    rule = robustagg.FoolsGold()
    torch.testing.assert_close(rule(X1), _foolsgold_mean(X1, X1), rtol=1e-12, atol=1e-12)
    # round 2: the clients arrive in another order, client 0 absent, client 7 new
    rule.clients = [3, 7, 1, 2]
    H = torch.stack([X1[3] + X2[0], X2[1], X1[1] + X2[2], X1[2] + X2[3]])
    torch.testing.assert_close(rule(X2), _foolsgold_mean(H, X2), rtol=1e-12, atol=1e-12)
    assert sorted(rule.history) == [0, 1, 2, 3, 7]
    assert repr(rule) == "FoolsGold(kappa=1.0, clients=[3, 7, 1, 2])"
    rule.reset()
    assert rule.history == {}
    for clients, message in (([0, 1], "names 2 clients for 4 rows"), ([0, 0, 1, 2], "must be distinct")):
        rule.clients = clients
        with pytest.raises(ValueError, match=f"^foolsgold: clients {message}"):
            rule(X1)


def test_foolsgold_client_with_a_non_finite_row_keeps_weight_zero() -> None:
    g = torch.Generator().manual_seed(6)
    X = torch.randn(4, 6, generator=g, dtype=torch.float64)
    bad = X.clone()
    bad[1, 2] = float("inf")
    rule = robustagg.FoolsGold()
    rule(bad)
    out = rule(X)  # client 1's history is no longer finite: weight 0, so its finite row takes no part
    H = torch.stack([bad[0] + X[0], bad[2] + X[2], bad[3] + X[3]])
    torch.testing.assert_close(out, _foolsgold_mean(H, X[[0, 2, 3]]), rtol=1e-12, atol=1e-12)
    # every history the same direction: all weights 0, the aggregate is zeros
    same = robustagg.FoolsGold()
    assert_same_bits(same(torch.ones(3, 6)), torch.zeros(6))
