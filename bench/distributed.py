"""DDP with robustagg's communication hook, sharded and replicated, against plain DDP: bytes, memory, time.

    python bench/distributed.py                       # n = 2, 4, 8; writes docs/results/distributed.{md,json,png}
    python bench/distributed.py --nproc 4 --steps 5 --rules cm,cc --markdown PATH

CPU processes with gloo over 127.0.0.1. The model is an MLP of 1.8M float32
parameters (512-1024-1024-256-10, ReLU; 7 MiB of gradients), batch 16 per
rank, SGD, DDP buckets of ``--bucket-cap-mb`` (default 1 MB, so that
backward has buckets to overlap). Configurations, each on the same ranks
one after the other:

* compute only: a hook that returns the local gradient (no communication),
  the floor every configuration adds communication to;
* plain DDP: its built-in all-reduce average, overlapped with backward;
* the hook with each rule (mean, CM, TM, Krum, GM, CC) in sharded and in
  replicated mode.

Per configuration, rank 0 reports the median over the timed steps of:

* step: forward, backward (with the hook) and the SGD step, after a barrier;
* bytes per rank per step: the hook's own count of what its collectives send
  (``HookStats.sent_bytes``; ring all-gather and all-reduce, pairwise
  all-to-all); for plain DDP the ring all-reduce's ``2 (n-1)/n`` of the
  gradient bytes. Cross-checked against the kernel's loopback counter
  (``/proc/net/dev``, transmitted bytes of ``lo`` over the timed steps,
  divided by the ranks and the steps; it includes TCP/IP headers and the
  barriers);
* extra memory: the peak resident memory during the timed steps (VmHWM,
  reset through ``/proc/self/clear_refs`` before them) minus the resident
  memory before them, the largest over the ranks. Large allocations are
  forced to ``mmap`` (``MALLOC_MMAP_THRESHOLD_``) so that freed buffers leave
  the resident set at once;
* overlap: ``comm alone`` times the configuration's collectives for the same
  buckets (without the distance rules' small all-reduce), one after the
  other with nothing else running; ``hidden`` is the
  part of it that does not show in the step, ``1 - (step - compute only -
  aggregation - local) / comm alone``; ``exposed`` is the hook's time from the
  end of backward's own work to the last aggregate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
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

import robustagg
from robustagg.distributed import CC_OPTIONS, MODES, RobustHookState, robust_hook

LAYERS = (512, 1024, 1024, 256, 10)
# Older PyTorch names the stacked all-gather all_gather_into_tensor.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
RULES = ("mean", "cm", "tm", "krum", "gm", "cc")


def make_rule(name: str, f: int = 0) -> robustagg.Aggregator:
    """The rule of a name as the distributed paths build it: f where the rule takes one, CC_OPTIONS for cc."""
    return robustagg.make_aggregator(name, f, f_if_used=True, **(CC_OPTIONS if name == "cc" else {}))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for a, b in zip(LAYERS[:-1], LAYERS[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def _rule_f(rule: str, n: int) -> int | None:
    """The f each rule runs with at n ranks (one Byzantine rank where the rule allows it); None: impossible."""
    if rule in ("krum", "mkrum"):
        return (n - 3) // 2 if n >= 3 else None
    if rule == "tm":
        return 1 if n >= 3 else 0
    return 0


def _lo_tx() -> int:
    with open("/proc/net/dev") as fh:
        for line in fh:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[8])
    return -1


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"{field}:\s+(\d+)", fh.read()).group(1))


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _local_hook(state: object, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """No communication: the rank steps with its own gradient."""
    fut: torch.futures.Future = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


def _recording(hook, sizes: list[int]):
    def wrapped(state, bucket):
        if bucket.index() == 0:
            sizes.clear()
        sizes.append(bucket.buffer().numel())
        return hook(state, bucket)

    return wrapped


def _comm_alone(kind: str, sizes: list[int], n: int, reps: int = 5) -> float:
    """Seconds of the configuration's collectives for these bucket sizes, synchronous, nothing else running."""
    elapsed, rank = [], dist.get_rank()
    for _ in range(reps):
        bufs = [torch.randn(s) for s in sizes]
        dist.barrier()
        tick = time.perf_counter()
        for b in bufs:
            if kind == "plain":
                dist.all_reduce(b)
            elif kind == "sharded":  # the hook's uneven all-to-all, then the gather of padded shards
                width = -(-b.numel() // n)
                splits = [max(0, min(width, b.numel() - j * width)) for j in range(n)]
                recv = b.new_empty(n * splits[rank])
                dist.all_to_all_single(recv, b, [splits[rank]] * n, splits)
                out = b.new_empty(n * width)
                _all_gather(out, b.new_zeros(width))
            elif kind == "replicated":
                out = b.new_empty(n * b.numel())
                _all_gather(out, b)
        elapsed.append(time.perf_counter() - tick)
    return statistics.median(elapsed)


def _run_config(args, label: str, rule: str | None, mode: str | None, gen: torch.Generator, n: int) -> dict | None:
    model = DDP(_model(), bucket_cap_mb=args.bucket_cap_mb)
    sizes: list[int] = []
    state = None
    if rule == "local":
        model.register_comm_hook(None, _recording(_local_hook, sizes))
    elif rule is not None:
        f = _rule_f(rule, n)
        if f is None:
            return None
        state = RobustHookState(make_rule(rule, f), mode=mode)
        model.register_comm_hook(state, _recording(robust_hook, sizes))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> float:
        x = torch.randn(args.batch, LAYERS[0], generator=gen)
        y = torch.randint(LAYERS[-1], (args.batch,), generator=gen)
        dist.barrier()  # start every step together: the time is the step's, not a wait for others
        tick = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        return time.perf_counter() - tick

    for _ in range(args.warmup):
        step()
    dist.barrier()
    lo_before, rss_before = _lo_tx(), _status_kib("VmRSS")
    _reset_peak_rss()
    times, stats = [], []
    for _ in range(args.steps):
        times.append(step())
        if state is not None:
            stats.append(state.last)
    peak = _status_kib("VmHWM")
    dist.barrier()
    lo_bytes = _lo_tx() - lo_before
    extra = torch.tensor([1024.0 * (peak - rss_before)])
    dist.all_reduce(extra, op=dist.ReduceOp.MAX)
    grad_bytes = 4 * sum(p.numel() for p in model.parameters())
    med = statistics.median
    row = {
        "label": label,
        "rule": rule,
        "mode": mode,
        "step_s": med(times),
        "extra_memory_bytes": float(extra),
        "lo_bytes_per_rank_step": lo_bytes / n / args.steps,
        "buckets": list(sizes),
    }
    if state is not None:
        row.update(
            sent_bytes=med(s.sent_bytes for s in stats),
            wait_s=med(s.communication for s in stats),
            aggregation_s=med(s.aggregation for s in stats),
            local_s=med(s.local for s in stats),
            exposed_s=med(s.exposed for s in stats),
        )
    elif rule is None:
        row["sent_bytes"] = 2 * (n - 1) * grad_bytes / n  # ring all-reduce of every bucket
    return row


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, results) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=600))
    gen = torch.Generator().manual_seed(rank)
    configs = [("compute only (no communication)", "local", None), ("plain DDP (all-reduce)", None, None)]
    configs += [(f"{mode}: {rule}", rule, mode) for rule in args.rules for mode in MODES]
    rows = []
    for label, rule, mode in configs:
        row = _run_config(args, label, rule, mode, gen, world)
        if row is not None:
            if rule != "local":  # plain DDP has the compute-only run's buckets (the same bucket cap)
                row["buckets"] = row["buckets"] or rows[0]["buckets"]
                row["comm_alone_s"] = _comm_alone(mode or "plain", row["buckets"], world)
            rows.append(row)
            if rank == 0:
                print(f"n={world} {label}: step {1e3 * row['step_s']:.1f} ms", file=sys.stderr, flush=True)
    if rank == 0:
        results.put(rows)
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


def _derive(rows: list[dict]) -> None:
    """Ratios against plain DDP and the overlap figures, in place."""
    base = next(r for r in rows if r["rule"] is None)
    floor = next(r for r in rows if r["rule"] == "local")
    for r in rows:
        r["step_vs_plain"] = r["step_s"] / base["step_s"]
        if "sent_bytes" in r:
            r["bytes_vs_plain"] = r["sent_bytes"] / base["sent_bytes"]
            r["lo_vs_counted"] = r["lo_bytes_per_rank_step"] / r["sent_bytes"]
        if r.get("comm_alone_s"):
            shown = r["step_s"] - floor["step_s"] - r.get("aggregation_s", 0.0) - r.get("local_s", 0.0)
            r["hidden"] = 1.0 - shown / r["comm_alone_s"]


def _table(rows: list[dict], n: int, grad_bytes: int) -> list[str]:
    ms = lambda s: "-" if s is None else f"{1e3 * s:.1f}"  # noqa: E731
    lines = [
        f"### n = {n} ranks",
        "",
        "| configuration | step (ms) | step / plain | hook wait (ms) | aggregation (ms) | exposed (ms) "
        "| comm alone (ms) | hidden | bytes / rank / step | bytes / plain | loopback / counted "
        "| extra memory (MiB) | extra / gradient |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mb = r["extra_memory_bytes"] / 2**20
        lines.append(
            f"| {r['label']} | {ms(r['step_s'])} | {r['step_vs_plain']:.2f} | {ms(r.get('wait_s'))} "
            f"| {ms(r.get('aggregation_s'))} | {ms(r.get('exposed_s'))} | {ms(r.get('comm_alone_s'))} "
            f"| {_pct(r.get('hidden'))} | {_mib(r.get('sent_bytes'))} | {_ratio(r.get('bytes_vs_plain'))} "
            f"| {_ratio(r.get('lo_vs_counted'))} | {mb:.1f} | {mb * 2**20 / grad_bytes:.2f} |"
        )
    return lines + [""]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:.2f} MiB"


def _write(args: argparse.Namespace, by_n: dict[int, list[dict]], command: str) -> None:
    params = sum(p.numel() for p in _model().parameters())
    grad_bytes = 4 * params
    lines = [
        "# DDP with the robust communication hook: sharded and replicated against plain DDP (CPU, gloo)",
        "",
        f"`{command}`: on {_cpu_name()} ({os.cpu_count()} cores, 1 torch thread per process), torch "
        f"{torch.__version__}, gloo over 127.0.0.1; MLP {'-'.join(map(str, LAYERS))} ({params / 1e6:.2f}M float32 "
        f"parameters, {grad_bytes / 2**20:.1f} MiB of gradients), batch {args.batch} per rank, DDP buckets of "
        f"{args.bucket_cap_mb} MB; median of {args.steps} steps after {args.warmup} warm-up steps. f: Krum "
        "(n-3)//2, TM 1 (0 at n = 2), the others 0. Krum needs n > 2f + 2, so it has no row at n = 2.",
        "",
        "Columns (see `bench/distributed.py`): *hook wait*, the hook's thread blocked on collectives; "
        "*exposed*, communication left after backward's own work; *comm alone*, the same collectives "
        "for the same buckets with nothing else running; *hidden*, the part of *comm alone* that does "
        "not show in the step; *bytes*, what the collectives send per rank (plain DDP: ring all-reduce), "
        "with the kernel's loopback count as a cross-check; *extra memory*, peak resident memory during "
        "the timed steps above the memory before them, largest over the ranks.",
        "",
    ]
    for n, rows in by_n.items():
        lines += _table(rows, n, grad_bytes)
    lines += [
        "The processes share the machine's cores (n processes on "
        f"{os.cpu_count()} cores), so every time includes waiting for a CPU and the overlap of "
        "communication with computation is bounded by it; the byte and memory columns do not depend on it. "
        "Persistent state is not in *extra memory*: centered clipping keeps its center (one gradient) "
        "and worker momentum (not used here) one more.",
        "",
        "Not run: NCCL on GPUs.",
        "",
    ]
    for path, text in (
        (args.markdown, "\n".join(lines)),
        (os.path.splitext(args.markdown)[0] + ".json", json.dumps({"command": command, "by_n": by_n}, indent=1)),
    ):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(text)
        print(f"wrote {path}", file=sys.stderr)
    plot(by_n, os.path.splitext(args.markdown)[0] + ".png")
    print("\n".join(lines))


def plot(by_n: dict, path: str) -> None:
    """Bytes, extra memory and step time against n, as ratios, for plain DDP and both hook modes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted(int(n) for n in by_n)
    panels = [
        ("bytes_vs_plain", "bytes per rank / plain DDP's"),
        ("extra_memory_bytes", "peak extra memory / gradient size"),
        ("step_vs_plain", "step time / plain DDP's"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    grad_bytes = 4 * sum(p.numel() for p in _model().parameters())
    styles = {"sharded": ("tab:blue", "-"), "replicated": ("tab:red", "--"), None: ("black", ":")}
    for ax, (key, title) in zip(axes, panels):
        lines: dict[str, list[tuple[int, float]]] = {}
        for n in ns:
            for r in by_n[n] if n in by_n else by_n[str(n)]:
                if r["rule"] == "local" or (r["rule"] is not None and r["rule"] not in ("cm", "cc")):
                    continue
                value = r.get(key)
                if value is None:
                    continue
                value = value / grad_bytes if key == "extra_memory_bytes" else value
                lines.setdefault(r["label"], []).append((n, value))
        for label, points in lines.items():
            mode = (
                "sharded" if label.startswith("sharded") else "replicated" if label.startswith("replicated") else None
            )
            color, dash = styles[mode]
            marker = "s" if label.endswith("cc") else "o"
            ax.plot(*zip(*points), color=color, linestyle=dash, marker=marker, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("ranks n")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, nargs="+", default=[2, 4, 8], help="world sizes (default 2 4 8)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per configuration (default 8)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--batch", type=int, default=16, help="examples per rank per step (default 16)")
    parser.add_argument("--bucket-cap-mb", type=float, default=1.0, help="DDP bucket size in MB (default 1)")
    parser.add_argument(
        "--rules",
        type=lambda s: s.split(","),
        default=list(RULES),
        help=f"comma-separated rules (default {','.join(RULES)})",
    )
    parser.add_argument(
        "--markdown",
        default=os.path.join("docs", "results", "distributed.md"),
        help="markdown table path; the JSON goes beside it (default docs/results/distributed.md)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.rules) - set(RULES)
    if unknown:
        parser.error(f"unknown rules {sorted(unknown)}; choose from {', '.join(RULES)}")
    command = "python bench/distributed.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"  # inherited by the ranks: freed buffers leave the RSS
    by_n = {}
    ctx = mp.get_context("spawn")
    for n in args.nproc:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        results = ctx.SimpleQueue()
        mp.start_processes(_rank, args=(n, port, args, results), nprocs=n, start_method="spawn")
        rows = results.get()
        _derive(rows)
        by_n[n] = rows
    _write(args, by_n, command.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
