"""robustagg: fast, exact robust aggregation for PyTorch.

Native CPU and CUDA kernels registered as ``torch.ops.robustagg.*``, typed
wrappers over them, robust rules and pre-aggregators built on them,
aggregator objects that any trainer can call, Byzantine attacks
(``robustagg.attacks``) and the optimizer layer (``robustagg.optim``).
"""

from . import attacks, optim  # noqa: F401  (subpackages of the public API: robustagg.attacks, robustagg.optim)
from .aggregators import (
    ARC,
    CAF,
    MDA,
    NNM,
    RULES,
    SMEA,
    Aggregator,
    Bucketing,
    Bulyan,
    CenteredClip,
    Clip,
    CoordinateMedian,
    DnC,
    GeometricMedian,
    Krum,
    MeaMed,
    Mean,
    MoNNA,
    MultiKrum,
    Pipeline,
    PreAggregator,
    TrimmedMean,
    make_aggregator,
)
from .distance import (
    GeometricMedianInfo,
    bulyan,
    centered_clip,
    geometric_median,
    krum,
    mda,
    monna,
    multi_krum,
    pairwise_sq_distances,
)
from .ops import coordinate_median, cpu_kernel_isa, cuda_kernels_built, meamed, mean, trimmed_mean
from .preaggregators import arc, bucketing, clip, nnm
from .spectral import caf, dnc, smea

__version__ = "0.1.0"

__all__ = [
    "ARC",
    "CAF",
    "DnC",
    "MDA",
    "MoNNA",
    "NNM",
    "SMEA",
    "Aggregator",
    "Bucketing",
    "Bulyan",
    "CenteredClip",
    "Clip",
    "CoordinateMedian",
    "GeometricMedian",
    "GeometricMedianInfo",
    "Krum",
    "Mean",
    "MeaMed",
    "MultiKrum",
    "Pipeline",
    "PreAggregator",
    "RULES",
    "TrimmedMean",
    "arc",
    "bucketing",
    "bulyan",
    "caf",
    "centered_clip",
    "clip",
    "coordinate_median",
    "cpu_kernel_isa",
    "cuda_kernels_built",
    "dnc",
    "geometric_median",
    "krum",
    "make_aggregator",
    "mda",
    "mean",
    "meamed",
    "monna",
    "multi_krum",
    "nnm",
    "pairwise_sq_distances",
    "smea",
    "trimmed_mean",
]
