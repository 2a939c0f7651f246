"""pytest-benchmark suite: the cases of ``robustagg bench``, coordinate-wise and distance ops.

    pytest bench/test_bench_ops.py --benchmark-only                  # CPU cases; CUDA ones too where a GPU exists
    pytest bench/test_bench_ops.py --benchmark-only -m "not cuda"    # CPU only
    pytest bench/test_bench_ops.py --benchmark-only -k distance --benchmark-group-by=group --benchmark-sort=mean

Each group (device, n, d) holds robustagg's op, its plain-torch baseline,
byzfl's aggregator (when ``import byzfl`` works and it has one) and one read
of the input (``X.sum(0)``; on CUDA also a device-to-device copy), so
pytest-benchmark's table compares them side by side. Calls rotate over copies
of the input that together exceed the last-level cache (see
``robustagg.bench.timing.time_fn``). Parameters as in ``robustagg.bench.cases``: f =
floor((n - 1) / 4) for the coordinate rules and floor((n - 3) / 4) for the
distance rules, Krum m = 1, Multi-Krum m = n - f, geometric median tol
1e-10, centered clipping tau 1 and 3 iterations from 0, bucketing s = 2,
clip c = sqrt(d). byzfl's geometric median runs for the T that reaches
robustagg's objective (found untimed once per shape; recorded in extra_info).
A baseline whose memory estimate does not fit beside the inputs is skipped.

Not collected by a plain ``pytest`` from the repository root (``testpaths =
["tests"]`` in pyproject.toml).
"""

from __future__ import annotations

import gc

import pytest
import torch

pytest.importorskip("pytest_benchmark")

import robustagg  # noqa: E402
from robustagg.bench.byzfl_peer import byzfl_status  # noqa: E402
from robustagg.bench.calibration import calibrate_geometric_median  # noqa: E402
from robustagg.bench.cases import (  # noqa: E402
    DISTANCE_OPS,
    OPS,
    byzfl_baseline,
    op_callable,
    op_params,
    torch_baseline,
)
from robustagg.bench.host import default_budget, pin_malloc  # noqa: E402
from robustagg.bench.params import GB  # noqa: E402
from robustagg.bench.timing import make_inputs, rotation_count  # noqa: E402

# (family, ops, CPU n, CUDA n): the grids of `robustagg bench` at one d per device.
FAMILIES = (("coordinate", OPS, (8, 25, 64), (8, 25, 64)), ("distance", DISTANCE_OPS, (10, 25, 64), (10, 25, 64)))
CPU_D = 1_000_000
CUDA_D = 16_000_000
DTYPE = torch.float32

OP_ROUNDS = 10  # robustagg, X.sum(0), copy
BASELINE_ROUNDS = 3  # torch / byzfl: 10x-100x slower

_has_cuda = torch.cuda.is_available() and robustagg.cuda_kernels_built()
_cuda = pytest.mark.cuda
_skip_no_cuda = pytest.mark.skipif(not _has_cuda, reason="needs a CUDA GPU and robustagg's CUDA kernels")

pin_malloc()  # as `robustagg bench` does: results up to 32 MB reuse warm heap pages

_inputs_cache: dict[tuple, list[torch.Tensor]] = {}
_gm_cache: dict[tuple, dict] = {}


def _inputs(device: str, n: int, d: int) -> list[torch.Tensor]:
    """Rotation set for (device, n, d); only the latest shape is kept alive."""
    key = (device, n, d)
    if key not in _inputs_cache:
        _inputs_cache.clear()
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        copies = rotation_count(_xbytes(n, d), torch.device(device), max(_xbytes(n, d), default_budget(device) // 4))
        _inputs_cache[key] = make_inputs(n, d, DTYPE, device, copies=copies)
    return _inputs_cache[key]


def _xbytes(n: int, d: int) -> int:
    return n * d * torch.empty((), dtype=DTYPE).element_size()


def _gm_calibration(device: str, n: int, d: int, X: torch.Tensor) -> dict:
    key = (device, n, d)
    if key not in _gm_cache:
        _gm_cache[key] = calibrate_geometric_median(X, torch_loop=False)
    return _gm_cache[key]


def _cases():
    for family, ops, cpu_n, cuda_n in FAMILIES:
        for device, ns, d in (("cpu", cpu_n, CPU_D), ("cuda", cuda_n, CUDA_D)):
            marks = [_cuda, _skip_no_cuda] if device == "cuda" else []
            for n in ns:
                impls = ["read"] + (["copy"] if device == "cuda" else [])
                cases = [(impl, "-") for impl in impls]
                cases += [(impl, op) for op in ops for impl in ("robustagg", "torch", "byzfl")]
                for impl, op in cases:
                    name = impl if op == "-" else f"{op}-{impl}"
                    yield pytest.param(device, n, d, impl, op, marks=marks, id=f"{family}-{device}-n{n}-{name}")


def _function(impl: str, op: str, device: str, n: int, d: int, inputs: list[torch.Tensor]):
    """``(label, fn, extra_info)``; skips a baseline that byzfl lacks or that would not fit in memory."""
    if impl == "read":
        return "X.sum(0)", lambda X: X.sum(0), {}
    if impl == "copy":
        return "empty_like(X).copy_(X)", lambda X: torch.empty_like(X).copy_(X), {}
    if impl == "robustagg":
        return f"robustagg.{op}", op_callable(op, n), {"params": op_params(op, n, d)}
    info: dict = {}
    if impl == "torch":
        label, fn, est = torch_baseline(op, n)
    elif impl == "byzfl":
        if byzfl_status()[0] is None:
            pytest.skip(byzfl_status()[1])
        T = None
        if op == "geometric_median":
            info = _gm_calibration(device, n, d, inputs[0])
            T = info["byzfl_T"]
        b = byzfl_baseline(op, n, T)
        if b is None:
            pytest.skip(f"byzfl has no {op}")
        label, fn, est = b
    else:
        raise ValueError(impl)
    need = est(n, d, torch.empty((), dtype=DTYPE).element_size())
    budget = default_budget(device)
    if len(inputs) * _xbytes(n, d) + need > budget:
        pytest.skip(f"{label} needs ~{need / GB:.1f} GB beside the inputs, budget {budget / GB:.1f} GB")
    return label, fn, info


@pytest.mark.parametrize(("device", "n", "d", "impl", "op"), list(_cases()))
def test_bench(benchmark, device: str, n: int, d: int, impl: str, op: str) -> None:
    inputs = _inputs(device, n, d)
    label, fn, info = _function(impl, op, device, n, d, inputs)
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

    benchmark.group = f"{device} n={n} d={d} float32"
    benchmark.name = f"{op} {impl}" if op != "-" else impl
    benchmark.extra_info.update(
        op=op,
        impl=impl,
        function=label,
        n=n,
        d=d,
        dtype="float32",
        device=device,
        input_bytes=_xbytes(n, d),
        copies=len(inputs),
        **info,
    )
    rounds = BASELINE_ROUNDS if impl in ("torch", "byzfl") else OP_ROUNDS
    out = benchmark.pedantic(call, setup=setup, rounds=rounds, warmup_rounds=1, iterations=1)
    assert out.device.type == device
