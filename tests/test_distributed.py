"""The DDP communication hook (robustagg.distributed) on CPU with gloo, in both modes.

The checks run in one pool of 5 spawned ranks (tests/rank_pool.py) with
process groups of 2, 3, 4 and 5 ranks. The failure tests (a rank that exits,
a rank that hangs) break their group, so each starts its own 2 ranks.
"""

from __future__ import annotations

import copy
import json
import os
import queue
import time

import pytest
import torch

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("needs torch.distributed with the gloo backend", allow_module_level=True)

import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

import robustagg
from robustagg.attacks import make_attack
from robustagg.distributed import CC_OPTIONS, RobustHookState, robust_hook

from rank_pool import DEADLINE, Pool, free_port, group, init

WORLD = 5
BUCKET_MB = 0.0005  # ~62 float64 values per bucket: the test model spans many buckets of odd sizes
HERE = __name__
COORDINATE_RULES = ["mean", "cm", "tm", "meamed"]
DISTANCE_RULES = ["krum", "mkrum", "gm", "cc", "mda", "monna", "smea", "caf"]


# ---------------------------------------------------------------------------
# Helpers run inside the ranks


ODD_WIDTHS = (16, 31, 29, 23, 19, 4)  # many parameters of odd sizes: buckets that n does not divide


def make_rule(name: str, f: int = 0) -> robustagg.Aggregator:
    """The rule of a name as the distributed paths build it: f where the rule takes one, CC_OPTIONS for cc."""
    return robustagg.make_aggregator(name, f, f_if_used=True, **(CC_OPTIONS if name == "cc" else {}))


def _model(seed: int = 0, dtype: torch.dtype = torch.float64, widths: tuple[int, ...] = ODD_WIDTHS) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1]).to(dtype)


def _batch(rank: int, step: int, n: int = 16, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-specific data from a shared teacher: the ranks' gradients differ."""
    g = torch.Generator().manual_seed(1000 * rank + step)
    teacher = torch.Generator().manual_seed(7)
    W = torch.randn(16, 4, generator=teacher, dtype=dtype)
    x = torch.randn(n, 16, generator=g, dtype=dtype) + 0.3 * rank
    return x, (x @ W).argmax(1)


def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(model(x), y)


def _flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad])


def _gather_rows(x: torch.Tensor, pg) -> torch.Tensor:
    """(world, d): every rank's x, through a collective of its own (not the hook)."""
    rows = [torch.empty_like(x) for _ in range(dist.get_world_size(pg))]
    dist.all_gather(rows, x, group=pg)
    return torch.stack(rows)


def rule_f(rule: str, n: int) -> int:
    """The largest f the rule takes at n ranks (so trimming rules trim)."""
    if rule in ("tm", "meamed", "mda", "monna", "smea", "caf"):
        return (n - 1) // 2
    if rule in ("krum", "mkrum"):
        return (n - 3) // 2
    return 0


def _counting(hook):
    """The hook, also recording the number of buckets of the last backward and their sizes."""
    seen = {"buckets": 0, "sizes": []}

    def wrapped(state, bucket):
        if bucket.index() == 0:
            seen["sizes"] = []
        seen["buckets"] = bucket.index() + 1
        seen["sizes"].append(bucket.buffer().numel())
        return hook(state, bucket)

    return wrapped, seen


# ---------------------------------------------------------------------------
# Tasks: run on every rank of the pool, return picklable results (None outside the group)


def task_rule_on_stacked_gradients(
    size: int,
    rule: str,
    mode: str = "sharded",
    beta: float = 0.0,
    attack: str | None = None,
    steps: int = 3,
    widths: tuple[int, ...] = ODD_WIDTHS,
    biases_only: bool = False,
) -> dict | None:
    """Hooked DDP gradients vs the rule on the stacked per-rank whole-model vectors, over SGD steps.

    The reference gathers the ranks' local gradients with a collective of its
    own, applies worker momentum and the attack to the stacked rows as the
    single-process line does, and calls a fresh copy of the rule object, which
    keeps centered clipping's center (the previous aggregate) across steps.
    """
    pg = group(size)
    if pg is None:
        return None
    rank = dist.get_rank(pg)
    f = rule_f(rule, size)
    byzantine = [size - 1] if attack else []
    state = RobustHookState(
        make_rule(rule, f),
        process_group=pg,
        momentum=beta,
        mode=mode,
        attack=make_attack(attack) if attack else None,
        byzantine_ranks=byzantine,
    )
    reference = make_rule(rule, f)
    threat = make_attack(attack) if attack else None
    module = _model(widths=widths)
    if biases_only:  # frozen weights are not in DDP's buckets: tiny buckets
        for layer in module:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.requires_grad_(False)
    model = DDP(module, bucket_cap_mb=BUCKET_MB, process_group=pg)
    hook, seen = _counting(robust_hook)
    model.register_comm_hook(state, hook)
    local = copy.deepcopy(model.module)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    momentum = robustagg.optim.WorkerMomentum(beta)
    out = {
        "errors": [],
        "bits_equal": [],
        "ranks_differ": False,
        "buckets": [],
        "sizes": [],
        "bytes": [],
        "dim": sum(p.numel() for p in local.parameters()),
        "finite": True,
    }
    for step in range(steps):
        x, y = _batch(rank, step)
        local.load_state_dict(model.module.state_dict())
        local.zero_grad()
        _loss(local, x, y).backward()
        rows = _gather_rows(_flat_grad(local), pg)
        sent = momentum(rows) if beta > 0 else rows
        if threat is not None:
            honest = [r for r in range(size) if r not in byzantine]
            sent = sent.clone()
            sent[byzantine] = threat(sent[honest], sent[byzantine])
        want = reference(sent.clone())
        model.zero_grad()
        _loss(model, x, y).backward()
        got = _flat_grad(model)
        out["finite"] &= bool(torch.isfinite(got).all())
        out["bits_equal"].append(bool(torch.equal(got, want)))
        out["errors"].append(float((got - want).abs().max() / want.abs().max()))
        out["ranks_differ"] |= not bool((_gather_rows(got, pg) == got).all())
        out["buckets"].append(seen["buckets"])
        out["sizes"].append(list(seen["sizes"]))
        out["bytes"].append(state.last.sent_bytes)
        out["exposed"] = state.last.exposed
        opt.step()
    out["steps"] = state.steps
    out["stats"] = state.total.aggregation > 0 and state.total.communication > 0
    return out


def task_cc_second_step_center(size: int, mode: str) -> dict | None:
    """Centered clipping's second step starts from the first step's aggregate (not from zeros)."""
    pg = group(size)
    if pg is None:
        return None
    rank = dist.get_rank(pg)
    tau = 0.01  # small enough that the rows are clipped and the center matters
    state = RobustHookState(robustagg.CenteredClip(tau, iters=3), process_group=pg, mode=mode)
    model = DDP(_model(), bucket_cap_mb=BUCKET_MB, process_group=pg)
    model.register_comm_hook(state, robust_hook)
    local = copy.deepcopy(model.module)
    grads = []
    for step in range(2):
        x, y = _batch(rank, step)
        local.zero_grad()
        _loss(local, x, y).backward()
        grads.append(_gather_rows(_flat_grad(local), pg))
        model.zero_grad()
        _loss(model, x, y).backward()  # no optimizer step: both steps see the same parameters
        if step == 0:
            first = _flat_grad(model).clone()
    second = _flat_grad(model)
    from_first = robustagg.centered_clip(grads[1], first, tau, 3)
    from_zero = robustagg.centered_clip(grads[1], torch.zeros_like(first), tau, 3)
    return {
        "from_first": float((second - from_first).abs().max() / from_first.abs().max()),
        "from_zero": float((second - from_zero).abs().max() / from_zero.abs().max()),
    }


def task_hook_error_fails_backward(size: int, mode: str) -> str | None:
    """A rule error at the last bucket fails the pending futures: backward raises, nothing waits forever."""
    pg = group(size)
    if pg is None:
        return None
    rank = dist.get_rank(pg)
    state = RobustHookState("gm", process_group=pg, mode=mode)
    model = DDP(_model(), bucket_cap_mb=BUCKET_MB, process_group=pg)
    model.register_comm_hook(state, robust_hook)
    _loss(model, *_batch(rank, 0)).backward()
    state.aggregator.weights = torch.ones(size + 1)  # checked when the coefficients are computed
    model.zero_grad()
    try:
        _loss(model, *_batch(rank, 1)).backward()
    except Exception as exc:  # noqa: BLE001  (the message is what the test checks)
        return str(exc)
    return "no error"


def task_mismatch(size: int, what: str) -> str | None:
    """Ranks that disagree: another model (DDP's own check at construction) or other hook arguments (the
    hook's check on the first step)."""
    pg = group(size)
    if pg is None:
        return None
    rank = dist.get_rank(pg)
    odd = rank == size - 1
    widths = (16, 8, 4) if what == "model" and odd else ODD_WIDTHS
    tol = 1e-3 if what == "option" and odd else 1e-10  # an option of the rule that differs
    rule = "mean" if what == "rule" and odd else robustagg.GeometricMedian(tol=tol)
    mode = "replicated" if what == "mode" and odd else "sharded"
    try:
        model = DDP(_model(widths=widths), bucket_cap_mb=BUCKET_MB, process_group=pg)
        model.register_comm_hook(RobustHookState(rule, process_group=pg, mode=mode), robust_hook)
        _loss(model, *_batch(rank, 0)).backward()
    except Exception as exc:  # noqa: BLE001  (the message is what the test checks)
        return str(exc)
    return "no error"


def task_attack_only_on_byzantine_ranks(size: int, mode: str) -> str | None:
    """The attack given to the Byzantine rank only, as replicated mode allows."""
    pg = group(size)
    if pg is None:
        return None
    byzantine = dist.get_rank(pg) == size - 1
    try:
        RobustHookState(
            "cm", process_group=pg, mode=mode, byzantine_ranks=[size - 1], attack="alie" if byzantine else None
        )
    except ValueError as exc:
        return str(exc)
    return "no error"


def task_byzantine_training(size: int, rule: str, attack: str, mode: str, steps: int = 60) -> dict | None:
    pg = group(size)
    if pg is None:
        return None
    rank = dist.get_rank(pg)
    state = RobustHookState(
        make_rule(rule, 1), process_group=pg, attack=attack, byzantine_ranks=[size - 1], momentum=0.5, mode=mode
    )
    model = DDP(_model(dtype=torch.float32, widths=(16, 32, 32, 4)), bucket_cap_mb=BUCKET_MB, process_group=pg)
    model.register_comm_hook(state, robust_hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    held_out = _batch(0, 10_000, n=256, dtype=torch.float32)  # the same honest evaluation data on every rank
    with torch.no_grad():
        before = float(_loss(model.module, *held_out))
    for step in range(steps):
        model.zero_grad()
        _loss(model, *_batch(rank, step, dtype=torch.float32)).backward()
        opt.step()
    with torch.no_grad():
        after = float(_loss(model.module, *held_out))
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    return {"before": before, "after": after, "finite": finite}


# ---------------------------------------------------------------------------
# Tests on the pool


@pytest.fixture(scope="module")
def pool():
    p = Pool(WORLD)
    yield p
    p.close()


def _assert_is_the_rule(rule: str, r: dict) -> None:
    """Bit for bit for the coordinate-wise rules, to 1e-12 relative for the distance rules; replicas agree."""
    assert not r["ranks_differ"], (rule, "ranks hold different aggregated gradients")
    if rule in COORDINATE_RULES:
        assert all(r["bits_equal"]), (rule, r["errors"])
    else:
        assert max(r["errors"]) < 1e-12, (rule, r["errors"])


def _rules_at(n: int) -> list[str]:
    return [r for r in COORDINATE_RULES + DISTANCE_RULES if not (r in ("krum", "mkrum") and n < 3)]


@pytest.mark.parametrize("size", [2, 3, 4, 5])
def test_sharded_hook_is_the_rule_on_the_stacked_gradients(pool: Pool, size: int) -> None:
    """Every rule, many buckets of sizes not divisible by n: bit for bit (coordinate) or to 1e-12 (distance)."""
    for rule in _rules_at(size):
        results = pool.run(f"{HERE}:task_rule_on_stacked_gradients", size=size, rule=rule)
        for r in results:
            _assert_is_the_rule(rule, r)
            assert r["exposed"] >= 0.0
            assert min(r["buckets"][1:]) >= 5, (rule, r["buckets"], r["sizes"])
            assert any(s % size for s in r["sizes"][-1]), (rule, "no bucket size indivisible by n", r["sizes"])
            assert r["steps"] == 3 and r["stats"], rule


@pytest.mark.parametrize("rule,attack", [("cm", None), ("tm", "nan"), ("krum", "nan"), ("cc", "inf"), ("gm", None)])
def test_sharded_hook_with_empty_shards(pool: Pool, rule: str, attack: str | None) -> None:
    """A bucket smaller than n (a 16-4 linear layer whose weight is frozen: 4 values on 5 ranks): rank 4's
    shard is empty."""
    for r in pool.run(
        f"{HERE}:task_rule_on_stacked_gradients", size=5, rule=rule, attack=attack, widths=(16, 4), biases_only=True
    ):
        assert r["sizes"][-1] == [4], r["sizes"]
        assert r["finite"]
        _assert_is_the_rule(rule, r)


@pytest.mark.parametrize("size", [3, 4])
def test_sharded_hook_sends_what_an_all_reduce_sends(pool: Pool, size: int) -> None:
    """Counted bytes per step on every rank: the all-to-all and the gather, 2(n-1)/n of the gradient plus
    the padding of short shards (and the distances' all-reduce)."""
    for rule in ("cm", "krum", "cc"):
        for rank, r in enumerate(pool.run(f"{HERE}:task_rule_on_stacked_gradients", size=size, rule=rule)):
            sizes, sent = r["sizes"][-1], r["bytes"][-1]
            expected = 0
            for s in sizes:  # rank sends all but its own shard, then its (padded) shard to the n - 1 others
                width = -(-s // size)
                own = max(0, min(width, s - rank * width))
                expected += (s - own + (size - 1) * width) * 8  # float64 values
            m = size + (rule == "cc")
            expected += 2 * (size - 1) * (m * m + m) * 8 // size if rule != "cm" else 0
            assert sent == expected, (rule, rank, sent, expected)
            all_reduce = 2 * (size - 1) / size * 8 * r["dim"]
            assert sent <= 1.1 * all_reduce, (rule, rank, sent / all_reduce)


@pytest.mark.parametrize("rule", ["mean", "cm", "krum", "gm", "cc"])
def test_replicated_hook_is_the_rule_on_the_stacked_gradients(pool: Pool, rule: str) -> None:
    for r in pool.run(f"{HERE}:task_rule_on_stacked_gradients", size=4, rule=rule, mode="replicated"):
        _assert_is_the_rule(rule, r)
        assert r["exposed"] == 0.0  # replicated mode finishes inside the hook
    for r in pool.run(
        f"{HERE}:task_rule_on_stacked_gradients", size=4, rule=rule, mode="replicated", attack="alie"
    ):  # the two-gather path of the Byzantine simulation
        _assert_is_the_rule(rule, r)


@pytest.mark.parametrize("mode", ["sharded", "replicated"])
@pytest.mark.parametrize("rule", ["mean", "cc"])
def test_worker_momentum_follows_the_recursion(pool: Pool, rule: str, mode: str) -> None:
    for r in pool.run(f"{HERE}:task_rule_on_stacked_gradients", size=4, rule=rule, beta=0.9, mode=mode):
        _assert_is_the_rule(rule, r)


@pytest.mark.parametrize("mode", ["sharded", "replicated"])
def test_centered_clipping_second_step_starts_from_the_first_aggregate(pool: Pool, mode: str) -> None:
    for r in pool.run(f"{HERE}:task_cc_second_step_center", size=3, mode=mode):
        assert r["from_first"] < 1e-12, r
        assert r["from_zero"] > 1e-3, r  # the check can tell the two centers apart


@pytest.mark.parametrize(
    "rule,attack",
    [
        ("cm", "nan"),
        ("tm", "inf"),
        ("krum", "nan"),
        ("gm", "inf"),
        ("cc", "nan"),
        ("cm", "alie"),
        ("cc", "ipm"),
        ("mkrum", "sign_flip"),
    ],
)
def test_sharded_attack_simulation_is_the_attack_on_the_stacked_rows(pool: Pool, rule: str, attack: str) -> None:
    """A shard owner's attack on its shard equals the attack on the whole vectors (NaN/inf rows included)."""
    for r in pool.run(f"{HERE}:task_rule_on_stacked_gradients", size=5, rule=rule, attack=attack, beta=0.5):
        assert r["finite"]
        _assert_is_the_rule(rule, r)


@pytest.mark.parametrize("mode", ["sharded", "replicated"])
@pytest.mark.parametrize("rule,attack", [("cm", "nan"), ("cc", "alie")])
def test_byzantine_rank_does_not_poison_the_model(pool: Pool, rule: str, attack: str, mode: str) -> None:
    for r in pool.run(f"{HERE}:task_byzantine_training", size=4, rule=rule, attack=attack, mode=mode):
        assert r["finite"]
        assert r["after"] < 0.5 * r["before"], r


def test_mean_rule_is_poisoned_by_a_nan_rank(pool: Pool) -> None:
    """The control: the same attack defeats the plain mean."""
    for r in pool.run(f"{HERE}:task_byzantine_training", size=4, rule="mean", attack="nan", mode="sharded", steps=2):
        assert not r["finite"]


@pytest.mark.parametrize("mode", ["sharded", "replicated"])
def test_rule_error_fails_backward_instead_of_waiting(pool: Pool, mode: str) -> None:
    for message in pool.run(f"{HERE}:task_hook_error_fails_backward", size=3, mode=mode):
        assert "geometric_median: weights must have shape" in message, message


@pytest.mark.parametrize(
    "what,match",
    [
        ("rule", "other RobustHookState arguments"),
        ("option", "other RobustHookState arguments"),
        ("mode", "other RobustHookState arguments"),
        ("model", "DDP expects same model across all ranks"),
    ],
)
def test_ranks_that_disagree_get_a_clear_error(pool: Pool, what: str, match: str) -> None:
    for message in pool.run(f"{HERE}:task_mismatch", size=3, what=what):
        assert match in message, message


def test_sharded_mode_needs_the_attack_on_every_rank(pool: Pool) -> None:
    """In sharded mode an honest rank owns a shard of the Byzantine rows, so it simulates the attack too."""
    sharded = pool.run(f"{HERE}:task_attack_only_on_byzantine_ranks", size=3, mode="sharded")
    assert all("in sharded mode every rank needs the attack" in m for m in sharded[:2]), sharded
    assert sharded[2] == "no error"
    assert pool.run(f"{HERE}:task_attack_only_on_byzantine_ranks", size=3, mode="replicated") == ["no error"] * 3


# ---------------------------------------------------------------------------
# A rank that exits or hangs: the others fail within the process group's timeout


def _fault_rank(rank: int, world: int, port: int, fault: str, mode: str, results) -> None:
    init(rank, world, port, timeout_s=4)
    model = DDP(_model(), bucket_cap_mb=BUCKET_MB)
    model.register_comm_hook(RobustHookState("cm", mode=mode), robust_hook)
    for step in range(2):  # the second forward rebuilds the buckets, itself a collective
        _loss(model, *_batch(rank, step)).backward()
    if rank == world - 1:
        if fault == "exit":
            os._exit(0)
        time.sleep(60)  # hangs; the parent kills it
    start = time.monotonic()
    try:
        _loss(model, *_batch(rank, 2)).backward()
        results.put((rank, "no error", time.monotonic() - start))
    except Exception as exc:  # noqa: BLE001  (the message is what the test checks)
        results.put((rank, str(exc), time.monotonic() - start))
    results.close()
    results.join_thread()  # flush the queue: os._exit does not
    os._exit(0)  # the group is broken: skip its teardown


@pytest.mark.parametrize("mode", ["sharded", "replicated"])
@pytest.mark.parametrize("fault", ["exit", "hang"])
def test_dead_or_hung_rank_makes_the_others_fail(fault: str, mode: str) -> None:
    world = 2
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_fault_rank, args=(r, world, port, fault, mode, results), daemon=True) for r in range(world)
    ]
    for p in procs:
        p.start()
    try:
        rank, message, seconds = results.get(timeout=DEADLINE)
    except queue.Empty:
        pytest.fail(f"{fault}: the surviving rank neither finished nor failed within {DEADLINE} s")
    finally:
        for p in procs:
            p.join(timeout=1 if fault == "hang" else 10)
            if p.is_alive():
                p.kill()
                p.join()
    assert rank == 0
    assert "robust_hook: rank 0 could not" in message and "bucket" in message, message
    assert seconds < 4 + 5, f"failed after {seconds:.1f} s, the timeout is 4 s"


# ---------------------------------------------------------------------------
# Arguments (a one-rank group in this process)


@pytest.fixture
def one_rank_group():
    store = dist.HashStore()
    dist.init_process_group("gloo", rank=0, world_size=1, store=store)
    yield
    dist.destroy_process_group()


def test_state_needs_an_initialised_group() -> None:
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        RobustHookState("mean")


def test_bad_arguments_raise(one_rank_group) -> None:
    cases = [
        (dict(aggregator="median"), ValueError, "unknown rule 'median'"),
        (dict(aggregator="bulyan"), ValueError, "bulyan is not supported"),
        (dict(aggregator=robustagg.Bulyan(0)), ValueError, "Bulyan is not supported"),
        (dict(aggregator="dnc"), ValueError, "dnc is not supported"),
        (dict(aggregator="foolsgold"), ValueError, "foolsgold is not supported"),
        (dict(aggregator=robustagg.FLTrust()), TypeError, "aggregator must be a rule name or one of Mean, "),
        (dict(aggregator=robustagg.MDA(1)), ValueError, r"mda: f=1 needs n > 2\*f, got n=1"),
        (dict(aggregator="mean", attack="minmax"), ValueError, "needs the whole vector"),
        (dict(aggregator=robustagg.Clip(1.0) >> robustagg.Mean()), ValueError, "pipelines"),
        (dict(aggregator=lambda X: X.mean(0)), TypeError, "aggregator must be"),
        (dict(aggregator=robustagg.CenteredClip(1.0, center=torch.zeros(3))), ValueError, "preset center"),
        (dict(aggregator=robustagg.Krum(1)), ValueError, r"krum: f=1 needs n > 2\*f \+ 2, got n=1"),
        (dict(aggregator="tm", f=-1), ValueError, "f must be >= 0"),
        (dict(aggregator="mean", momentum=1.0), ValueError, r"momentum must be in \[0, 1\)"),
        (dict(aggregator="mean", momentum="0.9"), TypeError, "momentum must be a real number"),
        (dict(aggregator="mean", byzantine_ranks=[1]), ValueError, r"byzantine_ranks entries must be in \[0, 1\)"),
        (dict(aggregator="mean", byzantine_ranks=[0]), ValueError, "leaves no honest rank"),
        (dict(aggregator="mean", byzantine_ranks="0"), TypeError, "byzantine_ranks must be a sequence"),
        (dict(aggregator="mean", byzantine=True), ValueError, "disagrees with byzantine_ranks"),
        (dict(aggregator="mean", byzantine=1), TypeError, "byzantine must be a bool"),
        (dict(aggregator="mean", attack="mimic"), ValueError, "needs the whole vector"),
        (
            dict(aggregator="mean", attack=robustagg.attacks.OptimalALIE(robustagg.Mean())),
            ValueError,
            "needs the whole vector",
        ),
        (dict(aggregator="mean", attack="nope"), ValueError, "unknown attack"),
        (dict(aggregator="mean", attack=3), TypeError, "attack must be"),
        (dict(aggregator="mean", process_group="world"), TypeError, "process_group"),
        (dict(aggregator="mean", mode="ring"), ValueError, "mode must be one of sharded, replicated"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            RobustHookState(**kwargs)
    with pytest.raises(ValueError, match="tau"):  # refused by CenteredClip itself, before the state sees it
        RobustHookState(robustagg.CenteredClip(-1.0))
    with pytest.raises(TypeError, match="state must be a RobustHookState"):
        robust_hook(None, None)  # type: ignore[arg-type]
    state = RobustHookState("cc")  # a valid state: f, the world and the rule agree
    assert state.world_size == 1 and not state.byzantine and state.is_distance_rule and state.mode == "sharded"


# ---------------------------------------------------------------------------
# The example trainer


@pytest.mark.parametrize("mode", ["sharded", "replicated"])
def test_example_trains_with_a_byzantine_rank(tmp_path, mode: str) -> None:
    pytest.importorskip("sklearn", reason="the example's data set ships with scikit-learn")
    from robustagg.cli import main

    out = tmp_path / "run.json"  # through the command line: robustagg train ddp -> robustagg.examples.ddp_train
    code = main(
        [
            *"train ddp --nproc 3 --agg cc --byzantine-ranks 2 --attack alie --mode".split(),
            mode,
            *"--steps 60 --eval-every 30 --json".split(),
            str(out),
            *"--timeout 60".split(),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["world_size"] == 3 and result["byzantine_ranks"] == [2] and result["mode"] == mode
    assert result["final_test_accuracy"] > 0.5
    assert result["seconds_per_step"]["communication"] > 0
    assert result["sent_bytes_per_step"] > 0
