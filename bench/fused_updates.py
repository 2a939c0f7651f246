"""Time the fused multi-tensor updates against PyTorch's foreach ops, a per-tensor loop and the copy bandwidth.

    python bench/fused_updates.py                       # CPU, prints a table
    python bench/fused_updates.py --markdown docs/results/cpu-updates.md
    python bench/fused_updates.py --device cuda

Cases are tensor lists shaped like real uses:

* ``momentum_update_`` (beta = 0.9) on the n = 25 workers' momentum buffers
  of the digits MLP (one (25, 4810) matrix, or 25 x 4 parameter tensors),
  25 rows of 1M, and 100 tensors of 100k;
* the federated client steps on the parameter list of a ResNet-18 (the 62
  tensors of torchvision's ``resnet18()``: convolutions, batch-norm weights
  and biases, the fully connected layer; 11.7M parameters), float32:
  MimeLite with SGDm (``client_step_`` on params, grads, momentum), Mime with
  SGDm (params, grads, anchor grads, control, momentum), Mime with Adam
  (``adam_client_step_`` with anchor grads and control), and the server
  statistics ``adam_stats_update_`` and ``mvr_update_`` on the same list;
* the personalized steps on the same list with N = 8 collaborators
  (``weighted_step_``: plain WGA, and bias-corrected WGA which also reads and
  writes the 8 corrections), and the masked SGD-momentum step
  (``masked_sgd_step_`` with a bool or a bit-packed mask of density 1/4, and
  without a mask, against torch.optim.SGD's foreach code and ``torch._fused_sgd_``).
  The foreach compositions of the masked step take the mask as a float 0/1
  list (foreach ops have no select); a mask's bytes count as a fraction of a
  stream (1/4 for bool, 1/32 for packed bits).

Each case is timed for the fused op, for the fastest of a few compositions
of ``torch._foreach_*`` ops that compute the same update (named under the
table), and for a per-tensor Python loop of plain torch ops (the
``foreach=False`` style); all three are checked once to agree to rounding
(float32). The floor is the time to move the bytes the fused op must move
(every list read once, every written list written once: the "streams") at
the copy bandwidth measured in the same run (``copy_`` between flat buffers
of one list's size, timed interleaved with the case); "time / floor" is the fused op's time over that floor.
On CPU the copy's traffic is counted as three streams, not two: its
destination is not in the cache, so each line is read for ownership before
it is written (write-allocate; here a ``copy_`` takes as long as an in-place
``add_`` of two such buffers, three streams), while the fused ops write only
lines they have just read. Counted as two streams the copy would put the
floor about 1.5x too high (time / floor near 0.7). On a GPU (no
write-allocate reads) the copy counts two streams. Calls are interleaved (one call of each function per
round, so load from other processes hits all alike) and rotate over copies
of the lists whose total exceeds the last-level cache; medians are quoted.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import robustagg
from robustagg.bench.host import cpu_model, pin_malloc
from robustagg.bench.timing import rotation_count, time_interleaved
from robustagg.ops import (
    adam_client_step_,
    adam_stats_update_,
    client_step_,
    masked_sgd_step_,
    momentum_update_,
    mvr_update_,
    pack_mask,
    weighted_step_,
)

BETA = 0.9  # momentum_update_ and the SGDm client steps
LR = 0.05
ADAM = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=10)
MVR_A = 0.1
COLLABORATORS = 8  # the personalized steps: user 0 and N collaborators, uniform weights
WEIGHTS = [1.0 / (COLLABORATORS + 1)] * (COLLABORATORS + 1)
WGA_BETA = 0.002
CORE_DENSITY = 0.25  # the masked steps: fraction of elements in the mask


def resnet18_shapes(num_classes: int = 1000) -> list[tuple[int, ...]]:
    """Parameter shapes of torchvision's resnet18(), in its parameters() order (62 tensors, 11,689,512 values)."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]  # conv1, bn1
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            shapes += [(cout, cin, 3, 3), (cout,), (cout,), (cout, cout, 3, 3), (cout,), (cout,)]
            if s != 1 or cin != cout:
                shapes += [(cout, cin, 1, 1), (cout,), (cout,)]  # downsample conv, bn
            cin = cout
    shapes += [(num_classes, 512), (num_classes,)]  # fc
    return shapes


RESNET18 = resnet18_shapes()

# --- The updates, each as fused op, foreach compositions and a per-tensor loop. -----
# t maps list names to lists of tensors; every function updates t in place.


def _momentum_fused(t):
    momentum_update_(t["m"], t["g"], BETA)


def _momentum_foreach_mul_add(t):
    torch._foreach_mul_(t["m"], BETA)
    torch._foreach_add_(t["m"], t["g"], alpha=1 - BETA)


def _momentum_foreach_lerp(t):
    torch._foreach_lerp_(t["m"], t["g"], 1 - BETA)  # m + (1 - beta) (g - m)


def _momentum_loop(t):
    for m, g in zip(t["m"], t["g"]):
        m.mul_(BETA).add_(g, alpha=1 - BETA)


# MimeLite, SGDm: p <- p - lr ((1 - b) g + b m)
def _mimelite_fused(t):
    client_step_(t["p"], t["g"], LR, momentum=t["m"], coef_grad=1 - BETA, coef_momentum=BETA)


def _mimelite_foreach_add_chain(t):
    torch._foreach_add_(t["p"], t["g"], alpha=-LR * (1 - BETA))
    torch._foreach_add_(t["p"], t["m"], alpha=-LR * BETA)


def _mimelite_foreach_direction(t):
    d = torch._foreach_mul(t["m"], BETA)
    torch._foreach_add_(d, t["g"], alpha=1 - BETA)
    torch._foreach_add_(t["p"], d, alpha=-LR)


def _mimelite_loop(t):
    for p, g, m in zip(t["p"], t["g"], t["m"]):
        p.add_(g.mul(1 - BETA).add_(m, alpha=BETA), alpha=-LR)


# Mime, SGDm: p <- p - lr ((1 - b) (g - a + c) + b m)
def _mime_fused(t):
    client_step_(
        t["p"],
        t["g"],
        LR,
        anchor_grads=t["a"],
        control=t["c"],
        momentum=t["m"],
        coef_grad=1 - BETA,
        coef_anchor=-(1 - BETA),
        coef_control=1 - BETA,
        coef_momentum=BETA,
    )


def _mime_foreach_add_chain(t):
    torch._foreach_add_(t["p"], t["g"], alpha=-LR * (1 - BETA))
    torch._foreach_add_(t["p"], t["a"], alpha=LR * (1 - BETA))
    torch._foreach_add_(t["p"], t["c"], alpha=-LR * (1 - BETA))
    torch._foreach_add_(t["p"], t["m"], alpha=-LR * BETA)


def _mime_foreach_direction(t):
    d = torch._foreach_sub(t["g"], t["a"])
    torch._foreach_add_(d, t["c"])
    torch._foreach_lerp_(d, t["m"], BETA)  # (1 - b) d + b m
    torch._foreach_add_(t["p"], d, alpha=-LR)


def _mime_loop(t):
    for p, g, a, c, m in zip(t["p"], t["g"], t["a"], t["c"], t["m"]):
        p.add_((g - a).add_(c).mul_(1 - BETA).add_(m, alpha=BETA), alpha=-LR)


# Mime, Adam: the Adam step from the frozen state (m, v) with gt = (g - a) + c; m, v not written.
def _adam_scalars():
    b1, b2, step = ADAM["beta1"], ADAM["beta2"], ADAM["step"]
    return ADAM["lr"] / (1 - b1**step), math.sqrt(1 - b2**step)


def _mime_adam_fused(t):
    adam_client_step_(t["p"], t["g"], t["m"], t["v"], **ADAM, anchor_grads=t["a"], control=t["c"])


def _mime_adam_foreach(t):
    step_size, sqrt_bc2 = _adam_scalars()
    b1, b2 = ADAM["beta1"], ADAM["beta2"]
    gt = torch._foreach_sub(t["g"], t["a"])
    torch._foreach_add_(gt, t["c"])
    m1 = torch._foreach_lerp(t["m"], gt, 1 - b1)
    v1 = torch._foreach_mul(t["v"], b2)
    torch._foreach_addcmul_(v1, gt, gt, value=1 - b2)
    torch._foreach_sqrt_(v1)
    torch._foreach_div_(v1, sqrt_bc2)
    torch._foreach_add_(v1, ADAM["eps"])
    torch._foreach_addcdiv_(t["p"], m1, v1, value=-step_size)


def _mime_adam_foreach_reuse(t):
    """As above with fewer temporaries: gt is turned into m' in place."""
    step_size, sqrt_bc2 = _adam_scalars()
    b1, b2 = ADAM["beta1"], ADAM["beta2"]
    gt = torch._foreach_sub(t["g"], t["a"])
    torch._foreach_add_(gt, t["c"])
    v1 = torch._foreach_mul(gt, gt)
    torch._foreach_lerp_(v1, t["v"], b2)  # b2 v + (1 - b2) gt^2
    torch._foreach_sqrt_(v1)
    torch._foreach_div_(v1, sqrt_bc2)
    torch._foreach_add_(v1, ADAM["eps"])
    torch._foreach_lerp_(gt, t["m"], b1)  # b1 m + (1 - b1) gt
    torch._foreach_addcdiv_(t["p"], gt, v1, value=-step_size)


def _mime_adam_loop(t):
    step_size, sqrt_bc2 = _adam_scalars()
    b1, b2 = ADAM["beta1"], ADAM["beta2"]
    for p, g, a, c, m, v in zip(t["p"], t["g"], t["a"], t["c"], t["m"], t["v"]):
        gt = (g - a).add_(c)
        m1 = m.mul(b1).add_(gt, alpha=1 - b1)
        denom = v.mul(b2).addcmul_(gt, gt, value=1 - b2).sqrt_().div_(sqrt_bc2).add_(ADAM["eps"])
        p.addcdiv_(m1, denom, value=-step_size)


# Adam statistics: m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2 (torch.optim.Adam's foreach code).
def _stats_fused(t):
    adam_stats_update_(t["m"], t["v"], t["g"], ADAM["beta1"], ADAM["beta2"])


def _stats_foreach(t):
    torch._foreach_lerp_(t["m"], t["g"], 1 - ADAM["beta1"])
    torch._foreach_mul_(t["v"], ADAM["beta2"])
    torch._foreach_addcmul_(t["v"], t["g"], t["g"], value=1 - ADAM["beta2"])


def _stats_loop(t):
    for m, v, g in zip(t["m"], t["v"], t["g"]):
        m.lerp_(g, 1 - ADAM["beta1"])
        v.mul_(ADAM["beta2"]).addcmul_(g, g, value=1 - ADAM["beta2"])


# MVR: m <- a g + (1 - a) ((m + g) - g_prev)
def _mvr_fused(t):
    mvr_update_(t["m"], t["g"], t["h"], MVR_A)


def _mvr_foreach(t):
    torch._foreach_add_(t["m"], t["g"])
    torch._foreach_sub_(t["m"], t["h"])
    torch._foreach_lerp_(t["m"], t["g"], MVR_A)  # (1 - a) s + a g


def _mvr_loop(t):
    for m, g, h in zip(t["m"], t["g"], t["h"]):
        m.add_(g).sub_(h).mul_(1 - MVR_A).add_(g, alpha=MVR_A)


# Personalized steps (N collaborators): u = a0 g0 + sum_i (a_i g_i + c_i); p <- p - lr u;
# c_i <- (1 - beta) c_i + beta a_i (g0 - g_i).
_USERS = range(COLLABORATORS + 1)


def _wga_fused(t):
    weighted_step_(t["p"], [t[f"g{i}"] for i in _USERS], WEIGHTS, LR)


def _wga_foreach(t):
    u = torch._foreach_mul(t["g0"], WEIGHTS[0])
    for i in _USERS[1:]:
        torch._foreach_add_(u, t[f"g{i}"], alpha=WEIGHTS[i])
    torch._foreach_add_(t["p"], u, alpha=-LR)


def _wga_loop(t):
    for j, p in enumerate(t["p"]):
        u = t["g0"][j] * WEIGHTS[0]
        for i in _USERS[1:]:
            u.add_(t[f"g{i}"][j], alpha=WEIGHTS[i])
        p.add_(u, alpha=-LR)


def _bc_fused(t):
    weighted_step_(
        t["p"], [t[f"g{i}"] for i in _USERS], WEIGHTS, LR, corrections=[t[f"c{i}"] for i in _USERS[1:]], beta=WGA_BETA
    )


def _bc_foreach_lerp(t):
    u = torch._foreach_mul(t["g0"], WEIGHTS[0])
    for i in _USERS[1:]:
        torch._foreach_add_(u, t[f"g{i}"], alpha=WEIGHTS[i])
        torch._foreach_add_(u, t[f"c{i}"])
        d = torch._foreach_sub(t["g0"], t[f"g{i}"])
        torch._foreach_mul_(d, WEIGHTS[i])
        torch._foreach_lerp_(t[f"c{i}"], d, WGA_BETA)  # (1 - beta) c + beta a (g0 - g)
    torch._foreach_add_(t["p"], u, alpha=-LR)


def _bc_foreach_add_chain(t):
    """No temporaries besides u: the correction as three scaled adds."""
    u = torch._foreach_mul(t["g0"], WEIGHTS[0])
    for i in _USERS[1:]:
        torch._foreach_add_(u, t[f"g{i}"], alpha=WEIGHTS[i])
        torch._foreach_add_(u, t[f"c{i}"])
        torch._foreach_mul_(t[f"c{i}"], 1 - WGA_BETA)
        torch._foreach_add_(t[f"c{i}"], t["g0"], alpha=WGA_BETA * WEIGHTS[i])
        torch._foreach_add_(t[f"c{i}"], t[f"g{i}"], alpha=-WGA_BETA * WEIGHTS[i])
    torch._foreach_add_(t["p"], u, alpha=-LR)


def _bc_loop(t):
    for j, p in enumerate(t["p"]):
        g0 = t["g0"][j]
        u = g0 * WEIGHTS[0]
        for i in _USERS[1:]:
            g, c = t[f"g{i}"][j], t[f"c{i}"][j]
            u.add_(g, alpha=WEIGHTS[i]).add_(c)
            c.lerp_((g0 - g).mul_(WEIGHTS[i]), WGA_BETA)
        p.add_(u, alpha=-LR)


# Masked SGD with momentum: where the mask is set, m <- mu m + g, p <- p - lr m; elsewhere unchanged.
def _masked_fused(t):
    masked_sgd_step_(t["p"], t["g"], t["m"], LR, BETA, masks=t["mask"])


def _masked_foreach(t):
    """m + f (mu m + g - m), p - lr f m with f the float 0/1 mask."""
    new = torch._foreach_mul(t["m"], BETA)
    torch._foreach_add_(new, t["g"])
    torch._foreach_sub_(new, t["m"])
    torch._foreach_addcmul_(t["m"], new, t["fmask"])
    torch._foreach_addcmul_(t["p"], t["m"], t["fmask"], value=-LR)


def _masked_foreach_lerp(t):
    """lerp_ with the float mask as its weight: m + f ((mu m + g) - m)."""
    new = torch._foreach_mul(t["m"], BETA)
    torch._foreach_add_(new, t["g"])
    torch._foreach_lerp_(t["m"], new, t["fmask"])
    torch._foreach_addcmul_(t["p"], t["m"], t["fmask"], value=-LR)


def _masked_loop(t):
    for p, g, m, mask in zip(t["p"], t["g"], t["m"], t["bmask"]):
        m.copy_(torch.where(mask, m * BETA + g, m))
        p.copy_(torch.where(mask, p - LR * m, p))


def _sgd_fused(t):
    masked_sgd_step_(t["p"], t["g"], t["m"], LR, BETA)


def _sgd_foreach(t):
    """torch.optim.SGD(foreach=True)'s step with momentum (buffers exist, no dampening)."""
    torch._foreach_mul_(t["m"], BETA)
    torch._foreach_add_(t["m"], t["g"])
    torch._foreach_add_(t["p"], t["m"], alpha=-LR)


def _sgd_torch_fused(t):
    torch._fused_sgd_(
        t["p"],
        t["g"],
        t["m"],
        weight_decay=0.0,
        momentum=BETA,
        lr=LR,
        dampening=0.0,
        nesterov=False,
        maximize=False,
        is_first_step=False,
    )


def _sgd_loop(t):
    for p, g, m in zip(t["p"], t["g"], t["m"]):
        m.mul_(BETA).add_(g)
        p.add_(m, alpha=-LR)


BLOCK_BYTES = 2 << 20  # the blocked foreach variants: groups of consecutive tensors of at most 2 MB per list


def _blocks(t: dict, block_bytes: int = BLOCK_BYTES) -> list[dict]:
    """t cut into groups of consecutive tensors (one tensor per group when larger than the block)."""
    first = next(iter(t.values()))
    groups, cur, size = [], [], 0
    for i, x in enumerate(first):
        nbytes = x.numel() * x.element_size()
        if cur and size + nbytes > block_bytes:
            groups.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += nbytes
    if cur:
        groups.append(cur)
    return [{k: [v[i] for i in g] for k, v in t.items()} for g in groups]


def blocked(fn: Callable) -> Callable:
    """fn applied to blocks of the lists in turn: a multi-pass foreach composition then finds the
    block's tensors of the previous pass in the cache (what a per-tensor loop gets for free)."""

    def run_blocked(t):
        for b in _blocks(t):
            fn(b)

    return run_blocked


def with_blocked(candidates: dict) -> dict:
    """The candidates and, for each multi-pass one, its blocked variant."""
    out = dict(candidates)
    for name, fn in candidates.items():
        if name not in SINGLE_PASS:
            out[f"{name}, in 2 MB blocks"] = blocked(fn)
    return out


SINGLE_PASS = {"lerp_", "torch._fused_sgd_"}


@dataclass
class Case:
    name: str
    shapes: list
    lists: tuple  # every list the update reads
    written: tuple  # the lists it writes
    fused: Callable
    foreach: dict  # name -> candidate composition
    loop: Callable
    non_negative: tuple = field(default_factory=tuple)  # Adam's second moment
    mask: str = ""  # "bool" or "packed": the case also reads a mask of that kind

    @property
    def mask_streams(self) -> float:
        return {"": 0.0, "bool": 0.25, "packed": 1 / 32}[self.mask]

    @property
    def streams(self) -> float:
        return len(self.lists) + len(self.written) + self.mask_streams


_MOMENTUM_FOREACH = with_blocked({"mul_ + add_(alpha)": _momentum_foreach_mul_add, "lerp_": _momentum_foreach_lerp})


def _momentum_case(name, shapes):
    return Case(
        f"momentum_update_: {name}", shapes, ("m", "g"), ("m",), _momentum_fused, _MOMENTUM_FOREACH, _momentum_loop
    )


CASES = [
    _momentum_case("digits MLP, 25 workers as one matrix", [(25, 4810)]),
    _momentum_case("digits MLP, 25 workers x 4 tensors", [(64, 64), (64,), (10, 64), (10,)] * 25),
    _momentum_case("25 rows of 1M", [(1_000_000,)] * 25),
    _momentum_case("100 tensors of 100k", [(100_000,)] * 100),
    Case(
        "MimeLite-SGDm client step (ResNet-18)",
        RESNET18,
        ("p", "g", "m"),
        ("p",),
        _mimelite_fused,
        with_blocked({"2 x add_(alpha)": _mimelite_foreach_add_chain, "mul, add_, add_": _mimelite_foreach_direction}),
        _mimelite_loop,
    ),
    Case(
        "Mime-SGDm client step (ResNet-18)",
        RESNET18,
        ("p", "g", "a", "c", "m"),
        ("p",),
        _mime_fused,
        with_blocked({"4 x add_(alpha)": _mime_foreach_add_chain, "sub, add_, lerp_, add_": _mime_foreach_direction}),
        _mime_loop,
    ),
    Case(
        "Mime-Adam client step (ResNet-18)",
        RESNET18,
        ("p", "g", "a", "c", "m", "v"),
        ("p",),
        _mime_adam_fused,
        with_blocked(
            {
                "torch.optim.Adam-style (9 ops)": _mime_adam_foreach,
                "fewer temporaries (9 ops)": _mime_adam_foreach_reuse,
            }
        ),
        _mime_adam_loop,
        ("v",),
    ),
    Case(
        "adam_stats_update_ (ResNet-18)",
        RESNET18,
        ("m", "v", "g"),
        ("m", "v"),
        _stats_fused,
        with_blocked({"lerp_, mul_, addcmul_": _stats_foreach}),
        _stats_loop,
        ("v",),
    ),
    Case(
        "mvr_update_ (ResNet-18)",
        RESNET18,
        ("m", "g", "h"),
        ("m",),
        _mvr_fused,
        with_blocked({"add_, sub_, lerp_": _mvr_foreach}),
        _mvr_loop,
    ),
    Case(
        f"WGA step, N = {COLLABORATORS} (ResNet-18)",
        RESNET18,
        ("p", *(f"g{i}" for i in _USERS)),
        ("p",),
        _wga_fused,
        with_blocked({"mul, N x add_(alpha), add_(alpha)": _wga_foreach}),
        _wga_loop,
    ),
    Case(
        f"bias-corrected WGA step, N = {COLLABORATORS} (ResNet-18)",
        RESNET18,
        ("p", *(f"g{i}" for i in _USERS), *(f"c{i}" for i in _USERS[1:])),
        ("p", *(f"c{i}" for i in _USERS[1:])),
        _bc_fused,
        with_blocked(
            {
                "sub, mul_, lerp_ per collaborator": _bc_foreach_lerp,
                "mul_ + 2 x add_(alpha) per collaborator": _bc_foreach_add_chain,
            }
        ),
        _bc_loop,
    ),
    *(
        Case(
            f"masked SGD-momentum step, {kind} mask (ResNet-18)",
            RESNET18,
            ("p", "g", "m"),
            ("p", "m"),
            _masked_fused,
            with_blocked(
                {"mul, add_, sub_, 2 x addcmul_": _masked_foreach, "mul, add_, lerp_, addcmul_": _masked_foreach_lerp}
            ),
            _masked_loop,
            mask=kind,
        )
        for kind in ("bool", "packed")
    ),
    Case(
        "SGD-momentum step, no mask (ResNet-18)",
        RESNET18,
        ("p", "g", "m"),
        ("p", "m"),
        _sgd_fused,
        with_blocked(
            {"torch.optim.SGD foreach (mul_, add_, add_)": _sgd_foreach, "torch._fused_sgd_": _sgd_torch_fused}
        ),
        _sgd_loop,
    ),
]


def _make_set(case: Case, device, gen) -> dict:
    """Standard normal lists; Adam's second moment v = m^2 + 0.01 z^2 (z normal), as a real Adam
    state keeps |m| <~ sqrt(v): random v unrelated to m would make some steps huge."""
    out = {}
    for name in case.lists:
        xs = [torch.randn(s, generator=gen) for s in case.shapes]
        if name in case.non_negative:
            xs = [m.square() + 0.01 * x.square_() for m, x in zip(out["m"], xs)]
        out[name] = [x.to(device) for x in xs]
    if case.mask:
        bmask = [torch.rand(s, generator=gen) < CORE_DENSITY for s in case.shapes]
        out["bmask"] = [b.to(device) for b in bmask]
        out["fmask"] = [b.float().to(device) for b in bmask]
        out["mask"] = out["bmask"] if case.mask == "bool" else [pack_mask(b).to(device) for b in bmask]
    return out


def _clone(t: dict) -> dict:
    return {k: [x.clone() for x in v] for k, v in t.items()}


def check_agreement(case: Case, t: dict) -> float:
    """Run every implementation once from the same inputs; the largest difference of a written value
    from the fused op's, relative to the largest magnitude of that list. Raises if above 1e-5."""
    ref = _clone(t)
    case.fused(ref)
    worst = 0.0
    for label, fn in [*case.foreach.items(), ("loop", case.loop)]:
        got = _clone(t)
        fn(got)
        for name in case.written:
            for x, y in zip(got[name], ref[name]):
                if y.numel():
                    scale = y.abs().max().item() or 1.0
                    worst = max(worst, (x - y).abs().max().item() / scale)
        if worst > 1e-5:
            raise AssertionError(f"{case.name}: {label} differs from the fused op by {worst:.2e} (relative)")
    return worst


def copy_streams(device: torch.device) -> int:
    """Streams a copy_ between cold buffers moves: source read, destination read for ownership
    (CPU write-allocate) and written; on a GPU source read and destination written."""
    return 2 if device.type == "cuda" else 3


def run(device: str, repeats: int, only: str = "") -> list[dict]:
    dev = torch.device(device)
    if dev.type == "cpu":
        pin_malloc()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for case in [c for c in CASES if only in c.name]:
        numel = sum(math.prod(s) for s in case.shapes)
        list_bytes = numel * 4
        copies = rotation_count(int((len(case.lists) + 2 + (1.3 if case.mask else 0)) * list_bytes), dev, 2 << 30)
        # Each copy: the case's lists, and two flat buffers of one list's size for the copy
        # (zeros, not empty: the destination is paged in before it is timed).
        sets = [
            (
                _make_set(case, device, gen),
                (torch.zeros(numel, device=device), torch.randn(numel, generator=gen).to(device)),
            )
            for _ in range(copies)
        ]
        agree = check_agreement(case, sets[0][0])
        impls = [case.fused, *case.foreach.values(), case.loop]
        fns = [(lambda x, f=f: f(x[0])) for f in impls] + [lambda x: x[1][0].copy_(x[1][1])]
        res = time_interleaved(fns, sets, dev, repeats=repeats)
        ms = [r["ms"] for r in res]
        fused_ms, loop_ms, copy_ms = ms[0], ms[-2], ms[-1]
        foreach_ms = dict(zip(case.foreach, ms[1:-2]))
        best = min(foreach_ms, key=foreach_ms.get)
        copy_gbs = copy_streams(dev) * list_bytes / copy_ms / 1e6
        moved = case.streams * list_bytes
        floor_ms = moved / (copy_gbs * 1e6)
        row = {
            "case": case.name,
            "tensors": len(case.shapes),
            "MB": list_bytes / 1e6,
            "streams": case.streams,
            "streams_desc": f"{len(case.lists)} read + {len(case.written)} written"
            + (f" + {case.mask} mask" if case.mask else ""),
            "ms": fused_ms,
            "GB/s": moved / fused_ms / 1e6,
            "copy_GB/s": copy_gbs,
            "x_floor": fused_ms / floor_ms,
            "foreach": best,
            "foreach_ms": foreach_ms,
            "speedup_vs_foreach": foreach_ms[best] / fused_ms,
            "loop_ms": loop_ms,
            "speedup_vs_loop": loop_ms / fused_ms,
            "max_rel_diff": agree,
            "copies": copies,
            "repeats": res[0]["repeats"],
        }
        rows.append(row)
        print(
            f"{case.name}: {fused_ms:.3f} ms, {row['GB/s']:.1f} GB/s (copy {copy_gbs:.1f}), "
            f"{row['x_floor']:.2f}x floor, {row['speedup_vs_foreach']:.2f}x foreach ({best}: "
            f"{foreach_ms[best]:.3f} ms), {row['speedup_vs_loop']:.2f}x loop ({loop_ms:.3f} ms)",
            file=sys.stderr,
        )
        del sets
    return rows


def markdown(rows: list[dict], device: str, command: str) -> str:
    where = cpu_model() if device == "cpu" else torch.cuda.get_device_name()
    lines = [
        f"# Fused updates on {where}",
        "",
        f"`{command}`, float32, torch {torch.__version__}, {torch.get_num_threads()} threads; beta = {BETA} "
        f"(momentum, SGDm), lr = {LR}; Adam lr = {ADAM['lr']}, betas = ({ADAM['beta1']}, {ADAM['beta2']}), "
        f"eps = {ADAM['eps']}, step = {ADAM['step']}; MVR a = {MVR_A}. ResNet-18: the 62 parameter tensors of "
        "torchvision's resnet18() (11.7M values).",
        "",
        "Streams: lists read + lists written by the fused op, each once; GB/s = streams x MB per list / time. "
        "Floor: those bytes at the copy bandwidth measured in the same run (copy_ between flat buffers of one "
        f"list's size, counted as {copy_streams(torch.device(device))} streams"
        + (": source read, destination read for ownership and written" if device == "cpu" else "")
        + "). Foreach: the fastest of the torch._foreach_* compositions timed (listed below); loop: a "
        "per-tensor Python loop of plain torch ops. Median times; calls interleaved and rotated over copies "
        "larger than the last-level cache.",
        "",
        "| case | tensors | MB per list | streams | time (ms) | GB/s | time / floor | speed-up over foreach "
        "| speed-up over loop |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['tensors']} | {r['MB']:.1f} | {r['streams']:g} ({r['streams_desc']}) | "
            f"{r['ms']:.3f} | {r['GB/s']:.1f} | {r['x_floor']:.2f} | {r['speedup_vs_foreach']:.2f} | "
            f"{r['speedup_vs_loop']:.2f} |"
        )
    lines += ["", "Foreach compositions (ms; the fastest is the one compared) and the copy bandwidth:", ""]
    for r in rows:
        timed = ", ".join(f"{k}: {v:.3f}" for k, v in r["foreach_ms"].items())
        lines.append(
            f"* {r['case']}: {timed}; loop {r['loop_ms']:.3f}; copy {r['copy_GB/s']:.1f} GB/s; "
            f"largest difference from the fused result {r['max_rel_diff']:.1e} (relative)"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--markdown", metavar="PATH")
    p.add_argument("--only", default="", metavar="TEXT", help="only the cases whose name contains TEXT")
    args = p.parse_args()
    if args.device == "cuda" and not (torch.cuda.is_available() and robustagg.cuda_kernels_built()):
        print("fused_updates: no CUDA GPU or no CUDA kernels", file=sys.stderr)
        return 2
    rows = run(args.device, args.repeats, args.only)
    text = markdown(rows, args.device, "python " + " ".join(sys.argv))
    print(text)
    if args.markdown:
        os.makedirs(os.path.dirname(args.markdown) or ".", exist_ok=True)
        with open(args.markdown, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
