"""Phase timings of a training loop that mean the same on a GPU as on the CPU, without waiting for it."""

from __future__ import annotations

import time

import torch

__all__ = ["Stopwatch"]


class Stopwatch:
    """``lap(phase)`` charges the time since the previous lap (or ``restart``) to ``seconds[phase]``.

    On the CPU a lap reads the clock. On a CUDA device it records a CUDA event on the current stream,
    so a phase is charged with its own kernels rather than with their launches, and the host never
    waits: the events' elapsed times are read when ``seconds`` is, which waits for the last of them.
    """

    def __init__(self, device: torch.device | str, *phases: str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self._seconds = dict.fromkeys(phases, 0.0)
        self._pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self.restart()

    def _mark(self) -> float | torch.cuda.Event:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def restart(self) -> None:
        """Start the next lap now: the time since the previous lap is charged to no phase."""
        self._last = self._mark()

    def lap(self, phase: str) -> None:
        now = self._mark()
        if self.cuda:
            self._pending.append((phase, self._last, now))
        else:
            self._seconds[phase] += now - self._last
        self._last = now

    @property
    def seconds(self) -> dict[str, float]:
        """The seconds charged to each phase so far."""
        if self._pending:
            self._pending[-1][2].synchronize()
            for phase, start, end in self._pending:
                self._seconds[phase] += start.elapsed_time(end) / 1e3
            self._pending.clear()
        return dict(self._seconds)

    def per(self, count: int) -> dict[str, float]:
        return {k: v / count for k, v in self.seconds.items()}
