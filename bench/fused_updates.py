"""Time the fused multi-tensor updates against PyTorch's foreach ops and one read.

    python bench/fused_updates.py                       # CPU, prints a table
    python bench/fused_updates.py --markdown docs/results/cpu-updates.md
    python bench/fused_updates.py --device cuda

Cases are tensor lists shaped like real uses: the n = 25 workers' momentum
buffers of the digits MLP (one (25, 4810) matrix, or 25 x 4 parameter
tensors), 25 rows of 1M, and 100 tensors of 100k. For each case: the
median time of ``robustagg.ops.momentum_update_`` (beta = 0.9), of the
foreach pair ``torch._foreach_mul_(m, beta); torch._foreach_add_(m, g,
alpha=1 - beta)`` that computes the same update, and of one read of the
buffers (``torch._foreach_norm``, on CUDA also a device-to-device copy of
the buffers); GB/s counts the bytes the update must move (read m and g,
write m). Calls rotate over copies whose total exceeds the last-level cache.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import robustagg  # noqa: E402
from robustagg import bench as rb  # noqa: E402
from robustagg.ops import momentum_update_  # noqa: E402

BETA = 0.9
CASES = {
    "digits MLP, 25 workers as one matrix": [(25, 4810)],
    "digits MLP, 25 workers x 4 tensors": [(64, 64), (64,), (10, 64), (10,)] * 25,
    "25 rows of 1M": [(1_000_000,)] * 25,
    "100 tensors of 100k": [(100_000,)] * 100,
}


def _lists(shapes, device, copies, gen):
    return [
        ([torch.randn(s, generator=gen).to(device) for s in shapes], [torch.randn(s, generator=gen).to(device) for s in shapes])
        for _ in range(copies)
    ]


def _time(fn, sets, device, repeats):
    for m, g in sets[:2]:
        fn(m, g)
    times = []
    for k in range(repeats * len(sets)):
        m, g = sets[k % len(sets)]
        rb._sync(device)
        t = time.perf_counter()
        fn(m, g)
        rb._sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _foreach(m, g):
    torch._foreach_mul_(m, BETA)
    torch._foreach_add_(m, g, alpha=1 - BETA)


def run(device: str, repeats: int) -> list[dict]:
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name, shapes in CASES.items():
        nbytes = sum(torch.Size(s).numel() for s in shapes) * 4
        copies = max(2, min(64, -(-4 * rb.cache_bytes(dev) // (2 * nbytes))))
        sets = _lists(shapes, device, copies, gen)
        fns = {
            "robustagg": lambda m, g: momentum_update_(m, g, BETA),
            "foreach mul_ + add_": _foreach,
            "one read": lambda m, g: torch._foreach_norm(m),
        }
        if device == "cuda":
            fns["copy"] = lambda m, g: torch._foreach_copy_(g, m)
        t = {k: _time(fn, sets, dev, repeats) for k, fn in fns.items()}
        row = {
            "case": name,
            "tensors": len(shapes),
            "MB": nbytes / 1e6,
            "robustagg_ms": 1e3 * t["robustagg"],
            "GB/s": 3 * nbytes / t["robustagg"] / 1e9,
            "x_one_read": t["robustagg"] / t["one read"],
            "speedup_vs_foreach": t["foreach mul_ + add_"] / t["robustagg"],
        }
        if "copy" in t:
            row["copy_share"] = (3 * nbytes / t["robustagg"]) / (2 * nbytes / t["copy"])
        rows.append(row)
        print(f"{name}: {row['robustagg_ms']:.3f} ms, {row['GB/s']:.1f} GB/s, {row['x_one_read']:.2f}x one read, "
              f"{row['speedup_vs_foreach']:.2f}x foreach", file=sys.stderr)
    return rows


def markdown(rows: list[dict], device: str, command: str) -> str:
    copy = "copy_share" in rows[0]
    head = "| case | tensors | MB of m | time (ms) | GB/s (3 streams) | time / one read of m | speed-up over foreach |"
    lines = [
        f"# Fused updates on {rb.cpu_model() if device == 'cpu' else torch.cuda.get_device_name()}",
        "",
        f"`{command}`, float32, beta = {BETA}, torch {torch.__version__}, {torch.get_num_threads()} threads. "
        "One read of m: `torch._foreach_norm(m)`; foreach: `torch._foreach_mul_(m, beta)` then "
        "`torch._foreach_add_(m, g, alpha=1 - beta)` (same update, two passes).",
        "",
        head + (" share of copy bandwidth |" if copy else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if copy else ""),
    ]
    for r in rows:
        line = (f"| {r['case']} | {r['tensors']} | {r['MB']:.1f} | {r['robustagg_ms']:.3f} | {r['GB/s']:.1f} | "
                f"{r['x_one_read']:.2f} | {r['speedup_vs_foreach']:.2f} |")
        lines.append(line + (f" {r['copy_share']:.2f} |" if copy else ""))
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--markdown", metavar="PATH")
    args = p.parse_args()
    if args.device == "cuda" and not (torch.cuda.is_available() and robustagg.cuda_kernels_built()):
        print("fused_updates: no CUDA GPU or no CUDA kernels", file=sys.stderr)
        return 2
    rows = run(args.device, args.repeats)
    text = markdown(rows, args.device, "python " + " ".join(sys.argv))
    print(text)
    if args.markdown:
        os.makedirs(os.path.dirname(args.markdown) or ".", exist_ok=True)
        with open(args.markdown, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
