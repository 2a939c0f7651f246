"""Bad command-line options exit with status 2 and one line from argparse, before any work starts.

Every run, grid, suite and DDP launch is replaced by a function that raises ``Ran``: a refused command must
never get there, an accepted one must.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("robustagg.sim.commands")

from robustagg.cli import build_parser, main  # noqa: E402
from robustagg.sim.report import progress_bar  # noqa: E402  (before the fixture below replaces it)


class Ran(Exception):
    """The command got past its checks and started work."""


def _ran(*args, **kwargs):
    raise Ran


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    import robustagg.bench.suite
    from robustagg.examples import ddp_train
    from robustagg.sim import (
        byzantine,
        byzantine_grid,
        federated,
        federated_grid,
        masked,
        masked_grid,
        personalized,
        personalized_grid,
        report,
    )

    for module, name in (
        (byzantine, "run_byzantine"),
        (federated, "run_federated"),
        (personalized, "run_personalized"),
        (masked, "run_masked"),
        (byzantine_grid, "run_grid"),
        (federated_grid, "run_grid"),
        (personalized_grid, "run_grid"),
        (masked_grid, "run_grid"),
        (report, "progress_bar"),
        (robustagg.bench.suite, "run_suite"),
        (ddp_train, "_launch"),
    ):
        monkeypatch.setattr(module, name, _ran)


def _refused(argv: list[str], capsys) -> str:
    """Run ``robustagg <argv>``; assert exit status 2, nothing on stdout, one error line last on stderr; return it."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.rstrip("\n").splitlines()
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert lines[-1].startswith("robustagg ")
    return lines[-1]


BYZ = ["train", "byzantine"]
FED = ["train", "federated"]
PER = ["train", "personalized"]
MSK = ["train", "masked"]
DDP = ["train", "ddp"]

# (argv, what the error line must say: the option or field, and the value)
BAD = [
    # byzantine: values
    (BYZ + ["--momentum", "1"], "argument --momentum: expected a number in [0, 1), got '1'"),
    (BYZ + ["--momentum", "-0.1"], "argument --momentum: expected a number in [0, 1), got '-0.1'"),
    (BYZ + ["--momentum", "nan"], "argument --momentum"),
    (BYZ + ["--lr", "0"], "argument --lr: expected a number (finite and > 0), got '0'"),
    (BYZ + ["--lr", "-0.1"], "argument --lr"),
    (BYZ + ["--lr", "nan"], "argument --lr: expected a number (finite and > 0), got 'nan'"),
    (BYZ + ["--lr", "inf"], "argument --lr"),
    (BYZ + ["--lr", "fast"], "argument --lr: expected a number (finite and > 0), got 'fast'"),
    (BYZ + ["--cc-tau", "-1"], "argument --cc-tau: expected a number (> 0), got '-1'"),
    (BYZ + ["--cc-tau", "nan"], "argument --cc-tau"),
    (BYZ + ["--ipm-eps", "-0.5"], "argument --ipm-eps"),
    (BYZ + ["--ipm-eps", "nan"], "argument --ipm-eps"),
    (BYZ + ["--alie-z", "nan"], "argument --alie-z: expected a number (finite), got 'nan'"),
    (BYZ + ["--alie-z", "inf"], "argument --alie-z"),
    (BYZ + ["--byzantine", "-1"], "argument --byzantine: expected an integer >= 0, got '-1'"),
    (BYZ + ["--workers", "0"], "argument --workers: expected a positive integer, got '0'"),
    (BYZ + ["--rounds", "0"], "argument --rounds"),
    (BYZ + ["--rounds", "-3"], "argument --rounds"),
    (BYZ + ["--batch", "0"], "argument --batch"),
    (BYZ + ["--eval-every", "0"], "argument --eval-every"),
    (BYZ + ["--cc-iters", "0"], "argument --cc-iters"),
    (BYZ + ["--rule-f", "-1"], "argument --rule-f"),
    (BYZ + ["--bucketing", "-2"], "argument --bucketing"),
    (BYZ + ["--seed", "-1"], "argument --seed"),
    (BYZ + ["--threads", "0"], "argument --threads"),
    (BYZ + ["--split", "dirichlet:-1"], "argument --split: split: expected iid, sorted or dirichlet:ALPHA"),
    (BYZ + ["--split", "random"], "argument --split"),
    # byzantine: combinations the rule, the workers or the data cannot take
    (BYZ + ["--byzantine", "25"], "byzantine must be in [0, workers), got 25 of 25"),
    (BYZ + ["--workers", "10", "--byzantine", "12"], "got 12 of 10"),
    (
        BYZ + ["--agg", "krum", "--byzantine", "12"],
        "rule krum cannot take f=12 of 25 workers: krum: f=12 needs n > 2*f + 2",
    ),
    (BYZ + ["--agg", "mkrum", "--workers", "10", "--byzantine", "4"], "multi_krum: f=4 needs n > 2*f + 2, got n=10"),
    (BYZ + ["--agg", "tm", "--byzantine", "13"], "trimmed_mean: f=13 needs n > 2*f, got n=25"),
    (BYZ + ["--agg", "bulyan", "--byzantine", "6"], "bulyan: f=6 needs n >= 4*f + 3, got n=25"),
    (
        BYZ + ["--agg", "krum", "--byzantine", "3", "--bucketing", "5"],
        "in buckets of 5: krum: f=3 needs n > 2*f + 2, got n=5",
    ),
    (BYZ + ["--agg", "krum", "--byzantine", "1", "--rule-f", "12"], "rule krum cannot take f=12"),
    (BYZ + ["--agg", "cm", "--attack", "alie", "--byzantine", "13"], "alie: default z needs"),
    (
        BYZ + ["--agg", "cm", "--attack", "alie", "--workers", "2", "--byzantine", "1"],
        "alie: needs at least 2 honest rows",
    ),
    (BYZ + ["--bucketing", "26"], "bucketing must be <= 25, got bucketing=26"),
    (BYZ + ["--batch", "1401"], "batch must be <= 1400 (the training examples), got batch=1401"),
    (BYZ + ["--workers", "1401", "--byzantine", "0"], "workers must be <= 1400, got workers=1401"),
    (BYZ + ["--grid", "--workers", "5", "--byzantine", "1"], "a run of the grid"),
    # federated
    (FED + ["--lr", "0"], "argument --lr"),
    (FED + ["--server-lr", "nan"], "argument --server-lr"),
    (FED + ["--beta", "1"], "argument --beta: expected a number in [0, 1), got '1'"),
    (FED + ["--beta2", "1.5"], "argument --beta2"),
    (FED + ["--mvr-a", "1.1"], "argument --mvr-a: expected a number in [0, 1], got '1.1'"),
    (FED + ["--server-momentum", "-0.5"], "argument --server-momentum"),
    (FED + ["--alpha", "0"], "argument --alpha"),
    (FED + ["--alpha", "inf"], "argument --alpha"),
    (FED + ["--local-epochs", "-1"], "argument --local-epochs: expected a number (finite and >= 0), got '-1'"),
    (FED + ["--clients", "0"], "argument --clients"),
    (FED + ["--local-steps", "0"], "argument --local-steps"),
    (FED + ["--per-round", "200"], "need 1 <= per_round <= clients, got per_round=200, clients=100"),
    (FED + ["--batch", "2000"], "batch must be <= 1400"),
    (FED + ["--clients", "2000", "--per-round", "5"], "clients must be <= 1400, got clients=2000"),
    # personalized
    (PER + ["--beta", "1.5"], "argument --beta: expected a number in [0, 1], got '1.5'"),
    (PER + ["--beta-floor", "-0.1"], "argument --beta-floor"),
    (PER + ["--noise", "-1"], "argument --noise"),
    (PER + ["--shift", "nan"], "argument --shift"),
    (PER + ["--lr", "0"], "argument --lr"),
    (PER + ["--collaborators", "-1"], "argument --collaborators"),
    (PER + ["--dim", "0"], "argument --dim"),
    (PER + ["--method", "optimal", "--lr", "2"], "lr must be < 2, got 2.0"),
    (PER + ["--task", "digits", "--batch", "5000"], "batch must be <= 1400"),
    # masked
    (MSK + ["--core-fraction", "0"], "argument --core-fraction: expected a number in (0, 1], got '0'"),
    (MSK + ["--density", "1.5"], "argument --density"),
    (MSK + ["--momentum", "1"], "argument --momentum"),
    (MSK + ["--lr", "-0.1"], "argument --lr"),
    (MSK + ["--core-steps", "-1"], "argument --core-steps"),
    (MSK + ["--warmup", "-1"], "argument --warmup"),
    (MSK + ["--training", "alternating", "--period", "2", "--core-steps", "2"], "needs 1 <= core_steps < period"),
    (MSK + ["--batch", "2000"], "batch must be <= 1400"),
    # ddp
    (DDP + ["--nproc", "0"], "argument --nproc"),
    (DDP + ["--momentum", "1"], "argument --momentum"),
    (DDP + ["--steps", "0"], "argument --steps"),
    (DDP + ["--lr", "nan"], "argument --lr"),
    (DDP + ["--cc-tau", "-1"], "argument --cc-tau"),
    (DDP + ["--timeout", "0"], "argument --timeout"),
    (DDP + ["--byzantine-ranks", "-1"], "argument --byzantine-ranks"),
    (DDP + ["--nproc", "4", "--byzantine-ranks", "5"], "--byzantine-ranks must lie in [0, 4), got [5]"),
    (DDP + ["--nproc", "4", "--byzantine-ranks", "1", "1"], "--byzantine-ranks lists a rank twice"),
    (DDP + ["--nproc", "2", "--byzantine-ranks", "0", "1"], "leaves no honest rank, got 2 of 2 ranks"),
    (DDP + ["--nproc", "4", "--agg", "krum", "--byzantine-ranks", "0", "1"], "rule krum cannot take f=2 of 4 ranks"),
    (DDP + ["--nproc", "4", "--agg", "tm", "--f", "2"], "trimmed_mean: f=2 needs n > 2*f, got n=4"),
    (DDP + ["--nproc", "2", "--attack", "alie", "--byzantine-ranks", "0"], "alie: needs at least 2 honest rows"),
    (DDP + ["--batch", "2000"], "batch must be <= 1400"),
    (DDP + ["--nproc", "3", "--fsdp", "--momentum", "0.9"], "--fsdp has no worker momentum"),
    # bench
    (["bench", "--max-seconds", "0"], "argument --max-seconds"),
    (["bench", "--mem-budget-gb", "-1"], "argument --mem-budget-gb"),
    (["bench", "--mem-budget-gb", "nan"], "argument --mem-budget-gb"),
    (["bench", "--repeats", "0"], "argument --repeats"),
    (["bench", "--threads", "-2"], "argument --threads"),
    (["bench", "--n", "0"], "argument --n"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a[1:] if a[0] == "train" else a) for a, _ in BAD])
def test_bad_option_exits_2_with_one_line(argv, message, capsys) -> None:
    assert message in _refused(argv, capsys)


def test_cuda_bench_without_a_gpu_exits_2(capsys) -> None:
    import torch

    from robustagg import ops

    if torch.cuda.is_available() and ops.cuda_kernels_built():
        pytest.skip("a usable GPU is present")
    assert "--device cuda, but" in _refused(["bench", "--device", "cuda"], capsys)


# ---------------------------------------------------------------------------
# Output paths, checked before the run


def _path_cases(tmp_path):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    afile = tmp_path / "a-file"
    afile.write_text("")
    under_file = str(afile / "run.json")
    return [
        (BYZ + ["--json", str(folder)], f"argument --json: '{folder}' is a directory, expected a file path"),
        (BYZ + ["--plot", str(folder)], "argument --plot: "),
        (BYZ + ["--json", under_file], f"argument --json: '{afile}' is not a directory"),
        (FED + ["--json", str(folder)], "argument --json"),
        (PER + ["--plot", under_file], "argument --plot"),
        (MSK + ["--json", str(folder)], "argument --json"),
        (MSK + ["--grid", "--out", str(afile)], f"argument --out: '{afile}' is not a directory"),
        (PER + ["--grid", "--out", str(afile / "grid")], "argument --out"),
        (DDP + ["--json", str(folder)], "argument --json"),
        (["bench", "--json", str(folder)], "argument --json"),
        (["bench", "--markdown", str(folder)], "argument --markdown"),
        (["bench", "--markdown", under_file], "argument --markdown"),
    ]


def test_output_path_that_cannot_be_written_exits_2_before_any_work(tmp_path, capsys) -> None:
    build_parser()  # imports done: what is timed below is the check
    for argv, message in _path_cases(tmp_path):
        start = time.perf_counter()
        line = _refused(argv, capsys)
        assert time.perf_counter() - start < 1.0, argv
        assert message in line, (argv, line)


def test_default_output_paths_are_checked_before_the_run(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("runs", "bench", "docs"):  # files where the default paths need folders
        (tmp_path / name).write_text("")
    assert "the JSON path: " in _refused(BYZ, capsys)
    assert "the JSON path: " in _refused(["bench", "--quick"], capsys)
    assert "the grid's folder: " in _refused(MSK + ["--grid"], capsys)
    (tmp_path / "r.png").mkdir()  # the default plot path of --json r.json
    assert "the plot path: 'r.png' is a directory" in _refused(FED + ["--json", "r.json"], capsys)


# ---------------------------------------------------------------------------
# What the checks must let through


@pytest.mark.parametrize(
    "argv",
    [
        BYZ + ["--agg", "krum", "--byzantine", "11"],
        BYZ + ["--agg", "bulyan", "--byzantine", "5", "--cc-tau", "inf", "--momentum", "0"],
        BYZ + ["--agg", "tm", "--byzantine", "12", "--attack", "alie", "--alie-z", "-1.5", "--batch", "1400"],
        BYZ + ["--grid", "--seeds", "1"],
        FED + ["--mvr-a", "1", "--beta", "0", "--local-epochs", "0", "--per-round", "100"],
        PER + ["--beta", "1", "--beta-floor", "0", "--noise", "0", "--collaborators", "0"],
        MSK + ["--core-fraction", "1", "--density", "1", "--training", "full", "--core-steps", "0"],
        DDP + ["--nproc", "3", "--agg", "krum"],
        DDP + ["--nproc", "4", "--agg", "cm", "--byzantine-ranks", "3", "--attack", "alie"],
        ["bench", "--quick", "--max-seconds", "0.5"],
    ],
    ids=lambda argv: " ".join(argv[1:4]),
)
def test_good_options_reach_the_run(argv, tmp_path, capsys) -> None:
    out = tmp_path / "new" / "folder"  # missing folders are made at the end, as before
    paths = ["--out", str(out)] if "--grid" in argv else ["--json", str(out / "r.json")]
    with pytest.raises(Ran):
        main(argv + paths)
    assert ": error: " not in capsys.readouterr().err


# ---------------------------------------------------------------------------
# The train lines' options are their config dataclasses' option fields


def _lines():
    from robustagg.sim.commands import LINES

    return LINES


@pytest.mark.parametrize("line", [line.name for line in _lines()])
def test_line_options_are_the_config_fields_with_their_defaults(line, capsys) -> None:
    import dataclasses

    from robustagg.arguments import option_values

    spec = next(item for item in _lines() if item.name == line)
    args = build_parser().parse_args(["train", line])
    assert spec.config(**option_values(args, spec.config)) == spec.config()
    with pytest.raises(SystemExit):
        main(["train", line, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help lines
    text = text.split(" options: ", 1)[1]  # the option list, after the description that names some of them
    options = [f for f in dataclasses.fields(spec.config) if "option" in f.metadata]
    assert options
    for f in options:
        name = "--" + f.name.replace("_", "-")
        assert f" {name} " in text, name
        help_text = text.split(f" {name} ", 1)[1]
        assert "(default" in help_text.split(" --", 1)[0], name
        if f.default is not None and "(default:" not in help_text.split(" --", 1)[0]:
            assert f"(default {f.default}" in help_text.split(" --", 1)[0], name


def test_progress_bar_draws_on_a_terminal_only(monkeypatch) -> None:
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, drawn in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        with progress_bar(10, "run") as advance:
            advance(4, "test acc 0.5")
            advance(10, "test acc 0.9")
        text = stream.getvalue()
        if drawn:
            assert "run" in text and "10/10" in text and "test acc 0.9" in text
        else:
            assert text == ""  # logs and captured output get no carriage-return redraws
