"""Byzantine attacks: what the f Byzantine workers send in one round (SPEC 5).

An attack is called as ``attack(honest, byzantine)`` with the ``(h, d)`` rows
the honest workers send and the ``(f, d)`` rows the Byzantine workers would
send if they were honest, and returns the ``(f, d)`` rows they send instead,
in ``honest``'s dtype and device; the inputs are never modified. With
``mu = honest.mean(0)`` and ``sigma = honest.std(0)`` (ddof=1), both computed
in float64. ``make_attack("alie", z=1.0)`` builds one by registry name.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable
from statistics import NormalDist

import torch

from .aggregators import Aggregator
from .coefficients import krum_order
from .exact_geometry import scaled_distances
from .validation import FLOAT_DTYPES, check_choice, check_generator, check_int, check_positive, check_real

__all__ = [
    "Attack",
    "NoAttack",
    "SignFlip",
    "IPM",
    "ALIE",
    "alie_z",
    "Gaussian",
    "NaNAttack",
    "InfAttack",
    "Mimic",
    "LabelFlip",
    "OptimalALIE",
    "OptimalIPM",
    "PERTURBATIONS",
    "MinMax",
    "MinSum",
    "FangTrimmedMean",
    "FangKrum",
    "ATTACKS",
    "check_attack_rows",
    "make_attack",
]

AggregatorLike = Aggregator | Callable[[torch.Tensor], torch.Tensor]


def _check_rows(X: object, arg: str, shape: str, attack: str) -> None:
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"{attack}: {arg} must be a torch.Tensor, got {type(X).__name__}")
    if X.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{attack}: {arg} must be float32, float64, float16 or bfloat16, got {X.dtype}")
    if X.dim() != 2:
        raise ValueError(f"{attack}: {arg} must be 2-D {shape}, got {X.dim()}-D with shape {list(X.shape)}")


def _repeat(row: torch.Tensor, f: int, like: torch.Tensor) -> torch.Tensor:
    """f copies of a float64 row, in like's dtype (a new tensor, not a view)."""
    return row.to(like.dtype).unsqueeze(0).repeat(f, 1)


def _normalise(v: torch.Tensor) -> torch.Tensor:
    """v / ||v||, or v itself when it is zero."""
    norm = torch.linalg.vector_norm(v)
    return v / norm if norm > 0 else v


class Attack:
    """Produces the f Byzantine rows of one round.

    ``__call__`` validates the inputs and handles f == 0 (an empty ``(0, d)``
    result; state untouched); subclasses implement :meth:`_attack`.
    ``min_honest`` is how many honest rows the attack needs, ``needs_for`` what for.
    """

    name: str = "attack"
    flips_labels: bool = False  # data-level attack: the trainer gives Byzantine workers labels C-1-y
    # Reads the whole honest vectors (a learned direction, the aggregator's output): no per-bucket or per-shard use.
    needs_whole_vector: bool = False
    min_honest: int = 0
    needs_for: str = ""

    @torch.no_grad()
    def __call__(self, honest: torch.Tensor, byzantine: torch.Tensor) -> torch.Tensor:
        H, B, name = honest, byzantine, self.name
        _check_rows(H, "honest", "(h, d)", name)
        _check_rows(B, "byzantine", "(f, d)", name)
        if B.shape[1] != H.shape[1]:
            raise ValueError(f"{name}: byzantine has d={B.shape[1]} columns, honest has d={H.shape[1]}")
        if B.dtype != H.dtype:
            raise TypeError(f"{name}: byzantine is {B.dtype}, honest is {H.dtype}; they must match")
        if B.device != H.device:
            raise ValueError(f"{name}: byzantine is on {B.device}, honest on {H.device}; they must match")
        if B.shape[0] == 0:
            return H.new_empty((0, H.shape[1]))
        if H.shape[0] < self.min_honest:
            rows = "rows" if self.min_honest > 1 else "row"
            raise ValueError(
                f"{name}: needs at least {self.min_honest} honest {rows} {self.needs_for}, got h={H.shape[0]}"
            )
        return self._attack(H, B)

    def _attack(self, honest: torch.Tensor, byzantine: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def _check_sizes(cls, n: int, f: int) -> None:
        """Conditions on n = h + f and f > 0 beyond ``min_honest`` (none by default); ValueError if unmet."""

    def reset(self) -> None:
        """Forget state between runs (no-op unless the attack is stateful)."""

    def __repr__(self) -> str:
        """``Name(param=value, ...)`` over the constructor's parameters, generators left out."""
        params = [p for p in inspect.signature(type(self).__init__).parameters if p != "self" and hasattr(self, p)]
        args = [f"{p}={getattr(self, p)!r}" for p in params if not isinstance(getattr(self, p), torch.Generator)]
        return f"{type(self).__name__}({', '.join(args)})"


class NoAttack(Attack):
    """The Byzantine workers behave honestly: their rows unchanged (a copy)."""

    name = "none"

    def _attack(self, honest: torch.Tensor, byzantine: torch.Tensor) -> torch.Tensor:
        return byzantine.clone()


class SignFlip(Attack):
    """Bit/sign flip: ``-byzantine`` (Allen-Zhu et al., ICLR 2021)."""

    name = "sign_flip"

    def _attack(self, honest: torch.Tensor, byzantine: torch.Tensor) -> torch.Tensor:
        return -byzantine


class IPM(Attack):
    """Inner-product manipulation: every row is ``-eps * mu``.

    Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by
    Inner Product Manipulation", UAI 2019.
    """

    name = "ipm"
    min_honest, needs_for = 1, "for the mean"

    def __init__(self, eps: float = 0.1) -> None:
        self.eps = check_positive(eps, "eps", self.name)

    def _attack(self, honest: torch.Tensor, byzantine: torch.Tensor) -> torch.Tensor:
        return _repeat(-self.eps * honest.double().mean(0), byzantine.shape[0], honest)


def alie_z(n: int, f: int) -> float:
    """Default ALIE z: ``s = floor(n/2 + 1) - f``, ``z = Phi^{-1}((n - f - s) / (n - f))``.

    Baruch, Baruch, Goldberg, "A Little Is Enough", NeurIPS 2019. Raises
    ValueError when the ratio is not strictly inside (0, 1): f > n/2, or n <= 2.
    """
    check_int(n, "n", "alie", low=1)
    check_int(f, "f", "alie", low=0)
    s = n // 2 + 1 - f
    ratio = (n - f - s) / (n - f) if n > f else math.nan
    if not 0 < ratio < 1:
        raise ValueError(
            f"alie: default z needs 0 < (n - f - s) / (n - f) < 1 with s = floor(n/2 + 1) - f, "
            f"got n={n}, f={f} (ratio {ratio:.4g}); use fewer Byzantine workers or pass z"
        )
    return NormalDist().inv_cdf(ratio)


class ALIE(Attack):
    """A little is enough: every row is ``mu - z * sigma`` (sigma: ddof=1).

    ``z=None`` takes :func:`alie_z` of n = h + f and f at each call; an explicit z
    may be any finite number (negative z moves the rows the other way).
    Baruch, Baruch, Goldberg, NeurIPS 2019.
    """

    name = "alie"
    min_honest, needs_for = 2, "for the standard deviation"

    def __init__(self, z: float | None = None) -> None:
        self.z = None if z is None else check_real(z, "z", self.name)

    def _attack(self, honest: torch.Tensor, byzantine: torch.Tensor) -> torch.Tensor:
        h, f = honest.shape[0], byzantine.shape[0]
        z = alie_z(h + f, f) if self.z is None else self.z
        H = honest.double()
        return _repeat(H.mean(0) - z * H.std(0, correction=1), f, honest)


class Gaussian(Attack):
    """Rows of independent ``N(0, std^2)`` noise.

    Centred at zero rather than at mu, as the Gaussian Byzantine workers of
    Blanchard et al. (NeurIPS 2017): pure noise, no knowledge of the honest
    rows. Drawn in float64 on ``generator``'s device (``honest``'s without
    one), then cast and moved, so a seed gives the same values in every dtype.
    """

    name = "gaussian"

    def __init__(self, std: float = 1.0, generator: torch.Generator | None = None) -> None:
        self.std = check_positive(std, "std", self.name)
        self.generator = check_generator(generator, "generator", self.name)

    def _attack(self, honest: torch.Tensor, byzantine: torch.Tensor) -> torch.Tensor:
        device = honest.device if self.generator is None else self.generator.device
        noise = torch.randn(byzantine.shape, generator=self.generator, dtype=torch.float64, device=device)
        return (self.std * noise).to(device=honest.device, dtype=honest.dtype)


class NaNAttack(Attack):
    """Rows of NaN."""

    name = "nan"

    def _attack(self, honest: torch.Tensor, byzantine: torch.Tensor) -> torch.Tensor:
        return torch.full_like(byzantine, math.nan)


class InfAttack(Attack):
    """Rows of +inf."""

    name = "inf"

    def _attack(self, honest: torch.Tensor, byzantine: torch.Tensor) -> torch.Tensor:
        return torch.full_like(byzantine, math.inf)


class Mimic(Attack):
    """Every row copies one honest row (Karimireddy, He, Jaggi, ICLR 2022, bucketing paper).

    With ``index``, always ``honest[index]``. Otherwise the row is chosen by a
    direction z of large honest variance, learned over the first ``warmup``
    calls. Call t = 0, 1, ... with deviations ``D = honest - mu`` (this
    call's mu) and ``C = D^T D / h``:

    - while z is None or 0: z = the row of D of largest norm, normalised;
    - ``p = normalise(C z)`` (one power-iteration step; skipped if C z = 0);
      ``z <- normalise(t/(t+1) * z + 1/(t+1) * p)``. As in the authors' code
      p is normalised before the average, so the mix does not depend on the
      rows' scale; unlike it, mu is this call's mean (not a running one) and
      z starts deterministically (not at random);
    - copy the honest row with the largest ``<x_i, z>`` (ties: lowest index).

    From call ``warmup`` on, the last chosen index is frozen. State:
    ``direction``, ``calls``, ``target`` (index copied last); :meth:`reset`
    forgets it.
    """

    needs_whole_vector = True

    name = "mimic"
    min_honest, needs_for = 1, "to copy"

    def __init__(self, index: int | None = None, warmup: int = 20) -> None:
        self.index = None if index is None else check_int(index, "index", self.name, low=0)
        self.warmup = check_int(warmup, "warmup", self.name, low=1)
        self.reset()

    def reset(self) -> None:
        self.direction: torch.Tensor | None = None
        self.calls = 0
        self.target: int | None = self.index

    def _attack(self, honest: torch.Tensor, byzantine: torch.Tensor) -> torch.Tensor:
        h = honest.shape[0]
        if self.index is None and self.calls < self.warmup:
            self._learn(honest.double())
        if self.target >= h:
            raise ValueError(f"{self.name}: index {self.target} is out of range for h={h} honest rows")
        return honest[self.target].unsqueeze(0).repeat(byzantine.shape[0], 1)

    def _learn(self, H: torch.Tensor) -> None:
        z = self.direction
        if z is not None and z.shape[0] != H.shape[1]:
            raise ValueError(f"{self.name}: d={H.shape[1]} differs from d={z.shape[0]} of earlier calls; call reset()")
        D = H - H.mean(0)
        if z is None or not z.any():
            z = _normalise(D[torch.argmax(torch.linalg.vector_norm(D, dim=1))])
        t = self.calls
        z = _normalise(t / (t + 1) * z + _normalise(D.T @ (D @ z) / H.shape[0]) / (t + 1))
        self.direction, self.calls = z, t + 1
        self.target = int(torch.argmax(H @ z))  # argmax returns the first maximum


class LabelFlip(Attack):
    """Data-level: Byzantine workers train on labels ``C - 1 - y``.

    The trainer computes their rows on :meth:`flip_labels` of their batch;
    ``__call__`` returns those rows unchanged (a copy).
    """

    name = "label_flip"
    flips_labels = True

    def __init__(self, num_classes: int = 10) -> None:
        self.num_classes = check_int(num_classes, "num_classes", self.name, low=2)

    def flip_labels(self, y: torch.Tensor) -> torch.Tensor:
        """``num_classes - 1 - y``; labels outside [0, num_classes) raise ValueError (one sync on GPU)."""
        if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            got = y.dtype if isinstance(y, torch.Tensor) else type(y).__name__
            raise TypeError(f"{self.name}: y must be an integer tensor of class labels, got {got}")
        if y.numel() and not (0 <= int(y.min()) and int(y.max()) < self.num_classes):
            raise ValueError(
                f"{self.name}: labels must lie in [0, {self.num_classes}), got range [{int(y.min())}, {int(y.max())}]"
            )
        return self.num_classes - 1 - y

    def _attack(self, honest: torch.Tensor, byzantine: torch.Tensor) -> torch.Tensor:
        return byzantine.clone()


class _LineSearch(Attack):
    """Chooses the scale s in [0, upper] (``z_max``, ``eps_max``) maximising
    ``||agg(vstack(honest, f rows(s))) - mu||`` for the aggregator under attack.

    Search: ``steps`` evenly spaced scales on [0, upper]; then twice, with g
    the spacing of the last grid and b the best scale so far, ``steps``
    evenly spaced scales on ``[max(0, b - g), min(upper, b + g)]``: ``3 *
    steps`` aggregator calls, final spacing at most ``4 * upper / (steps -
    1)**3``. The best of all evaluated scales wins, ties to the smaller one;
    a non-finite deviation counts as -inf. A peak narrower than the first
    grid's spacing (Krum's deviation jumps as its choice changes) can be
    missed. Default ``steps=11``: 33 aggregator calls per round, cheap next
    to the workers' gradients, resolve the scale to 0.4 % of ``upper``.

    An :class:`Aggregator` is evaluated on a deep copy per trial (a shallow
    copy would share a :class:`Pipeline`'s rule and a ``Bucketing``
    generator): its state (``CenteredClip.center``, generators) is the same
    after the search, and every trial sees the state the real call will. A
    plain callable ``(n, d) -> (d,)`` is called as is. ``last_scale`` is the
    scale chosen by the last call.
    """

    needs_whole_vector = True

    min_honest, needs_for = 1, "for the mean"

    def __init__(self, aggregator: AggregatorLike, steps: int) -> None:
        if not callable(aggregator):
            raise TypeError(f"{self.name}: aggregator must be callable (n, d) -> (d,), got {type(aggregator).__name__}")
        self.aggregator = aggregator
        self.steps = check_int(steps, "steps", self.name, low=2)
        self.last_scale: float | None = None

    def reset(self) -> None:
        self.last_scale = None

    def _family(self, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(base, step, upper): the float64 Byzantine row at scale s in [0, upper] is ``base + s * step``."""
        raise NotImplementedError

    def _attack(self, honest: torch.Tensor, byzantine: torch.Tensor) -> torch.Tensor:
        H, f = honest.double(), byzantine.shape[0]
        mu = H.mean(0)
        base, step, upper = self._family(H)

        def deviation(scale: float) -> float:
            X = torch.cat([honest, _repeat(base + scale * step, f, honest)])
            agg = copy.deepcopy(self.aggregator) if isinstance(self.aggregator, Aggregator) else self.aggregator
            out = agg(X)
            if not isinstance(out, torch.Tensor) or out.shape != mu.shape:
                got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"{self.name}: aggregator returned {got}, expected a tensor of shape {list(mu.shape)}")
            value = float(torch.linalg.vector_norm(out.double() - mu))
            return value if math.isfinite(value) else -math.inf

        best, best_value = math.inf, -math.inf
        lo, hi = 0.0, upper
        for _ in range(3):
            for k in range(self.steps):
                scale = lo + (hi - lo) * k / (self.steps - 1)
                value = deviation(scale)
                if value > best_value or (value == best_value and scale < best):
                    best, best_value = scale, value
            gap = (hi - lo) / (self.steps - 1)
            lo, hi = max(0.0, best - gap), min(upper, best + gap)
        self.last_scale = best
        return _repeat(base + best * step, f, honest)


class OptimalALIE(_LineSearch):
    """ALIE rows ``mu - z * sigma`` with z in [0, z_max] chosen against ``aggregator`` (SPEC 5).

    z_max = 10 lies far beyond the default z (1.07 for n=25, f=11; below 3
    for every f < n/2 up to n = 1000), where the rows are outliers that any
    robust rule discards.
    """

    name = "optimal_alie"
    min_honest, needs_for = 2, "for the standard deviation"

    def __init__(self, aggregator: AggregatorLike, z_max: float = 10.0, steps: int = 11) -> None:
        super().__init__(aggregator, steps)
        self.z_max = check_positive(z_max, "z_max", self.name)

    def _family(self, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        return H.mean(0), -H.std(0, correction=1), self.z_max


class OptimalIPM(_LineSearch):
    """IPM rows ``-eps * mu`` with eps in [0, eps_max] chosen against ``aggregator`` (SPEC 5).

    eps_max = 10: f rows at ``-eps * mu`` turn the mean of all n rows against
    mu once ``eps > h / f``, which is at most 10 when f >= n / 11.
    """

    name = "optimal_ipm"

    def __init__(self, aggregator: AggregatorLike, eps_max: float = 10.0, steps: int = 11) -> None:
        super().__init__(aggregator, steps)
        self.eps_max = check_positive(eps_max, "eps_max", self.name)

    def _family(self, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        return torch.zeros_like(H[0]), -H.mean(0), self.eps_max


PERTURBATIONS = ("std", "unit", "sign")


def _power_of_two(x: torch.Tensor) -> float:
    """2**e with max |x| in [2**e, 2**(e+1)) (1 when x is empty, zero or not finite).

    Dividing by it is exact and brings the entries into [-2, 2], so their squares cannot overflow.
    """
    top = float(x.abs().max()) if x.numel() else 0.0
    return math.ldexp(1.0, math.frexp(top)[1] - 1) if 0 < top < math.inf else 1.0


class _TailoredScale(Attack):
    """Rows ``mu + gamma * p`` with the largest gamma in [0, gamma_max] whose distances to the
    honest rows stay within a bound set by the honest rows (MinMax, MinSum).

    ``p`` is ``perturbation``: ``"std"`` ``-sigma``, ``"unit"`` ``-mu / ||mu||`` (0 if mu = 0),
    ``"sign"`` ``-sign(mu)``. With ``a_i = ||mu - h_i||^2``, ``b_i = <mu - h_i, p>`` and
    ``c = ||p||^2``, ``||m - h_i||^2 = a_i + 2 gamma b_i + gamma^2 c``: the subclasses solve their
    condition for its largest gamma from these float64 quantities, H, the centred rows and p
    each divided by a power of two (:func:`_power_of_two`) so that no mean, std or square over-
    or underflows; gamma scales back exactly. ``c = 0`` (p = 0) gives gamma = 0 (rows = mu); a
    NaN or inf honest value gives gamma NaN and rows of NaN. ``last_gamma`` is the gamma of the
    last call.
    """

    needs_whole_vector = True  # gamma depends on the whole vectors' distances
    min_honest, needs_for = 2, "for the distances"

    def __init__(self, perturbation: str = "std", gamma_max: float = 100.0) -> None:
        check_choice(perturbation, PERTURBATIONS, "perturbation", self.name)
        self.perturbation = perturbation
        self.gamma_max = check_positive(gamma_max, "gamma_max", self.name)
        self.last_gamma: float | None = None

    def reset(self) -> None:
        self.last_gamma = None

    def _limit(self, C: torch.Tensor, p: torch.Tensor, c: float) -> float:
        """The largest feasible gamma for centred rows C (rows ``h_i - mu``) and p, ``c = ||p||^2 > 0``."""
        raise NotImplementedError

    def _attack(self, honest: torch.Tensor, byzantine: torch.Tensor) -> torch.Tensor:
        # On H divided by a power of two (exact), so that its mean, std and squares stay in range at any
        # magnitude. Then p = -std scales with H and gamma does not; the unit and sign p do not scale, gamma does.
        H = honest.double()
        s = _power_of_two(H)
        H = H / s
        mu = H.mean(0)
        if self.perturbation == "std":
            p = -H.std(0, correction=1)
        elif self.perturbation == "unit":
            p = -_normalise(mu)
        else:
            p = torch.where(torch.isnan(mu), math.nan, -torch.sign(mu))  # torch.sign(NaN) is 0
        C = H - mu
        sc, t = _power_of_two(C), _power_of_two(p)
        c = float(torch.dot(p / t, p / t))
        # gamma for p / t is t times gamma for p; distances of C / sc are those of C over sc.
        limit = self._limit(C / sc, p / t, c) * sc / t if c > 0 else 0.0 if c == 0 else math.nan
        unit = 1.0 if self.perturbation == "std" else s
        gamma = limit if math.isnan(limit) else min(limit, self.gamma_max / unit)
        self.last_gamma = gamma * unit
        return _repeat((mu + gamma * p) * s, byzantine.shape[0], honest)


class MinMax(_TailoredScale):
    """Min-Max: every row is ``m = mu + gamma * p``, gamma the largest value in [0, gamma_max] with

    ``max_i ||m - h_i||^2 <= T = max_{i,j} ||h_i - h_j||^2``

    (no honest row is farther from m than the two farthest honest rows are from each other).
    Shejwalkar, Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning Attacks and
    Defenses for Federated Learning", NDSS 2021.

    The paper binary-searches gamma; this is the exact limit of that search. Each constraint
    ``c gamma^2 + 2 b_i gamma - (T - a_i) <= 0`` is a convex quadratic in gamma, and it holds at
    gamma = 0: mu is a convex combination of the rows, so ``||mu - h_i|| <= max_j ||h_j - h_i||``.
    Row i's feasible gammas are therefore an interval around 0 up to the larger root
    ``r_i = (-b_i + sqrt(b_i^2 + c (T - a_i))) / c``, and the feasible gammas >= 0 are
    ``[0, min_i r_i]``: ``gamma = min(gamma_max, min_i r_i)``. T and the a_i come from the centred
    rows' Gram matrix; r_i is evaluated as ``(T - a_i) / (b_i + sqrt(...))`` when b_i > 0, which
    does not cancel.
    """

    name = "minmax"

    def _limit(self, C: torch.Tensor, p: torch.Tensor, c: float) -> float:
        G = C @ C.T
        a = G.diagonal()
        T = (a[:, None] + a[None, :] - 2 * G).max()
        slack = (T - a).clamp_min(0)  # >= 0 exactly; rounding must not make a root complex
        b = -(C @ p)
        root = torch.sqrt(b * b + c * slack)
        r = torch.where(b > 0, slack / (b + root), (root - b) / c)
        return float(r.min())


class MinSum(_TailoredScale):
    """Min-Sum: every row is ``m = mu + gamma * p``, gamma the largest value in [0, gamma_max] with

    ``sum_i ||m - h_i||^2 <= max_i sum_j ||h_i - h_j||^2``

    (m's summed squared distance to the honest rows is no more than any honest row's).
    Shejwalkar, Houmansadr, NDSS 2021 (see :class:`MinMax`).

    The paper binary-searches gamma; this is the exact limit of that search. As
    ``sum_i (mu - h_i) = 0`` the cross terms vanish on both sides: with ``A = sum_i a_i``,
    ``sum_i ||m - h_i||^2 = A + h gamma^2 c`` and ``sum_j ||h_i - h_j||^2 = h a_i + A``, so the
    condition is ``gamma^2 c <= max_i a_i``: ``gamma = min(gamma_max, max_i ||h_i - mu|| / ||p||)``.
    """

    name = "minsum"

    def _limit(self, C: torch.Tensor, p: torch.Tensor, c: float) -> float:
        return math.sqrt(float((C * C).sum(1).max()) / c)


class FangTrimmedMean(Attack):
    """Fang et al.'s full-knowledge attack on the trimmed mean (and the median), in gradient space.

    Fang, Cao, Jia, Gong, "Local Model Poisoning Attacks to Byzantine-Robust Federated Learning",
    USENIX Security 2020. The model moves by ``-lr * aggregate``, so along coordinate j it moves
    by ``-sign(mu_j)``; the attack pushes the gradients the other way, beyond the honest extremes
    ``w_max_j = max_i h_ij``, ``w_min_j = min_i h_ij``. Each value is drawn independently and
    uniformly from

    - ``mu_j > 0``: ``[w_min_j / b, w_min_j]`` if ``w_min_j > 0``, else ``[b w_min_j, w_min_j]``;
    - ``mu_j <= 0``: ``[w_max_j, b w_max_j]`` if ``w_max_j > 0``, else ``[w_max_j, w_max_j / b]``.

    ``b > 1``. Drawn in float64 on ``generator``'s device (``honest``'s without one), then cast
    and moved, as :class:`Gaussian`. Coordinate-wise, so it also works bucket by bucket.
    """

    name = "fang_trimmed_mean"
    min_honest, needs_for = 1, "for the mean"

    def __init__(self, b: float = 2.0, generator: torch.Generator | None = None) -> None:
        self.b = check_real(b, "b", self.name, low=1.0, low_open=True)
        self.generator = check_generator(generator, "generator", self.name)

    def _attack(self, honest: torch.Tensor, byzantine: torch.Tensor) -> torch.Tensor:
        H, b = honest.double(), self.b
        mu, w_max, w_min = H.mean(0), H.amax(0), H.amin(0)
        down = mu > 0  # the model moves down along these coordinates: send gradients below w_min
        lo = torch.where(down, torch.where(w_min > 0, w_min / b, b * w_min), w_max)
        hi = torch.where(down, w_min, torch.where(w_max > 0, b * w_max, w_max / b))
        device = honest.device if self.generator is None else self.generator.device
        u = torch.rand(byzantine.shape, generator=self.generator, dtype=torch.float64, device=device)
        rows = lo + u.to(honest.device) * (hi - lo)
        return torch.clamp(rows, lo, hi).to(honest.dtype)  # rounding must not leave the interval


class FangKrum(Attack):
    """Fang et al.'s full-knowledge attack on Krum, in gradient space: every row is ``-lambda * sign(mu)``.

    Fang, Cao, Jia, Gong, USENIX Security 2020. The model's change direction is ``-sign(mu)``;
    the crafted row moves it the other way, and the f - 1 rows Fang places close to it are taken
    equal to it. lambda starts at the paper's upper bound, with n = h + f and the reference
    model's gradient 0:

    ``lambda_0 = min_i sum_{l in Gamma_i} ||h_l - h_i|| / ((n - 2f - 1) sqrt(d)) + max_i ||h_i|| / sqrt(d)``

    over honest i, ``Gamma_i`` the ``n - f - 2`` honest rows nearest h_i (Euclidean), and is
    halved until Krum with this f (:func:`robustagg.krum`: the same distances and order, on the
    rows in ``honest``'s dtype) selects a Byzantine row; once ``lambda < threshold`` (or
    lambda_0 is not finite, from NaN/inf honest rows), lambda = 0. Needs ``n > 2f + 2``, as
    Krum. ``last_lambda`` is the lambda of the last call.
    """

    name = "fang_krum"
    needs_whole_vector = True  # Krum's distances need the whole vectors
    min_honest, needs_for = 1, "for the mean"

    def __init__(self, threshold: float = 1e-5) -> None:
        self.threshold = check_positive(threshold, "threshold", self.name)
        self.last_lambda: float | None = None

    def reset(self) -> None:
        self.last_lambda = None

    @classmethod
    def _check_sizes(cls, n: int, f: int) -> None:
        if n <= 2 * f + 2:
            raise ValueError(f"{cls.name}: needs n > 2f + 2 for Krum, got n={n} with f={f}")

    def _attack(self, honest: torch.Tensor, byzantine: torch.Tensor) -> torch.Tensor:
        (h, d), f = honest.shape, byzantine.shape[0]
        n = h + f
        self._check_sizes(n, f)
        direction = -torch.sign(honest.double().mean(0))
        lam = self._upper_bound(honest, n, f) if d else 0.0
        while math.isfinite(lam) and lam >= self.threshold:
            X = torch.cat([honest, _repeat(lam * direction, f, honest)])
            D, finite, _ = scaled_distances(X)
            if int(krum_order(D.cpu(), finite.cpu(), n - f - 2)[0]) >= h:
                break
            lam /= 2
        else:
            lam = 0.0
        self.last_lambda = lam
        return _repeat(lam * direction, f, honest)

    @staticmethod
    def _upper_bound(honest: torch.Tensor, n: int, f: int) -> float:
        """lambda_0, from the exact distances of the honest rows and the origin (point h)."""
        h, d = honest.shape
        D, _, k = scaled_distances(honest, honest.new_zeros(d))
        dist = D.cpu().double().sqrt()  # the distances times 2**-k
        among = dist[:h, :h].clone()
        among.fill_diagonal_(math.inf)
        spread = float(torch.sort(among, dim=1).values[:, : n - f - 2].sum(1).min())
        bound = (spread / (n - 2 * f - 1) + float(dist[:h, h].max())) / math.sqrt(d)
        # Scale back by 2**k in two steps: 2.0**k alone may overflow where the product does not.
        return bound * 2.0 ** (k // 2) * 2.0 ** (k - k // 2)


ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (
        NoAttack,
        SignFlip,
        IPM,
        ALIE,
        Gaussian,
        NaNAttack,
        InfAttack,
        Mimic,
        LabelFlip,
        OptimalALIE,
        OptimalIPM,
        MinMax,
        MinSum,
        FangTrimmedMean,
        FangKrum,
    )
}


def check_attack_rows(name: str, n: int, f: int, z: float | None = None) -> None:
    """Whether attack ``name`` can run with f Byzantine rows of n, before the first round instead of at it.

    Checks the honest rows the attack needs (``min_honest``), the attack's
    own conditions on n and f (FangKrum's n > 2f + 2) and, for ALIE without
    ``z``, that its default z exists (:func:`alie_z`); raises the ValueError
    its call would.
    """
    cls = _registered(name)
    n, f = check_int(n, "n", cls.name, low=1), check_int(f, "f", cls.name, low=0, high=n)
    if f and n - f < cls.min_honest:
        rows = "rows" if cls.min_honest > 1 else "row"
        raise ValueError(
            f"{cls.name}: needs at least {cls.min_honest} honest {rows} {cls.needs_for}, "
            f"got {n - f} of n={n} with f={f}"
        )
    if f:
        cls._check_sizes(n, f)
    if f and name == "alie" and z is None:
        alie_z(n, f)


def _registered(name: object) -> type[Attack]:
    if not isinstance(name, str):
        raise TypeError(f"make_attack: name must be a str, got {type(name).__name__} {name!r}")
    if name not in ATTACKS:
        raise ValueError(f"make_attack: unknown attack {name!r}; valid names: {', '.join(sorted(ATTACKS))}")
    return ATTACKS[name]


def make_attack(name: str, **kwargs: object) -> Attack:
    """The attack registered as ``name``, built with ``kwargs``."""
    return _registered(name)(**kwargs)
