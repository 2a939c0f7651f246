"""Phase timings of a simulator's round that mean the same on a GPU as on the CPU."""

from __future__ import annotations

import time

import torch

__all__ = ["Stopwatch"]


class Stopwatch:
    """``lap(phase)`` adds the time since the previous lap to ``seconds[phase]``.

    On a CUDA device every lap first waits for the queued kernels (``torch.cuda.synchronize``), so a
    phase is charged with its own kernels rather than with the launches alone. The waits order the
    host and the device; no data crosses between them.
    """

    def __init__(self, device: torch.device, *phases: str) -> None:
        self.cuda = device.type == "cuda"
        self.seconds = dict.fromkeys(phases, 0.0)
        self._last = self._now()

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def restart(self) -> None:
        """Start the next lap now (the time since the previous lap is charged to no phase)."""
        self._last = self._now()

    def lap(self, phase: str) -> None:
        now = self._now()
        self.seconds[phase] += now - self._last
        self._last = now

    def per(self, count: int) -> dict[str, float]:
        return {k: v / count for k, v in self.seconds.items()}
