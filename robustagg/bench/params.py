"""The benchmark's fixed parameters: the dtypes by name, the f of each op family, the constants of the
distance cases, byte units, and the small helpers that every implementation of a case shares (the zero
center, the seeded bucketing generator, the clipping radius), so that ours, the baselines and the
reference see the same inputs. Light on purpose: the command-line parser imports it for :data:`DTYPES`.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "BUCKET_S",
    "BUCKET_SEED",
    "CC_ITERS",
    "CC_TAU",
    "DRAW_SEED",
    "DNC_SUBSAMPLE",
    "DTYPES",
    "GB",
    "GM_MAX_ITER",
    "GM_NU",
    "GM_RTOL",
    "GM_TOL",
    "GM_TRIAL_T",
    "MB",
    "bucket_generator",
    "catalogue_f",
    "clip_c",
    "dist_f",
    "draw_generator",
    "trim_f",
    "zeros_center",
]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}

MB = 1 << 20
GB = 1 << 30

# Parameters of the distance cases.
GM_NU = 1e-6
GM_TOL = 1e-10
GM_MAX_ITER = 200
GM_RTOL = 1e-9  # byzfl's geometric median reaches robustagg's objective F once its own is <= F * (1 + GM_RTOL)
GM_TRIAL_T = (1, 2, 3, 5, 10, 20, 50, 100, 200)
CC_TAU = 1.0
CC_ITERS = 3
BUCKET_S = 2
BUCKET_SEED = 0


def trim_f(n: int) -> int:
    """The number of workers trimmed on each side in the benchmarks: ``floor((n - 1) / 4)``."""
    return (n - 1) // 4


def dist_f(n: int) -> int:
    """f for the distance rules and pre-aggregators: ``floor((n - 3) / 4)`` (0 below n = 3).

    The largest f with Bulyan's ``n >= 4f + 3``; Krum's ``n > 2f + 2``, NNM's
    ``f < n`` and ARC's ``n > 2f`` then hold as well (for n >= 3).
    """
    return max(0, (n - 3) // 4)


def catalogue_f(n: int) -> int:
    """f for the catalogue's rules (MDA, MoNNA, SMEA, CAF, DnC): ``floor((n - 1) / 4)``, 2 at n = 10 (their
    targets' case) and within MDA's and SMEA's ``n > 2f``."""
    return max(0, (n - 1) // 4)


DNC_SUBSAMPLE = 10000
DRAW_SEED = 0


def draw_generator() -> torch.Generator:
    """DnC's and SignGuard's coordinate draws: a CPU generator seeded per call, the same for ours, torch's way
    and the reference."""
    return torch.Generator().manual_seed(DRAW_SEED)


def zeros_center(X: torch.Tensor) -> torch.Tensor:
    """Centered clipping's start: the zero vector of X's dtype and device."""
    return torch.zeros(X.shape[1], dtype=X.dtype, device=X.device)


def bucket_generator() -> torch.Generator:
    """A generator seeded per call, so that every call (the baseline's and the check's too) draws one permutation."""
    return torch.Generator().manual_seed(BUCKET_SEED)


def clip_c(X: torch.Tensor) -> float:
    """The clipping radius sqrt(d): about the median row norm of standard-normal rows, so about half are clipped."""
    return math.sqrt(X.shape[1])
