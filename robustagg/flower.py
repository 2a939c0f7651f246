"""Flower strategies that aggregate the clients' models with a robustagg rule.

:func:`aggregate_ndarrays` does the math on plain NumPy arrays: each
client's parameter list is flattened into one row of an ``(n, d)`` matrix,
the rule runs once over all coordinates, and the result is split back into
the arrays' shapes and dtypes. Two Flower strategies call it:

* :class:`RobustStrategy`, a subclass of ``flwr.server.strategy.FedAvg``
  (the ``FitRes``-based API: ``aggregate_fit``);
* :class:`RobustMessageStrategy`, a subclass of
  ``flwr.serverapp.strategy.FedAvg`` (the Message API: ``aggregate_train``).

Both keep FedAvg's client sampling, configuration, evaluation and metric
aggregation, and add the time spent aggregating to the round's metrics as
``robustagg_seconds``.

Weights. :class:`robustagg.Mean` and :class:`robustagg.GeometricMedian`
weight client i by its example count (``FitRes.num_examples``, or the reply's
``weighted_by_key`` metric), as in FedAvg (McMahan et al., AISTATS 2017) and
RFA (Pillutla, Kakade, Harchaoui, IEEE TSP 2022). Every other rule, and any
pipeline with pre-aggregators, ignores the counts: each client is one row.

Updates. With ``on_updates=True`` the rule aggregates the updates
``x_i - x`` relative to the global parameters ``x`` sent that round, and the
new global model is ``x + agg(x_i - x)``. Mean, the coordinate-wise rules,
Krum, Bulyan and the geometric median commute with that shift (up to
rounding), so it changes nothing for them; centered clipping
(Karimireddy, He, Jaggi, ICML 2021) and the clipping pre-aggregators do
not: use ``on_updates=True`` with them, so that they clip updates, not
models, and the center carried across rounds is the previous update.

Per-round inputs. A :class:`robustagg.FoolsGold` rule keys its histories by
client: both strategies set its ``clients`` each round (the ``ClientProxy``'s
``cid``, or the reply's source node id), so that a client keeps its history
whichever clients a round samples. :class:`robustagg.FLTrust` needs the
server's root update of the round: set ``strategy.aggregator.root`` before
the round is aggregated (in an override of ``configure_fit`` /
``configure_train``, say); without one it raises ``ValueError``. FLTrust,
FoolsGold and ClippedClustering compare directions and norms, so use them
with ``on_updates=True``.

Flower is optional: this module imports without it, and the strategies
raise ``ImportError`` (``pip install flwr``) when Flower is missing.
"""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from . import distance, ops
from .aggregators import RULES, Aggregator, FoolsGold, GeometricMedian, Mean, make_aggregator
from .validation import check_real

__all__ = ["RULES", "RobustMessageStrategy", "RobustStrategy", "aggregate_ndarrays", "make_aggregator"]


def _check_dtype(dtype: object) -> torch.dtype | None:
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(
            f"flower: dtype must be torch.float32, torch.float64 or None, got {type(dtype).__name__} {dtype!r}"
        )
    if dtype not in (None, torch.float32, torch.float64):
        raise ValueError(f"flower: dtype must be torch.float32 or torch.float64, got {dtype}")
    return dtype


# Integers of at most this magnitude convert exactly to float32 / float64 (the significand's bits).
_EXACT_INT = {np.float32: 2**24, np.float64: 2**53}


def _check_array(a: np.ndarray, who: str, j: int, np_dtype: type) -> None:
    """A float (up to 64-bit) or integer array whose values the ``np_dtype`` matrix holds exactly.

    Complex arrays would lose their imaginary part, bool and object arrays are
    no parameters, long doubles and integers beyond the significand would be
    rounded: all refused rather than aggregated as something else.
    """
    if a.dtype.kind == "f" and a.dtype.itemsize <= 8:
        return
    if a.dtype.kind not in "iu":
        raise TypeError(f"flower: {who}'s array {j} is {a.dtype}; expected float16, float32, float64 or integer arrays")
    limit = _EXACT_INT[np_dtype]
    if a.size and (int(a.max()) > limit or int(a.min()) < -limit):
        hint = "pass dtype=torch.float64" if np_dtype is np.float32 else "send floats"
        raise ValueError(
            f"flower: {who}'s array {j} ({a.dtype}) holds values beyond +-2**{limit.bit_length() - 1}, "
            f"which {np.dtype(np_dtype)} does not hold exactly; {hint}"
        )


def _run_rule(agg: Aggregator, X: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``agg`` on X, with the example-count weights for the rules that take weights."""
    if weights is not None and isinstance(agg, Mean):
        return ops.mean(X, weights)
    if weights is not None and isinstance(agg, GeometricMedian):
        z, agg.info = distance.geometric_median(X, weights, agg.nu, agg.tol, agg.max_iter, return_info=True)
        return z
    return agg.aggregate(X)


def aggregate_ndarrays(
    results: Sequence[tuple[Sequence[np.ndarray], numbers.Real]],
    aggregator: Aggregator | str,
    *,
    f: int | None = None,
    reference: Sequence[np.ndarray] | None = None,
    weighted: bool = True,
    dtype: torch.dtype | None = None,
    rule_options: Mapping[str, Any] | None = None,
) -> list[np.ndarray]:
    """Aggregate the clients' parameter lists with a robustagg rule.

    Arrays are float16, float32, float64 or integer. Integer arrays are
    aggregated in float64 by default, where every integer up to 2**53 is
    exact (in float32 with ``dtype=torch.float32``: up to 2**24); larger
    values are refused rather than rounded. Complex, bool, object and long
    double arrays are refused (TypeError): a real matrix would drop the
    imaginary parts or round the values.

    Args:
        results: one ``(arrays, num_examples)`` pair per client, ``arrays``
            having the same shapes for every client (Flower's
            ``(parameters_to_ndarrays(fit_res.parameters), fit_res.num_examples)``).
        aggregator: a robustagg aggregator object (``robustagg.TrimmedMean(2)``,
            ``robustagg.Bucketing(2) >> robustagg.Krum(1)``, ...) or a name in
            :data:`RULES`. Objects with state (``CenteredClip``'s center) keep it
            across calls.
        f: the rule's f when ``aggregator`` is a name.
        reference: the global parameters; when given the rule aggregates
            ``x_i - reference`` and the result is ``reference + aggregate``.
        weighted: weight the clients by their example counts in
            :class:`robustagg.Mean` and :class:`robustagg.GeometricMedian`
            (replacing the object's own ``weights``); other rules ignore counts.
        dtype: the dtype of the ``(n, d)`` matrix; default float64 when an
            array is float64 or integer, else float32.
        rule_options: further arguments of the rule when ``aggregator`` is a name.

    Returns:
        The aggregate as a list of arrays with the first client's shapes and
        dtypes (integer arrays rounded to the nearest integer).

    Raises:
        TypeError: an array of a refused dtype, a count that is not a real number, a bad ``dtype``.
        ValueError: no results, mismatched shapes, a bad count, integers beyond the matrix's exact
            range, an integer aggregate outside its dtype, or the rule's own conditions (e.g. Krum's
            ``n > 2f + 2``).
    """
    agg = make_aggregator(aggregator, f, owner="flower", **dict(rule_options or {}))
    if len(results) == 0:
        raise ValueError("flower: no client results to aggregate")
    for i, pair in enumerate(results):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise TypeError(f"flower: results[{i}] must be an (arrays, num_examples) pair, got {type(pair).__name__}")
    first = [np.asarray(a) for a in results[0][0]]
    if not first:
        raise ValueError("flower: client 0 sent an empty parameter list")
    shapes = [a.shape for a in first]
    dtypes = [a.dtype for a in first]
    if _check_dtype(dtype) is None:
        dtype = torch.float64 if any(dt == np.float64 or dt.kind in "iu" for dt in dtypes) else torch.float32
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    sizes = [int(np.prod(s)) for s in shapes]
    offsets = np.cumsum([0, *sizes])

    def fill(row: np.ndarray, arrays: Sequence[np.ndarray], who: str) -> None:
        if len(arrays) != len(shapes):
            raise ValueError(f"flower: {who} sent {len(arrays)} arrays, expected {len(shapes)} like client 0")
        for j, a in enumerate(arrays):
            a = np.asarray(a)
            if a.shape != shapes[j]:
                raise ValueError(f"flower: {who}'s array {j} has shape {a.shape}, expected {shapes[j]} like client 0")
            _check_array(a, who, j, np_dtype)
            row[offsets[j] : offsets[j + 1]] = a.reshape(-1)

    n = len(results)
    X = np.empty((n, int(offsets[-1])), dtype=np_dtype)
    counts = []
    for i, (arrays, count) in enumerate(results):
        fill(X[i], arrays, f"client {i}")
        counts.append(check_real(count, f"client {i}'s example count", "flower", low=0.0))
    Xt = torch.from_numpy(X)
    ref = None
    if reference is not None:
        ref = np.empty(X.shape[1], dtype=np_dtype)
        fill(ref, reference, "the reference")
        Xt -= torch.from_numpy(ref)
    weights = torch.tensor(counts, dtype=torch.float64) if weighted else None
    out = _run_rule(agg, Xt, weights).numpy()
    if ref is not None:
        out = out + ref
    arrays_out = []
    for j, (shape, dt) in enumerate(zip(shapes, dtypes)):
        part = out[offsets[j] : offsets[j + 1]].reshape(shape)
        if np.issubdtype(dt, np.integer):
            part = np.rint(part)
            info = np.iinfo(dt)
            if not np.all((part >= info.min) & (part <= info.max)):  # NaN fails too
                raise ValueError(f"flower: the aggregate of array {j} does not fit its dtype {np.dtype(dt)}")
        arrays_out.append(part.astype(dt))
    return arrays_out


_FLOWER_HELP = "robustagg.flower's strategies need Flower: pip install flwr"

try:
    from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.client_manager import ClientManager
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.strategy import FedAvg as _LegacyFedAvg

    _LEGACY_ERROR: ImportError | None = None
except ImportError as exc:  # Flower missing, or a version without the FitRes API
    _LEGACY_ERROR = exc

try:
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import FedAvg as _MessageFedAvg

    _MESSAGE_ERROR: ImportError | None = None
except ImportError as exc:  # Flower missing, or older than the Message API strategies
    _MESSAGE_ERROR = exc


class _RobustMixin:
    """Settings shared by both strategies."""

    def __init__(
        self,
        aggregator: Aggregator | str,
        *,
        f: int | None = None,
        on_updates: bool = False,
        weighted: bool = True,
        dtype: torch.dtype | None = None,
        rule_options: Mapping[str, Any] | None = None,
        **fedavg_options: Any,
    ) -> None:
        super().__init__(**fedavg_options)  # the Flower FedAvg this mixin comes before
        self.aggregator = make_aggregator(aggregator, f, owner="flower", **dict(rule_options or {}))
        self.on_updates = bool(on_updates)
        self.weighted = bool(weighted)
        self.dtype = _check_dtype(dtype)
        self._reference: Any = None  # the global arrays of the round, for on_updates
        self._start()

    def _start(self) -> None:
        """What a strategy does once its settings are in place."""

    def _aggregate(
        self, results: list[tuple[list[np.ndarray], float]], reference: list[np.ndarray] | None, clients: list[Any]
    ) -> tuple[list[np.ndarray], float]:
        if isinstance(self.aggregator, FoolsGold):
            self.aggregator.clients = clients
        if self.on_updates and reference is None:
            raise ValueError("flower: on_updates=True needs the round's global parameters; none were configured")
        start = time.perf_counter()
        out = aggregate_ndarrays(
            results,
            self.aggregator,
            reference=reference if self.on_updates else None,
            weighted=self.weighted,
            dtype=self.dtype,
        )
        return out, time.perf_counter() - start

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(aggregator={self.aggregator!r}, on_updates={self.on_updates}, weighted={self.weighted})"


if _LEGACY_ERROR is None:

    class RobustStrategy(_RobustMixin, _LegacyFedAvg):
        """FedAvg with a robustagg rule in place of the weighted average (Flower's ``FitRes`` API).

        Args:
            aggregator: a robustagg aggregator object or a rule name in :data:`RULES`.
            f: the rule's f when ``aggregator`` is a name.
            on_updates: aggregate ``x_i - x`` relative to the global parameters
                ``x`` sent in :meth:`configure_fit`, then add ``x`` back (use it
                with centered clipping; see the module docstring).
            weighted: weight Mean and GeometricMedian by ``FitRes.num_examples``;
                other rules are unweighted.
            dtype: the dtype of the ``(n, d)`` matrix (default: float64 when a
                parameter array is float64 or integer, else float32; see :func:`aggregate_ndarrays`).
            rule_options: further arguments of the rule when ``aggregator`` is a name.
            **fedavg_options: FedAvg's arguments (``fraction_fit``,
                ``min_fit_clients``, ``accept_failures``, ``initial_parameters``,
                ``fit_metrics_aggregation_fn``, ``evaluate_fn``, ...).

        As in FedAvg, failures are ignored unless ``accept_failures=False``, in
        which case a round with failures keeps the current model. The fit
        metrics hold ``robustagg_seconds``, the time spent aggregating.
        """

        def _start(self) -> None:
            if self.initial_parameters is not None:
                self._remember(self.initial_parameters)

        def _remember(self, parameters: Parameters) -> None:
            self._reference = parameters_to_ndarrays(parameters)

        def configure_fit(
            self, server_round: int, parameters: Parameters, client_manager: ClientManager
        ) -> list[tuple[ClientProxy, Any]]:
            """FedAvg's sampling and configuration; also keeps ``parameters`` as the reference of ``on_updates``."""
            self._remember(parameters)
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(
            self,
            server_round: int,
            results: list[tuple[ClientProxy, FitRes]],
            failures: list[tuple[ClientProxy, FitRes] | BaseException],
        ) -> tuple[Parameters | None, dict[str, Scalar]]:
            """Aggregate the clients' parameters with the robustagg rule."""
            if not results:
                return None, {}
            if not self.accept_failures and failures:
                return None, {}
            rows = [(parameters_to_ndarrays(res.parameters), res.num_examples) for _, res in results]
            arrays, seconds = self._aggregate(rows, self._reference, [proxy.cid for proxy, _ in results])
            metrics: dict[str, Scalar] = {}
            if self.fit_metrics_aggregation_fn:
                metrics = dict(self.fit_metrics_aggregation_fn([(res.num_examples, res.metrics) for _, res in results]))
            metrics["robustagg_seconds"] = seconds
            return ndarrays_to_parameters(arrays), metrics


if _MESSAGE_ERROR is None:

    class RobustMessageStrategy(_RobustMixin, _MessageFedAvg):
        """FedAvg with a robustagg rule in place of the weighted average (Flower's Message API).

        Args:
            aggregator, f, on_updates, weighted, dtype, rule_options: as in :class:`RobustStrategy`;
                the counts are the replies' ``weighted_by_key`` metric
                (``"num-examples"`` by default).
            **fedavg_options: ``flwr.serverapp.strategy.FedAvg``'s arguments
                (``fraction_train``, ``min_train_nodes``, ``weighted_by_key``,
                ``train_metrics_aggr_fn``, ...).

        Replies with errors are ignored, as in FedAvg. The arrays keep the
        keys of the clients' ArrayRecords; the train metrics hold
        ``robustagg_seconds``.
        """

        def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Any:
            """FedAvg's sampling and messages; also keeps ``arrays`` as the reference of ``on_updates``."""
            self._reference = {k: v.numpy() for k, v in arrays.items()}
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies: Any) -> tuple[ArrayRecord | None, MetricRecord | None]:
            """Aggregate the replies' ArrayRecords with the robustagg rule."""
            valid, _ = self._check_and_log_replies(replies, is_train=True)
            if not valid:
                return None, None
            contents = [msg.content for msg in valid]
            records = [next(iter(c.array_records.values())) for c in contents]
            keys = list(records[0].keys())
            rows = [
                ([rec[k].numpy() for k in keys], next(iter(c.metric_records.values()))[self.weighted_by_key])
                for rec, c in zip(records, contents)
            ]
            reference = None
            if self._reference is not None and self.on_updates:
                missing = [k for k in keys if k not in self._reference]
                if missing:
                    raise ValueError(f"flower: the replies' arrays {missing} are not in the global ArrayRecord")
                reference = [self._reference[k] for k in keys]
            arrays, seconds = self._aggregate(rows, reference, [msg.metadata.src_node_id for msg in valid])
            metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
            metrics["robustagg_seconds"] = seconds
            return ArrayRecord({k: Array(v) for k, v in zip(keys, arrays)}), metrics

        def summary(self) -> None:
            """Log the settings, then FedAvg's."""
            logging.getLogger("flwr").info(
                "\t├──> robustagg: %r (on_updates=%s, weighted=%s)", self.aggregator, self.on_updates, self.weighted
            )
            super().summary()


def __getattr__(name: str) -> Any:
    if name == "RobustStrategy" and _LEGACY_ERROR is not None:
        raise ImportError(
            f"{_FLOWER_HELP} (flwr.server.strategy.FedAvg could not be imported: {_LEGACY_ERROR})"
        ) from _LEGACY_ERROR
    if name == "RobustMessageStrategy" and _MESSAGE_ERROR is not None:
        raise ImportError(
            f"{_FLOWER_HELP} (flwr.serverapp.strategy.FedAvg could not be imported: {_MESSAGE_ERROR})"
        ) from _MESSAGE_ERROR
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
