"""Optimizer layer of the lines of work, built on the native ops."""

from .byzantine import RobustServer, WorkerMomentum

__all__ = ["RobustServer", "WorkerMomentum"]
