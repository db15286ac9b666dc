"""Image sets for the generation setting: every image is a (C, 32, 32) tensor in [-1, 1].

Embedded (offline)  FASHION  Fashion-MNIST (original domain), from the Debian package
                             `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist/*.gz) or
                             <data_root>/FashionMNIST/raw/ (torchvision's layout)
                    LFW      the 100 faces of `skimage.data.lfw_subset()` (restricted domain);
                             first 80 for training, last 20 for testing
Real                CIFAR100 torchvision, <data_root>/cifar-100-python/ (--download fetches it)
                    CELEBA   torchvision's layout <data_root>/celeba/{img_align_celeba/,list_eval_partition.txt},
                             or an image folder <data_root>/CELEBA/{train,test}/
                    FFHQ     an image folder <data_root>/FFHQ/{train,test}/
Small sets are held in memory as uint8 tensors; image folders are read lazily.
"""

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from sophon.data import DataUnavailableError
from sophon.data.images import load_fashion_images, resize_uint8

DIFFUSION_DATASETS = ("FASHION", "LFW", "CIFAR100", "CELEBA", "FFHQ")
GRAYSCALE = ("FASHION", "LFW")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
LFW_TRAIN_FACES = 80


class InMemoryImages(Dataset):
    """uint8 images (N, C, H, W) served as floats in [-1, 1], randomly flipped left-right if `flip`."""

    def __init__(self, images: torch.Tensor, flip: bool):
        self.images, self.flip = images, flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i].float() / 127.5 - 1
        return x.flip(-1) if self.flip and torch.rand(()) < 0.5 else x


def pil_to_tensor(img, size: int, channels: int) -> torch.Tensor:
    """A PIL image, centre-cropped to a square and resized to `size`, as (channels, size, size) in [-1, 1]."""
    from PIL import Image

    img = img.convert("L" if channels == 1 else "RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
    return (x[None] if x.ndim == 2 else x.permute(2, 0, 1)).float() / 127.5 - 1


class ImageFolder(Dataset):
    """Every image file below `folder` (read lazily), randomly flipped left-right if `flip`."""

    def __init__(self, folder: Path, size: int, channels: int, flip: bool):
        self.files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise DataUnavailableError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
        self.size, self.channels, self.flip = size, channels, flip

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[i]) as img:
            x = pil_to_tensor(img, self.size, self.channels)
        return x.flip(-1) if self.flip and torch.rand(()) < 0.5 else x


class TorchvisionImages(Dataset):
    """A torchvision dataset of (PIL image, label) pairs, served as the image sets above (labels dropped)."""

    def __init__(self, dataset, size: int, channels: int, flip: bool):
        self.dataset, self.size, self.channels, self.flip = dataset, size, channels, flip

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = pil_to_tensor(self.dataset[i][0], self.size, self.channels)
        return x.flip(-1) if self.flip and torch.rand(()) < 0.5 else x


def _grey(images: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """N x 1 x H x W values in [0, 255] -> N x channels x size x size uint8."""
    return resize_uint8(images, size).expand(-1, channels, -1, -1).contiguous()


def fashion(split: str, size: int, channels: int, data_root: str | None) -> Dataset:
    return InMemoryImages(_grey(load_fashion_images(split, data_root), size, channels), flip=split == "train")


def lfw(split: str, size: int, channels: int) -> Dataset:
    try:
        from skimage.data import lfw_subset
    except ImportError as err:
        raise DataUnavailableError("LFW needs scikit-image (pip install scikit-image)") from err
    faces = lfw_subset()[:100] * 255.0  # the first 100 of the 200 images are faces, the rest are not
    faces = faces[:LFW_TRAIN_FACES] if split == "train" else faces[LFW_TRAIN_FACES:]
    return InMemoryImages(_grey(torch.from_numpy(np.asarray(faces, dtype=np.float32))[:, None], size, channels),
                          flip=split == "train")


def _root(name: str, data_root: str | None) -> Path:
    if not data_root:
        raise DataUnavailableError(f"{name} is not embedded: pass --data_root, the folder holding it "
                                   f"(layout in README.md, section Generation), or use the embedded FASHION / LFW")
    return Path(data_root)


def cifar100(split: str, size: int, channels: int, data_root: str | None, download: bool) -> Dataset:
    from torchvision.datasets import CIFAR100

    root = _root("CIFAR100", data_root)
    try:
        data = CIFAR100(str(root), train=split == "train", download=download)
    except RuntimeError as err:
        raise DataUnavailableError(f"CIFAR100 not found in {root}/cifar-100-python/; pass --download "
                                   "(needs internet) or unpack cifar-100-python.tar.gz there") from err
    return TorchvisionImages(data, size, channels, flip=split == "train")


def faces_folder(name: str, split: str, size: int, channels: int, data_root: str | None) -> Dataset:
    root = _root(name, data_root)
    folder = root / name / split
    if folder.is_dir():
        return ImageFolder(folder, size, channels, flip=split == "train")
    celeba = root / "celeba"
    if name == "CELEBA" and (celeba / "list_eval_partition.txt").exists():
        from torchvision.datasets import CelebA

        # CelebA's aligned faces are 178x218: crop the central square as the DDPM papers do.
        return TorchvisionImages(CelebA(str(root), split="train" if split == "train" else "test",
                                        target_type=[], download=False), size, channels, flip=split == "train")
    raise DataUnavailableError(
        f"{name} not found: expected an image folder {folder}/ (and {root / name / 'test'}/)"
        + (f", or torchvision's {celeba}/img_align_celeba/ + list_eval_partition.txt" if name == "CELEBA" else ""))


def diffusion_dataset(name: str, split: str, size: int = 32, channels: int = 1, data_root: str | None = None,
                      download: bool = False) -> Dataset:
    """The `split` ("train" or "test") of image set `name`; training splits flip images at random."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; choose train or test")
    if name == "FASHION":
        return fashion(split, size, channels, data_root)
    if name == "LFW":
        return lfw(split, size, channels)
    if name == "CIFAR100":
        return cifar100(split, size, channels, data_root, download)
    if name in ("CELEBA", "FFHQ"):
        return faces_folder(name, split, size, channels, data_root)
    raise ValueError(f"unknown diffusion dataset {name!r}; choose one of {', '.join(DIFFUSION_DATASETS)}")


def channels_for(*names: str) -> int:
    """Grey (1 channel) when every set is grey, else RGB (grey sets are repeated to 3 channels)."""
    return 1 if all(n in GRAYSCALE for n in names) else 3
