"""The suite runner: a :class:`SuiteConfig` (devices, ops, grids per op family, dtypes, timing and memory
settings) run group by group, one group per input shape (device, dtype, n, d) shared by the ops whose
grids meet there. Per group it plans the baselines that fit the memory budget beside the rotation set,
calibrates the geometric median, measures CPU memory in one child process, then per op checks it against
the float64 reference and times it with one read of X (and on CUDA the copy) before its baselines; on CPU
the run first pins glibc malloc (:func:`~robustagg.bench.host.pin_malloc`). The result is the JSON
document that :mod:`.report` prints.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .calibration import calibrate_geometric_median, gm_summary
from .cases import ALL_OPS, byzfl_baseline, check_op, min_n, op_callable, op_f, op_family, op_params, torch_baseline
from .host import default_budget, environment, pin_malloc
from .memory import measure_cpu_memory, measure_cuda_memory
from .params import BUCKET_S, BUCKET_SEED, CC_ITERS, CC_TAU, DTYPES, GB, GM_MAX_ITER, GM_NU, GM_RTOL, GM_TOL, GM_TRIAL_T
from .report import fmt_d, fmt_mb
from .timing import make_inputs, rotation_count, time_interleaved

__all__ = ["SuiteConfig", "default_suite", "run_suite"]


@dataclass
class SuiteConfig:
    """One benchmark run: the grid and the timing settings."""

    devices: list[str] = field(default_factory=lambda: ["cpu"])
    ops: list[str] = field(default_factory=lambda: list(ALL_OPS))
    ns: dict[str, list[int]] = field(default_factory=dict)  # per device
    ds: dict[str, list[int]] = field(default_factory=dict)  # per device
    # per op family ("coordinate", "distance"), per device: (ns, ds) used instead of ns / ds
    family_grids: dict[str, dict[str, tuple[list[int], list[int]]]] = field(default_factory=dict)
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    repeats: int = 10
    warmup: int = 2
    max_seconds: float = 10.0  # per timed function: fewer repeats (>= 3) for slow baselines
    baselines: bool = True
    byzfl: bool = True
    memory: bool = True
    check: bool = True
    mem_budget_bytes: dict[str, int] = field(default_factory=dict)  # per device
    seed: int = 0
    quick: bool = False
    pin_malloc: bool = True  # see pin_malloc()

    def grid(self, family: str, device: str) -> tuple[list[int], list[int]]:
        """``(ns, ds)`` for an op family on a device."""
        return self.family_grids.get(family, {}).get(device) or (self.ns[device], self.ds[device])


def default_suite(device: str, quick: bool, family: str = "coordinate") -> tuple[list[int], list[int]]:
    """``(ns, ds)`` of the default grid for ``device`` and an op family (:func:`op_family`).

    The distance family's CPU grid is the one its performance targets are
    stated on (n = 10, 25, 64; d = 1M, 4M); its quick grid is one case,
    n = 25 at d = 100k, since its baselines (cdist, byzfl's NNM) take
    seconds per call at d = 1M and --quick must stay well under a minute.
    The catalogue family's grid is its targets' case, n = 10 (f = 2), at
    d = 1M and 2M.
    """
    if family == "catalogue":
        if device == "cuda":
            return [10], [16_000_000]
        return ([10], [100_000]) if quick else ([10], [1_000_000, 2_000_000])
    if device == "cuda":
        return ([8, 25], [16_000_000]) if quick else ([8, 25, 64, 128], [1_000_000, 16_000_000, 64_000_000])
    if family == "distance":
        return ([25], [100_000]) if quick else ([10, 25, 64], [1_000_000, 4_000_000])
    return ([8, 25], [1_000_000]) if quick else ([8, 25, 32, 64, 128], [4_000_000])


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _plan_baselines(
    cfg: SuiteConfig, ops_: Sequence[str], n: int, d: int, itemsize: int, resident: int, budget: int
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per op, per kind (torch / byzfl): ``{"name", "fn"}``, or ``{"name", "skipped"}`` when it would not fit."""
    plan: dict[str, dict[str, dict[str, Any]]] = {}
    for op in ops_:
        p: dict[str, dict[str, Any]] = {}
        if cfg.baselines:
            getters = [("torch", torch_baseline)] + ([("byzfl", byzfl_baseline)] if cfg.byzfl else [])
            for kind, getter in getters:
                b = getter(op, n)
                if b is None:
                    continue
                label, fn, est = b
                need = est(n, d, itemsize)
                if resident + need > budget:
                    p[kind] = {
                        "name": label,
                        "skipped": f"needs ~{need / GB:.1f} GB extra, budget {budget / GB:.1f} GB",
                    }
                else:
                    p[kind] = {"name": label, "fn": fn}
        plan[op] = p
    return plan


def _calibrate_gm(
    X: torch.Tensor, n: int, plan: dict[str, dict[str, Any]], progress: Callable[[str], None]
) -> dict[str, Any]:
    """:func:`calibrate_geometric_median` for the planned baselines; sets byzfl's entry to the T found."""
    with_torch = "fn" in plan.get("torch", {})
    with_byzfl = "fn" in plan.get("byzfl", {})
    t0 = time.perf_counter()
    try:
        gm = calibrate_geometric_median(X, torch_loop=with_torch, byzfl_search=with_byzfl)
    except (RuntimeError, MemoryError) as exc:
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        if with_byzfl:
            plan["byzfl"] = {"name": plan["byzfl"]["name"], "skipped": f"calibration failed: {why}"}
        return {"error": why}
    if "byzfl_T" in gm:
        label, fn, _ = byzfl_baseline("geometric_median", n, gm["byzfl_T"])
        plan["byzfl"] = {"name": label, "fn": fn}
    progress(f"  geometric_median calibrated in {time.perf_counter() - t0:.1f} s: {gm_summary(gm)}")
    return gm


def _run_group(
    cfg: SuiteConfig,
    dev_name: str,
    dt_name: str,
    n: int,
    d: int,
    ops_: Sequence[str],
    case_no: int,
    total: int,
    t_start: float,
    progress: Callable[[str], None],
    failed: list[str],
) -> list[dict[str, Any]]:
    """The ops ``ops_`` (and their baselines) on one (device, dtype, n, d); one progress line per op.

    An op that raises is listed in ``failed`` and the group goes on.
    """
    device = torch.device(dev_name)
    dtype = DTYPES[dt_name]
    itemsize = torch.empty((), dtype=dtype).element_size()
    xbytes = n * d * itemsize
    budget = cfg.mem_budget_bytes.get(dev_name) or default_budget(dev_name)
    if xbytes + 8 * d * itemsize > budget:  # the op itself: input + result + O(d) workspace
        raise _Skip(f"input {xbytes / GB:.2f} GB exceeds the memory budget {budget / GB:.2f} GB")

    copies = rotation_count(xbytes, device, max(xbytes, budget // 4))
    resident = copies * xbytes
    # the rotation set stays resident while the baselines run: a baseline runs only if its estimate fits beside it
    plan = _plan_baselines(cfg, ops_, n, d, itemsize, resident, budget)

    X = make_inputs(n, d, dtype, device, copies=1, seed=cfg.seed)[0]
    # byzfl's geometric median gets the T that reaches robustagg's objective on this input (also in the memory child)
    gm = _calibrate_gm(X, n, plan["geometric_median"], progress) if "geometric_median" in ops_ else None
    gm_T = gm.get("byzfl_T") if gm else None

    mem: dict[str, Any] = {}
    if cfg.memory and device.type == "cpu":
        calls = [(f"op:{op}", "op", op) for op in ops_]
        # --quick leaves out byzfl's memory (JSON only, not in the table): the child would import byzfl, ~4 s
        calls += [
            (f"{kind}:{op}", kind, op)
            for op, p in plan.items()
            for kind, b in p.items()
            if "fn" in b and not (cfg.quick and kind == "byzfl")
        ]
        mem = measure_cpu_memory(n, d, dt_name, calls, gm_iterations=gm_T)

    inputs = [X] + [X.clone() for _ in range(copies - 1)]
    timing = dict(repeats=cfg.repeats, warmup=cfg.warmup, max_seconds=cfg.max_seconds)
    read_fn = lambda X: X.sum(0)  # noqa: E731
    copy_fn = lambda X: torch.empty_like(X).copy_(X)  # noqa: E731
    with_copy = device.type == "cuda" and resident + xbytes <= budget
    rows = []
    for op in ops_:
        case_no += 1
        t_case = time.perf_counter()
        row: dict[str, Any] = {
            "op": op,
            "n": n,
            "d": d,
            "f": op_f(op, n),
            "params": op_params(op, n, d),
            "dtype": dt_name,
            "device": dev_name,
            "input_bytes": xbytes,
            "copies": copies,
        }
        if op == "geometric_median":
            row["gm"] = gm
        try:
            _time_op(
                cfg, row, plan[op], inputs, device, mem, timing, [read_fn] + ([copy_fn] if with_copy else []), progress
            )
        except (RuntimeError, MemoryError, ValueError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            why = str(exc).splitlines()[0][:200] if str(exc) else ""
            failed.append(f"{dev_name} {dt_name} n={n} d={d} {op}: {type(exc).__name__}: {why}")
            progress(f"FAILED: {failed[-1]}")
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        rows.append(row)
        bits = [f"{row['ms']:.3f} ms", f"{row['ratio_read']:.2f}x read"]
        for kind in ("torch", "byzfl"):
            e = row["baselines"].get(kind)
            if e is not None:
                bits.append(f"{e['speedup']:.1f}x vs {kind}" if "speedup" in e else f"{kind}: {e['skipped']}")
        if row.get("pct_copy") is not None:
            bits.append(f"{row['pct_copy']:.0f}% copy")
        if row.get("mem") and "extra_bytes" in row["mem"]:
            bits.append(f"extra {fmt_mb(row['mem']['extra_bytes'])} MB")
        progress(
            f"[{case_no}/{total}] {dev_name} {dt_name} n={n} d={fmt_d(d)} {op}: "
            + ", ".join(bits)
            + f"  ({time.perf_counter() - t_case:.1f} s, {time.perf_counter() - t_start:.0f} s total)"
        )
    return rows


def _time_op(
    cfg: SuiteConfig,
    row: dict[str, Any],
    plan: dict[str, dict[str, Any]],
    inputs: list[torch.Tensor],
    device: torch.device,
    mem: dict[str, Any],
    timing: dict[str, Any],
    floors: list[Callable[[torch.Tensor], Any]],
    progress: Callable[[str], None],
) -> None:
    """Check, time and measure one op and its baselines, filling ``row``."""
    op, n, xbytes, d = row["op"], row["n"], row["input_bytes"], row["d"]
    itemsize = xbytes // (n * d)
    if cfg.check:
        row["check"] = check_op(op, inputs[0])
        if row["check"] != "ok":
            progress(f"WARNING: {op} n={n} d={d} {row['dtype']} {row['device']}: {row['check']}")
    fn = op_callable(op, n)
    # the op, one read of X (and on CUDA the copy) timed in turn, so that the machine's load
    # (other processes on a shared host) weighs on all of them alike
    res = time_interleaved([fn] + floors, inputs, device, **timing)
    t, read = res[0], res[1]
    row.update(ms=t["ms"], min_ms=t["min_ms"], repeats=t["repeats"])
    row["gbps"] = xbytes / (t["ms"] * 1e-3) / 1e9
    row["read_ms"] = read["ms"]
    row["read_gbps"] = xbytes / (read["ms"] * 1e-3) / 1e9
    row["ratio_read"] = t["ms"] / read["ms"]
    row["ratio_read_min"] = t["min_ms"] / read["min_ms"]  # fastest call over fastest call: less sensitive to load
    if len(res) > 2:
        copy_bw = 2 * xbytes / (res[2]["ms"] * 1e-3)
        row["copy_ms"] = res[2]["ms"]
        row["copy_gbps"] = copy_bw / 1e9
        row["pct_copy"] = 100.0 * ((xbytes + d * itemsize) / (t["ms"] * 1e-3)) / copy_bw
    if cfg.memory:
        row["mem"] = measure_cuda_memory(fn, inputs[0]) if device.type == "cuda" else mem.get(f"op:{op}")
        if row["mem"] is not None:
            row["mem"]["method"] = "cuda max_memory_allocated" if device.type == "cuda" else "child process VmHWM"
    else:
        row["mem"] = None
    row["baselines"] = {}
    for kind, b in plan.items():
        entry: dict[str, Any] = {"name": b["name"]}
        if "fn" not in b:
            entry["skipped"] = b["skipped"]
        else:
            try:
                # the baseline, the op and one read in turn: each ratio compares calls of one run
                tb, to, tr = time_interleaved([b["fn"], fn, floors[0]], inputs, device, **timing)
                entry.update(
                    ms=tb["ms"], repeats=tb["repeats"], speedup=tb["ms"] / to["ms"], ratio_read=tb["ms"] / tr["ms"]
                )
                if cfg.memory:
                    entry["mem"] = (
                        measure_cuda_memory(b["fn"], inputs[0]) if device.type == "cuda" else mem.get(f"{kind}:{op}")
                    )
            except Exception as exc:  # noqa: BLE001  (a baseline failing, e.g. out of memory, is reported, not fatal)
                entry["skipped"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        row["baselines"][kind] = entry
        row[f"speedup_{kind}"] = entry.get("speedup")


class _Skip(Exception):
    pass


def _groups(cfg: SuiteConfig) -> tuple[list[tuple[str, str, int, int, list[str]]], list[str]]:
    """``(device, dtype, n, d, ops)`` per input shape, ops in ``cfg.ops`` order; and the cases skipped for their n.

    Ops of different families share a group (one input, one rotation set)
    where their grids meet.
    """
    where: dict[tuple[str, str, int, int], list[str]] = {}
    skipped: list[str] = []
    for dev in cfg.devices:
        for dt in cfg.dtypes:
            for op in cfg.ops:
                ns, ds = cfg.grid(op_family(op), dev)
                for d in ds:
                    for n in ns:
                        if n < min_n(op):
                            skipped.append(f"{dev} {dt} n={n} d={d}: {op} needs n >= {min_n(op)}")
                        else:
                            where.setdefault((dev, dt, n, d), []).append(op)
    order = sorted(where, key=lambda k: (cfg.devices.index(k[0]), cfg.dtypes.index(k[1]), k[3], k[2]))
    return [(dev, dt, n, d, where[(dev, dt, n, d)]) for dev, dt, n, d in order], skipped


def run_suite(cfg: SuiteConfig, progress: Callable[[str], None] = _progress) -> dict[str, Any]:
    """Run the grid; return ``{"env", "config", "rows", "skipped", "failed"}`` (the JSON document).

    A group (device, dtype, n, d) whose input does not fit the memory budget
    is listed in ``skipped`` (so is an op that the group's n does not admit);
    an op or group that raised (e.g. out of memory) in ``failed``, and the
    run goes on.
    """
    env = environment(cfg.devices)
    env["malloc"] = pin_malloc() if cfg.pin_malloc else "allocator default"
    rows: list[dict[str, Any]] = []
    groups, skipped = _groups(cfg)
    for s in skipped:
        progress(f"skip: {s}")
    failed: list[str] = []
    total = sum(len(g[4]) for g in groups)
    case_no = 0
    t_start = time.perf_counter()
    for dev_name, dt_name, n, d, ops_ in groups:
        try:
            rows += _run_group(cfg, dev_name, dt_name, n, d, ops_, case_no, total, t_start, progress, failed)
        except _Skip as exc:
            skipped.append(f"{dev_name} {dt_name} n={n} d={d}: {exc}")
            progress(f"skip: {skipped[-1]}")
        except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            why = str(exc).splitlines()[0][:200] if str(exc) else ""
            failed.append(f"{dev_name} {dt_name} n={n} d={d}: {type(exc).__name__}: {why}")
            progress(f"FAILED: {failed[-1]}")
        finally:
            case_no += len(ops_)
            gc.collect()
            if dev_name == "cuda":
                torch.cuda.empty_cache()
    config = {
        "devices": cfg.devices,
        "ops": cfg.ops,
        "n": cfg.ns,
        "d": cfg.ds,
        "family_grids": cfg.family_grids,
        "dtypes": cfg.dtypes,
        "repeats": cfg.repeats,
        "warmup": cfg.warmup,
        "max_seconds": cfg.max_seconds,
        "baselines": cfg.baselines,
        "byzfl": cfg.byzfl,
        "memory": cfg.memory,
        "quick": cfg.quick,
        "f": "floor((n - 1) / 4) for trimmed_mean and meamed; floor((n - 3) / 4) for krum, multi_krum, bulyan, nnm, arc",
        "distance_params": {
            "geometric_median": {
                "nu": GM_NU,
                "tol": GM_TOL,
                "max_iter": GM_MAX_ITER,
                "byzfl_rtol": GM_RTOL,
                "byzfl_trial_T": list(GM_TRIAL_T),
            },
            "centered_clip": {"tau": CC_TAU, "iters": CC_ITERS, "center": "zeros"},
            "bucketing": {"s": BUCKET_S, "seed": BUCKET_SEED},
            "clip": {"c": "sqrt(d)"},
            "multi_krum": {"m": "n - f"},
            "krum": {"m": 1},
        },
        "pin_malloc": cfg.pin_malloc,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    return {"env": env, "config": config, "rows": rows, "skipped": skipped, "failed": failed}
