"""Fake (meta) implementations of the ``torch.ops.robustagg`` operators, so that ``torch.compile`` can trace them.

Each fake returns an empty tensor of the op's output shape and dtype, or
nothing for the in-place updates, after the checks a fake can make (one
device for every tensor, as the kernels require).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _C  # noqa: F401  (loads the library that defines the ops)


def _one_device(rule: str, **tensors: torch.Tensor | Sequence[torch.Tensor] | None) -> None:
    """Raise when the tensors are on several devices.

    A meta tensor anywhere in a call sends the whole call to the fakes below,
    so they refuse mixed devices as the kernels do; otherwise a CPU call with
    one meta tensor would return uninitialised memory or write nothing.
    """
    seen: dict[torch.device, str] = {}
    for name, value in tensors.items():
        items = (
            [(name, value)]
            if not isinstance(value, (list, tuple))
            else [(f"{name}[{i}]", t) for i, t in enumerate(value)]
        )
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


@torch.library.register_fake("robustagg::row_sq_norms_and_dots")
def _(X, v):
    _one_device("row_sq_norms_and_dots", X=X, v=v)
    return X.new_empty((2, X.shape[0]), dtype=torch.float64)


@torch.library.register_fake("robustagg::row_sq_distances")
def _(X, v):
    _one_device("row_sq_distances", X=X, v=v)
    return X.new_empty((X.shape[0],), dtype=torch.float64)


@torch.library.register_fake("robustagg::caf_weights")
def _(D, finite, f):
    return D.new_empty((D.shape[0],), dtype=torch.float64)


@torch.library.register_fake("robustagg::momentum_update_")
def _(buffers, grads, beta):
    _one_device("momentum_update_", buffers=buffers, grads=grads)


@torch.library.register_fake("robustagg::client_step_")
def _(params, grads, anchor_grads, control, momentum, lr, coef_grad, coef_anchor, coef_control, coef_momentum):
    _one_device(
        "client_step_", params=params, grads=grads, anchor_grads=anchor_grads, control=control, momentum=momentum
    )


@torch.library.register_fake("robustagg::adam_client_step_")
def _(params, grads, anchor_grads, control, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, step):
    _one_device(
        "adam_client_step_",
        params=params,
        grads=grads,
        anchor_grads=anchor_grads,
        control=control,
        exp_avg=exp_avg,
        exp_avg_sq=exp_avg_sq,
    )


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
