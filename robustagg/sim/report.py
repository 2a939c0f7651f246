"""Progress bars, plots and tables shared by the training commands."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

__all__ = [
    "data_name",
    "network_name",
    "setup_text",
    "plot_curves",
    "plot_curve_panels",
    "plot_heatmaps",
    "mean_std",
    "progress_bar",
    "pyplot",
]


@contextmanager
def progress_bar(total: int, label: str) -> Iterator[Callable[[int, str], None]]:
    """A tqdm bar on stderr for the body of the ``with``; yields ``advance(done, note)``, which moves the bar to
    ``done`` of ``total`` and shows ``note`` after it.

    The bar is off when stderr is not a terminal (logs, CI, captured output), where its carriage-return
    redraws would pile up; the commands' summary lines say what a run did.
    """
    from tqdm import tqdm

    bar = tqdm(total=total, desc=label, file=sys.stderr, disable=None, dynamic_ncols=True)

    def advance(done: int, note: str = "") -> None:
        bar.set_postfix_str(note, refresh=False)
        bar.update(done - bar.n)

    try:
        yield advance
    finally:
        bar.close()


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


Curves = dict[str, tuple[Sequence[float], Sequence[float]]]


def plot_curves(path: str, curves: Curves, title: str, ylabel: str, styles: dict[str, str] | None = None) -> None:
    """One line per label (x values, y values); ``styles`` maps a label to a matplotlib format string."""
    plot_curve_panels(path, [(title, curves, ylabel, False)], styles)


def plot_curve_panels(
    path: str,
    panels: list[tuple[str, Curves, str, bool]],
    styles: dict[str, str] | None = None,
    columns: int | None = None,
) -> None:
    """Panels in a grid of ``columns`` (default: one row), each (title, curves, y label, log y axis), x = round; one legend."""
    plt = pyplot()
    many = max(len(curves) for _, curves, _, _ in panels) > 1
    cols = columns or len(panels)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols + (1.8 if many else 0), 4.0 * rows), squeeze=False)
    for ax, (title, curves, ylabel, logy) in zip(axes.flat, panels):
        for label, (x, y) in curves.items():
            ax.plot(x, y, (styles or {}).get(label, "-"), label=label, linewidth=1.4)
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        if logy:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    if many:  # one legend per row, right of its last panel
        for row in axes:
            row[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_heatmaps(path: str, panels: list[tuple[str, list[str], list[str], list[list[float]]]], suptitle: str) -> None:
    """Annotated heatmaps side by side: (title, row labels, column labels, values in [0, 1])."""
    plt = pyplot()
    cols = min(len(panels), 2)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(5.6 * cols, 0.45 * len(panels[0][1]) * rows + 1.6 * rows), squeeze=False
    )
    for ax, (title, row_labels, col_labels, values) in zip(axes.flat, panels):
        im = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(col_labels)), col_labels, fontsize=8)
        ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
        ax.set_title(title, fontsize=9)
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.6, label="test accuracy")
    fig.suptitle(suptitle, fontsize=10)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def data_name(cfg: dict) -> str:
    """The data set a run's config names, without its folder: ``digits``, ``mnist``, ``synthetic:cifar10``, ..."""
    from .data import parse_data

    return parse_data(cfg.get("data", "digits"))[0]


def network_name(cfg: dict) -> str:
    """The model of a run's config in words: ``MLP 64-64-10`` on digits, the built-in's name otherwise."""
    model = cfg.get("model", "mlp")
    if model != "mlp":
        return model
    return (
        f"MLP 64-{cfg['hidden']}-10"
        if cfg.get("data", "digits") == "digits"
        else f"MLP with {cfg['hidden']} hidden units"
    )


def setup_text(cfg: dict, dim: int) -> str:
    """The data, network and device of a grid's runs, for its Setup paragraph."""
    data = cfg.get("data", "digits")
    where = "scikit-learn digits (1400 train / 397 test)" if data == "digits" else f"--data {data}"
    device = "" if cfg.get("device", "cpu") == "cpu" else f", on {cfg['device']}"
    return f"{where}, {network_name(cfg)} ({dim} parameters){device}"
