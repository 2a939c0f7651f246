"""Byzantine-robust training with worker momentum (SPEC 6.1).

Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
Optimization", ICML 2021: rules without memory can be defeated by attacks
that add a small bias every round (ALIE, IPM); if every worker sends its
momentum

    m_i <- beta * m_i + (1 - beta) * g_i

instead of its gradient g_i, the honest vectors' variance shrinks by about
(1 - beta) / (1 + beta), the bias has nowhere to hide, and the server step

    w <- w - lr * agg({m_i})

converges with any robust rule (best with centered clipping).

Two objects that any training loop can call:

* :class:`WorkerMomentum` keeps the n workers' momentum buffers and updates
  all of them in one native multi-tensor call (``robustagg.ops.momentum_update_``);
* :class:`RobustServer` aggregates the workers' vectors with any rule (and
  optional pre-aggregator) and takes the SGD step on the model's parameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import torch

from .. import ops
from ..aggregators import Aggregator, PreAggregator, flatten_contributions
from ..validation import check_positive, check_real, check_tensor_list, check_tensors

__all__ = ["WorkerMomentum", "RobustServer"]

WorkerRows = torch.Tensor | Sequence[Sequence[torch.Tensor]]


class WorkerMomentum:
    r"""Momentum of n workers, :math:`m_i \leftarrow \beta m_i + (1 - \beta) g_i`, from :math:`m_i = 0`.

    Call it with the workers' gradients, either as an ``(n, d)`` tensor (one
    row per worker) or as a list of n per-worker lists of tensors (each
    worker's parameter gradients); it returns the momentum in the same form
    (the buffers themselves: copy them before changing them). All n buffers
    are updated by one native multi-tensor call. ``beta = 0`` returns the
    gradients (as a copy), so that a non-finite gradient of one round does not
    leave ``0 * inf = nan`` in the buffer.

    Karimireddy, He, Jaggi, ICML 2021 (worker momentum, their Algorithm 2).
    """

    def __init__(self, beta: float) -> None:
        self.beta = check_real(beta, "beta", "WorkerMomentum", 0.0, 1.0, high_open=True)
        self.buffers: list[torch.Tensor] | None = None
        self._matrix: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the buffers (start again from zero momentum)."""
        self.buffers = None
        self._matrix = None

    def __call__(self, grads: WorkerRows) -> WorkerRows:
        if isinstance(grads, torch.Tensor):
            if grads.dim() != 2:
                raise ValueError(f"WorkerMomentum: gradients must be (n, d), got shape {tuple(grads.shape)}")
            flat = check_tensors([grads], "grads", "WorkerMomentum")
        else:
            if isinstance(grads, (str, bytes)) or not isinstance(grads, Sequence) or len(grads) == 0:
                raise TypeError(
                    "WorkerMomentum: expected an (n, d) tensor or a non-empty list of per-worker gradient lists"
                )
            # Every worker's list like worker 0's, checked before a buffer is made or written.
            first = check_tensors(grads[0], "grads[0]", "WorkerMomentum")
            flat = [
                g
                for i, worker in enumerate(grads)
                for g in check_tensor_list(worker, first, f"grads[{i}]", "WorkerMomentum", "grads[0]")
            ]
        if self.buffers is None:
            self.buffers = [torch.zeros_like(g, memory_format=torch.contiguous_format) for g in flat]
        elif len(self.buffers) != len(flat) or any(b.shape != g.shape for b, g in zip(self.buffers, flat)):
            raise ValueError(
                "WorkerMomentum: the gradients' shapes changed since the first call "
                f"({[tuple(b.shape) for b in self.buffers][:4]}... vs {[tuple(g.shape) for g in flat][:4]}...); call reset()"
            )
        if self.beta == 0.0:
            for b, g in zip(self.buffers, flat):
                b.copy_(g)
        else:
            ops.momentum_update_(self.buffers, [g.detach() for g in flat], self.beta)
        if isinstance(grads, torch.Tensor):
            return self.buffers[0]
        out, k = [], 0
        for worker in grads:
            out.append(self.buffers[k : k + len(worker)])
            k += len(worker)
        return out


class RobustServer:
    r"""Server step :math:`w \leftarrow w - \text{lr} \cdot \text{agg}(\text{pre}(\{x_i\}))`.

    ``params`` are the model's parameters (updated in place, in their
    order); ``aggregator`` is a robustagg :class:`~robustagg.Aggregator` (for
    example :class:`~robustagg.CenteredClip`, which keeps its center across
    steps) or any callable mapping an ``(n, d)`` tensor to ``(d,)``;
    ``pre_aggregator`` an optional :class:`~robustagg.PreAggregator` applied
    first (e.g. ``Bucketing(2)``). :meth:`step` takes the n workers' vectors
    (an ``(n, d)`` tensor whose columns follow the parameters' order and
    shapes, or a list of n per-worker lists of tensors shaped like
    ``params``) and returns the aggregate as a ``(d,)`` tensor. The time of
    the last aggregation (pre-aggregator and rule) is ``last_seconds``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        aggregator: Aggregator | Callable[[torch.Tensor], torch.Tensor],
        lr: float,
        pre_aggregator: PreAggregator | None = None,
    ) -> None:
        self.params = check_tensors(params, "params", "RobustServer")
        if not callable(aggregator):
            raise TypeError(
                f"RobustServer: aggregator must be an Aggregator or a callable, got {type(aggregator).__name__}"
            )
        if pre_aggregator is not None and not isinstance(pre_aggregator, PreAggregator):
            raise TypeError(
                f"RobustServer: pre_aggregator must be a PreAggregator or None, got {type(pre_aggregator).__name__}"
            )
        self.aggregator = aggregator
        self.pre_aggregator = pre_aggregator
        self.lr = check_positive(lr, "lr", "RobustServer")
        self.dim = sum(p.numel() for p in self.params)
        self.last_seconds = 0.0

    def aggregate(self, rows: WorkerRows) -> torch.Tensor:
        """The aggregate of the workers' vectors as a ``(d,)`` tensor (no step)."""
        X = flatten_contributions(rows)[0]
        if X.shape[1] != self.dim:
            raise ValueError(
                f"RobustServer: the workers' vectors have {X.shape[1]} coordinates, the parameters {self.dim}"
            )
        start = time.perf_counter()
        if self.pre_aggregator is not None:
            X = self.pre_aggregator.transform(X)
        agg = self.aggregator.aggregate(X) if isinstance(self.aggregator, Aggregator) else self.aggregator(X)
        self.last_seconds = time.perf_counter() - start
        if not isinstance(agg, torch.Tensor) or agg.shape != (self.dim,):
            got = list(agg.shape) if isinstance(agg, torch.Tensor) else type(agg).__name__
            raise ValueError(f"RobustServer: the aggregator returned {got}, expected a tensor of shape [{self.dim}]")
        return agg

    @torch.no_grad()
    def step(self, rows: WorkerRows) -> torch.Tensor:
        """Aggregate the workers' vectors and take the step on ``params``; returns the aggregate."""
        agg = self.aggregate(rows)
        parts = torch.split(agg.to(self.params[0].dtype), [p.numel() for p in self.params])
        torch._foreach_add_(self.params, [u.view_as(p) for u, p in zip(parts, self.params)], alpha=-self.lr)
        return agg
