"""Image datasets: embedded sets, the torchvision and image-folder loaders on generated files, errors."""

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from sophon.data import images
from sophon.data.images import load_image_dataset


def write_idx(path, array, gz=False):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def fake_mnist(folder, n, gz, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.arange(n) % 10
    pictures = rng.integers(0, 256, size=(n, 28, 28))
    for prefix in ("train", "t10k"):
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", pictures, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return pictures, labels


def test_digits_split_and_normalisation():
    train = load_image_dataset("DIGITS", "train", 16, mean=(0.5,) * 3, std=(0.5,) * 3)
    test = load_image_dataset("DIGITS", "test", 16)
    assert len(train) + len(test) == 1797 and len(test) == 540
    x, y = train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= int(y) < 10
    assert x.min() >= -1 and x.max() <= 1 and torch.equal(x[0], x[2])  # grey copied to 3 channels
    few = load_image_dataset("DIGITS", "train", 16, size=50, seed=1)
    assert len(few) == 50
    assert torch.equal(few.labels, load_image_dataset("DIGITS", "train", 16, size=50, seed=1).labels)


def test_fashion_reads_idx_gz_from_data_root(tmp_path):
    pictures, labels = fake_mnist(tmp_path / "fashion-mnist", 12, gz=True)
    data = load_image_dataset("FASHION", "test", 28, mean=(0.0,) * 3, std=(1.0,) * 3, data_root=str(tmp_path))
    assert len(data) == 12
    x, y = data[3]
    assert int(y) == labels[3]
    assert torch.allclose(x[0], torch.tensor(pictures[3], dtype=torch.float32) / 255)


def test_torchvision_loader_on_generated_mnist(tmp_path):
    pictures, labels = fake_mnist(tmp_path / "MNIST" / "raw", 20, gz=False)
    data = load_image_dataset("MNIST", "train", 14, data_root=str(tmp_path))
    assert len(data) == 20
    x, y = data[5]
    assert x.shape == (3, 14, 14) and int(y) == labels[5]


def test_image_folder_loader(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n01440764", "n02102040", "n02979186"):
            folder = tmp_path / "imagenette2" / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    data = load_image_dataset("IMAGENETTE", "test", 24, data_root=str(tmp_path))  # "test" reads val/
    assert len(data) == 6 and data.classes == ["n01440764", "n02102040", "n02979186"]
    x, y = data[5]
    assert x.shape == (3, 24, 24) and y == 2


def test_missing_folder_names_flag_layout_and_source(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--data_root.*CINIC-10/train/<class>"):
        load_image_dataset("CINIC", "train", 32, data_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"--data_root.*cifar-10-batches-py.*--download"):
        load_image_dataset("CIFAR10", "train", 32, data_root=str(tmp_path))
    with pytest.raises(ValueError, match="needs --data_root"):
        load_image_dataset("SVHN", "train", 32)


def test_missing_fashion_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "FASHION_SYSTEM_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_image_dataset("FASHION", "train", 28, data_root=str(tmp_path))


def test_unknown_dataset_is_named():
    with pytest.raises(ValueError, match="unknown image dataset 'CIFAR11'.*CIFAR10"):
        load_image_dataset("CIFAR11", "train", 32)
