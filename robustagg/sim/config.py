"""The fields the lines' configurations share, each defined once: a dataclass field that is also a
``robustagg train`` option (:func:`robustagg.arguments.option`) with one type and meaning, whatever a line's
default and wording.

A line's config declares ``rounds: int = shared.rounds(300)``; the option ``--rounds`` then takes a positive
integer, defaults to 300 and says so in ``--help``.
"""

from __future__ import annotations

from typing import Any

from ..arguments import nonnegative_int, option, positive_float, positive_int, unit_interval

__all__ = ["MODELS", "batch", "eval_every", "hidden", "lr", "model", "momentum", "rounds", "seed"]

MODELS = ("mlp", "logreg")  # the names robustagg.sim.models.make_model builds


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


def model() -> Any:
    return option("mlp", "model (default mlp, 64-hidden-10)", choices=MODELS)


def hidden(default: int) -> Any:
    return option(default, "hidden units of the MLP", type=positive_int)


def momentum(default: float, help: str) -> Any:
    """A momentum in [0, 1): 1 would never take a gradient."""
    return option(default, help, type=unit_interval)
