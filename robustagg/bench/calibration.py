"""The geometric median's calibration, untimed and once per input: how many updates robustagg's
Weiszfeld, the plain-torch loop and byzfl's GeometricMedian (which runs exactly T updates from 0) take to
reach robustagg's objective ``sum_i ||x_i - z||``, so that byzfl is timed for the first T that gets there;
and the one-line summary of it that the progress lines and the notes print.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import distance
from .baselines import weiszfeld
from .byzfl_peer import byzfl_status
from .params import GM_MAX_ITER, GM_NU, GM_RTOL, GM_TOL, GM_TRIAL_T

__all__ = ["calibrate_geometric_median", "gm_objective", "gm_summary"]


def gm_objective(X: torch.Tensor, z: torch.Tensor) -> float:
    """``sum_i ||x_i - z||`` in float64, a block of columns at a time (no ``n x d`` float64 temporary)."""
    n, d = X.shape
    sq = torch.zeros(n, dtype=torch.float64, device=X.device)
    step = 1 << 16
    for c0 in range(0, d, step):
        diff = X[:, c0 : c0 + step].double() - z[c0 : c0 + step].to(device=X.device, dtype=torch.float64)
        sq += (diff * diff).sum(1)
    return float(sq.sqrt().sum())


def calibrate_geometric_median(X: torch.Tensor, torch_loop: bool = True, byzfl_search: bool = True) -> dict[str, Any]:
    """Untimed, once per input: how far each geometric median goes to reach robustagg's objective.

    Returns robustagg's Weiszfeld ``iterations`` and ``objective`` (evaluated
    by :func:`gm_objective` on its returned z, like the others); with
    ``torch_loop``, the plain-torch loop's ``torch_iterations`` and
    ``torch_objective``; with ``byzfl_search`` and byzfl importable,
    ``byzfl_T``: the first T in :data:`GM_TRIAL_T` for which byzfl's
    objective is at most robustagg's times ``1 + GM_RTOL`` (below it counts:
    robustagg stops on its tolerance, not at the optimum), or the largest T
    with ``byzfl_reached`` False; and ``byzfl_objective`` at that T. The
    search costs the sum of the T tried in byzfl updates.
    """
    z, info = distance.geometric_median(X, nu=GM_NU, tol=GM_TOL, max_iter=GM_MAX_ITER, return_info=True)
    target = gm_objective(X, z)
    out: dict[str, Any] = {"iterations": info.iterations, "converged": info.converged, "objective": target}
    if torch_loop:
        zt, it = weiszfeld(X)
        out.update(torch_iterations=it, torch_objective=gm_objective(X, zt))
    byzfl, _ = byzfl_status()
    if byzfl_search and byzfl is not None:
        for T in GM_TRIAL_T:
            F = gm_objective(X, byzfl.GeometricMedian(nu=GM_NU, T=T)(X))
            if F <= target * (1 + GM_RTOL):
                break
        out.update(byzfl_T=T, byzfl_objective=F, byzfl_reached=F <= target * (1 + GM_RTOL))
    return out


def gm_summary(gm: dict[str, Any]) -> str:
    """One line on a calibration (or on its failure, ``{"error": ...}``)."""
    if "error" in gm:
        return f"calibration failed ({gm['error']})"
    bits = [f"robustagg {gm['iterations']} updates, objective {gm['objective']:.12g}"]
    if "torch_iterations" in gm:
        rel = (gm["torch_objective"] - gm["objective"]) / gm["objective"]
        bits.append(f"torch loop {gm['torch_iterations']} updates (objective {rel:+.1e} relative)")
    if "byzfl_T" in gm:
        rel = (gm["byzfl_objective"] - gm["objective"]) / gm["objective"]
        if gm["byzfl_reached"]:
            bits.append(f"byzfl T={gm['byzfl_T']} (first within {GM_RTOL:g}: objective {rel:+.1e} relative)")
        else:
            bits.append(
                f"byzfl did not reach it by T={gm['byzfl_T']} (objective {rel:+.1e} relative): timed with that T"
            )
    return "; ".join(bits)
