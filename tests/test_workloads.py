"""The workloads behind ``--data``, ``--model`` and ``--device``: the data set loaders on files written by the
project's own writers, the CIFAR augmentation, the models over one flat vector, every built-in model through
every line, the presets on the command line, the width core of ResNet-20, and the runs on a GPU."""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("sklearn", reason="the lines' default data set ships with scikit-learn (README set-up installs it)")

from robustagg.cli import main
from robustagg.optim.masked import width_core
from robustagg.sim.byzantine import ByzantineConfig, run_byzantine
from robustagg.sim.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DATASETS,
    DataError,
    Dataset,
    augment,
    check_data,
    check_fits,
    load_data,
    load_digits,
    parse_data,
)
from robustagg.sim.datafiles import write_cifar10, write_idx
from robustagg.sim.federated import FederatedConfig, run_federated
from robustagg.sim.masked import MaskedConfig, make_network, run_masked
from robustagg.sim.models import MODELS, FlatModel, ModuleModel, make_model
from robustagg.sim.networks import ResNet20, SmallCNN
from robustagg.sim.personalized import PersonalizedConfig, run_personalized

# Written out here rather than taken from data.py, so that a renamed file in the loader shows up as a failure.
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
EMNIST_FILES = tuple(
    f"emnist-byclass-{part}-{kind}-ubyte" for part in ("train", "test") for kind in ("images-idx3", "labels-idx1")
)
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "emnist": "EMNIST"}


# ---------------------------------------------------------------------------
# Generated files


def _write_idx_set(folder, name: str, n_train: int = 40, n_test: int = 12, gz: bool = False, seed: int = 0):
    """Random uint8 images and labels as the four IDX files of ``name`` in ``folder``; returns the arrays
    (train images, train labels, test images, test labels) as written."""
    rng = np.random.default_rng(seed)
    classes = DATASETS[name][1]
    arrays = (
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, classes, n_train, dtype=np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, classes, n_test, dtype=np.uint8),
    )
    os.makedirs(folder, exist_ok=True)
    for file, array in zip(EMNIST_FILES if name == "emnist" else MNIST_FILES, arrays):
        write_idx(os.path.join(folder, file + (".gz" if gz else "")), array)
    return arrays


def _write_cifar_set(folder, n_train: int = 40, n_test: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    arrays = (
        rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8),
        rng.integers(0, 10, n_train),
        rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8),
        rng.integers(0, 10, n_test),
    )
    write_cifar10(str(folder), *arrays)
    return arrays


def _standardised(images: np.ndarray, train_images: np.ndarray) -> torch.Tensor:
    """(pixel / 255 - mean) / std with the training pixels' mean and (population) std, in float64, flat."""
    train = train_images.astype(np.float64) / 255.0
    x = (images.astype(np.float64) / 255.0 - train.mean()) / train.std()
    return torch.from_numpy(x.reshape(len(images), -1))


def _assert_standardised(got: torch.Tensor, images: np.ndarray, train_images: np.ndarray) -> None:
    assert got.dtype == torch.float32
    # Tight enough to tell the population std from the sample std (a 1.6e-5 relative difference at 40 images).
    torch.testing.assert_close(got.double(), _standardised(images, train_images), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# Loaders


@pytest.mark.parametrize("layout", ["plain", "gz", "torchvision"])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_kinds_load_from_each_layout(tmp_path, name, layout) -> None:
    folder = tmp_path / TORCHVISION_FOLDERS[name] / "raw" if layout == "torchvision" else tmp_path
    x_train, y_train, x_test, y_test = _write_idx_set(folder, name, gz=layout == "gz")
    data = load_data(f"{name}:{tmp_path}")
    assert data.x_train.shape == (40, 784) and data.x_test.shape == (12, 784)
    assert data.shape == (1, 28, 28) and data.num_classes == 10 and data.num_features == 784
    assert data.y_train.dtype == torch.int64
    assert data.y_train.tolist() == y_train.tolist() and data.y_test.tolist() == y_test.tolist()
    _assert_standardised(data.x_train, x_train, x_train)
    _assert_standardised(data.x_test, x_test, x_train)  # the test set takes the training set's statistics
    pixels = x_train.astype(np.float64) / 255.0
    assert data.fill == pytest.approx((-pixels.mean() / pixels.std(),))
    assert not data.augmented


@pytest.mark.parametrize("layout", ["plain", "torchvision"])
def test_emnist_loads_62_classes_with_its_images_upright(tmp_path, layout) -> None:
    folder = tmp_path / "EMNIST" / "raw" if layout == "torchvision" else tmp_path
    x_train, y_train, x_test, y_test = _write_idx_set(folder, "emnist", seed=3)
    data = load_data(f"emnist:{tmp_path}")
    assert data.num_classes == 62 and data.shape == (1, 28, 28)
    assert data.x_train.shape == (40, 784) and data.x_test.shape == (12, 784)
    assert data.y_train.tolist() == y_train.tolist() and data.y_test.tolist() == y_test.tolist()
    # EMNIST stores its images transposed: the loader turns each one upright.
    upright_train, upright_test = x_train.transpose(0, 2, 1), x_test.transpose(0, 2, 1)
    _assert_standardised(data.x_train, upright_train, x_train)
    _assert_standardised(data.x_test, upright_test, x_train)
    one = _standardised(x_train[5].T[None], x_train)  # image 5 transposed on its own
    torch.testing.assert_close(data.x_train[5:6].double(), one, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(data.x_train[5:6].double(), _standardised(x_train[5:6], x_train), atol=1e-3)


@pytest.mark.parametrize("inner", [False, True])
def test_cifar10_loads_normalised_per_channel_and_augmented(tmp_path, inner) -> None:
    folder = tmp_path / "cifar-10-batches-py" if inner else tmp_path
    x_train, y_train, x_test, y_test = _write_cifar_set(folder)
    data = load_data(f"cifar10:{tmp_path}")
    assert data.shape == (3, 32, 32) and data.num_classes == 10
    assert data.x_train.shape == (40, 3072) and data.x_test.shape == (12, 3072)
    assert data.y_train.tolist() == y_train.tolist() and data.y_test.tolist() == y_test.tolist()
    assert data.augmented
    mean = np.array([0.4914, 0.4822, 0.4465]).reshape(1, 3, 1, 1)
    std = np.array([0.2023, 0.1994, 0.2010]).reshape(1, 3, 1, 1)
    assert CIFAR10_MEAN == tuple(mean.ravel()) and CIFAR10_STD == tuple(std.ravel())
    for got, images in ((data.x_train, x_train), (data.x_test, x_test)):
        want = torch.from_numpy(((images.astype(np.float64) / 255.0 - mean) / std).reshape(len(images), -1))
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    assert data.fill == pytest.approx(tuple(-mean.ravel() / std.ravel()))


def test_synthetic_cifar10_has_the_published_sizes_and_shape() -> None:
    shape, classes, n_train, n_test = DATASETS["cifar10"]
    assert (shape, classes, n_train, n_test) == ((3, 32, 32), 10, 50_000, 10_000)
    data = load_data("synthetic:cifar10")
    assert data.x_train.shape == (n_train, 3072) and data.x_test.shape == (n_test, 3072)
    assert data.shape == shape and data.num_classes == classes and data.augmented
    assert int(data.y_train.min()) >= 0 and int(data.y_train.max()) < classes


def test_parse_data_reads_each_form_and_refuses_the_rest() -> None:
    assert parse_data("digits") == ("digits", None)
    assert parse_data("mnist:/x") == ("mnist", "/x")
    assert parse_data("emnist:/a:b") == ("emnist", "/a:b")
    assert parse_data("synthetic:cifar10") == ("synthetic:cifar10", None)
    for text in ("mnist", "mnist:", "imagenet:/x", "synthetic:foo", "synthetic:digits", "Digits"):
        with pytest.raises(ValueError, match=re.escape(f"got {text!r}")):
            parse_data(text)
    with pytest.raises(TypeError, match="data: expected a str"):
        parse_data(None)


def _mnist_error(folder, text: str | None = None) -> str:
    with pytest.raises(DataError) as info:
        load_data(text or f"mnist:{folder}")
    return str(info.value)


def test_missing_and_empty_folders_are_refused_naming_what_is_missing(tmp_path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=re.escape(f"{missing} is not a folder")):
        check_data(f"mnist:{missing}")
    assert f"{missing} is not a folder" in _mnist_error(missing)
    message = _mnist_error(tmp_path)
    assert "no train-images-idx3-ubyte (or train-images-idx3-ubyte.gz) in " in message
    assert str(tmp_path / "MNIST" / "raw") in message
    with pytest.raises(DataError, match="no emnist-byclass-train-images-idx3-ubyte"):
        load_data(f"emnist:{tmp_path}")
    with pytest.raises(DataError, match=r"lacks data_batch_1, data_batch_2, .*, test_batch \(expected data_batch_1"):
        load_data(f"cifar10:{tmp_path}")
    # Three of the four files: the fourth is named.
    _write_idx_set(tmp_path, "mnist")
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(DataError, match="no t10k-labels-idx1-ubyte "):
        check_data(f"mnist:{tmp_path}")


def test_malformed_idx_files_are_refused_naming_the_problem(tmp_path) -> None:
    _write_idx_set(tmp_path, "mnist")
    images = tmp_path / "train-images-idx3-ubyte"
    good = images.read_bytes()

    images.write_bytes(good[:-1])
    assert "is truncated or has trailing bytes for its header's shape (40, 28, 28)" in _mnist_error(tmp_path)
    images.write_bytes(good + b"\0")
    assert "is truncated or has trailing bytes" in _mnist_error(tmp_path)
    images.write_bytes(good[:10])  # shorter than its own header
    assert "is truncated or has trailing bytes for its header's shape None" in _mnist_error(tmp_path)
    images.write_bytes(b"")
    assert "its header is empty, expected 00000803" in _mnist_error(tmp_path)
    images.write_bytes(b"\0\0\x0d\x03" + good[4:])  # type code 0x0d: float32 elements
    assert "is not an IDX file of unsigned bytes with 3 dimensions (its header is 00000d03" in _mnist_error(tmp_path)
    write_idx(str(images), np.zeros((40, 784), dtype=np.uint8))  # two dimensions, not three
    assert "(its header is 00000802, expected 00000803)" in _mnist_error(tmp_path)
    write_idx(str(images), np.zeros((40, 28, 27), dtype=np.uint8))
    assert "images of shape (1, 28, 27), expected (1, 28, 28)" in _mnist_error(tmp_path)

    _write_idx_set(tmp_path, "mnist")
    write_idx(str(tmp_path / "train-labels-idx1-ubyte"), np.zeros(39, dtype=np.uint8))
    assert "40 images but 39 labels" in _mnist_error(tmp_path)
    write_idx(str(tmp_path / "train-labels-idx1-ubyte"), np.full(40, 10, dtype=np.uint8))
    assert "labels must be in [0, 10), got 10 to 10" in _mnist_error(tmp_path)

    _write_idx_set(tmp_path, "emnist")
    write_idx(str(tmp_path / EMNIST_FILES[3]), np.arange(12, dtype=np.uint8) * 6)  # 0 to 66 of 62 classes
    with pytest.raises(DataError, match=re.escape("labels must be in [0, 62), got 0 to 66")):
        load_data(f"emnist:{tmp_path}")


# The loader takes the pixels' mean of the empty training set before it counts the examples.
@pytest.mark.filterwarnings(
    "ignore:Mean of empty slice", "ignore:invalid value encountered", "ignore:Degrees of freedom"
)
def test_an_empty_training_set_is_refused(tmp_path) -> None:
    _write_idx_set(tmp_path, "mnist", n_train=0)
    assert "no examples" in _mnist_error(tmp_path)


def test_gzipped_idx_files_that_do_not_decompress_are_refused(tmp_path) -> None:
    _write_idx_set(tmp_path, "mnist", gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    assert "cannot read" in _mnist_error(tmp_path)
    path.write_bytes(b"not gzip at all")
    assert "cannot read" in _mnist_error(tmp_path)


def test_gzipped_idx_file_with_a_corrupt_stream_is_a_data_error(tmp_path) -> None:
    _write_idx_set(tmp_path, "mnist", gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = bytearray(gzip.compress(gzip.decompress(path.read_bytes())))  # a 10-byte header, no file name
    raw[10] |= 0b110  # the first deflate block's type 3, which deflate reserves
    path.write_bytes(bytes(raw))
    with pytest.raises(zlib.error, match="invalid block type"):  # what gzip itself raises on this file
        gzip.decompress(bytes(raw))
    assert "cannot read" in _mnist_error(tmp_path)


def test_malformed_cifar_folders_are_refused_naming_the_problem(tmp_path) -> None:
    _write_cifar_set(tmp_path)
    text = f"cifar10:{tmp_path}"
    batch = tmp_path / "data_batch_2"
    good = batch.read_bytes()
    batch.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=re.escape(f"cannot read {batch} as a CIFAR-10 pickle batch")):
        load_data(text)
    batch.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="as a CIFAR-10 pickle batch"):
        load_data(text)
    batch.write_bytes(b"\x80\x04K\x01.")  # the pickle of the int 1
    with pytest.raises(DataError, match=re.escape("is not a CIFAR-10 batch (a dict with b'data' and b'labels')")):
        load_data(text)
    batch.write_bytes(good)
    os.remove(tmp_path / "data_batch_3")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path} lacks data_batch_3 (expected data_batch_1, ")):
        load_data(text)


def test_check_fits_names_the_first_count_over_the_training_examples(tmp_path) -> None:
    data = load_digits()
    check_fits(data, "run", workers=1400, batch=1)
    with pytest.raises(DataError, match=r"run: batch=1401 exceeds the 1400 training examples"):
        check_fits(data, "run", workers=25, batch=1401, root_size=2000)


# ---------------------------------------------------------------------------
# Augmentation


def _cifar_shaped(m: int, seed: int = 0) -> tuple[torch.Tensor, Dataset]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, 3 * 32 * 32, generator=g)
    fill = tuple(-mu / s for mu, s in zip(CIFAR10_MEAN, CIFAR10_STD))
    y = torch.zeros(m, dtype=torch.long)
    return x, Dataset(x, y, x, y, 10, (3, 32, 32), augmented=True, fill=fill)


def _windows(image: torch.Tensor, fill: tuple[float, ...]) -> list[tuple[int, int, bool, torch.Tensor]]:
    """Every 32x32 window of ``image`` padded by 4 pixels of ``fill``, mirrored or not."""
    padded = torch.tensor(fill).view(3, 1, 1).expand(3, 40, 40).clone()
    padded[:, 4:36, 4:36] = image
    out = []
    for dy in range(9):
        for dx in range(9):
            window = padded[:, dy : dy + 32, dx : dx + 32]
            out += [(dy, dx, False, window), (dy, dx, True, window.flip(-1))]
    return out


def test_augment_is_the_identity_without_augmentation() -> None:
    data = load_digits()
    x = data.x_train[:6]
    assert augment(x, data, torch.Generator().manual_seed(0)) is x


def test_augment_cuts_a_padded_window_mirrored_or_not() -> None:
    x, data = _cifar_shaped(48)
    out = augment(x, data, torch.Generator().manual_seed(7))
    assert out.shape == x.shape and out.dtype == x.dtype
    seen = set()
    for i in range(48):
        image = out[i].view(3, 32, 32)
        matches = [
            (dy, dx, flip) for dy, dx, flip, w in _windows(x[i].view(3, 32, 32), data.fill) if torch.equal(w, image)
        ]
        assert len(matches) == 1, f"image {i}: {matches}"
        seen.add(matches[0])
    # 48 draws over 162 choices: both flips and many offsets, not one fixed crop.
    assert {flip for _, _, flip in seen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in seen}) > 20


def test_augment_repeats_with_the_seed_and_keeps_leading_dimensions() -> None:
    x, data = _cifar_shaped(12, seed=1)
    once = augment(x, data, torch.Generator().manual_seed(3))
    assert torch.equal(once, augment(x, data, torch.Generator().manual_seed(3)))
    assert not torch.equal(once, augment(x, data, torch.Generator().manual_seed(4)))
    # The lines pass (workers, batch, features): each example is cropped on its own.
    batched = augment(x.view(3, 4, -1), data, torch.Generator().manual_seed(3))
    assert batched.shape == (3, 4, 3072)
    assert torch.equal(batched.reshape(12, -1), once)


# ---------------------------------------------------------------------------
# Models


def _parameter_count(name: str, shape: tuple[int, int, int], classes: int, hidden: int) -> int:
    features = math.prod(shape)
    if name == "logreg":
        return classes * features + classes
    if name == "mlp":
        return features * hidden + hidden + hidden * classes + classes
    module = SmallCNN(*shape, classes) if name == "cnn" else ResNet20(shape[0], classes)
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
@pytest.mark.parametrize("name", MODELS)
def test_make_model_dim_is_the_parameter_count(name, shape) -> None:
    model = make_model(name, shape, 10, hidden=16)
    assert model.dim == _parameter_count(name, shape, 10, 16)
    assert isinstance(model, FlatModel if name in ("mlp", "logreg") else ModuleModel)
    w = model.init(torch.Generator().manual_seed(0))
    assert w.shape == (model.dim,) and w.dtype == torch.float32
    x = torch.randn(5, math.prod(shape))
    assert model.logits(w, x).shape == (5, 10)
    if name == "resnet20" and shape[0] == 3:
        assert 260_000 < model.dim < 280_000  # "0.27M parameters for 10 classes"


def test_make_model_refuses_images_it_cannot_take() -> None:
    with pytest.raises(ValueError, match=r"cnn takes images \(C, H, W\), got examples of shape \(64,\)"):
        make_model("cnn", (64,), 10)
    with pytest.raises(ValueError, match="divisible by 4, got 6x6"):
        make_model("cnn", (1, 6, 6), 10)
    with pytest.raises(ValueError, match="unknown model='vgg'"):
        make_model("vgg", (1, 8, 8), 10)


def test_module_model_refuses_batch_norm_and_non_modules() -> None:
    with pytest.raises(ValueError, match=r"buffers \(1\.running_mean, .*use nn\.GroupNorm or nn\.LayerNorm"):
        ModuleModel(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)), (1, 8, 8))
    with pytest.raises(TypeError, match="expected a torch.nn.Module, got function"):
        ModuleModel(lambda x: x, (1, 8, 8))
    with pytest.raises(ValueError, match="the module has no parameters"):
        ModuleModel(nn.ReLU(), (4,))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_init_repeats_with_the_seed(name) -> None:
    model = make_model(name, (1, 8, 8), 10)
    a = model.init(torch.Generator().manual_seed(5))
    b = model.init(torch.Generator().manual_seed(5))
    c = model.init(torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # The global generator neither feeds nor is moved by the initialisation.
    state = torch.random.get_rng_state()
    torch.manual_seed(123)
    assert torch.equal(model.init(torch.Generator().manual_seed(5)), a)
    torch.random.set_rng_state(state)


def test_init_without_reinitialising_returns_the_modules_own_parameters() -> None:
    net = nn.Linear(3, 2)
    with torch.no_grad():
        net.weight.copy_(torch.arange(6.0).view(2, 3))
        net.bias.copy_(torch.tensor([-1.0, -2.0]))
    w = ModuleModel(net, (3,), reinitialize=False).init(torch.Generator().manual_seed(0))
    assert torch.equal(w, torch.tensor([0.0, 1, 2, 3, 4, 5, -1, -2]))
    assert torch.equal(net.weight, torch.arange(6.0).view(2, 3))  # left as it was
    reset = ModuleModel(net, (3,)).init(torch.Generator().manual_seed(0))
    assert not torch.equal(reset, w)


def test_module_and_flat_paths_give_the_same_gradients() -> None:
    flat = make_model("mlp", (1, 8, 8), 10, hidden=16)
    net = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    module = ModuleModel(net, input_shape=(64,))
    assert module.dim == flat.dim
    g = torch.Generator().manual_seed(0)
    w = flat.init(g)
    x = torch.randn(3, 5, 64, generator=g)
    y = torch.randint(0, 10, (3, 5), generator=g)
    torch.testing.assert_close(module.logits(w, x[0]), flat.logits(w, x[0]), rtol=1e-6, atol=1e-6)
    by_flat = torch.func.vmap(torch.func.grad(flat.loss), in_dims=(None, 0, 0))(w, x, y)
    by_module = torch.func.vmap(torch.func.grad(module.loss), in_dims=(None, 0, 0))(w, x, y)
    assert by_flat.shape == by_module.shape == (3, flat.dim) and by_module.dtype == torch.float32
    torch.testing.assert_close(by_module, by_flat, rtol=1e-6, atol=1e-7)
    # Plain autograd on the same network, its parameters loaded from w.
    nn.utils.vector_to_parameters(w, net.parameters())
    for k in range(3):
        net.zero_grad()
        F.cross_entropy(net(x[k]), y[k]).backward()
        want = nn.utils.parameters_to_vector([p.grad for p in net.parameters()])
        torch.testing.assert_close(by_module[k], want, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(by_flat[k], want, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------
# Every model through every line, on digits


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def _run_line(line: str, model: str) -> tuple[dict, int]:
    """A few rounds of ``line`` with ``model`` on digits: (result, the parameter count it must report)."""
    if line == "byzantine":
        cfg = ByzantineConfig(
            agg="cm",
            attack="sign_flip",
            model=model,
            hidden=16,
            workers=5,
            byzantine=1,
            rounds=2,
            batch=4,
            eval_every=1,
        )
        return run_byzantine(cfg), make_model(model, (1, 8, 8), 10, 16).dim
    if line == "federated":
        cfg = FederatedConfig(model=model, hidden=16, clients=4, per_round=2, rounds=2, local_steps=2, batch=4)
        return run_federated(cfg), make_model(model, (1, 8, 8), 10, 16).dim
    if line == "personalized":
        # The digits task builds its classifier with make_model's default hidden width.
        cfg = PersonalizedConfig(task="digits", model=model, collaborators=2, rounds=3, batch=4, eval_every=1)
        return run_personalized(cfg), make_model(model, (1, 8, 8), 10).dim
    cfg = MaskedConfig(model=model, hidden=16, rounds=3, batch=4, eval_every=2)
    dim = sum(p.numel() for p in make_network(model, load_digits(), 16, 0).parameters())
    return run_masked(cfg), dim


LINE_MODELS = [
    (line, model)
    for line in ("byzantine", "federated", "personalized", "masked")
    for model in MODELS
    if not (line == "masked" and model == "logreg")
]


@pytest.mark.parametrize(("line", "model"), LINE_MODELS)
def test_every_model_runs_through_every_line(line, model) -> None:
    result, dim = _run_line(line, model)
    assert result["dim"] == dim
    assert result["device"] == "cpu"
    assert result["config"]["model"] == model
    curve = result["curve"]
    assert curve
    for p in curve:
        if line in ("byzantine", "federated"):
            assert _finite(p["test_loss"], p["train_loss"]) and 0 <= p["test_accuracy"] <= 1
        elif line == "personalized":
            assert _finite(p["error"]) and 0 <= p["accuracy"] <= 1
        else:
            assert 0 <= p["full_accuracy"] <= 1 and 0 <= p["core_accuracy"] <= 1
    if line == "masked":
        assert 0 < result["core_dim"] < result["dim"]


def test_masked_refuses_logistic_regression() -> None:
    with pytest.raises(ValueError, match="masked: unknown model='logreg'; choose from mlp, cnn, resnet20"):
        MaskedConfig(model="logreg").check()


def _small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)
    )


def test_a_users_module_runs_through_the_byzantine_and_federated_lines() -> None:
    model = ModuleModel(_small_net(), input_shape=(1, 8, 8), name="mine")
    assert model.dim == 4 * 9 + 4 + 4 + 4 + 256 * 10 + 10
    byz = run_byzantine(ByzantineConfig(agg="tm", workers=5, byzantine=1, rounds=2, batch=4), model=model)
    fed = run_federated(FederatedConfig(clients=4, per_round=2, rounds=2, local_steps=2, batch=4), model=model)
    for result in (byz, fed):
        assert result["dim"] == model.dim
        assert all(_finite(p["test_loss"], p["train_loss"]) for p in result["curve"])


def test_a_users_module_runs_through_the_personalized_and_masked_lines() -> None:
    model = ModuleModel(_small_net(), input_shape=(1, 8, 8), name="mine")
    per = run_personalized(PersonalizedConfig(task="digits", collaborators=2, rounds=3, batch=4), model=model)
    assert per["dim"] == model.dim and all(_finite(p["error"]) for p in per["curve"])
    masked = run_masked(MaskedConfig(rounds=3, eval_every=3, batch=4), model=model)
    assert masked["dim"] == model.dim and 0 < masked["core_dim"] < model.dim
    with pytest.raises(ValueError, match="quadratic task has no model or data set"):
        run_personalized(PersonalizedConfig(task="quadratic", rounds=3), model=model)


def test_byzantine_run_on_a_data_set_passed_in(tmp_path) -> None:
    _write_idx_set(tmp_path, "mnist", n_train=40, n_test=12)
    data = load_data(f"mnist:{tmp_path}")
    cfg = ByzantineConfig(agg="cm", model="cnn", workers=5, byzantine=1, rounds=2, batch=4, eval_every=1, root_size=8)
    result = run_byzantine(cfg, data=data)
    assert result["dim"] == make_model("cnn", (1, 28, 28), 10).dim == _parameter_count("cnn", (1, 28, 28), 10, 64)
    assert all(_finite(p["test_loss"], p["train_loss"]) for p in result["curve"])
    # 12 test examples: every accuracy is a multiple of 1/12.
    assert all(abs(p["test_accuracy"] * 12 - round(p["test_accuracy"] * 12)) < 1e-5 for p in result["curve"])
    # The passed data set, not the config's digits, bounds the workers: below digits' 1400 ...
    with pytest.raises(ValueError, match="byzantine: workers must be <= 40, got workers=50"):
        run_byzantine(ByzantineConfig(model="cnn", workers=50, byzantine=1, rounds=1, root_size=8), data=data)


def test_a_data_set_passed_in_bounds_the_counts_above_digits_size(tmp_path) -> None:
    # ... and above them: 1500 workers or clients are more than digits holds, not more than this set.
    _write_idx_set(tmp_path, "mnist", n_train=1600, n_test=10)
    data = load_data(f"mnist:{tmp_path}")
    byz = run_byzantine(
        ByzantineConfig(agg="mean", model="logreg", workers=1500, byzantine=0, rounds=1, batch=1), data=data
    )
    fed = run_federated(FederatedConfig(model="logreg", clients=1500, per_round=2, rounds=1, batch=1), data=data)
    assert byz["dim"] == fed["dim"] == 7850


def test_root_size_binds_only_the_rule_that_uses_it(tmp_path) -> None:
    _write_idx_set(tmp_path, "mnist", n_train=40, n_test=12)
    data = load_data(f"mnist:{tmp_path}")
    cfg = ByzantineConfig(agg="cm", model="logreg", workers=5, byzantine=1, rounds=1, batch=4)
    assert run_byzantine(cfg, data=data)["dim"] == 7850


def test_a_seed_repeats_a_cnn_run() -> None:
    cfg = ByzantineConfig(agg="cc", attack="alie", model="cnn", workers=5, byzantine=1, rounds=3, batch=4, eval_every=1)
    first, again = run_byzantine(cfg), run_byzantine(cfg)
    assert first["curve"] == again["curve"]
    other = run_byzantine(ByzantineConfig(**{**first["config"], "seed": 1}))
    assert other["curve"] != first["curve"]


# ---------------------------------------------------------------------------
# The command line: presets and data folders


def test_preset_refuses_data_of_another_kind(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "byzantine", "--preset", "icml21-cifar10", "--rounds", "1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "preset icml21-cifar10 trains on cifar10: give --data cifar10:DIR" in err
    assert "got --data digits" in err


def test_data_folder_without_its_files_exits_2_naming_the_file(tmp_path, capsys) -> None:
    for argv in (["--data", f"mnist:{tmp_path}"], ["--preset", "bucketing-mnist", "--data", f"mnist:{tmp_path}"]):
        with pytest.raises(SystemExit) as info:
            main(["train", "byzantine", *argv, "--rounds", "1", "--json", str(tmp_path / "r.json")])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "no train-images-idx3-ubyte (or train-images-idx3-ubyte.gz) in" in err
        assert str(tmp_path) in err
    assert not (tmp_path / "r.json").exists()


def test_preset_runs_end_to_end_on_generated_files(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib", reason="the train command plots with matplotlib")
    folder = tmp_path / "data"
    _write_idx_set(folder / "MNIST" / "raw", "mnist", n_train=200, n_test=40, gz=True)
    common = ["--data", f"mnist:{folder}", "--rounds", "2", "--eval-every", "1"]
    out = tmp_path / "r.json"
    argv = ["train", "byzantine", "--preset", "bucketing-mnist", *common, "--json", str(out), "--plot"]
    assert main([*argv, str(tmp_path / "r.png")]) == 0
    result = json.loads(out.read_text())
    config = result["config"]
    want = {"workers": 25, "byzantine": 5, "bucketing": 2, "lr": 0.01, "model": "cnn", "split": "sorted", "batch": 32}
    assert {k: config[k] for k in want} == want
    assert config["momentum"] == 0.0 and config["cc_tau"] == 10.0 and config["gm_iters"] == 8
    assert config["rounds"] == 2 and config["eval_every"] == 1  # given on the command line
    assert config["agg"] == "cc" and config["data"] == f"mnist:{folder}"  # what the preset leaves alone
    assert result["dim"] == make_model("cnn", (1, 28, 28), 10).dim
    assert [p["round"] for p in result["curve"]] == [1, 2]
    assert (tmp_path / "r.png").stat().st_size > 1000

    # Options given on the command line win over the preset's (fewer workers keep the run short).
    override = ["--lr", "0.02", "--workers", "10", "--byzantine", "2", "--batch", "4"]
    assert main([*argv, str(tmp_path / "r.png"), *override]) == 0
    config = json.loads(out.read_text())["config"]
    assert (config["lr"], config["workers"], config["byzantine"], config["batch"]) == (0.02, 10, 2, 4)
    assert (config["bucketing"], config["model"], config["split"]) == (2, "cnn", "sorted")
    capsys.readouterr()


# ---------------------------------------------------------------------------
# Devices


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("config", [ByzantineConfig, FederatedConfig, PersonalizedConfig, MaskedConfig])
def test_device_cuda_is_refused_without_a_gpu(config) -> None:
    with pytest.raises(ValueError, match="device cuda needs a GPU and robustagg's CUDA kernels, but no CUDA GPU"):
        config(device="cuda").check()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_device_cuda_option_exits_2_without_a_gpu(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "masked", "--device", "cuda", "--json", str(tmp_path / "r.json")])
    assert info.value.code == 2
    assert "masked: device cuda needs a GPU" in capsys.readouterr().err


@pytest.mark.cuda
def test_byzantine_cnn_on_cuda_stays_there_and_repeats() -> None:
    cfg = ByzantineConfig(
        agg="cc", attack="alie", model="cnn", workers=5, byzantine=1, rounds=3, batch=4, eval_every=1, device="cuda"
    )
    first, again = run_byzantine(cfg), run_byzantine(cfg)
    assert first["device"].startswith("cuda")
    assert first["curve"] == again["curve"]
    assert all(_finite(p["test_loss"], p["train_loss"]) for p in first["curve"])


@pytest.mark.cuda
def test_the_other_lines_finish_on_cuda() -> None:
    fed = run_federated(
        FederatedConfig(model="cnn", clients=4, per_round=2, rounds=2, local_steps=2, batch=4, device="cuda")
    )
    per = run_personalized(
        PersonalizedConfig(task="digits", model="cnn", collaborators=2, rounds=3, batch=4, device="cuda")
    )
    quad = run_personalized(PersonalizedConfig(task="quadratic", rounds=20, device="cuda"))
    msk = run_masked(MaskedConfig(model="resnet20", rounds=3, batch=4, eval_every=2, device="cuda"))
    for result in (fed, per, quad, msk):
        assert result["device"].startswith("cuda")
    assert all(_finite(p["test_loss"], p["train_loss"]) for p in fed["curve"])
    assert all(_finite(p["error"]) for p in per["curve"] + quad["curve"])
    assert 0 <= msk["final_full_accuracy"] <= 1 and 0 <= msk["final_core_accuracy"] <= 1


@pytest.mark.cuda
@pytest.mark.parametrize(
    ("agg", "attack", "bucketing"),
    [
        ("dnc", "gaussian", 0),
        ("signguard", "label_flip", 0),
        ("fltrust", "ipm", 0),
        ("krum", "alie", 2),
        ("cc", "minmax", 2),
        ("mda", "sign_flip", 0),
    ],
)
def test_rules_with_generators_and_host_decisions_run_on_cuda(agg, attack, bucketing) -> None:
    # DnC and SignGuard draw coordinate samples on the CPU, bucketing and the Gaussian attack on the GPU.
    cfg = ByzantineConfig(
        agg=agg,
        attack=attack,
        bucketing=bucketing,
        model="cnn",
        workers=10,
        byzantine=2,
        rounds=2,
        batch=4,
        eval_every=1,
        root_size=16,
        device="cuda",
    )
    first, again = run_byzantine(cfg), run_byzantine(cfg)
    assert first["curve"] == again["curve"]
    assert all(_finite(p["test_loss"], p["train_loss"]) for p in first["curve"])


@pytest.mark.cuda
def test_augmentation_on_cuda_cuts_padded_windows() -> None:
    x, data = _cifar_shaped(8)
    out = augment(x.cuda(), data, torch.Generator("cuda").manual_seed(3))
    assert out.shape == x.shape and out.device.type == "cuda"
    for i in range(len(x)):
        image = out[i].view(3, 32, 32).cpu()
        assert sum(torch.equal(w, image) for *_, w in _windows(x[i].view(3, 32, 32), data.fill)) == 1


@pytest.mark.cuda
def test_device_cuda_option_runs_on_cuda(tmp_path) -> None:
    pytest.importorskip("matplotlib", reason="the train command plots with matplotlib")
    out = tmp_path / "r.json"
    argv = ["train", "byzantine", "--device", "cuda", "--model", "cnn", "--workers", "5", "--byzantine", "1"]
    assert main([*argv, "--rounds", "2", "--batch", "4", "--json", str(out), "--plot", str(tmp_path / "r.png")]) == 0
    result = json.loads(out.read_text())
    assert result["device"].startswith("cuda") and result["config"]["device"] == "cuda"


# ---------------------------------------------------------------------------
# The width core of a residual network


@pytest.mark.parametrize("block", [3, 6])  # the first blocks of the 32- and 64-channel stages
def test_width_core_keeps_a_residual_sums_channels_aligned(block) -> None:
    core = width_core(ResNet20(3, 10), 0.25)
    prefix = f"blocks.{block}"
    shortcut, conv1, conv2 = (core[f"{prefix}.{k}.weight"] for k in ("shortcut.0", "conv1", "conv2"))
    width = conv2.shape[0]
    kept = torch.arange(width) < round(0.25 * width)
    # The residual sum adds conv2's and the shortcut's outputs: the same channels on both branches.
    assert torch.equal(conv2.flatten(1).any(1), kept)
    assert torch.equal(shortcut.flatten(1).any(1), kept)
    # Both branches read the block's input: the kept outputs of the previous block.
    kept_in = core[f"blocks.{block - 1}.conv2.weight"].flatten(1).any(1)
    assert torch.equal(shortcut.any(0).flatten(1).any(1), kept_in)
    assert torch.equal(conv1.any(0).flatten(1).any(1), kept_in)
    # Each mask is the rectangle of its kept outputs and inputs.
    for mask in (shortcut, conv1, conv2):
        rows, cols = mask.flatten(1).any(1), mask.any(0).flatten(1).any(1)
        assert torch.equal(mask, (rows[:, None] & cols[None, :])[:, :, None, None].expand_as(mask))
    # The next block reads the sum.
    assert torch.equal(core[f"blocks.{block + 1}.conv1.weight"].any(0).flatten(1).any(1), kept)
    assert torch.equal(core["fc.weight"].any(1), torch.ones(10, dtype=torch.bool))  # every class kept


def test_masked_resnet20_trains_a_smaller_core() -> None:
    result = run_masked(MaskedConfig(model="resnet20", training="alternating", rounds=4, batch=4, eval_every=2))
    assert 0 < result["core_dim"] < result["dim"] == _parameter_count("resnet20", (1, 8, 8), 10, 0)
    assert result["steps"] == {"core": 2, "full": 2}


# ---------------------------------------------------------------------------
# bench/workloads.py, which the GPU check runs: its configurations hold and its table adds up


def _workloads_bench():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "workloads.py")
    spec = importlib.util.spec_from_file_location("workloads_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_workloads_bench_configurations_are_valid_and_its_rows_add_up() -> None:
    bench = _workloads_bench()
    for _label, line, options in bench.digits_suite("cpu") + bench.icml21_suite("cpu", 30):
        bench.RUNS[line][0](**options).check()
    icml21 = bench.icml21_suite("cpu", 30)
    assert {o["model"] for _, _, o in icml21} == {"resnet20"} and {o["workers"] for _, _, o in icml21} == {25}
    row = bench.measure("tiny", "byzantine", {"rounds": 4, "eval_every": 4, "workers": 5, "byzantine": 1})
    assert row["rounds_per_second"] == pytest.approx(4 / row["wall_seconds"])
    row["rounds_per_second_range"] = [row["rounds_per_second"]] * 2
    table = bench.markdown([row], "cmd", "machine")
    cells = table.strip().splitlines()[-1].split("|")
    split_ms = 1e3 * sum(row["seconds_per_round"].values())
    shown = sum(float(c.split()[0]) for c in cells[5:9])  # gradients, aggregation, other phases, outside
    assert shown == pytest.approx(max(split_ms, 1e3 * row["wall_seconds"] / 4), abs=0.02)
