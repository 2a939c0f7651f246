"""The ``robustagg bench`` subcommand: its options (:func:`add_parser`) and the run they start
(:func:`_cmd_bench`), which builds a :class:`~robustagg.bench.suite.SuiteConfig` from them, runs it, writes
the JSON and optionally the markdown, and prints the table. Registering the parser imports only
:mod:`.params` (for the dtypes); the suite's modules load when the command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

import torch

from ..arguments import check_output_path, int_list, output_path, positive_float, positive_int, write_text
from .params import DTYPES

__all__ = ["add_parser"]

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
  catalogue:       mda monna smea caf dnc fltrust signguard clipped_clustering
                   (f = floor((n-1)/4) where a rule takes f)
  all (default)
Distance cases: krum m = 1, multi_krum m = n - f; geometric_median tol 1e-10,
nu 1e-6, max_iter 200, and byzfl's GeometricMedian run for the first T in
1, 2, 3, 5, ..., 200 that reaches robustagg's objective (found untimed per
shape, reported in the notes); centered_clip tau 1, 3 iterations from 0;
bucketing s = 2 (seeded); clip c = sqrt(d). Catalogue cases: monna pivot 0;
dnc 5 draws of 10000 columns (seeded); fltrust with row 0 as the root update;
signguard with its defaults, 10% of the columns drawn (seeded);
clipped_clustering clipped to the median norm.

Default grids (--n / --d replace every family's grid):
  cpu, coordinate: n = 8 25 32 64 128, d = 4M      (--quick: n = 8 25, d = 1M)
  cpu, distance:   n = 10 25 64, d = 1M 4M         (--quick: n = 25, d = 100k)
  cpu, catalogue:  n = 10, d = 1M 2M               (--quick: n = 10, d = 100k)
  cuda:            n = 8 25 64 128, d = 1M 16M 64M (--quick: n = 8 25, d = 16M)
  cuda, catalogue: n = 10, d = 16M
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


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``bench`` on the subcommands ``sub`` (``set_defaults(func=..., parser=...)``)."""
    b = sub.add_parser(
        "bench",
        help="time the ops against one read of X, torch and byzfl; print a table, write JSON",
        description=_BENCH_DESCRIPTION,
        epilog=_BENCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument(
        "--quick", action="store_true", help="small grid and fewer repeats (well under a minute on 2 CPU cores)"
    )
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
    b.add_argument(
        "--n",
        nargs="+",
        type=int_list,
        metavar="N",
        help="numbers of rows (workers), e.g. 10 25 64 or 10,25,64; default: the grids above",
    )
    b.add_argument(
        "--d",
        nargs="+",
        type=int_list,
        metavar="D",
        help="numbers of columns (coordinates), e.g. 1M 4M, 1M,4M or 100k; default: the grids above",
    )
    b.add_argument(
        "--dtype",
        nargs="+",
        choices=list(DTYPES),
        default=["float32"],
        metavar="DTYPE",
        help=f"dtypes (default float32; of {' '.join(DTYPES)})",
    )
    b.add_argument(
        "--repeats",
        type=positive_int,
        help="timed calls per function, median reported (default 10, --quick 5); slow baselines are cut to 3",
    )
    b.add_argument("--warmup", type=positive_int, help="untimed calls first (default 2, --quick 1)")
    b.add_argument(
        "--max-seconds",
        type=positive_float,
        help="time budget per timed function; fewer repeats (>= 3) beyond it (default 10, --quick 2)",
    )
    b.add_argument(
        "--json",
        metavar="PATH",
        type=output_path,
        help="where to write the JSON (default bench/out/bench-<device>.json)",
    )
    b.add_argument(
        "--markdown", metavar="PATH", type=output_path, help="also write a markdown table here (for docs/results/)"
    )
    b.add_argument("--no-baselines", action="store_true", help="time only the ops, one read of X and (CUDA) the copy")
    b.add_argument("--no-byzfl", action="store_true", help="skip byzfl even when it is importable")
    b.add_argument(
        "--no-memory",
        action="store_true",
        help="do not measure peak extra memory (saves one child process per shape on CPU)",
    )
    b.add_argument(
        "--no-check",
        action="store_true",
        help="do not compare each op with the float64 reference on a slice of its input",
    )
    b.add_argument(
        "--malloc-default",
        action="store_true",
        help="leave glibc malloc as it is (default: reuse freed buffers up to 32 MB, so a result's page faults are not timed on some calls and not others)",
    )
    b.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's default)")
    b.add_argument(
        "--mem-budget-gb",
        type=positive_float,
        help="memory a run may use per device (default: 60%% of available RAM; 80%% of free GPU memory)",
    )
    b.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    b.set_defaults(func=_cmd_bench, parser=b)


def _op_list(text: str) -> list[str]:
    """The argparse type of --ops: op and group names as ops (the table of cases loads only when --ops is given)."""
    from .cases import expand_ops

    try:
        return expand_ops([text])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_bench(args: argparse.Namespace) -> int:
    """Run the suite that the options describe; 1 when an op disagrees with the reference or a case failed."""
    from .. import ops
    from .cases import ALL_OPS, op_family
    from .report import format_markdown, format_table
    from .suite import SuiteConfig, default_suite, run_suite

    cuda_ok = torch.cuda.is_available() and ops.cuda_kernels_built()
    if args.device == "cuda" and not cuda_ok:
        why = "no CUDA GPU is visible" if not torch.cuda.is_available() else "robustagg was built without CUDA kernels"
        args.parser.error(f"--device cuda, but {why}")
    json_path = args.json or os.path.join("bench", "out", f"bench-{args.device}.json")
    try:
        check_output_path(json_path)  # the default path too, before the suite runs
    except ValueError as exc:
        args.parser.error(f"the JSON path: {exc}")
    if args.threads:
        torch.set_num_threads(args.threads)
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

    write_text(json_path, json.dumps(result, indent=1) + "\n")
    sys.stdout.write(format_table(result))
    sys.stdout.flush()
    print(f"JSON: {json_path}", file=sys.stderr)
    if args.markdown:
        write_text(args.markdown, format_markdown(result, command))
        print(f"markdown: {args.markdown}", file=sys.stderr)
    mismatches = [r for r in result["rows"] if r.get("check", "ok") != "ok"]
    return 1 if mismatches or result["failed"] else 0
