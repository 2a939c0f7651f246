"""A pool of spawned gloo ranks that run test tasks, for the multi-process tests.

Spawning a process and importing torch costs seconds on a small machine, a
task a fraction of one, so one pool serves a whole test module. The pool's
world holds process groups of every size from 2 up (ranks 0..k-1), so one
pool tests several world sizes; ranks outside a task's group return None.
Every wait on a child has a deadline, after which the children are killed
and the test fails: nothing here can hang.
"""

from __future__ import annotations

import importlib
import os
import queue
import socket
import time
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

DEADLINE = 90.0  # seconds for any task of the pool

#: Inside a rank: the process group of each size k (ranks 0..k-1); the world is the largest.
GROUPS: dict[int, dist.ProcessGroup | None] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(rank: int, world: int, port: int, timeout_s: float) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))


def group(size: int) -> dist.ProcessGroup | None:
    """The pool's group of ``size`` ranks, or None on a rank outside it."""
    return GROUPS[size] if dist.get_rank() < size else None


def _pool_rank(rank: int, world: int, port: int, tasks, results) -> None:
    init(rank, world, port, timeout_s=30)
    for size in range(2, world):  # every rank takes part in creating every group
        GROUPS[size] = dist.new_group(list(range(size)))
    GROUPS[world] = dist.group.WORLD
    while True:
        item = tasks.get()
        if item is None:
            break
        target, kwargs = item
        module, name = target.rsplit(":", 1)
        try:
            results.put((rank, True, getattr(importlib.import_module(module), name)(**kwargs)))
        except BaseException:  # noqa: BLE001  (reported to the parent, which fails the test)
            results.put((rank, False, traceback.format_exc()))
    dist.barrier()  # leave together: a rank tearing gloo down early can abort another at exit
    dist.destroy_process_group()


class Pool:
    def __init__(self, world: int) -> None:
        ctx = mp.get_context("spawn")
        port = free_port()
        self.world = world
        self.closed = False
        self.tasks = [ctx.Queue() for _ in range(world)]
        self.results = ctx.Queue()
        self.procs = [
            ctx.Process(target=_pool_rank, args=(r, world, port, self.tasks[r], self.results), daemon=True)
            for r in range(world)
        ]
        for p in self.procs:
            p.start()

    def run(self, target: str, size: int | None = None, **kwargs: object) -> list:
        """Run ``module:function(size=..., **kwargs)`` on every rank; the results of ranks 0..size-1."""
        size = self.world if size is None else size
        if self.closed:
            pytest.fail(f"{target}: the pool was closed by an earlier failure")
        for q in self.tasks:
            q.put((target, {"size": size, **kwargs}))
        out: dict[int, object] = {}
        deadline = time.monotonic() + DEADLINE
        while len(out) < self.world:
            try:
                rank, ok, value = self.results.get(timeout=max(deadline - time.monotonic(), 0.1))
            except queue.Empty:
                self.close()
                pytest.fail(
                    f"{target}: ranks {sorted(set(range(self.world)) - set(out))} gave no result within {DEADLINE} s"
                )
            if not ok:
                self.close()
                pytest.fail(f"{target} failed on rank {rank}:\n{value}")
            out[rank] = value
        return [out[r] for r in range(size)]

    def close(self) -> None:
        self.closed = True
        for q in self.tasks:
            q.put(None)
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
