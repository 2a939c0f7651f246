"""Built-in data and how it is split over workers.

The data set is scikit-learn's digits (1797 8x8 grey images of the digits
0-9, shipped inside scikit-learn, no download): pixels scaled to [0, 1],
a fixed split of 1400 training and 397 test examples (the same for every
run, so that runs differ only in what their seed draws).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..validation import check_int

__all__ = ["Dataset", "load_digits", "split_workers", "parse_split", "check_batch"]

NUM_TRAIN = 1400


@dataclass(frozen=True)
class Dataset:
    """Train and test tensors: ``x`` float32 ``(N, features)``, ``y`` int64 ``(N,)``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]


def load_digits() -> Dataset:
    """scikit-learn's digits, pixels / 16, split 1400 / 397 by a fixed permutation."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    order = np.random.default_rng(0).permutation(len(bunch.target))
    x = torch.from_numpy(bunch.data[order] / 16.0).float()
    y = torch.from_numpy(bunch.target[order]).long()
    return Dataset(x[:NUM_TRAIN], y[:NUM_TRAIN], x[NUM_TRAIN:], y[NUM_TRAIN:], num_classes=10)


def parse_split(text: str) -> tuple[str, float | None]:
    """``iid``, ``sorted`` (label-sorted) or ``dirichlet:ALPHA`` -> (kind, alpha)."""
    if not isinstance(text, str):
        raise TypeError(f"split: expected a str (iid, sorted or dirichlet:ALPHA), got {type(text).__name__} {text!r}")
    if text in ("iid", "sorted"):
        return text, None
    kind, _, value = text.partition(":")
    if kind == "dirichlet":
        try:
            alpha = float(value)
        except ValueError:
            alpha = float("nan")
        if alpha > 0 and np.isfinite(alpha):
            return kind, alpha
    raise ValueError(f"split: expected iid, sorted or dirichlet:ALPHA with ALPHA > 0, got {text!r}")


def check_batch(batch: object, where: str) -> int:
    """A batch size in [1, NUM_TRAIN]: every batch is drawn from the training examples, and more than all
    of them is a mistake, not a batch."""
    batch = check_int(batch, "batch", where, low=1)
    if batch > NUM_TRAIN:
        raise ValueError(f"{where}: batch must be <= {NUM_TRAIN} (the training examples), got batch={batch}")
    return batch


def split_workers(y: torch.Tensor, workers: int, split: str, rng: np.random.Generator) -> list[torch.Tensor]:
    """Indices of the examples each worker holds; every example goes to exactly one worker.

    * ``iid``: a random permutation cut into ``workers`` near-equal shares;
    * ``sorted``: examples sorted by label (random order within a label) and
      cut into near-equal contiguous shares, so each worker sees one or two labels;
    * ``dirichlet:ALPHA``: for every label, its examples are divided among the
      workers in proportions drawn from Dirichlet(ALPHA) (Hsu, Qi, Brown 2019);
      small ALPHA concentrates each label on few workers. A worker left
      empty takes one example from the largest share.
    """
    kind, alpha = parse_split(split)
    n_examples = len(y)
    check_int(workers, "workers", "split")
    if workers < 1 or workers > n_examples:
        raise ValueError(f"split: workers must be in [1, {n_examples}], got {workers}")
    labels = y.numpy()
    if kind == "iid":
        return [torch.from_numpy(part) for part in np.array_split(rng.permutation(n_examples), workers)]
    if kind == "sorted":
        order = np.lexsort((rng.random(n_examples), labels))
        return [torch.from_numpy(part) for part in np.array_split(order, workers)]
    shares: list[list[int]] = [[] for _ in range(workers)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cuts = (np.cumsum(rng.dirichlet(np.full(workers, alpha))) * len(members)).astype(int)[:-1]
        for w, part in enumerate(np.split(members, cuts)):
            shares[w].extend(part.tolist())
    for w in range(workers):
        if not shares[w]:
            donor = max(range(workers), key=lambda k: len(shares[k]))
            shares[w].append(shares[donor].pop())
    return [torch.tensor(sorted(s), dtype=torch.long) for s in shares]
