"""Runs of every line at its digits defaults give what they gave before the lines learned devices,
modules and data sets from disk.

``data/digits_runs.json`` holds short runs of each line recorded with the code of commit 281f54d,
before that change (curves, final figures, rules' and attacks' names), one thread: rules with and
without generators, bucketing, label flips, every split, Mime with Adam, the optimal weights, core
training. The same options must give the same numbers.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from robustagg.sim.byzantine import ByzantineConfig, run_byzantine
from robustagg.sim.federated import FederatedConfig, run_federated
from robustagg.sim.masked import MaskedConfig, run_masked
from robustagg.sim.personalized import PersonalizedConfig, run_personalized

LINES = {
    "byzantine": (ByzantineConfig, run_byzantine),
    "federated": (FederatedConfig, run_federated),
    "personalized": (PersonalizedConfig, run_personalized),
    "masked": (MaskedConfig, run_masked),
}

with open(os.path.join(os.path.dirname(__file__), "data", "digits_runs.json")) as fh:
    RECORDED = json.load(fh)


def _same(new: object, old: object, path: str) -> None:
    if isinstance(old, dict):
        for key, value in old.items():
            assert key in new, f"{path}.{key} is missing"
            _same(new[key], value, f"{path}.{key}")
    elif isinstance(old, list):
        assert len(new) == len(old), f"{path}: {len(new)} entries, recorded {len(old)}"
        for k, (a, b) in enumerate(zip(new, old)):
            _same(a, b, f"{path}[{k}]")
    elif isinstance(old, float) and not isinstance(new, bool):
        # Float sums may round differently on another CPU's vector units; one example more or less
        # right (1/397 of accuracy) or a loss off in its sixth digit would fail.
        assert math.isclose(new, old, rel_tol=1e-6, abs_tol=1e-9), f"{path}: {new!r}, recorded {old!r}"
    else:
        assert new == old, f"{path}: {new!r}, recorded {old!r}"


@pytest.mark.parametrize("case", RECORDED, ids=lambda c: f"{c['line']}-{'-'.join(map(str, c['options'].values()))}")
def test_recorded_digits_run_is_unchanged(case):
    cls, run = LINES[case["line"]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as recorded
    try:
        result = run(cls(**case["options"]))
    finally:
        torch.set_num_threads(threads)
    _same(result, case["result"], case["line"])
