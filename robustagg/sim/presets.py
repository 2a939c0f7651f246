"""Published setups as option presets: ``robustagg train <line> --preset NAME --data KIND:DIR``.

A preset sets the defaults of the options its paper fixes; options given on the command line still win,
and the options it leaves alone (the rule and the attack, say) keep the line's defaults. Each value is
listed with where it comes from, and each preset says how the simulator's setup differs from the paper's.
The data set itself is the user's: a preset names the kind it needs and the run refuses another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["PRESETS", "Preset", "presets_of"]


@dataclass(frozen=True)
class Preset:
    """``values``: option (field) name -> (value, its source); ``data``: the data set kind it trains on."""

    name: str
    line: str
    data: str
    summary: str
    values: dict[str, tuple[Any, str]]
    differences: str

    def defaults(self) -> dict[str, Any]:
        return {k: v for k, (v, _) in self.values.items()}


_ICML21 = "Karimireddy, He, Jaggi (ICML 2021), code: momentum-robustness/cifar10-all.py"
_ICML21_EPOCHS = "100 epochs of 2500 / 32 = 78 batches per honest worker (50000 images over 20 honest workers)"
_BUCKETING = "Karimireddy, He, Jaggi (ICLR 2022, bucketing), code: utils.py and exp2.py"
_FEDJAX = "FedJAX's EMNIST_CONV baseline (experiments/fed_avg/fed_avg.EMNIST_CONV.flags)"
_OURS = "this project's choice, not verified against the Mime paper's text"

PRESETS: tuple[Preset, ...] = (
    Preset(
        "icml21-cifar10",
        "byzantine",
        "cifar10",
        "ResNet-20 on CIFAR-10, 25 workers of which 5 Byzantine, batch 32 each (Learning from History)",
        {
            "model": ("resnet20", _ICML21),
            "workers": (25, _ICML21 + ": N_WORKERS"),
            "byzantine": (5, _ICML21 + ": N_BYZ (11 for the IPM attack: pass --byzantine 11)"),
            "batch": (32, _ICML21 + ": BATCH_SIZE"),
            "lr": (0.1, _ICML21 + ": LR"),
            "momentum": (0.9, "the paper's worker momentum beta = 0.9 (its script also runs 0)"),
            "rounds": (7800, _ICML21_EPOCHS),
            "lr_step": (5850, _ICML21 + ": MultiStepLR, x0.1 after epoch 75"),
            "eval_every": (78, "once per epoch, as the script evaluates"),
            "split": ("iid", _ICML21 + ": DistributedSampler over the honest workers"),
        },
        "GroupNorm (2 groups) for the script's BatchNorm, whose per-worker statistics do not vmap; each worker "
        "draws its batches with replacement from its share instead of passing through it once per epoch; the "
        "Byzantine workers hold a share of the data too.",
    ),
    Preset(
        "bucketing-mnist",
        "byzantine",
        "mnist",
        "MNIST, 25 workers of which 5 Byzantine mimicking, label-sorted (non-iid) shares, buckets of 2",
        {
            "model": ("cnn", "the script's network: 3x3 convolutions of 32 and 64 channels, a linear layer of 128"),
            "workers": (25, _BUCKETING + ": n = 25 (exp2)"),
            "byzantine": (5, _BUCKETING + ": f = 5 (exp2)"),
            "batch": (32, _BUCKETING + ": BATCH_SIZE"),
            "lr": (0.01, _BUCKETING + ": LR"),
            "momentum": (0.0, _BUCKETING + ": momentum 0 (exp2)"),
            "rounds": (600, _BUCKETING + ": 20 epochs of 30 batches"),
            "eval_every": (30, "once per epoch of 30 batches, as the script evaluates"),
            "split": ("sorted", _BUCKETING + ": the non-iid sampler sorts the honest workers' data by label"),
            "bucketing": (2, _BUCKETING + ": s = 2"),
            "attack": ("mimic", _BUCKETING + ": ATK = mimic (exp2)"),
            "cc_tau": (10.0, _BUCKETING + ": --clip-tau 10 (divide by 1 - beta under momentum)"),
            "cc_iters": (3, _BUCKETING + ": Clipping(n_iter=3)"),
            "gm_iters": (8, _BUCKETING + ": RFA(T=8)"),
        },
        "The sorted split covers the Byzantine workers too (the script gives them iid data); batches are drawn "
        "with replacement; the CNN has padded convolutions, two poolings and no dropout.",
    ),
    Preset(
        "mime-emnist",
        "federated",
        "emnist",
        "Mime with SGD momentum on EMNIST ByClass (62 classes) with the built-in CNN",
        {
            "algo": ("mime", "Karimireddy et al., Mime (NeurIPS 2021)"),
            "base": ("sgdm", "Mime's momentum base optimizer"),
            "beta": (0.9, _OURS),
            "model": ("cnn", _OURS),
            "clients": (3400, "the 3400 writers of federated EMNIST (TensorFlow Federated)"),
            "per_round": (10, _FEDJAX + ": num_clients_per_round"),
            "batch": (10, _FEDJAX + ": client_training_batch_size"),
            "rounds": (1500, _FEDJAX + ": num_rounds"),
            "local_epochs": (1.0, _OURS),
            "lr": (0.05, _OURS),
            "alpha": (0.1, "stand-in for the writers' skew: the IDX files carry no writer ids"),
            "eval_every": (5, _FEDJAX + ": eval_frequency"),
        },
        "The IDX files carry no writer ids, so the 3400 clients are a Dirichlet(0.1) label split rather than "
        "the writers; the values marked as this project's choice are not verified against the paper.",
    ),
)


def presets_of(line: str) -> dict[str, Preset]:
    return {p.name: p for p in PRESETS if p.line == line}
