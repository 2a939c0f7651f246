"""``robustagg train <line>``: the lines of work, on digits or a data set from disk, on the CPU or a GPU.

Each line runs once (progress bar, summary, JSON, PNG) or, with ``--grid``,
runs its experiment grid in parallel processes and writes
``<out>/<line>.md`` (keeping a hand-written ``## Reading`` section already
there), its figures and ``<out>/<line>.json``.

A line's options are the :func:`robustagg.arguments.option` fields of its
config dataclass; the checks, the run, the grid and the files are the same
for every line, which brings only its texts, names and summary (:class:`Line`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..arguments import (
    add_options,
    check_output_dir,
    check_output_path,
    option_values,
    output_dir,
    output_path,
    positive_int,
    write_text,
)
from .byzantine import ByzantineConfig
from .data import DataError, parse_data
from .federated import FederatedConfig
from .masked import MaskedConfig
from .personalized import PersonalizedConfig
from .presets import presets_of

__all__ = ["LINES", "Line", "add_train_parser"]


@dataclass(frozen=True)
class Line:
    """What one line of ``robustagg train`` brings to the run, grid and files every line shares.

    Its simulator is ``robustagg.sim.<name>.run_<name>(cfg, progress)``, its grid the module
    ``robustagg.sim.<name>_grid`` (``grid_configs``, ``run_grid``, ``grid_markdown``, ``grid_plots``); both are
    looked up when the run starts. ``config``'s option fields are the line's options; ``stem`` names a run's
    default JSON (``json_default`` says so in words), ``label`` its progress bar, which shows ``metric``;
    ``summary(cfg, result, plot_path)`` draws the plot and prints the summary lines; ``describe`` tells a grid
    run in a few words, ``keys`` are what the grid's JSON keeps of each run; ``resolve`` turns the config into
    the one the simulator runs (defaults that depend on other fields filled in).
    """

    name: str
    config: type
    help: str
    description: str
    epilog: str
    json_default: str
    stem: Callable[[Any], str]
    label: Callable[[Any], str]
    summary: Callable[[Any, dict, str], None]
    describe: Callable[[dict], str]
    keys: tuple[str, ...]
    metric: str = "test acc"
    seeds: int = 3
    resolve: Callable[[Any], Any] | None = None


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="run a line of work on digits (scikit-learn, no download) or a data set on disk, on the CPU or a GPU",
    )
    lines = t.add_subparsers(dest="line", metavar="<line>")
    for line in LINES:
        p = lines.add_parser(
            line.name,
            help=line.help,
            description=line.description,
            epilog=line.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_options(p, line.config)
        _add_common(p, line)
        p.set_defaults(func=lambda args, line=line: _train(args, line), parser=p)
    _add_ddp(lines)
    t.set_defaults(func=lambda args: (t.print_help(), 2)[1])


def _add_common(p: argparse.ArgumentParser, line: Line) -> None:
    p.add_argument(
        "--threads", type=positive_int, help="torch CPU threads (default: torch's default; the grid uses 1 per process)"
    )
    p.add_argument("--json", metavar="PATH", type=output_path, help=f"result JSON (default {line.json_default})")
    p.add_argument("--plot", metavar="PATH", type=output_path, help="plot (default: the JSON path with .png)")
    presets = presets_of(line.name)
    if presets:
        p.add_argument(
            "--preset",
            choices=presets,
            help="a published setup's options (given options still win; needs --data of its kind): "
            + "; ".join(f"{name}: {preset.summary}" for name, preset in presets.items()),
        )
    g = p.add_argument_group("grid")
    g.add_argument("--grid", action="store_true", help="run the whole grid instead of one run")
    g.add_argument("--seeds", type=positive_int, default=line.seeds, help=f"seeds per grid cell (default {line.seeds})")
    g.add_argument(
        "--jobs", type=positive_int, default=os.cpu_count() or 1, help="grid processes (default: the CPU count)"
    )
    g.add_argument(
        "--out", type=output_dir, help=f"folder of the grid's {line.name}.md, PNGs and JSON (default docs/results)"
    )


def _command(args: argparse.Namespace) -> str:
    return "robustagg " + " ".join(shlex.quote(a) for a in getattr(args, "argv", []))


def _train(args: argparse.Namespace, line: Line) -> int:
    """The config from the options of the same names, then the grid or one run.

    A config the options make impossible (f for the rule and the workers, per_round > clients, a data folder
    without the expected files, ...), or in grid mode any of the grid's configs, exits with status 2 and
    argparse's one-line error before any run. ``--preset`` first makes its values the options' defaults.
    """
    if getattr(args, "preset", None):
        args = _with_preset(args, line)
    try:
        cfg = line.config(**option_values(args, line.config))
        cfg.check()
    except ValueError as exc:
        args.parser.error(str(exc))
    grid = importlib.import_module(f"{__package__}.{line.name}_grid") if args.grid else None
    configs = grid.grid_configs(args.seeds, args.rounds, cfg) if grid else []
    for c in configs:
        try:
            c.check()
        except ValueError as exc:
            args.parser.error(
                f"a run of the grid (which sets its own rules, attacks, f, ...) is impossible with these options: {exc}"
            )
    if grid and args.out is None:
        args.out = os.path.join("docs", "results")
        try:
            check_output_dir(args.out)
        except ValueError as exc:
            args.parser.error(f"the grid's folder: {exc}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if grid:
        return _run_grid(args, line, grid, configs)
    return _run_one(args, line, cfg)


def _with_preset(args: argparse.Namespace, line: Line) -> argparse.Namespace:
    """The options parsed again with the preset's values as defaults; the data set must be of its kind."""
    preset = presets_of(line.name)[args.preset]
    parser, argv = args.parser, args.argv
    parser.set_defaults(**preset.defaults())
    again = parser.parse_args(argv[2:])  # argv is ["train", <line>, options...]
    again.argv = argv
    kind = parse_data(again.data)[0].removeprefix("synthetic:")
    if kind != preset.data:
        parser.error(
            f"preset {preset.name} trains on {preset.data}: give --data {preset.data}:DIR "
            f"(or --data synthetic:{preset.data} for its shape with random pixels), got --data {again.data}"
        )
    return again


def _run_one(args: argparse.Namespace, line: Line, cfg: Any) -> int:
    """One run with a progress bar of ``cfg.rounds`` steps; the JSON, then the plot and the summary lines."""
    from .report import progress_bar

    cfg = line.resolve(cfg) if line.resolve else cfg
    json_path = args.json or os.path.join("runs", line.stem(cfg) + ".json")
    plot_path = args.plot or os.path.splitext(json_path)[0] + ".png"
    for what, path in (("the JSON path", json_path), ("the plot path", plot_path)):
        try:
            check_output_path(path)  # the defaults too: a run must not end unable to write its result
        except ValueError as exc:
            args.parser.error(f"{what}: {exc}")
    run = getattr(importlib.import_module(f"{__package__}.{line.name}"), f"run_{line.name}")
    try:
        with progress_bar(cfg.rounds, line.label(cfg)) as advance:
            result = run(cfg, progress=lambda t, value: advance(t, f"{line.metric} {value:.4g}"))
    except DataError as exc:  # files found by the checks but unreadable, or too few examples for the run
        args.parser.error(str(exc))
    result["command"] = _command(args)
    write_text(json_path, json.dumps(result, indent=1) + "\n")
    line.summary(cfg, result, plot_path)
    print(f"JSON: {json_path}\nplot: {plot_path}")
    return 0


def _run_grid(args: argparse.Namespace, line: Line, grid: Any, configs: list) -> int:
    from .report import progress_bar

    length = f" of {args.rounds} rounds" if args.rounds else ""
    print(f"{line.name} grid: {len(configs)} runs{length} in {args.jobs} processes", file=sys.stderr)
    start = time.perf_counter()
    with progress_bar(len(configs), "grid") as advance:
        results = grid.run_grid(configs, args.jobs, lambda k, r: advance(k, "last: " + line.describe(r)))
    wall = time.perf_counter() - start
    command = _command(args)
    machine = f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}"
    md_path = os.path.join(args.out, f"{line.name}.md")
    text = grid.grid_markdown(results, command, wall, args.jobs, machine)
    if os.path.exists(md_path):
        with open(md_path) as fh:
            old = fh.read()
        if "\n## Reading\n" in old:
            text += "\n## Reading\n" + old.split("\n## Reading\n", 1)[1]
    write_text(md_path, text)
    plots = grid.grid_plots(results, args.out)
    json_path = os.path.join(args.out, f"{line.name}.json")
    runs = ",\n".join(json.dumps({k: r[k] for k in line.keys if k in r}) for r in results)  # one run per line
    write_text(json_path, f'{{"command": {json.dumps(command)}, "wall_seconds": {wall:.1f}, "runs": [\n{runs}\n]}}\n')
    print(f"{len(results)} runs in {wall / 60:.1f} min")
    print(f"table: {md_path}\nplots: {', '.join(plots)}\nJSON: {json_path}")
    return 0


def _add_ddp(lines: argparse._SubParsersAction) -> None:
    from ..examples import ddp_train

    p = lines.add_parser(
        "ddp",
        help="Byzantine-robust DistributedDataParallel training: the robust comm hook over gloo processes",
        description=ddp_train.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ddp_train.add_arguments(p)
    p.set_defaults(func=_train_ddp)


def _train_ddp(args: argparse.Namespace) -> int:
    from ..examples import ddp_train

    return ddp_train.main(args.argv[2:], prog="robustagg train ddp")


# ---------------------------------------------------------------------------
# The lines: texts, names and summaries

_WORKLOADS = """

Data, model, device: --data digits (the default), mnist:DIR, fashion-mnist:DIR,
emnist:DIR or cifar10:DIR (files on disk, never downloaded; a folder without
the expected files is refused, naming them) or synthetic:NAME (random pixels of
that data set's shape); --model mlp, logreg, cnn or resnet20 (GroupNorm);
--device cuda keeps the whole run on the GPU (data, gradients, attack and
aggregation), and a seed repeats bit for bit on the same device."""

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
  robustagg train byzantine --grid --seeds 1 --rounds 100 --out /tmp/grid
  robustagg train byzantine --preset icml21-cifar10 --data cifar10:~/data --device cuda --attack alie
  robustagg train byzantine --preset bucketing-mnist --data mnist:~/data --agg krum --attack ipm"""


def _byzantine_summary(cfg: ByzantineConfig, result: dict, plot_path: str) -> None:
    from .report import plot_curves

    rounds = [p["round"] for p in result["curve"]]
    title = (
        f"{result['rule']} vs {cfg.attack}: f = {cfg.byzantine} of {cfg.workers}, momentum {cfg.momentum}, "
        f"{cfg.split}, seed {cfg.seed}"
    )
    plot_curves(
        plot_path, {"test accuracy": (rounds, [p["test_accuracy"] for p in result["curve"]])}, title, "test accuracy"
    )
    best = max(result["curve"], key=lambda p: p["test_accuracy"])
    sec = {k: 1e3 * v for k, v in result["seconds_per_round"].items()}
    print(f"rule {result['rule']}, attack {result['attack']}")
    print(
        f"f = {cfg.byzantine} of {cfg.workers}, momentum {cfg.momentum}, split {cfg.split}, {cfg.model}, "
        f"{cfg.rounds} rounds, seed {cfg.seed}"
    )
    print(
        f"test accuracy: final {result['final_test_accuracy']:.4f}, mean of the last 20% of rounds "
        f"{result['tail_test_accuracy']:.4f} (best {best['test_accuracy']:.4f} at round {best['round']})"
    )
    print(
        f"per round: gradients {sec['gradients']:.2f} ms, momentum {sec['momentum']:.3f} ms, "
        f"attack {sec['attack']:.2f} ms, aggregation {sec['aggregation']:.2f} ms "
        f"({result['aggregation_over_gradients']:.2f}x the gradients)"
    )


_FEDERATED_DESCRIPTION = """\
Federated optimisation on scikit-learn's digits: clients from a Dirichlet(alpha)
label split, a sample of them per round running local steps from the server
point, the server averaging their points by example count.

Algorithms: fedavg, fedavgm (server momentum), scaffold (option II), mimelite,
mime (Karimireddy et al., NeurIPS 2021), mimelitemvr, mimemvr; base optimizer of
the Mime family: sgd, sgdm (default), adam.

One run prints a progress bar and a summary and writes the JSON result (test
accuracy, test and training loss per round; rounds to 90% / 95% accuracy;
per-round time of the gradients, the fused client steps and the server) and a
PNG of test accuracy and training loss per round. --grid runs every algorithm
at alpha 0.1 and 10 over several seeds and writes docs/results/federated.md."""

_FEDERATED_EPILOG = """\
examples:
  robustagg train federated --algo mime --base sgdm --clients 100 --per-round 10 --alpha 0.1 --local-steps 10
  robustagg train federated --algo scaffold --alpha 0.1 --rounds 300
  robustagg train federated --algo mime --base adam --lr 0.005
  robustagg train federated --algo fedavg --local-epochs 1
  robustagg train federated --grid                  # writes docs/results/federated.md
  robustagg train federated --preset mime-emnist --data emnist:~/data --device cuda"""


def _federated_name(cfg: FederatedConfig) -> str:
    # The base optimizer matters to Mime and MimeLite only.
    return f"{cfg.algo} ({cfg.base})" if cfg.algo in ("mime", "mimelite") else cfg.algo


def _federated_summary(cfg: FederatedConfig, result: dict, plot_path: str) -> None:
    from .report import plot_curve_panels

    name = _federated_name(cfg)
    rounds = [p["round"] for p in result["curve"]]
    plot_curve_panels(
        plot_path,
        [
            (
                f"{name}, alpha {cfg.alpha:g}: test accuracy",
                {name: (rounds, [p["test_accuracy"] for p in result["curve"]])},
                "test accuracy",
                False,
            ),
            (
                f"{name}, alpha {cfg.alpha:g}: training loss",
                {name: (rounds, [p["train_loss"] for p in result["curve"]])},
                "training loss",
                True,
            ),
        ],
    )
    sec = {k: 1e3 * v for k, v in result["seconds_per_round"].items()}
    print(
        f"{name}: {cfg.clients} clients (Dirichlet alpha {cfg.alpha:g}), {cfg.per_round} per round, "
        f"{cfg.local_steps if not cfg.local_epochs else f'{cfg.local_epochs:g} epochs of'} local steps, "
        f"{cfg.rounds} rounds, seed {cfg.seed}"
    )
    print(
        f"test accuracy: final {result['final_test_accuracy']:.4f}, last 10% of rounds "
        f"{result['tail_test_accuracy']:.4f}; rounds to 90%: {result['rounds_to_90']}, "
        f"to 95%: {result['rounds_to_95']}"
    )
    print("training loss: " + ", ".join(f"{v:.4f} at round {k}" for k, v in result["train_loss_at"].items()))
    print(
        f"per round: gradients {sec['gradients']:.2f} ms, client steps {sec['client_steps']:.2f} ms, "
        f"server {sec['server']:.2f} ms"
    )


_PERSONALIZED_DESCRIPTION = """\
Personalized collaborative learning: user 0 trains on its own objective and
borrows the gradients of N collaborators whose objectives differ from its own
(Grimberg et al. 2021; Chayti et al. 2021). Each step every user draws one
stochastic gradient at user 0's model; the step is one fused native call.

Tasks: quadratic (d-dimensional least squares, collaborators' optima shifted by
one common vector), hessian (the same with collaborators' Hessians perturbed by
+-0.5 on the diagonal), digits (logistic regression, or --model, on digits or
--data; users differ in their label priors). Methods: local (user 0 alone), wga (uniform weights 1/(N+1)),
optimal (weights minimising variance + bias^2), bias_corrected (uniform WGA
plus an EMA of each collaborator's gradient difference, constant beta),
bias_corrected_decay (beta_t = max(1/(t+1), beta_floor)).

One run prints a progress bar and a summary and writes the JSON result (user
0's error per evaluation, the mean over the last 1000 steps) and a PNG.
--grid runs every task x N in {0, 1, 2, 4, 8, 16, 32} x method and writes
docs/results/personalized.md."""

_PERSONALIZED_EPILOG = """\
examples:
  robustagg train personalized --task quadratic --method bias_corrected --collaborators 16
  robustagg train personalized --task hessian --method wga --collaborators 8
  robustagg train personalized --task digits --method optimal --collaborators 4
  robustagg train personalized --grid                  # writes docs/results/personalized.md"""


def _personalized_summary(cfg: PersonalizedConfig, result: dict, plot_path: str) -> None:
    from .report import plot_curve_panels

    rounds = [p["round"] for p in result["curve"]]
    name = f"{cfg.method}, N = {cfg.collaborators}"
    panels = [(f"{cfg.task}: user 0's error", {name: (rounds, [p["error"] for p in result["curve"]])}, "error", True)]
    if cfg.task == "digits":
        panels.append(
            (
                f"{cfg.task}: user 0's accuracy",
                {name: (rounds, [p["accuracy"] for p in result["curve"]])},
                "accuracy",
                False,
            )
        )
    plot_curve_panels(plot_path, panels)
    sec = {k: 1e3 * v for k, v in result["seconds_per_step"].items()}
    weights = ", ".join(f"{w:.3g}" for w in result["weights"][:6]) + (", ..." if len(result["weights"]) > 6 else "")
    print(
        f"{cfg.task}, {cfg.method}: N = {cfg.collaborators} collaborators, {cfg.rounds} steps, lr {cfg.lr:g}, "
        f"seed {cfg.seed}"
    )
    print(f"weights: {weights}")
    print(f"user 0's error: final {result['final_error']:.4g}, mean over the last steps {result['tail_error']:.4g}")
    print(f"per step: gradients {sec['gradients']:.3f} ms, fused step {sec['step']:.3f} ms")


_MASKED_DESCRIPTION = """\
Masked / partial training (Mohtashami, Jaggi, Stich, AISTATS 2022) of an MLP on
scikit-learn's digits: a core sub-network (the first core_fraction of the
hidden units) is trained alternately with the full network. On a core step the
forward pass uses only the core and only core parameters and their momentum
change (one fused masked SGD-momentum call); on a full step everything does.
AC/DC (Peste et al., NeurIPS 2021) alternates dense phases with sparse phases
that keep the global top-density weights by magnitude.

Trainings: full (full steps only), core (core steps only), alternating
(period, core_steps, warmup), acdc (density).

One run prints a progress bar and a summary and writes the JSON result
(test accuracy of the full model and of the extracted core per evaluation)
and a PNG. --grid writes docs/results/masked.md."""

_MASKED_EPILOG = """\
examples:
  robustagg train masked --training alternating --core-fraction 0.25
  robustagg train masked --training alternating --period 4 --core-steps 3 --warmup 500
  robustagg train masked --training full
  robustagg train masked --training acdc --density 0.1
  robustagg train masked --model cnn --data fashion-mnist:~/data --device cuda
  robustagg train masked --grid                  # writes docs/results/masked.md"""


def _accuracy(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _masked_summary(cfg: MaskedConfig, result: dict, plot_path: str) -> None:
    from .report import network_name, plot_curves

    rounds = [p["round"] for p in result["curve"]]
    curves = {}
    for key, label in (("full_accuracy", "full model"), ("core_accuracy", "core"), ("sparse_accuracy", "sparse model")):
        values = [p.get(key) for p in result["curve"]]
        if any(v is not None for v in values):
            curves[label] = (rounds, [float("nan") if v is None else v for v in values])
    plot_curves(
        plot_path,
        curves,
        f"{cfg.training}: {network_name(vars(cfg))}, core {cfg.core_fraction:g}, seed {cfg.seed}",
        "test accuracy",
    )
    sec = {k: 1e3 * v for k, v in result["seconds_per_step"].items()}
    print(
        f"{cfg.training}: {network_name(vars(cfg))}, core = {cfg.core_fraction:g} of the hidden units, "
        f"{cfg.rounds} steps, seed {cfg.seed}"
    )
    sparse = result.get("final_sparse_accuracy")
    print(
        f"test accuracy: full model {_accuracy(result['final_full_accuracy'], 4)}, "
        f"core {result['final_core_accuracy']:.4f}" + (f", sparse model {sparse:.4f}" if sparse is not None else "")
    )
    print(f"per step: forward and backward {sec['forward_backward']:.3f} ms, optimizer step {sec['step']:.3f} ms")


LINES: tuple[Line, ...] = (
    Line(
        "byzantine",
        ByzantineConfig,
        help="Byzantine-robust training with worker momentum and attacks (one run or --grid)",
        description=_BYZANTINE_DESCRIPTION + _WORKLOADS,
        epilog=_BYZANTINE_EPILOG,
        json_default="runs/byzantine-<agg>-<attack>-f<f>-m<beta>-s<seed>.json",
        stem=lambda c: f"byzantine-{c.agg}-{c.attack}-f{c.byzantine}-m{c.momentum:g}-s{c.seed}",
        label=lambda c: f"{c.agg} vs {c.attack}",
        summary=_byzantine_summary,
        describe=lambda r: (
            f"{r['config']['agg']} vs {r['config']['attack']} f={r['config']['byzantine']} "
            f"-> {r['tail_test_accuracy']:.3f}"
        ),
        keys=("config", "final_test_accuracy", "tail_test_accuracy", "seconds_per_round", "wall_seconds"),
    ),
    Line(
        "federated",
        FederatedConfig,
        help="federated optimisation: Mime, MimeLite, MVR variants, FedAvg, FedAvgM, SCAFFOLD (one run or --grid)",
        description=_FEDERATED_DESCRIPTION + _WORKLOADS,
        epilog=_FEDERATED_EPILOG,
        json_default="runs/federated-<algo>-<base>-a<alpha>-s<seed>.json",
        stem=lambda c: f"federated-{c.algo}-{c.base}-a{c.alpha:g}-s{c.seed}",
        label=_federated_name,
        summary=_federated_summary,
        describe=lambda r: (
            f"{r['config']['algo']} ({r['config']['base']}) alpha={r['config']['alpha']:g} "
            f"-> {r['final_test_accuracy']:.3f}"
        ),
        keys=(
            "config",
            "final_test_accuracy",
            "tail_test_accuracy",
            "rounds_to_90",
            "rounds_to_95",
            "train_loss_at",
            "seconds_per_round",
            "wall_seconds",
        ),
    ),
    Line(
        "personalized",
        PersonalizedConfig,
        help="personalized collaborative learning: local SGD, WGA, optimal weights, bias correction "
        "(one run or --grid)",
        description=_PERSONALIZED_DESCRIPTION + _WORKLOADS,
        epilog=_PERSONALIZED_EPILOG,
        json_default="runs/personalized-<task>-<method>-N<N>-s<seed>.json",
        stem=lambda c: f"personalized-{c.task}-{c.method}-N{c.collaborators}-s{c.seed}",
        label=lambda c: f"{c.method} N={c.collaborators}",
        summary=_personalized_summary,
        describe=lambda r: (
            f"{r['config']['task']} {r['config']['method']} N={r['config']['collaborators']} -> {r['tail_error']:.4g}"
        ),
        keys=("config", "tail_error", "final_error", "weights", "seconds_per_step", "wall_seconds"),
        metric="error",
        seeds=2,
        resolve=PersonalizedConfig.resolved,
    ),
    Line(
        "masked",
        MaskedConfig,
        help="masked / partial training of a core sub-network with the full network, and AC/DC (one run or --grid)",
        description=_MASKED_DESCRIPTION + _WORKLOADS,
        epilog=_MASKED_EPILOG,
        json_default="runs/masked-<training>-s<seed>.json",
        stem=lambda c: f"masked-{c.training}-s{c.seed}",
        label=lambda c: c.training,
        summary=_masked_summary,
        describe=lambda r: (
            f"{r['config']['training']} -> full {_accuracy(r['final_full_accuracy'], 3)}, "
            f"core {r['final_core_accuracy']:.3f}"
        ),
        keys=(
            "config",
            "final_full_accuracy",
            "final_core_accuracy",
            "final_sparse_accuracy",
            "seconds_per_step",
            "wall_seconds",
        ),
    ),
)
