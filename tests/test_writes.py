"""The fused ``*_`` ops behave as PyTorch in-place ops (SPEC 1, "Writes"; SPEC 6).

For every op and every list it writes: the version counter is bumped; a
tensor that requires grad is refused while grad mode is on; a written tensor
that shares memory with another tensor of the call (the same tensor twice,
overlapping views, a parameter that is its own momentum buffer), or that is
an expanded view, is refused; and a tensor on another device (meta included)
is refused. Every refusal happens before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from robustagg import ops

from conftest import assert_identical


@dataclass(frozen=True)
class FusedOp:
    name: str
    lists: tuple[str, ...]  # every list of the call, in a fixed order
    written: tuple[str, ...]
    call: Callable[[dict[str, list[torch.Tensor]]], None]


def _weighted(L):
    ops.weighted_step_(
        L["params"], [L["grads0"], L["grads1"]], [0.5, 0.5], 0.1, corrections=[L["corrections0"]], beta=0.3
    )


FUSED = [
    FusedOp(
        "momentum_update_",
        ("buffers", "grads"),
        ("buffers",),
        lambda L: ops.momentum_update_(L["buffers"], L["grads"], 0.9),
    ),
    FusedOp(
        "client_step_",
        ("params", "grads", "anchor_grads", "control", "momentum"),
        ("params",),
        lambda L: ops.client_step_(
            L["params"],
            L["grads"],
            0.1,
            anchor_grads=L["anchor_grads"],
            control=L["control"],
            momentum=L["momentum"],
            coef_anchor=-1.0,
            coef_control=1.0,
            coef_momentum=0.5,
        ),
    ),
    FusedOp(
        "adam_client_step_",
        ("params", "grads", "anchor_grads", "control", "exp_avg", "exp_avg_sq"),
        ("params",),
        lambda L: ops.adam_client_step_(
            L["params"],
            L["grads"],
            L["exp_avg"],
            L["exp_avg_sq"],
            0.1,
            0.9,
            0.99,
            1e-8,
            3,
            anchor_grads=L["anchor_grads"],
            control=L["control"],
        ),
    ),
    FusedOp(
        "adam_stats_update_",
        ("exp_avg", "exp_avg_sq", "grads"),
        ("exp_avg", "exp_avg_sq"),
        lambda L: ops.adam_stats_update_(L["exp_avg"], L["exp_avg_sq"], L["grads"], 0.9, 0.99),
    ),
    FusedOp(
        "mvr_update_",
        ("momentum", "grads", "prev_grads"),
        ("momentum",),
        lambda L: ops.mvr_update_(L["momentum"], L["grads"], L["prev_grads"], 0.1),
    ),
    FusedOp("weighted_step_", ("params", "corrections0", "grads0", "grads1"), ("params", "corrections0"), _weighted),
    FusedOp(
        "masked_sgd_step_",
        ("params", "momentum_buffers", "grads"),
        ("params", "momentum_buffers"),
        lambda L: ops.masked_sgd_step_(L["params"], L["grads"], L["momentum_buffers"], 0.1, 0.9, weight_decay=0.01),
    ),
]
IDS = [op.name for op in FUSED]
WRITTEN = [(op, name) for op in FUSED for name in op.written]
WRITTEN_IDS = [f"{op.name}-{name}" for op, name in WRITTEN]
SHAPES = [(5, 7), (33,)]


def fresh_lists(op: FusedOp, seed: int = 0) -> dict[str, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    # Positive exp_avg_sq keeps the Adam step finite; other values are standard normal.
    lists = {name: [torch.randn(s, generator=g) for s in SHAPES] for name in op.lists}
    if "exp_avg_sq" in lists:
        lists["exp_avg_sq"] = [t.abs() for t in lists["exp_avg_sq"]]
    return lists


def snapshot(lists: dict[str, list[torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
    return {name: [t.detach().clone() for t in ts] for name, ts in lists.items()}


def assert_unchanged(lists, before, what: str) -> None:
    for name, ts in lists.items():
        for i, (t, t0) in enumerate(zip(ts, before[name])):
            if t.device.type == "meta":
                continue
            assert_identical(t, t0, f"{what}: {name}[{i}] was written")


@pytest.mark.parametrize("op", FUSED, ids=IDS)
def test_version_counters_of_written_tensors_are_bumped(op):
    lists = fresh_lists(op)
    versions = {name: [t._version for t in ts] for name, ts in lists.items()}
    op.call(lists)
    for name, ts in lists.items():
        for i, t in enumerate(ts):
            bumped = t._version > versions[name][i]
            assert bumped == (name in op.written), f"{name}[{i}]: version {versions[name][i]} -> {t._version}"


@pytest.mark.parametrize("op", FUSED, ids=IDS)
def test_backward_through_an_overwritten_value_is_refused(op):
    """The bump is what autograd checks: a value saved for backward and then overwritten raises."""
    lists = fresh_lists(op)
    w = torch.randn(SHAPES[1], requires_grad=True)
    target = lists[op.written[0]][1]
    loss = (w * target).sum()  # saves target for w's gradient
    op.call(lists)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize(("op", "name"), WRITTEN, ids=WRITTEN_IDS)
@pytest.mark.parametrize("leaf", [True, False], ids=["leaf", "non-leaf"])
def test_written_tensor_that_requires_grad_is_refused_in_grad_mode(op, name, leaf):
    lists = fresh_lists(op)
    base = lists[name][1].clone().requires_grad_(True)
    lists[name][1] = base if leaf else base * 1.0
    before = snapshot(lists)
    with pytest.raises(RuntimeError, match=rf"{op.name}: {name.rstrip('0')}\S* requires grad and grad mode is on"):
        op.call(lists)
    assert_unchanged(lists, before, "refused call")
    with torch.no_grad():  # how optimizers write leaf parameters
        op.call(lists)
    assert not torch.equal(lists[name][1].detach(), before[name][1])


@pytest.mark.parametrize("op", FUSED, ids=IDS)
def test_read_tensors_that_require_grad_are_refused_in_grad_mode(op):
    """``p.add_(g)`` would record the dependence on g; the fused ops have none to record."""
    lists = fresh_lists(op)
    read = next(k for k in op.lists if k not in op.written)
    lists[read][1].requires_grad_(True)
    before = snapshot(lists)
    with pytest.raises(RuntimeError, match="requires grad and grad mode is on"):
        op.call(lists)
    assert_unchanged(lists, before, "refused call")
    with torch.no_grad():
        op.call(lists)
    assert lists[read][1].grad is None


def test_a_view_whose_strides_overlap_is_refused_as_written():
    """Not an expanded view, but 8 elements over 5 addresses: the result would depend on the order of the writes."""
    b = torch.zeros(5)
    before = b.clone()
    with pytest.raises(ValueError, match="several elements at one address"):
        ops.momentum_update_([b.as_strided((4, 2), (1, 1))], [torch.ones(4, 2)], 0.5)
    assert torch.equal(b, before)


def _same_tensor_twice() -> list[torch.Tensor]:
    t = torch.randn(20)
    return [t, t]


def _overlapping_views() -> list[torch.Tensor]:
    buffer = torch.randn(40)
    return [buffer[0:20], buffer[10:30]]


@pytest.mark.parametrize(("op", "name"), WRITTEN, ids=WRITTEN_IDS)
@pytest.mark.parametrize("written", [_same_tensor_twice, _overlapping_views], ids=["same-tensor", "overlapping"])
def test_a_written_list_whose_tensors_share_memory_is_refused(op, name, written):
    lists = {k: [torch.randn(20), torch.randn(20)] for k in op.lists}
    lists[name] = written()
    before = snapshot(lists)
    with pytest.raises(ValueError, match="share memory"):
        op.call(lists)
    assert_unchanged(lists, before, "refused call")


@pytest.mark.parametrize(("op", "name"), WRITTEN, ids=WRITTEN_IDS)
def test_disjoint_views_of_one_buffer_are_accepted(op, name):
    """Parameters packed in one flat buffer, as FSDP and fused optimizers keep them."""
    lists = {k: [torch.randn(20), torch.randn(20)] for k in op.lists}
    buffer = torch.randn(40)
    lists[name] = [buffer[0:20], buffer[20:40]]
    if name == "exp_avg_sq":
        buffer.abs_()
    before = buffer.clone()
    op.call(lists)
    assert not torch.equal(buffer, before)


@pytest.mark.parametrize(("op", "name"), WRITTEN, ids=WRITTEN_IDS)
def test_interleaved_views_count_as_sharing_memory(op, name):
    """The test is on address ranges: two columns of one matrix are refused, though they share no element."""
    lists = {k: [torch.randn(8), torch.randn(8)] for k in op.lists}
    matrix = torch.randn(8, 2)
    lists[name] = [matrix[:, 0], matrix[:, 1]]
    with pytest.raises(ValueError, match="share memory"):
        op.call(lists)


def test_a_parameter_that_is_its_own_momentum_buffer_is_refused():
    p = torch.randn(10)
    before = p.clone()
    other = [torch.randn(3)]
    with pytest.raises(ValueError, match=r"params\[1\] and momentum_buffers\[1\] share memory"):
        ops.masked_sgd_step_(other + [p], [torch.randn(3), torch.randn(10)], [torch.randn(3), p], 0.1, 0.9)
    assert torch.equal(p, before)
    with pytest.raises(ValueError, match="share memory"):
        ops.adam_stats_update_([p], [p], [torch.randn(10)], 0.9, 0.99)
    with pytest.raises(ValueError, match="share memory"):
        ops.weighted_step_([p], [[torch.randn(10)], [torch.randn(10)]], [0.5, 0.5], 0.1, corrections=[[p]])
    assert torch.equal(p, before)


@pytest.mark.parametrize("op", FUSED, ids=IDS)
def test_written_tensor_may_be_read_at_its_own_position(op):
    """As ``a.mul_(a)``: each element is read before it is written, so the result is the formula's."""
    name = op.written[0]
    read = next(k for k in op.lists if k not in op.written)
    lists = fresh_lists(op)
    twin = snapshot(lists)
    lists[read][1] = lists[name][1]
    twin[read][1] = twin[name][1].clone()
    op.call(lists)
    op.call(twin)
    for k in op.written:
        for i in range(2):
            assert torch.equal(lists[k][i], twin[k][i]), f"{k}[{i}]"


@pytest.mark.parametrize("op", FUSED, ids=IDS)
def test_written_tensor_read_at_another_position_or_partly_is_refused(op):
    name = op.written[0]
    read = next(k for k in op.lists if k not in op.written)
    lists = {k: [torch.randn(20), torch.randn(20)] for k in op.lists}
    lists[read][0] = lists[name][1]  # the same tensor, at another position
    with pytest.raises(ValueError, match="share memory"):
        op.call(lists)
    buffer = torch.randn(30)
    lists = {k: [torch.randn(20), torch.randn(20)] for k in op.lists}
    lists[name][0], lists[read][0] = buffer[0:20], buffer[5:25]  # a shifted view
    before = snapshot(lists)
    with pytest.raises(ValueError, match="share memory"):
        op.call(lists)
    assert_unchanged(lists, before, "refused call")


def test_a_correction_may_not_alias_any_gradient():
    """weighted_step_ writes a correction while later users' gradients are still to be read."""
    c = torch.randn(10)
    with pytest.raises(ValueError, match="share memory"):
        ops.weighted_step_([torch.randn(10)], [[torch.randn(10)], [c]], [0.5, 0.5], 0.1, corrections=[[c]])


@pytest.mark.parametrize(("op", "name"), WRITTEN, ids=WRITTEN_IDS)
def test_an_expanded_written_tensor_is_refused_before_the_others_are_written(op, name):
    lists = fresh_lists(op)
    lists[name][1] = torch.randn(1).expand(SHAPES[1])
    before = snapshot(lists)
    with pytest.raises(ValueError, match="expanded view"):
        op.call(lists)
    assert_unchanged(lists, before, "refused call")


@pytest.mark.parametrize("op", FUSED, ids=IDS)
def test_an_expanded_read_tensor_is_accepted(op):
    lists = fresh_lists(op)
    read = next(k for k in op.lists if k not in op.written)
    lists[read][1] = torch.randn(1).expand(SHAPES[1])
    op.call(lists)


@pytest.mark.parametrize("op", FUSED, ids=IDS)
@pytest.mark.parametrize("position", [0, 1])
def test_a_meta_tensor_among_cpu_tensors_is_refused(op, position):
    for name in op.lists:
        lists = fresh_lists(op)
        lists[name][position] = torch.empty(lists[name][position].shape, device="meta")
        before = snapshot(lists)
        with pytest.raises(ValueError, match="meta"):
            op.call(lists)
        assert_unchanged(lists, before, f"{name}[{position}] on meta")


@pytest.mark.parametrize("op", FUSED, ids=IDS)
def test_all_meta_calls_trace(op):
    """Only meta tensors: the fake runs (shape propagation for torch.compile), nothing raised."""
    lists = {k: [torch.empty(s, device="meta") for s in SHAPES] for k in op.lists}
    op.call(lists)


def test_a_meta_mask_among_cpu_tensors_is_refused():
    p = torch.randn(6)
    before = p.clone()
    with pytest.raises(ValueError, match="meta"):
        ops.masked_sgd_step_(
            [p], [torch.randn(6)], [torch.randn(6)], 0.1, 0.9, masks=[torch.ones(6, dtype=torch.bool, device="meta")]
        )
    assert torch.equal(p, before)
