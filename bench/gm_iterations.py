"""Cost of the geometric median against its number of Weiszfeld iterations.

robustagg iterates in coefficient space on the (n, n) distance matrix, so its
cost should stay near two reads of X for any iteration count; an X-space loop
(plain torch, byzfl) reads X once per iteration. Each row runs exactly T
updates (``tol=0``), times the median of repeats interleaved with one read of
X (``X.sum(0)``), and reports both as multiples of that read.

    python bench/gm_iterations.py --n 25 --d 1000000 --T 1 3 10 30 100
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import robustagg as ra
from robustagg.bench.host import pin_malloc
from robustagg.bench.params import GM_NU


def torch_weiszfeld(X: torch.Tensor, T: int) -> torch.Tensor:
    """T smoothed Weiszfeld updates in X space, from the mean (one read of X per distance pass)."""
    z = X.mean(0)
    for _ in range(T):
        b = 1.0 / torch.linalg.vector_norm(X - z, dim=1).clamp_min(GM_NU)
        z = (b[:, None] * X).sum(0) / b.sum()
    return z


def byzfl_gm(T: int):
    try:
        from byzfl import GeometricMedian
    except ImportError:
        return None
    agg = GeometricMedian(nu=GM_NU, T=T)
    return lambda X: agg(X)


def interleaved(fns: dict[str, object], X: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of each function, called in turn so that machine load weighs on all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn(X)  # warm-up
    for _ in range(repeats):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn(X)
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=25)
    p.add_argument("--d", type=int, default=1_000_000)
    p.add_argument("--T", type=int, nargs="+", default=[1, 3, 10, 30, 100])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    pin_malloc()
    torch.manual_seed(0)
    X = torch.randn(args.n, args.d)
    print(f"n = {args.n}, d = {args.d:,}, float32, {torch.get_num_threads()} threads; times in reads of X")
    print("| T | robustagg | torch X-space loop | byzfl GeometricMedian | robustagg vs byzfl |")
    print("|---:|---:|---:|---:|---:|")
    for T in args.T:
        fns = {
            "read": lambda A: A.sum(0),
            "robustagg": lambda A, T=T: ra.geometric_median(A, tol=0.0, max_iter=T, nu=GM_NU),
            "torch": lambda A, T=T: torch_weiszfeld(A, T),
        }
        byz = byzfl_gm(T)
        if byz is not None:
            fns["byzfl"] = byz
        s = interleaved(fns, X, args.repeats)
        read = s["read"]
        byz_cell = f"{s['byzfl'] / read:.1f}" if "byzfl" in s else "-"
        ratio = f"{s['byzfl'] / s['robustagg']:.0f}x" if "byzfl" in s else "-"
        print(f"| {T} | {s['robustagg'] / read:.2f} | {s['torch'] / read:.1f} | {byz_cell} | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
