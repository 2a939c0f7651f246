"""A table of hostile inputs for every public function of robustagg, and a runner for it.

Each case is a thunk that calls one public function with one hostile input
and checks what came back: it returns normally when the result is correct
(a clear ValueError/TypeError counts as correct for inputs that are not
allowed), and raises AssertionError otherwise. ``tests/test_hostile.py`` runs
the table in child processes (``python tests/hostile_cases.py FIRST``), one
line of JSON per case, so that a crash is reported as the case that caused
it instead of ending the test run.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import traceback
from collections.abc import Callable

import torch

import robustagg
from robustagg import attacks, ops

BIG = 1.7976931348623157e308
CLEAR_ERRORS = (ValueError, TypeError)
CASE_SECONDS = 20  # a case still running then counts as a hang


def _x(n: int = 9, d: int = 5, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# The rules and pre-aggregators: name -> (function, keyword arguments that make a valid call).
RULES: dict[str, tuple[Callable, dict]] = {
    "mean": (robustagg.mean, {}),
    "coordinate_median": (robustagg.coordinate_median, {}),
    "trimmed_mean": (robustagg.trimmed_mean, {"f": 2}),
    "meamed": (robustagg.meamed, {"f": 2}),
    "mean_around_median": (ops.mean_around_median, {"keep": 4}),
    "krum": (robustagg.krum, {"f": 2}),
    "multi_krum": (robustagg.multi_krum, {"f": 2}),
    "bulyan": (robustagg.bulyan, {"f": 1}),
    "geometric_median": (robustagg.geometric_median, {}),
    "centered_clip": (robustagg.centered_clip, {"tau": 1.0}),
    "pairwise_sq_distances": (robustagg.pairwise_sq_distances, {}),
    "row_sq_norms": (ops.row_sq_norms, {}),
    "nnm": (robustagg.nnm, {"f": 2}),
    "bucketing": (robustagg.bucketing, {"s": 2}),
    "clip": (robustagg.clip, {"c": 1.0}),
    "arc": (robustagg.arc, {"f": 2}),
}


def _call(name: str, X, **override):
    fn, kwargs = RULES[name]
    kwargs = dict(kwargs, **override)
    if name == "centered_clip" and "center" not in kwargs:
        width = X.shape[-1] if isinstance(X, torch.Tensor) and X.dim() >= 1 else 1
        kwargs["center"] = torch.zeros(
            width,
            dtype=X.dtype if isinstance(X, torch.Tensor) else torch.float32,
            device=X.device if isinstance(X, torch.Tensor) else "cpu",
        )
    if name == "bucketing":
        kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return fn(X, **kwargs)


def refused(thunk: Callable, *, kinds=CLEAR_ERRORS, match: str | None = None) -> None:
    """The call raises one of ``kinds`` with a one-line message (containing ``match``)."""
    try:
        thunk()
    except kinds as e:
        message = str(e)
        assert message and "\n" not in message.strip(), f"unclear message: {message!r}"
        assert match is None or match in message, f"{match!r} not in {message!r}"
        return
    raise AssertionError("accepted")


def same_as_contiguous(name: str, X: torch.Tensor) -> None:
    """Any layout gives the bits of the contiguous copy."""
    got, want = _call(name, X), _call(name, X.contiguous().clone())
    assert torch.equal(torch.nan_to_num(got, nan=7.0), torch.nan_to_num(want, nan=7.0)), f"{got} != {want}"


def finite_result(name: str, X: torch.Tensor) -> None:
    out = _call(name, X)
    assert torch.isfinite(out).all(), f"finite input, non-finite result {out}"


def _rule_cases() -> dict[str, Callable[[], None]]:
    cases: dict[str, Callable[[], None]] = {}
    wrong_inputs = {
        "list": lambda: _x().tolist(),
        "none": lambda: None,
        "string": lambda: "X",
        "scalar": lambda: torch.tensor(1.0),
        "1d": lambda: torch.randn(5),
        "3d": lambda: torch.randn(2, 3, 4),
        "no-rows": lambda: torch.empty(0, 5),
        "int64": lambda: torch.ones(9, 5, dtype=torch.int64),
        "complex": lambda: torch.ones(9, 5, dtype=torch.complex64),
        "bool": lambda: torch.ones(9, 5, dtype=torch.bool),
    }
    layouts = {
        "transposed": lambda: _x(5, 9).t(),
        "strided": lambda: _x(9, 10)[:, ::2],
        "expanded-rows": lambda: _x(1, 5).expand(9, 5),
        "row-stride-0-cols": lambda: _x(9, 1).expand(9, 5),
    }
    finite_extremes = {
        "huge-float64": lambda: _x(dtype=torch.float64) * 1e200,
        "largest-float64": lambda: (
            torch.full((9, 5), BIG, dtype=torch.float64)
            * torch.tensor([1.0, -1.0] * 4 + [1.0], dtype=torch.float64)[:, None]
        ),
        "tiny-float64": lambda: _x(dtype=torch.float64) * 1e-310,
        "huge-float32": lambda: _x() * 1e37,
        "float16": lambda: _x(dtype=torch.float16),
        "bfloat16": lambda: _x(dtype=torch.bfloat16),
    }
    for name in RULES:
        for label, make in wrong_inputs.items():
            cases[f"{name}/X={label}"] = lambda name=name, make=make: refused(lambda: _call(name, make()))
        cases[f"{name}/X=meta"] = lambda name=name: _meta(name)
        for label, make in layouts.items():
            cases[f"{name}/X={label}"] = lambda name=name, make=make: same_as_contiguous(name, make())
        for label, make in finite_extremes.items():
            if name in ("row_sq_norms", "pairwise_sq_distances") and ("huge" in label or "largest" in label):
                continue  # their float64 results may overflow by definition: checked in test_magnitudes
            cases[f"{name}/X={label}"] = lambda name=name, make=make: finite_result(name, make())
        cases[f"{name}/X=nan-and-inf-rows"] = lambda name=name: _non_finite_rows(name)
    ints = {
        "negative": -1,
        "2**62": 2**62,
        "2**63": 2**63,
        "2**64": 2**64,
        "-2**63": -(2**63),
        "bool": True,
        "float": 1.5,
        "string": "2",
        "none": None,
        "nan": math.nan,
    }
    # Counts that are only bounds or sizes may be huge: the result is that of the bound reached first.
    large_ok = {("bucketing", "s"), ("centered_clip", "iters"), ("geometric_median", "max_iter")}
    for name, arg, small in [
        ("bucketing", "s", 9),
        ("centered_clip", "iters", 10_000),
        ("geometric_median", "max_iter", 10_000),
    ]:
        cases[f"{name}/{arg}=2**62"] = lambda name=name, arg=arg, small=small: _same(
            _call(name, _x(), **{arg: 2**62}), _call(name, _x(), **{arg: small})
        )
    for name, (_, kwargs) in RULES.items():
        for arg in ("f", "keep", "s"):
            if arg in kwargs:
                for label, value in ints.items():
                    if (name, arg) in large_ok and label == "2**62":
                        continue
                    cases[f"{name}/{arg}={label}"] = lambda name=name, arg=arg, value=value: refused(
                        lambda: _call(name, _x(), **{arg: value}), match=arg
                    )
    for name, arg in [("krum", "m"), ("multi_krum", "m"), ("centered_clip", "iters"), ("geometric_median", "max_iter")]:
        for label, value in ints.items():
            if label == "none" and name == "multi_krum" or (name, arg) in large_ok and label == "2**62":
                continue  # m=None is multi_krum's default
            cases[f"{name}/{arg}={label}"] = lambda name=name, arg=arg, value=value: refused(
                lambda: _call(name, _x(), **{arg: value}), match=arg
            )
    reals = {"nan": math.nan, "negative": -1.0, "zero": 0.0, "string": "1", "complex": 1j, "bool": True, "list": [1.0]}
    for name, arg in [("centered_clip", "tau"), ("clip", "c"), ("geometric_median", "nu"), ("geometric_median", "tol")]:
        for label, value in reals.items():
            if arg == "tol" and label == "zero":
                continue  # tol=0 runs max_iter updates
            cases[f"{name}/{arg}={label}"] = lambda name=name, arg=arg, value=value: refused(
                lambda: _call(name, _x(), **{arg: value}), match=arg
            )
    cases["bucketing/generator=seed"] = lambda: refused(
        lambda: robustagg.bucketing(_x(), 2, generator=0), match="generator"
    )
    cases["mean/weights=list"] = lambda: refused(lambda: robustagg.mean(_x(), [1.0] * 9), match="weights")
    cases["mean/weights=nan"] = lambda: refused(
        lambda: robustagg.mean(_x(), torch.full((9,), math.nan)), match="weights"
    )
    cases["mean/weights=meta"] = lambda: refused(
        lambda: robustagg.mean(_x(), torch.ones(9, device="meta")), match="meta"
    )
    cases["mix_rows/C=meta"] = lambda: refused(
        lambda: ops.mix_rows(torch.ones(1, 9, dtype=torch.float64, device="meta"), _x()), match="meta"
    )
    cases["mix_rows/X=meta"] = lambda: refused(
        lambda: ops.mix_rows(torch.ones(1, 9, dtype=torch.float64), _x().to("meta")), match="meta"
    )
    cases["centered_clip/center=meta"] = lambda: refused(
        lambda: robustagg.centered_clip(_x(), torch.zeros(5, device="meta"), tau=1.0), match="meta"
    )
    cases["centered_clip/center=zero-far-rows"] = lambda: finite_result(
        "centered_clip", _x(dtype=torch.float64) * 1e200
    )
    return cases


def _same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert torch.equal(got, want), f"{got} != {want}"


# Rules whose coefficients are computed from values (distances, norms): meta tensors have none.
_NEED_VALUES = {"krum", "multi_krum", "bulyan", "geometric_median", "centered_clip", "nnm", "clip", "arc"}


def _meta(name: str) -> None:
    """Only meta tensors: the others propagate shapes to a meta result; these refuse, as torch does, for lack of data."""
    if name in _NEED_VALUES:
        refused(lambda: _call(name, _x().to("meta")), kinds=(NotImplementedError,), match="meta")
        return
    assert _call(name, _x().to("meta")).device.type == "meta"


# Rules whose result stays finite with two non-finite rows of nine (f = 2, or weight 0 for NaN/inf rows);
# the others pass non-finite rows on by their contract (the mean, norms, distances, the rows themselves).
_ROBUST_TO_TWO = {
    "coordinate_median",
    "trimmed_mean",
    "meamed",
    "mean_around_median",
    "krum",
    "multi_krum",
    "bulyan",
    "geometric_median",
    "centered_clip",
}


def _non_finite_rows(name: str) -> None:
    X = _x()
    X[0, 1], X[3] = math.nan, math.inf
    out = _call(name, X)
    finite_rows = [i for i in range(9) if i not in (0, 3)]
    if name in _ROBUST_TO_TWO:
        assert torch.isfinite(out).all(), f"non-finite result {out}"
    elif name in ("nnm", "clip", "arc"):
        assert torch.isfinite(out[finite_rows]).all(), "finite rows made non-finite"
        assert not torch.isfinite(out[[0, 3]]).all(1).any(), "a non-finite row became finite"


# The fused in-place ops: a valid call, and ways of spoiling it. Every refusal
# must leave every tensor as it was.


def _fused_call(op: str, L: dict) -> None:
    if op == "momentum_update_":
        ops.momentum_update_(L["a"], L["b"], L.get("beta", 0.9))
    elif op == "client_step_":
        ops.client_step_(L["a"], L["b"], L.get("lr", 0.1), momentum=L["c"], coef_momentum=0.5)
    elif op == "adam_client_step_":
        ops.adam_client_step_(
            L["a"], L["b"], L["c"], [t.abs() for t in L["c"]], L.get("lr", 0.1), 0.9, 0.99, 1e-8, L.get("step", 1)
        )
    elif op == "adam_stats_update_":
        ops.adam_stats_update_(L["a"], L["c"], L["b"], L.get("beta", 0.9), 0.99)
    elif op == "mvr_update_":
        ops.mvr_update_(L["a"], L["b"], L["c"], L.get("beta", 0.1))
    elif op == "weighted_step_":
        ops.weighted_step_(
            L["a"], [L["b"], L["c"]], [0.5, 0.5], L.get("lr", 0.1), corrections=[L["d"]], beta=L.get("beta", 0.2)
        )
    elif op == "masked_sgd_step_":
        ops.masked_sgd_step_(
            L["a"], L["b"], L["c"], L.get("lr", 0.1), L.get("beta", 0.9), weight_decay=L.get("weight_decay", 0.0)
        )


FUSED = [name for name in ops.__all__ if name.endswith("_")]  # the in-place (fused update) ops


def _lists() -> dict:
    g = torch.Generator().manual_seed(1)
    return {k: [torch.randn(6, 4, generator=g), torch.randn(9, generator=g)] for k in "abcd"}


def untouched_after_refusal(op: str, spoil: Callable[[dict], None], kinds=CLEAR_ERRORS) -> None:
    L = _lists()
    spoil(L)
    tensors = [t for k in "abcd" for t in L[k] if isinstance(t, torch.Tensor) and t.device.type != "meta"]
    before = [t.detach().clone() for t in tensors]
    refused(lambda: _fused_call(op, L), kinds=kinds)
    for t, t0 in zip(tensors, before):
        assert torch.equal(t.detach().view(torch.int32), t0.view(torch.int32)), "a refused call wrote a tensor"


def _overlap_written_and_read(L: dict) -> None:
    buffer = torch.randn(12)
    L["a"][1], L["b"][1] = buffer[0:9], buffer[3:12]


def _fused_cases() -> dict[str, Callable[[], None]]:
    spoilers: dict[str, tuple[Callable[[dict], None], tuple]] = {
        "twice-written": (lambda L: L["a"].__setitem__(1, L["a"][0].reshape(-1)[:9]), CLEAR_ERRORS),
        "written-overlaps-read": (_overlap_written_and_read, CLEAR_ERRORS),
        "expanded-written": (lambda L: L["a"].__setitem__(1, torch.zeros(1).expand(9)), CLEAR_ERRORS),
        "leaf-requires-grad": (lambda L: L["a"][1].requires_grad_(True), (RuntimeError,)),
        "meta-read": (lambda L: L["b"].__setitem__(1, torch.empty(9, device="meta")), CLEAR_ERRORS),
        "meta-written": (lambda L: L["a"].__setitem__(0, torch.empty(6, 4, device="meta")), CLEAR_ERRORS),
        "shape-mismatch": (lambda L: L["b"].__setitem__(1, torch.randn(8)), CLEAR_ERRORS),
        "dtype-mismatch": (lambda L: L["b"].__setitem__(1, torch.randn(9, dtype=torch.float64)), CLEAR_ERRORS),
        "int-tensor": (lambda L: L["a"].__setitem__(1, torch.ones(9, dtype=torch.int32)), CLEAR_ERRORS),
        "short-list": (lambda L: L["b"].pop(), CLEAR_ERRORS),
        "not-a-tensor": (lambda L: L["b"].__setitem__(1, [0.0] * 9), CLEAR_ERRORS),
        "lr-nan": (lambda L: L.__setitem__("lr", math.nan), CLEAR_ERRORS),
        "lr-string": (lambda L: L.__setitem__("lr", "0.1"), CLEAR_ERRORS),
        "beta-huge": (lambda L: L.__setitem__("beta", 1e300), CLEAR_ERRORS),
        "step-2**63": (lambda L: L.__setitem__("step", 2**63), CLEAR_ERRORS),
        "step-0": (lambda L: L.__setitem__("step", 0), CLEAR_ERRORS),
        "weight-decay-inf": (lambda L: L.__setitem__("weight_decay", math.inf), CLEAR_ERRORS),
    }
    applies = {
        "lr-nan": {"client_step_", "adam_client_step_", "weighted_step_", "masked_sgd_step_"},
        "lr-string": {"client_step_", "adam_client_step_", "weighted_step_", "masked_sgd_step_"},
        "beta-huge": {"momentum_update_", "adam_stats_update_", "mvr_update_", "weighted_step_"},
        "step-2**63": {"adam_client_step_"},
        "step-0": {"adam_client_step_"},
        "weight-decay-inf": {"masked_sgd_step_"},
    }
    cases = {}
    for op in FUSED:
        for label, (spoil, kinds) in spoilers.items():
            if label in applies and op not in applies[label]:
                continue
            cases[f"{op}/{label}"] = lambda op=op, spoil=spoil, kinds=kinds: untouched_after_refusal(op, spoil, kinds)
        cases[f"{op}/valid"] = lambda op=op: _fused_call(op, _lists())
    return cases


def _object_cases() -> dict[str, Callable[[], None]]:
    """Aggregator objects, attacks and optimizers at their boundary."""
    honest, byz = _x(7, 5), _x(2, 5, seed=1)
    cases = {
        "TrimmedMean/f=2**62": lambda: refused(lambda: robustagg.TrimmedMean(f=2**62)(_x()), match="f"),
        "TrimmedMean/list-of-floats": lambda: refused(lambda: robustagg.TrimmedMean(f=1)([[1.0, 2.0]] * 5)),
        "Krum/numpy": lambda: refused(lambda: robustagg.Krum(f=1)(_x().numpy())),
        "Pipeline/list-of-lists": lambda: refused(lambda: (robustagg.NNM(f=1) >> robustagg.Mean())([[0.5]] * 5)),
        "ALIE/z=nan": lambda: refused(lambda: attacks.ALIE(z=math.nan)),
        "IPM/eps=string": lambda: refused(lambda: attacks.IPM(eps="0.1")),
        "Gaussian/generator=int": lambda: refused(lambda: attacks.Gaussian(generator=3)(honest, byz)),
        "SignFlip/mismatched-width": lambda: refused(lambda: attacks.SignFlip()(honest, _x(2, 4))),
        "WorkerMomentum/beta=1.5": lambda: refused(lambda: robustagg.optim.WorkerMomentum(1.5)),
        "WorkerMomentum/beta=nan": lambda: refused(lambda: robustagg.optim.WorkerMomentum(math.nan)),
    }
    return cases


def cli_exits_2(argv: list[str]) -> None:
    """The command refuses the options at once: exit status 2, one line on stderr, no run."""
    import contextlib
    import io

    from robustagg.cli import main

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main(argv)
    except SystemExit as e:
        assert e.code == 2, f"exit status {e.code}: {err.getvalue()[-300:]}"
        last = err.getvalue().strip().splitlines()[-1]
        assert "error:" in last, err.getvalue()
        return
    raise AssertionError("the command ran")


def _cli_cases() -> dict[str, Callable[[], None]]:
    bad = {
        "byzantine/lr=nan": ["train", "byzantine", "--lr", "nan"],
        "byzantine/lr=-1": ["train", "byzantine", "--lr", "-1"],
        "byzantine/momentum=1": ["train", "byzantine", "--momentum", "1"],
        "byzantine/cc-tau=-1": ["train", "byzantine", "--agg", "cc", "--cc-tau", "-1"],
        "byzantine/alie-z=nan": ["train", "byzantine", "--alie-z", "nan"],
        "byzantine/krum-f-too-large": ["train", "byzantine", "--agg", "krum", "--workers", "10", "--byzantine", "4"],
        "byzantine/byzantine=workers": ["train", "byzantine", "--workers", "5", "--byzantine", "5"],
        "byzantine/batch-beyond-data": ["train", "byzantine", "--batch", "100000"],
        "byzantine/rounds=0": ["train", "byzantine", "--rounds", "0"],
        "byzantine/json=directory": ["train", "byzantine", "--json", "/"],
        "byzantine/plot=under-a-file": ["train", "byzantine", "--plot", os.path.abspath(__file__) + "/x.png"],
        "federated/beta=1": ["train", "federated", "--beta", "1"],
        "federated/lr=0": ["train", "federated", "--lr", "0"],
        "federated/per-round>clients": ["train", "federated", "--clients", "5", "--per-round", "6"],
        "personalized/lr=inf": ["train", "personalized", "--lr", "inf"],
        "bench/json=directory": ["bench", "--quick", "--json", "/"],
        "bench/markdown=directory": ["bench", "--quick", "--markdown", "/"],
        "bench/repeats=0": ["bench", "--repeats", "0"],
        "bench/n=-3": ["bench", "--n", "-3"],
    }
    return {f"cli/{label}": lambda argv=argv: cli_exits_2(argv) for label, argv in bad.items()}


def all_cases() -> dict[str, Callable[[], None]]:
    return {**_rule_cases(), **_fused_cases(), **_object_cases(), **_cli_cases()}


def run(first: int) -> None:
    """Run the cases from index ``first`` on, one JSON line each, started before the call so a crash names it."""
    cases = list(all_cases().items())

    def hang(signum, frame):
        raise TimeoutError(f"still running after {CASE_SECONDS} s")

    signal.signal(signal.SIGALRM, hang)
    for index in range(first, len(cases)):
        label, thunk = cases[index]
        print(json.dumps({"start": index}), flush=True)
        try:
            signal.alarm(CASE_SECONDS)
            try:
                thunk()
            finally:
                signal.alarm(0)
            outcome = {"index": index, "label": label, "ok": True}
        except BaseException as e:  # noqa: BLE001  (the case's verdict, whatever went wrong)
            detail = "".join(traceback.format_exception_only(type(e), e)).strip()
            outcome = {"index": index, "label": label, "ok": False, "detail": detail}
        print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    run(int(sys.argv[1]))
