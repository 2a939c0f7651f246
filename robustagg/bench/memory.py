"""Peak extra memory of one call: the peak allocated during it beyond what existed before it, minus the
bytes of its result (``d * itemsize`` for a rule, the ``(n, d)`` rows of a pre-aggregator, the ``(n, n)``
float64 distances); the design goal is O(d), never a temporary of size ``n * d``. On CUDA from the caching
allocator's statistics (:func:`measure_cuda_memory`); on CPU, whose allocator keeps none, from the resident
set of a fresh child process (:func:`measure_cpu_memory`, which describes the method).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .byzfl_peer import byzfl_status
from .cases import byzfl_baseline, op_callable, torch_baseline
from .params import DTYPES
from .timing import make_inputs

__all__ = ["measure_cpu_memory", "measure_cuda_memory"]


def _out_bytes(out: Any) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, (tuple, list)):
        return sum(_out_bytes(o) for o in out)
    return 0


def measure_cuda_memory(fn: Callable[[torch.Tensor], Any], X: torch.Tensor) -> dict[str, int]:
    """Peak bytes allocated by one call of ``fn(X)`` on CUDA (result included) and the result's bytes.

    ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats``,
    minus ``memory_allocated()`` before the call (exact logical bytes, in the
    caching allocator's 512-byte granules).
    """
    out = fn(X)  # warm-up (lazy one-time buffers)
    del out
    torch.cuda.synchronize(X.device)
    base = torch.cuda.memory_allocated(X.device)
    torch.cuda.reset_peak_memory_stats(X.device)
    out = fn(X)
    torch.cuda.synchronize(X.device)
    peak = torch.cuda.max_memory_allocated(X.device) - base
    ob = _out_bytes(out)
    del out
    return {"peak_bytes": int(peak), "out_bytes": int(ob), "extra_bytes": int(max(0, peak - ob))}


def _fn_for(kind: str, op: str, n: int, gm_iterations: int | None = None) -> Callable[[torch.Tensor], Any] | None:
    if kind == "op":
        return op_callable(op, n)
    if kind == "torch":
        return torch_baseline(op, n)[1]
    if kind == "byzfl":
        b = byzfl_baseline(op, n, gm_iterations)
        return None if b is None else b[1]
    if kind == "read":
        return lambda X: X.sum(0)
    raise ValueError(kind)


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _cpu_memory_child(spec_json: str) -> None:
    """Child side of :func:`measure_cpu_memory`: prints one JSON object on stdout."""
    spec = json.loads(spec_json)
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_MMAP_THRESHOLD = -3
        libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    except OSError:
        pass
    torch.set_num_threads(int(spec["threads"]))
    n, d = int(spec["n"]), int(spec["d"])
    X = make_inputs(n, d, DTYPES[spec["dtype"]], "cpu", copies=1, seed=int(spec.get("seed", 0)))[0]
    if any(kind == "byzfl" for _, kind, _ in spec["calls"]):
        byzfl_status()
    # the modules imported so far (byzfl's are many) stay out of the collections below: each took ~0.2 s
    gc.freeze()
    results: dict[str, Any] = {}
    for key, kind, op in spec["calls"]:
        fn = _fn_for(kind, op, n, spec.get("gm_iterations"))
        if fn is None:
            continue
        try:
            # robustagg's ops (cheap): one warm-up call and the smaller of two measurements;
            # the slow baselines: one measurement (the ops' warm-up already started the thread pool)
            tries = 2 if kind in ("op", "read") else 1
            if tries == 2:
                out = fn(X)
                del out
                gc.collect()
            best = None
            for _ in range(tries):
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
                base = _status_bytes("VmRSS")
                out = fn(X)
                peak = _status_bytes("VmHWM") - base
                ob = _out_bytes(out)
                del out
                gc.collect()
                best = peak if best is None else min(best, peak)
            page = os.sysconf("SC_PAGE_SIZE")
            ob_pages = -(-ob // page) * page  # the result occupies whole pages
            results[key] = {"peak_bytes": int(best), "out_bytes": int(ob), "extra_bytes": int(max(0, best - ob_pages))}
        except Exception as exc:  # noqa: BLE001
            results[key] = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(results) + "\n")


def measure_cpu_memory(
    n: int,
    d: int,
    dtype: str,
    calls: Sequence[tuple[str, str, str]],
    threads: int | None = None,
    timeout: float = 1800,
    gm_iterations: int | None = None,
) -> dict[str, Any]:
    """Peak extra CPU memory of several calls on one ``(n, d)`` input, measured in a fresh process.

    ``calls`` holds ``(key, kind, op)`` with kind ``op``, ``torch``, ``byzfl`` or
    ``read``; ``gm_iterations`` is byzfl's geometric-median T. Returns
    ``{key: {"peak_bytes", "out_bytes", "extra_bytes"}}`` (or
    ``{"error": ...}``).

    torch's CPU allocator has no statistics, ``tracemalloc`` does not see
    it, and the profiler's ``profile_memory`` turned out not to record the
    allocations made inside these ops. So each shape is measured in a fresh
    child process that first fixes glibc's mmap threshold at 64 KiB
    (``mallopt(M_MMAP_THRESHOLD)``, which also turns off its dynamic raise),
    so every buffer of 64 KiB or more is a fresh mapping that counts in the
    resident set once touched and leaves it when freed; then, per call,
    resets the peak resident set size (``5 > /proc/self/clear_refs``), reads
    ``VmRSS``, makes the call and reads ``VmHWM``. Peak extra =
    ``VmHWM - VmRSS(before)`` minus the result's pages. robustagg's ops are
    measured first, each after one untimed warm-up call (so one-time costs
    such as the thread pool are not counted), keeping the smaller of two
    measurements; the slow baselines once each. Buffers below 64 KiB that
    glibc serves from already-resident heap are not seen, which is immaterial
    next to the question asked (O(d) or O(n d)). A buffer that is allocated
    but never touched is not counted either (it costs no memory).
    """
    spec = {
        "n": n,
        "d": d,
        "dtype": dtype,
        "threads": threads or torch.get_num_threads(),
        "calls": list(calls),
        "gm_iterations": gm_iterations,
    }
    pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    code = "import sys; from robustagg.bench.memory import _cpu_memory_child; _cpu_memory_child(sys.argv[1])"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {key: {"error": "memory child timed out"} for key, _, _ in calls}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {key: {"error": f"memory child failed: {tail[0]}"} for key, _, _ in calls}
    return json.loads(lines[-1])
