"""Correctness beyond 2**31 elements: CUDA results against the CPU kernels.

n * d = 40 * 60M = 2.4e9 float32 elements (9.6 GB), so any 32-bit index
arithmetic in a kernel would show as a mismatch in the last columns.
"""

import sys
import time

import torch

import robustagg as ra


def main() -> int:
    n, d = 40, 60_000_000
    gen = torch.Generator(device="cuda").manual_seed(1)
    Xc = torch.randn(n, d, device="cuda", generator=gen)
    X = Xc.cpu()
    failures = 0
    for name, call in [
        ("coordinate_median", lambda A: ra.coordinate_median(A)),
        ("trimmed_mean", lambda A: ra.trimmed_mean(A, 9)),
        ("meamed", lambda A: ra.meamed(A, 9)),
        ("mean", lambda A: ra.mean(A)),
    ]:
        t0 = time.perf_counter()
        got = call(Xc).cpu()
        want = call(X)
        same = torch.equal(got, want)
        failures += not same
        print(f"large {name} n={n} d={d}: {'equal' if same else 'MISMATCH'} ({time.perf_counter() - t0:.1f}s)")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
