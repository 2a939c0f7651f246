"""``robustagg train <line>``: the lines of work on the built-in digits data.

Each line runs once (progress bar, summary, JSON, PNG) or, with ``--grid``,
runs its experiment grid in parallel processes and writes
``<out>/<line>.md`` (keeping a hand-written ``## Reading`` section already
there), its figures and ``<out>/<line>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable

import torch

from ..arguments import (
    write_text,
    check_output_dir,
    check_output_path,
    closed_unit_interval,
    finite_float,
    fraction,
    nonnegative_float,
    nonnegative_int,
    output_dir,
    output_path,
    positive_float,
    positive_float_or_inf,
    positive_int,
    unit_interval,
)

__all__ = ["add_train_parser"]


def _command(args: argparse.Namespace) -> str:
    return "robustagg " + " ".join(shlex.quote(a) for a in getattr(args, "argv", []))


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="run a line of work on the built-in digits data (scikit-learn, no download)")
    lines = t.add_subparsers(dest="line", metavar="<line>")
    _add_byzantine(lines)
    _add_federated(lines)
    _add_personalized(lines)
    _add_masked(lines)
    _add_ddp(lines)
    t.set_defaults(func=lambda args: (t.print_help(), 2)[1])


def _add_common(p: argparse.ArgumentParser, name: str, json_default: str, seeds: int = 3) -> None:
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's default; the grid uses 1 per process)")
    p.add_argument("--json", metavar="PATH", type=output_path, help=f"result JSON (default {json_default})")
    p.add_argument("--plot", metavar="PATH", type=output_path, help="plot (default: the JSON path with .png)")
    g = p.add_argument_group("grid")
    g.add_argument("--grid", action="store_true", help="run the whole grid instead of one run")
    g.add_argument("--seeds", type=positive_int, default=seeds, help=f"seeds per grid cell (default {seeds})")
    g.add_argument("--jobs", type=positive_int, default=os.cpu_count() or 1, help="grid processes (default: the CPU count)")
    g.add_argument("--out", type=output_dir,
                   help=f"folder of the grid's {name}.md, PNGs and JSON (default docs/results)")


def _split(text: str) -> str:
    """argparse type of ``--split``: iid, sorted or dirichlet:ALPHA."""
    from .data import parse_split

    try:
        parse_split(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _run_single(args, cfg, run: Callable, label: str, stem: str, rounds: int | None = None,
                metric: str = "test acc") -> tuple[dict, str, str]:
    """One run with a progress bar (``rounds`` steps, default ``cfg.rounds``; ``metric`` names the reported value)."""
    from .report import Progress

    json_path = args.json or os.path.join("runs", stem + ".json")
    plot_path = args.plot or os.path.splitext(json_path)[0] + ".png"
    for what, path in (("the JSON path", json_path), ("the plot path", plot_path)):
        try:
            check_output_path(path)  # the defaults too: a run must not end unable to write its result
        except ValueError as exc:
            args.parser.error(f"{what}: {exc}")
    progress = Progress(rounds or cfg.rounds, label)
    result = run(cfg, progress=lambda t, value: progress.update(t, f"{metric} {value:.4g}"))
    progress.close()
    result["command"] = _command(args)
    write_text(json_path, json.dumps(result, indent=1) + "\n")
    return result, json_path, plot_path


def _run_grid(args, name: str, configs: list, grid_module, describe: Callable[[dict], str], keys: tuple[str, ...]) -> int:
    from .report import Progress

    length = f" of {args.rounds} rounds" if args.rounds else ""
    print(f"{name} grid: {len(configs)} runs{length} in {args.jobs} processes", file=sys.stderr)
    progress = Progress(len(configs), "grid")
    start = time.perf_counter()
    results = grid_module.run_grid(configs, args.jobs, lambda k, r: progress.update(k, "last: " + describe(r)))
    progress.close()
    wall = time.perf_counter() - start
    command = _command(args)
    machine = f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}"
    md_path = os.path.join(args.out, f"{name}.md")
    text = grid_module.grid_markdown(results, command, wall, args.jobs, machine)
    if os.path.exists(md_path):
        with open(md_path) as fh:
            old = fh.read()
        if "\n## Reading\n" in old:
            text += "\n## Reading\n" + old.split("\n## Reading\n", 1)[1]
    write_text(md_path, text)
    plots = grid_module.grid_plots(results, args.out)
    json_path = os.path.join(args.out, f"{name}.json")
    runs = ",\n".join(json.dumps({k: r[k] for k in keys if k in r}) for r in results)  # one run per line
    write_text(json_path, f'{{"command": {json.dumps(command)}, "wall_seconds": {wall:.1f}, "runs": [\n{runs}\n]}}\n')
    print(f"{len(results)} runs in {wall / 60:.1f} min")
    print(f"table: {md_path}\nplots: {', '.join(plots)}\nJSON: {json_path}")
    return 0


def _train(args, line: str, cls, grid_module, describe: Callable[[dict], str], keys: tuple[str, ...],
           run_one: Callable[[argparse.Namespace, object], int]) -> int:
    """The config from the options of the same names, then the grid or one run.

    A config the options make impossible (f for the rule and the workers, per_round > clients, ...), or in
    grid mode any of the grid's configs, exits with status 2 and argparse's one-line error before any run.
    """
    try:
        cfg = cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})
        cfg.check()
    except ValueError as exc:
        args.parser.error(str(exc))
    configs = grid_module.grid_configs(args.seeds, args.rounds, cfg) if args.grid else []
    for c in configs:
        try:
            c.check()
        except ValueError as exc:
            args.parser.error(f"a run of the grid (which sets its own rules, attacks, f, ...) is impossible with these "
                              f"options: {exc}")
    if args.grid and args.out is None:
        args.out = os.path.join("docs", "results")
        try:
            check_output_dir(args.out)
        except ValueError as exc:
            args.parser.error(f"the grid's folder: {exc}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.grid:
        return _run_grid(args, line, configs, grid_module, describe, keys)
    return run_one(args, cfg)


# ---------------------------------------------------------------------------
# byzantine

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

def _add_byzantine(lines: argparse._SubParsersAction) -> None:
    from ..attacks import ATTACKS
    from .byzantine import RULES, ByzantineConfig

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
    p.add_argument("--workers", type=positive_int, default=d.workers, help=f"n, all workers (default {d.workers})")
    p.add_argument("--byzantine", type=nonnegative_int, default=d.byzantine, help=f"f, Byzantine workers among them (default {d.byzantine})")
    p.add_argument("--momentum", type=unit_interval, default=d.momentum, help=f"worker momentum beta in [0, 1) (default {d.momentum})")
    p.add_argument("--bucketing", type=nonnegative_int, default=d.bucketing, help="bucket size s >= 2 in front of the rule (default: none)")
    p.add_argument("--split", type=_split, default=d.split, help="iid, sorted (label-sorted) or dirichlet:ALPHA (default iid)")
    p.add_argument("--model", choices=["mlp", "logreg"], default=d.model, help="model (default mlp, 64-hidden-10)")
    p.add_argument("--hidden", type=positive_int, default=d.hidden, help=f"hidden units of the MLP (default {d.hidden})")
    p.add_argument("--rounds", type=positive_int, default=d.rounds, help=f"training rounds (default {d.rounds})")
    p.add_argument("--batch", type=positive_int, default=d.batch, help=f"examples per worker per round (default {d.batch})")
    p.add_argument("--lr", type=positive_float, default=d.lr, help=f"server learning rate (default {d.lr})")
    p.add_argument("--seed", type=nonnegative_int, default=d.seed, help="seed of the split, initialisation, batches and attacks (default 0)")
    p.add_argument("--eval-every", type=positive_int, default=d.eval_every, help=f"rounds between evaluations (default {d.eval_every})")
    p.add_argument("--rule-f", type=nonnegative_int, help="the f the rule assumes (default: --byzantine)")
    p.add_argument("--cc-tau", type=positive_float_or_inf, default=d.cc_tau, help=f"centered clipping radius (default {d.cc_tau})")
    p.add_argument("--cc-iters", type=positive_int, default=d.cc_iters, help=f"centered clipping iterations (default {d.cc_iters})")
    p.add_argument("--gm-iters", type=positive_int, default=d.gm_iters, help=f"most Weiszfeld steps of gm (default {d.gm_iters})")
    p.add_argument("--ipm-eps", type=positive_float, default=d.ipm_eps, help=f"IPM scale (default {d.ipm_eps})")
    p.add_argument("--alie-z", type=finite_float, help="ALIE z (default: from n and f, SPEC 5)")
    _add_common(p, "byzantine", "runs/byzantine-<agg>-<attack>-f<f>-m<beta>-s<seed>.json")
    p.set_defaults(func=_train_byzantine, parser=p)


def _train_byzantine(args: argparse.Namespace) -> int:
    from . import byzantine_grid
    from .byzantine import ByzantineConfig

    def describe(r: dict) -> str:
        c = r["config"]
        return f"{c['agg']} vs {c['attack']} f={c['byzantine']} -> {r['tail_test_accuracy']:.3f}"

    keys = ("config", "final_test_accuracy", "tail_test_accuracy", "seconds_per_round", "wall_seconds")
    return _train(args, "byzantine", ByzantineConfig, byzantine_grid, describe, keys, _byzantine_run)


def _byzantine_run(args: argparse.Namespace, cfg) -> int:
    from .byzantine import run_byzantine
    from .report import plot_curves

    stem = f"byzantine-{cfg.agg}-{cfg.attack}-f{cfg.byzantine}-m{cfg.momentum:g}-s{cfg.seed}"
    result, json_path, plot_path = _run_single(args, cfg, run_byzantine, f"{cfg.agg} vs {cfg.attack}", stem)
    rounds = [p["round"] for p in result["curve"]]
    title = (f"{result['rule']} vs {cfg.attack}: f = {cfg.byzantine} of {cfg.workers}, momentum {cfg.momentum}, "
             f"{cfg.split}, seed {cfg.seed}")
    plot_curves(plot_path, {"test accuracy": (rounds, [p["test_accuracy"] for p in result["curve"]])}, title, "test accuracy")
    best = max(result["curve"], key=lambda p: p["test_accuracy"])
    sec = {k: 1e3 * v for k, v in result["seconds_per_round"].items()}
    print(f"rule {result['rule']}, attack {result['attack']}")
    print(f"f = {cfg.byzantine} of {cfg.workers}, momentum {cfg.momentum}, split {cfg.split}, {cfg.model}, "
          f"{cfg.rounds} rounds, seed {cfg.seed}")
    print(f"test accuracy: final {result['final_test_accuracy']:.4f}, mean of the last 20% of rounds "
          f"{result['tail_test_accuracy']:.4f} (best {best['test_accuracy']:.4f} at round {best['round']})")
    print(f"per round: gradients {sec['gradients']:.2f} ms, momentum {sec['momentum']:.3f} ms, attack {sec['attack']:.2f} ms, "
          f"aggregation {sec['aggregation']:.2f} ms ({result['aggregation_over_gradients']:.2f}x the gradients)")
    print(f"JSON: {json_path}\nplot: {plot_path}")
    return 0


# ---------------------------------------------------------------------------
# federated

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
  robustagg train federated --grid                  # writes docs/results/federated.md"""

def _add_federated(lines: argparse._SubParsersAction) -> None:
    from ..optim.federated import ALGORITHMS, BASES
    from .federated import FederatedConfig

    d = FederatedConfig()
    p = lines.add_parser(
        "federated",
        help="federated optimisation: Mime, MimeLite, MVR variants, FedAvg, FedAvgM, SCAFFOLD (one run or --grid)",
        description=_FEDERATED_DESCRIPTION,
        epilog=_FEDERATED_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--algo", choices=list(ALGORITHMS), default=d.algo, help=f"algorithm (default {d.algo})")
    p.add_argument("--base", choices=list(BASES), default=d.base, help=f"base optimizer of the Mime family (default {d.base})")
    p.add_argument("--clients", type=positive_int, default=d.clients, help=f"clients (default {d.clients})")
    p.add_argument("--per-round", type=positive_int, default=d.per_round, help=f"clients sampled per round (default {d.per_round})")
    p.add_argument("--alpha", type=positive_float, default=d.alpha, help=f"Dirichlet concentration of the label split (default {d.alpha})")
    p.add_argument("--local-steps", type=positive_int, default=d.local_steps, help=f"local steps per round (default {d.local_steps})")
    p.add_argument("--local-epochs", type=nonnegative_float, default=d.local_epochs,
                   help="local epochs instead of steps: ceil(epochs * n_i / batch) steps for client i (default: use --local-steps)")
    p.add_argument("--batch", type=positive_int, default=d.batch, help=f"local batch size (default {d.batch})")
    p.add_argument("--lr", type=positive_float, default=d.lr, help=f"client learning rate (default {d.lr}; 0.005 suits base adam)")
    p.add_argument("--server-lr", type=positive_float, default=d.server_lr, help=f"server learning rate (default {d.server_lr})")
    p.add_argument("--beta", type=unit_interval, default=d.beta, help=f"momentum / Adam beta1 (default {d.beta})")
    p.add_argument("--beta2", type=unit_interval, default=d.beta2, help=f"Adam beta2 (default {d.beta2})")
    p.add_argument("--mvr-a", type=closed_unit_interval, default=d.mvr_a, help=f"MVR weight a (default {d.mvr_a})")
    p.add_argument("--server-momentum", type=unit_interval, default=d.server_momentum, help=f"FedAvgM server momentum (default {d.server_momentum})")
    p.add_argument("--rounds", type=positive_int, default=d.rounds, help=f"rounds (default {d.rounds})")
    p.add_argument("--model", choices=["mlp", "logreg"], default=d.model, help="model (default mlp, 64-hidden-10)")
    p.add_argument("--hidden", type=positive_int, default=d.hidden, help=f"hidden units of the MLP (default {d.hidden})")
    p.add_argument("--seed", type=nonnegative_int, default=d.seed, help="seed of the split, initialisation, sampling and batches (default 0)")
    _add_common(p, "federated", "runs/federated-<algo>-<base>-a<alpha>-s<seed>.json")
    p.set_defaults(func=_train_federated, parser=p)


def _train_federated(args: argparse.Namespace) -> int:
    from . import federated_grid
    from .federated import FederatedConfig

    def describe(r: dict) -> str:
        c = r["config"]
        return f"{c['algo']} ({c['base']}) alpha={c['alpha']:g} -> {r['final_test_accuracy']:.3f}"

    keys = ("config", "final_test_accuracy", "tail_test_accuracy", "rounds_to_90", "rounds_to_95", "train_loss_at",
            "seconds_per_round", "wall_seconds")
    return _train(args, "federated", FederatedConfig, federated_grid, describe, keys, _federated_run)


def _federated_run(args: argparse.Namespace, cfg) -> int:
    from .federated import run_federated
    from .report import plot_curve_panels

    stem = f"federated-{cfg.algo}-{cfg.base}-a{cfg.alpha:g}-s{cfg.seed}"
    # The base optimizer matters to Mime and MimeLite only.
    name = f"{cfg.algo} ({cfg.base})" if cfg.algo in ("mime", "mimelite") else cfg.algo
    result, json_path, plot_path = _run_single(args, cfg, run_federated, name, stem)
    rounds = [p["round"] for p in result["curve"]]
    plot_curve_panels(plot_path, [
        (f"{name}, alpha {cfg.alpha:g}: test accuracy", {name: (rounds, [p["test_accuracy"] for p in result["curve"]])},
         "test accuracy", False),
        (f"{name}, alpha {cfg.alpha:g}: training loss", {name: (rounds, [p["train_loss"] for p in result["curve"]])},
         "training loss", True),
    ])
    sec = {k: 1e3 * v for k, v in result["seconds_per_round"].items()}
    print(f"{name}: {cfg.clients} clients (Dirichlet alpha {cfg.alpha:g}), {cfg.per_round} per round, "
          f"{cfg.local_steps if not cfg.local_epochs else f'{cfg.local_epochs:g} epochs of'} local steps, "
          f"{cfg.rounds} rounds, seed {cfg.seed}")
    print(f"test accuracy: final {result['final_test_accuracy']:.4f}, last 10% of rounds {result['tail_test_accuracy']:.4f}; "
          f"rounds to 90%: {result['rounds_to_90']}, to 95%: {result['rounds_to_95']}")
    print("training loss: " + ", ".join(f"{v:.4f} at round {k}" for k, v in result["train_loss_at"].items()))
    print(f"per round: gradients {sec['gradients']:.2f} ms, client steps {sec['client_steps']:.2f} ms, server {sec['server']:.2f} ms")
    print(f"JSON: {json_path}\nplot: {plot_path}")
    return 0


# ---------------------------------------------------------------------------
# personalized

_PERSONALIZED_DESCRIPTION = """\
Personalized collaborative learning: user 0 trains on its own objective and
borrows the gradients of N collaborators whose objectives differ from its own
(Grimberg et al. 2021; Chayti et al. 2021). Each step every user draws one
stochastic gradient at user 0's model; the step is one fused native call.

Tasks: quadratic (d-dimensional least squares, collaborators' optima shifted by
one common vector), hessian (the same with collaborators' Hessians perturbed by
+-0.5 on the diagonal), digits (logistic regression; users differ in their
label priors). Methods: local (user 0 alone), wga (uniform weights 1/(N+1)),
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


def _add_personalized(lines: argparse._SubParsersAction) -> None:
    from .personalized import METHODS, TASKS, PersonalizedConfig

    d = PersonalizedConfig()
    p = lines.add_parser(
        "personalized",
        help="personalized collaborative learning: local SGD, WGA, optimal weights, bias correction (one run or --grid)",
        description=_PERSONALIZED_DESCRIPTION,
        epilog=_PERSONALIZED_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", choices=list(TASKS), default=d.task, help=f"objective of the users (default {d.task})")
    p.add_argument("--method", choices=list(METHODS), default=d.method, help=f"update rule (default {d.method})")
    p.add_argument("--collaborators", type=nonnegative_int, default=d.collaborators, help=f"N collaborators (default {d.collaborators})")
    p.add_argument("--rounds", type=positive_int, default=d.rounds, help="steps (default: the task's, 6000 for the quadratic tasks)")
    p.add_argument("--lr", type=positive_float, default=d.lr, help="learning rate (default: the task's)")
    p.add_argument("--beta", type=closed_unit_interval, default=d.beta, help=f"EMA rate of the bias correction (default {d.beta})")
    p.add_argument("--beta-floor", type=closed_unit_interval, default=d.beta_floor,
                   help=f"floor of the decaying rate max(1/(t+1), floor) (default {d.beta_floor})")
    p.add_argument("--dim", type=positive_int, default=d.dim, help=f"dimension of the quadratic tasks (default {d.dim})")
    p.add_argument("--shift", type=nonnegative_float, default=d.shift, help=f"norm of the collaborators' common shift (default {d.shift})")
    p.add_argument("--noise", type=nonnegative_float, default=d.noise, help=f"gradient noise std per coordinate (default {d.noise})")
    p.add_argument("--batch", type=positive_int, default=d.batch, help=f"examples per user per step, digits (default {d.batch})")
    p.add_argument("--seed", type=nonnegative_int, default=d.seed, help="seed of the problem, initialisation and noise (default 0)")
    p.add_argument("--eval-every", type=positive_int, default=d.eval_every, help=f"steps between recorded errors (default {d.eval_every})")
    _add_common(p, "personalized", "runs/personalized-<task>-<method>-N<N>-s<seed>.json", seeds=2)
    p.set_defaults(func=_train_personalized, parser=p)


def _train_personalized(args: argparse.Namespace) -> int:
    from . import personalized_grid
    from .personalized import PersonalizedConfig

    def describe(r: dict) -> str:
        c = r["config"]
        return f"{c['task']} {c['method']} N={c['collaborators']} -> {r['tail_error']:.4g}"

    keys = ("config", "tail_error", "final_error", "weights", "seconds_per_step", "wall_seconds")
    return _train(args, "personalized", PersonalizedConfig, personalized_grid, describe, keys, _personalized_run)


def _personalized_run(args: argparse.Namespace, cfg) -> int:
    from .personalized import run_personalized
    from .report import plot_curve_panels

    cfg = cfg.resolved()
    stem = f"personalized-{cfg.task}-{cfg.method}-N{cfg.collaborators}-s{cfg.seed}"
    result, json_path, plot_path = _run_single(args, cfg, run_personalized, f"{cfg.method} N={cfg.collaborators}",
                                               stem, metric="error")
    rounds = [p["round"] for p in result["curve"]]
    name = f"{cfg.method}, N = {cfg.collaborators}"
    panels = [(f"{cfg.task}: user 0's error", {name: (rounds, [p["error"] for p in result["curve"]])}, "error", True)]
    if cfg.task == "digits":
        panels.append((f"{cfg.task}: user 0's accuracy", {name: (rounds, [p["accuracy"] for p in result["curve"]])},
                       "accuracy", False))
    plot_curve_panels(plot_path, panels)
    sec = {k: 1e3 * v for k, v in result["seconds_per_step"].items()}
    weights = ", ".join(f"{w:.3g}" for w in result["weights"][:6]) + (", ..." if len(result["weights"]) > 6 else "")
    print(f"{cfg.task}, {cfg.method}: N = {cfg.collaborators} collaborators, {cfg.rounds} steps, lr {cfg.lr:g}, seed {cfg.seed}")
    print(f"weights: {weights}")
    print(f"user 0's error: final {result['final_error']:.4g}, mean over the last steps {result['tail_error']:.4g}")
    print(f"per step: gradients {sec['gradients']:.3f} ms, fused step {sec['step']:.3f} ms")
    print(f"JSON: {json_path}\nplot: {plot_path}")
    return 0


# ---------------------------------------------------------------------------
# masked

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
  robustagg train masked --grid                  # writes docs/results/masked.md"""


def _add_masked(lines: argparse._SubParsersAction) -> None:
    from .masked import TRAININGS, MaskedConfig

    d = MaskedConfig()
    p = lines.add_parser(
        "masked",
        help="masked / partial training of a core sub-network with the full network, and AC/DC (one run or --grid)",
        description=_MASKED_DESCRIPTION,
        epilog=_MASKED_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--training", choices=list(TRAININGS), default=d.training, help=f"schedule (default {d.training})")
    p.add_argument("--hidden", type=positive_int, default=d.hidden, help=f"hidden units of the MLP (default {d.hidden})")
    p.add_argument("--core-fraction", type=fraction, default=d.core_fraction,
                   help=f"fraction of the hidden units in the core (default {d.core_fraction})")
    p.add_argument("--rounds", type=positive_int, default=d.rounds, help=f"steps (default {d.rounds})")
    p.add_argument("--lr", type=positive_float, default=d.lr, help=f"learning rate (default {d.lr})")
    p.add_argument("--momentum", type=unit_interval, default=d.momentum, help=f"SGD momentum (default {d.momentum})")
    p.add_argument("--batch", type=positive_int, default=d.batch, help=f"batch size (default {d.batch})")
    p.add_argument("--period", type=positive_int, default=d.period, help=f"steps per alternation period (default {d.period})")
    p.add_argument("--core-steps", type=nonnegative_int, default=d.core_steps, help=f"core steps per period (default {d.core_steps})")
    p.add_argument("--warmup", type=nonnegative_int, default=d.warmup, help=f"full steps before alternating (default {d.warmup})")
    p.add_argument("--density", type=fraction, default=d.density, help=f"AC/DC: fraction of weights kept in sparse phases (default {d.density})")
    p.add_argument("--seed", type=nonnegative_int, default=d.seed, help="seed of the initialisation and batches (default 0)")
    p.add_argument("--eval-every", type=positive_int, default=d.eval_every, help=f"steps between evaluations (default {d.eval_every})")
    _add_common(p, "masked", "runs/masked-<training>-s<seed>.json")
    p.set_defaults(func=_train_masked, parser=p)


def _train_masked(args: argparse.Namespace) -> int:
    from . import masked_grid
    from .masked import MaskedConfig

    def describe(r: dict) -> str:
        full = r["final_full_accuracy"]
        return f"{r['config']['training']} -> full {'–' if full is None else f'{full:.3f}'}, core {r['final_core_accuracy']:.3f}"

    keys = ("config", "final_full_accuracy", "final_core_accuracy", "final_sparse_accuracy", "seconds_per_step",
            "wall_seconds")
    return _train(args, "masked", MaskedConfig, masked_grid, describe, keys, _masked_run)


def _masked_run(args: argparse.Namespace, cfg) -> int:
    from .masked import run_masked
    from .report import plot_curves

    stem = f"masked-{cfg.training}-s{cfg.seed}"
    result, json_path, plot_path = _run_single(args, cfg, run_masked, cfg.training, stem)
    rounds = [p["round"] for p in result["curve"]]
    curves = {}
    for key, label in (("full_accuracy", "full model"), ("core_accuracy", "core"), ("sparse_accuracy", "sparse model")):
        values = [p.get(key) for p in result["curve"]]
        if any(v is not None for v in values):
            curves[label] = (rounds, [float("nan") if v is None else v for v in values])
    plot_curves(plot_path, curves, f"{cfg.training}: MLP 64-{cfg.hidden}-10, core {cfg.core_fraction:g}, seed {cfg.seed}",
                "test accuracy")
    sec = {k: 1e3 * v for k, v in result["seconds_per_step"].items()}
    full = result["final_full_accuracy"]
    print(f"{cfg.training}: MLP 64-{cfg.hidden}-10, core = {cfg.core_fraction:g} of the hidden units, {cfg.rounds} steps, "
          f"seed {cfg.seed}")
    print(f"test accuracy: full model {'–' if full is None else f'{full:.4f}'}, core {result['final_core_accuracy']:.4f}"
          + (f", sparse model {result['final_sparse_accuracy']:.4f}" if result.get("final_sparse_accuracy") is not None else ""))
    print(f"per step: forward and backward {sec['forward_backward']:.3f} ms, optimizer step {sec['step']:.3f} ms")
    print(f"JSON: {json_path}\nplot: {plot_path}")
    return 0


# ---------------------------------------------------------------------------
# ddp

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
