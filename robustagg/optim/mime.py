"""The federated optimizers' former import path; they live in :mod:`robustagg.optim.federated`."""

from .federated import ALGORITHMS, BASES, ClientOptimizer, FederatedServer

__all__ = ["ALGORITHMS", "BASES", "ClientOptimizer", "FederatedServer"]
