"""robustagg: fast, exact robust aggregation for PyTorch.

Native CPU and CUDA kernels registered as ``torch.ops.robustagg.*``, typed
wrappers over them, and aggregator objects that any trainer can call.
"""

from .aggregators import Aggregator, CoordinateMedian, Mean, MeaMed, TrimmedMean
from .ops import coordinate_median, cpu_kernel_isa, cuda_kernels_built, mean, meamed, trimmed_mean

__version__ = "0.1.0"

__all__ = [
    "Aggregator",
    "CoordinateMedian",
    "Mean",
    "MeaMed",
    "TrimmedMean",
    "coordinate_median",
    "cpu_kernel_isa",
    "cuda_kernels_built",
    "mean",
    "meamed",
    "trimmed_mean",
]
