"""The DDP communication hook (robustagg.distributed) on CPU with gloo.

Most checks run in one pool of 4 spawned ranks that share a process group
and take tasks through queues: spawning and importing torch costs seconds
per process on a small machine, a task a fraction of one. The failure tests
(a rank that exits, a rank that hangs) break their group, so each starts
its own 2 ranks. Every wait on a child has a deadline, after which the
children are killed and the test fails: nothing here can hang.
"""

from __future__ import annotations

import copy
import json
import os
import queue
import socket
import time
import traceback
from datetime import timedelta

import pytest
import torch

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("needs torch.distributed with the gloo backend", allow_module_level=True)

import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

import robustagg
from robustagg.distributed import RobustHookState, make_rule, robust_hook

WORLD = 4
DEADLINE = 60.0  # seconds for any task of the pool
BUCKET_MB = 0.0005  # ~125 float32 values per bucket: the test model spans several buckets


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, world: int, port: int, timeout_s: float) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))


# ---------------------------------------------------------------------------
# Helpers run inside the ranks


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
    )


def _batch(rank: int, step: int, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-specific data from a shared teacher: the ranks' gradients differ."""
    g = torch.Generator().manual_seed(1000 * rank + step)
    teacher = torch.Generator().manual_seed(7)
    W = torch.randn(16, 4, generator=teacher)
    x = torch.randn(n, 16, generator=g) + 0.3 * rank
    return x, (x @ W).argmax(1)


def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(model(x), y)


def _flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _gather_rows(x: torch.Tensor) -> torch.Tensor:
    """(world, d): every rank's x, through a collective of its own (not the hook)."""
    rows = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, x)
    return torch.stack(rows)


def _counting(hook):
    """The hook, also recording the number of buckets of the last backward."""
    seen = {"buckets": 0}

    def wrapped(state, bucket):
        seen["buckets"] = bucket.index() + 1
        return hook(state, bucket)

    return wrapped, seen


# ---------------------------------------------------------------------------
# Tasks: run on every rank of the pool, return picklable results


def task_mean_equals_allreduce(rank: int, world: int) -> float:
    plain, hooked = DDP(_model(), bucket_cap_mb=BUCKET_MB), DDP(_model(), bucket_cap_mb=BUCKET_MB)
    hooked.register_comm_hook(RobustHookState("mean"), robust_hook)
    worst = 0.0
    for step in range(3):  # DDP rebuilds its buckets after the first backward
        x, y = _batch(rank, step)
        for m in (plain, hooked):
            m.zero_grad()
            _loss(m, x, y).backward()
        worst = max(worst, float((_flat_grad(plain) - _flat_grad(hooked)).abs().max()))
    return worst


def task_rule_matches_single_process(rank: int, world: int, rule: str, beta: float = 0.0) -> dict:
    """Hooked DDP gradients vs robustagg on the gathered per-rank vectors, over 3 SGD steps."""
    state = RobustHookState(rule, momentum=beta, f=0)
    reference = make_rule(rule, 0)
    model = DDP(_model(), bucket_cap_mb=BUCKET_MB)
    hook, seen = _counting(robust_hook)
    model.register_comm_hook(state, hook)
    local = copy.deepcopy(model.module)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    momentum = robustagg.optim.WorkerMomentum(beta)
    out = {"max_error": 0.0, "ranks_differ": False, "buckets": []}
    for step in range(3):
        x, y = _batch(rank, step)
        local.load_state_dict(model.module.state_dict())
        local.zero_grad()
        _loss(local, x, y).backward()
        rows = _gather_rows(_flat_grad(local))
        sent = momentum(rows) if beta > 0 else rows
        want = reference(sent.clone())
        model.zero_grad()
        _loss(model, x, y).backward()
        got = _flat_grad(model)
        scale = float(want.abs().max())
        out["max_error"] = max(out["max_error"], float((got - want).abs().max()) / scale)
        out["ranks_differ"] |= not bool((_gather_rows(got) == got).all())
        out["buckets"].append(seen["buckets"])
        opt.step()
    out["steps"], out["timers"] = state.steps, state.total.communication > 0 and state.total.aggregation > 0
    return out


def task_byzantine_training(rank: int, world: int, rule: str, attack: str, steps: int = 60) -> dict:
    state = RobustHookState(make_rule(rule, 1, tau=1.0, iters=3), attack=attack, byzantine_ranks=[world - 1],
                            momentum=0.5)
    model = DDP(_model(), bucket_cap_mb=BUCKET_MB)
    model.register_comm_hook(state, robust_hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    held_out = _batch(0, 10_000, n=256)  # the same honest evaluation data on every rank
    with torch.no_grad():
        before = float(_loss(model.module, *held_out))
    for step in range(steps):
        model.zero_grad()
        _loss(model, *_batch(rank, step)).backward()
        opt.step()
    with torch.no_grad():
        after = float(_loss(model.module, *held_out))
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    return {"before": before, "after": after, "finite": finite}


def task_hook_error_fails_backward(rank: int, world: int) -> str:
    """A rule error at the last bucket fails the pending futures: backward raises, nothing waits forever."""
    state = RobustHookState("gm")
    model = DDP(_model(), bucket_cap_mb=BUCKET_MB)
    model.register_comm_hook(state, robust_hook)
    _loss(model, *_batch(rank, 0)).backward()
    state.aggregator.weights = torch.ones(world + 1)  # checked when the coefficients are computed
    model.zero_grad()
    try:
        _loss(model, *_batch(rank, 1)).backward()
    except Exception as exc:  # noqa: BLE001  (the message is what the test checks)
        return str(exc)
    return "no error"


# ---------------------------------------------------------------------------
# The pool


def _pool_rank(rank: int, world: int, port: int, tasks, results) -> None:
    _init(rank, world, port, timeout_s=30)
    while True:
        item = tasks.get()
        if item is None:
            break
        name, kwargs = item
        try:
            results.put((rank, True, globals()[name](rank, world, **kwargs)))
        except BaseException:  # noqa: BLE001  (reported to the parent, which fails the test)
            results.put((rank, False, traceback.format_exc()))
    dist.barrier()  # leave together: a rank tearing gloo down early can abort another at exit
    dist.destroy_process_group()


class _Pool:
    def __init__(self, world: int) -> None:
        ctx = mp.get_context("spawn")
        port = _free_port()
        self.tasks = [ctx.Queue() for _ in range(world)]
        self.results = ctx.Queue()
        self.procs = [ctx.Process(target=_pool_rank, args=(r, world, port, self.tasks[r], self.results), daemon=True)
                      for r in range(world)]
        for p in self.procs:
            p.start()

    def run(self, name: str, **kwargs: object) -> list:
        for q in self.tasks:
            q.put((name, kwargs))
        out: dict[int, object] = {}
        deadline = time.monotonic() + DEADLINE
        while len(out) < len(self.tasks):
            try:
                rank, ok, value = self.results.get(timeout=max(deadline - time.monotonic(), 0.1))
            except queue.Empty:
                self.close()
                pytest.fail(f"{name}: ranks {sorted(set(range(len(self.tasks))) - set(out))} gave no result "
                            f"within {DEADLINE} s")
            if not ok:
                self.close()
                pytest.fail(f"{name} failed on rank {rank}:\n{value}")
            out[rank] = value
        return [out[r] for r in range(len(self.tasks))]

    def close(self) -> None:
        for q in self.tasks:
            q.put(None)
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()


@pytest.fixture(scope="module")
def pool():
    p = _Pool(WORLD)
    yield p
    p.close()


# ---------------------------------------------------------------------------
# Tests on the pool


def test_mean_rule_gives_plain_ddp_gradient(pool: _Pool) -> None:
    for worst in pool.run("task_mean_equals_allreduce"):
        assert worst < 1e-6


@pytest.mark.parametrize("rule", ["cm", "krum", "cc"])
def test_rule_matches_single_process_on_gathered_gradients(pool: _Pool, rule: str) -> None:
    results = pool.run("task_rule_matches_single_process", rule=rule)
    for r in results:
        assert not r["ranks_differ"], "ranks hold different aggregated gradients"
        assert r["max_error"] < 1e-6, r
        assert min(r["buckets"][1:]) >= 3, f"the model should span >= 3 buckets, got {r['buckets']}"
        assert r["steps"] == 3 and r["timers"]


@pytest.mark.parametrize("rule", ["mean", "cc"])
def test_worker_momentum_follows_the_recursion(pool: _Pool, rule: str) -> None:
    for r in pool.run("task_rule_matches_single_process", rule=rule, beta=0.9):
        assert not r["ranks_differ"]
        assert r["max_error"] < 1e-6, r


@pytest.mark.parametrize("rule,attack", [("cm", "nan"), ("cc", "nan"), ("cm", "alie"), ("cc", "alie")])
def test_byzantine_rank_does_not_poison_the_model(pool: _Pool, rule: str, attack: str) -> None:
    for r in pool.run("task_byzantine_training", rule=rule, attack=attack):
        assert r["finite"]
        assert r["after"] < 0.5 * r["before"], r


def test_mean_rule_is_poisoned_by_a_nan_rank(pool: _Pool) -> None:
    """The control: the same attack defeats the plain mean."""
    for r in pool.run("task_byzantine_training", rule="mean", attack="nan", steps=2):
        assert not r["finite"]


def test_rule_error_fails_backward_instead_of_waiting(pool: _Pool) -> None:
    for message in pool.run("task_hook_error_fails_backward"):
        assert "geometric_median: weights must have shape" in message, message


# ---------------------------------------------------------------------------
# A rank that exits or hangs: the others fail within the process group's timeout


def _fault_rank(rank: int, world: int, port: int, fault: str, results) -> None:
    _init(rank, world, port, timeout_s=4)
    model = DDP(_model(), bucket_cap_mb=BUCKET_MB)
    model.register_comm_hook(RobustHookState("cm"), robust_hook)
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


@pytest.mark.parametrize("fault", ["exit", "hang"])
def test_dead_or_hung_rank_makes_the_others_fail(fault: str) -> None:
    world = 2
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_fault_rank, args=(r, world, port, fault, results), daemon=True) for r in range(world)]
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
    assert "robust_hook: rank 0 could not gather bucket" in message, message
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
        (dict(aggregator=robustagg.Clip(1.0) >> robustagg.Mean()), ValueError, "pipelines"),
        (dict(aggregator=lambda X: X.mean(0)), TypeError, "aggregator must be"),
        (dict(aggregator=robustagg.CenteredClip(1.0, center=torch.zeros(3))), ValueError, "preset center"),
        (dict(aggregator=robustagg.Krum(1)), ValueError, r"krum: f=1 needs n > 2\*f \+ 2, got n=1"),
        (dict(aggregator=robustagg.CenteredClip(-1.0)), ValueError, "tau"),
        (dict(aggregator="tm", f=-1), ValueError, "f must be an int >= 0"),
        (dict(aggregator="mean", momentum=1.0), ValueError, "momentum must be a number in"),
        (dict(aggregator="mean", momentum="0.9"), ValueError, "momentum"),
        (dict(aggregator="mean", byzantine_ranks=[1]), ValueError, r"byzantine_ranks entries must be in \[0, 1\)"),
        (dict(aggregator="mean", byzantine_ranks=[0]), ValueError, "leaves no honest rank"),
        (dict(aggregator="mean", byzantine_ranks="0"), TypeError, "byzantine_ranks must be a sequence"),
        (dict(aggregator="mean", byzantine=True), ValueError, "disagrees with byzantine_ranks"),
        (dict(aggregator="mean", byzantine=1), TypeError, "byzantine must be a bool"),
        (dict(aggregator="mean", attack="mimic"), ValueError, "not separable"),
        (dict(aggregator="mean", attack="nope"), ValueError, "unknown attack"),
        (dict(aggregator="mean", attack=3), TypeError, "attack must be"),
        (dict(aggregator="mean", process_group="world"), TypeError, "process_group"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            RobustHookState(**kwargs)
    with pytest.raises(TypeError, match="state must be a RobustHookState"):
        robust_hook(None, None)  # type: ignore[arg-type]
    state = RobustHookState("cc")  # a valid state: f, the world and the rule agree
    assert state.world_size == 1 and not state.byzantine and state.is_distance_rule


# ---------------------------------------------------------------------------
# The example trainer


def test_example_trains_with_a_byzantine_rank(tmp_path) -> None:
    pytest.importorskip("sklearn", reason="the example's data set ships with scikit-learn")
    from robustagg.cli import main

    out = tmp_path / "run.json"  # through the command line: robustagg train ddp -> robustagg.examples.ddp_train
    code = main(["train", "ddp", "--nproc", "3", "--agg", "cc", "--byzantine-ranks", "2", "--attack", "alie",
                           "--steps", "60", "--eval-every", "30", "--json", str(out), "--timeout", "60"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["world_size"] == 3 and result["byzantine_ranks"] == [2]
    assert result["final_test_accuracy"] > 0.5
    assert result["seconds_per_step"]["communication"] > 0
