"""Models as functions of one flat parameter vector.

Keeping the parameters in one ``(d,)`` vector makes a worker's gradient a
row of the ``(n, d)`` matrix the aggregation rules take, and lets
``torch.func.vmap`` compute all n workers' gradients in one batched pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..validation import check_generator, check_int

__all__ = ["FlatModel", "make_model"]


@dataclass(frozen=True)
class FlatModel:
    """A classifier ``logits(w, x)`` whose parameters are the flat vector ``w``.

    ``shapes`` are the weight and bias shapes of the layers in order; the
    hidden layers use ReLU.
    """

    name: str
    shapes: tuple[tuple[int, ...], ...]

    @property
    def dim(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def unflatten(self, w: torch.Tensor) -> list[torch.Tensor]:
        parts = torch.split(w, [math.prod(s) for s in self.shapes])
        return [p.view(s) for p, s in zip(parts, self.shapes)]

    def logits(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        params = self.unflatten(w)
        h = x
        for k in range(0, len(params), 2):
            h = F.linear(h, params[k], params[k + 1])
            if k + 2 < len(params):
                h = torch.relu(h)
        return h

    def loss(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the batch."""
        return F.cross_entropy(self.logits(w, x), y)

    @torch.no_grad()
    def evaluate(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) on the examples ``x``, ``y``."""
        logits = self.logits(w, x)
        return float((logits.argmax(1) == y).float().mean()), float(F.cross_entropy(logits, y))

    def init(self, generator: torch.Generator) -> torch.Tensor:
        """PyTorch's ``nn.Linear`` initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
        generator = check_generator(generator, "generator", "model")
        parts = []
        for k in range(0, len(self.shapes), 2):
            fan_in = self.shapes[k][1]
            bound = 1.0 / math.sqrt(fan_in)
            for shape in self.shapes[k : k + 2]:
                parts.append((torch.rand(math.prod(shape), generator=generator) * 2 - 1) * bound)
        return torch.cat(parts)


def make_model(name: str, features: int, classes: int, hidden: int = 64) -> FlatModel:
    """``logreg`` (one linear layer) or ``mlp`` (features-hidden-classes, ReLU)."""
    features, classes, hidden = (
        check_int(v, k, "model", low=1) for k, v in (("features", features), ("classes", classes), ("hidden", hidden))
    )
    if name == "logreg":
        return FlatModel(name, ((classes, features), (classes,)))
    if name == "mlp":
        return FlatModel(name, ((hidden, features), (hidden,), (classes, hidden), (classes,)))
    raise ValueError(f"model: expected logreg or mlp, got {name!r}")
