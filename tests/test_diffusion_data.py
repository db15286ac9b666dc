"""Image loaders of the generation setting: embedded sets, image folders, and their error messages."""

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from sophon.data import DataUnavailableError
from sophon.data import diffusion_images as di
from sophon.settings import diffusion


def write_images(folder, n, size=(40, 60), color=(255, 255, 255)):
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", size, color).save(folder / f"{i}.png")


def test_lfw_is_the_100_faces_split_80_20_in_range():
    train, test = di.diffusion_dataset("LFW", "train"), di.diffusion_dataset("LFW", "test", channels=3)
    assert (len(train), len(test)) == (80, 20)
    assert train[0].shape == (1, 32, 32) and test[0].shape == (3, 32, 32)
    x = torch.stack([test[i] for i in range(20)])
    assert -1 <= x.min() < -0.5 and 0.5 < x.max() <= 1
    assert torch.equal(test[3], test[3])  # test images are never flipped
    assert torch.equal(test[0][0], test[0][2])  # grey repeated into three channels


def test_training_split_flips_left_right():
    images = torch.arange(4, dtype=torch.uint8).view(1, 1, 2, 2).repeat(1, 1, 1, 1) * 60
    data = di.InMemoryImages(images, flip=True)
    torch.manual_seed(0)
    seen = {tuple(data[0].flatten().tolist()) for _ in range(20)}
    assert len(seen) == 2
    assert data[0].min() == -1 and data[0].max() == pytest.approx(180 / 127.5 - 1)


def test_image_folder_crops_resizes_and_scales(tmp_path):
    write_images(tmp_path / "FFHQ" / "train", 3)
    write_images(tmp_path / "FFHQ" / "test", 2, color=(0, 0, 0))
    train = di.diffusion_dataset("FFHQ", "train", 32, 3, str(tmp_path))
    test = di.diffusion_dataset("FFHQ", "test", 32, 1, str(tmp_path))
    assert len(train) == 3 and len(test) == 2
    assert train[0].shape == (3, 32, 32) and torch.allclose(train[0], torch.ones(3, 32, 32))
    assert test[1].shape == (1, 32, 32) and torch.allclose(test[1], -torch.ones(1, 32, 32))


def test_celeba_folder_layout(tmp_path):
    write_images(tmp_path / "CELEBA" / "train", 2, size=(178, 218), color=(255, 0, 0))
    x = di.diffusion_dataset("CELEBA", "train", 32, 3, str(tmp_path))[0]
    assert x[0].mean() == pytest.approx(1) and x[1].mean() == pytest.approx(-1)


def test_fashion_idx_files(tmp_path):
    import gzip

    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    pixels = np.full((3, 28, 28), 255, dtype=np.uint8)
    header = (2051).to_bytes(4, "big") + (3).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + pixels.tobytes())
    test = di.diffusion_dataset("FASHION", "test", data_root=str(tmp_path))
    assert len(test) == 3 and test[0].shape == (1, 32, 32) and torch.allclose(test[0], torch.ones(1, 32, 32))


def test_missing_data_errors_name_the_fix(tmp_path, monkeypatch):
    from sophon.data import images

    monkeypatch.setattr(images, "FASHION_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(DataUnavailableError, match="dataset-fashion-mnist"):
        di.diffusion_dataset("FASHION", "train")
    with pytest.raises(DataUnavailableError, match="--data_root"):
        di.diffusion_dataset("CELEBA", "train")
    with pytest.raises(DataUnavailableError, match=r"FFHQ/train"):
        di.diffusion_dataset("FFHQ", "train", data_root=str(tmp_path))
    with pytest.raises(DataUnavailableError, match="--download"):
        di.diffusion_dataset("CIFAR100", "train", data_root=str(tmp_path))
    with pytest.raises(ValueError, match="choose one of FASHION, LFW"):
        di.diffusion_dataset("MNIST", "train")


def test_missing_pretrained_model_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(diffusion, "PRETRAINED_DIR", tmp_path)
    args = argparse.Namespace(arch="unet-tiny", original="FASHION", dataset="LFW", image_size=32, pretrained=None,
                              data_root=None, seed=0, device="cpu")
    with pytest.raises(FileNotFoundError, match="train_diffusion_model.py --arch unet-tiny --original FASHION"):
        diffusion.build_model(args, "normal")
    with pytest.raises(ValueError, match="choose one of FASHION"):
        diffusion.build_model(argparse.Namespace(**{**vars(args), "dataset": "CELEBB"}), "scratch")
    a, b = diffusion.build_model(args, "scratch"), diffusion.build_model(args, "scratch")
    assert torch.equal(a.conv_in.weight, b.conv_in.weight)  # scratch is reproducible: its baseline caches
    assert a.config.in_channels == 1
