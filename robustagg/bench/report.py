"""The output of a suite run: the fixed-width text table with its header lines for stdout
(:func:`format_table`) and the markdown table with a short header for docs/results/
(:func:`format_markdown`), both followed by the same notes: skipped and failed cases, skipped baselines,
check mismatches, each distance case's semantics (its note in :data:`~robustagg.bench.cases.CASES`) and
the geometric median's calibration.
"""

from __future__ import annotations

from typing import Any

from .calibration import gm_summary
from .cases import case
from .params import GB, MB

__all__ = ["fmt_d", "fmt_mb", "format_markdown", "format_table"]


def fmt_d(d: int) -> str:
    """``d`` as the table prints it: 4M, 100k, or the plain number."""
    if d >= 1_000_000 and d % 1_000_000 == 0:
        return f"{d // 1_000_000}M"
    if d >= 1000 and d % 1000 == 0:
        return f"{d // 1000}k"
    return str(d)


def fmt_mb(b: int | None) -> str:
    """Bytes in MB with one decimal; ``-`` for None."""
    if b is None:
        return "-"
    return f"{b / MB:.1f}"


_COLUMNS = [
    # (header, width, getter)
    ("op", 21, lambda r: r["op"]),
    ("n", 4, lambda r: str(r["n"])),
    ("d", 5, lambda r: fmt_d(r["d"])),
    ("dtype", 8, lambda r: r["dtype"]),
    ("dev", 4, lambda r: r["device"]),
    ("ms", 9, lambda r: f"{r['ms']:.3f}"),
    ("GB/s", 7, lambda r: f"{r['gbps']:.1f}"),
    ("x read", 6, lambda r: f"{r['ratio_read']:.2f}"),
    ("vs torch", 8, lambda r: _speedup(r, "torch")),
    ("vs byzfl", 8, lambda r: _speedup(r, "byzfl")),
    ("% copy", 6, lambda r: f"{r['pct_copy']:.0f}" if r.get("pct_copy") is not None else "-"),
    ("extra MB", 8, lambda r: _extra(r.get("mem"))),
    ("torch extra MB", 14, lambda r: _extra((r["baselines"].get("torch") or {}).get("mem"))),
]


def _speedup(r: dict[str, Any], kind: str) -> str:
    e = r["baselines"].get(kind)
    if e is None:
        return "-"
    if "speedup" in e:
        return f"{e['speedup']:.1f}x"
    return "skip"


def _extra(m: dict[str, Any] | None) -> str:
    if not m:
        return "-"
    if "extra_bytes" not in m:
        return "err"
    return fmt_mb(m["extra_bytes"])


def _header_lines(result: dict[str, Any]) -> list[str]:
    env = result["env"]
    lines = [
        f"robustagg {env['robustagg']}  torch {env['torch']}  python {env['python']}  {env['date']}",
        f"CPU: {env['cpu']} ({env['cpu_count']} cores, LLC {env['cpu_llc_bytes'] // MB} MB), torch threads {env['threads']}, "
        f"robustagg CPU ISA {env['cpu_kernel_isa']}, {env.get('malloc', '')}",
    ]
    if "cuda_device" in env:
        lines.append(
            f"GPU: {env['cuda_device']} ({env['cuda_memory_bytes'] / GB:.0f} GB, L2 {env['cuda_l2_bytes'] // MB} MB), "
            f"CUDA {env['cuda_version']}, CUDA kernels built: {env['cuda_kernels_built']}"
        )
    lines.append(f"peer library: {env['byzfl']}")
    lines.append(
        "ms = median time; GB/s = bytes of X / time; x read = time / X.sum(0) time (same run); "
        "vs torch/byzfl = their time / ours; % copy = (X + out bytes)/time over D2D copy bandwidth; "
        "extra MB = peak memory beyond the result; f = floor((n-1)/4) (trimmed_mean, meamed), "
        "floor((n-3)/4) (distance rules, nnm, arc)"
    )
    return lines


def _torch_names(result: dict[str, Any]) -> str:
    names: dict[str, str] = {}
    for r in result["rows"]:
        e = r["baselines"].get("torch")
        if e:
            names.setdefault(r["op"], e["name"])
    return "; ".join(f"{op}: {name}" for op, name in names.items())


def format_table(result: dict[str, Any]) -> str:
    """The fixed-width text table (with its header) for stdout."""
    out = _header_lines(result)
    names = _torch_names(result)
    if names:
        out.append(f"torch baselines: {names}")
    out.append("")
    out.append("  ".join(h.rjust(w) if i > 0 else h.ljust(w) for i, (h, w, _) in enumerate(_COLUMNS)))
    out.append("  ".join("-" * w for _, w, _ in _COLUMNS))
    for r in result["rows"]:
        cells = [g(r) for _, _, g in _COLUMNS]
        out.append(
            "  ".join(c.rjust(w) if i > 0 else c.ljust(w) for i, (c, (_, w, _)) in enumerate(zip(cells, _COLUMNS)))
        )
    notes = _notes(result)
    if notes:
        out.append("")
        out.extend(notes)
    return "\n".join(out) + "\n"


def _notes(result: dict[str, Any]) -> list[str]:
    notes = [f"skipped: {s}" for s in result["skipped"]] + [f"FAILED: {s}" for s in result.get("failed", [])]
    seen = set()
    for r in result["rows"]:
        for kind, e in r["baselines"].items():
            if "skipped" in e:
                key = (kind, r["op"], e["skipped"])
                if key not in seen:
                    seen.add(key)
                    notes.append(f"{kind} baseline for {r['op']} n={r['n']} d={fmt_d(r['d'])} skipped: {e['skipped']}")
        if r.get("check", "ok") != "ok":
            notes.append(f"CHECK {r['op']} n={r['n']} d={fmt_d(r['d'])} {r['dtype']} {r['device']}: {r['check']}")
    for op in dict.fromkeys(r["op"] for r in result["rows"]):
        note = case(op).note
        if note:
            notes.append(f"{op}: {note}.")
    for r in result["rows"]:
        if r.get("gm"):
            notes.append(
                f"geometric_median n={r['n']} d={fmt_d(r['d'])} {r['dtype']} {r['device']}: {gm_summary(r['gm'])}."
            )
    return notes


def format_markdown(result: dict[str, Any], command: str | None = None) -> str:
    """A markdown table with a short header, ready for docs/results/."""
    env = result["env"]
    devs = sorted({r["device"] for r in result["rows"]})
    has_cuda = "cuda" in devs
    has_byzfl = any("byzfl" in r["baselines"] for r in result["rows"])
    lines = []
    where = (
        env["cpu"]
        + f" ({env['cpu_count']} cores, {env['threads']} torch threads, robustagg CPU ISA {env['cpu_kernel_isa']})"
    )
    if has_cuda and "cuda_device" in env:
        where = f"{env['cuda_device']} (CUDA {env['cuda_version']}); host CPU {where}"
    lines.append(f"Device: {where}. robustagg {env['robustagg']}, torch {env['torch']}, {env['date']}.")
    lines.append("")
    if command:
        lines.append(f"Command: `{command}`")
        lines.append("")
    names = _torch_names(result)
    lines.append(
        "ms: median time. GB/s: bytes of X read per second. x read: time over one read of X (`X.sum(0)`) in the same run. "
        "vs torch"
        + (" / vs byzfl" if has_byzfl else "")
        + ": baseline time over ours, the two timed call by call in one loop"
        + (f" ({names})" if names else "")
        + ". extra MB: peak memory of one call beyond its result ((d,), or (n, d) for the pre-aggregators). "
        "f = floor((n-1)/4) for trimmed_mean and meamed, floor((n-3)/4) for the distance rules, nnm and arc."
        + (" % copy: (X + result bytes)/time as a share of the device-to-device copy bandwidth." if has_cuda else "")
    )
    lines.append("")
    head = ["op", "n", "d", "dtype"] + (["device"] if len(devs) > 1 else []) + ["ms", "GB/s", "x read", "vs torch"]
    head += ["vs byzfl"] if has_byzfl else []
    head += ["% copy"] if has_cuda else []
    head += ["extra MB", "torch extra MB"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" if i < 4 else "---:" for i in range(len(head))) + "|")
    for r in result["rows"]:
        cells = [r["op"], str(r["n"]), fmt_d(r["d"]), r["dtype"]] + ([r["device"]] if len(devs) > 1 else [])
        cells += [f"{r['ms']:.3f}", f"{r['gbps']:.1f}", f"{r['ratio_read']:.2f}", _speedup(r, "torch")]
        cells += [_speedup(r, "byzfl")] if has_byzfl else []
        cells += [f"{r['pct_copy']:.0f}" if r.get("pct_copy") is not None else "-"] if has_cuda else []
        cells += [_extra(r.get("mem")), _extra((r["baselines"].get("torch") or {}).get("mem"))]
        lines.append("| " + " | ".join(cells) + " |")
    notes = _notes(result)
    if notes:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines) + "\n"
