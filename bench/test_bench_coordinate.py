"""pytest-benchmark suite for the coordinate-wise ops (the same cases as ``robustagg bench``).

    pytest bench/ --benchmark-only                       # CPU cases; CUDA ones too where a GPU exists
    pytest bench/ --benchmark-only -m "not cuda"         # CPU only
    pytest bench/ --benchmark-only --benchmark-group-by=group --benchmark-sort=mean

Each group (device, n, d) holds robustagg's op, its plain-torch baseline,
byzfl's aggregator (when ``import byzfl`` works) and one read of the input
(``X.sum(0)``; on CUDA also a device-to-device copy), so pytest-benchmark's
table compares them side by side. Calls rotate over copies of the input that
together exceed the last-level cache (see ``robustagg.bench.time_fn``).
trimmed_mean and meamed use f = floor((n - 1) / 4).

Not collected by a plain ``pytest`` from the repository root (``testpaths =
["tests"]`` in pyproject.toml).
"""

from __future__ import annotations

import gc

import pytest
import torch

pytest.importorskip("pytest_benchmark")

import robustagg  # noqa: E402
from robustagg import bench as rb  # noqa: E402

CPU_N = (8, 25, 64)
CPU_D = 1_000_000
CUDA_N = (8, 25, 64)
CUDA_D = 16_000_000
DTYPE = torch.float32

OP_ROUNDS = 10  # robustagg, X.sum(0), copy
BASELINE_ROUNDS = 3  # torch / byzfl: 10x-100x slower

_has_cuda = torch.cuda.is_available() and robustagg.cuda_kernels_built()
_cuda = pytest.mark.cuda
_skip_no_cuda = pytest.mark.skipif(not _has_cuda, reason="needs a CUDA GPU and robustagg's CUDA kernels")

rb.pin_malloc()  # as `robustagg bench` does: results up to 32 MB reuse warm heap pages

_inputs_cache: dict[tuple, list[torch.Tensor]] = {}


def _inputs(device: str, n: int, d: int) -> list[torch.Tensor]:
    """Rotation set for (device, n, d); only the latest shape is kept alive."""
    key = (device, n, d)
    if key not in _inputs_cache:
        _inputs_cache.clear()
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        xbytes = n * d * torch.empty((), dtype=DTYPE).element_size()
        copies = rb.rotation_count(xbytes, torch.device(device), max(xbytes, rb.default_budget(device) // 4))
        _inputs_cache[key] = rb.make_inputs(n, d, DTYPE, device, copies=copies)
    return _inputs_cache[key]


def _cases():
    for device, ns, d in (("cpu", CPU_N, CPU_D), ("cuda", CUDA_N, CUDA_D)):
        marks = [_cuda, _skip_no_cuda] if device == "cuda" else []
        for n in ns:
            impls = ["read"] + (["copy"] if device == "cuda" else [])
            cases = [(impl, "-") for impl in impls]
            cases += [(impl, op) for op in rb.OPS for impl in ("robustagg", "torch", "byzfl")]
            for impl, op in cases:
                name = impl if op == "-" else f"{op}-{impl}"
                yield pytest.param(device, n, d, impl, op, marks=marks, id=f"{device}-n{n}-{name}")


def _function(impl: str, op: str, n: int):
    if impl == "read":
        return "X.sum(0)", lambda X: X.sum(0)
    if impl == "copy":
        return "empty_like(X).copy_(X)", lambda X: torch.empty_like(X).copy_(X)
    if impl == "robustagg":
        return f"robustagg.{op}", rb.op_callable(op, n)
    if impl == "torch":
        label, fn, _ = rb.torch_baseline(op, n)
        return label, fn
    if impl == "byzfl":
        b = rb.byzfl_baseline(op, n)
        if b is None:
            pytest.skip(rb.byzfl_status()[1])
        return b[0], b[1]
    raise ValueError(impl)


@pytest.mark.parametrize(("device", "n", "d", "impl", "op"), list(_cases()))
def test_bench(benchmark, device: str, n: int, d: int, impl: str, op: str) -> None:
    label, fn = _function(impl, op, n)
    inputs = _inputs(device, n, d)
    state = {"i": 0}

    def setup():
        x = inputs[state["i"] % len(inputs)]
        state["i"] += 1
        if device == "cuda":
            torch.cuda.synchronize()
        return (x,), {}

    def call(x):
        out = fn(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    xbytes = n * d * torch.empty((), dtype=DTYPE).element_size()
    benchmark.group = f"{device} n={n} d={d} float32"
    benchmark.name = f"{op} {impl}" if op != "-" else impl
    benchmark.extra_info.update(
        op=op, impl=impl, function=label, n=n, d=d, dtype="float32", device=device, input_bytes=xbytes, copies=len(inputs)
    )
    rounds = BASELINE_ROUNDS if impl in ("torch", "byzfl") else OP_ROUNDS
    out = benchmark.pedantic(call, setup=setup, rounds=rounds, warmup_rounds=1, iterations=1)
    expected = (n, d) if impl == "copy" else (d,)
    assert tuple(out.shape) == expected
    assert out.device.type == device
