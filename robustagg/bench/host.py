"""What the benchmark learns about and fixes on the machine it runs on: available and total memory
(``/proc/meminfo``), the last-level cache that input rotation must defeat (sysfs on CPU, the L2 on a
GPU), the CPU model, the memory budget of a run, glibc malloc's pinned mmap threshold, and the
environment a result depends on (versions, ISA, devices, threads), recorded in the JSON.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import os
import platform
from collections.abc import Sequence
from typing import Any

import torch

from .. import ops
from .byzfl_peer import byzfl_status
from .params import GB, MB

__all__ = [
    "cache_bytes",
    "cpu_available_bytes",
    "cpu_llc_bytes",
    "cpu_model",
    "default_budget",
    "environment",
    "pin_malloc",
]


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cpu_available_bytes() -> int:
    avail = _meminfo("MemAvailable")
    if avail is None:
        try:
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError):
            avail = 8 * GB
    return avail


def cpu_llc_bytes() -> int:
    """Size of the largest CPU cache level, from sysfs (32 MB when unknown)."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(base):
            try:
                with open(os.path.join(base, entry, "size")) as fh:
                    text = fh.read().strip()
            except OSError:
                continue
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
            num = text[:-1] if text[-1:].isalpha() else text
            best = max(best, int(num) * mult)
    except (OSError, ValueError):
        pass
    return best or 32 * MB


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_bytes(device: torch.device) -> int:
    """Last-level cache that the rotation must defeat: L3 on CPU, L2 on a GPU."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * MB))
    return cpu_llc_bytes()


def default_budget(device: str) -> int:
    """Memory a run may use: 60% of available RAM on CPU, 80% of free GPU memory on CUDA."""
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(0.8 * free)
    return int(0.6 * cpu_available_bytes())


_MALLOC_STATE = {"pinned": False}


def pin_malloc() -> str:
    """Make glibc malloc reuse freed buffers of up to 32 MB instead of page-faulting fresh ones.

    By default glibc raises its mmap threshold dynamically and trims the heap,
    so whether a ``(d,)`` result comes from warm heap pages or from a fresh
    mapping that page-faults on first touch depends on the allocation
    history: the same call then takes either its compute time or that plus
    thousands of page faults (about 2-8 us per 4 KB page in a VM: 2-8 ms for a
    4 MB result, as long as reading ~30 MB). Fixing the threshold at its
    maximum (32 MB) and switching trimming off gives every timed function the
    warm steady state that default glibc reaches most of the time; buffers
    above 32 MB (e.g. a sort's ``n x d`` temporaries) are still fresh mappings,
    as they always are with default glibc. Process-wide and irreversible;
    returns a description for the JSON.
    """
    if _MALLOC_STATE["pinned"]:
        return _MALLOC_STATE["desc"]
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        ok = libc.mallopt(M_MMAP_THRESHOLD, 32 * MB) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
        desc = "glibc mallopt: mmap threshold 32 MB, trim off" if ok else "glibc default (mallopt refused)"
    except (OSError, AttributeError):
        desc = "allocator default (no glibc)"
    _MALLOC_STATE.update(pinned=True, desc=desc)
    return desc


def environment(devices: Sequence[str]) -> dict[str, Any]:
    """What a result depends on: versions, ISA, device names, threads."""
    from .. import __version__

    env: dict[str, Any] = {
        "robustagg": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_kernel_isa": ops.cpu_kernel_isa(),
        "cuda_kernels_built": ops.cuda_kernels_built(),
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_llc_bytes": cpu_llc_bytes(),
        "mem_total_bytes": _meminfo("MemTotal"),
        "byzfl": byzfl_status()[1],
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
    }
    if "cuda" in devices and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["cuda_device"] = torch.cuda.get_device_name(0)
        env["cuda_version"] = torch.version.cuda
        env["cuda_memory_bytes"] = int(props.total_memory)
        env["cuda_l2_bytes"] = int(getattr(props, "L2_cache_size", 0))
    return env
