"""The data sets, and how they are split over workers.

``--data`` names one (:func:`load_data`); nothing is downloaded:

* ``digits`` (the default): scikit-learn's digits, 1797 8x8 grey images of
  the digits 0-9 shipped inside scikit-learn, pixels scaled to [0, 1], a
  fixed split of 1400 training and 397 test examples (the same for every
  run, so that runs differ only in what their seed draws);
* ``mnist:DIR``, ``fashion-mnist:DIR``: the four IDX files
  (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each gzipped or
  not) in DIR or where torchvision keeps them (``DIR/MNIST/raw``,
  ``DIR/FashionMNIST/raw``); pixels standardised by the training set's mean
  and standard deviation (0.1307 and 0.3081 for MNIST, the usual values);
* ``emnist:DIR``: EMNIST ByClass, 62 classes (digits, upper and lower case
  letters; Cohen et al. 2017), ``emnist-byclass-{train,test}-{images-idx3,labels-idx1}-ubyte``
  in DIR or ``DIR/EMNIST/raw``; its images are stored transposed and are turned upright;
  standardised like MNIST;
* ``cifar10:DIR``: the python pickle batches ``data_batch_1`` to ``_5`` and
  ``test_batch`` in DIR or ``DIR/cifar-10-batches-py``; channels normalised
  by the means (0.4914, 0.4822, 0.4465) and deviations (0.2023, 0.1994,
  0.2010) of Karimireddy, He and Jaggi's CIFAR-10 code, and training batches
  augmented by a random 32x32 crop of the image padded by 4 and a random
  horizontal flip (:func:`augment`);
* ``synthetic:NAME`` (NAME one of the four above): random pixels and labels
  of that data set's shape, class count and sizes, for throughput figures.

Examples are held flat, ``(N, C * H * W)`` float32, with their image shape
beside them, so that flat models read them as they are and image models view them.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..validation import check_int
from .datafiles import CIFAR10_FILES, DataError, find_file, read_cifar10, read_idx

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "augment",
    "check_batch",
    "check_data",
    "check_fits",
    "load_data",
    "load_digits",
    "parse_data",
    "parse_split",
    "split_workers",
    "train_examples",
]

NUM_TRAIN = 1400  # digits' training examples
# The training loss is measured on at most this many training examples (the first ones of the fixed
# order), so that an evaluation of a CIFAR-sized set stays a fraction of a round's cost.
TRAIN_LOSS_EXAMPLES = 10_000

# name -> (example shape, classes, training examples, test examples)
DATASETS = {
    "digits": ((1, 8, 8), 10, NUM_TRAIN, 397),
    "mnist": ((1, 28, 28), 10, 60_000, 10_000),
    "fashion-mnist": ((1, 28, 28), 10, 60_000, 10_000),
    "emnist": ((1, 28, 28), 62, 697_932, 116_323),
    "cifar10": ((3, 32, 32), 10, 50_000, 10_000),
}
_IDX_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "emnist": "EMNIST"}
_CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CROP_PADDING = 4


@dataclass(frozen=True)
class Dataset:
    """Train and test tensors: ``x`` float32 ``(N, features)``, ``y`` int64 ``(N,)``.

    ``shape`` is one example's image shape (C, H, W); ``augmented`` says whether training batches go
    through :func:`augment`; ``fill`` is the normalised value of a black pixel per channel (what
    the augmentation's padding holds).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    shape: tuple[int, ...] = (1, 8, 8)
    augmented: bool = False
    fill: tuple[float, ...] = (0.0,)

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]

    def to(self, device: torch.device | str) -> Dataset:
        """The same data on ``device``."""
        move = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_test", "y_test")}
        return replace(self, **move)

    def train_loss_examples(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training examples the training loss is measured on (all of digits)."""
        return self.x_train[:TRAIN_LOSS_EXAMPLES], self.y_train[:TRAIN_LOSS_EXAMPLES]


def load_digits() -> Dataset:
    """scikit-learn's digits, pixels / 16, split 1400 / 397 by a fixed permutation."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    order = np.random.default_rng(0).permutation(len(bunch.target))
    x = torch.from_numpy(bunch.data[order] / 16.0).float()
    y = torch.from_numpy(bunch.target[order]).long()
    return Dataset(x[:NUM_TRAIN], y[:NUM_TRAIN], x[NUM_TRAIN:], y[NUM_TRAIN:], num_classes=10)


def parse_data(text: str) -> tuple[str, str | None]:
    """``digits``, ``NAME:DIR`` or ``synthetic:NAME`` -> (name, DIR or None); see the module docstring."""
    if not isinstance(text, str):
        raise TypeError(f"data: expected a str (digits, NAME:DIR or synthetic:NAME), got {type(text).__name__}")
    if text == "digits":
        return "digits", None
    name, sep, rest = text.partition(":")
    files = [n for n in DATASETS if n != "digits"]
    if name == "synthetic" and rest in files:
        return f"synthetic:{rest}", None
    if sep and name in files and rest:
        return name, os.path.expanduser(rest)  # a shell leaves the ~ of "mnist:~/data" as it is
    raise ValueError(
        f"data: expected digits, {', '.join(n + ':DIR' for n in files)} or synthetic:NAME "
        f"(NAME one of {', '.join(files)}), got {text!r}"
    )


def _idx_names(name: str) -> tuple[str, ...]:
    if name == "emnist":
        return tuple(f"emnist-byclass-{s}-{k}-ubyte" for s in ("train", "test") for k in ("images-idx3", "labels-idx1"))
    return ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _folders(name: str, folder: str) -> list[str]:
    sub = _CIFAR10_FOLDER if name == "cifar10" else os.path.join(_IDX_FOLDERS[name], "raw")
    return [folder, os.path.join(folder, sub)]


def _cifar10_folder(folder: str, what: str) -> str:
    """The first of DIR and ``DIR/cifar-10-batches-py`` that holds all six batches."""
    folders = _folders("cifar10", folder)
    missing = {f: [n for n in CIFAR10_FILES if not os.path.isfile(os.path.join(f, n))] for f in folders}
    for candidate in folders:
        if not missing[candidate]:
            return candidate
    closest = min(folders, key=lambda f: len(missing[f]))  # the one that holds the most of them
    raise DataError(
        f"{what}: {closest} lacks {', '.join(missing[closest])} (expected {', '.join(CIFAR10_FILES)} "
        f"in {' or '.join(folders)})"
    )


def check_data(text: str) -> str:
    """``text`` as :func:`parse_data` reads it, with a DataError when the files it names are not there.

    Cheap (the files are found, not read), so that a run with a wrong folder stops before it starts.
    """
    name, folder = parse_data(text)
    if folder is None:
        return text
    if not os.path.isdir(folder):
        raise DataError(f"data {text}: {folder} is not a folder")
    if name == "cifar10":
        _cifar10_folder(folder, f"data {text}")
        return text
    for file in _idx_names(name):
        find_file(_folders(name, folder), file, f"data {text}")
    return text


def _standardised(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` -> float32 ``(N, C*H*W)``: (pixel / 255 - mean_c) / std_c, in one float32 copy."""
    x = torch.from_numpy(np.require(images, requirements=["C", "W"])).float().div_(255.0)
    x.sub_(torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)).div_(
        torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    )
    return x.reshape(len(x), -1)


def _pixel_mean_std(images: np.ndarray) -> tuple[float, float]:
    """The mean and (population) deviation of all pixels / 255, summed in float64 a slice at a time."""
    total = squares = 0.0
    for part in np.array_split(images.reshape(len(images), -1), max(1, len(images) // 4096)):
        values = part.astype(np.float64) / 255.0
        total += values.sum()
        squares += np.square(values).sum()
    count = images.size
    mean = total / count
    return mean, math.sqrt(max(squares / count - mean * mean, 0.0))


def _check_labels(labels: np.ndarray, images: np.ndarray, classes: int, what: str) -> torch.Tensor:
    if len(labels) != len(images):
        raise DataError(f"{what}: {len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise DataError(f"{what}: no examples")
    if labels.min() < 0 or labels.max() >= classes:
        raise DataError(f"{what}: labels must be in [0, {classes}), got {labels.min()} to {labels.max()}")
    return torch.from_numpy(labels.astype(np.int64))


def _from_arrays(name: str, train: tuple, test: tuple, what: str) -> Dataset:
    """The data set from uint8 images ``(N, C, H, W)`` and labels, normalised as ``name`` is."""
    shape, classes = DATASETS[name][:2]
    for images in (train[0], test[0]):
        if images.shape[1:] != shape:
            raise DataError(f"{what}: images of shape {images.shape[1:]}, expected {shape}")
    y_train = _check_labels(train[1], train[0], classes, what)
    y_test = _check_labels(test[1], test[0], classes, what)
    if name == "cifar10":
        mean, std = np.array(CIFAR10_MEAN), np.array(CIFAR10_STD)
    else:
        mean, std = (np.array([v]) for v in _pixel_mean_std(train[0]))
    fill = tuple(float(v) for v in -mean / std)
    return Dataset(
        _standardised(train[0], mean, std),
        y_train,
        _standardised(test[0], mean, std),
        y_test,
        classes,
        shape,
        augmented=name == "cifar10",
        fill=fill,
    )


def _synthetic(name: str) -> tuple[tuple, tuple]:
    shape, classes, n_train, n_test = DATASETS[name]
    gen = torch.Generator().manual_seed(0)
    return tuple(
        (
            torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8).numpy(),
            torch.randint(0, classes, (n,), generator=gen).numpy(),
        )
        for n in (n_train, n_test)
    )


@functools.lru_cache(maxsize=2)
def load_data(text: str) -> Dataset:
    """The data set ``text`` names (see the module docstring), on the CPU; DataError for bad files.

    Read once per process (the runs of a grid share it): the tensors are the cache's, not to be written.
    """
    check_data(text)
    name, folder = parse_data(text)
    if name == "digits":
        return load_digits()
    if folder is None:
        base = name.split(":", 1)[1]
        return _from_arrays(base, *_synthetic(base), f"data {text}")
    what = f"data {text}"
    if name == "cifar10":
        x_train, y_train, x_test, y_test = read_cifar10(_cifar10_folder(folder, what), what)
        return _from_arrays(name, (x_train, y_train), (x_test, y_test), what)
    arrays = []
    for file in _idx_names(name):
        array = read_idx(find_file(_folders(name, folder), file, what), 3 if "images" in file else 1, what)
        if "images" in file:
            array = array[:, None]
            if name == "emnist":
                array = array.transpose(0, 1, 3, 2)
        arrays.append(array)
    return _from_arrays(name, (arrays[0], arrays[1]), (arrays[2], arrays[3]), what)


def augment(x: torch.Tensor, data: Dataset, generator: torch.Generator) -> torch.Tensor:
    """Training batches ``(..., features)`` through a random crop and a random horizontal flip per example.

    Each image is padded by ``CROP_PADDING`` pixels of black (``data.fill``), a window of the original
    size is cut at a uniform random offset, and the window is mirrored with probability 1/2: the
    CIFAR augmentation of He et al. (2016) that Karimireddy, He and Jaggi (2021) train with. Drawn on
    ``generator`` (on ``x``'s device); the identity when ``data.augmented`` is false.
    """
    if not data.augmented:
        return x
    c, h, w = data.shape
    images = x.reshape(-1, c, h, w)
    m, p = len(images), CROP_PADDING
    padded = images.new_empty(m, c, h + 2 * p, w + 2 * p)
    for channel, value in enumerate(data.fill):  # scalars: no copy from the host
        padded[:, channel].fill_(value)
    padded[:, :, p : p + h, p : p + w] = images
    offsets = torch.randint(0, 2 * p + 1, (m, 2), generator=generator, device=x.device)
    flip = torch.rand(m, generator=generator, device=x.device) < 0.5
    rows = offsets[:, :1] + torch.arange(h, device=x.device)
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    crops = padded[torch.arange(m, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return crops.permute(0, 3, 1, 2).reshape(x.shape)


def check_fits(data: Dataset, where: str, **counts: int) -> None:
    """Each count (workers, batch, ...) is at most the training examples; a DataError names the first that is not."""
    for name, value in counts.items():
        if value > len(data.y_train):
            raise DataError(
                f"{where}: {name}={value} exceeds the {len(data.y_train)} training examples of the data set"
            )


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


def train_examples(text: str, given: int | None = None) -> int:
    """The training examples that bound a run's counts: ``given`` (those of a data set passed to the run),
    or the published count of the data set ``text`` names, whose files must then be there (:func:`check_data`;
    :func:`check_fits` checks the count once the files are read)."""
    if given is not None:
        return given
    check_data(text)
    return DATASETS[parse_data(text)[0].removeprefix("synthetic:")][2]


def check_batch(batch: object, where: str, limit: int = NUM_TRAIN) -> int:
    """A batch size in [1, limit], the training examples: every batch is drawn from them, and more than all
    of them is a mistake, not a batch."""
    batch = check_int(batch, "batch", where, low=1)
    if batch > limit:
        raise ValueError(f"{where}: batch must be <= {limit} (the training examples), got batch={batch}")
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
    labels = y.cpu().numpy()
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
