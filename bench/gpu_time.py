"""Times the CUDA ops against a device-to-device copy of the same bytes.

For each (n, d): the copy of X (bytes read + written, the bandwidth roof),
one read of X (``X.sum(0)``), each robustagg op, ``torch.median(X, dim=0)``
and ``torch.cdist`` (for the distances). The distance rules' "x one read"
column is the figure of merit (target: <= 3 reads for the Gram-based rules).
For each d also ``momentum_update_`` on a list of --momentum-tensors float32
tensors totalling d elements, against ``torch._foreach_mul_`` +
``torch._foreach_add_(alpha=1-beta)``: its GB/s counts 3 accesses per element
(buffer read, grad read, buffer written), "x one read" is against one read
of d elements, and "% of copy BW" against a copy of d elements. Once, the
client steps and statistics of bench/fused_updates.py (client_step_ for
MimeLite-SGDm and Mime-SGDm, adam_client_step_ for Mime-Adam,
adam_stats_update_, mvr_update_) on a ResNet-18 parameter list (62 float32
tensors, 11.7M values): GB/s counts each op's streams (lists read + lists
written) times one list's bytes, against a copy of one list, and the fastest
torch._foreach_* composition of the same update. Median of
repeats timed with CUDA events; inputs rotate so that no repeat finds X in
L2. The catalogue's rules (MDA, MoNNA, SMEA, CAF, FLTrust, DnC, SignGuard,
ClippedClustering) at n = 10, f = 2 for each --catalogue-d. Prints a markdown table and writes it (and JSON) to --out.

    python bench/gpu_time.py --n 8 25 64 128 --d 16000000 64000000 --out bench/out/gpu
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics

import torch

import robustagg as ra


def speed_row(ms: float, moved: int, read_ms: float, copy_gbs: float, **fields) -> dict:
    """A result row: the time, the bandwidth of ``moved`` bytes, and both against a copy and one read of the input."""
    gbs = moved / ms / 1e6
    return dict(fields, ms=ms, gbs=gbs, copy_gbs=copy_gbs, pct_copy=100 * gbs / copy_gbs, x_one_read=ms / read_ms)


def time_ms(fn, inputs: list[torch.Tensor], repeats: int) -> float:
    for X in inputs[:2]:
        fn(X)
    torch.cuda.synchronize()
    times = []
    for r in range(repeats):
        X = inputs[r % len(inputs)]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(X)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def momentum_sizes(d: int, k: int) -> list[int]:
    """k tensor sizes totalling d, unequal (from about half to one and a half
    times d / k) so that chunks of different tensors share launches."""
    weights = [1.0 + (i - (k - 1) / 2) / k for i in range(k)]
    sizes = [int(d * w / sum(weights)) for w in weights]
    sizes[-1] += d - sum(sizes)
    return sizes


def momentum_case(d: int, k: int, repeats: int, l2: int, name: str, beta: float = 0.9) -> tuple[list[dict], list[str]]:
    """momentum_update_ on k float32 tensors totalling d elements, and the
    two-call torch foreach baseline; one table row."""
    sizes = momentum_sizes(d, k)
    nbytes = 3 * d * 4  # buffer read + grad read + buffer written
    copies = max(1, min(4, (8 * l2) // (2 * d * 4) + 1))
    if (3 * copies + 1) * d * 4 > torch.cuda.mem_get_info()[0]:
        return [], []
    gen = torch.Generator(device="cuda").manual_seed(d)
    inputs = [
        (
            [torch.randn(n, device="cuda", generator=gen) for n in sizes],
            [torch.randn(n, device="cuda", generator=gen) for n in sizes],
        )
        for _ in range(copies)
    ]
    flat = [torch.randn(d, device="cuda", generator=gen) for _ in range(copies)]
    out = torch.empty(d, device="cuda")
    copy_ms = time_ms(out.copy_, flat, repeats)
    read_ms = time_ms(lambda x: x.sum(), flat, repeats)
    copy_gbs = 2 * d * 4 / copy_ms / 1e6

    def fused(bg):
        ra.ops.momentum_update_(bg[0], bg[1], beta)

    def foreach(bg):
        torch._foreach_mul_(bg[0], beta)
        torch._foreach_add_(bg[0], bg[1], alpha=1.0 - beta)

    ms = time_ms(fused, inputs, repeats)
    foreach_ms = time_ms(foreach, inputs, repeats)
    op = f"momentum_update_ ({k} tensors)"
    row = speed_row(ms, nbytes, read_ms, copy_gbs, n=None, tensors=k, d=d, op=op, foreach_ms=foreach_ms, device=name)
    gbs = row["gbs"]
    line = (
        f"| - | {d:,} | {copy_gbs:.0f} | {op} | {ms:.3f} | {gbs:.0f} (3 accesses/elem) | {row['pct_copy']:.0f}% | "
        f"{ms / read_ms:.2f} | {foreach_ms / ms:.1f}x torch._foreach_mul_+_foreach_add_ |"
    )
    print(line, flush=True)
    del inputs, flat, out
    torch.cuda.empty_cache()
    return [row], [line]


def catalogue_case(
    n: int, d: int, repeats: int, l2: int, name: str, f: int = 2, device: str = "cuda", timer=None
) -> tuple[list[dict], list[str]]:
    """The catalogue's rules on an (n, d) float32 matrix, f Byzantine (FLTrust against a root
    gradient), each against one read of X, as the CPU catalogue benchmark does."""
    timer = timer or time_ms
    nbytes = n * d * 4
    copies = max(1, min(4, (8 * l2) // nbytes + 1))
    gen = torch.Generator().manual_seed(n + d)
    inputs = [torch.randn(n, d, generator=gen).to(device) for _ in range(copies)]
    root = torch.randn(d, generator=gen).to(device)
    out = torch.empty_like(inputs[0])
    copy_ms = timer(out.copy_, inputs, repeats)
    del out
    read_ms = timer(lambda X: X.sum(0), inputs, repeats)
    copy_gbs = 2 * nbytes / copy_ms / 1e6
    ops = {
        "mda": lambda X: ra.mda(X, f),
        "monna": lambda X: ra.monna(X, f),
        "smea": lambda X: ra.smea(X, f),
        "caf": lambda X: ra.caf(X, f),
        "fltrust": lambda X: ra.fltrust(X, root),
        "dnc": lambda X: ra.dnc(X, f, generator=torch.Generator().manual_seed(0)),
        "signguard": lambda X: ra.signguard(X, generator=torch.Generator().manual_seed(0)),
        "clipped_clustering": lambda X: ra.clipped_clustering(X),
    }
    rows, lines = [], []
    for op, fn in ops.items():
        ms = timer(fn, inputs, repeats)
        row = speed_row(ms, nbytes + d * 4, read_ms, copy_gbs, n=n, d=d, op=op, f=f, device=name)
        line = f"| {n} | {d:,} | {copy_gbs:.0f} | {op} | {ms:.3f} | {row['gbs']:.0f} | {row['pct_copy']:.0f}% | {ms / read_ms:.2f} | |"
        print(line, flush=True)
        rows.append(row)
        lines.append(line)
    del inputs
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows, lines


def fused_update_cases(
    repeats: int, l2: int, name: str, device: str = "cuda", timer=None
) -> tuple[list[dict], list[str]]:
    """The client steps and statistics of bench/fused_updates.py on the ResNet-18 parameter list
    (62 float32 tensors, 11.7M values): MimeLite-SGDm and Mime-SGDm client_step_, Mime-Adam
    adam_client_step_, adam_stats_update_, mvr_update_, weighted_step_ (WGA and bias-corrected
    WGA with 8 collaborators) and masked_sgd_step_ (bool, packed and no mask). GB/s counts the op's streams (every list
    read once, every written list written once) x one list's bytes; % of copy BW is against a
    device-to-device copy of one list's bytes (read + written); "x one read" against one read of
    one list; "vs torch" is the fastest of the torch._foreach_* compositions timed there."""
    # bench/fused_updates.py, found on sys.path[0] (this script's folder): the same updates, foreach
    # compositions and lists
    import fused_updates as fu

    timer = timer or time_ms
    rows, lines = [], []
    numel = sum(math.prod(s) for s in fu.RESNET18)
    list_bytes = numel * 4
    gen = torch.Generator().manual_seed(7)
    flat = [torch.randn(numel, generator=gen).to(device) for _ in range(2)]
    out = torch.empty(numel, device=device)
    copy_ms = timer(out.copy_, flat, repeats)
    read_ms = timer(lambda x: x.sum(), flat, repeats)
    copy_gbs = 2 * list_bytes / copy_ms / 1e6
    del flat, out
    for case in fu.CASES:
        if case.shapes is not fu.RESNET18:
            continue
        set_bytes = len(case.lists) * list_bytes
        copies = max(1, min(4, (8 * l2) // set_bytes + 1))
        if device == "cuda" and (copies + 2) * set_bytes > torch.cuda.mem_get_info()[0]:
            continue
        sets = [fu._make_set(case, device, gen) for _ in range(copies)]
        ms = timer(case.fused, sets, repeats)
        foreach = {k: timer(fn, sets, repeats) for k, fn in case.foreach.items()}
        best = min(foreach, key=foreach.get)
        moved = case.streams * list_bytes
        op = f"{case.name}, {len(case.shapes)} tensors"
        row = speed_row(
            ms,
            moved,
            read_ms,
            copy_gbs,
            n=None,
            tensors=len(case.shapes),
            d=numel,
            op=op,
            streams=case.streams,
            foreach_ms=foreach[best],
            foreach=best,
            device=name,
        )
        gbs = row["gbs"]
        line = (
            f"| - | {numel:,} | {copy_gbs:.0f} | {op} | {ms:.3f} | {gbs:.0f} ({case.streams} accesses/elem) | "
            f"{row['pct_copy']:.0f}% | {ms / read_ms:.2f} | {foreach[best] / ms:.1f}x torch foreach ({best}) |"
        )
        print(line, flush=True)
        rows.append(row)
        lines.append(line)
        del sets
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows, lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[8, 25, 64, 128])
    p.add_argument("--d", type=int, nargs="+", default=[16_000_000, 64_000_000])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--torch-median-max-bytes", type=float, default=4e9, help="skip torch.median above this input size")
    p.add_argument("--momentum-tensors", type=int, default=25, help="tensors in the momentum_update_ list")
    p.add_argument(
        "--catalogue-d",
        type=int,
        nargs="*",
        default=[2_000_000, 16_000_000],
        help="d of the catalogue rows (n = 10, f = 2)",
    )
    p.add_argument("--out", default="bench/out/gpu")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    name = torch.cuda.get_device_name()
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    rows = []
    header = "| n | d | copy GB/s | op | ms | GB/s (X read + result written) | % of copy BW | x one read | vs torch |"
    lines = [
        f"Device: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, float32",
        "",
        header,
        "|" + "---|" * 9,
    ]
    print("\n".join(lines), flush=True)
    for d in args.d:
        for n in args.n:
            nbytes = n * d * 4
            if 3 * nbytes > torch.cuda.mem_get_info()[0]:
                continue
            copies = max(1, min(4, (8 * l2) // nbytes + 1))
            gen = torch.Generator(device="cuda").manual_seed(n)
            inputs = [torch.randn(n, d, device="cuda", generator=gen) for _ in range(copies)]
            f = (n - 1) // 4
            fd = (n - 3) // 4  # distance rules: Bulyan needs n >= 4f + 3
            out = torch.empty_like(inputs[0])
            copy_ms = time_ms(out.copy_, inputs, args.repeats)
            del out
            read_ms = time_ms(lambda X: X.sum(0), inputs, args.repeats)
            median_ms = None
            if nbytes <= args.torch_median_max_bytes:
                median_ms = time_ms(lambda X: torch.median(X, dim=0), inputs, max(3, args.repeats // 3))
            copy_gbs = 2 * nbytes / copy_ms / 1e6
            cdist_ms = time_ms(lambda X: torch.cdist(X, X), inputs, max(3, args.repeats // 3))
            center = torch.zeros(d, device="cuda")
            ops = {
                "coordinate_median": lambda X: ra.coordinate_median(X),
                "trimmed_mean": lambda X: ra.trimmed_mean(X, f),
                "meamed": lambda X: ra.meamed(X, f),
                "mean": lambda X: ra.mean(X),
                "pairwise_sq_distances": lambda X: ra.pairwise_sq_distances(X),
                "krum": lambda X: ra.krum(X, fd),
                "multi_krum": lambda X: ra.multi_krum(X, fd),
                "geometric_median": lambda X: ra.geometric_median(X),
                "centered_clip(iters=3)": lambda X: ra.centered_clip(X, center, 1.0, 3),
                "nnm": lambda X: ra.nnm(X, fd),
                "bulyan": lambda X: ra.bulyan(X, fd),
            }
            for op, fn in ops.items():
                ms = time_ms(fn, inputs, args.repeats)
                vs = ""
                if median_ms is not None and op == "coordinate_median":
                    vs = f"{median_ms / ms:.1f}x torch.median"
                elif op == "pairwise_sq_distances":
                    vs = f"{cdist_ms / ms:.1f}x torch.cdist (float32)"
                # Bytes of one read of X and the (d,) result written (the distance
                # rules read X twice: their % of copy is per single read).
                row = speed_row(
                    ms, nbytes + d * 4, read_ms, copy_gbs, n=n, d=d, op=op, torch_median_ms=median_ms, device=name
                )
                gbs = row["gbs"]
                rows.append(row)
                line = (
                    f"| {n} | {d:,} | {copy_gbs:.0f} | {op} | {ms:.3f} | {gbs:.0f} | {row['pct_copy']:.0f}% | "
                    f"{ms / read_ms:.2f} | {vs} |"
                )
                lines.append(line)
                print(line, flush=True)
            del inputs
            torch.cuda.empty_cache()
        more_rows, more_lines = momentum_case(d, args.momentum_tensors, args.repeats, l2, name)
        rows += more_rows
        lines += more_lines
    for d in args.catalogue_d:
        more_rows, more_lines = catalogue_case(10, d, args.repeats, l2, name)
        rows += more_rows
        lines += more_lines
    more_rows, more_lines = fused_update_cases(args.repeats, l2, name)
    rows += more_rows
    lines += more_lines
    with open(os.path.join(args.out, "gpu-time.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "gpu-time.json"), "w") as fh:
        json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
