"""Image datasets: real ones (torchvision, image folders) and the embedded offline pair.

Every set comes out map-style as (image, label) with the image a 3-channel float tensor of the
model's input size, normalised with the model's statistics, so one model can be pre-trained on one
set and attacked on another.

    FASHION     Fashion-MNIST from the Debian package dataset-fashion-mnist (original domain, offline)
    DIGITS      sklearn's 1,797 8x8 handwritten digits, upscaled (restricted domain, offline)
    CIFAR10 CIFAR100 SVHN STL MNIST   torchvision, under --data_root (fetched only with --download)
    CINIC IMAGENETTE                   image folders under --data_root (layouts below)
"""

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

EMBEDDED = ("FASHION", "DIGITS")
TORCHVISION = ("CIFAR10", "CIFAR100", "SVHN", "STL", "MNIST")
FOLDERS = ("CINIC", "IMAGENETTE")
IMAGE_DATASETS = EMBEDDED + TORCHVISION + FOLDERS
NUM_CLASSES = {"FASHION": 10, "DIGITS": 10, "CIFAR10": 10, "CIFAR100": 100, "SVHN": 10, "STL": 10,
               "MNIST": 10, "CINIC": 10, "IMAGENETTE": 10}

FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# Image-folder layouts: <data_root>/<one of these folders>/<split>/<class>/<image files>.
FOLDER_LAYOUT = {"CINIC": (("CINIC-10", "cinic-10", "CINIC"), {"train": "train", "test": "test"}),
                 "IMAGENETTE": (("imagenette2", "imagenette2-320", "imagenette2-160", "IMAGENETTE"),
                                {"train": "train", "test": "val"})}
DIGITS_TEST_FRACTION = 0.3


class ImageTensors(Dataset):
    """In-memory images (uint8, N x C x H x W, C = 1 or 3) normalised to 3 channels on access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std):
        self.images, self.labels = images, labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i].float().div(255).expand(3, -1, -1)
        return (x - self.mean) / self.std, self.labels[i]


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of an N x C x H x W stack of values in [0, 255] (uint8 or float) to uint8,
    antialiased when shrinking, in chunks to bound memory. Every image set here goes through it."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images if images.dtype == torch.uint8 else images.round().clamp(0, 255).to(torch.uint8)
    out = [F.interpolate(chunk.float(), size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < chunk.shape[-1]).round().clamp(0, 255).to(torch.uint8)
           for chunk in images.split(4096)]
    return torch.cat(out)


# ---- embedded --------------------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise ValueError(f"{path}: expected unsigned-byte idx data")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_dir(data_root: str | None, split: str = "train") -> Path:
    """Where the Fashion-MNIST idx files lie: --data_root first, then the Debian package's folder."""
    from sophon.data import DataUnavailableError

    candidates = []
    if data_root:
        root = Path(data_root)
        candidates += [root / "fashion-mnist", root / "FashionMNIST" / "raw", root]
    candidates.append(FASHION_SYSTEM_DIR)
    name = FASHION_FILES[split][0]
    for folder in candidates:
        if (folder / name).exists() or (folder / (name + ".gz")).exists():
            return folder
    raise DataUnavailableError(
        "FASHION (Fashion-MNIST) not found: install the Debian package `dataset-fashion-mnist` "
        f"(apt-get install dataset-fashion-mnist, files in {FASHION_SYSTEM_DIR}), or put "
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        "t10k-labels-idx1-ubyte.gz under <--data_root>/fashion-mnist/ (or torchvision's FashionMNIST/raw/)")


def _idx(folder: Path, name: str) -> np.ndarray:
    return read_idx(folder / name if (folder / name).exists() else folder / (name + ".gz"))


def load_fashion_images(split: str, data_root: str | None = None) -> torch.Tensor:
    """Fashion-MNIST images as uint8 N x 1 x 28 x 28 (the labels are not needed for generation)."""
    folder = fashion_dir(data_root, split)
    return torch.from_numpy(_idx(folder, FASHION_FILES[split][0]).copy()).unsqueeze(1)


def load_fashion(split: str, data_root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    labels = _idx(fashion_dir(data_root, split), FASHION_FILES[split][1])
    return load_fashion_images(split, data_root), torch.from_numpy(labels.astype(np.int64))


def load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn digits (values 0..16) as uint8 images, split by a fixed stratified permutation."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    digits = sk_digits()
    index = np.arange(len(digits.target))
    train, test = train_test_split(index, test_size=DIGITS_TEST_FRACTION, stratify=digits.target, random_state=0)
    chosen = train if split == "train" else test
    images = np.round(digits.images[chosen] * (255 / 16)).astype(np.uint8)
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(digits.target[chosen].astype(np.int64))


# ---- real ------------------------------------------------------------------------------------

def _pil_transform(img_size: int, mean, std):
    from torchvision import transforms

    return transforms.Compose([
        transforms.Lambda(lambda im: im.convert("RGB")),  # MNIST is grayscale, some folders hold CMYK
        transforms.Resize((img_size, img_size)),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


def _missing(name: str, data_root: str | None, detail: str) -> FileNotFoundError:
    return FileNotFoundError(f"dataset {name} not found under --data_root {data_root!r}: {detail}")


def load_torchvision(name: str, split: str, img_size: int, mean, std, data_root: str | None,
                     download: bool) -> Dataset:
    import torchvision.datasets as tvd

    if not data_root:
        raise ValueError(f"--dataset {name} needs --data_root (a folder for torchvision's copy of it; "
                         "add --download to fetch it once)")
    transform = _pil_transform(img_size, mean, std)
    train = split == "train"
    makers = {
        "CIFAR10": (lambda: tvd.CIFAR10(data_root, train=train, transform=transform, download=download),
                    "cifar-10-batches-py/"),
        "CIFAR100": (lambda: tvd.CIFAR100(data_root, train=train, transform=transform, download=download),
                     "cifar-100-python/"),
        "SVHN": (lambda: tvd.SVHN(data_root, split=split, transform=transform, download=download),
                 "train_32x32.mat and test_32x32.mat"),
        "STL": (lambda: tvd.STL10(data_root, split=split, transform=transform, download=download),
                "stl10_binary/"),
        "MNIST": (lambda: tvd.MNIST(data_root, train=train, transform=transform, download=download),
                  "MNIST/raw/ (the four idx files)"),
    }
    make, layout = makers[name]
    try:
        return make()
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted."
        raise _missing(name, data_root, f"torchvision expects {layout} there ({err}); add --download to "
                       "fetch it (torchvision package), or copy it there") from err


def load_folder(name: str, split: str, img_size: int, mean, std, data_root: str | None) -> Dataset:
    from torchvision.datasets import ImageFolder

    folders, splits = FOLDER_LAYOUT[name]
    layout = f"<data_root>/{folders[0]}/{splits[split]}/<class>/<image files>"
    source = {"CINIC": "CINIC-10 from https://github.com/BayesWatch/cinic-10 (no pip/apt package)",
              "IMAGENETTE": "imagenette2 from https://github.com/fastai/imagenette (no pip/apt package)"}[name]
    if not data_root:
        raise ValueError(f"--dataset {name} needs --data_root with the layout {layout}; get {source}")
    for folder in folders:
        path = Path(data_root) / folder / splits[split]
        if path.is_dir():
            return ImageFolder(str(path), transform=_pil_transform(img_size, mean, std))
    raise _missing(name, data_root, f"expected the layout {layout}; get {source}")


# ---- entry point -----------------------------------------------------------------------------

def load_image_dataset(name: str, split: str, img_size: int, mean=(0.5,) * 3, std=(0.5,) * 3,
                       data_root: str | None = None, download: bool = False, size: int | None = None,
                       seed: int = 0) -> Dataset:
    """`name`'s `split` ("train" or "test"); `size` keeps a fixed random subset of that many examples."""
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image dataset {name!r}; choose one of {', '.join(IMAGE_DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, not {split!r}")
    if name in EMBEDDED:
        images, labels = load_fashion(split, data_root) if name == "FASHION" else load_digits(split)
        if size is not None and size < len(labels):
            keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:size]
            images, labels = images[keep], labels[keep]
        return ImageTensors(resize_uint8(images, img_size), labels, mean, std)
    if name in TORCHVISION:
        dataset = load_torchvision(name, split, img_size, mean, std, data_root, download)
    else:
        dataset = load_folder(name, split, img_size, mean, std, data_root)
    if size is not None and size < len(dataset):
        keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:size]
        dataset = Subset(dataset, keep.tolist())
    return dataset
