"""The FSDP2 robust reduce-scatter (robustagg.distributed.fsdp) on CPU with gloo.

FSDP2 (``fully_shard``) reduces each unit's gradients with one reduce-scatter
per backward; :class:`RobustReduceScatter` replaces it. The references are
robustagg's single-process rules on the stacked per-rank gradients of a plain
copy of the model, gathered with a collective of their own. The checks run in
one pool of 4 spawned ranks (tests/rank_pool.py) with groups of 2, 3 and 4.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("needs torch.distributed with the gloo backend", allow_module_level=True)
fsdp = pytest.importorskip("torch.distributed.fsdp")
if not hasattr(fsdp, "fully_shard") or not hasattr(fsdp.FSDPModule, "set_custom_reduce_scatter"):
    pytest.skip("needs FSDP2 with set_custom_reduce_scatter", allow_module_level=True)

from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard

import robustagg
from robustagg.distributed import CC_OPTIONS, RobustReduceScatter, use_robust_reduce_scatter

from rank_pool import Pool, group

WORLD = 4
HERE = __name__
COORDINATE_RULES = ["mean", "cm", "tm", "meamed"]
TAU, ITERS = 0.05, 3  # centered clipping: a radius small enough that the rows are clipped
WIDTHS = (6, 7, 5, 3)  # output sizes 7, 5, 3: no n in 2..4 divides 7 or 5, so FSDP pads dim 0
DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ---------------------------------------------------------------------------
# Helpers run inside the ranks


def make_rule(name: str, f: int = 0) -> robustagg.Aggregator:
    """The rule of a name as the distributed paths build it: f where the rule takes one, CC_OPTIONS for cc."""
    return robustagg.make_aggregator(name, f, f_if_used=True, **(CC_OPTIONS if name == "cc" else {}))


def _model(dtype: torch.dtype, seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for a, b in zip(WIDTHS[:-1], WIDTHS[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1]).to(dtype)


def _batch(rank: int, step: int, dtype: torch.dtype, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-specific data from a shared teacher: the ranks' gradients differ."""
    g = torch.Generator().manual_seed(1000 * rank + step)
    teacher = torch.Generator().manual_seed(7)
    W = torch.randn(WIDTHS[0], WIDTHS[-1], generator=teacher, dtype=dtype)
    x = torch.randn(n, WIDTHS[0], generator=g, dtype=dtype) + 0.3 * rank
    return x, (x @ W).argmax(1)


def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(model(x), y)


def _gather_rows(x: torch.Tensor, pg) -> torch.Tensor:
    """(n, d): every rank's x, through a collective of its own (not the comm under test)."""
    rows = [torch.empty_like(x) for _ in range(dist.get_world_size(pg))]
    dist.all_gather(rows, x, group=pg)
    return torch.stack(rows)


class _Recorder:
    """Passes FSDP's calls through to the comm under test, noting the op and the output size of each."""

    def __init__(self, comm: RobustReduceScatter) -> None:
        self.comm, self.calls = comm, []

    def allocate(self, size, *, dtype, device):
        return self.comm.allocate(size, dtype=dtype, device=device)

    def __call__(self, output_tensor, input_tensor, group, op, async_op=False):
        code = getattr(op, "op", op)
        self.calls.append(
            {
                "op": str(code).split(".")[-1],
                "factor": getattr(op, "factor", None),
                "s": output_tensor.numel(),
                "element": input_tensor.element_size(),
                "input_max": float(input_tensor.abs().max()),
            }
        )
        return self.comm(output_tensor, input_tensor, group, op, async_op)


class _Setup:
    """An FSDP model (each Linear a unit, then the root) on the group's mesh, a plain copy of it, and the comms."""

    def __init__(
        self, pg, dtype: torch.dtype, rule, f: int = 0, layerwise: bool = False, divide_factor: float | None = None
    ) -> None:
        self.pg, self.rank = pg, dist.get_rank(pg)
        self.dtype = dtype
        self.model = _model(dtype)
        self.local = copy.deepcopy(self.model)  # the same initial parameters: every rank seeds alike
        mesh = DeviceMesh.from_group(pg, "cpu")
        self.units = [name for name, m in self.model.named_children() if isinstance(m, torch.nn.Linear)]
        for name in self.units:
            fully_shard(self.model.get_submodule(name), mesh=mesh)
        fully_shard(self.model, mesh=mesh)
        # The factor reaches FSDP too, on every unit (FSDP's own setter acts on one unit).
        self.comms = use_robust_reduce_scatter(
            self.model, rule, f=f, layerwise=layerwise, gradient_divide_factor=divide_factor
        )
        self.recorders = {name: _Recorder(c) for name, c in self.comms.items()}
        for name, rec in self.recorders.items():
            self.model.get_submodule(name).set_custom_reduce_scatter(rec)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.5)
        # Slices of each unit's parameters in the flat (parameter-order) vector.
        self.slices, start = {}, 0
        for name in self.units:
            width = sum(p.numel() for p in self.model.get_submodule(name).parameters())
            self.slices[name] = slice(start, start + width)
            start += width

    def step(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One SGD step: (the per-rank plain gradients (n, d), the FSDP gradient (d,), the parameters (d,))."""
        x, y = _batch(self.rank, step, self.dtype)
        params = [p.full_tensor() for p in self.model.parameters()]
        with torch.no_grad():
            for q, w in zip(self.local.parameters(), params):
                q.copy_(w)
        self.local.zero_grad()
        _loss(self.local, x, y).backward()
        rows = _gather_rows(torch.cat([p.grad.reshape(-1) for p in self.local.parameters()]), self.pg)
        self.model.zero_grad()
        _loss(self.model, x, y).backward()
        got = torch.cat([p.grad.full_tensor().reshape(-1) for p in self.model.parameters()])
        self.opt.step()
        return rows, got, torch.cat([w.reshape(-1) for w in params])

    def shard_numels(self) -> dict[str, int]:
        """Per unit: the largest local shard over the ranks, summed over its parameters (FSDP's padded shard)."""
        local = torch.tensor(
            [[p.to_local().numel() for p in self.model.get_submodule(name).parameters()] for name in self.units],
            dtype=torch.int64,
        ).reshape(-1)
        dist.all_reduce(local, op=dist.ReduceOp.MAX, group=self.pg)
        out, k = {}, 0
        for name in self.units:
            count = len(list(self.model.get_submodule(name).parameters()))
            out[name] = int(local[k : k + count].sum())
            k += count
        return out

    def stats(self) -> dict:
        return {
            name: {"calls": c.calls, "sent_bytes": c.sent_bytes, "seen": list(self.recorders[name].calls)}
            for name, c in self.comms.items()
        }


def _relerr(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def _ulps(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest |got - want| in units of want's last place."""
    spacing = torch.nextafter(want.abs(), torch.full_like(want, float("inf"))) - want.abs()
    return float(((got - want).abs() / spacing).max())


def _f(rule: str, n: int) -> int:
    return (n - 1) // 2 if rule in ("tm", "meamed") else 0


# ---------------------------------------------------------------------------
# Tasks: run on every rank of the pool, return picklable results (None outside the group)


def _common(s: _Setup, rows0: torch.Tensor) -> dict:
    """What every task reports after its first step: the comms' counters and calls, the observed shard
    sizes, FSDP's pre-division of each unit's input, and whether the root holds parameters of its own."""
    stats = s.stats()
    pre = {}
    for name in s.units:
        seen = stats[name]["seen"]
        pre[name] = float(rows0[s.rank, s.slices[name]].abs().max()) / seen[0]["input_max"] if seen else None
    return {
        "stats": stats,
        "shards": s.shard_numels(),
        "pre": pre,
        "units": list(s.units),
        "unit_numel": {name: s.slices[name].stop - s.slices[name].start for name in s.units},
        "root_params": len(list(s.model.parameters(recurse=False))),
    }


def task_coordinate_rules(size: int, dtype: str, steps: int = 2) -> dict | None:
    """Each coordinate rule through FSDP vs the rule on the stacked whole-model gradients, over SGD steps."""
    pg = group(size)
    if pg is None:
        return None
    out = {}
    for rule in COORDINATE_RULES:
        f = _f(rule, size)
        s = _Setup(pg, DTYPES[dtype], rule, f=f)
        r = {"bits_equal": [], "errors": [], "ulps": []}
        params = []
        for step in range(steps):
            rows, got, w = s.step(step)
            want = make_rule(rule, f).aggregate(rows)  # a fresh rule on the (n, d) matrix
            r["bits_equal"].append(bool(torch.equal(got, want)))
            r["errors"].append(_relerr(got, want))
            r["ulps"].append(_ulps(got, want))
            params.append(w)
            if step == 0:
                r.update(_common(s, rows))
        r["params_changed"] = not torch.equal(params[0], params[1])
        out[rule] = r
    return out


CATALOGUE_RULES = ("mda", "monna", "smea", "caf")


def task_layerwise(size: int, rule: str, steps: int = 2) -> dict | None:
    """A distance rule per FSDP unit (float64: SUM with pre-division) vs the rule on each unit's stacked rows.

    Centered clipping's reference chains the unit's centers explicitly: zeros,
    then the unit's first-step aggregate; ``from_zero`` is the second step
    against a zero center, to show the check can tell the centers apart.
    """
    pg = group(size)
    if pg is None:
        return None
    f = 1 if rule in CATALOGUE_RULES else 0  # the catalogue's rules are the mean at f = 0
    agg = robustagg.CenteredClip(TAU, ITERS) if rule == "cc" else make_rule(rule, f)
    s = _Setup(pg, torch.float64, agg, layerwise=True)
    centers = {name: None for name in s.units}
    out = {"errors": [], "from_zero": [], "whole_model": []}
    for step in range(steps):
        rows, got, _ = s.step(step)
        errors, from_zero = {}, {}
        for name in s.units:
            X = rows[:, s.slices[name]]
            if rule == "cc":
                center = torch.zeros(X.shape[1], dtype=X.dtype) if centers[name] is None else centers[name]
                want = robustagg.centered_clip(X, center, TAU, ITERS)
                from_zero[name] = _relerr(robustagg.centered_clip(X, torch.zeros_like(center), TAU, ITERS), want)
                centers[name] = want
            else:
                want = make_rule(rule, f).aggregate(X)
            errors[name] = _relerr(got[s.slices[name]], want)
        out["errors"].append(errors)
        out["from_zero"].append(from_zero)
        if rule != "cc":  # the whole-model rule, which the layer-wise one is not
            out["whole_model"].append(_relerr(got, make_rule(rule, f).aggregate(rows)))
        if step == 0:
            out.update(_common(s, rows))
    return out


def task_divide_factor(size: int, dtype: str, k: float, rule: str) -> dict | None:
    """FSDP's gradient divide factor k on every unit: n/k times the rule's aggregate, whole-model for the
    coordinate median, per unit for centered clipping (not homogeneous: the pre-division must be undone
    with the factor FSDP used, not with n)."""
    pg = group(size)
    if pg is None:
        return None
    agg = robustagg.CenteredClip(TAU, ITERS) if rule == "cc" else rule
    s = _Setup(pg, DTYPES[dtype], agg, layerwise=rule == "cc", divide_factor=k)
    rows, got, _ = s.step(0)
    if rule == "cc":
        want = torch.cat(
            [
                robustagg.centered_clip(
                    rows[:, s.slices[name]], rows.new_zeros(rows[:, s.slices[name]].shape[1]), TAU, ITERS
                )
                for name in s.units
            ]
        )
    else:
        want = make_rule(rule).aggregate(rows)
    return {"error": _relerr(got, size / k * want), **_common(s, rows)}


def task_krum_with_too_few_ranks(size: int) -> str | None:
    """Krum(f=0) on 2 ranks, where robustagg.krum needs n > 2f + 2: the error, or "no error"."""
    pg = group(size)
    if pg is None:
        return None
    s = _Setup(pg, torch.float64, robustagg.Krum(0), layerwise=True)
    try:
        s.step(0)
    except ValueError as exc:
        return str(exc)
    return "no error"


# ---------------------------------------------------------------------------
# Tests on the pool


@pytest.fixture(scope="module")
def pool():
    p = Pool(WORLD)
    yield p
    p.close()


_RESULTS: dict = {}


def _run(pool: Pool, target: str, **kwargs) -> list:
    """pool.run, once per arguments: the byte-count tests read the runs of the gradient tests."""
    key = (target, tuple(sorted(kwargs.items())))
    if key not in _RESULTS:
        _RESULTS[key] = pool.run(f"{HERE}:{target}", **kwargs)
    return _RESULTS[key]


def _ops(r: dict) -> set[str]:
    return {c["op"] for name in r["units"] for c in r["stats"][name]["seen"]}


def _post_is_power_of_two(r: dict, size: int) -> bool:
    """Whether FSDP's post-division (n / the observed pre-division, SUM op) is exact."""
    return all(math.frexp(size / p)[0] == 0.5 for p in r["pre"].values())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", [2, 3, 4])
def test_coordinate_rules_are_the_whole_model_rule(pool: Pool, size: int, dtype: str) -> None:
    """mean, cm, tm and meamed (largest f) through FSDP: the rule on the stacked whole-model gradients over 2
    SGD steps; float32 gets AVG, float64 SUM with FSDP's pre- and post-division, which the comm undoes.

    Bit for bit, except where FSDP's float64 post-division is by a factor that is not a power of two (n / 2 =
    1.5 at n = 3): the comm's multiplication by it and FSDP's division round twice, one ulp at most.
    """
    for r in _run(pool, "task_coordinate_rules", size=size, dtype=dtype):
        for rule in COORDINATE_RULES:
            got = r[rule]
            assert got["params_changed"], rule  # the second step ran on other parameters
            assert _ops(got) == ({"AVG"} if dtype == "float32" else {"SUM"}), (rule, _ops(got))
            if dtype == "float64":  # FSDP did divide the input: the comm's undoing it is under test
                assert all(p > 1.5 for p in got["pre"].values()), (rule, got["pre"])
            else:
                assert all(p == 1.0 for p in got["pre"].values()), (rule, got["pre"])
            # The mean is bit for bit at n = 3 too (verified; y = fl(S/3) survives fl(fl(1.5 y) / 1.5)).
            if rule == "mean" or dtype == "float32" or _post_is_power_of_two(got, size):
                assert all(got["bits_equal"]), (rule, got["errors"])
            else:
                assert max(got["ulps"]) <= 1.0, (rule, got["ulps"])


def test_root_unit_holds_no_parameters(pool: Pool) -> None:
    """Every Linear is a unit, so the root unit has no parameters and its comm is never called."""
    for r in _run(pool, "task_coordinate_rules", size=3, dtype="float64"):
        got = r["cm"]
        assert got["root_params"] == 0
        assert "" in got["stats"] and got["stats"][""]["calls"] == 0 and not got["stats"][""]["seen"]
        assert all(got["stats"][name]["calls"] == 1 for name in got["units"]), got["stats"]


def test_rule_objects_are_checked_at_the_group_size_not_before() -> None:
    """Rule objects with their own f or weights build without a group: their checks need the real n."""
    RobustReduceScatter(robustagg.Krum(1), layerwise=True)  # needs n >= 5
    RobustReduceScatter(robustagg.TrimmedMean(2))  # needs n >= 5
    RobustReduceScatter(robustagg.GeometricMedian(weights=torch.ones(6)), layerwise=True)
    RobustReduceScatter(robustagg.Mean(weights=torch.ones(6)))


def test_distance_rule_needs_layerwise() -> None:
    """A distance rule per unit is a different (layer-wise) rule: it must be asked for explicitly."""
    for agg in (robustagg.Krum(0), robustagg.GeometricMedian(), robustagg.CenteredClip(1.0), "mkrum", "gm", "cc"):
        with pytest.raises(ValueError, match="layerwise=True"):
            RobustReduceScatter(agg)
        RobustReduceScatter(copy.deepcopy(agg), layerwise=True)  # construction needs no process group


@pytest.mark.parametrize(
    "size,rule",
    [(3, "krum"), (4, "krum"), (2, "gm"), (3, "gm"), (4, "gm"), (2, "cc"), (3, "cc"), (4, "cc")]
    + [(3, "mda"), (4, "monna"), (3, "smea"), (4, "caf")],
)
def test_distance_rules_run_per_unit(pool: Pool, size: int, rule: str) -> None:
    """Each unit's FSDP gradient is the rule on that unit's stacked rows (to 1e-12, float64, 2 steps); for
    centered clipping the second step's center is the unit's first aggregate, not zeros."""
    for r in _run(pool, "task_layerwise", size=size, rule=rule):
        assert _ops(r) == {"SUM"} and all(p > 1.5 for p in r["pre"].values()), (_ops(r), r["pre"])
        for step in r["errors"]:
            assert set(step) == set(r["units"]) and max(step.values()) < 1e-12, r["errors"]
        if rule == "cc":
            assert min(r["from_zero"][1].values()) > 1e-3, r["from_zero"]
        if rule == "gm" and size > 2:  # (two rows: both rules give their mean)
            assert min(r["whole_model"]) > 1e-6, r["whole_model"]  # the per-unit rule is another rule


def test_krum_refuses_a_group_too_small(pool: Pool) -> None:
    """As robustagg.krum does (and the DDP hook at construction): n > 2f + 2 or a ValueError."""
    for message in _run(pool, "task_krum_with_too_few_ranks", size=2):
        assert "needs n > 2*f + 2" in message, message


@pytest.mark.parametrize("rule", ["cm", "cc"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", [2, 3, 4])
def test_custom_divide_factor_scales_by_n_over_k(pool: Pool, size: int, dtype: str, rule: str) -> None:
    """set_gradient_divide_factor(k): float32 gets PREMUL_SUM(1/k), float64 SUM (with the same k given to the
    comm); both give n/k times the rule's aggregate."""
    k = 2 * size
    for r in _run(pool, "task_divide_factor", size=size, dtype=dtype, k=k, rule=rule):
        seen = [c for name in r["units"] for c in r["stats"][name]["seen"]]
        if dtype == "float32":
            assert {c["op"] for c in seen} == {"PREMUL_SUM"} and all(c["factor"] == 1 / k for c in seen), seen
            assert r["error"] < 1e-6, r["error"]
        else:
            assert {c["op"] for c in seen} == {"SUM"}, seen
            assert r["error"] < 1e-12, r["error"]


@pytest.mark.parametrize(
    "rule,dtype,size",
    [
        (rule, dtype, size)
        for rule, dtype in [
            ("cm", "float32"),
            ("cm", "float64"),
            ("krum", "float64"),
            ("gm", "float64"),
            ("cc", "float64"),
        ]
        for size in (2, 3, 4)
        if not (rule == "krum" and size < 3)
    ],
)
def test_sent_bytes_after_one_step(pool: Pool, size: int, rule: str, dtype: str) -> None:
    """(n-1) s values per call, s the unit's padded shard; plus the distances' all-reduce for distance rules."""
    if rule == "cm":
        results = [r["cm"] for r in _run(pool, "task_coordinate_rules", size=size, dtype=dtype)]
    else:
        results = _run(pool, "task_layerwise", size=size, rule=rule)
    m = size + (rule == "cc")
    extra = 0 if rule == "cm" else 2 * (size - 1) * ((m * m + m) * 8) // size
    for r in results:
        assert any(r["shards"][name] * size > r["unit_numel"][name] for name in r["units"]), "no padding"
        for name in r["units"]:
            stat = r["stats"][name]
            assert stat["calls"] == len(stat["seen"]) == 1, stat
            call = stat["seen"][0]
            assert call["s"] == r["shards"][name], (name, call, r["shards"])  # the shard FSDP holds
            assert call["element"] == DTYPES[dtype].itemsize, call
            assert stat["sent_bytes"] == (size - 1) * call["s"] * call["element"] + extra, (name, stat)


# ---------------------------------------------------------------------------
# Arguments, in this process


@pytest.fixture
def one_rank_group():
    store = dist.HashStore()
    dist.init_process_group("gloo", rank=0, world_size=1, store=store)
    yield dist.group.WORLD
    dist.destroy_process_group()


BAD_ARGUMENTS = [
    (dict(aggregator="tm", f=-1), ValueError, "f must be >= 0"),
    (dict(aggregator="tm", f=1.0), TypeError, "f must be an int"),
    (dict(aggregator="tm", f=True), TypeError, "f must be an int"),
    (dict(aggregator="cm", gradient_divide_factor=0), ValueError, "gradient_divide_factor must be finite and > 0"),
    (dict(aggregator="cm", gradient_divide_factor=-2.0), ValueError, "gradient_divide_factor must be"),
    (dict(aggregator="cm", gradient_divide_factor=True), TypeError, "gradient_divide_factor must be a real number"),
    (dict(aggregator="cm", gradient_divide_factor="4"), TypeError, "gradient_divide_factor must be a real number"),
    (dict(aggregator=robustagg.Bulyan(0)), ValueError, "Bulyan is not supported"),
    (dict(aggregator="bulyan"), ValueError, "bulyan is not supported"),
    (dict(aggregator=robustagg.Clip(1.0) >> robustagg.Mean()), ValueError, "pipelines"),
    (dict(aggregator=lambda X: X.mean(0)), TypeError, "aggregator must be"),
    (dict(aggregator="median"), ValueError, "unknown rule 'median'"),
]


def test_bad_arguments_raise() -> None:
    """Checked at construction, without a process group."""
    for kwargs, error, match in BAD_ARGUMENTS:
        with pytest.raises(error, match=match):
            RobustReduceScatter(**kwargs)
    with pytest.raises(ValueError, match="no FSDP unit"):
        use_robust_reduce_scatter(_model(torch.float32), "cm")


def test_bad_arguments_raise_through_use_robust_reduce_scatter(one_rank_group) -> None:
    """The same checks on a real FSDP model (one rank), before any unit's reduce-scatter is replaced."""
    mesh = DeviceMesh.from_group(one_rank_group, "cpu")
    model = _model(torch.float32)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for kwargs, error, match in BAD_ARGUMENTS:
        with pytest.raises(error, match=match):
            use_robust_reduce_scatter(model, **kwargs)
    comms = use_robust_reduce_scatter(model, "cm")
    assert set(comms) == {"", "0", "2", "4"}
    assert len({id(c.aggregator) for c in comms.values()}) == len(comms)  # each unit its own rule object


def test_direct_calls_check_their_arguments(one_rank_group) -> None:
    """async_op, a wrong input size and an unknown op are errors; a valid one-rank call returns the row."""
    comm = RobustReduceScatter("cm")
    out, inp = torch.empty(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="async_op=True is not supported"):
        comm(out, inp, one_rank_group, dist.ReduceOp.AVG, async_op=True)
    with pytest.raises(ValueError, match="input holds 4 values, not n"):
        comm(out, torch.zeros(4, dtype=torch.float64), one_rank_group, dist.ReduceOp.AVG)
    with pytest.raises(ValueError, match="not supported"):
        comm(out, inp, one_rank_group, dist.ReduceOp.MAX)
    assert comm.calls == 0
    comm(out, inp, one_rank_group, dist.ReduceOp.AVG)
    assert torch.equal(out, inp) and comm.calls == 1 and comm.sent_bytes == 0


# ---------------------------------------------------------------------------
# The example trainer


def test_example_trains_with_fsdp(tmp_path) -> None:
    """robustagg train ddp --fsdp: the coordinate median survives a label-flipping rank of 3."""
    pytest.importorskip("sklearn", reason="the example's data set ships with scikit-learn")
    from robustagg.cli import main

    out = tmp_path / "run.json"
    code = main(
        [
            *(
                "train ddp --nproc 3 --fsdp --agg cm --byzantine-ranks 2 --attack label_flip "
                "--steps 60 --eval-every 30 --json"
            ).split(),
            str(out),
            *"--timeout 60".split(),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["mode"] == "fsdp" and result["world_size"] == 3 and result["byzantine_ranks"] == [2]
    assert result["final_test_accuracy"] > 0.5
    assert result["sent_bytes_per_step"] > 0


def test_example_refuses_fsdp_with_momentum(capsys) -> None:
    """FSDP has no worker momentum: a clear error before any rank starts."""
    from robustagg.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "ddp", "--nproc", "3", "--fsdp", "--momentum", "0.9", "--steps", "1"])
    assert exit_.value.code == 2
    assert "--fsdp has no worker momentum" in capsys.readouterr().err
