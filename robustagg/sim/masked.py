"""Masked / partial training simulator (SPEC 6.4) on digits or a data set from disk, on the CPU or a GPU.

A network (by default an MLP features-hidden-classes, ``nn.Sequential``
Linear-ReLU-Linear; or the built-in CNN or ResNet-20; PyTorch's default
initialisation from the seed) is trained with SGD with momentum on batches
drawn from the training examples, in one of four ways:

* ``full``: every step trains the whole network;
* ``core``: every step trains the width core only (the first
  ``core_fraction`` of the hidden units, :func:`~robustagg.optim.masked.width_core`);
* ``alternating``: after ``warmup`` full steps, periods of ``period`` steps
  whose first ``core_steps`` are core steps and the rest full steps
  (Mohtashami, Jaggi, Stich, AISTATS 2022);
* ``acdc``: AC/DC's dense and sparse phases, the sparse ones keeping the
  ``density`` largest weights (Peste et al., NeurIPS 2021).

Every evaluation measures, on the test examples, the full network, its
core (the MLP's cut out as a stand-alone network,
:func:`~robustagg.optim.masked.extract_core`; a convolutional network's
run with the parameters outside the core zeroed,
:func:`~robustagg.optim.masked.core_forward`) and, for AC/DC, the network
pruned to its magnitude top-k. Everything random comes from the seed, so a
run repeats bit for bit on the same device, machine and thread count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import fraction, nonnegative_int, option, positive_int
from ..optim import masked as masked_opt
from ..validation import check_choice, check_int, check_positive, check_real
from . import config as shared
from .data import Dataset, augment, check_batch, check_fits, load_data, train_examples
from .models import ModuleModel, chunked
from .networks import ResNet20, SmallCNN

__all__ = ["MaskedConfig", "NETWORKS", "TRAININGS", "make_mlp", "make_network", "run_masked"]

NETWORKS = ("mlp", "cnn", "resnet20")  # the built-in models the line trains as modules (logreg has no hidden units)

TRAININGS = {
    "full": "every step trains the whole network",
    "core": "every step trains the core only",
    "alternating": "core steps and full steps in periods (after a full warm-up)",
    "acdc": "AC/DC: dense phases and sparse (magnitude top-k) phases",
}


@dataclass(frozen=True)
class MaskedConfig:
    """One training run. ``period``, ``core_steps`` and ``warmup`` apply to ``alternating``, ``density`` to ``acdc``."""

    training: str = option("alternating", "schedule", choices=TRAININGS)
    hidden: int = shared.hidden(256)
    core_fraction: float = option(0.25, "fraction of the hidden units in the core", type=fraction)
    rounds: int = shared.rounds(3000, "steps")
    lr: float = shared.lr(0.1)
    momentum: float = shared.momentum(0.9, "SGD momentum")
    batch: int = shared.batch(32, "batch size")
    period: int = option(2, "steps per alternation period", type=positive_int)
    core_steps: int = option(1, "core steps per period", type=nonnegative_int)
    warmup: int = option(0, "full steps before alternating", type=nonnegative_int)
    density: float = option(0.1, "AC/DC: fraction of weights kept in sparse phases", type=fraction)
    seed: int = shared.seed("the initialisation and batches")
    eval_every: int = shared.eval_every(100, "steps between evaluations")
    model: str = option("mlp", "network (default mlp, features-hidden-classes)", choices=NETWORKS)
    data: str = shared.data()
    device: str = shared.device()

    def check(self, examples: int | None = None) -> None:
        """Raise ValueError (TypeError for a field of the wrong type) naming the first bad field; ``examples``
        as in :meth:`ByzantineConfig.check <robustagg.sim.byzantine.ByzantineConfig.check>`."""
        where = "masked"
        check_choice(self.training, TRAININGS, "training", where)
        for name in ("hidden", "rounds", "period", "eval_every"):
            check_int(getattr(self, name), name, where, low=1)
        check_batch(self.batch, where, train_examples(self.data, examples))
        check_choice(self.model, NETWORKS, "model", where)
        shared.check_device(self.device, where)
        for name in ("core_fraction", "density"):
            check_real(getattr(self, name), name, where, 0.0, 1.0, low_open=True)
        check_positive(self.lr, "lr", where)
        check_real(self.momentum, "momentum", where, 0.0, 1.0, high_open=True)
        check_int(self.warmup, "warmup", where, low=0)
        check_int(self.seed, "seed", where, low=0)
        core_steps = check_int(self.core_steps, "core_steps", where)
        if self.training == "alternating" and not 1 <= core_steps < self.period:
            raise ValueError(
                f"masked: alternating training needs 1 <= core_steps < period, "
                f"got core_steps={self.core_steps}, period={self.period}"
            )


def make_mlp(features: int, hidden: int, classes: int, seed: int) -> nn.Sequential:
    """Linear-ReLU-Linear with PyTorch's default initialisation drawn from ``seed`` (global RNG left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU generator only: fork_rng restores it
        return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def make_network(name: str, data: Dataset, hidden: int, seed: int) -> nn.Module:
    """The network ``name`` (mlp, cnn or resnet20) for ``data``, initialised from ``seed``; it takes images
    ``(N, C, H, W)`` except the MLP, which takes the flat features."""
    if name == "mlp":
        return make_mlp(data.num_features, hidden, data.num_classes, seed)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU generator only: fork_rng restores it
        return SmallCNN(*data.shape, data.num_classes) if name == "cnn" else ResNet20(data.shape[0], data.num_classes)


def _accuracy(forward, x: torch.Tensor, y: torch.Tensor) -> float:
    logits = chunked(forward, x)
    return float((logits.argmax(1) == y).float().mean())


def run_masked(
    cfg: MaskedConfig,
    progress: Callable[[int, float], None] | None = None,
    *,
    model: ModuleModel | None = None,
    data: Dataset | None = None,
) -> dict:
    """Train, and return a JSON-ready dict: config, accuracy curve, final accuracies and timings.

    Each curve point has ``full_accuracy`` (None for ``core`` training,
    whose full network is never trained as such), ``core_accuracy`` (the
    extracted core) and, for ``acdc``, ``sparse_accuracy`` (the network
    pruned to its ``density`` largest weights). ``progress(round, accuracy)``
    is called after every evaluation with the full network's test accuracy
    (the core's for ``core`` training). ``seconds_per_step`` splits the mean
    time of a step into forward + backward and the optimizer step.

    ``model`` replaces the built-in ``cfg.model``: its module is trained in place (from its own
    parameters), on examples viewed as its ``input_shape``, and its core is its width core run
    through ``core_forward``; ``data`` replaces the data set ``cfg.data`` names.
    """
    cfg.check(None if data is None else len(data.y_train))
    device = shared.use_device(cfg.device, "masked")
    data = load_data(cfg.data) if data is None else data
    check_fits(data, "masked", batch=cfg.batch)
    data = data.to(device)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    if model is None:
        network = make_network(cfg.model, data, cfg.hidden, cfg.seed).to(device)
        shape = (data.num_features,) if cfg.model == "mlp" else data.shape
    else:
        network, shape = model.module.to(device), model.input_shape
    inputs = lambda x: x.view(-1, *shape)  # noqa: E731
    core = masked_opt.width_core(network, cfg.core_fraction)
    core_model = (
        (lambda x: masked_opt.extract_core(network, core)(x))
        if model is None and cfg.model == "mlp"
        else (lambda x: masked_opt.core_forward(network, core, x))
    )
    optimizer = masked_opt.MaskedSGD(network.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    trainer: masked_opt.PartialTrainer | masked_opt.ACDCTrainer
    if cfg.training == "acdc":
        trainer = masked_opt.ACDCTrainer(network, optimizer, masked_opt.ACDCSchedule(cfg.rounds, cfg.density))
    else:
        schedule = {
            "full": masked_opt.AlternatingSchedule(1, 0),
            "core": masked_opt.AlternatingSchedule(1, 1),
            "alternating": masked_opt.AlternatingSchedule(cfg.period, cfg.core_steps, cfg.warmup),
        }[cfg.training]
        trainer = masked_opt.PartialTrainer(network, optimizer, core, schedule)

    curve: list[dict] = []
    examples = len(data.y_train)
    x_test = inputs(data.x_test)
    wall = time.perf_counter()
    for t in range(1, cfg.rounds + 1):
        idx = torch.randint(0, examples, (cfg.batch,), generator=gen, device=device)
        trainer.step(F.cross_entropy, inputs(augment(data.x_train[idx], data, gen)), target=data.y_train[idx])
        if t % cfg.eval_every == 0 or t == cfg.rounds:
            with torch.no_grad():
                point: dict = {
                    "round": t,
                    "full_accuracy": None if cfg.training == "core" else _accuracy(network, x_test, data.y_test),
                    "core_accuracy": _accuracy(core_model, x_test, data.y_test),
                }
                if cfg.training == "acdc":
                    sparse = masked_opt.magnitude_core(network, cfg.density)
                    point["sparse_accuracy"] = _accuracy(
                        lambda x: masked_opt.core_forward(network, sparse, x), x_test, data.y_test
                    )
            curve.append(point)
            if progress is not None:
                progress(t, point["core_accuracy"] if cfg.training == "core" else point["full_accuracy"])
    wall = time.perf_counter() - wall
    result = {
        "config": asdict(cfg),
        "schedule": repr(trainer.schedule),
        "model": cfg.model if model is None else model.name,
        "dim": sum(p.numel() for p in network.parameters()),
        "core_dim": sum(int(m.sum()) for m in core.values()),
        "steps": dict(trainer.counts),
        "curve": curve,
        "final_full_accuracy": curve[-1]["full_accuracy"],
        "final_core_accuracy": curve[-1]["core_accuracy"],
        "seconds_per_step": {k: v / cfg.rounds for k, v in trainer.seconds.items()},
        "wall_seconds": wall,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if cfg.training == "acdc":
        result["final_sparse_accuracy"] = curve[-1]["sparse_accuracy"]
    return result
