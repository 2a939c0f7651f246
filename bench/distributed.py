"""Time a DDP step with robustagg's communication hook against plain DDP, on CPU processes with gloo.

    python bench/distributed.py                                  # writes docs/results/distributed.md
    python bench/distributed.py --nproc 4 --steps 8 --markdown PATH

The model is an MLP of about 11.5M parameters (1024-2048-2048-2048-512-10,
ReLU; the size of ResNet-18), batch 8 per rank, float32, SGD. Configurations,
each on the same ranks one after the other: plain DDP (the all-reduce
average, overlapped with backward), and the hook (robustagg.distributed)
with the mean, the coordinate median and centered clipping (tau = 1, 3
iterations; a distance rule, exact over buckets). For each the median over
the timed steps (after warm-up) of rank 0's step time (forward, backward with
the hook, optimizer step) and, for the hook, of the seconds its state timed
in the gathers (communication) and in the rule (aggregation). Plain DDP's
all-reduce runs inside backward and is not timed apart.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import socket
import statistics
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from robustagg.distributed import RobustHookState, robust_hook

LAYERS = (1024, 2048, 2048, 2048, 512, 10)
CONFIGS = [("plain DDP (all-reduce)", None), ("hook: mean", "mean"), ("hook: coordinate median", "cm"),
           ("hook: centered clipping", "cc")]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for a, b in zip(LAYERS[:-1], LAYERS[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, command: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=300))
    gen = torch.Generator().manual_seed(rank)
    rows = []
    for label, rule in CONFIGS:
        model = DDP(_model())
        state = None
        if rule is not None:
            state = RobustHookState(rule)
            model.register_comm_hook(state, robust_hook)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        step_s, comm_s, agg_s = [], [], []
        for step in range(args.warmup + args.steps):
            x = torch.randn(args.batch, LAYERS[0], generator=gen)
            y = torch.randint(LAYERS[-1], (args.batch,), generator=gen)
            dist.barrier()  # start every step together, so the times are the step's, not a wait for others
            tick = time.perf_counter()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            elapsed = time.perf_counter() - tick
            if step >= args.warmup:
                step_s.append(elapsed)
                if state is not None:
                    comm_s.append(state.last.communication)
                    agg_s.append(state.last.aggregation)
        if rank == 0:
            med = statistics.median
            rows.append((label, med(step_s), med(comm_s) if comm_s else None, med(agg_s) if agg_s else None))
            print(f"{label}: step {1e3 * rows[-1][1]:.1f} ms", file=sys.stderr, flush=True)
        del model, opt
    if rank == 0:
        params = sum(p.numel() for p in _model().parameters())
        _write(args, rows, params, world, command)
    dist.barrier()  # leave together: a rank tearing gloo down early can abort rank 0 at exit
    dist.destroy_process_group()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _write(args: argparse.Namespace, rows: list, params: int, world: int, command: str) -> None:
    base = rows[0][1]
    ms = lambda s: "-" if s is None else f"{1e3 * s:.1f}"  # noqa: E731
    lines = [
        "# DDP with the robust communication hook (CPU, gloo)",
        "",
        f"`{command}`: {world} processes on {_cpu_name()} "
        f"({os.cpu_count()} cores, 1 torch thread each), torch {torch.__version__}, gloo over 127.0.0.1; "
        f"MLP {'-'.join(map(str, LAYERS))} ({params / 1e6:.1f}M float32 parameters, "
        f"{4 * params / 2**20:.0f} MiB of gradients), batch {args.batch} per rank, DDP's default 25 MB buckets; "
        f"median of {args.steps} steps after {args.warmup} warm-up steps, rank 0.",
        "",
        "| configuration | step (ms) | communication (ms) | aggregation (ms) | step / plain DDP |",
        "|---|---|---|---|---|",
    ]
    for label, step, comm, agg in rows:
        lines.append(f"| {label} | {ms(step)} | {ms(comm)} | {ms(agg)} | {step / base:.2f} |")
    lines += [
        "",
        "Step: forward, backward (with the hook) and the SGD step. Communication: the hook's gathers "
        f"(each rank receives all {world} gradients, {world} times what an all-reduce result holds); "
        "aggregation: the rule on the gathered buckets (for centered clipping the distances, the "
        "coefficients at the last bucket and one combination per bucket). Plain DDP's all-reduce "
        "overlaps backward and is not timed apart. The hook is synchronous (no overlap of gathers "
        "with backward).",
        "",
        "Not run: NCCL on GPUs. The processes share the machine's cores, so communication and "
        "aggregation times include waiting for the CPU.",
        "",
    ]
    path = args.markdown
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=4, help="processes (default 4)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--batch", type=int, default=8, help="examples per rank per step (default 8)")
    parser.add_argument("--markdown", default=os.path.join("docs", "results", "distributed.md"),
                        help="markdown table path (default docs/results/distributed.md)")
    args = parser.parse_args(argv)
    command = "python bench/distributed.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(args.nproc, port, args, command.strip()), nprocs=args.nproc, start_method="spawn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
