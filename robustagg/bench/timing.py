"""Timing: warm up, then the median of the repeats. Inputs smaller than the rotation target
(``max(256 MB, 4 x last-level cache)``, the L3 on CPU, the L2 on GPU) are cloned and the calls rotate over
the copies so that no timed call finds its input in the cache; an input of 256 MB or more is used alone.
On CUDA each call is bracketed with ``torch.cuda.Event``\\ s. Several functions (the op, ``X.sum(0)`` and on
CUDA the copy) are timed in turn, call by call (:func:`time_interleaved`), so that load from other
processes on a shared host weighs on the op and its floor alike.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .host import cache_bytes
from .params import MB

__all__ = ["MAX_ROTATION_COPIES", "ROTATION_MIN_BYTES", "make_inputs", "rotation_count", "time_fn", "time_interleaved"]

ROTATION_MIN_BYTES = 256 * MB
MAX_ROTATION_COPIES = 512


def rotation_count(input_bytes: int, device: torch.device, budget_bytes: int) -> int:
    """How many copies of an input to rotate over.

    Enough that together they exceed ``max(256 MB, 4 x cache)``; one when the
    input alone is at least 256 MB; never more than the budget holds (at least
    one) nor more than 512 copies.
    """
    if input_bytes >= ROTATION_MIN_BYTES:
        return 1
    target = max(ROTATION_MIN_BYTES, 4 * cache_bytes(device))
    want = math.ceil(target / max(input_bytes, 1))
    fit = max(1, budget_bytes // max(input_bytes, 1))
    return int(max(1, min(want, fit, MAX_ROTATION_COPIES)))


def make_inputs(
    n: int, d: int, dtype: torch.dtype, device: str | torch.device, copies: int = 1, seed: int = 0
) -> list[torch.Tensor]:
    """``copies`` distinct ``(n, d)`` tensors holding the same standard-normal values."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    X = torch.randn(
        n, d, generator=gen, device=device, dtype=torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    )
    X = X.to(dtype)
    return [X] + [X.clone() for _ in range(copies - 1)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[torch.Tensor], Any], inputs: Sequence[torch.Tensor], device: str | torch.device, **options: Any
) -> dict[str, Any]:
    """Time ``fn`` on ``inputs`` and return ``{"ms": median, "min_ms", "repeats", "times_ms"}``.

    Calls rotate over ``inputs`` (pass several copies of an input smaller
    than the caches; see :func:`rotation_count`), so consecutive calls never
    reuse a cache-resident input. ``options`` are :func:`time_interleaved`'s:
    ``warmup`` untimed calls first (at least one); with ``max_seconds``, fewer
    repeats (not below ``min_repeats``) and warm-ups are made when one call is
    slow. On CUDA each call is bracketed by CUDA events; on CPU by
    ``time.perf_counter``.
    """
    return time_interleaved([fn], inputs, device, **options)[0]


def time_interleaved(
    fns: Sequence[Callable[[torch.Tensor], Any]],
    inputs: Sequence[torch.Tensor],
    device: str | torch.device,
    repeats: int = 10,
    warmup: int = 2,
    max_seconds: float | None = None,
    min_repeats: int = 3,
) -> list[dict[str, Any]]:
    """:func:`time_fn` for several functions at once, their calls taken in turn.

    Round ``r`` times one call of each function, so a change in the machine's
    load (other processes on a shared host) hits all of them alike: the
    ratio of their medians is what to quote. The calls share one rotation
    over ``inputs``. ``max_seconds`` applies to all the functions together.
    """
    device = torch.device(device)
    inputs = list(inputs)
    if not inputs:
        raise ValueError("time_fn: no inputs")
    k = len(inputs)
    counter = 0

    def next_input() -> torch.Tensor:
        nonlocal counter
        x = inputs[counter % k]
        counter += 1
        return x

    first = [math.inf] * len(fns)
    for i, fn in enumerate(fns):
        for w in range(max(1, warmup)):
            x = next_input()
            _sync(device)
            t0 = time.perf_counter()
            out = fn(x)
            _sync(device)
            dt = time.perf_counter() - t0
            del out
            first[i] = min(first[i], dt)
            if max_seconds is not None and dt * (w + 1) >= max_seconds / 4:
                break
    n_rep = max(1, repeats)
    per_round = sum(first)
    if max_seconds is not None and per_round > 0:
        n_rep = max(min(repeats, min_repeats), min(repeats, int(max_seconds / per_round)))
    times: list[list[float]] = [[] for _ in fns]
    if device.type == "cuda":
        events = [
            [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in fns]
            for _ in range(n_rep)
        ]
        _sync(device)
        for r in range(n_rep):
            for i, fn in enumerate(fns):
                start, end = events[r][i]
                x = next_input()
                start.record()
                out = fn(x)
                end.record()
                del out
        _sync(device)
        for r in range(n_rep):
            for i in range(len(fns)):
                start, end = events[r][i]
                times[i].append(start.elapsed_time(end))
    else:
        for _ in range(n_rep):
            for i, fn in enumerate(fns):
                x = next_input()
                t0 = time.perf_counter()
                out = fn(x)
                t1 = time.perf_counter()
                del out
                times[i].append((t1 - t0) * 1e3)
    return [{"ms": statistics.median(t), "min_ms": min(t), "repeats": n_rep, "times_ms": t} for t in times]
