"""The rules the distributed paths take, and their whole-model coefficients from summed distances.

Every path (the DDP hook in both modes, the FSDP2 reduce-scatter) checks its
rule with :func:`check_rule` and, for a distance rule, turns the summed
float64 squared distances into row coefficients with :func:`row_coefficients`,
the same functions (:mod:`robustagg.coefficients`) that :mod:`robustagg.distance` runs on one matrix: squared
distances add over blocks of coordinates, so summing the blocks' distances
gives the whole vector's coefficients.
"""

from __future__ import annotations

import copy

import torch

from .. import aggregators as agg
from .. import coefficients, spectral, subsets
from ..aggregators import Aggregator, make_aggregator
from ..validation import check_row_weights

COORDINATE = (agg.Mean, agg.CoordinateMedian, agg.TrimmedMean, agg.MeaMed)
DISTANCE = (agg.Krum, agg.MultiKrum, agg.GeometricMedian, agg.CenteredClip, agg.MDA, agg.MoNNA, agg.SMEA, agg.CAF)

#: The rule names the distributed paths take: the coordinate-wise rules and the distance rules whose
#: coefficients follow from the summed distances.
RULE_NAMES = {
    name: text
    for name, text in agg.RULES.items()
    if name in ("mean", "cm", "tm", "meamed", "krum", "mkrum", "gm", "cc", "mda", "monna", "smea", "caf")
}


#: Centered clipping's options when the rule is given by name.
CC_OPTIONS = {"tau": 1.0, "iters": 3}


def check_rule(aggregator: Aggregator | str, f: int, n: int | None, owner: str) -> Aggregator:
    """The rule object for ``aggregator`` (a name is built with ``f``), checked for ``n`` rows (``None``: not
    yet known, the rule's own checks wait for the first call); errors name ``owner``. A name gets ``f`` when
    its rule takes one, and centered clipping gets :data:`CC_OPTIONS`."""
    if isinstance(aggregator, str) and aggregator in RULE_NAMES:
        aggregator = make_aggregator(
            aggregator, f, f_if_used=True, owner=owner, **(CC_OPTIONS if aggregator == "cc" else {})
        )
    if isinstance(aggregator, agg.Bulyan) or (isinstance(aggregator, str) and aggregator in agg.RULES):
        name = "Bulyan" if isinstance(aggregator, agg.Bulyan) else aggregator
        raise ValueError(
            f"{owner}: {name} is not supported (it needs the rows of the whole model at once); "
            f"choose from {', '.join(RULE_NAMES)}"
        )
    if isinstance(aggregator, agg.Pipeline):
        raise ValueError(f"{owner}: pre-aggregator pipelines are not supported")
    if isinstance(aggregator, str):
        raise ValueError(f"{owner}: unknown rule {aggregator!r}; choose from {', '.join(RULE_NAMES)}")
    if not isinstance(aggregator, COORDINATE + DISTANCE):
        raise TypeError(
            f"{owner}: aggregator must be a rule name or one of "
            f"{', '.join(cls.__name__ for cls in COORDINATE + DISTANCE)}; got {aggregator!r}"
        )
    if isinstance(aggregator, agg.CenteredClip) and aggregator.center is not None:
        raise ValueError(
            f"{owner}: CenteredClip must have no preset center; the previous aggregate is the center, starting at zeros"
        )
    if n is None:
        return aggregator
    # The rule's own argument checks, on a one-column probe with n rows.
    weights = getattr(aggregator, "weights", None)
    device = weights.device if isinstance(weights, torch.Tensor) else "cpu"
    copy.deepcopy(aggregator).aggregate(torch.zeros(n, 1, dtype=torch.float64, device=device))
    return aggregator


def row_coefficients(
    rule: Aggregator, D: torch.Tensor, finite: torch.Tensor, like: torch.Tensor
) -> torch.Tensor | None:
    """Row coefficients of a distance rule from the whole vector's squared distances (CPU float64).

    ``D`` and ``finite`` cover the n rows, plus the center as point n for
    centered clipping; ``like`` is any tensor with the rows' device and n rows
    (for the weights' checks). ``None`` means no usable row: the result is all NaN.
    Sets ``rule.info`` for the geometric median.
    """
    n = D.shape[0] - (1 if isinstance(rule, agg.CenteredClip) else 0)
    if isinstance(rule, (agg.Krum, agg.MultiKrum)):
        return coefficients.krum_coefficients(D, finite, rule.f, n - rule.f if rule.m is None else rule.m)
    if isinstance(rule, agg.GeometricMedian):
        a = check_row_weights(rule.weights, like, "geometric_median")
        c, rule.info = coefficients.gm_coefficients(D, finite, a, rule.nu, rule.tol, rule.max_iter)
        return c
    if isinstance(rule, agg.MDA):
        return subsets.mda_coefficients(D, finite, rule.f)
    if isinstance(rule, agg.MoNNA):
        return coefficients.monna_coefficients(D, finite, rule.f, rule.pivot)
    if isinstance(rule, agg.SMEA):
        return subsets.smea_coefficients(D, finite, rule.f)
    if isinstance(rule, agg.CAF):
        return spectral.caf_coefficients(D, finite, rule.f)
    return coefficients.cc_coefficients(D, finite, rule.tau, rule.iters)
