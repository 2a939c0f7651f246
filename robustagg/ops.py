"""Typed Python wrappers over ``torch.ops.robustagg.*``.

Each wrapper checks what only Python can (argument types, whether the CUDA
kernels exist) and calls the native op, which validates shapes and values
(SPEC 1) and computes the rule. The fakes that let ``torch.compile`` trace the ops
are in :mod:`robustagg.fakes`, the magnitude-safe distances in :mod:`robustagg.exact_geometry`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from . import (  # noqa: F401  (fakes: registers them)
    _C,  # noqa: F401  (loads the library that registers the ops)
    derivatives,
    fakes,
)
from .exact_geometry import distances_and_finite, has_values
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
    "row_sq_norms_and_dots",
    "row_sq_distances",
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
    if X.dtype != torch.float64 or out.numel() == 0 or not has_values(X):
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


def row_sq_norms_and_dots(X: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    r"""The rows' squared norms and their dot products with ``v``, in one pass over X.

    Returns a ``(2, n)`` float64 tensor: row 0 is :math:`\|x_i\|^2`, row 1 is :math:`\langle x_i, v\rangle`,
    summed in float64 (the products of float32 or half values are exact). ``v`` is a ``(d,)`` tensor of X's
    dtype on X's device. FLTrust's cosines with the root come from it.
    """
    _check_tensor(X, "row_sq_norms_and_dots")
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"row_sq_norms_and_dots: v must be a torch.Tensor, got {type(v).__name__}")
    return _NS.row_sq_norms_and_dots(X, v)


def row_sq_distances(X: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    r"""The rows' squared distances to ``v``, :math:`\|x_i - v\|^2`, summed directly in float64 in one pass.

    Returns an ``(n,)`` float64 tensor; NaN/inf for a row (or a ``v``) holding NaN/inf, inf where a float64
    sum exceeds the float64 range. ``v`` is a ``(d,)`` tensor of X's dtype on X's device. No shift and no
    cancellation: the differences of float32 or half values are exact in float64. MoNNA's distances to its
    pivot come from it.
    """
    _check_tensor(X, "row_sq_distances")
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"row_sq_distances: v must be a torch.Tensor, got {type(v).__name__}")
    return _NS.row_sq_distances(X, v)


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
            raise ValueError(
                f"{rule}: {names[0]} and {name} must be equally long lists, "
                f"got {len(present[0])} and {len(seq)} tensors"
            )
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
        {
            "lr": lr,
            "coef_grad": coef_grad,
            "coef_anchor": coef_anchor,
            "coef_control": coef_control,
            "coef_momentum": coef_momentum,
        },
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
        {
            "params": params,
            "grads": grads,
            "anchor_grads": anchor_grads,
            "control": control,
            "exp_avg": exp_avg,
            "exp_avg_sq": exp_avg_sq,
        },
        {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "step": step},
    )
    _NS.adam_client_step_(*lists, float(lr), float(beta1), float(beta2), float(eps), int(step))


def adam_stats_update_(
    exp_avg: Sequence[torch.Tensor],
    exp_avg_sq: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    beta1: float,
    beta2: float,
) -> None:
    r"""Adam's statistics, in place: :math:`m \leftarrow \beta_1 m + (1-\beta_1) g`, :math:`v \leftarrow \beta_2 v + (1-\beta_2) g^2`.

    The server update ``s <- V(c, s)`` of Mime with base Adam (Kingma & Ba
    2015; Karimireddy et al., NeurIPS 2021). One pass over the three lists.
    """
    lists = _tensor_lists(
        "adam_stats_update_",
        {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "grads": grads},
        {"beta1": beta1, "beta2": beta2},
    )
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
            raise TypeError(
                f"{rule}: corrections must be a list of N correction lists, got {type(corrections).__name__}"
            )
        if len(corrections) != users - 1:
            raise ValueError(
                f"{rule}: corrections must hold N = {users - 1} lists (one per collaborator), got {len(corrections)}"
            )
    lists = {"params": params}
    lists.update({f"grads[{i}]": g for i, g in enumerate(grads)})
    lists.update({f"corrections[{i}]": c for i, c in enumerate(corrections or [])})
    scalars = {"lr": lr, "beta": beta}
    scalars.update({f"weights[{i}]": w for i, w in enumerate(weights)})
    checked = _tensor_lists(rule, lists, scalars)
    p, g, c = checked[0], checked[1 : 1 + users], checked[1 + users :]
    _NS.weighted_step_(
        p,
        [t for gl in g for t in gl],
        [t for cl in c for t in cl] if corrections is not None else None,
        [float(w) for w in weights],
        float(lr),
        float(beta),
    )


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
        rule,
        {"params": params, "grads": grads, "momentum_buffers": momentum_buffers},
        {"lr": lr, "momentum": momentum, "weight_decay": weight_decay},
    )
    if masks is not None:
        if isinstance(masks, torch.Tensor) or not isinstance(masks, Sequence):
            raise TypeError(f"{rule}: masks must be a list of tensors, got {type(masks).__name__}")
        for i, mask in enumerate(masks):
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"{rule}: masks[{i}] must be a torch.Tensor, got {type(mask).__name__}")
        if len(masks) != len(params):
            raise ValueError(
                f"{rule}: params and masks must be equally long lists, got {len(params)} and {len(masks)} tensors"
            )
        masks = list(masks) if len(params) else [torch.empty(0, dtype=torch.bool)]
    _NS.masked_sgd_step_(*lists, masks, float(lr), float(momentum), float(weight_decay))


derivatives.register()
