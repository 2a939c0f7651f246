"""Byzantine-robust data-parallel training with DDP and :func:`robustagg.distributed.robust_hook`.

Each rank holds an iid shard of the 1400 digits training examples, trains
the 64-hidden-10 MLP of :mod:`robustagg.sim.models` with
``DistributedDataParallel`` and plain SGD, and the hook replaces DDP's
gradient average by a robust rule over the ranks' worker momenta
(Karimireddy, He, Jaggi, ICML 2021). ``--mode sharded`` (the default)
aggregates shard r on rank r for the bytes of an all-reduce; ``--mode
replicated`` gathers every vector on every rank. The ranks in
``--byzantine-ranks`` send what ``--attack`` makes of the honest vectors (a
simulation device). ``--fsdp`` trains with FSDP2 (``fully_shard`` per layer)
and :class:`robustagg.distributed.RobustReduceScatter` instead (no worker
momentum; data-level attacks only; distance rules per layer). The example
runs on the CPU with gloo. Rank 0 prints progress and a summary (test
accuracy; time per step split into communication, aggregation and the
rest; bytes sent per step) and writes JSON with ``--json``.

Under torchrun (one process per rank)::

    torchrun --nproc_per_node 4 -m robustagg.examples.ddp_train --agg cc --byzantine-ranks 1 --attack alie
    torchrun --nproc_per_node 4 -m robustagg.examples.ddp_train --fsdp --agg cm --byzantine-ranks 1 --attack label_flip

Without torchrun it starts ``--nproc`` processes itself (gloo on 127.0.0.1)::

    python -m robustagg.examples.ddp_train --nproc 4 --agg cc --byzantine-ranks 1 --attack alie
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from ..aggregators import Aggregator, make_aggregator
from ..arguments import (
    finite_float,
    nonnegative_int,
    output_path,
    positive_float,
    positive_float_or_inf,
    positive_int,
    unit_interval,
)
from ..attacks import check_attack_rows
from ..distributed import MODES, RULE_NAMES, RobustHookState, robust_hook, use_robust_reduce_scatter
from ..distributed.rules import check_rule
from ..sim.data import NUM_TRAIN, check_batch, load_digits, split_workers

__all__ = ["ATTACKS", "add_arguments", "main", "run", "spawn"]

# Attacks that work bucket by bucket (robustagg.distributed); label_flip acts on the data.
ATTACKS = ["none", "sign_flip", "ipm", "alie", "gaussian", "nan", "inf", "label_flip"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The trainer's options (also used by ``robustagg train ddp``)."""
    parser.add_argument(
        "--nproc", type=positive_int, default=4, help="processes to start when not under torchrun (default 4)"
    )
    parser.add_argument("--agg", choices=list(RULE_NAMES), default="cc", help="aggregation rule (default cc)")
    parser.add_argument(
        "--f", type=nonnegative_int, help="the f the rule assumes (default: the number of Byzantine ranks)"
    )
    parser.add_argument(
        "--byzantine-ranks",
        type=nonnegative_int,
        nargs="*",
        default=[],
        metavar="RANK",
        help="ranks that send the attack's vectors (default: none)",
    )
    parser.add_argument(
        "--attack", choices=ATTACKS, default="none", help="what the Byzantine ranks send (default none)"
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="sharded",
        help="hook mode: sharded (all-reduce bytes) or replicated (default sharded)",
    )
    parser.add_argument(
        "--fsdp", action="store_true", help="train with FSDP2 and the robust reduce-scatter instead of DDP and the hook"
    )
    parser.add_argument(
        "--momentum",
        type=unit_interval,
        help="worker momentum beta in [0, 1) (default 0.9; 0 with --fsdp, which has none)",
    )
    parser.add_argument("--steps", type=positive_int, default=300, help="training steps (default 300)")
    parser.add_argument("--batch", type=positive_int, default=32, help="examples per rank per step (default 32)")
    parser.add_argument("--lr", type=positive_float, default=0.1, help="learning rate (default 0.1)")
    parser.add_argument("--hidden", type=positive_int, default=64, help="hidden units of the MLP (default 64)")
    parser.add_argument(
        "--cc-tau", type=positive_float_or_inf, default=1.0, help="centered clipping radius (default 1.0)"
    )
    parser.add_argument("--cc-iters", type=positive_int, default=3, help="centered clipping iterations (default 3)")
    parser.add_argument("--ipm-eps", type=positive_float, default=0.1, help="IPM scale (default 0.1)")
    parser.add_argument("--alie-z", type=finite_float, help="ALIE z (default: from n and f, SPEC 5)")
    parser.add_argument("--bucket-cap-mb", type=positive_float, default=25.0, help="DDP bucket size in MB (default 25)")
    parser.add_argument(
        "--eval-every", type=positive_int, default=50, help="steps between evaluations on rank 0 (default 50)"
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=60.0,
        help="process group timeout in seconds: a dead or hung rank fails the job after it (default 60)",
    )
    parser.add_argument(
        "--seed", type=nonnegative_int, default=0, help="seed of the shards, initialisation and batches (default 0)"
    )
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads per process (default 1)")
    parser.add_argument("--json", metavar="PATH", type=output_path, help="write the result JSON here (rank 0)")


def _attack_kwargs(args: argparse.Namespace, rank: int) -> dict:
    if args.attack == "ipm":
        return {"eps": args.ipm_eps}
    if args.attack == "alie":
        return {"z": args.alie_z}
    if args.attack == "gaussian":
        # Replicated: the same seed on every Byzantine rank; sharded: each rank draws its own shard's noise.
        return {"generator": torch.Generator().manual_seed(args.seed + 2 + (rank if args.mode == "sharded" else 0))}
    return {}


def _rule(args: argparse.Namespace, f: int) -> Aggregator:
    options = {"tau": args.cc_tau, "iters": args.cc_iters} if args.agg == "cc" else {}
    return make_aggregator(args.agg, f, f_if_used=True, **options)


def _train(args: argparse.Namespace) -> dict | None:
    """One rank's training, in an initialised process group; rank 0 returns the result."""
    from ..attacks import make_attack

    torch.set_num_threads(args.threads)
    rank, world = dist.get_rank(), dist.get_world_size()
    data = load_digits()
    share = split_workers(data.y_train, world, "iid", np.random.default_rng(args.seed))[rank]
    x, y = data.x_train[share], data.y_train[share]
    # Sharded mode: every rank simulates the attack on the shard it owns.
    simulates = rank in args.byzantine_ranks or (args.mode == "sharded" and bool(args.byzantine_ranks))
    attack = make_attack(args.attack, **_attack_kwargs(args, rank)) if simulates else None
    if attack is not None and attack.flips_labels and rank in args.byzantine_ranks:
        y = attack.flip_labels(y)

    torch.manual_seed(args.seed)  # DDP broadcasts rank 0's parameters anyway
    model = torch.nn.Sequential(
        torch.nn.Linear(data.num_features, args.hidden), torch.nn.ReLU(), torch.nn.Linear(args.hidden, data.num_classes)
    )
    f = len(args.byzantine_ranks) if args.f is None else args.f
    rule = _rule(args, f)
    state, comms = None, {}
    if args.fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        trained = fully_shard(model)
        comms = use_robust_reduce_scatter(model, rule, layerwise=True)
    else:
        trained = DDP(model, bucket_cap_mb=args.bucket_cap_mb)
        state = RobustHookState(
            rule, momentum=args.momentum, attack=attack, byzantine_ranks=args.byzantine_ranks, mode=args.mode
        )
        trained.register_comm_hook(state, robust_hook)
    opt = torch.optim.SGD(trained.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed * 1000 + rank)

    curve = []
    step_seconds = 0.0
    for step in range(1, args.steps + 1):
        tick = time.perf_counter()
        idx = torch.randint(len(share), (args.batch,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(trained(x[idx]), y[idx]).backward()
        opt.step()
        step_seconds += time.perf_counter() - tick
        if step % args.eval_every == 0 or step == args.steps:
            if rank == 0 or args.fsdp:  # an FSDP forward is a collective: every rank evaluates
                with torch.no_grad():
                    logits = trained(data.x_test) if args.fsdp else model(data.x_test)
                    acc = float((logits.argmax(1) == data.y_test).float().mean())
                    loss = float(torch.nn.functional.cross_entropy(logits, data.y_test))
                curve.append({"step": step, "test_accuracy": acc, "test_loss": loss})
                if rank == 0:
                    print(f"step {step:5d}  test accuracy {acc:.3f}  test loss {loss:.3f}", flush=True)
    if rank != 0:
        return None
    per_step = step_seconds / args.steps
    if state is not None:
        steps = max(state.steps, 1)
        comm, agg, local = (
            state.total.communication / steps,
            state.total.aggregation / steps,
            state.total.local / steps,
        )
        sent = state.total.sent_bytes / steps
    else:  # FSDP: bytes of the robust reduce-scatters only (FSDP's parameter all-gathers come on top)
        comm = agg = local = 0.0
        sent = sum(c.sent_bytes for c in comms.values()) / args.steps
    return {
        "world_size": world,
        "backend": dist.get_backend(),
        "mode": "fsdp" if args.fsdp else args.mode,
        "layerwise": args.fsdp and args.agg in ("krum", "mkrum", "gm", "cc"),  # FSDP: distance rules per layer
        "rule": repr(rule),
        "attack": args.attack,
        "byzantine_ranks": sorted(args.byzantine_ranks),
        "momentum": args.momentum,
        "steps": args.steps,
        "dim": sum(p.numel() for p in model.parameters()),
        "final_test_accuracy": curve[-1]["test_accuracy"],
        "curve": curve,
        "seconds_per_step": {
            "total": per_step,
            "communication": comm,
            "aggregation": agg,
            "local": local,
            "other": per_step - comm - agg - local,
        },
        "sent_bytes_per_step": sent,
        "threads": torch.get_num_threads(),
    }


def _report(args: argparse.Namespace, result: dict) -> None:
    t = result["seconds_per_step"]
    mode = result["mode"] + (", distance rule per layer" if result["layerwise"] else "")
    print(
        f"{result['rule']} over {result['world_size']} ranks ({mode}), Byzantine "
        f"{result['byzantine_ranks']} ({result['attack']}): final test accuracy {result['final_test_accuracy']:.3f}"
    )
    if result["mode"] == "fsdp":
        print(
            f"per step {1e3 * t['total']:.2f} ms; the robust reduce-scatters sent "
            f"{result['sent_bytes_per_step'] / 1e3:.1f} kB per rank"
        )
    else:
        print(
            f"per step {1e3 * t['total']:.2f} ms: hook waiting for communication {1e3 * t['communication']:.2f} ms, "
            f"aggregation {1e3 * t['aggregation']:.2f} ms, momentum/attack {1e3 * t['local']:.2f} ms, "
            f"forward/backward/step {1e3 * t['other']:.2f} ms; sent {result['sent_bytes_per_step'] / 1e3:.1f} kB "
            "per rank"
        )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump({"command": " ".join(sys.argv), **result}, fh, indent=2)
        print(f"wrote {args.json}")


def _check(args: argparse.Namespace, world: int) -> None:
    if args.momentum is None:
        args.momentum = 0.0 if args.fsdp else 0.9
    if args.fsdp and args.momentum != 0:
        raise ValueError(f"ddp_train: --fsdp has no worker momentum, got --momentum {args.momentum}")
    if args.fsdp and args.byzantine_ranks and args.attack not in ("none", "label_flip"):
        raise ValueError(
            f"ddp_train: --fsdp simulates data-level attacks only (label_flip), got --attack {args.attack}"
        )
    for name in ("steps", "batch", "hidden", "eval_every", "cc_iters", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"ddp_train: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 1 <= world <= NUM_TRAIN:
        raise ValueError(f"ddp_train: --nproc must be in [1, {NUM_TRAIN}] (a shard per rank), got {world}")
    check_batch(args.batch, "ddp_train")
    if not args.timeout > 0:
        raise ValueError(f"ddp_train: --timeout must be > 0, got {args.timeout}")
    if any(not 0 <= r < world for r in args.byzantine_ranks):
        raise ValueError(f"ddp_train: --byzantine-ranks must lie in [0, {world}), got {args.byzantine_ranks}")
    byzantine = len(set(args.byzantine_ranks))
    if byzantine != len(args.byzantine_ranks):
        raise ValueError(f"ddp_train: --byzantine-ranks lists a rank twice, got {args.byzantine_ranks}")
    if byzantine >= world:
        raise ValueError(f"ddp_train: --byzantine-ranks leaves no honest rank, got {byzantine} of {world} ranks")
    check_attack_rows(args.attack, world, byzantine, args.alie_z)
    # The rule's own conditions on f at n = world rows (Krum's n > 2f + 2, the trimmed mean's n > 2f, ...).
    f = byzantine if args.f is None else args.f
    try:
        check_rule(_rule(args, f), f, world, "ddp_train")
    except ValueError as exc:
        raise ValueError(f"ddp_train: rule {args.agg} cannot take f={f} of {world} ranks: {exc}") from None
    if args.byzantine_ranks and args.attack == "none":
        print("ddp_train: Byzantine ranks with --attack none behave honestly", file=sys.stderr)


def _train_and_report(args: argparse.Namespace) -> None:
    """Train in the initialised group, rank 0 reports, then all ranks leave the group together."""
    try:
        result = _train(args)
        if result is not None:
            _report(args, result)
        # Ranks that tear gloo down while rank 0 is still reporting can abort it at exit.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _rank_main(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    """Entry point of a process started by :func:`spawn`."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=args.timeout))
    _train_and_report(args)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(nproc: int, args: argparse.Namespace | Sequence[str]) -> int:
    """Train in ``nproc`` new processes (gloo, 127.0.0.1, a free port); 0 on success.

    ``args`` is a parsed namespace or the command-line arguments. A rank that
    fails makes the others stop (torch.multiprocessing terminates them) and
    the error is raised here.
    """
    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        args = parser.parse_args(list(args))
    _check(args, nproc)
    return _start(nproc, args)


def _start(nproc: int, args: argparse.Namespace) -> int:
    mp.start_processes(_rank_main, args=(nproc, _free_port(), args), nprocs=nproc, join=True, start_method="spawn")
    return 0


def _under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _world(args: argparse.Namespace) -> int:
    """The number of ranks: torchrun's ``WORLD_SIZE`` under torchrun, else ``--nproc``."""
    return int(os.environ["WORLD_SIZE"]) if _under_torchrun() else args.nproc


def _launch(args: argparse.Namespace) -> int:
    """Train (``args`` checked) in this rank under torchrun, else in ``args.nproc`` new processes."""
    if _under_torchrun():
        dist.init_process_group("gloo", timeout=timedelta(seconds=args.timeout))
        _train_and_report(args)
        return 0
    return _start(args.nproc, args)


def run(args: argparse.Namespace) -> int:
    """Train under torchrun when its environment is set (``RANK``, ``WORLD_SIZE``), else :func:`spawn` ``args.nproc``."""
    _check(args, _world(args))
    return _launch(args)


def main(argv: Sequence[str] | None = None, prog: str = "python -m robustagg.examples.ddp_train") -> int:
    """The command line; a bad option or combination exits with status 2 and one line before any rank starts."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        _check(args, _world(args))
    except ValueError as exc:
        parser.error(str(exc))
    try:
        return _launch(args)
    except (ValueError, mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        print(f"ddp_train: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
