"""Small calls of every CUDA kernel, for compute-sanitizer (memcheck, racecheck).

Covers each kernel instantiation: register kernels (n <= 8, 16, 32, 64), the
shared-memory tile kernel (n > 64, and n > 32 for float64), every mode, every
dtype, tails (d not a multiple of the block), strided rows, and the mean
with and without weights. Exits non-zero if a result differs from the CPU op.
"""

import sys

import torch

import robustagg as ra


def main() -> int:
    torch.manual_seed(0)
    failures = 0
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for n in (1, 5, 8, 13, 25, 33, 64, 65, 100):
            X = torch.randn(n, 2 * 301, dtype=torch.float64).to(dtype)[:, ::2]  # strided, d = 301
            X[0, :3] = float("nan")
            X[-1, 3:6] = float("inf")
            f = (n - 1) // 3
            Xc = X.cuda()
            calls = [
                ("coordinate_median", lambda A: ra.coordinate_median(A)),
                ("trimmed_mean", lambda A: ra.trimmed_mean(A, f)),
                ("meamed", lambda A: ra.meamed(A, f)),
                ("mean", lambda A: ra.mean(A)),
                ("mean(weights)", lambda A: ra.mean(A, torch.arange(1.0, n + 1, device=A.device))),
            ]
            for name, call in calls:
                got = call(Xc).cpu()
                want = call(X)
                if not torch.equal(got.isnan(), want.isnan()) or not torch.equal(got.nan_to_num(), want.nan_to_num()):
                    failures += 1
                    print(f"MISMATCH {name} dtype={dtype} n={n}", file=sys.stderr)
    torch.cuda.synchronize()
    print(f"gpu_sanitize: {failures} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
