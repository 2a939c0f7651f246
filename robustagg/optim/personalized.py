r"""Personalized collaborative learning: weighted gradient averaging, with and without bias correction (SPEC 6.3).

User 0 minimises its own objective :math:`f_0` and may use the stochastic
gradients :math:`g_1, \dots, g_N` of N collaborators, whose objectives differ
from :math:`f_0`. Weighted gradient averaging (WGA) steps along

.. math:: x \leftarrow x - \text{lr} \sum_{i=0}^{N} a_i g_i, \qquad \sum_i a_i = 1,

which trades variance (averaging independent noise) against bias (the
collaborators' gradients point elsewhere): Grimberg, Hartley, Karimireddy,
Jaggi, "Optimal Model Averaging: Towards Personalized Collaborative Learning"
(2021) give the best weights for a mean-estimation model of this trade-off
(:func:`collaborator_weight`, :func:`optimal_weights`). With a common bias
WGA converges to the wrong point however the weights are set.

Bias correction (Chayti, Karimireddy, Stich, Flammarion, Jaggi, "Linear
Speedup in Personalized Collaborative Learning", 2021) adds an estimate
:math:`c_i` of each collaborator's bias,

.. math::
    x \leftarrow x - \text{lr} \sum_{i=0}^{N} (a_i g_i + c_i), \qquad
    c_i \leftarrow (1 - \beta) c_i + \beta\, a_i (g_0 - g_i), \qquad c_0 = 0,

so that the step is unbiased for :math:`\nabla f_0` while keeping most of
the variance reduction. Every step is one native multi-tensor call
(:func:`robustagg.ops.weighted_step_`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from .. import ops
from ..validation import check_positive, check_real, check_tensor_list

__all__ = [
    "WeightedGradientAveraging",
    "BiasCorrectedWGA",
    "DecayingBeta",
    "decaying_beta",
    "collaborator_weight",
    "optimal_weights",
    "estimate_bias_variance",
]

Beta = float | Callable[[int], float]
UserGrads = Sequence[Sequence[torch.Tensor]]

_WEIGHT_SUM_TOL = 1e-6


def _check_weights(weights: object, rule: str) -> list[float]:
    if isinstance(weights, (torch.Tensor, np.ndarray)):
        if weights.ndim != 1:
            raise ValueError(f"{rule}: weights must be 1-D (N + 1 numbers), got shape {list(weights.shape)}")
        weights = weights.tolist()
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise TypeError(f"{rule}: weights must be a sequence of N + 1 numbers, got {type(weights).__name__}")
    if len(weights) < 1:
        raise ValueError(f"{rule}: weights must hold N + 1 >= 1 numbers, got weights={list(weights)!r}")
    weights = [check_real(w, f"weights[{i}]", rule) for i, w in enumerate(weights)]
    total = math.fsum(weights)
    if abs(total - 1.0) > _WEIGHT_SUM_TOL:
        raise ValueError(
            f"{rule}: weights must sum to 1 (within {_WEIGHT_SUM_TOL:g}), got sum {total!r} for weights={weights!r}"
        )
    return weights


class WeightedGradientAveraging(torch.optim.Optimizer):
    r"""Weighted gradient averaging, :math:`x \leftarrow x - \text{lr} \sum_{i=0}^{N} a_i g_i`.

    ``params`` are user 0's parameters (one parameter group), ``weights``
    the N + 1 weights :math:`a_0, \dots, a_N` (finite, summing to 1; negative
    weights are allowed, as :func:`optimal_weights` may give them). Unlike
    the optimizers of :mod:`torch.optim`, :meth:`step` takes the gradients
    instead of reading ``.grad``: ``grads[i][j]`` is user i's gradient of
    ``params[j]`` (user 0 first), evaluated at the current parameters.
    Weights and lr live in ``param_groups[0]`` and may be changed there.

    Grimberg, Hartley, Karimireddy, Jaggi, "Optimal Model Averaging: Towards
    Personalized Collaborative Learning", 2021.
    """

    _rule = "WeightedGradientAveraging"

    def __init__(self, params: Iterable[torch.Tensor], weights: Sequence[float] | torch.Tensor, lr: float) -> None:
        self._setup(params, weights, lr, {})

    def _setup(self, params: Iterable[torch.Tensor], weights: object, lr: object, extra: dict[str, Any]) -> None:
        params = list(params)
        if not params:
            raise ValueError(f"{self._rule}: params is empty")
        for j, p in enumerate(params):
            if not isinstance(p, torch.Tensor):
                raise TypeError(
                    f"{self._rule}: params[{j}] must be a torch.Tensor (one parameter group), got {type(p).__name__}"
                )
        defaults = {"weights": _check_weights(weights, self._rule), "lr": check_positive(lr, "lr", self._rule), **extra}
        torch.optim.Optimizer.__init__(self, params, defaults)

    @property
    def collaborators(self) -> int:
        """N, the number of collaborators (``len(weights) - 1``)."""
        return len(self.param_groups[0]["weights"]) - 1

    def _check_grads(self, grads: UserGrads) -> list[list[torch.Tensor]]:
        group = self.param_groups[0]
        users = len(group["weights"])
        if isinstance(grads, torch.Tensor) or not isinstance(grads, Sequence):
            raise TypeError(f"{self._rule}: grads must be a list of N + 1 gradient lists, got {type(grads).__name__}")
        if len(grads) != users:
            raise ValueError(
                f"{self._rule}: grads must hold N + 1 = {users} gradient lists (one per weight), got {len(grads)}"
            )
        out = []
        for i, user in enumerate(grads):
            count = len(group["params"])
            if isinstance(user, torch.Tensor) or not isinstance(user, Sequence):
                raise TypeError(
                    f"{self._rule}: grads[{i}] must be a list of {count} tensors shaped like params, "
                    f"got {type(user).__name__}"
                )
            if len(user) != count:
                raise ValueError(
                    f"{self._rule}: grads[{i}] must be a list of {count} tensors shaped like params, "
                    f"got {len(user)} tensors"
                )
            out.append([g.detach() for g in check_tensor_list(user, group["params"], f"grads[{i}]", self._rule)])
        return out

    @torch.no_grad()
    def step(self, grads: UserGrads) -> None:  # type: ignore[override]
        """One step from the N + 1 users' gradients (``grads[0]``: user 0's)."""
        group = self.param_groups[0]
        weights = _check_weights(group["weights"], self._rule)
        lr = check_positive(group["lr"], "lr", self._rule)
        ops.weighted_step_(group["params"], self._check_grads(grads), weights, lr)


class DecayingBeta:
    r"""The schedule :math:`\beta_t = \max(1 / (t + 1), \beta_{\min})`, t the 0-based step.

    :math:`1/(t+1)` makes :math:`c_i` the running mean of every sample so far
    (all noise averaged, no memory of the start); the floor lets it keep
    tracking a bias that moves with x. Our choice of schedule (not from the
    papers), a plain object so that optimizers holding it can be pickled.
    """

    def __init__(self, floor: float) -> None:
        self.floor = check_real(floor, "floor", "decaying_beta", 0.0, 1.0)

    def __call__(self, t: int) -> float:
        return max(1.0 / (t + 1), self.floor)

    def __repr__(self) -> str:
        return f"decaying_beta({self.floor!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DecayingBeta) and other.floor == self.floor

    def __hash__(self) -> int:
        return hash((DecayingBeta, self.floor))


def decaying_beta(floor: float) -> DecayingBeta:
    r"""The schedule ``t -> max(1 / (t + 1), floor)`` for :class:`BiasCorrectedWGA`'s ``beta``."""
    return DecayingBeta(floor)


class BiasCorrectedWGA(WeightedGradientAveraging):
    r"""Weighted gradient averaging with bias correction.

    .. math::
        x \leftarrow x - \text{lr} \Big(\sum_{i=0}^{N} a_i g_i + \sum_{i=1}^{N} c_i\Big), \qquad
        c_i \leftarrow (1 - \beta_t) c_i + \beta_t\, a_i (g_0 - g_i)

    :math:`c_i` (zero at the start, one per collaborator and parameter, kept
    in ``state[p]["corrections"]`` as an ``(N, *p.shape)`` tensor) is an
    exponential moving average of collaborator i's weighted bias
    :math:`a_i (\nabla f_0 - \nabla f_i)`. It is learned from the step's own
    gradient samples and applied from the next step: the step uses the
    corrections from before the update, so that :math:`c_i` and the step's
    noise are independent.

    ``beta`` is a number in [0, 1] or a callable ``t -> beta_t`` (t = 0, 1,
    ... the step index, e.g. :func:`decaying_beta`). It must be small or
    decay: user 0's gradient noise enters every :math:`c_i` with the same
    sign, so :math:`\sum_i c_i` carries a noise of variance about
    :math:`\beta / 2` times user 0's (times :math:`(\sum_{i \ge 1} a_i)^2`),
    which is not averaged over the collaborators; a large beta stalls the
    error at that level.

    Chayti, Karimireddy, Stich, Flammarion, Jaggi, "Linear Speedup in
    Personalized Collaborative Learning", 2021.
    """

    _rule = "BiasCorrectedWGA"

    def __init__(
        self, params: Iterable[torch.Tensor], weights: Sequence[float] | torch.Tensor, lr: float, beta: Beta
    ) -> None:
        if not callable(beta):
            beta = check_real(beta, "beta", self._rule, 0.0, 1.0)
        self._setup(params, weights, lr, {"beta": beta})

    def _beta(self, t: int) -> float:
        beta = self.param_groups[0]["beta"]
        if callable(beta):
            return check_real(beta(t), f"beta({t})", self._rule, 0.0, 1.0)
        return check_real(beta, "beta", self._rule, 0.0, 1.0)

    @torch.no_grad()
    def step(self, grads: UserGrads) -> None:  # type: ignore[override]
        """One step from the N + 1 users' gradients; then updates the corrections."""
        group = self.param_groups[0]
        weights = _check_weights(group["weights"], self._rule)
        lr = check_positive(group["lr"], "lr", self._rule)
        grads = self._check_grads(grads)
        params = group["params"]
        n = len(weights) - 1
        if n == 0:  # nothing to correct: plain SGD on user 0
            ops.weighted_step_(params, grads, weights, lr)
            return
        # The state's collaborators and beta_t are checked before the first step's state is made.
        for p in params:
            held = self.state.get(p, {}).get("corrections")
            if held is not None and held.shape[0] != n:
                raise ValueError(
                    f"{self._rule}: the state holds corrections for {held.shape[0]} "
                    f"collaborators but weights has N = {n}"
                )
        t = self.state.get(params[0], {}).get("step", 0)
        beta = self._beta(t)
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["corrections"] = torch.zeros((n, *p.shape), dtype=p.dtype, device=p.device)
        stacked = [self.state[p]["corrections"] for p in params]
        corrections = [[c[i] for c in stacked] for i in range(n)]
        ops.weighted_step_(params, grads, weights, lr, corrections=corrections, beta=beta)
        for p in params:
            self.state[p]["step"] = t + 1

    def corrections(self) -> list[list[torch.Tensor]]:
        """The corrections as N lists shaped like params (``[i - 1][j]``: :math:`c_i` of ``params[j]``); zeros before the first step."""
        params = self.param_groups[0]["params"]
        n = self.collaborators
        return [
            [self.state[p]["corrections"][i] if self.state[p] else torch.zeros_like(p) for p in params]
            for i in range(n)
        ]


def collaborator_weight(v0: float, v: float, bias_sq: float) -> float:
    r"""Best weight of one collaborator: :math:`a_1 = v_0 / (v_0 + v + \|b\|^2)`, :math:`a_0 = 1 - a_1`.

    ``v0`` and ``v`` are the variances (summed over coordinates) of user 0's
    and the collaborator's estimates, ``bias_sq`` the squared norm of the
    collaborator's bias. Minimises :math:`a_0^2 v_0 + a_1^2 (v + \|b\|^2)`
    over :math:`a_0 + a_1 = 1` (Grimberg, Hartley, Karimireddy, Jaggi,
    "Optimal Model Averaging", 2021).
    """
    v0, v, bias_sq = (
        check_real(value, name, "collaborator_weight", low=0.0)
        for name, value in (("v0", v0), ("v", v), ("bias_sq", bias_sq))
    )
    total = v0 + v + bias_sq
    if total == 0:
        raise ValueError("collaborator_weight: v0 + v + bias_sq is 0, every weight is optimal")
    return v0 / total


def optimal_weights(variances: Sequence[float] | torch.Tensor, bias_gram: torch.Tensor) -> torch.Tensor:
    r"""Weights minimising :math:`a^\top M a` subject to :math:`\sum_i a_i = 1`, :math:`M = \mathrm{diag}(v) + B`.

    ``variances`` are the N + 1 users' variances :math:`v_i` (summed over
    coordinates), ``bias_gram`` the ``(N + 1, N + 1)`` Gram matrix
    :math:`B_{ij} = \langle b_i, b_j \rangle` of the biases
    :math:`b_i = \nabla f_i - \nabla f_0` (row and column 0 are zero). Then
    :math:`a^\top M a` is the mean squared error of the weighted average
    :math:`\sum_i a_i g_i` as an estimate of :math:`\nabla f_0`, and

    .. math:: a = M^{-1} \mathbf{1} / (\mathbf{1}^\top M^{-1} \mathbf{1})

    (Grimberg, Hartley, Karimireddy, Jaggi, "Optimal Model Averaging", 2021;
    for N = 1 it is :func:`collaborator_weight`). Solved as the KKT system
    of the constrained problem, which stays regular when M is singular but
    positive definite on :math:`\{a : \sum_i a_i = 0\}` (e.g. a noiseless
    user 0 gets weight 1). With correlated biases (several collaborators
    biased in a common direction) some weights may be negative: the
    solution subtracts one collaborator's bias with another's. Returns a
    float64 tensor of N + 1 weights.
    """
    if isinstance(variances, torch.Tensor):
        if variances.is_complex() or variances.dtype == torch.bool:
            raise TypeError(f"optimal_weights: variances must be real numbers, got {variances.dtype}")
        v = variances.detach().to("cpu", torch.float64)
    else:
        if isinstance(variances, (str, bytes)) or not isinstance(variances, (Sequence, np.ndarray)):
            raise TypeError(
                f"optimal_weights: variances must be a sequence of N + 1 numbers, got {type(variances).__name__}"
            )
        v = torch.tensor(
            [check_real(x, f"variances[{i}]", "optimal_weights", allow_inf=True) for i, x in enumerate(variances)],
            dtype=torch.float64,
        )
    if v.dim() != 1 or v.numel() < 1:
        raise ValueError(
            f"optimal_weights: variances must be a 1-D sequence of N + 1 >= 1 numbers, got shape {list(v.shape)}"
        )
    if not bool(torch.isfinite(v).all()) or bool((v < 0).any()):
        raise ValueError(f"optimal_weights: variances must be finite and >= 0, got variances={v.tolist()!r}")
    if not isinstance(bias_gram, torch.Tensor):
        raise TypeError(f"optimal_weights: bias_gram must be a torch.Tensor, got {type(bias_gram).__name__}")
    if bias_gram.is_complex() or bias_gram.dtype == torch.bool:
        raise TypeError(f"optimal_weights: bias_gram must be a real tensor, got {bias_gram.dtype}")
    B = bias_gram.detach().to("cpu", torch.float64)
    k = v.numel()
    if B.shape != (k, k):
        raise ValueError(f"optimal_weights: bias_gram must be ({k}, {k}) for {k} variances, got shape {list(B.shape)}")
    if not bool(torch.isfinite(B).all()):
        raise ValueError("optimal_weights: bias_gram must be finite")
    M = torch.diag(v) + 0.5 * (B + B.T)
    kkt = torch.zeros(k + 1, k + 1, dtype=torch.float64)
    kkt[:k, :k] = 2 * M
    kkt[:k, k] = 1.0
    kkt[k, :k] = 1.0
    rhs = torch.zeros(k + 1, dtype=torch.float64)
    rhs[k] = 1.0
    try:
        solution = torch.linalg.solve(kkt, rhs)
    except RuntimeError as exc:  # torch.linalg.LinAlgError derives from RuntimeError
        raise ValueError(
            "optimal_weights: diag(variances) + bias_gram is singular on the weights summing to 1 "
            "(several users with zero variance and no bias?)"
        ) from exc
    return solution[:k]


def estimate_bias_variance(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Variances and bias Gram matrix from T gradient samples per user at the same point(s).

    ``samples`` is a ``(T, N + 1, d)`` tensor, ``samples[t, i]`` user i's
    t-th stochastic gradient (user 0 first), T >= 2. Returns, in float64:

    * ``variances`` ``(N + 1,)``: the trace of each user's sample covariance,
      :math:`v_i = \frac{1}{T - 1} \sum_t \|g_{t,i} - \bar g_i\|^2`;
    * ``B`` ``(N + 1, N + 1)``: the Gram matrix of the estimated biases
      :math:`\bar g_i - \bar g_0` (row and column 0 zero),

    the inputs of :func:`optimal_weights`. The means carry noise, so
    :math:`B_{ii}` overestimates :math:`\|b_i\|^2` by about
    :math:`(v_0 + v_i) / T`.
    """
    if not isinstance(samples, torch.Tensor):
        raise TypeError(f"estimate_bias_variance: samples must be a torch.Tensor, got {type(samples).__name__}")
    if samples.is_complex() or samples.dtype == torch.bool:
        raise TypeError(f"estimate_bias_variance: samples must be a real tensor, got {samples.dtype}")
    if samples.dim() != 3 or samples.shape[0] < 2 or samples.shape[1] < 1:
        raise ValueError(
            "estimate_bias_variance: samples must be (T, N + 1, d) with T >= 2 and N + 1 >= 1, "
            f"got shape {list(samples.shape)}"
        )
    s = samples.detach().to(torch.float64)
    means = s.mean(0)
    variances = (s - means).square().sum((0, 2)) / (s.shape[0] - 1)
    biases = means - means[0]
    return variances, biases @ biases.T
