"""Every line's configuration refuses a bad field before its run starts, naming the field."""

from __future__ import annotations

import importlib

import pytest

pytest.importorskip("sklearn", reason="the simulators' data set ships with scikit-learn (README set-up installs it)")

BAD_CONFIGS = [  # (line, fields, what the ValueError says)
    ("byzantine", dict(agg="median"), "unknown rule"),
    ("byzantine", dict(byzantine=25), "byzantine must be"),
    ("byzantine", dict(bucketing=26), "bucketing"),
    ("byzantine", dict(rounds=0), "rounds"),
    ("byzantine", dict(lr=0.0), "lr"),
    ("byzantine", dict(split="dirichlet:0"), "split"),
    ("federated", dict(algo="fedprox"), "unknown algo"),
    ("federated", dict(per_round=0), "per_round"),
    ("federated", dict(alpha=0.0), "split"),
    ("federated", dict(local_steps=0), "local_steps"),
    ("federated", dict(lr=0.0), "lr"),
    ("masked", dict(training="sparse"), "unknown training"),
    ("masked", dict(hidden=0), "hidden"),
    ("masked", dict(core_fraction=0.0), "core_fraction"),
    ("masked", dict(density=1.5), "density"),
    ("masked", dict(rounds=0), "rounds"),
    ("masked", dict(batch=2000), "batch"),
    ("masked", dict(lr=0.0), "lr"),
    ("masked", dict(momentum=1.0), "momentum"),
    ("masked", dict(warmup=-1), "warmup"),
    ("masked", dict(training="alternating", period=2, core_steps=2), "core_steps"),
    ("masked", dict(training="alternating", period=2, core_steps=0), "core_steps"),
    ("personalized", dict(task="cubic"), "unknown task"),
    ("personalized", dict(method="sgd"), "unknown method"),
    ("personalized", dict(collaborators=-1), "collaborators"),
    ("personalized", dict(rounds=0), "rounds"),
    ("personalized", dict(lr=0.0), "lr"),
    ("personalized", dict(lr=float("nan")), "lr"),
    ("personalized", dict(method="optimal", lr=2.0), "lr must be < 2"),
    ("personalized", dict(beta=1.5), "beta must be"),
    ("personalized", dict(beta_floor=-0.1), "beta_floor"),
    ("personalized", dict(noise=-1.0), "noise"),
    ("personalized", dict(eval_every=0), "eval_every"),
    ("personalized", dict(dim=0), "dim"),
]


def _line(name: str):
    """The line's config class and run function: robustagg.sim.<name>.<Name>Config, run_<name>."""
    module = importlib.import_module(f"robustagg.sim.{name}")
    return getattr(module, f"{name.capitalize()}Config"), getattr(module, f"run_{name}")


@pytest.mark.parametrize("line, bad, match", BAD_CONFIGS, ids=lambda v: str(v) if not isinstance(v, dict) else None)
def test_a_bad_field_is_refused_before_the_run(line, bad, match):
    config, run = _line(line)
    with pytest.raises(ValueError, match=match):
        run(config(**bad))


def test_only_alternating_training_reads_the_core_step_ratio():
    config, _ = _line("masked")
    config(training="full", period=2, core_steps=2).check()
