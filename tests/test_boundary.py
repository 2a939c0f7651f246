"""Hostile inputs at the Python boundary: each is refused where it enters, with the argument and the value named.

One table per layer (aggregators, attacks, optimizers, Flower, simulator configs) of ``(call, exception, message
pattern)``; then the updates that write several tensors or several groups, checked to write nothing when a
later argument is refused.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

import robustagg
from robustagg.attacks import ALIE, IPM, Gaussian, Mimic, OptimalIPM, alie_z, check_attack_rows, make_attack
from robustagg.flower import aggregate_ndarrays
from robustagg.optim import (
    ACDCSchedule,
    AlternatingSchedule,
    BiasCorrectedWGA,
    ClientOptimizer,
    FederatedServer,
    MaskedSGD,
    PartialTrainer,
    RobustServer,
    WeightedGradientAveraging,
    WorkerMomentum,
)
from robustagg.optim.masked import core_forward, extract_core, random_core, width_core
from robustagg.optim.personalized import collaborator_weight, decaying_beta, estimate_bias_variance, optimal_weights

from conftest import assert_identical

INF, NAN = math.inf, math.nan


def _p() -> list[torch.Tensor]:
    return [torch.zeros(3)]


def _mime() -> FederatedServer:
    return FederatedServer(_p(), "mime", "sgdm")


def _scaffold() -> FederatedServer:
    server = FederatedServer(_p(), "scaffold", "sgd", num_clients=4)
    server.begin_round()
    return server


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def _clients(arrays: list[np.ndarray], count: object = 1) -> list[tuple[list[np.ndarray], object]]:
    return [([a], count) for a in arrays]


F32 = [np.ones(2, dtype=np.float32)] * 3

# (id, call, exception, pattern the message must match: the argument's name and, where it has one, the value)
CASES = [
    # aggregator objects: checked at construction, not at the first aggregation
    (
        "TrimmedMean-str-f",
        lambda: robustagg.TrimmedMean("1"),
        TypeError,
        r"^trimmed_mean: f must be an int, got str '1'",
    ),
    ("MeaMed-negative-f", lambda: robustagg.MeaMed(-1), ValueError, r"^meamed: f must be >= 0, got f=-1"),
    ("Krum-m-0", lambda: robustagg.Krum(1, m=0), ValueError, r"^krum: m must be >= 1, got m=0"),
    ("MultiKrum-float-f", lambda: robustagg.MultiKrum(1.0), TypeError, r"^multi_krum: f must be an int"),
    ("Bulyan-bool-f", lambda: robustagg.Bulyan(True), TypeError, r"^bulyan: f must be an int, got bool"),
    ("GeometricMedian-nu-0", lambda: robustagg.GeometricMedian(nu=0.0), ValueError, r"^geometric_median: nu .*nu=0\.0"),
    (
        "GeometricMedian-tol-nan",
        lambda: robustagg.GeometricMedian(tol=NAN),
        ValueError,
        r"^geometric_median: tol .*tol=nan",
    ),
    ("GeometricMedian-max_iter", lambda: robustagg.GeometricMedian(max_iter=-1), ValueError, r"max_iter=-1"),
    (
        "GeometricMedian-list-weights",
        lambda: robustagg.GeometricMedian([1.0, 2.0]),
        TypeError,
        r"^geometric_median: weights",
    ),
    (
        "Mean-list-weights",
        lambda: robustagg.Mean([1.0, 1.0]),
        TypeError,
        r"^mean: weights must be a torch\.Tensor or None, got list",
    ),
    (
        "CenteredClip-str-tau",
        lambda: robustagg.CenteredClip("1"),
        TypeError,
        r"^centered_clip: tau must be a real number, got str",
    ),
    ("CenteredClip-nan-tau", lambda: robustagg.CenteredClip(NAN), ValueError, r"^centered_clip: tau .*tau=nan"),
    ("CenteredClip-iters", lambda: robustagg.CenteredClip(1.0, iters=-2), ValueError, r"iters=-2"),
    (
        "CenteredClip-list-center",
        lambda: robustagg.CenteredClip(1.0, center=[0.0]),
        TypeError,
        r"^centered_clip: center",
    ),
    ("Bucketing-s-0", lambda: robustagg.Bucketing(0), ValueError, r"^bucketing: s must be >= 1, got s=0"),
    (
        "Bucketing-generator",
        lambda: robustagg.Bucketing(2, generator=7),
        TypeError,
        r"^bucketing: generator must be a torch\.Generator",
    ),
    ("Clip-c-negative", lambda: robustagg.Clip(-1.0), ValueError, r"^clip: c .*c=-1\.0"),
    ("NNM-str-f", lambda: robustagg.NNM("2"), TypeError, r"^nnm: f must be an int"),
    ("ARC-negative-f", lambda: robustagg.ARC(-1), ValueError, r"^arc: f must be >= 0"),
    ("Pipeline-not-pre", lambda: robustagg.Pipeline([robustagg.Mean()], robustagg.Mean()), TypeError, r"^Pipeline: "),
    # aggregator inputs: tensors, lists of tensors or lists of tensor lists, nothing else
    (
        "agg-list-of-floats",
        lambda: robustagg.Mean()([1.0, 2.0]),
        TypeError,
        r"^aggregator: expected .*worker 0 sent float",
    ),
    (
        "agg-lists-of-floats",
        lambda: robustagg.CoordinateMedian()([[1.0, 2.0], [3.0, 4.0]]),
        TypeError,
        r"^aggregator: expected .*tensor.*worker 0 sent list holding float",
    ),
    ("agg-ndarray", lambda: robustagg.Mean()(np.zeros((3, 2))), TypeError, r"^aggregator: expected .*got ndarray"),
    ("agg-list-of-ndarrays", lambda: robustagg.TrimmedMean(0)([np.zeros(2)] * 3), TypeError, r"worker 0 sent ndarray"),
    ("agg-float-after-tensors", lambda: robustagg.Mean()([torch.zeros(2), 1.0]), TypeError, r"worker 1 sent float"),
    (
        "agg-floats-in-a-param-list",
        lambda: robustagg.Mean()([[torch.zeros(2)], [0.0]]),
        TypeError,
        r"worker 1 sent list holding float",
    ),
    # attacks
    ("IPM-str-eps", lambda: IPM("0.1"), TypeError, r"^ipm: eps must be a real number, got str '0\.1'"),
    ("IPM-complex-eps", lambda: IPM(1j), TypeError, r"^ipm: eps must be a real number, got complex"),
    ("ALIE-list-z", lambda: ALIE([1.0]), TypeError, r"^alie: z must be a real number, got list"),
    ("ALIE-nan-z", lambda: ALIE(NAN), ValueError, r"^alie: z must be finite, got z=nan"),
    (
        "Gaussian-numpy-generator",
        lambda: Gaussian(generator=np.random.default_rng(0)),
        TypeError,
        r"^gaussian: generator must be a torch\.Generator",
    ),
    ("Gaussian-complex-std", lambda: Gaussian(std=1j), TypeError, r"^gaussian: std must be a real number"),
    ("Mimic-float-warmup", lambda: Mimic(warmup=2.0), TypeError, r"^mimic: warmup must be an int"),
    ("OptimalIPM-str-steps", lambda: OptimalIPM(robustagg.Mean(), steps="11"), TypeError, r"^optimal_ipm: steps"),
    ("alie_z-n-0", lambda: alie_z(0, 0), ValueError, r"^alie: n must be >= 1, got n=0"),
    ("make_attack-not-a-name", lambda: make_attack(3), TypeError, r"^make_attack: name must be a str, got int"),
    (
        "check_attack_rows-alie-1-honest",
        lambda: check_attack_rows("alie", 2, 1),
        ValueError,
        r"^alie: needs at least 2 honest rows .*f=1",
    ),
    ("check_attack_rows-alie-no-z", lambda: check_attack_rows("alie", 25, 13), ValueError, r"^alie: default z .*f=13"),
    # Byzantine optimizers
    (
        "WorkerMomentum-str-beta",
        lambda: WorkerMomentum("0.9"),
        TypeError,
        r"^WorkerMomentum: beta must be a real number",
    ),
    (
        "WorkerMomentum-beta-1",
        lambda: WorkerMomentum(1.0),
        ValueError,
        r"^WorkerMomentum: beta must be in \[0, 1\), got beta=1\.0",
    ),
    (
        "WorkerMomentum-worker-None",
        lambda: WorkerMomentum(0.5)([[torch.zeros(2)], [None]]),
        ValueError,
        r"^WorkerMomentum: grads\[1\]\[0\] is None",
    ),
    (
        "WorkerMomentum-int-grads",
        lambda: WorkerMomentum(0.5)(torch.zeros(2, 3, dtype=torch.int64)),
        TypeError,
        r"^WorkerMomentum: grads\[0\] must be float32",
    ),
    (
        "RobustServer-str-lr",
        lambda: RobustServer(_p(), robustagg.Mean(), "0.1"),
        TypeError,
        r"^RobustServer: lr must be a real number",
    ),
    (
        "RobustServer-list-lr",
        lambda: RobustServer(_p(), robustagg.Mean(), [0.1]),
        TypeError,
        r"^RobustServer: lr .*list",
    ),
    (
        "RobustServer-inf-lr",
        lambda: RobustServer(_p(), robustagg.Mean(), INF),
        ValueError,
        r"^RobustServer: lr .*lr=inf",
    ),
    (
        "RobustServer-float-param",
        lambda: RobustServer([1.0], robustagg.Mean(), 0.1),
        TypeError,
        r"^RobustServer: params\[0\]",
    ),
    # federated optimizers
    (
        "FederatedServer-str-beta",
        lambda: FederatedServer(_p(), beta="0.9"),
        TypeError,
        r"^FederatedServer: beta must be a real number",
    ),
    (
        "FederatedServer-nan-beta2",
        lambda: FederatedServer(_p(), beta2=NAN),
        ValueError,
        r"^FederatedServer: beta2 .*beta2=nan",
    ),
    (
        "FederatedServer-mvr_a",
        lambda: FederatedServer(_p(), mvr_a=1.5),
        ValueError,
        r"^FederatedServer: mvr_a .*mvr_a=1\.5",
    ),
    ("FederatedServer-inf-eps", lambda: FederatedServer(_p(), eps=INF), ValueError, r"^FederatedServer: eps .*eps=inf"),
    ("FederatedServer-server_lr-0", lambda: FederatedServer(_p(), server_lr=0), ValueError, r"server_lr=0\.0"),
    (
        "FederatedServer-float-num_clients",
        lambda: FederatedServer(_p(), "scaffold", num_clients=2.5),
        TypeError,
        r"^FederatedServer: num_clients must be an int",
    ),
    (
        "FederatedServer-int-params",
        lambda: FederatedServer([torch.zeros(3, dtype=torch.int64)]),
        TypeError,
        r"^FederatedServer: params\[0\] must be float",
    ),
    (
        "begin_round-inf-count",
        lambda: _mime().begin_round([[torch.ones(3)]], [INF]),
        ValueError,
        r"^FederatedServer: counts\[0\] .*counts\[0\]=inf",
    ),
    (
        "begin_round-str-count",
        lambda: _mime().begin_round([[torch.ones(3)]], ["2"]),
        TypeError,
        r"^FederatedServer: counts\[0\] must be a real number",
    ),
    (
        "begin_round-zero-counts",
        lambda: _mime().begin_round([[torch.ones(3)]] * 2, [0, 0]),
        ValueError,
        r"^FederatedServer: counts must have a positive sum",
    ),
    (
        "begin_round-int-counts",
        lambda: _mime().begin_round([[torch.ones(3)]], 5),
        TypeError,
        r"^FederatedServer: counts must be a list of numbers, got int",
    ),
    (
        "begin_round-fewer-lists",
        lambda: _mime().begin_round([[torch.ones(3)]], [1, 1]),
        ValueError,
        r"^FederatedServer: full_grads must hold one gradient list per count \(2\), got 1",
    ),
    (
        "begin_round-broadcast-shape",
        lambda: _mime().begin_round([[torch.ones(1)]], [1]),
        ValueError,
        r"^FederatedServer: full_grads\[0\]\[0\] must have params\[0\]'s shape \[3\], got \[1\]",
    ),
    (
        "begin_round-float64-grads",
        lambda: _mime().begin_round([[torch.ones(3, dtype=torch.float64)]], [1]),
        TypeError,
        r"full_grads\[0\]\[0\] must have params\[0\]'s dtype",
    ),
    (
        "client_step-lr-0",
        lambda: _scaffold().client_step([torch.ones(3)], [torch.ones(3)], 0.0, client_ids=[0]),
        ValueError,
        r"^FederatedServer: lr .*lr=0\.0",
    ),
    (
        "add_client-zero-count",
        lambda: _scaffold().add_client([torch.ones(3)], 0, 0, 1, 0.1),
        ValueError,
        r"^FederatedServer: count .*count=0\.0",
    ),
    (
        "add_client-float-steps",
        lambda: _scaffold().add_client([torch.ones(3)], 1, 0, 1.5, 0.1),
        TypeError,
        r"^FederatedServer: local_steps must be an int",
    ),
    (
        "add_client-shape",
        lambda: _scaffold().add_client([torch.ones(1)], 1, 0, 1, 0.1),
        ValueError,
        r"^FederatedServer: params\[0\] must have server\.params\[0\]'s shape",
    ),
    ("ClientOptimizer-str-lr", lambda: ClientOptimizer(_p(), _mime(), "0.1"), TypeError, r"^ClientOptimizer: lr"),
    # personalized optimizers
    (
        "WGA-complex-lr",
        lambda: WeightedGradientAveraging(_p(), [1.0], 1j),
        TypeError,
        r"^WeightedGradientAveraging: lr",
    ),
    (
        "WGA-complex-weight",
        lambda: WeightedGradientAveraging(_p(), [1j], 0.1),
        TypeError,
        r"weights\[0\] must be a real number",
    ),
    ("WGA-inf-weight", lambda: WeightedGradientAveraging(_p(), [INF, -INF], 0.1), ValueError, r"weights\[0\]=inf"),
    (
        "WGA-grads-None",
        lambda: WeightedGradientAveraging(_p(), [0.5, 0.5], 0.1).step([[torch.zeros(3)], [None]]),
        ValueError,
        r"^WeightedGradientAveraging: grads\[1\]\[0\] is None",
    ),
    ("BiasCorrectedWGA-nan-beta", lambda: BiasCorrectedWGA(_p(), [0.5, 0.5], 0.1, NAN), ValueError, r"beta=nan"),
    ("decaying_beta-str", lambda: decaying_beta("0.1"), TypeError, r"^decaying_beta: floor must be a real number"),
    ("collaborator_weight-str", lambda: collaborator_weight("1", 1.0, 1.0), TypeError, r"^collaborator_weight: v0"),
    (
        "collaborator_weight-inf",
        lambda: collaborator_weight(1.0, INF, 1.0),
        ValueError,
        r"^collaborator_weight: v .*v=inf",
    ),
    ("optimal_weights-complex", lambda: optimal_weights([1j, 1.0], torch.zeros(2, 2)), TypeError, r"variances\[0\]"),
    (
        "optimal_weights-complex-gram",
        lambda: optimal_weights([1.0, 1.0], torch.zeros(2, 2, dtype=torch.complex64)),
        TypeError,
        r"^optimal_weights: bias_gram must be a real tensor",
    ),
    (
        "estimate_bias_variance-complex",
        lambda: estimate_bias_variance(torch.zeros(3, 2, 2, dtype=torch.complex64)),
        TypeError,
        r"^estimate_bias_variance: samples must be a real tensor",
    ),
    # masked training
    ("MaskedSGD-str-lr", lambda: MaskedSGD(_p(), lr="0.1"), TypeError, r"^MaskedSGD: lr must be a real number"),
    (
        "MaskedSGD-inf-weight_decay",
        lambda: MaskedSGD(_p(), lr=0.1, weight_decay=INF),
        ValueError,
        r"^MaskedSGD: weight_decay .*weight_decay=inf",
    ),
    ("MaskedSGD-nan-weight_decay", lambda: MaskedSGD(_p(), lr=0.1, weight_decay=NAN), ValueError, r"weight_decay=nan"),
    (
        "MaskedSGD-negative-weight_decay",
        lambda: MaskedSGD(_p(), lr=0.1, weight_decay=-1e-4),
        ValueError,
        r"weight_decay=-0\.0001",
    ),
    ("MaskedSGD-str-momentum", lambda: MaskedSGD(_p(), lr=0.1, momentum="0.9"), TypeError, r"^MaskedSGD: momentum"),
    ("random_core-generator", lambda: random_core(_mlp(), 0.5, generator=0), TypeError, r"^random_core: generator"),
    ("width_core-str", lambda: width_core(_mlp(), "0.5"), TypeError, r"^width_core: fraction must be a real number"),
    (
        "AlternatingSchedule-str",
        lambda: AlternatingSchedule("2"),
        TypeError,
        r"^AlternatingSchedule: period must be an int",
    ),
    (
        "ACDCSchedule-nan-warmup",
        lambda: ACDCSchedule(100, 0.1, warmup_fraction=NAN),
        ValueError,
        r"^ACDCSchedule: warmup_fraction .*warmup_fraction=nan",
    ),
    (
        "core_forward-int-key",
        lambda: core_forward(_mlp(), {0: torch.ones(6, 4, dtype=torch.bool)}, torch.zeros(1, 4)),
        TypeError,
        r"^core_forward: core keys must be parameter names \(str\), got int 0",
    ),
    (
        "extract_core-int-key",
        lambda: extract_core(_mlp(), {0: torch.ones(6, 4, dtype=torch.bool)}),
        TypeError,
        r"^extract_core: core keys .*got int 0",
    ),
    (
        "PartialTrainer-int-key",
        lambda: _partial_trainer({2: torch.ones(3, 6, dtype=torch.bool)}),
        TypeError,
        r"^PartialTrainer: core keys .*got int 2",
    ),
    (
        "PartialTrainer-float-mask",
        lambda: _partial_trainer({"2.weight": torch.ones(3, 6)}),
        TypeError,
        r"^PartialTrainer: the mask of '2\.weight' must be a bool tensor",
    ),
    # Flower results
    (
        "flower-complex",
        lambda: aggregate_ndarrays(_clients([np.ones(2, dtype=np.complex64)] * 3), "cm"),
        TypeError,
        r"^flower: client 0's array 0 is complex64",
    ),
    (
        "flower-complex-second-client",
        lambda: aggregate_ndarrays(_clients(F32[:1] + [np.ones(2) + 1j]), "cm"),
        TypeError,
        r"^flower: client 1's array 0 is complex128",
    ),
    (
        "flower-bool",
        lambda: aggregate_ndarrays(_clients([np.ones(2, dtype=bool)] * 3), "cm"),
        TypeError,
        r"^flower: client 0's array 0 is bool",
    ),
    (
        "flower-int-beyond-float64",
        lambda: aggregate_ndarrays(_clients([np.array([2**60])] * 3), "cm"),
        ValueError,
        r"^flower: client 0's array 0 \(int64\) holds values beyond \+-2\*\*53",
    ),
    (
        "flower-int-beyond-float32",
        lambda: aggregate_ndarrays(_clients([np.array([2**25])] * 3), "cm", dtype=torch.float32),
        ValueError,
        r"beyond \+-2\*\*24, which float32",
    ),
    (
        "flower-reference-complex",
        lambda: aggregate_ndarrays(_clients(F32), "cm", reference=[np.ones(2) * 1j]),
        TypeError,
        r"^flower: the reference's array 0 is complex128",
    ),
    (
        "flower-inf-count",
        lambda: aggregate_ndarrays(_clients(F32, INF), "mean"),
        ValueError,
        r"^flower: client 0's example count .*=inf",
    ),
    ("flower-nan-count", lambda: aggregate_ndarrays(_clients(F32, NAN), "mean"), ValueError, r"example count .*=nan"),
    (
        "flower-str-count",
        lambda: aggregate_ndarrays(_clients(F32, "5"), "mean"),
        TypeError,
        r"^flower: client 0's example count must be a real number, got str '5'",
    ),
    (
        "flower-str-dtype",
        lambda: aggregate_ndarrays(_clients(F32), "mean", dtype="float32"),
        TypeError,
        r"^flower: dtype must be torch\.float32, torch\.float64 or None, got str",
    ),
    (
        "flower-not-a-pair",
        lambda: aggregate_ndarrays([F32[0]] * 3, "mean"),
        TypeError,
        r"^flower: results\[0\] must be",
    ),
]


def _partial_trainer(core: dict) -> PartialTrainer:
    model = _mlp()
    return PartialTrainer(model, MaskedSGD(model.parameters(), lr=0.1), core, AlternatingSchedule())


@pytest.mark.parametrize("call,exc,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_refused_naming_the_argument(call, exc, pattern) -> None:
    with pytest.raises(exc) as info:
        call()
    assert type(info.value) is exc  # not a subclass: a KeyError is no ValueError here
    assert re.search(pattern, str(info.value)), str(info.value)


# ---------------------------------------------------------------------------
# Simulator configs: the fields a run checks before it loads anything

sim_byzantine = pytest.importorskip("robustagg.sim.byzantine")
from robustagg.sim import data as sim_data  # noqa: E402
from robustagg.sim.federated import FederatedConfig  # noqa: E402
from robustagg.sim.masked import MaskedConfig  # noqa: E402
from robustagg.sim.models import make_model  # noqa: E402
from robustagg.sim.personalized import PersonalizedConfig  # noqa: E402

ByzantineConfig = sim_byzantine.ByzantineConfig

CONFIG_CASES = [
    (ByzantineConfig(workers="25"), TypeError, r"^byzantine: workers must be an int, got str"),
    (ByzantineConfig(lr=INF), ValueError, r"^byzantine: lr .*lr=inf"),
    (ByzantineConfig(momentum=1.0), ValueError, r"^byzantine: momentum must be in \[0, 1\)"),
    (ByzantineConfig(cc_tau=NAN), ValueError, r"^byzantine: cc_tau .*cc_tau=nan"),
    (ByzantineConfig(ipm_eps=-0.1), ValueError, r"^byzantine: ipm_eps"),
    (ByzantineConfig(alie_z=INF), ValueError, r"^byzantine: alie_z must be finite"),
    (ByzantineConfig(batch=1401), ValueError, r"^byzantine: batch must be <= 1400"),
    (ByzantineConfig(seed=-1), ValueError, r"^byzantine: seed must be >= 0"),
    (ByzantineConfig(byzantine=25), ValueError, r"^byzantine: byzantine must be in \[0, workers\), got 25 of 25"),
    (
        ByzantineConfig(agg="krum", byzantine=12),
        ValueError,
        r"^byzantine: rule krum cannot take f=12 of 25 workers: krum",
    ),
    (ByzantineConfig(agg="bulyan", byzantine=6), ValueError, r"f=6 .*bulyan: f=6 needs n >= 4\*f \+ 3"),
    (ByzantineConfig(agg="tm", byzantine=13), ValueError, r"trimmed_mean: f=13 needs n > 2\*f"),
    (ByzantineConfig(agg="krum", rule_f=3, byzantine=1, bucketing=5), ValueError, r"in buckets of 5: krum"),
    (ByzantineConfig(attack="alie", agg="cm", byzantine=13), ValueError, r"^alie: default z"),
    (ByzantineConfig(attack="lie"), ValueError, r"unknown attack 'lie'"),
    (FederatedConfig(lr=INF), ValueError, r"^federated: lr .*lr=inf"),
    (FederatedConfig(algo="scaffold", lr=0.0), ValueError, r"^federated: lr .*lr=0\.0"),
    (FederatedConfig(beta=1.0), ValueError, r"^federated: beta must be in \[0, 1\), got beta=1\.0"),
    (FederatedConfig(eps=0.0), ValueError, r"^federated: eps"),
    (FederatedConfig(local_epochs=NAN), ValueError, r"^federated: local_epochs"),
    (FederatedConfig(alpha="0.1"), TypeError, r"^federated: alpha must be a real number"),
    (FederatedConfig(clients=10, per_round=11), ValueError, r"per_round=11, clients=10"),
    (PersonalizedConfig(noise=INF), ValueError, r"^personalized: noise .*noise=inf"),
    (PersonalizedConfig(collaborators=2.0), TypeError, r"^personalized: collaborators must be an int"),
    (PersonalizedConfig(batch=0), ValueError, r"^personalized: batch must be >= 1"),
    (MaskedConfig(core_steps="1"), TypeError, r"^masked: core_steps must be an int"),
    (MaskedConfig(momentum=-0.5), ValueError, r"^masked: momentum"),
    (MaskedConfig(seed=-3), ValueError, r"^masked: seed must be >= 0, got seed=-3"),
]


@pytest.mark.parametrize(
    "cfg,exc,pattern", CONFIG_CASES, ids=[f"{type(c[0]).__name__}-{i}" for i, c in enumerate(CONFIG_CASES)]
)
def test_bad_config_is_refused_before_the_run(cfg, exc, pattern) -> None:
    with pytest.raises(exc) as info:
        cfg.check()
    assert type(info.value) is exc
    assert re.search(pattern, str(info.value)), str(info.value)


def test_configs_at_their_limits_pass() -> None:
    """The checks refuse only what cannot run: the largest f each rule takes of 25 workers, and edge values."""
    for agg, f in (("krum", 11), ("mkrum", 11), ("bulyan", 5), ("tm", 12), ("meamed", 12), ("cm", 24)):
        ByzantineConfig(agg=agg, byzantine=f).check()
    ByzantineConfig(cc_tau=INF, momentum=0.0, batch=1400, attack="alie", byzantine=12, agg="cm").check()
    FederatedConfig(mvr_a=1.0, beta=0.0, local_epochs=0.0, per_round=100).check()
    PersonalizedConfig(beta=1.0, beta_floor=0.0, noise=0.0, collaborators=0).check()
    MaskedConfig(core_fraction=1.0, density=1.0, warmup=0).check()


def test_sim_helpers() -> None:
    with pytest.raises(TypeError, match=r"^split: expected a str"):
        sim_data.parse_split(0.5)
    with pytest.raises(ValueError, match=r"^model: hidden must be >= 1, got hidden=0"):
        make_model("mlp", (1, 8, 8), 10, hidden=0)
    with pytest.raises(TypeError, match=r"^model: generator"):
        make_model("logreg", (4,), 2).init(0)


# ---------------------------------------------------------------------------
# Exact integers through Flower


def test_flower_integer_arrays_are_aggregated_exactly() -> None:
    """An int64 parameter above 2**24 comes back exact (float32 would round 2**40 + 1 to 2**40)."""
    big = np.array([2**40 + 1, -(2**52) - 1, 7], dtype=np.int64)
    out = aggregate_ndarrays(_clients([big, big + 2, big - 2]), "cm")[0]
    assert out.dtype == np.int64 and out.tolist() == big.tolist()


def test_flower_refuses_an_integer_aggregate_outside_its_dtype() -> None:
    """A center far outside uint8 keeps centered clipping's output there: refused, not wrapped around."""
    rule = robustagg.CenteredClip(1e-3, center=torch.tensor([1000.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^flower: the aggregate of array 0 does not fit its dtype uint8"):
        aggregate_ndarrays(_clients([np.array([10], dtype=np.uint8)] * 3), rule)


# ---------------------------------------------------------------------------
# Nothing written by a refused call


def _bits(tensors) -> list[torch.Tensor]:
    """Copies of the tensors, for _assert_unchanged."""
    return [t.detach().clone() for t in tensors]


def _assert_unchanged(tensors, before) -> None:
    for t, b in zip(tensors, before):
        assert_identical(t, b, "a refused call wrote a tensor")


def _two_group_sgd() -> tuple[MaskedSGD, list[nn.Parameter]]:
    p = [nn.Parameter(torch.arange(4.0)), nn.Parameter(torch.arange(6.0).view(2, 3))]
    for q in p:
        q.grad = torch.ones_like(q)
    return MaskedSGD([{"params": [p[0]]}, {"params": [p[1]]}], lr=0.1, momentum=0.9), p


@pytest.mark.parametrize(
    "spoil,exc,pattern",
    [
        (
            lambda opt, p: opt.step([torch.ones(4, dtype=torch.bool), torch.ones(3, dtype=torch.bool)]),
            ValueError,
            r"the mask of params\[1\] must have its shape \[2, 3\]",
        ),
        (
            lambda opt, p: opt.step([torch.ones(4, dtype=torch.bool), torch.ones(2, 3)]),
            TypeError,
            r"the mask of params\[1\] must be bool or uint8",
        ),
        (
            lambda opt, p: opt.step({p[0]: torch.ones(4, dtype=torch.bool), 1: torch.ones(2, 3, dtype=torch.bool)}),
            TypeError,
            r"masks keys must be parameters or parameter names \(str\), got int 1",
        ),
        (lambda opt, p: (opt.param_groups[1].update(lr=NAN), opt.step()), ValueError, r"^MaskedSGD: lr .*lr=nan"),
        (lambda opt, p: (opt.param_groups[1].update(weight_decay=INF), opt.step()), ValueError, r"weight_decay=inf"),
        (lambda opt, p: (opt.param_groups[1].update(momentum=1.0), opt.step()), ValueError, r"momentum=1\.0"),
    ],
)
def test_masked_sgd_refuses_before_the_first_group_steps(spoil, exc, pattern) -> None:
    opt, p = _two_group_sgd()
    before = _bits(p)
    with pytest.raises(exc, match=pattern):
        spoil(opt, p)
    _assert_unchanged(p, before)
    assert not opt.state  # no momentum buffer made either
    opt.param_groups[1].update(lr=0.1, momentum=0.9, weight_decay=0.0)
    opt.step()  # the same optimizer still steps once the input is fixed
    assert torch.equal(p[0].detach(), torch.arange(4.0) - 0.1)


def test_masked_sgd_takes_a_schedule_s_lr_of_zero() -> None:
    opt, p = _two_group_sgd()
    for group in opt.param_groups:
        group["lr"] = 0.0  # where e.g. a cosine schedule ends
    before = _bits(p)
    opt.step()
    _assert_unchanged(p, before)


@pytest.mark.parametrize(
    "full,counts,pattern",
    [
        (
            [[torch.ones(3), torch.ones(2)], [torch.ones(3)]],
            [1, 1],
            r"full_grads\[1\] must hold 2 tensors.*no tensor for params\[1\]",
        ),
        (
            [[torch.ones(3), torch.ones(2)], [torch.ones(3), torch.ones(2), torch.ones(2)]],
            [1, 1],
            r"full_grads\[1\] must hold 2 tensors.*got 3 \(1 more than params\)",
        ),
        (
            [[torch.ones(3), torch.ones(2)], [torch.ones(3), None]],
            [1, 1],
            r"full_grads\[1\]\[1\] is None; the tensor for params\[1\] is missing",
        ),
        ([[torch.ones(3), torch.ones(2)], [torch.ones(3), torch.ones(2)]], [1, INF], r"counts\[1\]"),
        ([[torch.ones(3), torch.ones(2)], [torch.ones(3), torch.ones(2)]], [1, -1], r"counts\[1\]"),
    ],
)
def test_begin_round_refuses_before_writing_the_statistics(full, counts, pattern) -> None:
    server = FederatedServer([torch.zeros(3), torch.zeros(2)], "mime", "sgdm")
    before = _bits(server.momentum)
    with pytest.raises(ValueError, match=pattern):
        server.begin_round(full, counts)
    _assert_unchanged(server.momentum, before)
    assert server.full_grad is None and server._delta is None  # no round started


def test_mvr_begin_round_refuses_prev_grads_before_writing() -> None:
    server = FederatedServer(_p(), "mimemvr", num_clients=2)
    server.begin_round([[torch.ones(3)]], [1])
    server.add_client([torch.full((3,), -0.5)], 1)
    server.end_round()
    momentum, full_grad = _bits(server.momentum), _bits(server.full_grad)
    with pytest.raises(ValueError, match=r"prev_full_grads\[0\]\[0\] is None"):
        server.begin_round([[torch.full((3,), 2.0)]], [1], [[None]])
    _assert_unchanged(server.momentum, momentum)
    _assert_unchanged(server.full_grad, full_grad)


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        (dict(local_steps=1, lr=0.0), ValueError, r"lr .*lr=0\.0"),
        (dict(local_steps=1, lr=NAN), ValueError, r"lr=nan"),
        (dict(local_steps=0, lr=0.1), ValueError, r"local_steps must be >= 1"),
        (dict(local_steps=None, lr=0.1), ValueError, r"scaffold's add_client needs"),
    ],
)
def test_scaffold_add_client_refuses_before_adding_the_client(kwargs, exc, pattern) -> None:
    server = _scaffold()
    delta = _bits(server._delta)
    with pytest.raises(exc, match=pattern):
        server.add_client([torch.ones(3)], 1, client_id=0, **kwargs)
    _assert_unchanged(server._delta, delta)
    assert server._weight == 0.0 and not server.client_controls


def test_client_step_refuses_lr_before_writing() -> None:
    server = _scaffold()
    y = [torch.ones(3)]
    before = _bits(y)
    with pytest.raises(ValueError, match=r"lr=-0\.1"):
        server.client_step(y, [torch.ones(3)], -0.1, client_ids=[0])
    _assert_unchanged(y, before)


def test_bias_corrected_wga_refuses_a_bad_beta_before_making_its_state() -> None:
    p = [torch.ones(3)]
    opt = BiasCorrectedWGA(p, [0.5, 0.5], 0.1, lambda t: 1.5)
    before = _bits(p)
    with pytest.raises(ValueError, match=r"beta\(0\) must be in \[0, 1\], got beta\(0\)=1\.5"):
        opt.step([[torch.ones(3)], [torch.zeros(3)]])
    _assert_unchanged(p, before)
    assert not opt.state


def test_worker_momentum_refuses_before_making_its_buffers() -> None:
    mom = WorkerMomentum(0.9)
    with pytest.raises(ValueError, match=r"grads\[1\] must hold 2 tensors"):
        mom([[torch.ones(2), torch.ones(3)], [torch.ones(2)]])
    assert mom.buffers is None
    out = mom([[torch.ones(2), torch.ones(3)], [torch.ones(2), torch.ones(3)]])  # then starts from zero as usual
    assert torch.allclose(out[0][0], torch.full((2,), 0.1))


def test_robust_server_refuses_a_wrong_aggregate_before_the_step() -> None:
    p = [torch.ones(2), torch.ones(3)]
    server = RobustServer(p, lambda X: X[0, :3], lr=0.1)  # one coordinate short
    before = _bits(p)
    with pytest.raises(ValueError, match=r"^RobustServer: the aggregator returned \[3\], expected .*shape \[5\]"):
        server.step(torch.ones(4, 5))
    _assert_unchanged(p, before)


def test_masked_sgd_refuses_params_sharing_memory_across_groups_before_any_step():
    """One native call per group: memory shared between groups is refused before the first group is stepped."""
    a = torch.nn.Parameter(torch.zeros(3))
    buffer = torch.zeros(10)
    b1, b2 = torch.nn.Parameter(buffer[0:6]), torch.nn.Parameter(buffer[4:10])
    opt = MaskedSGD([{"params": [a]}, {"params": [b1, b2]}], lr=0.1)
    for p in (a, b1, b2):
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="share memory"):
        opt.step()
    assert torch.equal(a.detach(), torch.zeros(3))
