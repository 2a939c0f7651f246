"""byzfl, the peer library the ops are timed against when ``import byzfl`` works (never a requirement):
whether and which version imports here, and one adapter per case that byzfl 0.0.11 covers, building its
aggregator with the case's parameters. byzfl works on float32 (it calls ``.float()``), its Median is
``torch.quantile`` (which some torch versions refuse above 2**24 elements: the failure is then reported
as a skipped baseline), TrMean sorts, Meamed is quantile + topk + take; it has no Bulyan and no
pairwise-distance function. Each adapter takes ``(byzfl, f, T)``: the module, the case's f (None where it
has none) and the geometric median's number of updates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .baselines import Baseline
from .params import BUCKET_S, CC_ITERS, CC_TAU, GM_NU, clip_c

__all__ = [
    "Adapter",
    "arc",
    "average",
    "bucketing",
    "byzfl_status",
    "caf",
    "centered_clipping",
    "clipping",
    "geometric_median",
    "krum",
    "mda",
    "meamed",
    "median",
    "monna",
    "multi_krum",
    "nnm",
    "smea",
    "trmean",
]

Adapter = Callable[[Any, int | None, int | None], Baseline]

_BYZFL: dict[str, Any] = {}


def byzfl_status() -> tuple[Any, str]:
    """``(module or None, description)`` of byzfl here; imported once."""
    if "status" not in _BYZFL:
        try:
            import byzfl  # type: ignore[import-not-found]

            version = getattr(byzfl, "__version__", None)
            if version is None:
                try:
                    from importlib.metadata import version as _v

                    version = _v("byzfl")
                except Exception:  # noqa: BLE001
                    version = "?"
            _BYZFL["status"] = (byzfl, f"byzfl {version}")
        except Exception as exc:  # noqa: BLE001  (ImportError, or a missing dependency of byzfl's own)
            _BYZFL["status"] = (None, f"byzfl not importable ({type(exc).__name__}: {exc})")
    return _BYZFL["status"]


def _coordinate_extra(n: int, d: int, s: int) -> int:
    return n * d * (4 + 8) * 3


def _copies(k: int) -> Callable[[int, int, int], int]:
    # k float32 (n, d) temporaries, plus byzfl's float32 copy of an input of another dtype
    return lambda n, d, s: (k + (s != 4)) * n * d * 4


def median(byzfl: Any, f: int | None, T: int | None) -> Baseline:
    return Baseline("byzfl.Median", byzfl.Median(), _coordinate_extra)


def trmean(byzfl: Any, f: int, T: int | None) -> Baseline:
    return Baseline(f"byzfl.TrMean(f={f})", byzfl.TrMean(f=f), _coordinate_extra)


def meamed(byzfl: Any, f: int, T: int | None) -> Baseline:
    return Baseline(f"byzfl.Meamed(f={f})", byzfl.Meamed(f=f), _coordinate_extra)


def average(byzfl: Any, f: int | None, T: int | None) -> Baseline:
    return Baseline("byzfl.Average", byzfl.Average(), lambda n, d, s: n * d * 4 + d * 8)


def krum(byzfl: Any, f: int, T: int | None) -> Baseline:
    return Baseline(f"byzfl.Krum(f={f})", byzfl.Krum(f=f), _copies(4))


def multi_krum(byzfl: Any, f: int, T: int | None) -> Baseline:
    return Baseline(f"byzfl.MultiKrum(f={f})", byzfl.MultiKrum(f=f), _copies(5))


def geometric_median(byzfl: Any, f: int | None, T: int | None) -> Baseline:
    """byzfl's GeometricMedian for T updates (from the calibration; byzfl's default 3 when None)."""
    T = 3 if T is None else T
    return Baseline(f"byzfl.GeometricMedian(nu={GM_NU:g}, T={T})", byzfl.GeometricMedian(nu=GM_NU, T=T), _copies(3))


def centered_clipping(byzfl: Any, f: int | None, T: int | None) -> Baseline:
    # a fresh object per call: CenteredClipping keeps its result as the next call's center
    return Baseline(
        f"byzfl.CenteredClipping(L={CC_ITERS}, tau={CC_TAU:g})",
        lambda X: byzfl.CenteredClipping(L=CC_ITERS, tau=CC_TAU)(X),
        _copies(3),
    )


def nnm(byzfl: Any, f: int, T: int | None) -> Baseline:
    # cdist + topk, then an (n, n - f, d) gather of the neighbours
    return Baseline(f"byzfl.NNM(f={f})", byzfl.NNM(f=f), lambda n, d, s: (n - f + 4 + (s != 4)) * n * d * 4)


def bucketing(byzfl: Any, f: int | None, T: int | None) -> Baseline:
    return Baseline(f"byzfl.Bucketing(s={BUCKET_S})", byzfl.Bucketing(s=BUCKET_S), _copies(2))


# Clipping and ARC overwrite their input's rows: each call gets a clone (timed with it)


def clipping(byzfl: Any, f: int | None, T: int | None) -> Baseline:
    return Baseline(
        "byzfl.Clipping(c=sqrt(d)) on a clone", lambda X: byzfl.Clipping(c=clip_c(X))(X.clone()), _copies(1)
    )


def arc(byzfl: Any, f: int, T: int | None) -> Baseline:
    return Baseline(f"byzfl.ARC(f={f}) on a clone", lambda X: byzfl.ARC(f=f)(X.clone()), _copies(1))


# The catalogue's rules. MDA and SMEA gather each (n - f)-subset of rows in Python; SMEA and CAF estimate each
# top eigenvalue with one power-iteration step from a random vector (not deterministic, not exact).
def mda(byzfl: Any, f: int, T: int | None) -> Baseline:
    return Baseline(f"byzfl.MDA(f={f})", byzfl.MDA(f=f), _copies(2))


def monna(byzfl: Any, f: int, T: int | None) -> Baseline:
    return Baseline(f"byzfl.MoNNA(f={f}, idx=0)", byzfl.MoNNA(f=f, idx=0), _copies(2))


def smea(byzfl: Any, f: int, T: int | None) -> Baseline:
    return Baseline(f"byzfl.SMEA(f={f})", byzfl.SMEA(f=f), _copies(3))


def caf(byzfl: Any, f: int, T: int | None) -> Baseline:
    return Baseline(f"byzfl.CAF(f={f})", byzfl.CAF(f=f), _copies(4))
