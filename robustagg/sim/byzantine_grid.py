"""The Byzantine line's experiment grid: attacks x rules x worker momentum.

Two parts, each over several seeds, on digits with the MLP:

* iid split, n = 25, f in {5, 11}: attacks {none, sign flip, label flip,
  IPM, ALIE} x rules {mean, CM, TM, Krum, GM, CC} x momentum {0, 0.9};
* label-sorted split, f = 5: the memoryless rules {CM, TM, Krum, GM} with and
  without bucketing (s = 2), same attacks and momenta;
* the catalogue, iid split, n = 12, f = 3: attacks {none, ALIE, IPM, MinMax,
  MinSum, Fang on TM, Fang on Krum} x rules {mean, Krum, MDA, MoNNA, SMEA,
  CAF, DnC, FLTrust, SignGuard, ClippedClustering, FoolsGold} x momentum
  {0, 0.9} (n = 12 keeps the subset rules' C(12, 3) = 220 subsets cheap).

``run_grid`` runs the configurations in ``jobs`` processes (one torch
thread each); ``grid_markdown`` and ``grid_plots`` turn the results into
``docs/results/byzantine.md`` and its figures.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace

from .byzantine import ByzantineConfig, run_byzantine
from .report import data_name, mean_std, plot_curves, plot_heatmaps, setup_text
from .runner import run_parallel

__all__ = [
    "ATTACKS",
    "CATALOGUE_ATTACKS",
    "CATALOGUE_RULES",
    "RULES",
    "grid_configs",
    "run_grid",
    "grid_markdown",
    "grid_plots",
]

ATTACKS = ["none", "sign_flip", "label_flip", "ipm", "alie"]
RULES = ["mean", "cm", "tm", "krum", "gm", "cc"]
BUCKETING_RULES = ["cm", "tm", "krum", "gm"]
MOMENTA = [0.0, 0.9]
FS = [5, 11]
CATALOGUE_RULES = [
    "mean",
    "krum",
    "mda",
    "monna",
    "smea",
    "caf",
    "dnc",
    "fltrust",
    "signguard",
    "clipcluster",
    "foolsgold",
]
CATALOGUE_ATTACKS = ["none", "alie", "ipm", "minmax", "minsum", "fang_trimmed_mean", "fang_krum"]
CATALOGUE_N, CATALOGUE_F = 12, 3
LABELS = {
    "mean": "mean",
    "cm": "CM",
    "tm": "TM",
    "krum": "Krum",
    "gm": "GM",
    "cc": "CC",
    "mda": "MDA",
    "monna": "MoNNA",
    "smea": "SMEA",
    "caf": "CAF",
    "dnc": "DnC",
    "fltrust": "FLTrust",
    "signguard": "SignGuard",
    "clipcluster": "ClipClust",
    "foolsgold": "FoolsGold",
}
ATTACK_LABELS = {
    "none": "none",
    "sign_flip": "sign flip",
    "label_flip": "label flip",
    "ipm": "IPM",
    "alie": "ALIE",
    "minmax": "MinMax",
    "minsum": "MinSum",
    "fang_trimmed_mean": "Fang-TM",
    "fang_krum": "Fang-Krum",
}


def grid_configs(seeds: int = 3, rounds: int = 300, base: ByzantineConfig | None = None) -> list[ByzantineConfig]:
    """Every run of the grid, iid part first."""
    base = base or ByzantineConfig()
    iid = [
        dict(agg=rule, attack=attack, byzantine=f, momentum=beta, split="iid", bucketing=0)
        for f in FS
        for attack in ATTACKS
        for beta in MOMENTA
        for rule in RULES
    ]
    sorted_split = [
        dict(agg=rule, attack=attack, byzantine=5, momentum=beta, split="sorted", bucketing=s)
        for attack in ATTACKS
        for beta in MOMENTA
        for rule in BUCKETING_RULES
        for s in (0, 2)
    ]
    catalogue = [
        dict(
            agg=rule, attack=attack, workers=CATALOGUE_N, byzantine=CATALOGUE_F, momentum=beta, split="iid", bucketing=0
        )
        for attack in CATALOGUE_ATTACKS
        for beta in MOMENTA
        for rule in CATALOGUE_RULES
    ]
    cells = iid + sorted_split + catalogue
    return [replace(base, **cell, rounds=rounds, seed=seed) for cell in cells for seed in range(seeds)]


def run_grid(
    configs: list[ByzantineConfig], jobs: int, progress: Callable[[int, dict], None] | None = None
) -> list[dict]:
    """Run the configurations in ``jobs`` processes; results in the configurations' order."""
    return run_parallel(run_byzantine, configs, jobs, progress)


def _key(cfg: dict) -> tuple:
    """The cell of a run; the catalogue part is the one with f = CATALOGUE_F."""
    return (cfg["split"], cfg["byzantine"], cfg["attack"], cfg["momentum"], cfg["agg"], cfg["bucketing"])


def _accuracies(results: list[dict]) -> dict[tuple, list[float]]:
    table: dict[tuple, list[float]] = defaultdict(list)
    for r in results:
        table[_key(r["config"])].append(r["tail_test_accuracy"])
    return table


def _cell(values: list[float] | None) -> str:
    if not values:
        return "–"
    m, s = mean_std(values)
    return f"{m:.3f} ± {s:.3f}"


def _iid_table(acc: dict[tuple, list[float]], f: int, attacks: list[str], rules: list[str]) -> list[str]:
    """The markdown lines of one iid table: attack x momentum rows, one column per rule, then a blank line."""
    lines = ["| attack | momentum | " + " | ".join(LABELS[r] for r in rules) + " |", "|---|---|" + "---|" * len(rules)]
    for attack in attacks:
        for beta in MOMENTA:
            cells = [_cell(acc.get(("iid", f, attack, beta, rule, 0))) for rule in rules]
            lines.append(f"| {ATTACK_LABELS[attack]} | {beta} | " + " | ".join(cells) + " |")
    return lines + [""]


def grid_markdown(results: list[dict], command: str, wall_seconds: float, jobs: int, machine: str) -> str:
    """Tables of mean ± std tail test accuracy, and the per-round timings."""
    acc = _accuracies(results)
    cfg0 = results[0]["config"]
    seeds = len({r["config"]["seed"] for r in results})
    lines = [
        f"# Byzantine-robust training on {data_name(cfg0)}",
        "",
        f"Generated by `{command}` in {wall_seconds / 60:.1f} min ({jobs} process{'es' if jobs > 1 else ''}, 1 torch thread each) on {machine}.",
        "",
        f"Setup: {setup_text(cfg0, results[0]['dim'])}, "
        f"n = {cfg0['workers']} workers (the last f Byzantine), batch {cfg0['batch']} per worker per round, "
        f"lr {cfg0['lr']}, {cfg0['rounds']} rounds; worker momentum m = beta m + (1 - beta) g; "
        f"CC tau = {cfg0['cc_tau']}, {cfg0['cc_iters']} iterations, center = previous aggregate; "
        f"GM at most {cfg0['gm_iters']} Weiszfeld steps; TM and Krum use the true f; IPM eps = {cfg0['ipm_eps']}; "
        "ALIE z from n and f (0.2533 for f = 5, 1.0676 for f = 11). "
        "Each cell: test accuracy averaged over the evaluations (every "
        f"{cfg0['eval_every']} rounds) in the last 20% of the rounds, then mean ± std over {seeds} seeds; "
        "under attack the accuracy swings from one evaluation to the next, so the last evaluation alone is noisy "
        "(the JSON has it too).",
        "",
    ]
    for f in FS:
        lines += [f"## iid split, f = {f} of {cfg0['workers']}", ""]
        lines += _iid_table(acc, f, ATTACKS, RULES)
    lines += ["## Label-sorted split, f = 5: bucketing (s = 2) in front of the memoryless rules", ""]
    heads = [f"{LABELS[r]}{suffix}" for r in BUCKETING_RULES for suffix in ("", " + bucketing")]
    lines += ["| attack | momentum | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    for attack in ATTACKS:
        for beta in MOMENTA:
            cells = [_cell(acc.get(("sorted", 5, attack, beta, rule, s))) for rule in BUCKETING_RULES for s in (0, 2)]
            lines.append(f"| {ATTACK_LABELS[attack]} | {beta} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [
        f"## The catalogue: iid split, f = {CATALOGUE_F} of {CATALOGUE_N}",
        "",
        "MDA, MoNNA (pivot: worker 0, honest), SMEA, CAF and DnC use the true f; FLTrust's server computes its "
        f"root update on {cfg0['root_size']} clean training examples each round; MinMax and MinSum perturb "
        f"along {cfg0['perturbation']}; Fang's attacks are the full-knowledge attacks on the trimmed mean "
        "(b = 2) and on Krum.",
        "",
    ]
    lines += _iid_table(acc, CATALOGUE_F, CATALOGUE_ATTACKS, CATALOGUE_RULES)

    per_rule: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for r in results:
        if r["config"]["bucketing"] == 0 and r["config"]["split"] == "iid":
            per_rule[r["config"]["workers"], r["config"]["agg"]].append(r["seconds_per_round"])
    lines += [
        "## Time per round",
        "",
        "Mean over the iid runs, milliseconds per round (one thread). Gradients: all n workers' gradients "
        "(vmap over workers; FLTrust's root update too); aggregation: the rule on the n x d matrix; momentum: "
        "the fused native update of all n buffers.",
        "",
        "| n | rule | gradients | momentum | attack | aggregation | aggregation / gradients |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, rules in ((cfg0["workers"], RULES), (CATALOGUE_N, CATALOGUE_RULES)):
        for rule in rules:
            rows = per_rule.get((n, rule))
            if not rows:
                continue
            avg = {k: 1e3 * sum(row[k] for row in rows) / len(rows) for k in rows[0]}
            lines.append(
                f"| {n} | {LABELS[rule]} | {avg['gradients']:.2f} | {avg['momentum']:.3f} | {avg['attack']:.2f} | "
                f"{avg['aggregation']:.2f} | {avg['aggregation'] / avg['gradients']:.2f} |"
            )
    lines += [
        "",
        "![accuracy by attack and rule](byzantine.png)",
        "",
        "![ALIE, f = 11: test accuracy per round](byzantine-alie-curves.png)",
        "",
        "![the catalogue: accuracy by attack and rule](byzantine-catalogue.png)",
        "",
    ]
    return "\n".join(lines)


def grid_plots(results: list[dict], folder: str) -> list[str]:
    """``byzantine.png`` (heatmaps of mean tail accuracy), ``byzantine-alie-curves.png`` and
    ``byzantine-catalogue.png`` (the catalogue part's heatmaps); returns the paths."""
    acc = _accuracies(results)
    panels = []
    for f in FS:
        for beta in MOMENTA:
            values = [[_mean_or_nan(acc.get(("iid", f, a, beta, r, 0))) for r in RULES] for a in ATTACKS]
            panels.append(
                (
                    f"iid, f = {f}, momentum {beta}",
                    [ATTACK_LABELS[a] for a in ATTACKS],
                    [LABELS[r] for r in RULES],
                    values,
                )
            )
    heat = os.path.join(folder, "byzantine.png")
    plot_heatmaps(heat, panels, "Test accuracy on digits, last 20% of rounds (n = 25, mean over seeds)")

    curves, styles = {}, {}
    for beta in MOMENTA:
        for rule in RULES:
            runs = [r for r in results if _key(r["config"]) == ("iid", 11, "alie", beta, rule, 0)]
            if not runs:
                continue
            rounds = [p["round"] for p in runs[0]["curve"]]
            mean_curve = [sum(r["curve"][k]["test_accuracy"] for r in runs) / len(runs) for k in range(len(rounds))]
            label = f"{LABELS[rule]}, momentum {beta}"
            curves[label] = (rounds, mean_curve)
            styles[label] = f"C{RULES.index(rule)}" + ("-" if beta > 0 else "--")
    path = os.path.join(folder, "byzantine-alie-curves.png")
    plot_curves(path, curves, "ALIE, f = 11 of 25, iid: test accuracy (mean over seeds)", "test accuracy", styles)

    catalogue = [
        (
            f"iid, f = {CATALOGUE_F} of {CATALOGUE_N}, momentum {beta}",
            [ATTACK_LABELS[a] for a in CATALOGUE_ATTACKS],
            [LABELS[r] for r in CATALOGUE_RULES],
            [
                [_mean_or_nan(acc.get(("iid", CATALOGUE_F, a, beta, r, 0))) for r in CATALOGUE_RULES]
                for a in CATALOGUE_ATTACKS
            ],
        )
        for beta in MOMENTA
    ]
    catalogue_path = os.path.join(folder, "byzantine-catalogue.png")
    plot_heatmaps(catalogue_path, catalogue, "The catalogue on digits, last 20% of rounds (mean over seeds)")
    return [heat, path, catalogue_path]


def _mean_or_nan(values: list[float] | None) -> float:
    return mean_std(values)[0] if values else float("nan")
