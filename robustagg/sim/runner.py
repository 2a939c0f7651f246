"""Run many simulator configurations, in parallel processes with one torch thread each."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from ..validation import check_int

__all__ = ["run_parallel"]

Config = TypeVar("Config")


def _run_one(item: tuple[int, Callable[[Config], dict], Config]) -> tuple[int, dict]:
    index, run, cfg = item
    torch.set_num_threads(1)
    return index, run(cfg)


def run_parallel(
    run: Callable[[Config], dict],
    configs: Sequence[Config],
    jobs: int,
    progress: Callable[[int, dict], None] | None = None,
) -> list[dict]:
    """``[run(cfg) for cfg in configs]`` in ``jobs`` spawned processes (in this one when jobs <= 1).

    ``run`` must be a module-level function (it is pickled by reference).
    ``progress(done, result)`` is called as results arrive.
    """
    jobs = check_int(jobs, "jobs", "run_parallel")
    results: list[dict | None] = [None] * len(configs)
    items = [(i, run, cfg) for i, cfg in enumerate(configs)]
    if jobs <= 1:
        threads = torch.get_num_threads()
        try:
            for done, item in enumerate(items, 1):
                i, results[i] = _run_one(item)
                if progress:
                    progress(done, results[i])
        finally:
            torch.set_num_threads(threads)
        return results  # type: ignore[return-value]
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        for done, (i, res) in enumerate(pool.imap_unordered(_run_one, items), 1):
            results[i] = res
            if progress:
                progress(done, res)
    return results  # type: ignore[return-value]
