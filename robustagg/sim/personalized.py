"""Personalized collaborative learning simulator (SPEC 6.3): user 0 and N collaborators.

User 0 trains on its own objective with the stochastic gradients of N
collaborators whose objectives are shifted in one common direction, with
weighted gradient averaging (WGA) or WGA with bias correction
(:mod:`robustagg.optim.personalized`). Tasks:

* ``quadratic``: d = ``dim``; user 0's objective ``0.5 ||x||^2`` (optimum 0);
  collaborator i's ``0.5 ||x - x_i*||^2`` with ``x_i* = shift * e + z_i``,
  e one unit vector common to all collaborators, z_i ~ N(0, 0.01 / d) per
  coordinate; stochastic gradients ``H_i (x - x_i*) + noise * xi``, xi ~
  N(0, I) independent per user and step. The run starts from a point drawn
  from N(0, I) (the same for every method and N, so that the first steps
  do not sit at the optimum). Error: ``||x||^2``.
* ``hessian``: the same, with each collaborator's Hessian diagonal with
  entries 1 +- 0.5 (random signs per coordinate and collaborator); their
  optima are still x_i*; user 0's Hessian stays I.
* ``digits``: label-prior shift on scikit-learn's digits (or the ``data`` set
  from disk, with its own label count; ``model``, logistic regression by
  default, is the classifier). User 0 draws its
  labels from p0 (0.18 for each of 0-4, 0.02 for each of 5-9), every
  collaborator from its own prior ~ Dirichlet(2, ..., 2) (near uniform: the
  collaborators differ from p0 in one common direction, since zero-mean
  scattered shifts would make WGA look deceptively good); each step every
  user draws ``batch`` labels from its prior and for each an example of that
  label (with replacement) from the 1400 training examples. Logistic
  regression on a flat parameter vector, all N + 1 gradients in one
  ``torch.func.vmap`` pass. Error: user 0's population cross-entropy, the
  test set's per-class mean loss weighted by p0 (accuracy likewise).

Methods: ``local`` (weights (1, 0, ..., 0)), ``wga`` (uniform 1 / (N + 1)),
``optimal`` (:func:`~robustagg.optim.personalized.optimal_weights`, see
:func:`method_weights`), ``bias_corrected`` (uniform weights, constant
``beta``) and ``bias_corrected_decay`` (beta_t = max(1 / (t + 1),
``beta_floor``)).

Defaults per task (``rounds`` / ``lr`` = None): quadratic and hessian 6000
steps at lr 0.05 (the calibration setup); digits 2000 steps at lr 1.0 (the
best of {0.1, 0.2, 0.5, 1.0, 1.5} for local SGD with batch 4 by tail error,
seeds 0-1: 0.159, 0.113, 0.080, 0.071, 0.080).

User 0 and the collaborators draw their gradient noise (or batches) from
separate generators, so at a given seed user 0's stream is the same for
every method and N (``local`` repeats bit for bit across N on the
quadratic tasks). Everything random comes from the seed, so a run repeats
bit for bit on the same machine and thread count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..arguments import closed_unit_interval, nonnegative_float, nonnegative_int, option, positive_int
from ..optim.personalized import (
    BiasCorrectedWGA,
    WeightedGradientAveraging,
    decaying_beta,
    estimate_bias_variance,
    optimal_weights,
)
from ..timing import Stopwatch
from ..validation import check_choice, check_int, check_positive, check_real
from . import config as shared
from .data import Dataset, check_batch, check_fits, load_data, train_examples
from .models import MODELS, Model, chunked, make_model

__all__ = [
    "PersonalizedConfig",
    "TASKS",
    "METHODS",
    "TASK_DEFAULTS",
    "TAIL_STEPS",
    "method_weights",
    "run_personalized",
]

TASKS = {
    "quadratic": "synthetic quadratic, identity Hessians, collaborators' optima shifted in a common direction",
    "hessian": "synthetic quadratic, collaborators' diagonal Hessians 1 +- 0.5",
    "digits": "logistic regression on digits, label-prior shift",
}

METHODS = {
    "local": "local SGD (user 0 alone)",
    "wga": "uniform WGA",
    "optimal": "WGA, optimal weights",
    "bias_corrected": "WGA + bias correction",
    "bias_corrected_decay": "same, decaying beta",
}

TASK_DEFAULTS = {
    "quadratic": {"rounds": 6000, "lr": 0.05},
    "hessian": {"rounds": 6000, "lr": 0.05},
    "digits": {"rounds": 2000, "lr": 1.0},
}

# tail_error averages the error of every step of the last TAIL_STEPS steps
# (the last sixth of the run when that is shorter).
TAIL_STEPS = 1000

_CPU = torch.device("cpu")
OPTIMUM_SPREAD = 0.1  # std of the collaborators' optima around the common shift, times sqrt(d)
HESSIAN_SPREAD = 0.5
# User 0's probability mass on the first and on the second half of the labels (0.18 for each of digits' 0-4).
USER0_MASS = (0.9, 0.1)
COLLABORATOR_CONCENTRATION = 20.0  # Dirichlet(20 * uniform) priors
ESTIMATION_SAMPLES = 200  # gradient samples per user behind the digits task's optimal weights


@dataclass(frozen=True)
class PersonalizedConfig:
    """One training run; ``rounds`` and ``lr`` None take the task's default (``TASK_DEFAULTS``).

    ``dim``, ``shift`` and ``noise`` shape the quadratic tasks, ``batch`` the
    digits task; the others ignore them.
    """

    task: str = option("quadratic", "objective of the users", choices=TASKS)
    method: str = option("bias_corrected", "update rule", choices=METHODS)
    collaborators: int = option(4, "N collaborators", type=nonnegative_int)
    rounds: int | None = shared.rounds(
        None, f"steps (default: the task's, {TASK_DEFAULTS['quadratic']['rounds']} for the quadratic tasks)"
    )
    lr: float | None = shared.lr(None, "learning rate (default: the task's)")
    beta: float = option(0.002, "EMA rate of the bias correction", type=closed_unit_interval)
    beta_floor: float = option(0.0002, "floor of the decaying rate max(1/(t+1), floor)", type=closed_unit_interval)
    dim: int = option(20, "dimension of the quadratic tasks", type=positive_int)
    shift: float = option(1.0, "norm of the collaborators' common shift", type=nonnegative_float)
    noise: float = option(1.0, "gradient noise std per coordinate", type=nonnegative_float)
    batch: int = shared.batch(4, "examples per user per step, digits")
    seed: int = shared.seed("the problem, initialisation and noise")
    eval_every: int = shared.eval_every(50, "steps between recorded errors")
    model: str = shared.model("logreg", "classifier of the digits task (default logreg)")
    data: str = shared.data()
    device: str = shared.device()

    def check(self, examples: int | None = None) -> None:
        """Raise ValueError (TypeError for a field of the wrong type) naming the first bad field; ``examples``
        as in :meth:`ByzantineConfig.check <robustagg.sim.byzantine.ByzantineConfig.check>`."""
        where = "personalized"
        check_choice(self.task, TASKS, "task", where)
        check_choice(self.method, METHODS, "method", where)
        check_int(self.collaborators, "collaborators", where, low=0)
        for name in ("dim", "eval_every"):
            check_int(getattr(self, name), name, where, low=1)
        check_batch(self.batch, where, train_examples(self.data, examples))
        check_int(self.seed, "seed", where, low=0)
        check_choice(self.model, MODELS, "model", where)
        shared.check_device(self.device, where)
        if self.rounds is not None:
            check_int(self.rounds, "rounds", where, low=1)
        if self.lr is not None:
            check_positive(self.lr, "lr", where)
        if self.method == "optimal" and self.resolved().lr >= 2:
            raise ValueError(
                f"personalized: the optimal weights scale variances by lr / (2 - lr), lr must be < 2, "
                f"got {self.resolved().lr}"
            )
        for name in ("beta", "beta_floor"):
            check_real(getattr(self, name), name, where, 0.0, 1.0)
        for name in ("shift", "noise"):
            check_real(getattr(self, name), name, where, low=0.0)

    def resolved(self) -> PersonalizedConfig:
        """This configuration with ``rounds`` and ``lr`` set (the task's defaults where None)."""
        defaults = TASK_DEFAULTS.get(self.task, TASK_DEFAULTS["quadratic"])
        return replace(
            self,
            rounds=defaults["rounds"] if self.rounds is None else self.rounds,
            lr=defaults["lr"] if self.lr is None else self.lr,
        )


class _Quadratic:
    """The quadratic tasks: gradients of all users as one ``(N + 1, d)`` matrix, in float64."""

    def __init__(self, cfg: PersonalizedConfig, device: torch.device = _CPU) -> None:
        d, n = cfg.dim, cfg.collaborators
        setup = torch.Generator().manual_seed(cfg.seed)
        direction = torch.randn(d, generator=setup, dtype=torch.float64)
        direction /= direction.norm()
        self.x = torch.randn(d, generator=setup, dtype=torch.float64)
        # Drawn collaborator by collaborator, so the first k collaborators are the same for every N >= k.
        self.optima = torch.zeros(n + 1, d, dtype=torch.float64)
        self.hessians = torch.ones(n + 1, d, dtype=torch.float64)
        for i in range(1, n + 1):
            self.optima[i] = cfg.shift * direction + OPTIMUM_SPREAD / math.sqrt(d) * torch.randn(
                d, generator=setup, dtype=torch.float64
            )
            # Drawn for both tasks, so that quadratic and hessian share their optima at a seed.
            signs = torch.randint(0, 2, (d,), generator=setup).to(torch.float64) * 2 - 1
            if cfg.task == "hessian":
                self.hessians[i] = 1 + HESSIAN_SPREAD * signs
        self.x, self.optima, self.hessians = (t.to(device) for t in (self.x, self.optima, self.hessians))
        self.noise = cfg.noise
        self.user0 = torch.Generator(device).manual_seed(cfg.seed + 1)
        self.others = torch.Generator(device).manual_seed(cfg.seed + 2)
        self.params = [self.x]

    def gradients(self) -> torch.Tensor:
        d, device = self.x.numel(), self.x.device
        xi = torch.cat(
            [
                torch.randn(1, d, generator=self.user0, dtype=torch.float64, device=device),
                torch.randn(len(self.optima) - 1, d, generator=self.others, dtype=torch.float64, device=device),
            ]
        )
        return self.hessians * (self.x - self.optima) + self.noise * xi

    def error(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.x.square().sum(), None

    def variances_and_biases(self) -> tuple[torch.Tensor, torch.Tensor]:
        """True variances and the Gram matrix of the biases at user 0's optimum, b_i = grad f_i(0) - grad f_0(0)."""
        users, d = self.optima.shape
        biases = -self.hessians * self.optima
        variances = torch.full((users,), self.noise**2 * d, dtype=torch.float64, device=biases.device)
        return variances, biases @ biases.T


class _Digits:
    """The digits task: a classifier (logistic regression by default), users differing in their label priors."""

    def __init__(
        self,
        cfg: PersonalizedConfig,
        device: torch.device = _CPU,
        model: Model | None = None,
        data: Dataset | None = None,
    ) -> None:
        data = load_data(cfg.data) if data is None else data
        check_fits(data, "personalized", batch=cfg.batch)
        n = cfg.collaborators
        setup = torch.Generator().manual_seed(cfg.seed)
        self.model = make_model(cfg.model, data.shape, data.num_classes) if model is None else model
        self.w = self.model.init(setup).to(device)
        rng = np.random.default_rng(cfg.seed)
        alpha = np.full(data.num_classes, COLLABORATOR_CONCENTRATION / data.num_classes)
        priors = [user0_prior(data.num_classes)] + [rng.dirichlet(alpha) for _ in range(n)]
        data = data.to(device)
        self.priors = torch.tensor(np.stack(priors), dtype=torch.float64, device=device)
        self.x, self.y = data.x_train, data.y_train
        self.order = torch.argsort(self.y, stable=True)
        self.counts = torch.bincount(self.y, minlength=data.num_classes)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.x_test, self.y_test = data.x_test, data.y_test
        self.test_counts = torch.bincount(self.y_test, minlength=data.num_classes).to(torch.float32)
        self.p0 = self.priors[0].to(torch.float32)
        self.batch = cfg.batch
        self.user_grads = torch.func.vmap(torch.func.grad(self.model.loss), in_dims=(None, 0, 0))
        self.user0 = torch.Generator(device).manual_seed(cfg.seed + 1)
        self.others = torch.Generator(device).manual_seed(cfg.seed + 2)
        self.estimation = torch.Generator(device).manual_seed(cfg.seed + 3)
        self.params = [self.w]

    def _draw(self, priors: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Example indices ``(users, batch)``: labels from each user's prior, then an example of that label."""
        labels = torch.multinomial(priors, self.batch, replacement=True, generator=gen)
        offset = (
            torch.rand(labels.shape, generator=gen, dtype=torch.float64, device=labels.device) * self.counts[labels]
        ).long()
        return self.order[self.starts[labels] + offset]

    def gradients(self) -> torch.Tensor:
        idx = torch.cat([self._draw(self.priors[:1], self.user0), self._draw(self.priors[1:], self.others)])
        return self.user_grads(self.w, self.x[idx], self.y[idx])

    @torch.no_grad()
    def error(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = chunked(lambda part: self.model.logits(self.w, part), self.x_test)
        per_class = torch.zeros_like(self.p0), torch.zeros_like(self.p0)
        per_class[0].index_add_(0, self.y_test, F.cross_entropy(logits, self.y_test, reduction="none"))
        per_class[1].index_add_(0, self.y_test, (logits.argmax(1) == self.y_test).float())
        loss, acc = ((self.p0 * s / self.test_counts).sum() for s in per_class)
        return loss, acc

    def variances_and_biases(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Estimated at the initial point from ``ESTIMATION_SAMPLES`` batch gradients per user."""
        users = len(self.priors)
        idx = self._draw(self.priors.repeat(ESTIMATION_SAMPLES, 1), self.estimation)
        samples = self.user_grads(self.w, self.x[idx], self.y[idx]).view(ESTIMATION_SAMPLES, users, -1)
        return estimate_bias_variance(samples)


def user0_prior(classes: int) -> np.ndarray:
    """User 0's label prior: ``USER0_MASS`` spread evenly over the first ceil(K / 2) labels and over the others."""
    first = -(-classes // 2)
    rest = classes - first
    if rest == 0:
        return np.ones(1)
    return np.array([USER0_MASS[0] / first] * first + [USER0_MASS[1] / rest] * rest)


def method_weights(cfg: PersonalizedConfig, problem: _Quadratic | _Digits) -> list[float]:
    """The N + 1 weights of ``cfg.method``.

    ``optimal``: :func:`optimal_weights` with the variances scaled by
    lr / (2 - lr), our derivation: WGA on unit-curvature quadratics is
    ``x <- (1 - lr) x + lr * (weighted optimum) - lr * noise``, whose
    stationary mean squared deviation is lr / (2 - lr) times the noise
    variance ``sum_i a_i^2 v_i``, while the fixed point's squared distance
    to user 0's optimum is ``a^T B a``; the weights minimise the sum. The
    quadratic tasks use the true variances and biases (taken at user 0's
    optimum); digits estimates them at the initial point, where the
    unit-curvature scaling is only a heuristic.
    """
    users = cfg.collaborators + 1
    if cfg.method == "local":
        return [1.0] + [0.0] * cfg.collaborators
    if cfg.method == "optimal":
        lr = cfg.resolved().lr
        variances, gram = problem.variances_and_biases()
        return optimal_weights(variances * (lr / (2 - lr)), gram).tolist()
    return [1.0 / users] * users


def run_personalized(
    cfg: PersonalizedConfig,
    progress: Callable[[int, float], None] | None = None,
    *,
    model: Model | None = None,
    data: Dataset | None = None,
) -> dict:
    """Train user 0, and return a JSON-ready dict: config, error curve, tail and final error, weights, timings.

    ``tail_error`` is the mean of user 0's error over every step of the last
    ``TAIL_STEPS`` steps (the last sixth of the run if shorter), the figure
    the grid reports; digits also reports ``tail_accuracy``. ``curve`` holds
    the error every ``eval_every`` steps (from step 0), ``progress(step,
    error)`` is called at each of its points. ``seconds_per_step`` splits
    the time of a step into the N + 1 gradients (with the data or noise
    draws) and the optimizer step (one native call). The errors of the tail
    stay on the device until the run ends. ``model`` and ``data`` replace the digits task's built-in
    ``cfg.model`` and the data set ``cfg.data`` names; the quadratic tasks take neither.
    """
    cfg.check(None if data is None else len(data.y_train))
    cfg = cfg.resolved()
    device = shared.use_device(cfg.device, "personalized")
    if cfg.task == "digits":
        problem: _Digits | _Quadratic = _Digits(cfg, device, model, data)
    elif model is not None or data is not None:
        raise ValueError(f"personalized: the {cfg.task} task has no model or data set to replace")
    else:
        problem = _Quadratic(cfg, device)
    weights = method_weights(cfg, problem)
    if cfg.method.startswith("bias_corrected"):
        beta = decaying_beta(cfg.beta_floor) if cfg.method == "bias_corrected_decay" else cfg.beta
        opt: WeightedGradientAveraging = BiasCorrectedWGA(problem.params, weights, cfg.lr, beta)
    else:
        opt = WeightedGradientAveraging(problem.params, weights, cfg.lr)
    problem.gradients()  # untimed warm-up (vmap's first call traces)
    users = cfg.collaborators + 1
    tail_start = cfg.rounds - max(1, min(TAIL_STEPS, cfg.rounds // 6))
    clock = Stopwatch(device, "gradients", "step")
    tail_errors: list[torch.Tensor] = []
    tail_accuracies: list[torch.Tensor] = []

    def point(t: int, err: torch.Tensor, acc: torch.Tensor | None) -> dict:
        err = float(err)
        if progress is not None:
            progress(t, err)
        return {"round": t, "error": err} if acc is None else {"round": t, "error": err, "accuracy": float(acc)}

    curve = [point(0, *problem.error())]
    wall = time.perf_counter()
    clock.restart()
    for t in range(1, cfg.rounds + 1):
        G = problem.gradients()
        clock.lap("gradients")
        opt.step([[G[i]] for i in range(users)])
        clock.lap("step")
        on_curve = t % cfg.eval_every == 0 or t == cfg.rounds
        if t > tail_start or on_curve:
            err, acc = problem.error()
            if t > tail_start:
                tail_errors.append(err)
                if acc is not None:
                    tail_accuracies.append(acc)
            if on_curve:
                curve.append(point(t, err, acc))
            clock.restart()
    wall = time.perf_counter() - wall
    result = {
        "config": asdict(cfg),
        "model": problem.model.name if isinstance(problem, _Digits) else None,
        "dim": sum(p.numel() for p in problem.params),
        "weights": weights,
        "tail_error": _mean(tail_errors),
        "final_error": curve[-1]["error"],
        "curve": curve,
        "seconds_per_step": clock.per(cfg.rounds),
        "wall_seconds": wall,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if tail_accuracies:
        result["tail_accuracy"] = _mean(tail_accuracies)
        result["final_accuracy"] = curve[-1]["accuracy"]
    return result


def _mean(values: list[torch.Tensor]) -> float:
    """The mean of 0-d tensors, summed in order in double precision on the host (one transfer)."""
    floats = torch.stack(values).tolist()
    return sum(floats) / len(floats)
