"""Small calls of every CUDA kernel, for compute-sanitizer (memcheck, racecheck).

Covers each kernel instantiation: register kernels (n <= 8, 16, 32, 64), the
shared-memory tile kernel (n > 64, and n > 32 for float64), every mode, every
dtype, tails (d not a multiple of the block), strided rows, and the mean
with and without weights; the distance kernels (Gram tiles with and without
a center, diagonal and off-diagonal tile pairs, split and grouped column
chunks), mixing, row norms, dots and distances to a vector, through the
rules built on them (the catalogue's Gram rules and FLTrust included). Selection
rules and mixing must equal the CPU op bit for bit; float64 sums (distances,
norms) may differ by rounding. The fused momentum update (multi-tensor
launches: a tensor spanning 2 chunks, 0-D, empty and strided tensors, mixed
dtypes, more tensors than one launch holds) must equal the CPU op bit for
bit, and so must client_step_, adam_client_step_, adam_stats_update_ and
mvr_update_ (the same cases, each optional list present and absent, several
scalar sets), with their read-only lists unchanged; so must weighted_step_
(device address table: a tensor spanning 3 chunks of 8192, N = 0, 1, 3 and
33, corrections present and absent) and masked_sgd_step_ (no mask, bool and
packed masks, with and without weight decay, more tensors than one launch
holds). Exits non-zero on a mismatch.
"""

import sys

import torch

import robustagg as ra


def close(got: torch.Tensor, want: torch.Tensor, rtol: float) -> bool:
    if not torch.equal(got.isnan(), want.isnan()) or not torch.equal(got.isinf(), want.isinf()):
        return False
    ok = torch.isfinite(want)
    return torch.allclose(got[ok].double(), want[ok].double(), rtol=rtol, atol=rtol)


def check_distance_ops(X: torch.Tensor, Xc: torch.Tensor, dtype: torch.dtype, n: int) -> int:
    """The distance kernels through their ops; counts mismatches."""
    failures = 0
    center = torch.randn(X.shape[1], dtype=torch.float64).to(dtype)
    C = torch.rand(3, n + 1, dtype=torch.float64)
    C[:, 0] = 0.0  # row 0 holds NaN: a zero coefficient must not read it
    calls = [
        ("pairwise_sq_distances", lambda A, c: ra.exact_geometry.distances_and_finite(A)[0], 1e-9),
        ("pairwise_sq_distances(center)", lambda A, c: ra.exact_geometry.distances_and_finite(A, c)[0], 1e-9),
        ("finite rows", lambda A, c: ra.exact_geometry.distances_and_finite(A, c)[1], 0.0),
        ("mix_rows", lambda A, c: ra.ops.mix_rows(C.to(A.device), A, c), 0.0),
        ("row_sq_norms", lambda A, c: ra.ops.row_sq_norms(A), 1e-9),
        ("row_sq_norms_and_dots", lambda A, c: ra.ops.row_sq_norms_and_dots(A, c), 1e-9),
        ("row_sq_distances", lambda A, c: ra.ops.row_sq_distances(A, c), 1e-9),
        ("fltrust", lambda A, c: ra.fltrust(A, c), 1e-4),
        ("mean_around_median", lambda A, c: ra.ops.mean_around_median(A, max(1, n // 3)), 0.0),
    ]
    if n > 4:
        f = (n - 3) // 4
        calls += [
            ("krum", lambda A, c: ra.krum(A, f), 1e-6),
            ("geometric_median", lambda A, c: ra.geometric_median(A), 1e-4),
            ("centered_clip", lambda A, c: ra.centered_clip(A, c, 1.0, 3), 1e-4),
            ("nnm", lambda A, c: ra.nnm(A, f), 1e-6),
            ("monna", lambda A, c: ra.monna(A, f, pivot=1), 1e-6),
            ("caf", lambda A, c: ra.caf(A, f), 1e-4),
        ]
    if 4 < n <= 13:  # subset searches, within their budget
        calls += [("mda", lambda A, c: ra.mda(A, f), 1e-6), ("smea", lambda A, c: ra.smea(A, f), 1e-6)]
    for name, call, rtol in calls:
        got = call(Xc, center.cuda()).cpu()
        want = call(X, center)
        ok = same(got, want) if rtol == 0.0 else close(got, want, rtol)
        if not ok:
            failures += 1
            print(f"MISMATCH {name} dtype={dtype} n={n}", file=sys.stderr)
    return failures


def same(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal values, NaN where want has NaN."""
    return torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())


def check_momentum_update(device: str = "cuda") -> int:
    """The multi-tensor momentum kernel through momentum_update_; counts mismatches with the CPU op."""
    failures = 0
    gen = torch.Generator().manual_seed(0)
    chunk = 65536  # elements per block (csrc/cuda/multi_tensor.cuh)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16, None):
        dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
        # None: the pairs alternate dtypes (one launch sequence per dtype).
        pick = (lambda i: dtypes[i % 4]) if dtype is None else (lambda i: dtype)
        shapes = [(chunk + 17,), (5, 33), (), (0,), (3, 4, 7)]
        ms = [torch.randn(s, generator=gen, dtype=torch.float64).to(pick(i)) for i, s in enumerate(shapes)]
        gs = [torch.randn(s, generator=gen, dtype=torch.float64).to(pick(i)) for i, s in enumerate(shapes)]
        ms[0][chunk - 1 : chunk + 1] = float("nan")  # NaN on both sides of the chunk boundary
        gs[1][0, :2] = float("inf")
        # A strided buffer and grad (updated through a contiguous copy written back).
        ms.append(torch.randn(40, 30, generator=gen, dtype=torch.float64).to(pick(5)).t())
        gs.append(torch.randn(30, 80, generator=gen, dtype=torch.float64).to(pick(5))[:, ::2])
        # More tensors than one launch holds (36): 40 tiny pairs.
        ms += [torch.randn(3, generator=gen, dtype=torch.float64).to(pick(6 + k)) for k in range(40)]
        gs += [torch.randn(3, generator=gen, dtype=torch.float64).to(pick(6 + k)) for k in range(40)]
        for beta in (0.9, 0.0):
            want = [m.clone() for m in ms]
            ra.ops.momentum_update_(want, gs, beta)
            got = [m.to(device) for m in ms]
            ra.ops.momentum_update_(got, [g.to(device) for g in gs], beta)
            for i, (a, b) in enumerate(zip(got, want)):
                if not same(a.cpu(), b):
                    failures += 1
                    print(f"MISMATCH momentum_update_ dtype={a.dtype} pair={i} beta={beta}", file=sys.stderr)
    return failures


def same_bits(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Same dtype, shape and bits (signed zeros included); NaN where want has NaN (payloads aside)."""
    if got.dtype != want.dtype or got.shape != want.shape:
        return False
    nan = want.isnan()
    if not torch.equal(got.isnan(), nan):
        return False
    ints = {8: torch.int64, 4: torch.int32, 2: torch.int16}[want.element_size()]
    return torch.equal(got.contiguous().view(ints)[~nan], want.contiguous().view(ints)[~nan])


# Every list of each fused update (signature order), the lists it writes, its optional lists,
# and scalar sets (every coefficient non-trivial; edge values too).
FUSED_LISTS = {
    "client_step_": ("params", "grads", "anchor_grads", "control", "momentum"),
    "adam_client_step_": ("params", "grads", "anchor_grads", "control", "exp_avg", "exp_avg_sq"),
    "adam_stats_update_": ("exp_avg", "exp_avg_sq", "grads"),
    "mvr_update_": ("momentum", "grads", "prev_grads"),
}
FUSED_WRITTEN = {
    "client_step_": ("params",),
    "adam_client_step_": ("params",),
    "adam_stats_update_": ("exp_avg", "exp_avg_sq"),
    "mvr_update_": ("momentum",),
}
FUSED_OPTIONAL = {
    "client_step_": ("anchor_grads", "control", "momentum"),
    "adam_client_step_": ("anchor_grads", "control"),
}
FUSED_SCALARS = {
    "client_step_": [
        dict(lr=0.05, coef_grad=0.3, coef_anchor=-0.45, coef_control=0.7, coef_momentum=1.25),
        dict(lr=1.0, coef_grad=1.0, coef_anchor=0.0, coef_control=0.0, coef_momentum=0.0),
    ],
    "adam_client_step_": [
        dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-3, step=3),
        dict(lr=1e-3, beta1=0.0, beta2=0.0, eps=1e-8, step=1),
    ],
    "adam_stats_update_": [dict(beta1=0.8, beta2=0.95), dict(beta1=0.0, beta2=1.0)],
    "mvr_update_": [dict(a=0.2), dict(a=1.0), dict(a=0.0)],
}


def mismatches(op: str, pairs, context: str) -> int:
    """Count (and print) the tensors of ``pairs`` = [(name, got list, want list)] whose bits differ."""
    count = 0
    for name, got, want in pairs:
        for i, (a, b) in enumerate(zip(got, want)):
            if not same_bits(a.cpu(), b):
                count += 1
                print(f"MISMATCH {op} {name}[{i}] dtype={a.dtype} {context}", file=sys.stderr)
    return count


def check_fused_updates(device: str = "cuda") -> int:
    """client_step_, adam_client_step_, adam_stats_update_ and mvr_update_ (multi-tensor launches with
    2 to 6 pointer lists, absent optional lists as null pointers): a tensor spanning 2 chunks, 0-D,
    empty and strided tensors, more tensors than one launch holds, every dtype and mixed dtypes, each
    optional list present and absent; the written lists must equal the CPU op bit for bit, the read
    lists must be unchanged. Counts mismatches."""
    failures = 0
    gen = torch.Generator().manual_seed(1)
    chunk = 65536  # elements per block (csrc/cuda/multi_tensor.cuh)
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    for op, names in FUSED_LISTS.items():
        optional = FUSED_OPTIONAL.get(op, ())
        for dtype in (*dtypes, None):
            pick = (lambda i: dtypes[i % 4]) if dtype is None else (lambda i, d=dtype: d)
            shapes = [(chunk + 17,), (5, 33), (), (0,), (3, 4, 7)] + [(3,)] * 40  # 45 tensors > 36 per launch
            lists = {}
            for name in names:
                xs = [torch.randn(s, generator=gen, dtype=torch.float64).to(pick(i)) for i, s in enumerate(shapes)]
                if name == "exp_avg_sq":
                    xs = [x.abs() for x in xs]
                # A strided tensor (updated through a contiguous copy written back when written).
                xs.append(torch.randn(40, 30, generator=gen, dtype=torch.float64).to(pick(len(shapes))).t())
                lists[name] = xs
            first = lists[names[0]][0]
            first[chunk - 1 : chunk + 1] = float("nan")  # NaN on both sides of the chunk boundary
            lists[names[1]][1][0, :2] = float("inf")
            presences = [set(optional)] + ([set()] if optional else [])
            for present in presences:
                use = [n for n in names if n not in optional or n in present]
                for scalars in FUSED_SCALARS[op]:
                    want = {n: [x.clone() for x in lists[n]] for n in use}
                    getattr(ra.ops, op)(**want, **scalars)
                    got = {n: [x.to(device, copy=True) for x in lists[n]] for n in use}
                    getattr(ra.ops, op)(**got, **scalars)
                    for n in use:
                        ref = want[n] if n in FUSED_WRITTEN[op] else lists[n]
                        for i, (a, b) in enumerate(zip(got[n], ref)):
                            if not same_bits(a.cpu(), b):
                                failures += 1
                                kind = "written" if n in FUSED_WRITTEN[op] else "read-only, changed"
                                print(
                                    f"MISMATCH {op} {n}[{i}] ({kind}) dtype={a.dtype} lists={use} {scalars}",
                                    file=sys.stderr,
                                )
    return failures


def check_weighted_masked(device: str = "cuda") -> int:
    """weighted_step_ (the table kernel: shared-memory addresses and weights, chunks of 8192, 2N + 2
    lists) and masked_sgd_step_ (ChunkList<4>, masks as bytes or packed bits): every dtype and
    mixed dtypes, 0-D, empty and strided tensors, NaN on a chunk boundary; the written lists must
    equal the CPU op bit for bit, the read lists must be unchanged. Counts mismatches."""
    failures = 0
    gen = torch.Generator().manual_seed(2)
    table_chunk, chunk = 8192, 65536  # elements per block (csrc/cuda/fused_update.cu, multi_tensor.cuh)
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

    def make(shapes, pick):
        xs = [torch.randn(s, generator=gen, dtype=torch.float64).to(pick(i)) for i, s in enumerate(shapes)]
        xs.append(torch.randn(40, 30, generator=gen, dtype=torch.float64).to(pick(len(shapes))).t())
        return xs

    for dtype in (*dtypes, None):
        pick = (lambda i: dtypes[i % 4]) if dtype is None else (lambda i, d=dtype: d)
        # weighted_step_
        for n in (0, 1, 3, 33):
            shapes = [(2 * table_chunk + 5,), (5, 33), (), (0,)] if n < 33 else [(7,), (), (0,)]
            params = make(shapes, pick)
            params[0][table_chunk - 1 : table_chunk + 1] = float("nan")  # both sides of a chunk boundary
            grads = [make(shapes, pick) for _ in range(n + 1)]
            corr = [make(shapes, pick) for _ in range(n)]
            weights = [0.5 - 0.01 * i for i in range(n + 1)]
            for corrected in (True, False):
                want_p = [x.clone() for x in params]
                want_c = [[x.clone() for x in cl] for cl in corr] if corrected else None
                ra.ops.weighted_step_(want_p, grads, weights, 0.1, corrections=want_c, beta=0.3)
                got_p = [x.to(device, copy=True) for x in params]
                got_g = [[x.to(device, copy=True) for x in gl] for gl in grads]
                got_c = [[x.to(device, copy=True) for x in cl] for cl in corr] if corrected else None
                ra.ops.weighted_step_(got_p, got_g, weights, 0.1, corrections=got_c, beta=0.3)
                pairs = [("params", got_p, want_p)] + [(f"grads[{u}]", got_g[u], grads[u]) for u in range(n + 1)]
                if corrected:
                    pairs += [(f"corrections[{i}]", got_c[i], want_c[i]) for i in range(n)]
                failures += mismatches("weighted_step_", pairs, f"N={n} corrected={corrected}")
        # masked_sgd_step_: 45 tensors > 36 per launch
        shapes = [(chunk + 17,), (5, 33), (), (0,), (3, 4, 7)] + [(3,)] * 40
        ps, ms, gs = make(shapes, pick), make(shapes, pick), make(shapes, pick)
        ps[0][chunk - 1 : chunk + 1] = float("nan")
        bools = [torch.rand(s, generator=gen) < 0.5 for s in shapes] + [torch.rand(30, 40, generator=gen) < 0.5]
        for kind in (None, "bool", "packed"):
            masks = None if kind is None else bools if kind == "bool" else [ra.ops.pack_mask(b) for b in bools]
            for wd in (0.0, 0.01):
                want_p, want_m = [x.clone() for x in ps], [x.clone() for x in ms]
                ra.ops.masked_sgd_step_(want_p, gs, want_m, 0.1, 0.9, masks=masks, weight_decay=wd)
                got_p, got_m = [x.to(device, copy=True) for x in ps], [x.to(device, copy=True) for x in ms]
                got_g = [x.to(device, copy=True) for x in gs]
                got_masks = None if masks is None else [x.to(device, copy=True) for x in masks]
                ra.ops.masked_sgd_step_(got_p, got_g, got_m, 0.1, 0.9, masks=got_masks, weight_decay=wd)
                pairs = (("params", got_p, want_p), ("momentum", got_m, want_m), ("grads", got_g, gs))
                failures += mismatches("masked_sgd_step_", pairs, f"masks={kind} wd={wd}")
    return failures


def main() -> int:
    torch.manual_seed(0)
    failures = 0
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        print(f"coordinate and distance kernels, {dtype}", flush=True)  # progress, for a run cut short
        for n in (1, 5, 8, 13, 25, 33, 64, 65, 100):
            X = torch.randn(n, 2 * 301, dtype=torch.float64).to(dtype)[:, ::2]  # strided, d = 301
            X[0, :3] = float("nan")
            X[-1, 3:6] = float("inf")
            f = (n - 1) // 3
            Xc = X.cuda()
            calls = [
                ("coordinate_median", lambda A: ra.coordinate_median(A)),
                ("trimmed_mean", lambda A: ra.trimmed_mean(A, f)),
                ("meamed", lambda A: ra.meamed(A, f)),
                ("mean", lambda A: ra.mean(A)),
                ("mean(weights)", lambda A: ra.mean(A, torch.arange(1.0, n + 1, device=A.device))),
            ]
            for name, call in calls:
                got = call(Xc).cpu()
                want = call(X)
                if not torch.equal(got.isnan(), want.isnan()) or not torch.equal(got.nan_to_num(), want.nan_to_num()):
                    failures += 1
                    print(f"MISMATCH {name} dtype={dtype} n={n}", file=sys.stderr)
            failures += check_distance_ops(X, Xc, dtype, n)
    for check in (check_momentum_update, check_fused_updates, check_weighted_masked):
        print(check.__name__, flush=True)
        failures += check()
    torch.cuda.synchronize()
    print(f"gpu_sanitize: {failures} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
