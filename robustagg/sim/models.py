"""Models as functions of one flat parameter vector.

Keeping the parameters in one ``(d,)`` vector makes a worker's gradient a
row of the ``(n, d)`` matrix the aggregation rules take, and lets
``torch.func.vmap`` compute all n workers' gradients in one batched pass.

Two kinds share one interface (``dim``, ``init``, ``logits``, ``loss``,
``evaluate``): :class:`FlatModel`, a stack of linear layers written over
``w`` directly (the built-in ``logreg`` and ``mlp``), and
:class:`ModuleModel`, any ``torch.nn.Module`` run over ``w`` with
:func:`torch.func.functional_call` (the built-in ``cnn`` and ``resnet20``,
and a user's own network)::

    net = MyNet()                                   # any module without batch statistics
    model = ModuleModel(net, input_shape=(1, 28, 28))
    result = run_byzantine(ByzantineConfig(data="mnist:/data/mnist"), model=model)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_choice, check_generator, check_int
from .networks import ResNet20, SmallCNN

__all__ = ["MODELS", "FlatModel", "Model", "ModuleModel", "chunked", "curve_point", "make_model"]

MODELS = ("mlp", "logreg", "cnn", "resnet20")

# Evaluation runs the examples through the model this many at a time, so that a CIFAR-sized test set
# through ResNet-20 holds a bounded set of activations.
EVAL_CHUNK = 2048


def chunked(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``forward(x)``, run ``EVAL_CHUNK`` examples at a time and concatenated."""
    return torch.cat([forward(part) for part in torch.split(x, EVAL_CHUNK)])


class _Classifier:
    """The loss and the evaluation, which both kinds of model derive from their ``logits(w, x)``."""

    def loss(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the batch."""
        return F.cross_entropy(self.logits(w, x), y)

    @torch.no_grad()
    def evaluate(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) on the examples ``x``, ``y``."""
        out = chunked(lambda part: self.logits(w, part), x)
        return float((out.argmax(1) == y).float().mean()), float(F.cross_entropy(out, y))


@dataclass(frozen=True)
class FlatModel(_Classifier):
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


class ModuleModel(_Classifier):
    """Any ``torch.nn.Module`` as a function of one flat parameter vector.

    ``logits(w, x)`` is ``functional_call(module, params(w), x)`` with ``params(w)`` the module's
    parameters as views of ``w`` (in ``named_parameters`` order), so ``torch.func.grad`` and ``vmap``
    over ``w`` give the per-worker gradients in one batched call. The examples arrive flat,
    ``(..., features)``, and are viewed as ``(..., *input_shape)`` first.

    ``init(generator)`` re-runs every submodule's ``reset_parameters`` from a seed drawn from
    ``generator`` (PyTorch's default initialisation, repeatable), or with ``reinitialize=False`` returns
    the module's parameters as they are (a user's own initialisation); re-running writes the module's
    parameters in place. The Byzantine, federated and personalized lines train the flat vector, never
    the module (its parameters give the shapes and the initial point); the masked line trains the module.

    A module with batch-norm layers (or any buffer) is refused: per-worker batch statistics are state
    that vmap cannot update; use ``nn.GroupNorm`` or ``nn.LayerNorm``.
    """

    def __init__(
        self, module: nn.Module, input_shape: tuple[int, ...], name: str = "module", reinitialize: bool = True
    ) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(module).__name__}")
        buffers = [n for n, _ in module.named_buffers()]
        if buffers:
            raise ValueError(
                f"model: the module has buffers ({', '.join(buffers[:3])}); per-worker batch statistics do not "
                "vmap, use nn.GroupNorm or nn.LayerNorm instead of batch norm"
            )
        params = dict(module.named_parameters())
        if not params:
            raise ValueError("model: the module has no parameters")
        self.module = module
        self.name = name
        self.input_shape = tuple(check_int(s, "input_shape", "model", low=1) for s in input_shape)
        self.names = tuple(params)
        self.shapes = tuple(tuple(p.shape) for p in params.values())
        self.reinitialize = reinitialize

    @property
    def dim(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def unflatten(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(w, [math.prod(s) for s in self.shapes])
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes)}

    def logits(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[:-1] + self.input_shape)
        return torch.func.functional_call(self.module, self.unflatten(w), (x,))

    @torch.no_grad()
    def init(self, generator: torch.Generator) -> torch.Tensor:
        """The initial flat parameters (float32, on the CPU): see the class docstring."""
        generator = check_generator(generator, "generator", "model")
        if self.reinitialize:
            seed = int(torch.randint(2**62, (), generator=generator, device=generator.device))
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)  # the CPU generator only: fork_rng restores it
                for m in self.module.modules():
                    if hasattr(m, "reset_parameters"):
                        m.reset_parameters()
        return torch.cat([p.detach().reshape(-1).float().cpu() for p in self.module.parameters()])


Model = FlatModel | ModuleModel


def curve_point(
    model: Model, w: torch.Tensor, t: int, test: tuple[torch.Tensor, torch.Tensor], train: tuple[torch.Tensor, ...]
) -> dict:
    """One evaluation of a line's curve: round ``t``, test accuracy and loss, training loss."""
    accuracy, loss = model.evaluate(w, *test)
    return {"round": t, "test_accuracy": accuracy, "test_loss": loss, "train_loss": model.evaluate(w, *train)[1]}


def make_model(name: str, shape: tuple[int, ...], classes: int, hidden: int = 64) -> Model:
    """A built-in model for examples of ``shape`` (C, H, W) and ``classes`` labels.

    ``logreg`` (one linear layer) and ``mlp`` (features-hidden-classes, ReLU) are flat models over the
    ``C * H * W`` features; ``cnn`` (:class:`~robustagg.sim.networks.SmallCNN`) and ``resnet20``
    (:class:`~robustagg.sim.networks.ResNet20`) are modules over the images.
    """
    check_choice(name, MODELS, "model", "model")
    classes, hidden = (check_int(v, k, "model", low=1) for k, v in (("classes", classes), ("hidden", hidden)))
    shape = tuple(check_int(s, "shape", "model", low=1) for s in shape)
    features = math.prod(shape)
    if name == "logreg":
        return FlatModel(name, ((classes, features), (classes,)))
    if name == "mlp":
        return FlatModel(name, ((hidden, features), (hidden,), (classes, hidden), (classes,)))
    if len(shape) != 3:
        raise ValueError(f"model: {name} takes images (C, H, W), got examples of shape {shape}")
    module = SmallCNN(*shape, classes) if name == "cnn" else ResNet20(shape[0], classes)
    return ModuleModel(module, shape, name)
