"""The fields the lines' configurations share, each defined once: a dataclass field that is also a
``robustagg train`` option (:func:`robustagg.arguments.option`) with one type and meaning, whatever a line's
default and wording.

A line's config declares ``rounds: int = shared.rounds(300)``; the option ``--rounds`` then takes a positive
integer, defaults to 300 and says so in ``--help``.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..arguments import checked, nonnegative_int, option, positive_float, positive_int, unit_interval
from ..validation import check_choice, cuda_kernels_built
from .data import parse_data
from .models import MODELS

__all__ = [
    "DEVICES",
    "batch",
    "check_device",
    "data",
    "device",
    "eval_every",
    "hidden",
    "lr",
    "model",
    "momentum",
    "rounds",
    "seed",
    "use_device",
]

DEVICES = ("cpu", "cuda")


def rounds(default: int | None, help: str = "training rounds") -> Any:
    return option(default, help, type=positive_int)


def lr(default: float | None, help: str = "learning rate") -> Any:
    return option(default, help, type=positive_float)


def batch(default: int, help: str) -> Any:
    """Examples per gradient; ``check`` bounds it by the training set (:func:`robustagg.sim.data.check_batch`)."""
    return option(default, help, type=positive_int)


def seed(what: str) -> Any:
    """The seed, 0 by default; ``what`` lists what it draws."""
    return option(0, f"seed of {what}", type=nonnegative_int)


def eval_every(default: int, help: str = "rounds between evaluations") -> Any:
    return option(default, help, type=positive_int)


def model(default: str = "mlp", help: str = "model (default mlp, 64-hidden-classes)") -> Any:
    return option(default, help, choices=MODELS)


def data() -> Any:
    return option(
        "digits",
        "data set: digits, mnist:DIR, fashion-mnist:DIR, emnist:DIR, cifar10:DIR or synthetic:NAME "
        "(files on disk, never downloaded; default digits)",
        type=checked(parse_data),
    )


def device() -> Any:
    return option("cpu", "where the whole run lives: data, gradients, attack and aggregation", choices=DEVICES)


def check_device(device: object, where: str) -> torch.device:
    """``cpu``, or ``cuda`` when a GPU and robustagg's CUDA kernels are both there."""
    check_choice(device, DEVICES, "device", where)
    if device == "cuda" and not (torch.cuda.is_available() and cuda_kernels_built()):
        missing = "no CUDA GPU is visible" if not torch.cuda.is_available() else "robustagg has no CUDA kernels"
        raise ValueError(f"{where}: device cuda needs a GPU and robustagg's CUDA kernels, but {missing}")
    return torch.device(device)


def use_device(device: object, where: str) -> torch.device:
    """:func:`check_device`; for ``cuda``, PyTorch's deterministic algorithms switched on for the process.

    cuDNN's convolutions and CUDA's index additions otherwise differ from run to run in their last bits.
    ``warn_only``: an operation with no deterministic version warns instead of stopping the run.
    """
    device = check_device(device, where)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what cuBLAS needs to repeat its sums
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return device


def hidden(default: int) -> Any:
    return option(default, "hidden units of the MLP", type=positive_int)


def momentum(default: float, help: str) -> Any:
    """A momentum in [0, 1): 1 would never take a gradient."""
    return option(default, help, type=unit_interval)
