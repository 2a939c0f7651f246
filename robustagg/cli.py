"""The ``robustagg`` command (also ``python -m robustagg``).

Subcommands:

* ``bench``: time the ops (coordinate-wise rules, distance rules,
  pre-aggregators) against one read of the input, the plain-PyTorch way and
  byzfl (when installed); print a table, write JSON and optionally a markdown
  table.
* ``train byzantine``: Byzantine-robust training with worker momentum on the
  built-in digits data, one run or the whole grid (``--grid``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence

import torch

__all__ = ["main", "build_parser"]

_BENCH_DESCRIPTION = """\
Time robustagg's ops on random standard-normal (n, d) inputs.

For each op, n, d, dtype and device it reports the median time, the bytes of
X read per second, the ratio to one read of X (X.sum(0), same run), the
speed-up over the plain-PyTorch way (torch.median(X, 0); a torch.sort
trimmed mean; a sort/argsort/gather MeaMed; X.mean(0); torch.cdist-based
Krum, Multi-Krum, Bulyan and NNM; Weiszfeld and centered-clipping loops in X
space; ...) and over byzfl's aggregators when `import byzfl` works, the share
of the device-to-device copy bandwidth (CUDA), and the peak extra memory of
one call (beyond its result) for the op and its torch baseline.

Ops (--ops takes op names and groups, space- or comma-separated):
  coordinate:      coordinate_median trimmed_mean meamed mean  (f = floor((n-1)/4))
  distance:        pairwise_sq_distances krum multi_krum bulyan geometric_median
                   centered_clip nnm bucketing clip arc  (f = floor((n-3)/4))
  preaggregators:  nnm bucketing clip arc
  all (default)
Distance cases: krum m = 1, multi_krum m = n - f; geometric_median tol 1e-10,
nu 1e-6, max_iter 200, and byzfl's GeometricMedian run for the first T in
1, 2, 3, 5, ..., 200 that reaches robustagg's objective (found untimed per
shape, reported in the notes); centered_clip tau 1, 3 iterations from 0;
bucketing s = 2 (seeded); clip c = sqrt(d).

Default grids (--n / --d replace both families' grids):
  cpu, coordinate: n = 8 25 32 64 128, d = 4M      (--quick: n = 8 25, d = 1M)
  cpu, distance:   n = 10 25 64, d = 1M 4M         (--quick: n = 25, d = 100k)
  cuda:            n = 8 25 64 128, d = 1M 16M 64M (--quick: n = 8 25, d = 16M)
Cases whose input does not fit the memory budget are skipped, and so is a
baseline whose extra memory would not fit.

The table goes to stdout, one progress line per case to stderr, the JSON to
--json (default bench/out/bench-<device>.json). Exit status 1 when an op
disagrees with the float64 reference (checked on a slice of each input) or a
case failed."""

_BENCH_EPILOG = """\
examples:
  robustagg bench --quick
  robustagg bench --markdown docs/results/cpu-bench.md
  robustagg bench --ops distance --n 10,25,64 --d 1M,4M     # the distance ops' target grid
  robustagg bench --ops krum,geometric_median --n 25 --d 100k --no-memory
  robustagg bench --device cuda --n 8 25 64 --d 16000000
  robustagg bench --ops coordinate_median --n 25 --d 1000000 --dtype float32 bfloat16 --repeats 20"""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .bench import DTYPES

    parser = argparse.ArgumentParser(
        prog="robustagg",
        description="robustagg: fast, exact robust aggregation for PyTorch (CPU and CUDA kernels).",
        epilog="Run `robustagg <command> --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"robustagg {__version__} (torch {torch.__version__})")
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    b = sub.add_parser(
        "bench",
        help="time the ops against one read of X, torch and byzfl; print a table, write JSON",
        description=_BENCH_DESCRIPTION,
        epilog=_BENCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("--quick", action="store_true", help="small grid and fewer repeats (well under a minute on 2 CPU cores)")
    b.add_argument(
        "--device",
        choices=["cpu", "cuda", "all"],
        default="cpu",
        help="where to run: cpu (default), cuda, or all (cpu, then cuda when a GPU and the CUDA kernels exist)",
    )
    b.add_argument(
        "--ops",
        nargs="+",
        type=_op_list,
        metavar="OP",
        help="ops or groups to time, space- or comma-separated: all (default), coordinate, distance, preaggregators, or op names",
    )
    b.add_argument("--n", nargs="+", type=_int_list, metavar="N", help="numbers of rows (workers), e.g. 10 25 64 or 10,25,64; default: the grids above")
    b.add_argument("--d", nargs="+", type=_int_list, metavar="D", help="numbers of columns (coordinates), e.g. 1M 4M, 1M,4M or 100k; default: the grids above")
    b.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=["float32"], metavar="DTYPE", help=f"dtypes (default float32; of {' '.join(DTYPES)})")
    b.add_argument("--repeats", type=_positive_int, help="timed calls per function, median reported (default 10, --quick 5); slow baselines are cut to 3")
    b.add_argument("--warmup", type=_positive_int, help="untimed calls first (default 2, --quick 1)")
    b.add_argument("--max-seconds", type=float, help="time budget per timed function; fewer repeats (>= 3) beyond it (default 10, --quick 2)")
    b.add_argument("--json", metavar="PATH", help="where to write the JSON (default bench/out/bench-<device>.json)")
    b.add_argument("--markdown", metavar="PATH", help="also write a markdown table here (for docs/results/)")
    b.add_argument("--no-baselines", action="store_true", help="time only the ops, one read of X and (CUDA) the copy")
    b.add_argument("--no-byzfl", action="store_true", help="skip byzfl even when it is importable")
    b.add_argument("--no-memory", action="store_true", help="do not measure peak extra memory (saves one child process per shape on CPU)")
    b.add_argument("--no-check", action="store_true", help="do not compare each op with the float64 reference on a slice of its input")
    b.add_argument(
        "--malloc-default",
        action="store_true",
        help="leave glibc malloc as it is (default: reuse freed buffers up to 32 MB, so a result's page faults are not timed on some calls and not others)",
    )
    b.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: torch's default)")
    b.add_argument("--mem-budget-gb", type=float, help="memory a run may use per device (default: 60%% of available RAM; 80%% of free GPU memory)")
    b.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    b.set_defaults(func=_cmd_bench)

    t = sub.add_parser("train", help="run a line of work on the built-in digits data (scikit-learn, no download)")
    lines = t.add_subparsers(dest="line", metavar="<line>")
    _add_byzantine_parser(lines)
    t.set_defaults(func=lambda args: (t.print_help(), 2)[1])
    return parser


_BYZANTINE_DESCRIPTION = """\
Byzantine-robust training (Karimireddy, He, Jaggi, ICML 2021) on scikit-learn's
digits: n workers, the last f of them Byzantine, each honest worker sending its
worker momentum m = beta m + (1 - beta) g of a fresh batch gradient every round;
the server aggregates with the chosen rule (after optional bucketing) and takes
an SGD step.

Rules: mean, cm (coordinate median), tm (trimmed mean, f per side), meamed,
krum, mkrum (Multi-Krum), bulyan, gm (geometric median), cc (centered clipping).
Attacks: none, sign_flip, label_flip, ipm, alie, gaussian, nan, inf, mimic,
optimal_alie, optimal_ipm.

One run prints a progress bar and a summary, and writes the JSON result
(accuracy per evaluation, per-round time of the gradients, momentum, attack
and aggregation) and a PNG of test accuracy per round. --grid runs the grid
of docs/results/byzantine.md (attacks x rules x momentum x f, and bucketing
on a label-sorted split) and writes the table, figures and a JSON summary."""

_BYZANTINE_EPILOG = """\
examples:
  robustagg train byzantine --agg cc --attack alie --workers 25 --byzantine 11 --momentum 0.9
  robustagg train byzantine --agg cm --attack alie --byzantine 11 --momentum 0
  robustagg train byzantine --agg krum --attack ipm --bucketing 2 --split sorted
  robustagg train byzantine --agg gm --attack label_flip --split dirichlet:0.5 --rounds 500 --seed 3
  robustagg train byzantine --grid                  # writes docs/results/byzantine.md
  robustagg train byzantine --grid --seeds 1 --rounds 100 --out /tmp/grid"""


def _add_byzantine_parser(lines: argparse._SubParsersAction) -> None:
    from .attacks import ATTACKS
    from .sim.byzantine import RULES, ByzantineConfig

    d = ByzantineConfig()
    p = lines.add_parser(
        "byzantine",
        help="Byzantine-robust training with worker momentum and attacks (one run or --grid)",
        description=_BYZANTINE_DESCRIPTION,
        epilog=_BYZANTINE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--agg", choices=list(RULES), default=d.agg, help=f"aggregation rule (default {d.agg})")
    p.add_argument("--attack", choices=list(ATTACKS), default=d.attack, help=f"attack of the Byzantine workers (default {d.attack})")
    p.add_argument("--workers", type=_positive_int, default=d.workers, help=f"n, all workers (default {d.workers})")
    p.add_argument("--byzantine", type=int, default=d.byzantine, help=f"f, Byzantine workers among them (default {d.byzantine})")
    p.add_argument("--momentum", type=float, default=d.momentum, help=f"worker momentum beta in [0, 1) (default {d.momentum})")
    p.add_argument("--bucketing", type=int, default=d.bucketing, help="bucket size s >= 2 in front of the rule (default: none)")
    p.add_argument("--split", default=d.split, help="iid, sorted (label-sorted) or dirichlet:ALPHA (default iid)")
    p.add_argument("--model", choices=["mlp", "logreg"], default=d.model, help="model (default mlp, 64-hidden-10)")
    p.add_argument("--hidden", type=_positive_int, default=d.hidden, help=f"hidden units of the MLP (default {d.hidden})")
    p.add_argument("--rounds", type=_positive_int, default=d.rounds, help=f"training rounds (default {d.rounds})")
    p.add_argument("--batch", type=_positive_int, default=d.batch, help=f"examples per worker per round (default {d.batch})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"server learning rate (default {d.lr})")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the split, initialisation, batches and attacks (default 0)")
    p.add_argument("--eval-every", type=_positive_int, default=d.eval_every, help=f"rounds between evaluations (default {d.eval_every})")
    p.add_argument("--rule-f", type=int, help="the f the rule assumes (default: --byzantine)")
    p.add_argument("--cc-tau", type=float, default=d.cc_tau, help=f"centered clipping radius (default {d.cc_tau})")
    p.add_argument("--cc-iters", type=_positive_int, default=d.cc_iters, help=f"centered clipping iterations (default {d.cc_iters})")
    p.add_argument("--gm-iters", type=_positive_int, default=d.gm_iters, help=f"most Weiszfeld steps of gm (default {d.gm_iters})")
    p.add_argument("--ipm-eps", type=float, default=d.ipm_eps, help=f"IPM scale (default {d.ipm_eps})")
    p.add_argument("--alie-z", type=float, help="ALIE z (default: from n and f, SPEC 5)")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: torch's default; the grid uses 1 per process)")
    p.add_argument("--json", metavar="PATH", help="result JSON (default runs/byzantine-<agg>-<attack>-f<f>-m<beta>-s<seed>.json)")
    p.add_argument("--plot", metavar="PATH", help="accuracy plot (default: the JSON path with .png)")
    g = p.add_argument_group("grid")
    g.add_argument("--grid", action="store_true", help="run the whole grid instead of one run")
    g.add_argument("--seeds", type=_positive_int, default=3, help="seeds per grid cell (default 3)")
    g.add_argument("--jobs", type=_positive_int, default=os.cpu_count() or 1, help="grid processes (default: the CPU count)")
    g.add_argument("--out", default=os.path.join("docs", "results"), help="folder of the grid's byzantine.md, PNGs and JSON (default docs/results)")
    p.set_defaults(func=_cmd_train_byzantine)


def _cmd_train_byzantine(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .sim.byzantine import ByzantineConfig, run_byzantine
    from .sim.report import Progress, plot_curves

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ByzantineConfig(
        agg=args.agg, attack=args.attack, workers=args.workers, byzantine=args.byzantine, momentum=args.momentum,
        bucketing=args.bucketing, split=args.split, model=args.model, hidden=args.hidden, rounds=args.rounds,
        batch=args.batch, lr=args.lr, seed=args.seed, eval_every=args.eval_every, rule_f=args.rule_f,
        cc_tau=args.cc_tau, cc_iters=args.cc_iters, gm_iters=args.gm_iters, ipm_eps=args.ipm_eps, alie_z=args.alie_z,
    )
    try:
        cfg.check()
    except ValueError as exc:
        print(f"robustagg train byzantine: {exc}", file=sys.stderr)
        return 2
    if args.grid:
        return _byzantine_grid(args, cfg)

    progress = Progress(cfg.rounds, f"{cfg.agg} vs {cfg.attack}")
    result = run_byzantine(cfg, progress=lambda t, acc: progress.update(t, f"test acc {acc:.3f}"))
    progress.close()
    result["command"] = "robustagg " + " ".join(shlex.quote(a) for a in args.argv)
    stem = os.path.join("runs", f"byzantine-{cfg.agg}-{cfg.attack}-f{cfg.byzantine}-m{cfg.momentum:g}-s{cfg.seed}")
    json_path = args.json or stem + ".json"
    plot_path = args.plot or os.path.splitext(json_path)[0] + ".png"
    _write(json_path, json.dumps(result, indent=1) + "\n")
    rounds = [p["round"] for p in result["curve"]]
    title = (f"{result['rule']} vs {cfg.attack}: f = {cfg.byzantine} of {cfg.workers}, momentum {cfg.momentum}, "
             f"{cfg.split}, seed {cfg.seed}")
    plot_curves(plot_path, {"test accuracy": (rounds, [p["test_accuracy"] for p in result["curve"]])}, title, "test accuracy")
    best = max(result["curve"], key=lambda p: p["test_accuracy"])
    sec = {k: 1e3 * v for k, v in result["seconds_per_round"].items()}
    print(f"rule {result['rule']}, attack {result['attack']}")
    print(f"f = {cfg.byzantine} of {cfg.workers}, momentum {cfg.momentum}, split {cfg.split}, {cfg.model}, "
          f"{cfg.rounds} rounds, seed {cfg.seed}")
    print(f"test accuracy: final {result['final_test_accuracy']:.4f}, mean of the last 20% of rounds {result['tail_test_accuracy']:.4f} (best {best['test_accuracy']:.4f} at round {best['round']})")
    print(f"per round: gradients {sec['gradients']:.2f} ms, momentum {sec['momentum']:.3f} ms, attack {sec['attack']:.2f} ms, "
          f"aggregation {sec['aggregation']:.2f} ms ({result['aggregation_over_gradients']:.2f}x the gradients)")
    print(f"JSON: {json_path}\nplot: {plot_path}")
    return 0


def _byzantine_grid(args: argparse.Namespace, base) -> int:
    import platform
    import time

    from .sim.byzantine_grid import grid_configs, grid_markdown, grid_plots, run_grid
    from .sim.report import Progress

    configs = grid_configs(args.seeds, args.rounds, base)
    print(f"byzantine grid: {len(configs)} runs of {args.rounds} rounds in {args.jobs} processes", file=sys.stderr)
    progress = Progress(len(configs), "grid")
    start = time.perf_counter()
    results = run_grid(configs, args.jobs, lambda k, r: progress.update(
        k, f"last: {r['config']['agg']} vs {r['config']['attack']} f={r['config']['byzantine']} -> {r['final_test_accuracy']:.3f}"))
    progress.close()
    wall = time.perf_counter() - start
    command = "robustagg " + " ".join(shlex.quote(a) for a in args.argv)
    machine = f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}"
    md_path = os.path.join(args.out, "byzantine.md")
    text = grid_markdown(results, command, wall, args.jobs, machine)
    if os.path.exists(md_path):
        # Keep the hand-written reading of the results across regenerations.
        old = open(md_path).read()
        if "\n## Reading\n" in old:
            text += "\n## Reading\n" + old.split("\n## Reading\n", 1)[1]
    _write(md_path, text)
    plots = grid_plots(results, args.out)
    keys = ("config", "final_test_accuracy", "tail_test_accuracy", "seconds_per_round", "wall_seconds")
    summary = [{k: r[k] for k in keys} for r in results]
    json_path = os.path.join(args.out, "byzantine.json")
    runs = ",\n".join(json.dumps(run) for run in summary)  # one run per line
    _write(json_path, f'{{"command": {json.dumps(command)}, "wall_seconds": {wall:.1f}, "runs": [\n{runs}\n]}}\n')
    print(f"{len(results)} runs in {wall / 60:.1f} min")
    print(f"table: {md_path}\nplots: {', '.join(plots)}\nJSON: {json_path}")
    return 0


def _op_list(text: str) -> list[str]:
    from .bench import expand_ops

    try:
        return expand_ops([text])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_SUFFIX = {"k": 1000, "m": 1000**2, "g": 1000**3}


def _int_list(text: str) -> list[int]:
    """Comma-separated positive integers, each optionally with a k / M / G (decimal) suffix."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        scale = _SUFFIX.get(part[-1].lower(), 1)
        out.append(_positive_int(part[:-1] if scale > 1 else part) * scale)
    if not out:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return out


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import ops
    from .bench import ALL_OPS, SuiteConfig, default_suite, format_markdown, format_table, op_family, run_suite

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda_ok = torch.cuda.is_available() and ops.cuda_kernels_built()
    if args.device == "cuda" and not cuda_ok:
        why = "no CUDA GPU is visible" if not torch.cuda.is_available() else "robustagg was built without CUDA kernels"
        print(f"robustagg bench: --device cuda, but {why}", file=sys.stderr)
        return 2
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if args.device == "all" and not cuda_ok:
        print("robustagg bench: no usable GPU (or no CUDA kernels); running the CPU suite only", file=sys.stderr)
        devices = ["cpu"]

    cfg = SuiteConfig(
        devices=devices,
        ops=list(dict.fromkeys(op for ops_ in args.ops or [ALL_OPS] for op in ops_)),
        dtypes=list(dict.fromkeys(args.dtype)),
        repeats=args.repeats or (5 if args.quick else 10),
        warmup=args.warmup or (1 if args.quick else 2),
        max_seconds=args.max_seconds or (2.0 if args.quick else 10.0),
        baselines=not args.no_baselines,
        byzfl=not args.no_byzfl,
        memory=not args.no_memory,
        check=not args.no_check,
        seed=args.seed,
        pin_malloc=not args.malloc_default,
        quick=args.quick,
    )
    n_given = [n for ns in args.n or [] for n in ns]
    d_given = [d for ds in args.d or [] for d in ds]
    for dev in devices:
        ns, ds = default_suite(dev, args.quick)
        cfg.ns[dev] = n_given or ns
        cfg.ds[dev] = d_given or ds
        for family in dict.fromkeys(op_family(op) for op in cfg.ops):
            ns, ds = default_suite(dev, args.quick, family)
            cfg.family_grids.setdefault(family, {})[dev] = (n_given or ns, d_given or ds)
        if args.mem_budget_gb:
            cfg.mem_budget_bytes[dev] = int(args.mem_budget_gb * (1 << 30))

    result = run_suite(cfg)
    command = "robustagg " + " ".join(shlex.quote(a) for a in args.argv)
    result["config"]["command"] = command

    json_path = args.json or os.path.join("bench", "out", f"bench-{args.device}.json")
    _write(json_path, json.dumps(result, indent=1) + "\n")
    sys.stdout.write(format_table(result))
    sys.stdout.flush()
    print(f"JSON: {json_path}", file=sys.stderr)
    if args.markdown:
        _write(args.markdown, format_markdown(result, command))
        print(f"markdown: {args.markdown}", file=sys.stderr)
    mismatches = [r for r in result["rows"] if r.get("check", "ok") != "ok"]
    return 1 if mismatches or result["failed"] else 0


def _write(path: str, text: str) -> None:
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
