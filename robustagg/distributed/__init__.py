r"""Robust aggregation across ranks: a DDP communication hook and an FSDP2 reduce-scatter.

Plain DDP averages the ranks' gradients with an all-reduce. The hook replaces
that average with a robustagg rule::

    import robustagg.distributed as rd

    state = rd.RobustHookState(robustagg.CenteredClip(tau=1.0, iters=3), momentum=0.9)
    ddp_model.register_comm_hook(state, rd.robust_hook)

**Sharded mode** (``mode="sharded"``, the default). For a bucket of ``S``
values on ``n`` ranks, with shard j the values ``[j s, (j+1) s)`` that exist
(``s = ceil(S / n)``; the last shards are shorter or empty):

1. ``all_to_all_single``: rank r receives shard r of every rank's bucket,
   an ``(n, ~S/n)`` matrix;
2. rank r applies the rule to its shard;
3. ``all_gather_into_tensor`` of the ``n`` results (padded to ``s``; the
   padding never reaches the gradient) rebuilds the aggregate on every rank.

A rank sends at most :math:`2 (n - 1) s \approx 2 (n-1)/n \cdot S` values per
bucket, what a ring all-reduce sends, and holds O(S) extra values, not ``n S``. The
collectives are asynchronous: the all-to-all of bucket b is in flight while
backward computes bucket b + 1; at that bucket's hook call rank r aggregates
shard b and starts its gather. Every rank issues the collectives in the same
order, so they pair up.

* Coordinate-wise rules (:class:`~robustagg.Mean`,
  :class:`~robustagg.CoordinateMedian`, :class:`~robustagg.TrimmedMean`,
  :class:`~robustagg.MeaMed`) act per coordinate: shard by shard is the
  whole-model rule, bit for bit.
* Distance rules (:class:`~robustagg.Krum`, :class:`~robustagg.MultiKrum`,
  :class:`~robustagg.GeometricMedian`, :class:`~robustagg.CenteredClip`,
  :class:`~robustagg.MDA`, :class:`~robustagg.MoNNA`, :class:`~robustagg.SMEA`,
  :class:`~robustagg.CAF`) stay
  exact for the whole model. Squared distances add over blocks of
  coordinates, :math:`D = \sum_b D^{(b)}`, and a row that is not finite in
  one block is not finite at all. Each rank sums the float64 ``(n, n)``
  distances of its shards over the buckets (for centered clipping with its
  shard of the center as point n); at the last bucket one ``all_reduce`` of
  that matrix (and of the non-finite counts) gives every rank the whole
  model's distances, every rank computes the same coefficients
  (:mod:`robustagg.distance`'s code), combines its shards, and each
  bucket's results are gathered as above. Extra traffic: :math:`(m^2 + m) \cdot 8` bytes
  all-reduced per step, with ``m = n`` (``n + 1`` for centered clipping).

**Replicated mode** (``mode="replicated"``): every rank all-gathers each
bucket into the ``(n, S)`` matrix and applies the rule itself, identically
on every rank (same input, same deterministic kernels, same bits). It sends
``(n - 1) S`` values per bucket, ``n / 2`` times an all-reduce, holds ``n``
gradients, and is synchronous (no overlap with backward). Distance rules sum
each bucket's distances, keep the gathered buckets, and combine them at the
last one.

**Threat model.** Both modes defend against faulty or poisoned gradients:
bad data, silent data corruption, a compromised data pipeline, a rank whose
gradient is garbage (Byzantine values in what a rank *sends*). They differ
in what they trust the ranks to *compute*:

* sharded mode trusts each rank to aggregate its own shard honestly and to
  send the same result to every rank. A rank whose aggregation code is
  hostile can corrupt its ``1/n`` of the aggregate under a coordinate-wise
  rule, and the whole aggregate under a distance rule (its share of the
  all-reduced distances sets every rank's coefficients). Use it when the ranks
  run your code on your machines and the threat is the gradients: the
  common case, at the cost of an all-reduce.
* replicated mode has every rank aggregate everything itself from the
  gathered vectors: a hostile rank can corrupt only its own step. Use it
  when ranks may run hostile code, or to cross-check sharded results, at
  ``n / 2`` times the bytes.
* Neither defends against equivocation: a rank that sends different
  vectors (or, in sharded mode, different results) to different ranks.
  Detecting it needs the ranks to compare hashes of what they received, or
  a broadcast channel with signatures; that is outside this module.

Failures: every collective is bounded by the process group's ``timeout``
(``init_process_group(timeout=...)``): a rank that dies or hangs makes the
others raise a ``RuntimeError`` naming the bucket within that time (with
gloo; with NCCL the watchdog aborts the job after the same timeout), never
a silent hang. The futures still pending are failed with the same error, so
``backward`` raises. On the first step the ranks compare their bucket sizes,
dtypes and hook arguments, and a mismatch is a ``RuntimeError`` naming the
rank.

Not supported (``ValueError`` at construction): :class:`~robustagg.Bulyan`
(its Krum re-selection and coordinate trimming need the selected rows of the
whole model at once), pre-aggregator pipelines, and attacks that need the
whole vector (``mimic``, ``optimal_alie``, ``optimal_ipm``).

**FSDP2**: :class:`RobustReduceScatter` replaces ``fully_shard``'s
reduce-scatter (``module.set_custom_reduce_scatter``): an all-to-all, the
rule, this rank's shard. Coordinate-wise rules are exact; a distance rule
runs once per FSDP unit (a layer-wise rule, see its docstring).

NCCL: the code is backend-neutral (the same collectives on CUDA tensors,
streams ordered by the works' waits) but has run only on gloo.
"""

from .fsdp import RobustReduceScatter, use_robust_reduce_scatter
from .hook import MODES, HookStats, RobustHookState, robust_hook
from .rules import CC_OPTIONS, RULE_NAMES

__all__ = [
    "CC_OPTIONS",
    "MODES",
    "RULE_NAMES",
    "HookStats",
    "RobustHookState",
    "RobustReduceScatter",
    "robust_hook",
    "use_robust_reduce_scatter",
]
