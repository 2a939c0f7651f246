"""Aggregator objects: robust rules any trainer can call.

An aggregator takes the n workers' contributions in any of three forms and
returns the aggregate in the same form:

* an ``(n, d)`` tensor            -> a ``(d,)`` tensor;
* a list of n equally-shaped tensors (one gradient per worker) -> one tensor of that shape;
* a list of n parameter lists (each a list of tensors with the same shapes) -> one list of tensors.

Structured inputs are flattened into one ``(n, d)`` matrix (one copy), the
rule runs once over all coordinates, and the result is split back.

Pre-aggregators (:class:`Bucketing`, :class:`NNM`, :class:`Clip`,
:class:`ARC`) map the rows to new rows and compose with any rule through
``>>``: ``(Bucketing(2) >> GeometricMedian())(grads)``, or
``NNM(f) >> Clip(c) >> Krum(f)``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch

from . import coefficients, distance, ops, preaggregators, similarity, spectral, subsets
from .validation import check_generator, check_int, check_optional_tensor, check_positive, check_real

Contributions = torch.Tensor | Sequence[torch.Tensor] | Sequence[Sequence[torch.Tensor]]

__all__ = [
    "Aggregator",
    "Mean",
    "CoordinateMedian",
    "TrimmedMean",
    "MeaMed",
    "Krum",
    "MultiKrum",
    "Bulyan",
    "MDA",
    "MoNNA",
    "SMEA",
    "CAF",
    "DnC",
    "FLTrust",
    "SignGuard",
    "ClippedClustering",
    "FoolsGold",
    "GeometricMedian",
    "CenteredClip",
    "PreAggregator",
    "Pipeline",
    "Bucketing",
    "NNM",
    "Clip",
    "ARC",
    "RULES",
    "RULES_WITH_F",
    "make_aggregator",
]


_EXPECTED = "aggregator: expected an (n, d) tensor or a non-empty list of per-worker tensors or parameter lists"


def _is_tensor_list(x: object) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, (str, bytes)) and all(isinstance(t, torch.Tensor) for t in x)


def flatten_contributions(inputs: Contributions) -> tuple[torch.Tensor, object]:
    """Stack the contributions into an (n, d) matrix; also return how to undo it.

    Anything but tensors at the leaves (floats, nested lists of floats, numpy
    arrays) is a TypeError: torch.stack would turn some of them into a matrix
    of another dtype, or fail with a message that names no worker.
    """
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() != 2:
            raise ValueError(f"aggregator: a tensor input must be (n, d), got shape {tuple(inputs.shape)}")
        return inputs, None
    if not isinstance(inputs, Sequence) or isinstance(inputs, (str, bytes)) or len(inputs) == 0:
        raise TypeError(f"{_EXPECTED}, got {type(inputs).__name__}")
    first = inputs[0]
    if isinstance(first, torch.Tensor):
        shape = first.shape
        for i, t in enumerate(inputs):
            if not isinstance(t, torch.Tensor) and not _is_tensor_list(t):
                raise TypeError(f"{_EXPECTED}; worker {i} sent {_describe_contribution(t)}")
            if not isinstance(t, torch.Tensor) or t.shape != shape:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"aggregator: worker {i} sent {got}, expected a tensor of shape {tuple(shape)}")
        return torch.stack([t.reshape(-1) for t in inputs]), ("tensor", shape)
    if not _is_tensor_list(first):
        raise TypeError(f"{_EXPECTED}; worker 0 sent {_describe_contribution(first)}")
    if len(first) == 0:
        raise ValueError("aggregator: worker 0 sent an empty parameter list")
    shapes = [t.shape for t in first]
    rows = []
    for i, params in enumerate(inputs):
        if not isinstance(params, torch.Tensor) and not _is_tensor_list(params):
            raise TypeError(f"{_EXPECTED}; worker {i} sent {_describe_contribution(params)}")
        if (
            isinstance(params, torch.Tensor)
            or len(params) != len(shapes)
            or any(t.shape != s for t, s in zip(params, shapes))
        ):
            raise ValueError(
                f"aggregator: worker {i}'s parameter list does not match worker 0's shapes {[tuple(s) for s in shapes]}"
            )
        rows.append(torch.cat([t.reshape(-1) for t in params]))
    return torch.stack(rows), ("list", shapes)


def _describe_contribution(x: object) -> str:
    """``float``, ``list of float``, ``list holding ndarray``: what a worker sent instead of tensors."""
    if isinstance(x, Sequence) and not isinstance(x, (str, bytes)):
        odd = next((t for t in x if not isinstance(t, torch.Tensor)), None)
        return f"{type(x).__name__} holding {type(odd).__name__}"
    return type(x).__name__


def unflatten_result(out: torch.Tensor, layout: object) -> torch.Tensor | list[torch.Tensor]:
    if layout is None:
        return out
    kind, shape = layout
    if kind == "tensor":
        return out.reshape(shape)
    sizes = [s.numel() for s in shape]
    return [part.reshape(s) for part, s in zip(torch.split(out, sizes), shape)]


def _describe(obj: object) -> str:
    """``Name(arg=value, ...)``: tensors of more than 8 values (a center) by shape; generators and what the
    object records between calls (its ``_state`` attributes) left out."""
    args = []
    for k, v in vars(obj).items():
        if k in getattr(obj, "_state", ()) or isinstance(v, torch.Generator):
            continue
        large = isinstance(v, torch.Tensor) and v.numel() > 8
        args.append(f"{k}=tensor{tuple(v.shape)}" if large else f"{k}={v!r}")
    return f"{type(obj).__name__}({', '.join(args)})"


class Aggregator:
    """Base class: subclasses implement :meth:`aggregate` on an ``(n, d)`` matrix."""

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, inputs: Contributions) -> torch.Tensor | list[torch.Tensor]:
        X, layout = flatten_contributions(inputs)
        return unflatten_result(self.aggregate(X), layout)

    def __repr__(self) -> str:
        return _describe(self)


class Mean(Aggregator):
    """Plain (weighted) average; not robust. See :func:`robustagg.mean`."""

    def __init__(self, weights: torch.Tensor | None = None) -> None:
        self.weights = check_optional_tensor(weights, "weights", "mean")

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        return ops.mean(X, self.weights)


class CoordinateMedian(Aggregator):
    """Coordinate-wise median. See :func:`robustagg.coordinate_median`."""

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        return ops.coordinate_median(X)


class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean dropping f values per side. See :func:`robustagg.trimmed_mean`."""

    def __init__(self, f: int) -> None:
        self.f = check_int(f, "f", "trimmed_mean", low=0)

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        return ops.trimmed_mean(X, self.f)


class MeaMed(Aggregator):
    """Mean of the n - f values closest to the coordinate-wise median. See :func:`robustagg.meamed`."""

    def __init__(self, f: int) -> None:
        self.f = check_int(f, "f", "meamed", low=0)

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        return ops.meamed(X, self.f)


class Krum(Aggregator):
    """Krum (m = 1) or Multi-Krum (mean of the m best rows). See :func:`robustagg.krum`."""

    def __init__(self, f: int, m: int = 1) -> None:
        self.f = check_int(f, "f", "krum", low=0)
        self.m = check_int(m, "m", "krum", low=1)

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        return distance.krum(X, self.f, self.m)


class MultiKrum(Aggregator):
    """Multi-Krum, m = n - f by default. See :func:`robustagg.multi_krum`."""

    def __init__(self, f: int, m: int | None = None) -> None:
        self.f = check_int(f, "f", "multi_krum", low=0)
        self.m = None if m is None else check_int(m, "m", "multi_krum", low=1)

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        return distance.multi_krum(X, self.f, self.m)


class Bulyan(Aggregator):
    """Bulyan over Krum. See :func:`robustagg.bulyan`."""

    def __init__(self, f: int) -> None:
        self.f = check_int(f, "f", "bulyan", low=0)

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        return distance.bulyan(X, self.f)


class MDA(Aggregator):
    """Minimum-diameter averaging. See :func:`robustagg.mda`."""

    def __init__(self, f: int, max_subsets: int = subsets.MAX_SUBSETS) -> None:
        self.f = check_int(f, "f", "mda", low=0)
        self.max_subsets = check_int(max_subsets, "max_subsets", "mda", low=1)

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        return distance.mda(X, self.f, self.max_subsets)


class MoNNA(Aggregator):
    """Mean of the n - f rows nearest to row ``pivot``. See :func:`robustagg.monna`."""

    def __init__(self, f: int, pivot: int = 0) -> None:
        self.f = check_int(f, "f", "monna", low=0)
        self.pivot = check_int(pivot, "pivot", "monna", low=0)

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        return distance.monna(X, self.f, self.pivot)


class SMEA(Aggregator):
    """Smallest-maximum-eigenvalue averaging. See :func:`robustagg.smea`."""

    def __init__(self, f: int, max_subsets: int = subsets.MAX_SUBSETS) -> None:
        self.f = check_int(f, "f", "smea", low=0)
        self.max_subsets = check_int(max_subsets, "max_subsets", "smea", low=1)

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        return spectral.smea(X, self.f, self.max_subsets)


class CAF(Aggregator):
    """Covariance-bound agnostic filter. See :func:`robustagg.caf`."""

    def __init__(self, f: int) -> None:
        self.f = check_int(f, "f", "caf", low=0)

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        return spectral.caf(X, self.f)


class DnC(Aggregator):
    """Divide-and-Conquer. See :func:`robustagg.dnc`."""

    def __init__(
        self,
        f: int,
        iters: int = 5,
        subsample: int = 10000,
        c: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        self.f = check_int(f, "f", "dnc", low=0)
        self.iters = check_int(iters, "iters", "dnc", low=1)
        self.subsample = check_int(subsample, "subsample", "dnc", low=1)
        self.c = check_real(c, "c", "dnc", low=0.0)
        self.generator = check_generator(generator, "generator", "dnc")

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        return spectral.dnc(X, self.f, self.iters, self.subsample, self.c, self.generator)


class FLTrust(Aggregator):
    """FLTrust against the server's root update. See :func:`robustagg.fltrust`.

    ``root`` is the server's update on its clean root data set for the round being aggregated: set it
    before each call (``rule.root = g0``; a tensor of d values, or one parameter list / gradient shaped as
    the contributions). A call without one is a ``ValueError``.
    """

    _state = ("root",)  # an input of the round, not a setting

    def __init__(self, root: torch.Tensor | Sequence[torch.Tensor] | None = None) -> None:
        self.root = root

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        if self.root is None:
            raise ValueError("fltrust: no root update; set rule.root to the server's update of this round")
        root = self.root
        if not isinstance(root, torch.Tensor):
            root = flatten_contributions([root])[0]
        return similarity.fltrust(X, root.reshape(-1))


class SignGuard(Aggregator):
    """SignGuard: norm filter, sign-statistics clustering, clipped mean. See :func:`robustagg.signguard`."""

    def __init__(
        self,
        lower: float = 0.1,
        upper: float = 3.0,
        fraction: float = 0.1,
        generator: torch.Generator | None = None,
        max_iter: int = 100,
    ) -> None:
        self.lower = check_real(lower, "lower", "signguard", low=0.0)
        self.upper = check_real(upper, "upper", "signguard", low=0.0)
        self.fraction = check_real(fraction, "fraction", "signguard", low=0.0, high=1.0, low_open=True)
        self.generator = check_generator(generator, "generator", "signguard")
        self.max_iter = check_int(max_iter, "max_iter", "signguard", low=1)

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        return similarity.signguard(X, self.lower, self.upper, self.fraction, self.generator, self.max_iter)


def _median(values: list[float]) -> float:
    """The middle value (even count: the mean of the two middle ones, halved first so it cannot overflow)."""
    s = sorted(values)
    m = len(s)
    return s[m // 2] if m % 2 else s[m // 2 - 1] / 2 + s[m // 2] / 2


class ClippedClustering(Aggregator):
    """ClippedClustering with the clipping threshold of Li et al.: the median of every norm seen so far.

    With ``tau`` None, each call adds the norms of its rows without NaN/inf to ``norms`` and clips at
    their median over all calls (even count: the mean of the two middle ones), as the rule's authors do
    across rounds; one more pass over X for the norms. A given ``tau``
    is used as it is. :meth:`reset` forgets the norms. See :func:`robustagg.clipped_clustering`.
    """

    _state = ("norms",)

    def __init__(self, tau: float | None = None) -> None:
        self.tau = None if tau is None else check_real(tau, "tau", "clipped_clustering", low=0.0)
        self.norms: list[float] = []

    def reset(self) -> None:
        """Forget the norms seen."""
        self.norms = []

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        tau = self.tau
        if tau is None:
            norms = similarity.row_norms(X)
            self.norms += norms[torch.isfinite(norms)].tolist()
            tau = _median(self.norms) if self.norms else None
        return similarity.clipped_clustering(X, tau)


class FoolsGold(Aggregator):
    r"""FoolsGold (Fung, Yoon, Beschastnikh, RAID 2020): a weighted mean that down-weights clients whose
    histories point the same way.

    Each client's history is the sum of every row it has sent (float64). ``clients`` names the client of
    each row (n distinct hashable ids; set it before a call when the rows of a round are not always
    clients ``0 .. n-1`` in order, None: row i is client i). A call adds the rows to their clients'
    histories, takes the weights :math:`\alpha` of those histories (:func:`robustagg.foolsgold_weights`)
    and returns :math:`\sum_i \alpha_i x_i / \sum_i \alpha_i` (zeros when :math:`\sum_i \alpha_i = 0`). A
    client that has sent a row holding NaN/inf keeps weight 0 from then on (its history is not finite).
    :meth:`reset` forgets the histories.
    """

    _state = ("history",)

    def __init__(self, kappa: float = 1.0, clients: Sequence[Hashable] | None = None) -> None:
        self.kappa = check_positive(kappa, "kappa", "foolsgold")
        self.clients = clients
        self.history: dict[Hashable, torch.Tensor] = {}

    def reset(self) -> None:
        """Forget every client's history."""
        self.history = {}

    def _ids(self, n: int) -> list[Hashable]:
        ids = list(range(n)) if self.clients is None else list(self.clients)
        if len(ids) != n:
            raise ValueError(f"foolsgold: clients names {len(ids)} clients for {n} rows")
        if len(set(ids)) != n:
            raise ValueError(f"foolsgold: clients must be distinct, got {self.clients!r}")
        return ids

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        ids = self._ids(X.shape[0])
        X = X.detach()
        rows = X.to(torch.float64)
        for i, client in enumerate(ids):
            seen = self.history.get(client)
            self.history[client] = rows[i].clone() if seen is None else seen + rows[i]
        alpha = similarity.foolsgold_weights(torch.stack([self.history[c] for c in ids]), self.kappa)
        total = float(alpha.sum())
        if total == 0.0:
            return torch.zeros(X.shape[1], dtype=X.dtype, device=X.device)
        return coefficients.combine(alpha / total, X)


class GeometricMedian(Aggregator):
    """Geometric median by smoothed Weiszfeld. See :func:`robustagg.geometric_median`.

    After each call, ``info`` holds the :class:`robustagg.GeometricMedianInfo`
    (iterations, final objective, convergence) of that call.
    """

    _state = ("info",)

    def __init__(
        self, weights: torch.Tensor | None = None, nu: float = 1e-6, tol: float = 1e-10, max_iter: int = 200
    ) -> None:
        self.weights = check_optional_tensor(weights, "weights", "geometric_median")
        self.nu = check_positive(nu, "nu", "geometric_median")
        self.tol = check_real(tol, "tol", "geometric_median", low=0.0)
        self.max_iter = check_int(max_iter, "max_iter", "geometric_median", low=0)
        self.info: distance.GeometricMedianInfo | None = None

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        z, self.info = distance.geometric_median(X, self.weights, self.nu, self.tol, self.max_iter, return_info=True)
        return z


class CenteredClip(Aggregator):
    """Centered clipping with memory. See :func:`robustagg.centered_clip`.

    The center is ``center`` if given, else zeros; after each call it becomes
    that call's output (Karimireddy, He, Jaggi, ICML 2021: the previous
    aggregate). :meth:`reset` forgets it.
    """

    def __init__(self, tau: float, iters: int = 1, center: torch.Tensor | None = None) -> None:
        self.tau = check_positive(tau, "tau", "centered_clip", allow_inf=True)
        self.iters = check_int(iters, "iters", "centered_clip", low=0)
        if center is not None and not isinstance(center, torch.Tensor):
            raise TypeError(f"centered_clip: center must be a torch.Tensor or None, got {type(center).__name__}")
        self.center = center

    def reset(self) -> None:
        """Start again from zeros."""
        self.center = None

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        center = self.center
        if center is None:
            center = torch.zeros(X.shape[1], dtype=X.dtype, device=X.device)
        out = distance.centered_clip(X, center.reshape(-1), self.tau, self.iters)
        self.center = out.detach().clone()
        return out


class PreAggregator:
    """Base class: maps the ``(n, d)`` rows to ``(n', d)`` rows; compose with ``>>``.

    Called directly on any of the contribution forms, it returns the new
    rows as an ``(n', d)`` tensor.
    """

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, inputs: Contributions) -> torch.Tensor:
        return self.transform(flatten_contributions(inputs)[0])

    def __rshift__(self, other: PreAggregator | Aggregator) -> PreAggregator | Aggregator:
        if isinstance(other, Aggregator):
            return Pipeline([self], other)
        if isinstance(other, PreAggregator):
            return _Chain([self, other])
        return NotImplemented

    def __repr__(self) -> str:
        return _describe(self)


class _Chain(PreAggregator):
    """Pre-aggregators applied left to right."""

    def __init__(self, steps: list[PreAggregator]) -> None:
        self.steps = [s for step in steps for s in (step.steps if isinstance(step, _Chain) else [step])]

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            X = step.transform(X)
        return X

    def __repr__(self) -> str:
        return " >> ".join(repr(s) for s in self.steps)


class Pipeline(Aggregator):
    """Pre-aggregators followed by a rule; built with ``pre >> rule``."""

    def __init__(self, pre: list[PreAggregator], rule: Aggregator) -> None:
        if not all(isinstance(p, PreAggregator) for p in pre) or not isinstance(rule, Aggregator):
            raise TypeError(f"Pipeline: expected a list of PreAggregators and an Aggregator, got {pre!r} and {rule!r}")
        self.pre = _Chain(pre)
        self.rule = rule

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        return self.rule.aggregate(self.pre.transform(X))

    def __repr__(self) -> str:
        return f"{self.pre!r} >> {self.rule!r}"


class Bucketing(PreAggregator):
    """Averages of random buckets of s rows. See :func:`robustagg.bucketing`."""

    def __init__(self, s: int, generator: torch.Generator | None = None) -> None:
        self.s = check_int(s, "s", "bucketing", low=1)
        self.generator = check_generator(generator, "generator", "bucketing")

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        return preaggregators.bucketing(X, self.s, self.generator)


class NNM(PreAggregator):
    """Nearest-neighbour mixing. See :func:`robustagg.nnm`."""

    def __init__(self, f: int) -> None:
        self.f = check_int(f, "f", "nnm", low=0)

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        return preaggregators.nnm(X, self.f)


class Clip(PreAggregator):
    """Norm clipping at c. See :func:`robustagg.clip`."""

    def __init__(self, c: float) -> None:
        self.c = check_positive(c, "c", "clip", allow_inf=True)

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        return preaggregators.clip(X, self.c)


class ARC(PreAggregator):
    """Adaptive robust clipping. See :func:`robustagg.arc`."""

    def __init__(self, f: int) -> None:
        self.f = check_int(f, "f", "arc", low=0)

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        return preaggregators.arc(X, self.f)


#: Rule names of :func:`make_aggregator` (and of ``robustagg train byzantine --agg``, the Flower
#: strategies and the DDP hook), with what each builds.
RULES: dict[str, str] = {
    "mean": "mean",
    "cm": "coordinate median",
    "tm": "trimmed mean (f per side)",
    "meamed": "mean around the median (n - f values)",
    "krum": "Krum (f)",
    "mkrum": "Multi-Krum (f, m = n - f)",
    "bulyan": "Bulyan (f)",
    "gm": "geometric median (smoothed Weiszfeld)",
    "cc": "centered clipping (tau, iterations; center = previous aggregate)",
    "mda": "minimum-diameter averaging (f)",
    "monna": "mean of the n - f rows nearest to a pivot row (f)",
    "smea": "smallest-maximum-eigenvalue averaging (f)",
    "caf": "covariance-bound agnostic filter (f)",
    "dnc": "Divide-and-Conquer spectral filter (f)",
    "fltrust": "FLTrust (trust = cosine with the server's root update, set per round)",
    "signguard": "SignGuard (norm filter, sign clustering, clipped mean)",
    "clipcluster": "ClippedClustering (median-norm clipping, larger of two cosine clusters)",
    "foolsgold": "FoolsGold (weights from the similarity of client histories)",
}

_NEEDS_F = {
    "tm": TrimmedMean,
    "meamed": MeaMed,
    "krum": Krum,
    "mkrum": MultiKrum,
    "bulyan": Bulyan,
    "mda": MDA,
    "monna": MoNNA,
    "smea": SMEA,
    "caf": CAF,
    "dnc": DnC,
}
#: The rules of :data:`RULES` that take f.
RULES_WITH_F = frozenset(_NEEDS_F)
_NO_F = {
    "mean": Mean,
    "cm": CoordinateMedian,
    "gm": GeometricMedian,
    "cc": CenteredClip,
    "fltrust": FLTrust,
    "signguard": SignGuard,
    "clipcluster": ClippedClustering,
    "foolsgold": FoolsGold,
}


def make_aggregator(
    rule: str | Aggregator,
    f: int | None = None,
    *,
    f_if_used: bool = False,
    owner: str = "make_aggregator",
    **options: Any,
) -> Aggregator:
    """The aggregator object of a rule name in :data:`RULES`; an aggregator object is returned as it is.

    ``f`` (the number of Byzantine rows the rule tolerates) is required by
    the rules of :data:`RULES_WITH_F` and refused by the others, unless ``f_if_used`` (callers that hold one f for every rule name,
    such as the distributed paths and the simulators): then it goes to the
    rules that take it only. ``cc`` requires ``tau``. Other ``options`` go to
    the class (``m`` for Krum, ``max_iter`` for the geometric median,
    ``iters`` for centered clipping, ...). An object comes with no ``f`` or
    ``options``: it already holds them. Errors name ``owner``.
    """
    if isinstance(rule, Aggregator):
        if (f is not None and not f_if_used) or options:
            raise ValueError(
                f"{owner}: f and rule options go with a rule name; an aggregator object already holds them"
            )
        return rule
    if not isinstance(rule, str):
        raise TypeError(
            f"{owner}: aggregator must be a robustagg Aggregator (a rule, or pre-aggregators >> rule) "
            f"or a rule name, got {type(rule).__name__}"
        )
    if rule not in RULES:
        raise ValueError(f"{owner}: unknown rule {rule!r}; choose from {', '.join(RULES)}")
    if rule in _NEEDS_F:
        if f is None:
            raise ValueError(f"{owner}: rule {rule!r} needs f (the number of Byzantine rows)")
        return _NEEDS_F[rule](f, **options)
    if f is not None and not f_if_used:
        raise ValueError(f"{owner}: rule {rule!r} takes no f, got f={f}")
    if rule == "cc" and "tau" not in options:
        raise ValueError(f"{owner}: rule 'cc' needs tau (the clipping radius)")
    return _NO_F[rule](**options)
