"""Masked / partial training and AC/DC (SPEC 6.4).

Partial training (Mohtashami, Jaggi, Stich, "Masked Training of Neural
Networks with Partial Gradients", AISTATS 2022) trains a *core* sub-network
on some steps and the full network on the others. On a core step the
forward pass uses the core only and the SGD-with-momentum step

    m <- mu * m + (g + lambda * w),    w <- w - lr * m

is applied where the core mask is set; elsewhere the weights *and their
momentum* keep their bits, so the next full step resumes where the last one
left off. The core then works as a stand-alone smaller network
(:func:`extract_core`) while the full network keeps its accuracy.

AC/DC (Peste, Iofinova, Vladu, Alistarh, "AC/DC: Alternating
Compressed/DeCompressed Training of Deep Neural Networks", NeurIPS 2021)
alternates dense phases with sparse phases; each sparse phase starts by
keeping the global top-k weights by magnitude, zeroing the rest and training
the survivors only.

A *core* is a dict ``{parameter name: bool mask}`` over a module's
``named_parameters()``, each mask shaped like its parameter. A parameter
absent from the dict is entirely in the core (trained on every step); so a
core only lists what it restricts, and parameters such as biases or
normalisation scales stay dense unless named.

Both trainings step through :class:`MaskedSGD`, which updates every
parameter in one native multi-tensor call (``robustagg.ops.masked_sgd_step_``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call

from .. import ops
from ..timing import Stopwatch
from ..validation import (
    check_disjoint,
    check_generator,
    check_int,
    check_positive,
    check_real,
    check_tensor_list,
    check_tensors,
)

__all__ = [
    "Core",
    "width_core",
    "random_core",
    "magnitude_core",
    "core_forward",
    "extract_core",
    "MaskedSGD",
    "AlternatingSchedule",
    "ACDCSchedule",
    "PartialTrainer",
    "ACDCTrainer",
]

Core = dict[str, torch.Tensor]
StepMasks = Sequence[torch.Tensor] | Mapping[torch.Tensor | str, torch.Tensor]


def _check_fraction(value: object, name: str, where: str) -> float:
    return check_real(value, name, where, 0.0, 1.0, low_open=True)


def _check_core(core: object, params: Mapping[str, torch.Tensor], where: str) -> Core:
    """A dict from parameter names to bool masks shaped like those parameters.

    A key that is not a str (an int index, a tensor) is refused rather than
    looked up: it would name no parameter, and the parameter it meant would
    silently be trained everywhere.
    """
    if not isinstance(core, Mapping):
        raise TypeError(f"{where}: core must be a dict of parameter names to bool masks, got {type(core).__name__}")
    for name, mask in core.items():
        if not isinstance(name, str):
            raise TypeError(f"{where}: core keys must be parameter names (str), got {type(name).__name__} {name!r}")
        if name not in params:
            raise KeyError(f"{where}: the model has no parameter {name!r}")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TypeError(f"{where}: the mask of {name!r} must be a bool tensor, got {got}")
        if mask.shape != params[name].shape:
            raise ValueError(
                f"{where}: the mask of {name!r} must have the parameter's shape "
                f"{list(params[name].shape)}, got {list(mask.shape)}"
            )
    return dict(core)


# ---------------------------------------------------------------------------
# Cores


def _layers(model: nn.Module, where: str) -> list[tuple[str, nn.Module]]:
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        raise ValueError(f"{where}: the model has no nn.Linear or nn.Conv2d layer")
    return layers


def width_core(model: nn.Module, fraction: float) -> Core:
    """The core of the first ``k = max(1, round(fraction * units))`` units of every hidden layer.

    The model's ``nn.Linear`` / ``nn.Conv2d`` layers, in registration order,
    are taken to be its forward order (as in an ``nn.Sequential`` with
    activations, pooling and flattening in between). Every layer but the last
    keeps its first k output units (channels for Conv2d) and their biases;
    every layer but the first keeps only the inputs coming from the previous
    layer's kept units; the output layer keeps all its outputs. A Linear
    after a Conv2d reads the channels flattened ``(C, H, W)`` row-major
    (``torch.flatten``), so it keeps the input features of the kept channels.
    A Conv2d whose input channels are as many as an earlier layer's outputs
    but not the previous one's (a residual block's shortcut, or the next
    block's first convolution after a shortcut) keeps the channels the latest
    such layer kept: the kept units are always a prefix, so the branches that
    a residual sum adds keep the same channels.
    Other parameters (e.g. normalisation) are absent, so entirely in the core.
    This is the width-wise core of Mohtashami, Jaggi, Stich (AISTATS 2022).
    """
    fraction = _check_fraction(fraction, "fraction", "width_core")
    layers = _layers(model, "width_core")
    core: Core = {}
    kept_in: torch.Tensor | None = None  # bool over the previous layer's outputs
    kept_by_width: dict[int, torch.Tensor] = {}  # the kept outputs of the latest layer of each output width
    for i, (name, layer) in enumerate(layers):
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            raise NotImplementedError(
                f"width_core: grouped convolution {name!r} (groups={layer.groups}) is not supported"
            )
        w = layer.weight
        out_units = w.shape[0]
        rows = torch.zeros(out_units, dtype=torch.bool, device=w.device)
        rows[: out_units if i == len(layers) - 1 else max(1, round(fraction * out_units))] = True
        cols = torch.ones(w.shape[1], dtype=torch.bool, device=w.device)
        if kept_in is not None:
            if w.shape[1] == kept_in.numel():
                cols = kept_in
            elif isinstance(layer, nn.Linear) and w.shape[1] % kept_in.numel() == 0:
                cols = kept_in.repeat_interleave(w.shape[1] // kept_in.numel())  # flattened (C, H, W)
            elif isinstance(layer, nn.Conv2d) and w.shape[1] in kept_by_width:
                cols = kept_by_width[w.shape[1]]
            else:
                raise ValueError(
                    f"width_core: layer {name!r} takes {w.shape[1]} inputs, which do not follow "
                    f"from the previous layer's {kept_in.numel()} outputs"
                )
        mask = rows[:, None] & cols[None, :]
        core[f"{name}.weight" if name else "weight"] = mask.view(mask.shape + (1,) * (w.dim() - 2)).expand_as(w).clone()
        if layer.bias is not None:
            core[f"{name}.bias" if name else "bias"] = rows.clone()
        kept_by_width[out_units] = rows
        kept_in = rows
    return core


def random_core(
    model: nn.Module, fraction: float, generator: torch.Generator | None = None, include: Iterable[str] | None = None
) -> Core:
    """Elementwise random core: exactly ``round(fraction * numel)`` entries of every included parameter.

    ``include`` names the parameters to mask (default: all); each one's kept
    entries are drawn uniformly without replacement (``torch.randperm``
    with ``generator``), the other parameters are entirely in the core.
    """
    fraction = _check_fraction(fraction, "fraction", "random_core")
    generator = check_generator(generator, "generator", "random_core")
    params = dict(model.named_parameters())
    names = list(params) if include is None else list(include)
    core: Core = {}
    for name in names:
        if name not in params:
            raise KeyError(f"random_core: the model has no parameter {name!r}")
        p = params[name]
        flat = torch.zeros(p.numel(), dtype=torch.bool)
        flat[torch.randperm(p.numel(), generator=generator)[: round(fraction * p.numel())]] = True
        core[name] = flat.view(p.shape).to(p.device)
    return core


@torch.no_grad()
def magnitude_core(model: nn.Module, density: float, include: Iterable[str] | None = None) -> Core:
    """Global magnitude top-k: the ``k = max(1, round(density * total))`` largest ``|w|`` over the included parameters.

    ``include`` names the parameters (default: those of dimension >= 2, the
    weights of linear and convolutional layers, as AC/DC prunes them); the
    threshold is global, so layers keep different fractions. Exactly k
    entries are kept (ties broken by ``torch.topk``). Peste et al., NeurIPS 2021.
    """
    density = _check_fraction(density, "density", "magnitude_core")
    params = dict(model.named_parameters())
    names = [n for n, p in params.items() if p.dim() >= 2] if include is None else list(include)
    for name in names:
        if name not in params:
            raise KeyError(f"magnitude_core: the model has no parameter {name!r}")
    if not names:
        raise ValueError("magnitude_core: no parameter to prune")
    scores = torch.cat([params[n].detach().abs().reshape(-1) for n in names])
    keep = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    keep[torch.topk(scores, max(1, round(density * scores.numel())), sorted=False).indices] = True
    return {n: part.view_as(params[n]) for n, part in zip(names, torch.split(keep, [params[n].numel() for n in names]))}


def core_forward(model: nn.Module, core: Core, *inputs: torch.Tensor) -> torch.Tensor:
    """``model(*inputs)`` with every parameter p of the core replaced by ``p * mask``.

    Runs through :func:`torch.func.functional_call`, so the stored
    parameters are untouched and autograd gives ``grad * mask``: exactly zero
    gradient outside the core.
    """
    params = dict(model.named_parameters())
    masked = {name: params[name] * mask for name, mask in _check_core(core, params, "core_forward").items()}
    return functional_call(model, masked, inputs)


@torch.no_grad()
def extract_core(model: nn.Sequential, core: Core) -> nn.Sequential:
    """A stand-alone ``nn.Sequential`` holding only the core of a width core of a Linear stack.

    ``model`` must be an ``nn.Sequential`` of ``nn.Linear`` layers and
    parameterless modules (activations, dropout); every Linear's mask must be
    a block ``rows x columns`` whose columns are the previous Linear's rows
    and whose bias mask (when present in the core) equals its rows, as
    :func:`width_core` makes. The copy keeps those rows and columns, so its
    output equals :func:`core_forward`'s (up to summation order).
    """
    if not isinstance(model, nn.Sequential):
        raise NotImplementedError(f"extract_core: only nn.Sequential stacks are supported, got {type(model).__name__}")
    core = _check_core(core, dict(model.named_parameters()), "extract_core")
    layers: list[nn.Module] = []
    kept_in: torch.Tensor | None = None
    for name, module in model.named_children():
        if not isinstance(module, nn.Linear):
            if any(True for _ in module.parameters()):
                raise NotImplementedError(
                    f"extract_core: layer {name!r} ({type(module).__name__}) has parameters; only nn.Linear layers may"
                )
            layers.append(copy.deepcopy(module))
            continue
        w = module.weight
        mask = core.get(f"{name}.weight", torch.ones_like(w, dtype=torch.bool))
        rows, cols = mask.any(1), mask.any(0)
        if not torch.equal(mask, rows[:, None] & cols[None, :]):
            raise ValueError(f"extract_core: the mask of {name}.weight is not a block of rows x columns")
        if kept_in is not None and not torch.equal(cols, kept_in):
            raise ValueError(f"extract_core: {name}.weight keeps other inputs than the previous layer's kept outputs")
        if module.bias is not None and f"{name}.bias" in core and not torch.equal(core[f"{name}.bias"], rows):
            raise ValueError(f"extract_core: the mask of {name}.bias differs from the kept rows of {name}.weight")
        small = nn.Linear(
            int(cols.sum()), int(rows.sum()), bias=module.bias is not None, device=w.device, dtype=w.dtype
        )
        small.weight.copy_(w[rows][:, cols])
        if module.bias is not None:
            small.bias.copy_(module.bias[rows])
        layers.append(small)
        kept_in = rows
    if kept_in is None:
        raise ValueError("extract_core: the model has no nn.Linear layer")
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------
# Optimizer


class MaskedSGD(torch.optim.Optimizer):
    r"""SGD with momentum, optionally restricted to masks: one native call per parameter group.

    Where a parameter's mask is set (everywhere when ``step()`` gets no masks):

    .. math::
        d = g + \lambda w, \qquad m \leftarrow \mu m + d, \qquad w \leftarrow w - \text{lr}\, m

    (:class:`torch.optim.SGD` without dampening or Nesterov, buffers starting
    at zero); where it is not set, the weight and its momentum keep their
    bits. Parameters whose ``grad`` is None are skipped. ``params`` are
    tensors, ``(name, tensor)`` pairs (e.g. ``model.named_parameters()``) or
    parameter groups. Mohtashami, Jaggi, Stich, AISTATS 2022; Peste et al.,
    NeurIPS 2021.

    ``step(masks)`` takes either a list of masks aligned with the parameters
    that have gradients (in group order), or a dict keyed by parameter (or
    by name, for named parameters); a parameter absent from the dict is
    updated everywhere. A mask is a bool tensor shaped like its parameter or
    a uint8 tensor from :func:`robustagg.ops.pack_mask`, one kind per step.

    ``packed=True`` packs bool masks 8 per byte before the step and keeps
    the packed copy, one per parameter, until that parameter is given a
    different mask tensor: the kept copies take 1/8 of the bool masks'
    memory and every step reads 1 bit of mask per element instead of a byte.
    """

    def __init__(
        self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, packed: bool = False
    ) -> None:
        lr = check_positive(lr, "lr", "MaskedSGD")
        _, momentum, weight_decay = _check_group({"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self.packed = bool(packed)
        self._packed: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] = {}  # param -> (bool mask, packed)
        self._everywhere: dict[tuple[int, bool], torch.Tensor] = {}  # (id(param), packed) -> all-set mask

    def _pack(self, p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        cached = self._packed.get(p)
        if cached is None or cached[0] is not mask:
            cached = (mask, ops.pack_mask(mask))
            self._packed[p] = cached
        return cached[1]

    def _all_set(self, p: torch.Tensor, packed: bool) -> torch.Tensor:
        mask = self._everywhere.get((id(p), packed))
        if mask is None:
            mask = torch.ones_like(p, dtype=torch.bool, memory_format=torch.contiguous_format)
            mask = ops.pack_mask(mask) if packed else mask
            self._everywhere[(id(p), packed)] = mask
        return mask

    def _resolve(
        self, live: list[tuple[dict, torch.Tensor, str | None]], masks: StepMasks
    ) -> list[torch.Tensor | None]:
        if isinstance(masks, Mapping):
            by_param = {id(p) for _, p, _ in live}
            names = {name for _, _, name in live if name is not None}
            for key in masks:
                if not isinstance(key, (str, torch.Tensor)):
                    raise TypeError(
                        f"MaskedSGD: masks keys must be parameters or parameter names (str), "
                        f"got {type(key).__name__} {key!r}"
                    )
                if isinstance(key, str) and key not in names:
                    raise KeyError(f"MaskedSGD: no parameter with a gradient is named {key!r}")
                if isinstance(key, torch.Tensor) and id(key) not in by_param:
                    raise KeyError("MaskedSGD: a mask is keyed by a tensor that is not a parameter with a gradient")
            by_id = {id(k): v for k, v in masks.items() if isinstance(k, torch.Tensor)}
            return [by_id.get(id(p), masks.get(name) if name is not None else None) for _, p, name in live]
        if isinstance(masks, torch.Tensor) or not isinstance(masks, Sequence):
            raise TypeError(f"MaskedSGD: masks must be a list or a dict of tensors, got {type(masks).__name__}")
        if len(masks) != len(live):
            raise ValueError(f"MaskedSGD: {len(masks)} masks for {len(live)} parameters with gradients")
        return list(masks)

    @torch.no_grad()
    def step(
        self, masks: StepMasks | None = None, closure: Callable[[], torch.Tensor] | None = None
    ) -> torch.Tensor | None:
        """One step; masked where ``masks`` says (see the class), everywhere without masks."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        live = []
        for group in self.param_groups:
            names = group.get("param_names", [None] * len(group["params"]))
            live += [(group, p, name) for p, name in zip(group["params"], names) if p.grad is not None]
        for _, p, _ in live:
            if p.grad.is_sparse:
                raise RuntimeError("MaskedSGD: sparse gradients are not supported")
        chosen = None if masks is None else self._resolve(live, masks)
        # Everything is checked before the first write: one native call per group would otherwise leave the
        # groups before a refused one stepped.
        for group in self.param_groups:
            _check_group(group)
        if live:
            params = check_tensors([p for _, p, _ in live], "params", "MaskedSGD")
            check_tensor_list([p.grad for p in params], params, "grads", "MaskedSGD")
            check_disjoint(params, [p.grad for p in params], "MaskedSGD")
        for k, (_, p, name) in enumerate(live):
            if chosen is not None and chosen[k] is not None:
                _check_mask(chosen[k], p, repr(name) if name is not None else f"params[{k}]")
        if chosen is not None:
            packed = self.packed or any(m is not None and m.dtype == torch.uint8 for m in chosen)
            chosen = [
                self._all_set(p, packed) if m is None else (self._pack(p, m) if packed and m.dtype == torch.bool else m)
                for (_, p, _), m in zip(live, chosen)
            ]
        for group in self.param_groups:
            idx = [k for k, (g, _, _) in enumerate(live) if g is group]
            if not idx:
                continue
            params = [live[k][1] for k in idx]
            buffers = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buffers.append(state["momentum_buffer"])
            ops.masked_sgd_step_(
                params,
                [p.grad for p in params],
                buffers,
                group["lr"],
                group["momentum"],
                masks=None if chosen is None else [chosen[k] for k in idx],
                weight_decay=group["weight_decay"],
            )
        return loss


def _check_group(group: dict) -> tuple[float, float, float]:
    """A group's (lr, momentum, weight_decay); lr may be 0 here, where a schedule can take it."""
    return (
        check_real(group["lr"], "lr", "MaskedSGD", low=0.0),
        check_real(group["momentum"], "momentum", "MaskedSGD", 0.0, 1.0, high_open=True),
        check_real(group["weight_decay"], "weight_decay", "MaskedSGD", low=0.0),
    )


def _check_mask(mask: object, p: torch.Tensor, what: str) -> None:
    """A bool mask shaped like p, or p's mask packed by ops.pack_mask, on p's device."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"MaskedSGD: the mask of {what} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        if mask.shape != p.shape:
            raise ValueError(
                f"MaskedSGD: the mask of {what} must have its shape {list(p.shape)}, got {list(mask.shape)}"
            )
    elif mask.dtype == torch.uint8:
        if mask.dim() != 1 or mask.numel() != (p.numel() + 7) // 8:
            raise ValueError(
                f"MaskedSGD: the packed mask of {what} must be 1-D with ceil(numel / 8) = "
                f"{(p.numel() + 7) // 8} bytes, got shape {list(mask.shape)}"
            )
    else:
        raise TypeError(f"MaskedSGD: the mask of {what} must be bool or uint8 (packed bits), got {mask.dtype}")
    if mask.device != p.device:
        raise ValueError(f"MaskedSGD: the mask of {what} is on {mask.device}, the parameter on {p.device}")


# ---------------------------------------------------------------------------
# Schedules


class AlternatingSchedule:
    """Which steps are core steps: after ``warmup`` full steps, periods of ``period`` steps whose first ``core_steps`` are core.

    ``is_core(t)`` for the 0-based step t: ``t >= warmup and (t - warmup) %
    period < core_steps``. ``period=2, core_steps=1`` alternates core and
    full steps (C F C F ...); ``core_steps=0`` is full training and
    ``core_steps=period`` trains the core only. Mohtashami, Jaggi, Stich,
    AISTATS 2022.
    """

    def __init__(self, period: int = 2, core_steps: int = 1, warmup: int = 0) -> None:
        self.period = check_int(period, "period", "AlternatingSchedule", low=1)
        self.core_steps = check_int(core_steps, "core_steps", "AlternatingSchedule", low=0)
        self.warmup = check_int(warmup, "warmup", "AlternatingSchedule", low=0)
        if core_steps > period:
            raise ValueError(f"AlternatingSchedule: core_steps must be <= period, got {core_steps} > {period}")

    def is_core(self, t: int) -> bool:
        return t >= self.warmup and (t - self.warmup) % self.period < self.core_steps

    def __repr__(self) -> str:
        return f"AlternatingSchedule(period={self.period}, core_steps={self.core_steps}, warmup={self.warmup})"


class ACDCSchedule:
    """AC/DC's phases over ``total_steps`` steps (Peste et al., NeurIPS 2021).

    A dense warm-up of ``round(warmup_fraction * total_steps)`` steps; then
    phases of ``phase_steps`` steps, sparse first, alternating sparse and
    dense; the last ``round(final_sparse_fraction * total_steps)`` steps are
    one sparse phase (fine-tuning the final sparse network). The paper's
    ImageNet schedule (10 warm-up epochs, 5-epoch phases, 10 final epochs
    of 100) is the default: 10%, 5% (``phase_steps=None``) and 10%.
    ``density`` is the fraction of weights the sparse phases keep.
    ``new_sparse_phase(t)`` is True on the first step of every sparse phase,
    when the top-k mask is recomputed; a mid-schedule sparse phase that runs
    into the final one continues with its mask.
    """

    def __init__(
        self,
        total_steps: int,
        density: float,
        warmup_fraction: float = 0.1,
        phase_steps: int | None = None,
        final_sparse_fraction: float = 0.1,
    ) -> None:
        where = "ACDCSchedule"
        self.total_steps = check_int(total_steps, "total_steps", where, low=1)
        self.density = _check_fraction(density, "density", where)
        warmup_fraction = check_real(warmup_fraction, "warmup_fraction", where, 0.0, 1.0)
        final_sparse_fraction = check_real(final_sparse_fraction, "final_sparse_fraction", where, 0.0, 1.0)
        if warmup_fraction + final_sparse_fraction > 1.0:
            raise ValueError(
                f"{where}: warmup_fraction + final_sparse_fraction must be <= 1, "
                f"got {warmup_fraction} + {final_sparse_fraction}"
            )
        self.phase_steps = (
            max(1, round(0.05 * total_steps))
            if phase_steps is None
            else check_int(phase_steps, "phase_steps", where, low=1)
        )
        self.warmup_steps = round(warmup_fraction * total_steps)
        self.final_start = total_steps - round(final_sparse_fraction * total_steps)

    def phase(self, t: int) -> str:
        """``"dense"`` or ``"sparse"`` for the 0-based step t."""
        if t < self.warmup_steps:
            return "dense"
        if t >= self.final_start:
            return "sparse"
        return "sparse" if (t - self.warmup_steps) // self.phase_steps % 2 == 0 else "dense"

    def new_sparse_phase(self, t: int) -> bool:
        return self.phase(t) == "sparse" and (t == 0 or self.phase(t - 1) == "dense")

    def __repr__(self) -> str:
        return (
            f"ACDCSchedule(total_steps={self.total_steps}, density={self.density}, warmup_steps={self.warmup_steps}, "
            f"phase_steps={self.phase_steps}, final_start={self.final_start})"
        )


# ---------------------------------------------------------------------------
# Trainers

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _Trainer:
    def __init__(self, model: nn.Module, optimizer: MaskedSGD) -> None:
        if not isinstance(optimizer, MaskedSGD):
            raise TypeError(f"{type(self).__name__}: optimizer must be a MaskedSGD, got {type(optimizer).__name__}")
        self.model = model
        self.optimizer = optimizer
        self.steps = 0
        self.counts: dict[str, int] = {}
        self._clock = Stopwatch(next(model.parameters()).device, "forward_backward", "step")
        self._params = dict(model.named_parameters())

    @property
    def seconds(self) -> dict[str, float]:
        """Seconds spent in forward + backward and in optimizer steps (on a GPU, the kernels' own time)."""
        return self._clock.seconds

    def _by_param(self, core: Core) -> dict[torch.Tensor, torch.Tensor]:
        return {self._params[n]: m for n, m in _check_core(core, self._params, type(self).__name__).items()}

    def _train(
        self, kind: str, core: Core | None, masks: dict | None, loss_fn: LossFn, inputs: tuple, target: torch.Tensor
    ) -> torch.Tensor:
        self._clock.restart()
        out = self.model(*inputs) if core is None else core_forward(self.model, core, *inputs)
        loss = loss_fn(out, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._clock.lap("forward_backward")
        self.optimizer.step(masks)
        self._clock.lap("step")
        self.steps += 1
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return loss.detach()


class PartialTrainer(_Trainer):
    """Partial training: core steps (core forward, masked step) and full steps, as ``schedule`` says.

    ``step(loss_fn, *inputs, target=y)`` runs step number ``self.steps``:
    ``loss_fn(out, y)`` with ``out = core_forward(model, core, *inputs)`` on
    a core step and ``model(*inputs)`` on a full step, backward, then the
    optimizer's step masked by the core (core step) or everywhere (full
    step); it returns the loss (a 0-d tensor, so that a step never waits
    for the device). On a core step the parameters outside the core and
    their momentum keep their bits (Mohtashami, Jaggi, Stich, AISTATS 2022). ``counts`` holds the number of ``"core"`` and ``"full"``
    steps, ``seconds`` the time spent in forward + backward and in steps.
    """

    def __init__(self, model: nn.Module, optimizer: MaskedSGD, core: Core, schedule: AlternatingSchedule) -> None:
        super().__init__(model, optimizer)
        self.core = core
        self.schedule = schedule
        self._masks = self._by_param(core)

    def step(self, loss_fn: LossFn, *inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.schedule.is_core(self.steps):
            return self._train("core", self.core, self._masks, loss_fn, inputs, target)
        return self._train("full", None, None, loss_fn, inputs, target)


class ACDCTrainer(_Trainer):
    """AC/DC: dense phases train everything; sparse phases train the global magnitude top-k only.

    At the first step of every sparse phase (``schedule.new_sparse_phase``)
    the mask ``magnitude_core(model, schedule.density, include)`` is
    recomputed, the pruned weights are set to zero, and so is their
    momentum: a pruned weight is gone, and when the next dense phase revives
    it, it starts from zero without the velocity of its earlier life. During
    the sparse phase the forward pass uses the masked weights and the step is
    masked, so pruned weights stay exactly zero. Parameters outside
    ``include`` (default: the biases and other 1-D parameters) stay dense.
    Peste, Iofinova, Vladu, Alistarh, NeurIPS 2021. ``mask`` is the current
    (or last) sparse mask, None before the first sparse phase; ``counts``
    holds the number of ``"dense"`` and ``"sparse"`` steps.
    """

    def __init__(
        self, model: nn.Module, optimizer: MaskedSGD, schedule: ACDCSchedule, include: Iterable[str] | None = None
    ) -> None:
        super().__init__(model, optimizer)
        self.schedule = schedule
        self.include = None if include is None else list(include)
        self.mask: Core | None = None
        self._masks: dict[torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def _prune(self) -> None:
        self.mask = magnitude_core(self.model, self.schedule.density, self.include)
        self._masks = self._by_param(self.mask)
        for p, m in self._masks.items():
            p.mul_(m)
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                buf.mul_(m)

    def step(self, loss_fn: LossFn, *inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = self.steps
        if self.schedule.phase(t) == "dense":
            return self._train("dense", None, None, loss_fn, inputs, target)
        if self.schedule.new_sparse_phase(t) or self.mask is None:
            self._prune()
        return self._train("sparse", self.mask, self._masks, loss_fn, inputs, target)
