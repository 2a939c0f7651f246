"""Typed Python wrappers over ``torch.ops.robustagg.*``, and their fakes.

Each wrapper checks what only Python can (argument types, whether the CUDA
kernels exist) and calls the native op, which validates shapes and values
(SPEC 1) and computes the rule. The fakes let ``torch.compile`` trace the ops.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch._subclasses.fake_tensor import FakeTensor

from . import _C  # noqa: F401  (loads the library that registers the ops)
from . import derivatives
from .validation import check_int as _check_int
from .validation import check_tensor as _check_tensor
from .validation import check_trim as _check_trim
from .validation import cuda_kernels_built

__all__ = [
    "mean",
    "coordinate_median",
    "trimmed_mean",
    "meamed",
    "mean_around_median",
    "pairwise_sq_distances",
    "mix_rows",
    "row_sq_norms",
    "momentum_update_",
    "client_step_",
    "adam_client_step_",
    "adam_stats_update_",
    "mvr_update_",
    "weighted_step_",
    "masked_sgd_step_",
    "pack_mask",
    "cpu_kernel_isa",
    "cuda_kernels_built",
]

_NS = torch.ops.robustagg


def cpu_kernel_isa() -> str:
    """Instruction set the CPU selection kernels use here: ``avx512``, ``avx2`` or ``baseline``.

    Chosen at run time from the CPU; ``ROBUSTAGG_CPU_ISA`` may lower it.
    """
    return _NS.cpu_kernel_isa()


def mean(X: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    r"""Coordinate-wise (weighted) mean, :math:`\sum_i w_i x_i / \sum_i w_i`.

    Not robust: propagates NaN/inf like :func:`torch.mean`. Uniform weights by
    default; ``weights`` must be ``n`` finite non-negative numbers with a
    positive sum. Accumulates in float64.

    Args:
        X: ``(n, d)`` tensor, one row per worker.
        weights: optional ``(n,)`` tensor on X's device.

    Returns:
        ``(d,)`` tensor in X's dtype.
    """
    _check_tensor(X, "mean")
    if weights is not None and not isinstance(weights, torch.Tensor):
        raise TypeError(f"mean: weights must be a torch.Tensor or None, got {type(weights).__name__}")
    return _without_overflow(_NS.mean(X, weights), X, lambda X: _NS.mean(X, weights))


def coordinate_median(X: torch.Tensor) -> torch.Tensor:
    r"""Coordinate-wise median (Yin et al., ICML 2018).

    For each coordinate, the median of the ``n`` values; for even ``n`` the
    average of the two middle values (NumPy's ``median``, not
    :func:`torch.median`'s lower median). NaN orders above ``+inf``, so a
    coordinate's result is non-finite only when its middle values are.
    """
    _check_tensor(X, "coordinate_median")
    return _NS.coordinate_median(X)


def trimmed_mean(X: torch.Tensor, f: int) -> torch.Tensor:
    r"""Coordinate-wise trimmed mean (Yin et al., ICML 2018).

    For each coordinate, sort the ``n`` values :math:`x_{(1)} \le \dots \le x_{(n)}`
    (NaN largest) and return :math:`\frac{1}{n-2f}\sum_{t=f+1}^{n-f} x_{(t)}`.
    Needs ``n > 2f``.
    """
    _check_tensor(X, "trimmed_mean")
    f = _check_count(X, f, "f", "trimmed_mean")
    return _without_overflow(_NS.trimmed_mean(X, f), X, lambda X: _NS.trimmed_mean(X, f))


def meamed(X: torch.Tensor, f: int) -> torch.Tensor:
    r"""Mean around the median, MeaMed (Xie, Koyejo, Gupta 2018, "Generalized Byzantine-tolerant SGD").

    For each coordinate with median :math:`m`, the average of the ``n - f``
    values closest to :math:`m`; ties in distance keep the smaller value and
    NaN counts as infinitely far. Needs ``n > 2f``.
    """
    _check_tensor(X, "meamed")
    f = _check_count(X, f, "f", "meamed")
    return _without_overflow(_NS.meamed(X, f), X, lambda X: _NS.meamed(X, f))


def mean_around_median(X: torch.Tensor, keep: int) -> torch.Tensor:
    r"""Per coordinate, the mean of the ``keep`` values closest to the median (``1 <= keep <= n``).

    The generalisation of :func:`meamed` (``meamed(X, f) == mean_around_median(X, n - f)``)
    to any ``keep``; Bulyan's last stage (El Mhamdi et al. 2018) uses
    ``keep = n - 2f`` of the selected rows. Ties in distance keep the smaller
    value; NaN counts as infinitely far.
    """
    _check_tensor(X, "mean_around_median")
    keep = _check_count(X, keep, "keep", "mean_around_median")
    return _without_overflow(_NS.mean_around_median(X, keep), X, lambda X: _NS.mean_around_median(X, keep))


def _without_overflow(out: torch.Tensor, X: torch.Tensor, rule) -> torch.Tensor:
    """``out = rule(X)`` with the columns whose float64 sum overflowed recomputed at a safe scale.

    The kernels add in float64, so only float64 input can overflow: a sum of
    finite values beyond the float64 range gives +-inf where the mean is
    finite (SPEC 1, "Finite means finite"). Every rule here is positively
    homogeneous, so such columns are recomputed on ``X * 2**-k`` (exact for
    values this large; 2**k >= 2n) and scaled back; a column whose result is
    non-finite at that scale too uses non-finite values and keeps its result.
    Costs one sum of the result, and a copy of the affected columns only.
    """
    if X.dtype != torch.float64 or out.numel() == 0 or not _has_values(X):
        return out
    if math.isfinite(float(out.detach().sum())):  # one reduction: a finite sum has no NaN/inf term
        return out
    bad = ~torch.isfinite(out)
    if not bool(bad.any()):
        return out
    cols = bad.nonzero().flatten()
    k = X.shape[0].bit_length() + 1
    fixed = rule(X[:, cols] * 2.0**-k) * 2.0**k
    return out.index_put((cols,), torch.where(torch.isfinite(fixed), fixed, out[cols]))


def _check_count(X: torch.Tensor, value: object, name: str, rule: str) -> int:
    """f (0 <= f, n > 2f) or keep (1 <= keep <= n), checked against X's n when X is (n, d), so that no
    out-of-range int reaches the 64-bit native check; otherwise only its type (the op reports X's shape)."""
    if X.dim() != 2 or X.shape[0] < 1:
        return _check_int(value, name, rule)
    n = X.shape[0]
    if name == "f":
        return _check_trim(value, n, rule)
    keep = _check_int(value, name, rule)
    if not 1 <= keep <= n:
        raise ValueError(f"{rule}: keep must be in [1, n={n}], got keep={keep}")
    return keep


# Scaled distances and norms. Squared distances of finite float64 rows can
# exceed the float64 range (entries beyond ~1e150); the rules then work on the
# points times 2**-k, which changes no ranking and scales every distance
# alike, so that a row is infinitely far only when it holds NaN/inf (SPEC 1,
# "Finite means finite"). Other dtypes are squared in float64 and never
# overflow. 2**-k brings the largest squared distance under 2**1000.


def _has_values(X: torch.Tensor) -> bool:
    """Whether X holds values to look at: not while torch.compile traces, not a fake or meta tensor.

    The checks and repairs that read results (overflow, cancellation) need
    values, so traced code gets the kernels' results as they are.
    """
    return not (torch.compiler.is_compiling() or X.device.type == "meta" or isinstance(X, FakeTensor))


def _point(X: torch.Tensor, center: torch.Tensor | None, i: int) -> torch.Tensor:
    return center if i == X.shape[0] else X[i]


def _safe_exponent(X: torch.Tensor, center: torch.Tensor | None, rows: list[int]) -> int:
    """k >= 0 such that every squared distance (and norm) of the given points times 2**-k is below 2**1000."""
    top = max((float(_point(X, center, i).abs().max()) for i in rows), default=0.0)
    if top == 0.0:
        return 0
    return max(0, math.frexp(top)[1] + 1 + math.ceil(math.log2(max(X.shape[1], 1)) / 2) - 500)


def _finite_by_entries(X: torch.Tensor, center: torch.Tensor | None, flagged: torch.Tensor) -> torch.Tensor:
    """The kernels' finite flags (finite squared norm) corrected to "every entry finite" for float64 input."""
    finite = ~flagged
    for i in flagged.nonzero().flatten().tolist():
        finite[i] = bool(torch.isfinite(_point(X, center, i)).all())
    return finite


def scaled_distances(X: torch.Tensor, center: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(D, finite, k)``: squared distances of the points times ``2**-k``, the rows whose entries are all finite, and k.

    k is 0, and D the distances themselves, unless a squared distance between
    finite float64 points would overflow; then the points are copied once,
    scaled. Every rule built on distances uses these.
    """
    _check_tensor(X, "pairwise_sq_distances")
    if center is not None and not isinstance(center, torch.Tensor):
        raise TypeError(f"pairwise_sq_distances: center must be a torch.Tensor or None, got {type(center).__name__}")
    D, finite = _NS.pairwise_sq_distances(X, center)
    if not _has_values(X):
        return D, finite, 0
    # The checks below work on one host copy of the (m, m) distances and the flags.
    Dc, fc = D.detach().cpu(), finite.cpu()
    k = 0
    if X.dtype == torch.float64:
        truly = _finite_by_entries(X, center, ~fc)
        rows = truly.nonzero().flatten()
        if not (torch.equal(truly, fc) and bool(torch.isfinite(Dc[rows][:, rows]).all())):
            k = _safe_exponent(X, center, rows.tolist())
            X, center = X * 2.0**-k, None if center is None else center * 2.0**-k
            D, _ = _NS.pairwise_sq_distances(X, center)
            Dc, fc, finite = D.detach().cpu(), truly, truly.to(finite.device)
    return _without_cancellation(X, center, D, Dc, fc), finite, k


# Cancellation. The kernels compute D_ij = S_ii + S_jj - 2 S_ij from the Gram
# matrix S of the points shifted by the per-column median of the reference
# rows 0, (n-1)/2 and n-1. Were two of those far from the other rows (Byzantine
# rows at those positions), every other S_ii would be huge and the distances
# between the other rows would cancel to noise. Per column that median lies
# between the reference rows' values, so S_ii <= B_i = sum of D_ir over the
# references r: a distance below 2**-20 (B_i + B_j) may have lost more than
# 20 of its 53 bits. Those distances are computed again with three central
# rows as references (a permuted copy of X), and pairs still in doubt are
# summed directly over the columns.
_LOST_BITS = 20


def _references(n: int) -> list[int]:
    return [0, (n - 1) // 2, n - 1]


def _in_doubt(D: torch.Tensor, finite: torch.Tensor, refs: list[int]) -> torch.Tensor:
    """(m, m) bool: pairs of finite points whose distance may have cancelled (every pair when a reference is not finite)."""
    both = finite.reshape(-1, 1) & finite.reshape(1, -1) & ~torch.eye(D.shape[0], dtype=torch.bool)
    if not bool(finite[refs].all()):
        return both
    B = D[:, refs].sum(1)
    return both & (D < 2.0**-_LOST_BITS * (B.reshape(-1, 1) + B.reshape(1, -1)))


def _without_cancellation(X: torch.Tensor, center: torch.Tensor | None, D: torch.Tensor, Dc: torch.Tensor,
                          fc: torch.Tensor) -> torch.Tensor:
    """D with the distances that may have cancelled computed again; Dc, fc: host copies of D and the finite flags."""
    n = X.shape[0]
    if X.shape[1] == 0 or (n < 4 and center is None):
        return D  # every row a reference: no pair of non-reference rows to cancel
    doubt = _in_doubt(Dc, fc, _references(n))
    # A distance of exactly 0 between equal rows (Byzantine copies) is exact.
    for i, j in (doubt & (Dc == 0)).triu(1).nonzero().tolist():
        if torch.equal(_point(X, center, i), _point(X, center, j)):
            doubt[i, j] = doubt[j, i] = False
    if not bool(doubt.any()):
        return D
    rows = fc[:n].nonzero().flatten()
    if int(doubt.triu(1).sum()) <= n or rows.numel() < 3:
        return _direct(X, center, D, doubt)  # a few pairs: cheaper summed directly than a second pass
    # Central rows: the smallest median distance to the other finite rows (noise there stays small).
    sub = Dc[rows][:, rows]
    score = sub.sort(1).values[:, sub.shape[1] // 2]
    central = rows[torch.sort(score, stable=True).indices[:3]].tolist()
    rest = [i for i in range(n) if i not in central]
    perm = rest[:]
    for position, row in sorted(zip(_references(n), central)):
        perm.insert(position, row)
    P = torch.tensor(perm, device=X.device)
    DY, _ = _NS.pairwise_sq_distances(X.index_select(0, P), center)
    order = torch.tensor(perm + ([n] if center is not None else []))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    inverse = inverse.to(D.device)
    D = DY.index_select(0, inverse).index_select(1, inverse)
    doubt = _in_doubt(D.detach().cpu(), fc, central)
    return _direct(X, center, D, doubt) if bool(doubt.any()) else D


def _direct(X: torch.Tensor, center: torch.Tensor | None, D: torch.Tensor, doubt: torch.Tensor) -> torch.Tensor:
    """D with the pairs in doubt summed directly, sum_k (p_ik - p_jk)**2 in float64."""
    pairs = doubt.triu(1).nonzero().tolist()
    values = torch.stack([(_point(X, center, i).double() - _point(X, center, j).double()).square().sum()
                          for i, j in pairs])
    i, j = (torch.tensor(t, device=D.device) for t in zip(*pairs))
    D = D.index_put((i, j), values.to(D.device))
    return D.index_put((j, i), values.to(D.device))


def distances_and_finite(X: torch.Tensor, center: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distances (as :func:`pairwise_sq_distances`) and an ``(m,)`` bool tensor of the rows whose entries are finite.

    A squared distance beyond the float64 range is +inf (its rounding), though both rows are finite.
    """
    D, finite, k = scaled_distances(X, center)
    return (D if k == 0 else D * 2.0**k * 2.0**k), finite


def scaled_row_sq_norms(X: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(S, k)``: squared norms of the rows times ``2**-k`` (k = 0 unless a finite float64 row's would overflow)."""
    S = row_sq_norms(X)
    if X.dtype != torch.float64 or not _has_values(X):
        return S, 0
    flagged = ~torch.isfinite(S.cpu())
    rows = [i for i in flagged.nonzero().flatten().tolist() if bool(torch.isfinite(X[i]).all())]
    if not rows:
        return S, 0
    k = _safe_exponent(X, None, rows)
    return _NS.row_sq_norms(X * 2.0**-k), k


def pairwise_sq_distances(X: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    r"""Squared Euclidean distances :math:`D_{ij} = \|p_i - p_j\|^2` between the rows of X (and ``center``).

    The points are the ``n`` rows of ``X`` and, when ``center`` (a ``(d,)``
    tensor of X's dtype) is given, ``center`` as point ``n``. Returns an
    ``(m, m)`` float64 tensor, symmetric, with a zero diagonal and ``+inf``
    between a point holding NaN/inf and any other point.

    Computed in one pass over X as the float64 Gram matrix of the points
    shifted by a per-column reference (the median of rows 0, (n-1)/2 and n-1),
    :math:`D_{ij} = S_{ii} + S_{jj} - 2 S_{ij}`: the shift leaves distances
    unchanged and keeps them accurate for points that are close to each other
    and far from the origin. Never uses TF32 or float32 accumulation.
    """
    return distances_and_finite(X, center)[0]


def mix_rows(C: torch.Tensor, X: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    r"""Weighted combinations of rows, :math:`\text{out}_r = \sum_i C_{ri}\, p_i`, in one pass over X.

    ``C`` is a ``(k, m)`` float64 tensor on X's device; the points are the rows
    of ``X`` and, when given, ``center`` as point ``n``. A point whose
    coefficient is exactly 0 is not read, so NaN/inf rows with zero weight do
    not reach the output. Accumulates in float64 in index order; returns
    ``(k, d)`` in X's dtype.
    """
    _check_tensor(X, "mix_rows")
    if not isinstance(C, torch.Tensor):
        raise TypeError(f"mix_rows: C must be a torch.Tensor, got {type(C).__name__}")
    return _NS.mix_rows(C, X, center)


def row_sq_norms(X: torch.Tensor) -> torch.Tensor:
    r"""Squared Euclidean norms of the rows of X, :math:`\|x_i\|^2`, as an ``(n,)`` float64 tensor."""
    _check_tensor(X, "row_sq_norms")
    return _NS.row_sq_norms(X)


def _tensor_lists(rule: str, lists: dict[str, Sequence[torch.Tensor] | None], scalars: dict[str, object]) -> list:
    """Check the Python types of a fused update's arguments; return the lists, ready to pass to the op.

    When every list is empty there is no tensor to dispatch on, so each is
    replaced by one empty CPU tensor: the op then checks its scalars as
    usual and updates nothing.
    """
    out = []
    for name, seq in lists.items():
        if seq is None:
            out.append(None)
            continue
        if isinstance(seq, torch.Tensor) or not isinstance(seq, Sequence):
            raise TypeError(f"{rule}: {name} must be a list of tensors, got {type(seq).__name__}")
        for i, t in enumerate(seq):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{rule}: {name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
        out.append(list(seq))
    for name, value in scalars.items():
        if name == "step":
            _check_int(value, name, rule)
        elif isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{rule}: {name} must be a float, got {type(value).__name__}")
    names = [name for name, seq in zip(lists, out) if seq is not None]
    present = [seq for seq in out if seq is not None]
    for name, seq in zip(names[1:], present[1:]):
        # Checked here too: with an empty first list the op would find no tensor to dispatch on.
        if len(seq) != len(present[0]):
            raise ValueError(f"{rule}: {names[0]} and {name} must be equally long lists, "
                             f"got {len(present[0])} and {len(seq)} tensors")
    if all(len(seq) == 0 for seq in present):
        return [None if seq is None else [torch.empty(0)] for seq in out]
    first = present[0]
    if first and first[0].is_cuda and not cuda_kernels_built():
        _check_tensor(first[0], rule, f"{next(iter(lists))}[0]")
    return out


def momentum_update_(buffers: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], beta: float) -> None:
    r"""In place, for every i: :math:`m_i \leftarrow \beta\, m_i + (1 - \beta)\, g_i` with ``m = buffers``, ``g = grads``.

    One native multi-tensor call for the whole list (each element read and
    written once); the momentum update of worker momentum (Karimireddy, He,
    Jaggi, ICML 2021) and of SGD-with-momentum statistics. Pairs must match in
    shape, dtype and device; all tensors on one device; ``0 <= beta <= 1``.
    Computed in float32 (float64 for float64 tensors), each product and the
    sum rounded once: the bits of ``beta * m + (1 - beta) * g`` evaluated
    step by step in PyTorch.
    """
    m, g = _tensor_lists("momentum_update_", {"buffers": buffers, "grads": grads}, {"beta": beta})
    _NS.momentum_update_(m, g, float(beta))


def client_step_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    lr: float,
    *,
    anchor_grads: Sequence[torch.Tensor] | None = None,
    control: Sequence[torch.Tensor] | None = None,
    momentum: Sequence[torch.Tensor] | None = None,
    coef_grad: float = 1.0,
    coef_anchor: float = 0.0,
    coef_control: float = 0.0,
    coef_momentum: float = 0.0,
) -> None:
    r"""Fused client step, in place on ``params`` only:

    .. math:: p \leftarrow p - \text{lr}\,\big(((k_g\, g + k_a\, a) + k_c\, c) + k_m\, m\big)

    with ``g = grads``, ``a = anchor_grads``, ``c = control``, ``m = momentum``
    (an absent list is not read). The coefficients give every client step of
    the federated algorithms (Karimireddy et al., NeurIPS 2021, Mime):
    SGD (``k_g = 1``); SGD with frozen momentum, MimeLite
    (``k_g = 1 - beta, k_m = beta``) and Mime (also ``k_a = -(1 - beta),
    k_c = 1 - beta`` with ``a`` the gradient at the server point on the same
    batch and ``c`` the full-batch gradient); the MVR steps; SCAFFOLD
    (``k_g = 1, k_a = -1`` with ``a`` the client's control variate, ``k_c = 1``
    with the server's). Computed in float32 (float64 for float64 tensors),
    each operation rounded once, in the order written.
    """
    lists = _tensor_lists(
        "client_step_",
        {"params": params, "grads": grads, "anchor_grads": anchor_grads, "control": control, "momentum": momentum},
        {"lr": lr, "coef_grad": coef_grad, "coef_anchor": coef_anchor, "coef_control": coef_control,
         "coef_momentum": coef_momentum},
    )
    _NS.client_step_(*lists, float(lr), float(coef_grad), float(coef_anchor), float(coef_control), float(coef_momentum))


def adam_client_step_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avg: Sequence[torch.Tensor],
    exp_avg_sq: Sequence[torch.Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
    *,
    anchor_grads: Sequence[torch.Tensor] | None = None,
    control: Sequence[torch.Tensor] | None = None,
) -> None:
    r"""Fused Mime client step with base Adam, in place on ``params`` only.

    The step Adam would take from the frozen server state ``(m, v)`` after
    ``step - 1`` steps, with the corrected gradient
    :math:`\tilde g = (g - a) + c` (MimeLite: no ``a``, ``c``):

    .. math::
        m' = \beta_1 m + (1-\beta_1)\tilde g,\quad v' = \beta_2 v + (1-\beta_2)\tilde g^2,\quad
        p \leftarrow p - \frac{\text{lr}}{1-\beta_1^{t}}\, \frac{m'}{\sqrt{v'}/\sqrt{1-\beta_2^{t}} + \epsilon}

    (t = ``step``; the arrangement of :class:`torch.optim.Adam`). ``m`` and
    ``v`` are read, never written (Karimireddy et al., NeurIPS 2021, Mime).
    """
    lists = _tensor_lists(
        "adam_client_step_",
        {"params": params, "grads": grads, "anchor_grads": anchor_grads, "control": control, "exp_avg": exp_avg,
         "exp_avg_sq": exp_avg_sq},
        {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "step": step},
    )
    _NS.adam_client_step_(*lists, float(lr), float(beta1), float(beta2), float(eps), int(step))


def adam_stats_update_(
    exp_avg: Sequence[torch.Tensor], exp_avg_sq: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], beta1: float,
    beta2: float,
) -> None:
    r"""Adam's statistics, in place: :math:`m \leftarrow \beta_1 m + (1-\beta_1) g`, :math:`v \leftarrow \beta_2 v + (1-\beta_2) g^2`.

    The server update ``s <- V(c, s)`` of Mime with base Adam (Kingma & Ba
    2015; Karimireddy et al., NeurIPS 2021). One pass over the three lists.
    """
    lists = _tensor_lists("adam_stats_update_", {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "grads": grads},
                          {"beta1": beta1, "beta2": beta2})
    _NS.adam_stats_update_(*lists, float(beta1), float(beta2))


def mvr_update_(
    momentum: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], prev_grads: Sequence[torch.Tensor], a: float
) -> None:
    r"""Momentum-based variance reduction, in place: :math:`m \leftarrow a\, g + (1 - a)\,((m + g) - g_{\text{prev}})`.

    ``g`` and ``g_prev`` are gradients at the current and the previous point
    on the same samples (Cutkosky & Orabona, NeurIPS 2019, STORM); the MVR
    statistic of MimeMVR / MimeLiteMVR. ``0 <= a <= 1``.
    """
    lists = _tensor_lists("mvr_update_", {"momentum": momentum, "grads": grads, "prev_grads": prev_grads}, {"a": a})
    _NS.mvr_update_(*lists, float(a))


def weighted_step_(
    params: Sequence[torch.Tensor],
    grads: Sequence[Sequence[torch.Tensor]],
    weights: Sequence[float],
    lr: float,
    *,
    corrections: Sequence[Sequence[torch.Tensor]] | None = None,
    beta: float = 0.0,
) -> None:
    r"""Fused (bias-corrected) weighted gradient averaging step, in place.

    ``grads[i]`` is user i's gradient list (i = 0 is the user being trained,
    1..N its collaborators), ``weights`` the N + 1 weights :math:`a_i`,
    ``corrections[i - 1]`` collaborator i's correction list :math:`c_i`. For
    every parameter p:

    .. math::
        u = a_0 g_0 + \sum_{i=1}^{N} (a_i g_i + c_i), \qquad p \leftarrow p - \text{lr}\, u,

        c_i \leftarrow (1 - \beta)\, c_i + \beta\, a_i (g_0 - g_i)

    (computed as ``u = a_0 g_0``, then ``u = (u + a_i g_i) + c_i`` for
    i = 1..N, each operation rounded once; without ``corrections`` it is plain
    WGA, :math:`p \leftarrow p - \text{lr} \sum_i a_i g_i`).
    The step uses the corrections from before the update, so a correction
    learned on this step's gradients applies from the next one. Every input
    element is read once and params and corrections written once, in one
    native call (Grimberg et al. 2021, "Optimal Model Averaging"; Chayti et
    al. 2021, "Linear Speedup in Personalized Collaborative Learning").
    """
    rule = "weighted_step_"
    if isinstance(grads, torch.Tensor) or not isinstance(grads, Sequence) or len(grads) == 0:
        raise TypeError(f"{rule}: grads must be a non-empty list of N + 1 gradient lists, got {type(grads).__name__}")
    users = len(grads)
    if hasattr(weights, "tolist"):  # a tensor or numpy array
        weights = weights.tolist()
    if not isinstance(weights, Sequence) or len(weights) != users:
        raise ValueError(f"{rule}: weights must hold one number per gradient list ({users}), got {weights!r}")
    if corrections is not None:
        if isinstance(corrections, torch.Tensor) or not isinstance(corrections, Sequence):
            raise TypeError(f"{rule}: corrections must be a list of N correction lists, got {type(corrections).__name__}")
        if len(corrections) != users - 1:
            raise ValueError(f"{rule}: corrections must hold N = {users - 1} lists (one per collaborator), "
                             f"got {len(corrections)}")
    lists = {"params": params}
    lists.update({f"grads[{i}]": g for i, g in enumerate(grads)})
    lists.update({f"corrections[{i}]": c for i, c in enumerate(corrections or [])})
    scalars = {"lr": lr, "beta": beta}
    scalars.update({f"weights[{i}]": w for i, w in enumerate(weights)})
    checked = _tensor_lists(rule, lists, scalars)
    p, g, c = checked[0], checked[1 : 1 + users], checked[1 + users :]
    _NS.weighted_step_(p, [t for gl in g for t in gl], [t for cl in c for t in cl] if corrections is not None else None,
                       [float(w) for w in weights], float(lr), float(beta))


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A boolean mask packed 8 elements per byte, as :func:`masked_sgd_step_` reads it.

    Bit j of byte k is element 8 k + j of the mask in row-major order (the
    order of ``numpy.packbits(..., bitorder="little")``); the last byte is
    padded with zeros. Returns a 1-D uint8 tensor of ``ceil(numel / 8)`` bytes
    on the mask's device.
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"pack_mask: mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    bits = torch.cat([flat, flat.new_zeros(pad)]).view(-1, 8).to(torch.uint8)
    shifts = torch.arange(8, device=mask.device, dtype=torch.uint8)
    return (bits << shifts).sum(1, dtype=torch.uint8)


def masked_sgd_step_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    momentum_buffers: Sequence[torch.Tensor],
    lr: float,
    momentum: float,
    *,
    masks: Sequence[torch.Tensor] | None = None,
    weight_decay: float = 0.0,
) -> None:
    r"""Fused SGD-with-momentum step restricted to a mask, in place on params and momentum.

    Where the mask is set:

    .. math::
        d = g + \lambda p, \qquad m \leftarrow \mu m + d, \qquad p \leftarrow p - \text{lr}\, m

    (:math:`\lambda` = ``weight_decay``, term skipped when 0; :math:`\mu` =
    ``momentum``; the rule of :class:`torch.optim.SGD` without dampening or
    Nesterov, whose first step from a zero buffer is the same). Where it is
    not set, the parameter and its momentum keep their bits: the core steps of
    masked / partial training (Mohtashami, Jaggi, Stich, AISTATS 2022) and the
    sparse phases of AC/DC (Peste et al., NeurIPS 2021). ``masks[i]`` is a bool
    tensor shaped like ``params[i]`` or a uint8 tensor of ``ceil(numel / 8)``
    bytes from :func:`pack_mask`; one kind per call. Without masks every
    element is updated. One pass over every list.
    """
    rule = "masked_sgd_step_"
    lists = _tensor_lists(
        rule, {"params": params, "grads": grads, "momentum_buffers": momentum_buffers},
        {"lr": lr, "momentum": momentum, "weight_decay": weight_decay},
    )
    if masks is not None:
        if isinstance(masks, torch.Tensor) or not isinstance(masks, Sequence):
            raise TypeError(f"{rule}: masks must be a list of tensors, got {type(masks).__name__}")
        for i, mask in enumerate(masks):
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"{rule}: masks[{i}] must be a torch.Tensor, got {type(mask).__name__}")
        if len(masks) != len(params):
            raise ValueError(f"{rule}: params and masks must be equally long lists, got {len(params)} and {len(masks)} tensors")
        masks = list(masks) if len(params) else [torch.empty(0, dtype=torch.bool)]
    _NS.masked_sgd_step_(*lists, masks, float(lr), float(momentum), float(weight_decay))


def _one_device(rule: str, **tensors: torch.Tensor | Sequence[torch.Tensor] | None) -> None:
    """Raise when the tensors are on several devices.

    A meta tensor anywhere in a call sends the whole call to the fakes below,
    so they refuse mixed devices as the kernels do; otherwise a CPU call with
    one meta tensor would return uninitialised memory or write nothing.
    """
    seen: dict[torch.device, str] = {}
    for name, value in tensors.items():
        items = [(name, value)] if not isinstance(value, (list, tuple)) else [(f"{name}[{i}]", t) for i, t in enumerate(value)]
        for label, t in items:
            if t is not None:
                seen.setdefault(t.device, label)
    if len(seen) > 1:
        where = ", ".join(f"{label} on {device}" for device, label in seen.items())
        raise ValueError(f"{rule}: all tensors must be on one device, got {where}")


def _fake_rowwise(X: torch.Tensor) -> torch.Tensor:
    return X.new_empty((X.shape[1],))


@torch.library.register_fake("robustagg::mean")
def _(X, weights=None):
    _one_device("mean", X=X, weights=weights)
    return _fake_rowwise(X)


@torch.library.register_fake("robustagg::coordinate_median")
def _(X):
    return _fake_rowwise(X)


@torch.library.register_fake("robustagg::trimmed_mean")
def _(X, f):
    return _fake_rowwise(X)


@torch.library.register_fake("robustagg::meamed")
def _(X, f):
    return _fake_rowwise(X)


@torch.library.register_fake("robustagg::mean_around_median")
def _(X, keep):
    return _fake_rowwise(X)


@torch.library.register_fake("robustagg::pairwise_sq_distances")
def _(X, center=None):
    _one_device("pairwise_sq_distances", X=X, center=center)
    m = X.shape[0] + (0 if center is None else 1)
    return X.new_empty((m, m), dtype=torch.float64), X.new_empty((m,), dtype=torch.bool)


@torch.library.register_fake("robustagg::mix_rows")
def _(C, X, center=None):
    _one_device("mix_rows", C=C, X=X, center=center)
    return X.new_empty((C.shape[0], X.shape[1]))


@torch.library.register_fake("robustagg::row_sq_norms")
def _(X):
    return X.new_empty((X.shape[0],), dtype=torch.float64)


@torch.library.register_fake("robustagg::momentum_update_")
def _(buffers, grads, beta):
    _one_device("momentum_update_", buffers=buffers, grads=grads)


@torch.library.register_fake("robustagg::client_step_")
def _(params, grads, anchor_grads, control, momentum, lr, coef_grad, coef_anchor, coef_control, coef_momentum):
    _one_device("client_step_", params=params, grads=grads, anchor_grads=anchor_grads, control=control,
                momentum=momentum)


@torch.library.register_fake("robustagg::adam_client_step_")
def _(params, grads, anchor_grads, control, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, step):
    _one_device("adam_client_step_", params=params, grads=grads, anchor_grads=anchor_grads, control=control,
                exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)


@torch.library.register_fake("robustagg::adam_stats_update_")
def _(exp_avg, exp_avg_sq, grads, beta1, beta2):
    _one_device("adam_stats_update_", exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, grads=grads)


@torch.library.register_fake("robustagg::mvr_update_")
def _(momentum, grads, prev_grads, a):
    _one_device("mvr_update_", momentum=momentum, grads=grads, prev_grads=prev_grads)


@torch.library.register_fake("robustagg::weighted_step_")
def _(params, grads, corrections, weights, lr, beta):
    _one_device("weighted_step_", params=params, grads=grads, corrections=corrections)


@torch.library.register_fake("robustagg::masked_sgd_step_")
def _(params, grads, momentum_buffers, masks, lr, momentum, weight_decay):
    _one_device("masked_sgd_step_", params=params, grads=grads, momentum_buffers=momentum_buffers, masks=masks)


derivatives.register()
