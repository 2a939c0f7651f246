"""Derivatives of the functional native ops, so that an output requires grad only when a gradient flows.

Every rule is piecewise linear or smooth in X, and its derivative is taken
where it exists (almost everywhere):

* ``mean``: :math:`\\partial y / \\partial x_i = w_i / W` and
  :math:`\\partial y / \\partial w_i = (x_i - y) / W` with :math:`W = \\sum_i w_i`.
* ``coordinate_median``, ``trimmed_mean``, ``meamed``, ``mean_around_median``:
  per coordinate, the mean of the values the rule selects, so the gradient
  goes to those values, :math:`1/k` each (``k`` selected; a median of an even
  count selects its two middle values). The selection is found again from
  ``X`` with the rule's order (NaN largest; for the mean around the median,
  distance to the median with ties to the smaller value).
* ``pairwise_sq_distances``: :math:`\\partial D_{ij} / \\partial p_i = 2 (p_i - p_j)`;
  a distance that is ``+inf`` because a point is not finite is constant.
* ``mix_rows``: linear in the points and in ``C``: :math:`\\nabla_P = C^\\top G`,
  :math:`\\nabla_C = G P^\\top`.
* ``row_sq_norms``: :math:`\\partial \\|x_i\\|^2 / \\partial x_i = 2 x_i`.
* ``row_sq_norms_and_dots``: also :math:`\\partial \\langle x_i, v \\rangle / \\partial x_i = v` and
  :math:`\\partial \\langle x_i, v \\rangle / \\partial v = x_i`.
* ``row_sq_distances``: :math:`\\partial \\|x_i - v\\|^2 / \\partial x_i = 2 (x_i - v)`, and minus
  that summed over i for v.

Gradients are computed in float64 and returned in each input's dtype.
"""

from __future__ import annotations

import torch

from . import reference


def _selection_weights(X: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """(n, d) float64 weights 1/count on the values of ranks first..first+count-1 of each column (NaN largest)."""
    order = torch.sort(X, dim=0, stable=True).indices
    W = torch.zeros(X.shape, dtype=torch.float64, device=X.device)
    W.scatter_(0, order[first : first + count], 1.0 / count)
    return W


def _around_median_weights(X: torch.Tensor, keep: int) -> torch.Tensor:
    """(n, d) float64 weights 1/keep on the ``keep`` values of each column closest to its median.

    The ranking is the contract's, as the float64 reference writes it (midpoints
    and distances that would overflow taken at half scale).
    """
    values, order = torch.sort(X.to(torch.float64), dim=0, stable=True)
    closest = reference.closeness_rank(values, reference.median_of_sorted(values))[:keep]
    W = torch.zeros(X.shape, dtype=torch.float64, device=X.device)
    W.scatter_(0, torch.gather(order, 0, closest), 1.0 / keep)
    return W


def _rows_times(W: torch.Tensor, grad: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    return (W * grad.to(torch.float64)).to(X.dtype)


def _save_X(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0])
    ctx.args = inputs[1:]


def _mean_setup(ctx, inputs, output) -> None:
    X, weights = inputs
    ctx.save_for_backward(X, weights, output)


def _mean_backward(ctx, grad):
    X, weights, output = ctx.saved_tensors
    n = X.shape[0]
    g = grad.to(torch.float64)
    if weights is None:
        share = torch.full((n, 1), 1.0 / n, dtype=torch.float64, device=X.device)
    else:
        w, _ = reference.unit_weights(weights.to(torch.float64))
        share = (w / w.sum()).reshape(n, 1)
    grad_X = (share * g).to(X.dtype) if ctx.needs_input_grad[0] else None
    grad_w = None
    if weights is not None and ctx.needs_input_grad[1]:
        # (x_i - y) / W with W = sum(u) 2**e, so that a sum of weights beyond the float64 range is no inf.
        u, e = reference.unit_weights(weights.to(torch.float64))
        diff = X.to(torch.float64) - output.to(torch.float64)
        grad_w = reference.times_power_of_two((diff @ g) / u.sum(), -e).to(weights.dtype)
    return grad_X, grad_w


def _median_backward(ctx, grad):
    (X,) = ctx.saved_tensors
    n = X.shape[0]
    first = (n - 1) // 2
    return _rows_times(_selection_weights(X, first, n // 2 - first + 1), grad, X)


def _trimmed_backward(ctx, grad):
    (X,) = ctx.saved_tensors
    f = ctx.args[0]
    return _rows_times(_selection_weights(X, f, X.shape[0] - 2 * f), grad, X), None


def _meamed_backward(ctx, grad):
    (X,) = ctx.saved_tensors
    return _rows_times(_around_median_weights(X, X.shape[0] - ctx.args[0]), grad, X), None


def _around_median_backward(ctx, grad):
    (X,) = ctx.saved_tensors
    return _rows_times(_around_median_weights(X, ctx.args[0]), grad, X), None


def _points(X: torch.Tensor, center: torch.Tensor | None) -> torch.Tensor:
    P = X.to(torch.float64)
    return P if center is None else torch.cat([P, center.to(torch.float64).reshape(1, -1)])


def _distances_setup(ctx, inputs, output) -> None:
    X, center = inputs
    D, finite = output
    ctx.save_for_backward(X, center, D, finite)
    ctx.mark_non_differentiable(finite)


def _distances_backward(ctx, grad_D, grad_finite):
    X, center, D, finite = ctx.saved_tensors
    n = X.shape[0]
    P = _points(X, center)
    P = torch.where(finite.reshape(-1, 1), P, torch.zeros((), dtype=P.dtype, device=P.device))
    G = torch.where(torch.isfinite(D), grad_D.to(torch.float64), torch.zeros((), dtype=torch.float64, device=D.device))
    S = G + G.T
    S.fill_diagonal_(0.0)
    grad_P = 2.0 * (S.sum(1, keepdim=True) * P - S @ P)
    grad_X = grad_P[:n].to(X.dtype) if ctx.needs_input_grad[0] else None
    grad_center = grad_P[n].to(center.dtype) if center is not None and ctx.needs_input_grad[1] else None
    return grad_X, grad_center


def _mix_setup(ctx, inputs, output) -> None:
    C, X, center = inputs
    ctx.save_for_backward(C, X, center)


def _mix_backward(ctx, grad):
    C, X, center = ctx.saved_tensors
    n = X.shape[0]
    g = grad.to(torch.float64)
    grad_C = grad_X = grad_center = None
    if ctx.needs_input_grad[0]:
        grad_C = g @ _points(X, center).T
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        grad_P = C.T @ g
        grad_X = grad_P[:n].to(X.dtype) if ctx.needs_input_grad[1] else None
        if center is not None and ctx.needs_input_grad[2]:
            grad_center = grad_P[n].to(center.dtype)
    return grad_C, grad_X, grad_center


def _norms_backward(ctx, grad):
    (X,) = ctx.saved_tensors
    return (2.0 * X.to(torch.float64) * grad.to(torch.float64).reshape(-1, 1)).to(X.dtype)


def _save_inputs(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _norms_dots_backward(ctx, grad):
    X, v = ctx.saved_tensors
    g = grad.to(torch.float64)
    X64 = X.to(torch.float64)
    grad_X = grad_v = None
    if ctx.needs_input_grad[0]:
        grad_X = (2.0 * X64 * g[0].reshape(-1, 1) + g[1].reshape(-1, 1) * v.to(torch.float64)).to(X.dtype)
    if ctx.needs_input_grad[1]:
        grad_v = (g[1] @ X64).to(v.dtype)
    return grad_X, grad_v


def _sq_distances_backward(ctx, grad):
    X, v = ctx.saved_tensors
    G = 2.0 * (X.to(torch.float64) - v.to(torch.float64)) * grad.to(torch.float64).reshape(-1, 1)
    grad_X = G.to(X.dtype) if ctx.needs_input_grad[0] else None
    grad_v = (-G.sum(0)).to(v.dtype) if ctx.needs_input_grad[1] else None
    return grad_X, grad_v


def register() -> None:
    """Register the derivatives above with the ops (called once, when :mod:`robustagg.ops` is imported)."""
    table = {
        "mean": (_mean_backward, _mean_setup),
        "coordinate_median": (_median_backward, _save_X),
        "trimmed_mean": (_trimmed_backward, _save_X),
        "meamed": (_meamed_backward, _save_X),
        "mean_around_median": (_around_median_backward, _save_X),
        "pairwise_sq_distances": (_distances_backward, _distances_setup),
        "mix_rows": (_mix_backward, _mix_setup),
        "row_sq_norms": (_norms_backward, _save_X),
        "row_sq_norms_and_dots": (_norms_dots_backward, _save_inputs),
        "row_sq_distances": (_sq_distances_backward, _save_inputs),
    }
    for name, (backward, setup) in table.items():
        torch.library.register_autograd(f"robustagg::{name}", backward, setup_context=setup)
