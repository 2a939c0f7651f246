"""The on-disk formats of the image data sets, read and written: IDX (MNIST, Fashion-MNIST, EMNIST) and
the CIFAR-10 python pickle batches.

Nothing is downloaded: the files are the ones torchvision (or the data sets' own sites) leave on disk.
The writers make files of the same formats, for tests and for stand-in data of a given size.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import zlib
from collections.abc import Sequence

import numpy as np

__all__ = [
    "CIFAR10_FILES",
    "DataError",
    "find_file",
    "read_cifar10",
    "read_idx",
    "write_cifar10",
    "write_idx",
]

# The first dimension's type code 0x08 is unsigned bytes, the only element type of these data sets.
_IDX_UBYTE = 0x08
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


class DataError(ValueError):
    """A data set's files are missing, malformed or too small for the run."""


def find_file(folders: Sequence[str], name: str, what: str) -> str:
    """The first of ``folder/name`` and ``folder/name.gz`` over ``folders`` that exists."""
    for folder in folders:
        for candidate in (name, name + ".gz"):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return path
    raise DataError(f"{what}: no {name} (or {name}.gz) in {' or '.join(folders)}")


def _open(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_idx(path: str, dims: int, what: str) -> np.ndarray:
    """The unsigned-byte array of an IDX file (gzipped or not) with ``dims`` dimensions.

    IDX (LeCun et al., the MNIST format): two zero bytes, the type code 0x08, the number of dimensions,
    then each dimension as a big-endian uint32, then the values in row-major order.
    """
    try:
        with _open(path) as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(f"{what}: cannot read {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or raw[3] != dims:
        raise DataError(
            f"{what}: {path} is not an IDX file of unsigned bytes with {dims} dimensions "
            f"(its header is {raw[:4].hex() or 'empty'}, expected 0000080{dims})"
        )
    shape = struct.unpack(f">{dims}I", raw[4 : 4 + 4 * dims]) if len(raw) >= 4 + 4 * dims else None
    if shape is None or len(raw) != 4 + 4 * dims + int(np.prod(shape)):
        raise DataError(f"{what}: {path} is truncated or has trailing bytes for its header's shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_idx(path: str, array: np.ndarray) -> None:
    """``array`` (uint8) as an IDX file, gzipped when ``path`` ends in ``.gz``."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _IDX_UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") if path.endswith(".gz") else open(path, "wb") as fh:
        fh.write(header + array.tobytes())


def _read_batch(path: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{what}: cannot read {path} as a CIFAR-10 pickle batch: {exc}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{what}: {path} is not a CIFAR-10 batch (a dict with b'data' and b'labels')")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(
            f"{what}: {path} holds data of shape {data.shape} ({data.dtype}) and {len(labels)} labels; "
            "expected uint8 (N, 3072) and N labels"
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_cifar10(folder: str, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) from ``data_batch_1..5`` and ``test_batch``.

    Images are uint8 ``(N, 3, 32, 32)``: each pickled row is the 1024 red, then green, then blue values.
    """
    missing = [name for name in CIFAR10_FILES if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise DataError(f"{what}: {folder} lacks {', '.join(missing)} (expected {', '.join(CIFAR10_FILES)})")
    train = [_read_batch(os.path.join(folder, name), what) for name in CIFAR10_FILES[:-1]]
    test = _read_batch(os.path.join(folder, CIFAR10_FILES[-1]), what)
    return np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train]), *test


def write_cifar10(
    folder: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> None:
    """Images uint8 ``(N, 3, 32, 32)`` and labels as the six CIFAR-10 pickle batches in ``folder``.

    The training set is cut into five near-equal batches.
    """
    os.makedirs(folder, exist_ok=True)
    parts = zip(np.array_split(np.asarray(x_train), 5), np.array_split(np.asarray(y_train), 5))
    for name, (x, y) in zip(CIFAR10_FILES, [*parts, (x_test, y_test)]):
        batch = {b"data": np.asarray(x, dtype=np.uint8).reshape(len(x), -1), b"labels": [int(v) for v in y]}
        with open(os.path.join(folder, name), "wb") as fh:
            pickle.dump(batch, fh)
