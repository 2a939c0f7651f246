"""Optimizer layer of the lines of work, built on the native fused ops.

* :mod:`robustagg.optim.byzantine`: worker momentum and the robust server step;
* :mod:`robustagg.optim.federated`: federated server and client optimizer (FedAvg,
  FedAvgM, SCAFFOLD, MimeLite, Mime, MVR variants);
* :mod:`robustagg.optim.personalized`: weighted gradient averaging, with and
  without bias correction, and the weights of optimal model averaging;
* :mod:`robustagg.optim.masked`: masked / partial training of a core
  sub-network, AC/DC, and the masked SGD-momentum optimizer.
"""

from .byzantine import RobustServer, WorkerMomentum
from .federated import ClientOptimizer, FederatedServer
from .masked import ACDCSchedule, ACDCTrainer, AlternatingSchedule, MaskedSGD, PartialTrainer
from .personalized import BiasCorrectedWGA, WeightedGradientAveraging

__all__ = [
    "ACDCSchedule",
    "ACDCTrainer",
    "AlternatingSchedule",
    "BiasCorrectedWGA",
    "ClientOptimizer",
    "FederatedServer",
    "MaskedSGD",
    "PartialTrainer",
    "RobustServer",
    "WeightedGradientAveraging",
    "WorkerMomentum",
]
