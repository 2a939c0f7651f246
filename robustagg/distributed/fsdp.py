r"""Robust aggregation inside FSDP2 (``torch.distributed.fsdp.fully_shard``): a custom reduce-scatter.

FSDP2 reduces each unit's gradients with a reduce-scatter: rank r receives
the average over the ranks of shard r. :class:`RobustReduceScatter` replaces
that average with a robustagg rule::

    from torch.distributed.fsdp import fully_shard
    import robustagg.distributed as rd

    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)
    rd.use_robust_reduce_scatter(model, "cm")   # every FSDP unit, each with its own rule state

Each call is one ``all_to_all_single`` (rank r receives shard r of every
rank's unit gradient, an ``(n, s)`` matrix), the rule on it, and this rank's
``(s,)`` result. A rank sends :math:`(n-1) s` values, what a ring
reduce-scatter sends.

* Coordinate-wise rules (mean, coordinate median, trimmed mean, MeaMed) are
  the whole-model rule: FSDP's padding columns are zeros on every rank and
  never reach a parameter. Bit for bit under ``AVG`` (float32 and bfloat16,
  FSDP's default) and under ``SUM`` when FSDP's division of the output
  (``post`` below) is by a power of two (n = 2, 4, 8, ...); otherwise that
  division rounds once more, within 1 ulp.
* Distance rules (Krum, Multi-Krum, geometric median, centered clipping) run
  once per FSDP unit: one extra ``all_reduce`` of the unit's ``(n, n)``
  float64 distances (``(n+1)^2`` for centered clipping, plus the non-finite
  counts), then the coefficients and this rank's combination. This is a
  different rule from the whole-model one, **layer-wise Krum** and so on
  (the unit's rows are selected or weighted by the unit's distances only),
  so it must be asked for with ``layerwise=True``. Centered clipping's
  center is the unit's previous aggregate shard, kept by the comm object.
  Each rank's share of the all-reduced distances is trusted: a hostile
  rank can set the unit's coefficients (see the threat model).

FSDP's reduce op and divide factors are honoured so that the gradient FSDP
hands the optimizer is the rule's aggregate (times ``n / factor`` for a
custom ``set_gradient_divide_factor(factor)``, as with the mean), never
``n`` times it:

* ``AVG``: the rule's result;
* ``PREMUL_SUM(1/factor)``: ``n / factor`` times the rule's result;
* ``SUM`` (reduce dtypes other than float32/bfloat16, or forced sums): FSDP
  has divided the input by ``pre`` and divides the output by ``post``, with
  ``pre * post = factor``; the input is multiplied back by ``pre`` (a power
  of two: exact) and the result scaled by ``n / pre``. ``factor`` is the
  ``gradient_divide_factor`` given here (default ``n``);
  :func:`use_robust_reduce_scatter` gives FSDP the same one, on every unit
  (FSDP's ``set_gradient_divide_factor`` acts on one unit only).

Not supported: HSDP (a replicate dimension), asynchronous calls
(``async_op=True``), the Byzantine simulation and worker momentum (use the
DDP hook for those). Threat model: as the DDP hook's sharded mode (each rank
trusted to aggregate its shard; see :mod:`robustagg.distributed`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.distributed as dist

from .. import exact_geometry
from ..aggregators import Aggregator, CenteredClip
from ..coefficients import combine
from ..validation import check_int, check_positive
from .rules import DISTANCE, check_rule, row_coefficients

try:  # the interface FSDP2's set_custom_reduce_scatter takes
    from torch.distributed.fsdp._fully_shard._fsdp_api import ReduceScatter as _ReduceScatter
except ImportError:  # older torch: no custom reduce-scatter to plug into
    _ReduceScatter = object

__all__ = ["RobustReduceScatter", "use_robust_reduce_scatter"]


def _fsdp_sum_factors(factor: float, dtype: torch.dtype) -> tuple[float, float]:
    """FSDP2's (pre, post) division of a SUM reduce-scatter, as FSDP computes it: float32/bfloat16 divide the
    output only; other dtypes double p from 1 while p divides factor and p < factor / p, divide the input by
    that p (2 for factors 2 to 4, 4 for 8) and the output by factor / p."""
    if dtype in (torch.float32, torch.bfloat16):
        return 1.0, factor
    pre = 1
    while factor % pre == 0 and factor / pre > pre:
        pre *= 2
    return float(pre), factor / pre


class RobustReduceScatter(_ReduceScatter):
    r"""FSDP2 reduce-scatter that aggregates shard r over the ranks with a robust rule.

    Args:
        aggregator: a rule object or name, as for
            :class:`~robustagg.distributed.RobustHookState` (Bulyan and
            pipelines are refused).
        f: the f of a rule given by name.
        layerwise: must be ``True`` for a distance rule, which runs per FSDP
            unit (a layer-wise rule, see :mod:`robustagg.distributed.fsdp`).
        gradient_divide_factor: the factor given to FSDP's
            ``set_gradient_divide_factor``, if any (default: the group size).

    One object per FSDP unit (:func:`use_robust_reduce_scatter` makes them):
    centered clipping keeps the unit's center. Statistics: ``calls`` and
    ``sent_bytes`` (this rank's bytes, all-to-all plus distance all-reduce).
    """

    def __init__(
        self,
        aggregator: Aggregator | str,
        f: int = 0,
        layerwise: bool = False,
        gradient_divide_factor: float | None = None,
    ) -> None:
        f = check_int(f, "f", "RobustReduceScatter", low=0)
        self.aggregator = check_rule(aggregator, f, None, "RobustReduceScatter")  # n is checked at the first call
        if isinstance(self.aggregator, DISTANCE) and layerwise is not True:
            raise ValueError(
                f"RobustReduceScatter: {type(self.aggregator).__name__} is a distance rule and runs "
                "per FSDP unit, a layer-wise rule unlike the whole-model one; pass layerwise=True"
            )
        if gradient_divide_factor is not None:
            gradient_divide_factor = check_positive(
                gradient_divide_factor, "gradient_divide_factor", "RobustReduceScatter"
            )
        self.gradient_divide_factor = gradient_divide_factor
        self.calls = 0
        self.sent_bytes = 0
        self._center: torch.Tensor | None = None
        self._checked_n: int | None = None  # the group size the rule was checked for

    def allocate(self, size: Sequence[int], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A plain tensor for FSDP's reduce-scatter input and output."""
        return torch.empty(*size, dtype=dtype, device=device)

    def _scales(self, op: object, n: int, dtype: torch.dtype) -> tuple[float, float]:
        """(pre, mult): the input is multiplied by pre before the rule, the result by mult."""
        code = getattr(op, "op", op)  # a PREMUL_SUM ReduceOp carries .op and .factor
        if code == dist.ReduceOp.AVG:
            return 1.0, 1.0
        if code == dist.ReduceOp.PREMUL_SUM:
            return 1.0, n * float(op.factor)
        if code == dist.ReduceOp.SUM:
            factor = float(n if self.gradient_divide_factor is None else self.gradient_divide_factor)
            pre, _ = _fsdp_sum_factors(factor, dtype)
            return pre, n / pre
        raise ValueError(f"RobustReduceScatter: reduce op {op!r} is not supported (AVG, SUM or PREMUL_SUM)")

    @torch.no_grad()
    def __call__(
        self,
        output_tensor: torch.Tensor,
        input_tensor: torch.Tensor,
        group: dist.ProcessGroup,
        op: object,
        async_op: bool = False,
    ) -> None:
        if async_op:
            raise ValueError("RobustReduceScatter: async_op=True is not supported")
        n, width = group.size(), output_tensor.numel()
        if input_tensor.numel() != n * width:
            raise ValueError(
                f"RobustReduceScatter: input holds {input_tensor.numel()} values, not n * output = {n} * {width}"
            )
        if n != self._checked_n:  # e.g. Krum needs n > 2f + 2: refuse before any communication
            check_rule(self.aggregator, 0, n, "RobustReduceScatter")
            self._checked_n = n
        pre, mult = self._scales(op, n, input_tensor.dtype)
        recv = torch.empty_like(input_tensor)
        element = input_tensor.element_size()
        try:
            dist.all_to_all_single(recv, input_tensor.contiguous(), group=group)
        except RuntimeError as exc:
            raise RuntimeError(
                f"RobustReduceScatter: rank {dist.get_rank(group)} could not exchange shards over "
                f"the {n} ranks (a rank died, hung past the timeout, or ran a different model): {exc}"
            ) from exc
        self.sent_bytes += (n - 1) * width * element
        X = recv.view(n, width)
        if pre != 1.0:
            X.mul_(pre)
        rule = self.aggregator
        if isinstance(rule, DISTANCE):
            out = self._distance_rule(X, group)
        else:
            out = rule.aggregate(X)
        output_tensor.copy_(out if mult == 1.0 else out * mult)
        self.calls += 1
        return None

    def _distance_rule(self, X: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        """This rank's shard of the unit's distance rule: the unit's distances summed over the ranks."""
        center = None
        if isinstance(self.aggregator, CenteredClip):
            if self._center is None or self._center.shape != (X.shape[1],):
                self._center = X.new_zeros(X.shape[1])
            center = self._center.to(X.dtype)
        D, finite = exact_geometry.distances_and_finite(X, center)
        k = D.shape[0]
        packed = torch.cat([D.reshape(-1), (~finite).double()])
        try:
            dist.all_reduce(packed, group=group)
        except RuntimeError as exc:
            raise RuntimeError(
                f"RobustReduceScatter: rank {dist.get_rank(group)} could not all-reduce the unit's "
                f"distances over the {group.size()} ranks: {exc}"
            ) from exc
        self.sent_bytes += 2 * (group.size() - 1) * packed.numel() * 8 // group.size()
        packed = packed.cpu()
        c = row_coefficients(self.aggregator, packed[: k * k].view(k, k), packed[k * k :] == 0, X)
        out = combine(c, X, center)
        if center is not None:
            self._center = out.clone()
        return out


def use_robust_reduce_scatter(
    module: torch.nn.Module,
    aggregator: Aggregator | str,
    f: int = 0,
    layerwise: bool = False,
    gradient_divide_factor: float | None = None,
) -> dict[str, RobustReduceScatter]:
    """Give every FSDP unit in ``module`` its own :class:`RobustReduceScatter` (a deep copy of the rule).

    Call after ``fully_shard``. A ``gradient_divide_factor`` is also set on
    every unit (``set_gradient_divide_factor``), so that FSDP and the comms
    agree. Returns the comm objects by module name (``""`` for ``module``
    itself), for their statistics.
    """
    from torch.distributed.fsdp import FSDPModule

    template = RobustReduceScatter(aggregator, f, layerwise, gradient_divide_factor)  # checks the arguments
    comms: dict[str, RobustReduceScatter] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, FSDPModule):
            comms[name] = copy.deepcopy(template)
            sub.set_custom_reduce_scatter(comms[name])
            if gradient_divide_factor is not None:
                sub.set_gradient_divide_factor(gradient_divide_factor)
    if not comms:
        raise ValueError("use_robust_reduce_scatter: no FSDP unit in the module; call fully_shard first")
    return comms
