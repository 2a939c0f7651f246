"""Aggregator objects: robust rules any trainer can call.

An aggregator takes the n workers' contributions in any of three forms and
returns the aggregate in the same form:

* an ``(n, d)`` tensor            -> a ``(d,)`` tensor;
* a list of n equally-shaped tensors (one gradient per worker) -> one tensor of that shape;
* a list of n parameter lists (each a list of tensors with the same shapes) -> one list of tensors.

Structured inputs are flattened into one ``(n, d)`` matrix (one copy), the
rule runs once over all coordinates, and the result is split back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch

from . import ops

Contributions = Union[torch.Tensor, Sequence[torch.Tensor], Sequence[Sequence[torch.Tensor]]]

__all__ = ["Aggregator", "Mean", "CoordinateMedian", "TrimmedMean", "MeaMed"]


def _flatten(inputs: Contributions) -> tuple[torch.Tensor, object]:
    """Stack the contributions into an (n, d) matrix; also return how to undo it."""
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() != 2:
            raise ValueError(f"aggregator: a tensor input must be (n, d), got shape {tuple(inputs.shape)}")
        return inputs, None
    if not isinstance(inputs, Sequence) or isinstance(inputs, (str, bytes)) or len(inputs) == 0:
        raise TypeError("aggregator: expected an (n, d) tensor or a non-empty list of per-worker tensors or parameter lists")
    first = inputs[0]
    if isinstance(first, torch.Tensor):
        shape = first.shape
        for i, t in enumerate(inputs):
            if not isinstance(t, torch.Tensor) or t.shape != shape:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"aggregator: worker {i} sent {got}, expected a tensor of shape {tuple(shape)}")
        return torch.stack([t.reshape(-1) for t in inputs]), ("tensor", shape)
    if len(first) == 0:
        raise ValueError("aggregator: worker 0 sent an empty parameter list")
    shapes = [t.shape if isinstance(t, torch.Tensor) else None for t in first]
    rows = []
    for i, params in enumerate(inputs):
        if isinstance(params, torch.Tensor) or len(params) != len(shapes) or any(
            not isinstance(t, torch.Tensor) or t.shape != s for t, s in zip(params, shapes)
        ):
            raise ValueError(f"aggregator: worker {i}'s parameter list does not match worker 0's shapes {[tuple(s) for s in shapes]}")
        rows.append(torch.cat([t.reshape(-1) for t in params]))
    return torch.stack(rows), ("list", shapes)


def _unflatten(out: torch.Tensor, layout: object) -> torch.Tensor | list[torch.Tensor]:
    if layout is None:
        return out
    kind, shape = layout
    if kind == "tensor":
        return out.reshape(shape)
    sizes = [s.numel() for s in shape]
    return [part.reshape(s) for part, s in zip(torch.split(out, sizes), shape)]


class Aggregator:
    """Base class: subclasses implement :meth:`aggregate` on an ``(n, d)`` matrix."""

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, inputs: Contributions) -> torch.Tensor | list[torch.Tensor]:
        X, layout = _flatten(inputs)
        return _unflatten(self.aggregate(X), layout)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Mean(Aggregator):
    """Plain (weighted) average; not robust. See :func:`robustagg.mean`."""

    def __init__(self, weights: torch.Tensor | None = None) -> None:
        self.weights = weights

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        return ops.mean(X, self.weights)


class CoordinateMedian(Aggregator):
    """Coordinate-wise median. See :func:`robustagg.coordinate_median`."""

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        return ops.coordinate_median(X)


class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean dropping f values per side. See :func:`robustagg.trimmed_mean`."""

    def __init__(self, f: int) -> None:
        self.f = f

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        return ops.trimmed_mean(X, self.f)


class MeaMed(Aggregator):
    """Mean of the n - f values closest to the coordinate-wise median. See :func:`robustagg.meamed`."""

    def __init__(self, f: int) -> None:
        self.f = f

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        return ops.meamed(X, self.f)
