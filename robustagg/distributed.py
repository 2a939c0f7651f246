"""Robust aggregation inside ``DistributedDataParallel``: a communication hook.

Plain DDP averages the ranks' gradients with an all-reduce. This hook
replaces that average with a robustagg rule::

    import robustagg.distributed as rd

    state = rd.RobustHookState(robustagg.CenteredClip(tau=1.0, iters=3), momentum=0.9)
    ddp_model.register_comm_hook(state, rd.robust_hook)

For every gradient bucket the hook all-gathers the n ranks' flat buckets
into an ``(n, numel)`` matrix ``X`` and applies the rule to it, identically on
every rank (same input, same deterministic kernels, same bits), so every
rank steps with the same aggregate and the replicas stay in sync.

* Coordinate-wise rules (:class:`~robustagg.Mean`,
  :class:`~robustagg.CoordinateMedian`, :class:`~robustagg.TrimmedMean`,
  :class:`~robustagg.MeaMed`) act per coordinate, so bucket by bucket is the
  whole-model rule.
* Distance rules (:class:`~robustagg.Krum`, :class:`~robustagg.MultiKrum`,
  :class:`~robustagg.GeometricMedian`, :class:`~robustagg.CenteredClip`) are
  exact for the whole model, not per bucket: squared distances add over
  blocks of coordinates, :math:`D = \\sum_b D^{(b)}` with
  :math:`D^{(b)}_{ij} = \\|x^{(b)}_i - x^{(b)}_j\\|^2`, and a row that is not
  finite in one bucket is not finite at all (its ``+inf`` survives the sum).
  Each bucket's ``(n, n)`` float64 ``D`` (with the center as an extra point
  for centered clipping) is added up, the gathered buckets are kept, and when
  the last bucket arrives the rule's row coefficients are computed once from
  the summed ``D`` by the same code as :mod:`robustagg.distance`; each bucket's
  output is then one :func:`robustagg.ops.mix_rows` combination. The hook
  returns an unresolved future for every earlier bucket and resolves them all
  at the last one (DDP waits on every bucket's future at the end of backward).

The hook is synchronous: it waits for each gather and computes before it
returns, so it gives up DDP's overlap of communication with the rest of
backward. What it gathers is ``n`` times what an all-reduce moves.

Failures: every gather is bounded by the process group's ``timeout``
(``init_process_group(timeout=...)``, or ``new_group(timeout=...)``): a rank
that dies or hangs makes the gathers of the other ranks raise a
``RuntimeError`` naming the bucket within that time (with gloo; with NCCL
the watchdog aborts the job after the same timeout), never a silent hang.
When a bucket fails, the futures still pending are failed with the same
error, so ``backward`` raises instead of waiting.

Not supported (``ValueError`` at construction): :class:`~robustagg.Bulyan`
(its Krum re-selection and coordinate trimming would need the selected
rows of the whole model at once), pre-aggregator pipelines, and attacks that
are not separable over buckets (``mimic``, ``optimal_alie``, ``optimal_ipm``).
"""

# No ``from __future__ import annotations``: DDP's register_comm_hook compares
# the hook's annotations with dist.GradBucket and Future[Tensor] at run time.
import copy
import time
from collections.abc import Sequence
from dataclasses import astuple, dataclass

import torch
import torch.distributed as dist

from . import distance, ops
from .aggregators import (
    RULES,
    RULES_WITH_F,
    Aggregator,
    Bulyan,
    CenteredClip,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    Mean,
    MeaMed,
    MultiKrum,
    Pipeline,
    TrimmedMean,
    make_aggregator,
)
from .attacks import Attack, Mimic, _LineSearch, make_attack

__all__ = ["RULE_NAMES", "HookTimes", "RobustHookState", "make_rule", "robust_hook"]

#: The rule names the hook takes: those of :func:`robustagg.aggregators.make_aggregator` but Bulyan.
RULE_NAMES = {name: text for name, text in RULES.items() if name != "bulyan"}

_COORDINATE = (Mean, CoordinateMedian, TrimmedMean, MeaMed)
_DISTANCE = (Krum, MultiKrum, GeometricMedian, CenteredClip)

# Older PyTorch names the stacked all-gather all_gather_into_tensor.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def make_rule(name: str, f: int = 0, tau: float = 1.0, iters: int = 3) -> Aggregator:
    """The aggregator of a rule name in :data:`RULE_NAMES`: ``f`` for the rules that take it, ``tau`` and
    ``iters`` for centered clipping (:func:`robustagg.aggregators.make_aggregator` with these defaults)."""
    if name == "bulyan":
        raise ValueError("make_rule: bulyan is not supported by robust_hook; choose from " + ", ".join(RULE_NAMES))
    options = {"tau": tau, "iters": iters} if name == "cc" else {}
    return make_aggregator(name, f if name in RULES_WITH_F else None, **options)


@dataclass
class HookTimes:
    """Seconds spent by the hook: gathers, the rule (distances, coefficients, combinations), and
    local work (worker momentum, the simulated attack).

    Host wall-clock time; on CUDA the gathers are timed up to ``wait()``,
    which orders the streams but does not synchronise the host.
    """

    communication: float = 0.0
    aggregation: float = 0.0
    local: float = 0.0

    @property
    def total(self) -> float:
        return self.communication + self.aggregation + self.local


class RobustHookState:
    r"""State of :func:`robust_hook` on one rank; every rank builds one with the same arguments.

    Args:
        aggregator: a rule object (:class:`~robustagg.Mean`,
            :class:`~robustagg.CoordinateMedian`, :class:`~robustagg.TrimmedMean`,
            :class:`~robustagg.MeaMed`, :class:`~robustagg.Krum`,
            :class:`~robustagg.MultiKrum`, :class:`~robustagg.GeometricMedian`,
            :class:`~robustagg.CenteredClip` without a preset center) or a name
            in :data:`RULE_NAMES` (built by :func:`make_rule` with ``f``).
            Centered clipping's center is the previous aggregate, kept by the
            hook per parameter (zeros at first), not in ``aggregator.center``.
            After each step, ``GeometricMedian.info`` describes that step's solve.
        process_group: the group to aggregate over (default: the world).
        momentum: worker momentum :math:`\beta \in [0, 1)` (Karimireddy, He,
            Jaggi, ICML 2021): each rank keeps :math:`m \leftarrow \beta m +
            (1 - \beta) g` (from :math:`m = 0`) and sends ``m`` instead of its
            gradient; ``0`` sends the gradient.
        byzantine: whether this rank is Byzantine; ``None`` (default) takes it
            from ``byzantine_ranks``, a bool must agree with it.
        attack: what a Byzantine rank sends: an :class:`~robustagg.attacks.Attack`
            or a name for :func:`~robustagg.attacks.make_attack` (``sign_flip``,
            ``ipm``, ``alie``, ``gaussian``, ``nan``, ``inf``, ``none``,
            ``label_flip``). Required on Byzantine ranks, ignored on the others.
        byzantine_ranks: the group ranks that are Byzantine, the same on every rank.
        f: the f of a rule given by name (default ``len(byzantine_ranks)``).

    Byzantine ranks are a simulation device for experiments, not a defence
    feature: when ``byzantine_ranks`` is not empty, every bucket takes two
    gathers. The first gathers the true vectors; each Byzantine rank runs
    ``attack(honest_rows, byzantine_rows)`` on them (honest and Byzantine
    rows in rank order, SPEC 5), so omniscient attacks (``ipm``, ``alie``) see
    the honest vectors and all Byzantine ranks compute the same rows; the rank
    sends its own row of the result in the second gather, whose matrix is
    aggregated. Seed a ``gaussian`` attack's generator identically on the
    Byzantine ranks for the same property.

    Timers: ``last`` (:class:`HookTimes` of the last completed step),
    ``total`` (summed over ``steps`` completed steps).
    """

    def __init__(
        self,
        aggregator: Aggregator | str,
        process_group: dist.ProcessGroup | None = None,
        momentum: float = 0.0,
        byzantine: bool | None = None,
        attack: Attack | str | None = None,
        byzantine_ranks: Sequence[int] = (),
        f: int | None = None,
    ) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("RobustHookState: torch.distributed is not initialized; call init_process_group first")
        if process_group is not None and not isinstance(process_group, dist.ProcessGroup):
            raise TypeError(f"RobustHookState: process_group must be a ProcessGroup or None, got {type(process_group).__name__}")
        self.process_group = process_group
        self.world_size = dist.get_world_size(process_group)
        self.rank = dist.get_rank(process_group)
        n = self.world_size

        if isinstance(byzantine_ranks, (str, bytes)) or not isinstance(byzantine_ranks, Sequence):
            raise TypeError(f"RobustHookState: byzantine_ranks must be a sequence of ints, got {type(byzantine_ranks).__name__}")
        for r in byzantine_ranks:
            if isinstance(r, bool) or not isinstance(r, int):
                raise TypeError(f"RobustHookState: byzantine_ranks must hold ints, got {r!r}")
            if not 0 <= r < n:
                raise ValueError(f"RobustHookState: byzantine_ranks entries must be in [0, {n}), got {r}")
        if len(set(byzantine_ranks)) != len(byzantine_ranks):
            raise ValueError(f"RobustHookState: byzantine_ranks has duplicates: {list(byzantine_ranks)}")
        if len(byzantine_ranks) >= n:
            raise ValueError(f"RobustHookState: byzantine_ranks={list(byzantine_ranks)} leaves no honest rank of {n}")
        self.byzantine_ranks = tuple(sorted(byzantine_ranks))
        self._honest_rows = [r for r in range(n) if r not in self.byzantine_ranks]

        member = self.rank in self.byzantine_ranks
        if byzantine is not None:
            if not isinstance(byzantine, bool):
                raise TypeError(f"RobustHookState: byzantine must be a bool or None, got {type(byzantine).__name__}")
            if byzantine != member:
                raise ValueError(
                    f"RobustHookState: byzantine={byzantine} on rank {self.rank} disagrees with "
                    f"byzantine_ranks={list(self.byzantine_ranks)}; pass the same byzantine_ranks to every rank"
                )
        self.byzantine = member
        self.attack = self._check_attack(attack)

        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
            raise ValueError(f"RobustHookState: momentum must be a number in [0, 1), got momentum={momentum!r}")
        self.momentum = float(momentum)

        if f is not None and (isinstance(f, bool) or not isinstance(f, int) or f < 0):
            raise ValueError(f"RobustHookState: f must be an int >= 0 or None, got f={f!r}")
        self.aggregator = self._check_rule(aggregator, len(self.byzantine_ranks) if f is None else f)

        self.last = HookTimes()
        self.total = HookTimes()
        self.steps = 0
        self._now = HookTimes()
        # Per-parameter buffers (keyed by id), not per bucket: DDP rebuilds its
        # buckets after the first iteration, so bucket contents change once.
        self._momentum: dict[int, torch.Tensor] = {}
        self._center: dict[int, torch.Tensor] = {}
        self._pending: list[tuple[torch.Tensor, torch.Tensor | None, torch.futures.Future, list[torch.Tensor]]] = []
        self._D: torch.Tensor | None = None
        self._finite: torch.Tensor | None = None

    def _check_attack(self, attack: Attack | str | None) -> Attack | None:
        if isinstance(attack, str):
            attack = make_attack(attack)
        elif attack is not None and not isinstance(attack, Attack):
            raise TypeError(f"RobustHookState: attack must be an Attack, a name or None, got {type(attack).__name__}")
        if isinstance(attack, (Mimic, _LineSearch)):
            raise ValueError(f"RobustHookState: attack {attack.name!r} is not separable over gradient buckets; "
                             "use sign_flip, ipm, alie, gaussian, nan, inf, none or label_flip")
        if self.byzantine and attack is None:
            raise ValueError(f"RobustHookState: rank {self.rank} is in byzantine_ranks but attack is None")
        if attack is not None and self.byzantine_ranks:
            f, h = len(self.byzantine_ranks), self.world_size - len(self.byzantine_ranks)
            copy.deepcopy(attack)(torch.zeros(h, 1), torch.zeros(f, 1))  # its own checks (ALIE's z from n, f)
        return attack

    def _check_rule(self, aggregator: Aggregator | str, f: int) -> Aggregator:
        if isinstance(aggregator, str):
            aggregator = make_rule(aggregator, f)
        if isinstance(aggregator, Bulyan):
            raise ValueError("RobustHookState: Bulyan is not supported by robust_hook (it needs the selected "
                             "rows of the whole model at once); use Krum, MultiKrum, GeometricMedian or CenteredClip")
        if isinstance(aggregator, Pipeline):
            raise ValueError("RobustHookState: pre-aggregator pipelines are not supported by robust_hook")
        if not isinstance(aggregator, _COORDINATE + _DISTANCE):
            raise TypeError("RobustHookState: aggregator must be a rule name or one of Mean, CoordinateMedian, "
                            f"TrimmedMean, MeaMed, Krum, MultiKrum, GeometricMedian, CenteredClip; got {aggregator!r}")
        if isinstance(aggregator, CenteredClip) and aggregator.center is not None:
            raise ValueError("RobustHookState: CenteredClip must have no preset center; the hook keeps the "
                             "previous aggregate per parameter, starting at zeros")
        # The rule's own argument checks, on a one-column probe with the world's n rows.
        weights = getattr(aggregator, "weights", None)
        device = weights.device if isinstance(weights, torch.Tensor) else "cpu"
        copy.deepcopy(aggregator).aggregate(torch.zeros(self.world_size, 1, dtype=torch.float64, device=device))
        return aggregator

    @property
    def is_distance_rule(self) -> bool:
        """Whether the rule needs the whole model's distances (coefficients computed at the last bucket)."""
        return isinstance(self.aggregator, _DISTANCE)

    def reset(self) -> None:
        """Forget worker momentum, the centered-clipping center and the timers."""
        self._momentum.clear()
        self._center.clear()
        self.last, self.total, self.steps = HookTimes(), HookTimes(), 0

    # -- one bucket ---------------------------------------------------------

    @torch.no_grad()
    def _on_bucket(self, bucket: dist.GradBucket) -> torch.futures.Future:
        buf = bucket.buffer()
        params = bucket.parameters()
        if bucket.index() == 0:
            self._start_step()
        if sum(p.numel() for p in params) != buf.numel():
            raise RuntimeError(f"robust_hook: bucket {bucket.index()} holds {buf.numel()} values, "
                               "not its parameters' concatenated gradients")
        tick = time.perf_counter()
        x = self._worker_vector(buf.reshape(-1), params)
        self._now.local += time.perf_counter() - tick
        X = self._exchange(x, bucket.index())

        tick = time.perf_counter()
        if not self.is_distance_rule:
            fut = _completed(self.aggregator.aggregate(X).view_as(buf))
        else:
            center = self._bucket_center(params, X) if isinstance(self.aggregator, CenteredClip) else None
            D, finite = ops.distances_and_finite(X, center)
            self._D = D if self._D is None else self._D + D
            self._finite = finite if self._finite is None else self._finite & finite
            fut = torch.futures.Future()
            self._pending.append((X, center, fut, params))
            if bucket.is_last():
                self._resolve()
        self._now.aggregation += time.perf_counter() - tick
        if bucket.is_last():
            self._end_step()
        return fut

    def _start_step(self) -> None:
        self._fail_pending(RuntimeError("robust_hook: a new backward started before the last bucket of the previous one"))
        self._now = HookTimes()

    def _end_step(self) -> None:
        self.last = self._now
        self.total = HookTimes(*(a + b for a, b in zip(astuple(self.total), astuple(self._now))))
        self.steps += 1

    def _worker_vector(self, g: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        """The vector this rank would send honestly: the gradient, or its worker momentum."""
        if self.momentum == 0.0:
            return g
        buffers = [self._momentum.setdefault(id(p), torch.zeros(p.numel(), dtype=g.dtype, device=g.device))
                   for p in params]
        ops.momentum_update_(buffers, list(torch.split(g, [p.numel() for p in params])), self.momentum)
        return torch.cat(buffers)

    def _bucket_center(self, params: list[torch.Tensor], X: torch.Tensor) -> torch.Tensor:
        parts = [self._center.get(id(p)) for p in params]
        return torch.cat([torch.zeros(p.numel(), dtype=X.dtype, device=X.device) if c is None else c
                          for c, p in zip(parts, params)])

    def _gather(self, x: torch.Tensor, index: int) -> torch.Tensor:
        tick = time.perf_counter()
        X = x.new_empty((self.world_size, x.numel()))
        try:  # gloo takes only the concatenated (flat) output form
            _all_gather(X.view(-1), x.contiguous(), group=self.process_group, async_op=True).wait()
        except RuntimeError as exc:
            raise RuntimeError(
                f"robust_hook: rank {self.rank} could not gather bucket {index} from the {self.world_size} ranks "
                f"(a rank died, hung past the process group's timeout, or ran a different model): {exc}"
            ) from exc
        self._now.communication += time.perf_counter() - tick
        return X

    def _exchange(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """(n, numel): the vectors the ranks send, Byzantine ones replaced by the attack's rows."""
        if not self.byzantine_ranks:
            return self._gather(x, index)
        true = self._gather(x, index)
        sent = x
        if self.byzantine:
            tick = time.perf_counter()
            rows = self.attack(true[self._honest_rows], true[list(self.byzantine_ranks)])
            sent = rows[self.byzantine_ranks.index(self.rank)]
            self._now.local += time.perf_counter() - tick
        return self._gather(sent, index)

    def _resolve(self) -> None:
        """At the last bucket: the rule's coefficients from the summed distances, then every bucket's output."""
        rule, D, finite = self.aggregator, self._D.cpu(), self._finite.cpu()
        n = self.world_size
        if isinstance(rule, (Krum, MultiKrum)):
            m = n - rule.f if rule.m is None else rule.m
            c = distance._krum_coefficients(D, finite, rule.f, m)
        elif isinstance(rule, GeometricMedian):
            a = distance._check_weights(rule.weights, self._pending[0][0], "geometric_median")
            c, rule.info = distance._gm_coefficients(D, finite, a, rule.nu, rule.tol, rule.max_iter)
        else:
            c = distance._cc_coefficients(D, finite, rule.tau, rule.iters)
        pending, self._pending, self._D, self._finite = self._pending, [], None, None
        for X, center, fut, params in pending:
            out = torch.full((X.shape[1],), float("nan"), dtype=X.dtype, device=X.device) if c is None \
                else distance._combine(c, X, center)
            if center is not None:
                for p, part in zip(params, torch.split(out, [p.numel() for p in params])):
                    self._center[id(p)] = part.clone()
            fut.set_result(out)

    def _fail_pending(self, exc: BaseException) -> None:
        pending, self._pending, self._D, self._finite = self._pending, [], None, None
        for _, _, fut, _ in pending:
            if not fut.done():
                fut.set_exception(exc)


def _completed(value: torch.Tensor) -> torch.futures.Future:
    fut: torch.futures.Future = torch.futures.Future()
    fut.set_result(value)
    return fut


def robust_hook(state: RobustHookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: the bucket aggregated over the ranks by ``state``'s rule.

    Register with ``ddp_model.register_comm_hook(state, robust_hook)``. Returns
    a future holding a tensor of ``bucket.buffer()``'s shape and dtype: already
    completed for coordinate-wise rules; for distance rules completed when
    the last bucket of the backward pass is processed. See the module
    docstring for how distance rules stay exact over buckets, the Byzantine
    simulation and the failure behaviour.
    """
    if not isinstance(state, RobustHookState):
        raise TypeError(f"robust_hook: state must be a RobustHookState, got {type(state).__name__}")
    try:
        return state._on_bucket(bucket)
    except BaseException as exc:
        state._fail_pending(exc)
        raise
