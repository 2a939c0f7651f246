"""The benchmark's own pieces: the plain-torch baselines of the distance and catalogue ops
compute what robustagg computes, op selection from the command line, the
geometric-median calibration, the table of cases, the parser's imports, and a tiny run of the suite."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import robustagg
from robustagg.bench.byzfl_peer import byzfl_status
from robustagg.bench.calibration import calibrate_geometric_median, gm_objective
from robustagg.bench.cases import (
    ALL_OPS,
    CASES,
    CATALOGUE_OPS,
    CHECK_COLUMNS,
    DISTANCE_OPS,
    OPS,
    PREAGGREGATOR_OPS,
    case,
    expand_ops,
    min_n,
    op_callable,
    op_params,
    torch_baseline,
)
from robustagg.bench.params import GM_NU, GM_RTOL, GM_TOL, GM_TRIAL_T, dist_f
from robustagg.bench.report import format_markdown, format_table
from robustagg.bench.suite import SuiteConfig, run_suite
from robustagg.cli import build_parser

# (n, rows scale): n = 40 takes torch.cdist's matrix-product path (more than 25 rows)
SHAPES = [(5, 1.0), (10, 1.0), (25, 3.0), (40, 0.5)]


def _rows(n: int, d: int, scale: float, seed: int) -> torch.Tensor:
    """float64 rows of different norms around a common point: distinct distances, Krum scores and norms."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.logspace(-1, 1, n, dtype=torch.float64)[torch.randperm(n, generator=g)]
    return 2.0 + scale * spread[:, None] * torch.randn(n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("op", [op for op in DISTANCE_OPS if op != "geometric_median"])
@pytest.mark.parametrize(("n", "scale"), SHAPES)
def test_torch_baseline_matches_robustagg(op: str, n: int, scale: float) -> None:
    if n < min_n(op):
        pytest.skip(f"{op} needs n >= {min_n(op)}")
    X = _rows(n, 300, scale, seed=n)
    got = torch_baseline(op, n)[1](X)
    want = op_callable(op, n)(X)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("op", CATALOGUE_OPS)
@pytest.mark.parametrize(("n", "scale"), [(5, 1.0), (10, 3.0)])
def test_catalogue_torch_baseline_matches_robustagg(op: str, n: int, scale: float) -> None:
    """The subset rules' baselines enumerate comb(n, f) subsets: n stays at 10."""
    X = _rows(n, 300, scale, seed=n)
    got = torch_baseline(op, n)[1](X)
    want = op_callable(op, n)(X)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("n", "scale"), SHAPES)
def test_torch_weiszfeld_reaches_robustagg_objective(n: int, scale: float) -> None:
    X = _rows(n, 300, scale, seed=n)
    z_torch = torch_baseline("geometric_median", n)[1](X)
    z, info = robustagg.geometric_median(X, nu=GM_NU, tol=GM_TOL, return_info=True)
    assert info.converged
    F, F_torch = gm_objective(X, z), gm_objective(X, z_torch)
    assert abs(F_torch - F) <= 1e-9 * F
    torch.testing.assert_close(z_torch, z, rtol=1e-5, atol=1e-5)


def test_gm_objective() -> None:
    X = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    assert gm_objective(X, torch.tensor([3.0, 4.0])) == pytest.approx(10.0, rel=1e-15)


def test_calibrate_geometric_median() -> None:
    X = _rows(12, 2000, 1.0, seed=1).float()
    gm = calibrate_geometric_median(X, torch_loop=True, byzfl_search=True)
    assert gm["iterations"] >= 1 and gm["converged"]
    assert abs(gm["torch_objective"] - gm["objective"]) <= 1e-9 * gm["objective"]
    if byzfl_status()[0] is None:
        assert "byzfl_T" not in gm
        return
    assert gm["byzfl_T"] in GM_TRIAL_T
    assert gm["byzfl_reached"]
    assert gm["byzfl_objective"] <= gm["objective"] * (1 + GM_RTOL)
    i = GM_TRIAL_T.index(gm["byzfl_T"])
    if i > 0:  # the T before it does not reach the objective
        byzfl = byzfl_status()[0]
        z = byzfl.GeometricMedian(nu=GM_NU, T=GM_TRIAL_T[i - 1])(X)
        assert gm_objective(X, z) > gm["objective"] * (1 + GM_RTOL)


def test_expand_ops() -> None:
    assert expand_ops(["all"]) == list(ALL_OPS)
    assert expand_ops(["coordinate"]) == list(OPS)
    assert expand_ops(["krum,nnm", "distance"]) == ["krum", "nnm"] + [
        op for op in DISTANCE_OPS if op not in ("krum", "nnm")
    ]
    with pytest.raises(ValueError, match="unknown op or group 'kurm'"):
        expand_ops(["kurm"])


def test_cases_table() -> None:
    """One case per op; the groups are read off the table; every case with an f has a parameter text."""
    assert [c.name for c in CASES] == list(ALL_OPS) == list(OPS + DISTANCE_OPS + CATALOGUE_OPS)
    assert set(PREAGGREGATOR_OPS) <= set(DISTANCE_OPS)
    for c in CASES:
        assert c.family in CHECK_COLUMNS
        assert (c.reference is None) != (c.check is None), c.name
        if c.f is not None:
            assert op_params(c.name, 25, 1000).startswith(f"f={c.f(25)}")
    with pytest.raises(ValueError, match="unknown op 'kurm'"):
        case("kurm")


def test_parser_imports_only_the_light_bench_modules() -> None:
    """Building the parser loads the dtypes, not the suite, timing, memory or report modules."""
    code = (
        "import sys, robustagg.cli; robustagg.cli.build_parser(); "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('robustagg.bench'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["robustagg.bench", "robustagg.bench.command", "robustagg.bench.params"]


def test_dist_f_admits_every_rule() -> None:
    for n in range(3, 200):
        f = dist_f(n)
        assert n >= 4 * f + 3 and n > 2 * f + 2 and f == (n - 3) // 4


def test_cli_parses_op_groups_and_sizes() -> None:
    args = build_parser().parse_args(
        ["bench", "--ops", "distance", "mean", "--n", "10,25", "64", "--d", "1M,4M", "100k"]
    )
    assert [op for ops in args.ops for op in ops] == list(DISTANCE_OPS) + ["mean"]
    assert [n for ns in args.n for n in ns] == [10, 25, 64]
    assert [d for ds in args.d for d in ds] == [1_000_000, 4_000_000, 100_000]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--ops", "nope"])


def test_tiny_suite() -> None:
    """Every distance op, its check against the reference, baselines, notes; n = 2 skips the Krum family."""
    cfg = SuiteConfig(
        ops=list(DISTANCE_OPS) + ["mean"],
        ns={"cpu": [2, 8]},
        ds={"cpu": [2000]},
        repeats=1,
        warmup=1,
        max_seconds=0.5,
        memory=False,
        pin_malloc=False,
        mem_budget_bytes={"cpu": 64 << 20},
    )
    result = run_suite(cfg, progress=lambda msg: None)
    assert not result["failed"]
    rows = {(r["op"], r["n"]): r for r in result["rows"]}
    assert set(rows) == {(op, 8) for op in cfg.ops} | {(op, 2) for op in cfg.ops if min_n(op) <= 2}
    assert all(r["check"] == "ok" for r in result["rows"])
    assert any("krum needs n >= 3" in s for s in result["skipped"])
    gm = rows[("geometric_median", 8)]
    assert gm["gm"]["iterations"] >= 1
    assert "speedup" in gm["baselines"]["torch"]
    md = format_markdown(result)
    assert "| multi_krum | 8 | 2k |" in md
    assert "geometric_median n=8 d=2k float32 cpu: robustagg" in md
    if byzfl_status()[0] is not None:
        assert f"byzfl.GeometricMedian(nu=1e-06, T={gm['gm']['byzfl_T']})" == gm["baselines"]["byzfl"]["name"]
        assert f"byzfl T={gm['gm']['byzfl_T']}" in md
    assert "pairwise_sq_distances:" in format_table(result)
