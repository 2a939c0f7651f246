"""Optimizer layer of the lines of work, built on the native fused ops.

* :mod:`robustagg.optim.byzantine`: worker momentum and the robust server step;
* :mod:`robustagg.optim.mime`: federated server and client optimizer (FedAvg,
  FedAvgM, SCAFFOLD, MimeLite, Mime, MVR variants).
"""

from .byzantine import RobustServer, WorkerMomentum
from .mime import ClientOptimizer, FederatedServer

__all__ = ["ClientOptimizer", "FederatedServer", "RobustServer", "WorkerMomentum"]
