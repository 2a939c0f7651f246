"""The robust DDP communication hook: :class:`RobustHookState` and :func:`robust_hook`.

How the two modes aggregate, what they trust and what they cost is in the
package docstring (:mod:`robustagg.distributed`).
"""

# No ``from __future__ import annotations``: DDP's register_comm_hook compares
# the hook's annotations with dist.GradBucket and Future[Tensor] at run time.
import copy
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import astuple, dataclass, field

import torch
import torch.distributed as dist

from .. import exact_geometry, ops
from ..aggregators import Aggregator, CenteredClip
from ..attacks import ATTACKS, Attack, make_attack
from ..coefficients import combine
from ..validation import check_int, check_real
from .rules import DISTANCE, check_rule, row_coefficients

__all__ = ["MODES", "HookStats", "RobustHookState", "robust_hook"]

#: The hook's modes: ``sharded`` (the default) and ``replicated``.
MODES = ("sharded", "replicated")


@dataclass
class HookStats:
    """What the hook spent on one rank: seconds and bytes.

    Attributes:
        communication: seconds the hook's thread waited for collectives.
            Replicated mode waits for every gather; sharded mode waits only
            for the shards it aggregates next, the rest overlaps backward.
        aggregation: seconds in the rule (distances, coefficients, combinations).
        local: seconds of local work: worker momentum, the simulated attack.
        exposed: sharded mode: seconds from the return of the last bucket's
            hook call to the last aggregate, the communication left when
            backward has nothing else to do. Replicated mode finishes inside
            the hook: 0.
        sent_bytes: bytes this rank sent, as the collectives' algorithms send
            them: an all-to-all's input but this rank's own part, ``n-1``
            times an all-gather's input (ring), ``2(n-1)/n`` of an
            all-reduce's (ring). The first step also counts the ranks'
            agreement check (one small all-gather per bucket).

    Host wall-clock time; on CUDA, waits order the streams and do not
    synchronise the host.
    """

    communication: float = 0.0
    aggregation: float = 0.0
    local: float = 0.0
    exposed: float = 0.0
    sent_bytes: int = 0

    def __add__(self, other: "HookStats") -> "HookStats":
        return HookStats(*(a + b for a, b in zip(astuple(self), astuple(other))))


@dataclass
class _Shard:
    """A bucket in sharded mode: this rank's shard of every rank's vector, and its result."""

    index: int
    buf: torch.Tensor
    params: list
    size: int  # S, the bucket's values
    width: int  # s = ceil(S / n), the shard width (the gather pads the last shards to it)
    valid: int  # values of shard `rank` (< s for the last shards: the bucket is not padded)
    recv: torch.Tensor  # (n * valid,): row i is shard `rank` of rank i's vector
    work: object
    D: torch.Tensor | None = None
    finite: torch.Tensor | None = None
    future: torch.futures.Future = field(default_factory=torch.futures.Future)


class RobustHookState:
    r"""State of :func:`robust_hook` on one rank; every rank builds one with the same arguments.

    Args:
        aggregator: a rule object (:class:`~robustagg.Mean`,
            :class:`~robustagg.CoordinateMedian`, :class:`~robustagg.TrimmedMean`,
            :class:`~robustagg.MeaMed`, :class:`~robustagg.Krum`,
            :class:`~robustagg.MultiKrum`, :class:`~robustagg.GeometricMedian`,
            :class:`~robustagg.CenteredClip` without a preset center) or a name
            in :data:`~robustagg.distributed.RULE_NAMES` (built by
            :func:`~robustagg.make_aggregator` with ``f`` where the rule takes it).
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
        attack: what the Byzantine ranks send: an :class:`~robustagg.attacks.Attack`
            or a name for :func:`~robustagg.attacks.make_attack` (``sign_flip``,
            ``ipm``, ``alie``, ``gaussian``, ``nan``, ``inf``, ``none``,
            ``label_flip``). Replicated mode: required on the Byzantine ranks,
            ignored on the others. Sharded mode: required on every rank when
            ``byzantine_ranks`` is not empty (each rank simulates the attack
            on the shard it owns).
        byzantine_ranks: the group ranks that are Byzantine, the same on every rank.
        f: the f of a rule given by name (default ``len(byzantine_ranks)``).
        mode: ``"sharded"`` (default): rank r aggregates shard r of every
            bucket and an all-gather rebuilds the aggregate, for the bytes of
            an all-reduce; ``"replicated"``: every rank gathers all n vectors
            and aggregates everything itself.

    Byzantine ranks are a simulation device for experiments, not a defence
    feature. The attack is called as ``attack(honest_rows, byzantine_rows)``
    (rows in rank order, SPEC 5), so omniscient attacks (``ipm``, ``alie``)
    see the honest vectors. Replicated mode gathers twice per bucket (the
    true vectors, then what is sent); every Byzantine rank computes the same
    rows and sends its own. Sharded mode needs no extra traffic: the owner of
    each shard replaces the Byzantine rows of its shard, which is exact for
    attacks that act coordinate by coordinate (sign flip, IPM, ALIE, NaN,
    inf, label flip; Gaussian noise has the same distribution, drawn shard
    by shard). Seed a
    ``gaussian`` attack's generator identically on the Byzantine ranks in
    replicated mode, and differently on every rank in sharded mode (each
    rank draws the noise of its own shard).

    Stats: ``last`` (:class:`HookStats` of the last completed step),
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
        mode: str = "sharded",
    ) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("RobustHookState: torch.distributed is not initialized; call init_process_group first")
        if process_group is not None and not isinstance(process_group, dist.ProcessGroup):
            raise TypeError(
                f"RobustHookState: process_group must be a ProcessGroup or None, got {type(process_group).__name__}"
            )
        if mode not in MODES:
            raise ValueError(f"RobustHookState: mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.process_group = process_group
        self.world_size = dist.get_world_size(process_group)
        self.rank = dist.get_rank(process_group)
        n = self.world_size

        if isinstance(byzantine_ranks, (str, bytes)) or not isinstance(byzantine_ranks, Sequence):
            raise TypeError(
                f"RobustHookState: byzantine_ranks must be a sequence of ints, got {type(byzantine_ranks).__name__}"
            )
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

        self.momentum = check_real(momentum, "momentum", "RobustHookState", 0.0, 1.0, high_open=True)
        if f is not None:
            f = check_int(f, "f", "RobustHookState", low=0)
        self.aggregator = check_rule(aggregator, len(self.byzantine_ranks) if f is None else f, n, "RobustHookState")

        self.last = HookStats()
        self.total = HookStats()
        self.steps = 0
        self._now = HookStats()
        self._lock = threading.Lock()  # gather callbacks run on the backend's threads
        # Per-parameter buffers (keyed by id), not per bucket: DDP rebuilds its
        # buckets after the first iteration, so bucket contents change once.
        self._momentum: dict[int, torch.Tensor] = {}
        self._center: dict[int, torch.Tensor] = {}
        # Replicated mode: the gathered buckets of a distance rule until the last bucket.
        self._pending: list[tuple[torch.Tensor, torch.Tensor | None, torch.futures.Future, list[torch.Tensor]]] = []
        self._D: torch.Tensor | None = None
        self._finite: torch.Tensor | None = None
        # Sharded mode: the bucket whose all-to-all was issued and whose shard is not aggregated yet
        # (`_waiting`), the buckets of this step (`_shards`), and how many of them are still unresolved.
        self._waiting: _Shard | None = None
        self._shards: list[_Shard] = []
        self._unresolved = 0
        self._returned: float | None = None  # when the last bucket's hook call returned
        self._epoch = 0  # bumped when a step fails: callbacks of its gathers then leave everything alone
        self._agreed = False  # the ranks' buckets and arguments were compared (first backward)

    def _check_attack(self, attack: Attack | str | None) -> Attack | None:
        if isinstance(attack, str):
            attack = make_attack(attack)
        elif attack is not None and not isinstance(attack, Attack):
            raise TypeError(f"RobustHookState: attack must be an Attack, a name or None, got {type(attack).__name__}")
        if attack is not None and attack.needs_whole_vector:
            raise ValueError(
                f"RobustHookState: attack {attack.name!r} needs the whole vector, not one bucket or "
                f"shard at a time; use one of {', '.join(n for n, c in ATTACKS.items() if not c.needs_whole_vector)}"
            )
        if attack is None and self.byzantine_ranks and (self.byzantine or self.mode == "sharded"):
            who = "is in byzantine_ranks" if self.byzantine else "owns a shard of the Byzantine ranks' vectors"
            raise ValueError(
                f"RobustHookState: rank {self.rank} {who} but attack is None"
                + ("; in sharded mode every rank needs the attack" if self.mode == "sharded" else "")
            )
        if attack is not None and self.byzantine_ranks:
            f, h = len(self.byzantine_ranks), self.world_size - len(self.byzantine_ranks)
            copy.deepcopy(attack)(torch.zeros(h, 1), torch.zeros(f, 1))  # its own checks (ALIE's z from n, f)
        return attack

    @property
    def is_distance_rule(self) -> bool:
        """Whether the rule needs the whole model's distances (coefficients computed at the last bucket)."""
        return isinstance(self.aggregator, DISTANCE)

    def reset(self) -> None:
        """Forget worker momentum, the centered-clipping center and the stats; call it on every rank."""
        self._momentum.clear()
        self._center.clear()
        self.last, self.total, self.steps = HookStats(), HookStats(), 0

    def _fingerprint(self) -> int:
        """The arguments every rank must share (the rule's, the attack's, the hook's), as a number that is the
        same in every process."""

        def plain(value: object) -> object:
            return value.tolist() if isinstance(value, torch.Tensor) else value

        rule = {k: plain(v) for k, v in sorted(vars(self.aggregator).items()) if k != "info"}
        attack = repr(self.attack) if self.mode == "sharded" else None
        text = repr((self.mode, type(self.aggregator).__name__, rule, attack, self.momentum, self.byzantine_ranks))
        return zlib.crc32(text.encode())

    # -- one bucket ---------------------------------------------------------

    @torch.no_grad()
    def _on_bucket(self, bucket: dist.GradBucket) -> torch.futures.Future:
        buf = bucket.buffer()
        params = bucket.parameters()
        index = bucket.index()
        if index == 0:
            self._start_step()
        if sum(p.numel() for p in params) != buf.numel():
            raise RuntimeError(
                f"robust_hook: bucket {index} holds {buf.numel()} values, not its parameters' concatenated gradients"
            )
        if not self._agreed:
            self._check_agreement(buf, index, bucket.is_last())
        tick = time.perf_counter()
        x = self._worker_vector(buf.reshape(-1), params)
        self._now.local += time.perf_counter() - tick
        if self.mode == "sharded":
            fut = self._sharded_bucket(buf, params, x, index, bucket.is_last())
            if bucket.is_last():
                with self._lock:  # the step ends here or in the last gather's callback, whichever comes second
                    self._returned = time.perf_counter()
                    if self._unresolved == 0:
                        self._end_step()
            return fut
        fut = self._replicated_bucket(buf, params, x, index, bucket.is_last())
        if bucket.is_last():
            self._end_step()
        return fut

    def _start_step(self) -> None:
        self._fail_pending(
            RuntimeError("robust_hook: a new backward started before the last bucket of the previous one")
        )
        self._now = HookStats()

    def _end_step(self) -> None:
        self.last = self._now
        self.total = self.total + self._now
        self.steps += 1

    def _check_agreement(self, buf: torch.Tensor, index: int, last: bool) -> None:
        """First backward only: every rank has this bucket (size, dtype, whether it is the last) and the same
        hook arguments."""
        mine = [buf.numel(), _DTYPE_CODE.get(buf.dtype, -1), int(last), self._fingerprint()]
        every = torch.empty(self.world_size * len(mine), dtype=torch.int64, device=buf.device)
        self._wait(self._issue("all_gather", index, every, torch.tensor(mine, device=buf.device)), "all_gather", index)
        for r, row in enumerate(every.view(self.world_size, -1).tolist()):
            if row[:3] != mine[:3]:
                raise RuntimeError(
                    f"robust_hook: bucket {index} holds {row[0]} values of dtype code {row[1]} "
                    f"(last: {bool(row[2])}) on rank {r} but {buf.numel()} of {buf.dtype} (last: "
                    f"{last}) on rank {self.rank}: the ranks run different models or bucket sizes"
                )
            if row[3] != mine[3]:
                raise RuntimeError(
                    f"robust_hook: rank {r} was built with other RobustHookState arguments (mode, "
                    f"rule and its options, attack, momentum or byzantine_ranks) than rank "
                    f"{self.rank}; pass the same to every rank"
                )
        if last:
            self._agreed = True

    def _worker_vector(self, g: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        """The vector this rank would send honestly: the gradient, or its worker momentum."""
        if self.momentum == 0.0:
            return g
        buffers = [
            self._momentum.setdefault(id(p), torch.zeros(p.numel(), dtype=g.dtype, device=g.device)) for p in params
        ]
        ops.momentum_update_(buffers, list(torch.split(g, [p.numel() for p in params])), self.momentum)
        return torch.cat(buffers)

    def _params_slice(self, params: list[torch.Tensor], lo: int, hi: int, like: torch.Tensor) -> torch.Tensor:
        """Values [lo, hi) of the bucket's flat center (zeros where a parameter has none yet)."""
        parts, start = [], 0
        for p in params:
            end = start + p.numel()
            a, b = max(lo, start), min(hi, end)
            if a < b:
                c = self._center.get(id(p))
                parts.append(like.new_zeros(b - a) if c is None else c[a - start : b - start])
            start = end
        if len(parts) == 1:  # inside one parameter: a view, no copy
            return parts[0]
        return torch.cat(parts) if parts else like.new_zeros(0)

    def _keep_center(self, params: list[torch.Tensor], out: torch.Tensor) -> None:
        for p, part in zip(params, torch.split(out, [p.numel() for p in params])):
            kept = self._center.get(id(p))
            if kept is None or kept.shape != part.shape or kept.dtype != part.dtype:
                self._center[id(p)] = part.clone()
            else:  # in place: no second copy of the center while it is replaced
                kept.copy_(part)

    def _issue(
        self, name: str, index: int | str, output: torch.Tensor, input: torch.Tensor, splits: list[int] | None = None
    ):
        """Start one collective asynchronously and count what this rank sends.

        ``all_to_all`` sends ``input`` split by ``splits`` (values for each
        rank; its own part stays), ``all_gather`` sends ``input`` to the n - 1
        others (ring), ``all_reduce`` sends ``2 (n-1)/n`` of it (ring).
        """
        n, group, element = self.world_size, self.process_group, input.element_size()
        try:
            if name == "all_to_all":
                self._now.sent_bytes += (input.numel() - splits[self.rank]) * element
                return dist.all_to_all_single(
                    output, input, [splits[self.rank]] * n, splits, group=group, async_op=True
                )
            if name == "all_gather":
                self._now.sent_bytes += (n - 1) * input.numel() * element
                return _all_gather(output, input, group=group, async_op=True)  # gloo: flat output only
            self._now.sent_bytes += 2 * (n - 1) * input.numel() * element // n
            return dist.all_reduce(output, group=group, async_op=True)
        except RuntimeError as exc:
            raise self._comm_error(name, index, exc) from exc

    def _comm_error(self, name: str, index: int | str, exc: BaseException) -> RuntimeError:
        return RuntimeError(
            f"robust_hook: rank {self.rank} could not {name.replace('_', '-')} bucket {index} over the "
            f"{self.world_size} ranks (a rank died, hung past the process group's timeout, or ran a different "
            f"model): {exc}"
        )

    def _wait(self, work, name: str, index: int | str) -> None:
        tick = time.perf_counter()
        try:
            work.wait()
        except RuntimeError as exc:
            raise self._comm_error(name, index, exc) from exc
        self._now.communication += time.perf_counter() - tick

    def _attacked(self, X: torch.Tensor) -> torch.Tensor:
        """X with the Byzantine ranks' rows replaced by the attack's (in place)."""
        if self.byzantine_ranks:
            tick = time.perf_counter()
            byz = list(self.byzantine_ranks)
            X[byz] = self.attack(X[self._honest_rows], X[byz])
            self._now.local += time.perf_counter() - tick
        return X

    # -- replicated mode ----------------------------------------------------

    def _gather(self, x: torch.Tensor, index: int) -> torch.Tensor:
        X = x.new_empty((self.world_size, x.numel()))
        work = self._issue("all_gather", index, X.view(-1), x.contiguous())
        self._wait(work, "all_gather", index)
        return X

    def _replicated_bucket(self, buf, params, x, index: int, last: bool) -> torch.futures.Future:
        if not self.byzantine_ranks:
            X = self._gather(x, index)
        else:  # gather the true vectors, each Byzantine rank computes what it sends, gather that
            true = self._gather(x, index)
            sent = x
            if self.byzantine:
                tick = time.perf_counter()
                rows = self.attack(true[self._honest_rows], true[list(self.byzantine_ranks)])
                sent = rows[self.byzantine_ranks.index(self.rank)]
                self._now.local += time.perf_counter() - tick
            X = self._gather(sent, index)

        tick = time.perf_counter()
        if not self.is_distance_rule:
            fut = _completed(self.aggregator.aggregate(X).view_as(buf))
        else:
            center = self._params_slice(params, 0, x.numel(), X) if isinstance(self.aggregator, CenteredClip) else None
            D, finite = exact_geometry.distances_and_finite(X, center)
            self._D = D if self._D is None else self._D + D
            self._finite = finite if self._finite is None else self._finite & finite
            fut = torch.futures.Future()
            self._pending.append((X, center, fut, params))
            if last:
                self._resolve_replicated()
        self._now.aggregation += time.perf_counter() - tick
        return fut

    def _resolve_replicated(self) -> None:
        """At the last bucket: the rule's coefficients from the summed distances, then every bucket's output."""
        c = row_coefficients(self.aggregator, self._D.cpu(), self._finite.cpu(), self._pending[0][0])
        pending, self._pending, self._D, self._finite = self._pending, [], None, None
        for X, center, fut, params in pending:
            out = combine(c, X, center)
            if center is not None:
                self._keep_center(params, out)
            fut.set_result(out)

    # -- sharded mode -------------------------------------------------------

    def _sharded_bucket(self, buf, params, x, index: int, last: bool) -> torch.futures.Future:
        n, r = self.world_size, self.rank
        size = x.numel()
        width = -(-size // n)  # shard j holds values [j * width, (j+1) * width) that exist
        splits = [max(0, min(width, size - j * width)) for j in range(n)]
        recv = x.new_empty(n * splits[r])
        work = self._issue("all_to_all", index, recv, x, splits)  # x is contiguous; the work keeps it alive
        shard = _Shard(index, buf, params, size, width, splits[r], recv, work)
        self._shards.append(shard)
        with self._lock:
            self._unresolved += 1
        # One bucket behind: the shard that arrived while backward computed this bucket is aggregated now, so
        # every rank issues its collectives in the same order (all-to-all b, then the gather of b - 1).
        if self._waiting is not None:
            self._aggregate_shard(self._waiting)
        self._waiting = None if last else shard
        if last:
            self._aggregate_shard(shard)
        if last and self.is_distance_rule:
            self._resolve_sharded()
        return shard.future

    def _aggregate_shard(self, shard: _Shard) -> None:
        """Wait for the shard's all-to-all, apply the attack and the rule (or its distances), gather it."""
        self._wait(shard.work, "all_to_all", shard.index)
        shard.work = None
        X = self._attacked(shard.recv.view(self.world_size, shard.valid))
        tick = time.perf_counter()
        if not self.is_distance_rule:
            out = _padded(self.aggregator.aggregate(X), shard.width)
            shard.recv = None
            del X
            self._gather_shard(shard, out)
        else:
            shard.D, shard.finite = exact_geometry.distances_and_finite(X, self._center_shard(shard))
        self._now.aggregation += time.perf_counter() - tick

    def _center_shard(self, shard: _Shard) -> torch.Tensor | None:
        """Centered clipping: this rank's shard of the bucket's center (the previous aggregate); else None."""
        if not isinstance(self.aggregator, CenteredClip):
            return None
        lo = self.rank * shard.width
        return self._params_slice(shard.params, lo, lo + shard.valid, shard.recv)

    def _resolve_sharded(self) -> None:
        """At the last bucket: all-reduce the summed distances, then combine and gather every bucket's shard."""
        shards = self._shards
        tick = time.perf_counter()
        D, bad = shards[0].D.clone(), (~shards[0].finite).double()
        for s in shards[1:]:  # in bucket order
            D += s.D
            bad += ~s.finite
        packed = torch.cat([D.reshape(-1), bad])  # one all-reduce: distances and counts of non-finite shards
        self._now.aggregation += time.perf_counter() - tick
        self._wait(self._issue("all_reduce", "distances", packed, packed), "all_reduce", "distances")
        tick = time.perf_counter()
        k = D.shape[0]
        packed = packed.cpu()
        like = shards[0].recv.new_empty(self.world_size, 0)  # n rows on the shards' device, for the weights' checks
        c = row_coefficients(self.aggregator, packed[: k * k].view(k, k), packed[k * k :] == 0, like)
        for s in shards:  # each shard is freed as soon as it is combined: the peak stays one gradient
            out = _padded(combine(c, s.recv.view(self.world_size, s.valid), self._center_shard(s)), s.width)
            s.recv = s.D = None
            self._gather_shard(s, out)
        self._now.aggregation += time.perf_counter() - tick

    def _gather_shard(self, shard: _Shard, out: torch.Tensor) -> None:
        """All-gather the ranks' results ``out`` for this bucket into its buffer; resolve its future then."""
        n, epoch = self.world_size, self._epoch
        flat = shard.buf.view(-1)  # DDP's bucket buffer is one flat contiguous tensor
        direct = shard.size == n * shard.width  # no padding: gather in place
        gathered = flat if direct else out.new_empty(n * shard.width)
        work = self._issue("all_gather", shard.index, gathered, out)

        def done(fut: torch.futures.Future) -> None:
            try:
                fut.wait()
            except BaseException as exc:  # noqa: BLE001  (handed to the waiting future)
                self._settle(shard.future, epoch, error=self._comm_error("all_gather", shard.index, exc))
                return
            with self._lock:
                if epoch != self._epoch:  # the step failed meanwhile: its buffers and the center are not ours
                    return
                if not direct:  # shard j is values [j s, (j+1) s): only the padding lies past S
                    flat.copy_(gathered[: shard.size])
                if isinstance(self.aggregator, CenteredClip):
                    self._keep_center(shard.params, flat)
                self._unresolved -= 1
                if self._unresolved == 0 and self._returned is not None:
                    self._now.exposed = time.perf_counter() - self._returned
                    self._end_step()
            self._settle(shard.future, epoch, result=shard.buf)

        work.get_future().add_done_callback(done)

    def _settle(
        self,
        fut: torch.futures.Future,
        epoch: int,
        result: torch.Tensor | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Complete a future of step ``epoch`` once, unless that step was failed already."""
        with self._lock:
            if epoch != self._epoch or fut.done():
                return
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)

    def _fail_pending(self, exc: BaseException) -> None:
        with self._lock:
            self._epoch += 1
            pending, self._pending, self._D, self._finite = self._pending, [], None, None
            shards, self._shards, self._waiting, self._unresolved = self._shards, [], None, 0
            self._returned = None
            for fut in [p[2] for p in pending] + [s.future for s in shards]:
                if not fut.done():
                    fut.set_exception(exc)


_DTYPE_CODE = {dtype: code for code, dtype in enumerate((torch.float32, torch.float64, torch.float16, torch.bfloat16))}

# Older PyTorch names the stacked all-gather all_gather_into_tensor.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _padded(values: torch.Tensor, width: int) -> torch.Tensor:
    """``values`` with zeros appended up to ``width`` (the tensor itself when it is that long)."""
    return values if values.numel() == width else torch.cat([values, values.new_zeros(width - values.numel())])


def _completed(value: torch.Tensor) -> torch.futures.Future:
    fut: torch.futures.Future = torch.futures.Future()
    fut.set_result(value)
    return fut


def robust_hook(state: RobustHookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: the bucket aggregated over the ranks by ``state``'s rule.

    Register with ``ddp_model.register_comm_hook(state, robust_hook)``.
    Returns a future holding a tensor of ``bucket.buffer()``'s shape and
    dtype. Sharded mode: completed when the gather of the bucket's shards
    completes (for distance rules, after the last bucket). Replicated mode:
    already completed for coordinate-wise rules, completed at the last
    bucket for distance rules. See :mod:`robustagg.distributed`.
    """
    if not isinstance(state, RobustHookState):
        raise TypeError(f"robust_hook: state must be a RobustHookState, got {type(state).__name__}")
    try:
        return state._on_bucket(bucket)
    except BaseException as exc:
        state._fail_pending(exc)
        raise
