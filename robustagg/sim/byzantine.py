"""Byzantine-robust training simulator (SPEC 6.1) on digits or a data set from disk, on the CPU or a GPU.

n workers share the training set (``iid``, label-``sorted`` or
``dirichlet:ALPHA``); the last f of them are Byzantine. Each round, every
worker computes its gradient on a fresh batch of its own examples at the
server's model (all n at once with ``torch.func.vmap``), updates its worker
momentum, and sends it; the attack replaces the Byzantine workers' vectors
(it sees the honest vectors and what the Byzantine workers would have sent);
the server aggregates with the chosen rule (after the optional bucketing)
and takes an SGD step. With ``device="cuda"`` all of it stays on the GPU:
the data, the batch draws, the gradients, the momentum, the attack and the
aggregation on robustagg's CUDA kernels. Everything random comes from the
seed, so a run repeats bit for bit on the same device, machine and thread count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .. import aggregators as agg
from ..arguments import (
    checked,
    finite_float,
    nonnegative_int,
    option,
    positive_float,
    positive_float_or_inf,
    positive_int,
)
from ..attacks import ATTACKS, PERTURBATIONS, check_attack_rows, make_attack
from ..optim.byzantine import RobustServer, WorkerMomentum
from ..timing import Stopwatch
from ..validation import check_choice, check_int, check_positive, check_real
from . import config as shared
from .data import (
    Dataset,
    augment,
    check_batch,
    check_fits,
    load_data,
    parse_split,
    split_workers,
    train_examples,
)
from .models import MODELS, Model, curve_point, make_model

__all__ = ["ByzantineConfig", "RULES", "TAIL_START", "aggregator_of", "run_byzantine"]

# Test accuracy swings from one evaluation to the next under attack, so runs
# are compared by the mean over the evaluations after this fraction of the rounds.
TAIL_START = 0.8

RULES = agg.RULES


@dataclass(frozen=True)
class ByzantineConfig:
    """One training run. ``rule_f`` is the f the rule assumes (default: ``byzantine``)."""

    agg: str = option("cc", "aggregation rule", choices=RULES)
    attack: str = option("none", "attack of the Byzantine workers", choices=ATTACKS)
    workers: int = option(25, "n, all workers", type=positive_int)
    byzantine: int = option(5, "f, Byzantine workers among them", type=nonnegative_int)
    momentum: float = shared.momentum(0.0, "worker momentum beta in [0, 1)")
    bucketing: int = option(0, "bucket size s >= 2 in front of the rule (default: none)", type=nonnegative_int)
    split: str = option("iid", "iid, sorted (label-sorted) or dirichlet:ALPHA", type=checked(parse_split))
    model: str = shared.model()
    hidden: int = shared.hidden(64)
    rounds: int = shared.rounds(300)
    batch: int = shared.batch(8, "examples per worker per round")
    lr: float = shared.lr(0.1, "server learning rate")
    seed: int = shared.seed("the split, initialisation, batches and attacks")
    eval_every: int = shared.eval_every(10)
    rule_f: int | None = option(None, "the f the rule assumes (default: --byzantine)", type=nonnegative_int)
    cc_tau: float = option(1.0, "centered clipping radius", type=positive_float_or_inf)
    cc_iters: int = option(3, "centered clipping iterations", type=positive_int)
    gm_iters: int = option(100, "most Weiszfeld steps of gm", type=positive_int)
    ipm_eps: float = option(0.1, "IPM scale", type=positive_float)
    alie_z: float | None = option(None, "ALIE z (default: from n and f, SPEC 5)", type=finite_float)
    perturbation: str = option("std", "MinMax/MinSum perturbation", choices=PERTURBATIONS)
    root_size: int = option(
        100, "FLTrust: clean training examples the server holds (its root data set)", type=positive_int
    )
    lr_step: int = option(
        0, "divide the server learning rate by 10 after this round (default: never)", type=nonnegative_int
    )
    data: str = shared.data()
    device: str = shared.device()

    def check(self, examples: int | None = None) -> None:
        """Raise ValueError (TypeError for a field of the wrong type) naming the first bad field.

        The rule is built and run on n rows of zeros, so that an f it cannot
        take (Krum's n > 2f + 2, Bulyan's n >= 4f + 3, the trimmed mean's
        n > 2f, after bucketing: on the buckets) is refused before the run, and
        so is an attack that cannot run with f of n workers (ALIE's default z).
        ``examples``, the training examples of a data set given to the run, bounds the workers and the
        batch in place of ``data``'s (whose files are then not looked at).
        """
        where = "byzantine"
        if self.agg not in RULES:
            raise ValueError(f"byzantine: unknown rule agg={self.agg!r}; choose from {', '.join(RULES)}")
        examples = train_examples(self.data, examples)
        n = check_int(self.workers, "workers", where, low=1, high=examples)
        f = check_int(self.byzantine, "byzantine", where)
        if not 0 <= f < n:
            raise ValueError(f"byzantine: byzantine must be in [0, workers), got {f} of {n}")
        check_real(self.momentum, "momentum", where, 0.0, 1.0, high_open=True)
        check_int(self.bucketing, "bucketing", where, low=0, high=n)
        for name in ("rounds", "eval_every", "cc_iters", "gm_iters"):
            check_int(getattr(self, name), name, where, low=1)
        check_batch(self.batch, where, examples)
        check_positive(self.lr, "lr", where)
        check_positive(self.cc_tau, "cc_tau", where, allow_inf=True)
        check_positive(self.ipm_eps, "ipm_eps", where)
        check_int(self.seed, "seed", where, low=0)
        check_int(self.lr_step, "lr_step", where, low=0)
        check_choice(self.model, MODELS, "model", where)
        check_int(self.hidden, "hidden", where, low=1)
        shared.check_device(self.device, where)
        parse_split(self.split)
        if self.rule_f is not None:
            check_int(self.rule_f, "rule_f", where, low=0)
        alie_z = None if self.alie_z is None else check_real(self.alie_z, "alie_z", where)
        check_attack_rows(self.attack, n, f, alie_z)
        check_int(self.root_size, "root_size", where, low=1, high=examples if self.agg == "fltrust" else None)
        rule = aggregator_of(self, torch.Generator())
        if isinstance(_rule_itself(rule), agg.FLTrust):
            _rule_itself(rule).root = torch.zeros(1, dtype=torch.float64)
        try:
            rule.aggregate(torch.zeros(n, 1, dtype=torch.float64))
        except ValueError as exc:
            rows = f"{n} workers" + (f" in buckets of {self.bucketing}" if self.bucketing >= 2 else "")
            raise ValueError(f"byzantine: rule {self.agg} cannot take f={self.assumed_f} of {rows}: {exc}") from None

    @property
    def assumed_f(self) -> int:
        """The f the rule assumes: ``rule_f``, or ``byzantine`` when that is None."""
        return self.byzantine if self.rule_f is None else self.rule_f


def aggregator_of(cfg: ByzantineConfig, generator: torch.Generator) -> agg.Aggregator:
    """The aggregator of ``cfg.agg``, behind ``Bucketing(cfg.bucketing)`` when that is >= 2."""
    f = cfg.assumed_f
    n_rows = cfg.workers if cfg.bucketing < 2 else -(-cfg.workers // cfg.bucketing)
    f_rows = f if cfg.bucketing < 2 else min(f, n_rows)
    options = {
        "gm": {"max_iter": cfg.gm_iters},
        "cc": {"tau": cfg.cc_tau, "iters": cfg.cc_iters},
        # Their coordinate samples are drawn on the host: a CPU generator, the same one on the CPU.
        "dnc": {"generator": _on_cpu(generator)},
        "signguard": {"generator": _on_cpu(generator)},
    }.get(cfg.agg, {})
    rule = agg.make_aggregator(cfg.agg, f_rows, f_if_used=True, **options)
    if cfg.bucketing >= 2:
        return agg.Bucketing(cfg.bucketing, generator) >> rule
    return rule


def _rule_itself(rule: agg.Aggregator) -> agg.Aggregator:
    """The rule behind the pre-aggregators of a pipeline (the rule itself otherwise)."""
    return rule.rule if isinstance(rule, agg.Pipeline) else rule


def _on_cpu(generator: torch.Generator) -> torch.Generator:
    """``generator`` itself on the CPU; a CPU generator of the same seed otherwise."""
    return generator if generator.device.type == "cpu" else torch.Generator().manual_seed(generator.initial_seed())


def _attack_kwargs(cfg: ByzantineConfig, rule: agg.Aggregator, generator: torch.Generator, classes: int) -> dict:
    return {
        "ipm": {"eps": cfg.ipm_eps},
        "alie": {"z": cfg.alie_z},
        "gaussian": {"generator": generator},
        "fang_trimmed_mean": {"generator": generator},
        "minmax": {"perturbation": cfg.perturbation},
        "minsum": {"perturbation": cfg.perturbation},
        "label_flip": {"num_classes": classes},
        "optimal_alie": {"aggregator": rule},
        "optimal_ipm": {"aggregator": rule},
    }.get(cfg.attack, {})


def run_byzantine(
    cfg: ByzantineConfig,
    progress: Callable[[int, float], None] | None = None,
    *,
    model: Model | None = None,
    data: Dataset | None = None,
) -> dict:
    """Train, and return a JSON-ready dict: config, accuracy curve, final accuracy and timings.

    ``tail_test_accuracy`` is the mean test accuracy of the evaluations in
    the last 20% of the rounds (``TAIL_START``), the figure the grid reports.

    ``progress(round, test_accuracy)`` is called after every evaluation.
    Timings are totals over the run divided by the number of rounds, for
    the gradient computation (all n workers, with the batch draws), the momentum update, the attack
    and the aggregation (pre-aggregator, rule and step); evaluations are outside all four.

    ``model`` replaces the built-in ``cfg.model`` (a :class:`~robustagg.sim.models.ModuleModel` wraps any
    ``torch.nn.Module``), ``data`` the data set ``cfg.data`` names.
    """
    cfg.check(None if data is None else len(data.y_train))
    device = shared.use_device(cfg.device, "byzantine")
    data = load_data(cfg.data) if data is None else data
    n, f = cfg.workers, cfg.byzantine
    check_fits(
        data, "byzantine", workers=n, batch=cfg.batch, **({"root_size": cfg.root_size} if cfg.agg == "fltrust" else {})
    )
    honest = n - f
    rng = np.random.default_rng(cfg.seed)
    init = torch.Generator().manual_seed(cfg.seed)
    shares = split_workers(data.y_train, n, cfg.split, rng)
    if model is None:
        model = make_model(cfg.model, data.shape, data.num_classes, cfg.hidden)
    w = model.init(init).to(device)
    # On the CPU the batches continue the initialisation's stream; on a GPU they are drawn there.
    gen = init if device.type == "cpu" else torch.Generator(device).manual_seed(cfg.seed)
    rule = aggregator_of(cfg, torch.Generator(device).manual_seed(cfg.seed + 1))
    attack_generator = torch.Generator(device).manual_seed(cfg.seed + 2)
    attack = make_attack(cfg.attack, **_attack_kwargs(cfg, rule, attack_generator, data.num_classes))

    # Byzantine workers hold their share like everyone else; a data-level
    # attack changes the labels they train on.
    labels = data.y_train.clone()
    if attack.flips_labels:
        for share in shares[honest:]:
            labels[share] = attack.flip_labels(labels[share])
    held = torch.cat(shares).to(device)
    sizes = torch.tensor([len(s) for s in shares], device=device)
    starts = torch.cumsum(sizes, 0) - sizes
    # FLTrust's server holds a clean root data set, a random sample of the training set (Cao et al.),
    # and computes its root update on all of it each round; drawn apart so other rules' runs are unchanged.
    fltrust = _rule_itself(rule) if isinstance(_rule_itself(rule), agg.FLTrust) else None
    if fltrust is not None:
        root = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(cfg.seed + 3))
        root_x, root_y = data.x_train[root[: cfg.root_size]].to(device), data.y_train[root[: cfg.root_size]].to(device)
        root_grad = torch.func.grad(model.loss)
    data, labels = data.to(device), labels.to(device)
    loss_x, loss_y = data.train_loss_examples()

    worker_grads = torch.func.vmap(torch.func.grad(model.loss), in_dims=(None, 0, 0))
    worker_grads(w, data.x_train[held[:n, None]], labels[held[:n, None]])  # untimed warm-up of vmap
    rule_name = repr(rule)
    momentum = WorkerMomentum(cfg.momentum)
    server = RobustServer([w], rule, cfg.lr)
    clock = Stopwatch(device, "gradients", "momentum", "attack", "aggregation")
    curve: list[dict] = []
    wall = time.perf_counter()
    for t in range(1, cfg.rounds + 1):
        pick = starts[:, None] + (torch.rand(n, cfg.batch, generator=gen, device=device) * sizes[:, None]).long()
        idx = held[pick]
        grads = worker_grads(w, augment(data.x_train[idx], data, gen), labels[idx])
        if fltrust is not None:
            fltrust.root = root_grad(w, root_x, root_y)
        clock.lap("gradients")
        sent = momentum(grads)
        clock.lap("momentum")
        if f > 0:
            sent = torch.cat([sent[:honest], attack(sent[:honest], sent[honest:])])
        clock.lap("attack")
        if cfg.lr_step and t == cfg.lr_step + 1:
            server.lr = cfg.lr / 10
        server.step(sent)
        clock.lap("aggregation")
        if t % cfg.eval_every == 0 or t == cfg.rounds:
            curve.append(curve_point(model, w, t, (data.x_test, data.y_test), (loss_x, loss_y)))
            if progress is not None:
                progress(t, curve[-1]["test_accuracy"])
            clock.restart()
    wall = time.perf_counter() - wall
    seconds = clock.seconds
    tail = [p["test_accuracy"] for p in curve if p["round"] > TAIL_START * cfg.rounds] or [curve[-1]["test_accuracy"]]
    return {
        "config": asdict(cfg),
        "rule": rule_name,
        "attack": repr(attack),
        "model": model.name,
        "dim": model.dim,
        "final_test_accuracy": curve[-1]["test_accuracy"],
        "tail_test_accuracy": sum(tail) / len(tail),
        "curve": curve,
        "seconds_per_round": clock.per(cfg.rounds),
        "aggregation_over_gradients": seconds["aggregation"] / max(seconds["gradients"], 1e-12),
        "wall_seconds": wall,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
