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
from collections.abc import Callable, Sequence

import torch

from .validation import _interval, check_real

__all__ = [
    "main", "build_parser", "check_output_dir", "check_output_path", "closed_unit_interval", "finite_float", "fraction",
    "nonnegative_float", "nonnegative_int", "output_dir", "output_path", "positive_float", "positive_float_or_inf",
    "positive_int", "real_type", "unit_interval",
]

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
    b.add_argument("--repeats", type=positive_int, help="timed calls per function, median reported (default 10, --quick 5); slow baselines are cut to 3")
    b.add_argument("--warmup", type=positive_int, help="untimed calls first (default 2, --quick 1)")
    b.add_argument("--max-seconds", type=positive_float, help="time budget per timed function; fewer repeats (>= 3) beyond it (default 10, --quick 2)")
    b.add_argument("--json", metavar="PATH", type=output_path,
                   help="where to write the JSON (default bench/out/bench-<device>.json)")
    b.add_argument("--markdown", metavar="PATH", type=output_path, help="also write a markdown table here (for docs/results/)")
    b.add_argument("--no-baselines", action="store_true", help="time only the ops, one read of X and (CUDA) the copy")
    b.add_argument("--no-byzfl", action="store_true", help="skip byzfl even when it is importable")
    b.add_argument("--no-memory", action="store_true", help="do not measure peak extra memory (saves one child process per shape on CPU)")
    b.add_argument("--no-check", action="store_true", help="do not compare each op with the float64 reference on a slice of its input")
    b.add_argument(
        "--malloc-default",
        action="store_true",
        help="leave glibc malloc as it is (default: reuse freed buffers up to 32 MB, so a result's page faults are not timed on some calls and not others)",
    )
    b.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's default)")
    b.add_argument("--mem-budget-gb", type=positive_float, help="memory a run may use per device (default: 60%% of available RAM; 80%% of free GPU memory)")
    b.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    b.set_defaults(func=_cmd_bench, parser=b)

    from .sim.commands import add_train_parser

    add_train_parser(sub)
    return parser


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
        out.append(positive_int(part[:-1] if scale > 1 else part) * scale)
    if not out:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return out


# ---------------------------------------------------------------------------
# argparse types shared by every command: a bad value exits with status 2 and one line naming the option and
# the value, before any work starts.


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    convert.__name__ = what
    return convert


positive_int = _int_at_least(1, "a positive integer")
nonnegative_int = _int_at_least(0, "an integer >= 0")


def real_type(low: float | None = None, high: float | None = None, *, low_open: bool = False,
              high_open: bool = False, allow_inf: bool = False) -> Callable[[str], float]:
    """An argparse type: a float meeting :func:`robustagg.validation.check_real`'s condition with these bounds."""
    condition = _interval(low, high, low_open, high_open, allow_inf)
    what = f"a number {condition}" if condition.startswith("in ") else f"a number ({condition})"

    def convert(text: str) -> float:
        try:
            return check_real(float(text), "value", "option", low, high, low_open=low_open, high_open=high_open,
                              allow_inf=allow_inf)
        except ValueError:  # not a number, or out of bounds
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None

    convert.__name__ = what
    return convert


positive_float = real_type(0.0, low_open=True)
positive_float_or_inf = real_type(0.0, low_open=True, allow_inf=True)
nonnegative_float = real_type(0.0)
finite_float = real_type()
unit_interval = real_type(0.0, 1.0, high_open=True)  # momenta: 1 would never take a gradient
closed_unit_interval = real_type(0.0, 1.0)
fraction = real_type(0.0, 1.0, low_open=True)


def _check_folder(folder: str) -> None:
    """``folder`` exists as a writable directory or can be made: its nearest existing ancestor is one."""
    probe = folder
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{probe!r} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write in {probe!r}")


def check_output_path(path: str) -> str:
    """A file the run can write at its end: not a directory, not read-only, its folder writable or creatable
    (the writers make missing folders). Raises ValueError saying what is wrong."""
    if not path:
        raise ValueError("expected a file path, got ''")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, expected a file path")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"{path!r} is not writable")
    _check_folder(os.path.dirname(os.path.abspath(path)))
    return path


def check_output_dir(path: str) -> str:
    """A folder the run can write its files in: an existing writable directory, or one that can be made."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{path!r} is not a directory")
    _check_folder(os.path.abspath(path))
    return path


def _path_type(check: Callable[[str], str]) -> Callable[[str], str]:
    def convert(text: str) -> str:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = check.__name__
    return convert


output_path = _path_type(check_output_path)
output_dir = _path_type(check_output_dir)


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import ops
    from .bench import ALL_OPS, SuiteConfig, default_suite, format_markdown, format_table, op_family, run_suite

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
