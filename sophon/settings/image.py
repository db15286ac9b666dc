"""Image classification setting (the SOPHON paper's main one): a classifier pre-trained on an
original domain (ImageNette in the paper, FASHION offline) is made non-fine-tunable on a restricted
domain (CIFAR-10, CINIC, SVHN, STL, MNIST; DIGITS offline).

The attacker brings a fresh head for the restricted classes (`learner`), trains everything with
cross-entropy, and is measured by test accuracy. SOPHON's suppression loss is ICE or KLU on the
learner's logits.
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from sophon import checkpoint
from sophon.config import option
from sophon.device import device_of
from sophon.data.images import IMAGE_DATASETS, NUM_CLASSES, load_image_dataset
from sophon.losses import CLASSIFICATION_LOSSES
from sophon.models.vision import (CNN_WIDTH, IMAGE_ARCHS, build_classifier, input_normalisation, load_weights,
                                  read_weights, torchvision_weights)
from sophon.task import replace_head

NAME = "image"  # the setting's name in suites and tables
ARCHS = IMAGE_ARCHS
PRETRAINED_DIR = Path(__file__).resolve().parents[2] / "classification" / "pretrained"


@dataclass
class ImageConfig:
    """image setting"""
    download: bool = option(False, "let torchvision fetch CIFAR10/SVHN/STL/MNIST")
    img_size: int = option(32, "input resolution every set is resized to", above=0)
    train_size: int | None = option(None, "restricted training examples the attacker has (a fixed random subset; "
                                          "all if unset)", above=0)
    original_size: int | None = option(None, "original-domain training subset (all if unset)", above=0)
    test_size: int | None = option(None, "test subset of both domains (all if unset)", above=0)
    cnn_width: int = option(CNN_WIDTH, "channels of the first conv of --arch cnn", above=0)


@dataclass
class ImagePretrainConfig:
    """image pre-training"""
    pretrain_epochs: int = option(3, "epochs on the original domain", above=0)
    pretrain_lr: float = option(1e-3, "Adam learning rate", above=0)
    pretrain_bs: int = option(128, "batch size", above=0)
    force: bool = option(False, "train again even if the cached model exists")


CONFIG, PRETRAIN_CONFIG = ImageConfig, ImagePretrainConfig
# The embedded pair: FASHION -> DIGITS on 2 CPU cores. Attacks: the default plain SGD at
# --finetune_lr, then Adam and SGD with momentum at their usual learning rates.
_EMBEDDED = dict(
    dataset="DIGITS", original="FASHION", train_size=300, original_size=20000, alpha=10.0, lr=1e-4, fast_lr=0.1,
    bs=64, total_loop=400, adaptation_steps=10, test_iterval=100, truly_finetune_epochs=10, finetune_lr=1e-2,
    attacks="sgd,adam:1e-3,sgd-momentum:1e-2", pretrain_epochs=4, pretrain_lr=3e-3,
)
# The paper's pair: ImageNette -> CIFAR-10 (any --dataset of IMAGE_DATASETS), 20 fine-tuning epochs.
_PAPER = dict(
    dataset="CIFAR10", original="IMAGENETTE", bs=128, total_loop=200, adaptation_steps=50, truly_finetune_epochs=20,
    finetune_bs=128, attacks="sgd,adam:1e-4,sgd-momentum:1e-3", pretrain_epochs=30,
    suite_lr_scale=0.1,  # suites around Adam 1e-4, as the paper's attacks
)
PRESETS = {
    # The simulation of the best variant measured (issue 11; 3 SOPHON seeds per loss): 100 simulated steps, the
    # attacks' whole horizon (300 digits, batch 32, 10 epochs), with the suppression gradient every 10th weighted toward
    # late ones, a closed-form linear probe (its gradient is ~100x the simulated attacker's, hence a weight below 1)
    # whose ridge head is fitted on 236 of the 300 digits with a strong penalty, and a second NTR step per iteration
    # that keeps the original domain above the guard. About 12.5 min per run on 2 cores. K = 40 held 5.7 of 9 separating
    # attacks under ICE, K = 100 8.0; the probe weight 0.08 (from 0.005) lifted KLU from 6.0 to 7.3 held, and the ridge
    # penalty 1 (from 0.1) the linear probe's P by 0.03-0.04 at every ICE seed. (Those counts are at 3 attack seeds. At
    # 10, 15 attacks separate and Adam after a FASHION phase and Adadelta at lr 10 are held by no model; ridge 3 or 10
    # gave the probe nothing more.) Every step puts θ back on default-init channel norms (--canonical_scale): without
    # it, SOPHON hid much of its protection in weight scale, which an attacker undoes for free (rescale=1 took the held
    # count from 12-13 to 5-6 of 15; docs/experiments/image-weight-scale.md). Three NTR steps per iteration (from two):
    # with the BatchNorm statistics recomputed (--recalibrate_bn), FASHION 84.9-85.8 % at six SOPHON runs against
    # 82.4-83.9 % with two (docs/experiments/image-batchnorm-statistics.md). Both ICE and KLU override it with two
    # (LOSS_PRESETS below), which hold more; --loss ice-released keeps three.
    "cnn": dict(_EMBEDDED, img_size=28, adaptation_steps=100, suppress_every=10, late_weight=1.0, probe_weight=0.08,
                probe_support=236, probe_ridge=1.0, nl_loop=3, canonical_scale=True),
    # About 40x the cnn's compute per image: fewer original examples, shorter loop and attacks.
    "res18": dict(_EMBEDDED, original_size=5000, test_size=1000, bs=32, total_loop=60, adaptation_steps=3,
                  test_iterval=30, truly_finetune_epochs=5, pretrain_epochs=3),
    "res34": dict(_PAPER),
    "res50": dict(_PAPER),
    "vgg": dict(_PAPER, pretrain_lr=1e-4),
    "caformer": dict(_PAPER, img_size=224, bs=32, finetune_bs=32, pretrain_lr=1e-4),
}


# Per suppression loss, on top of PRESETS. ICE with two NTR steps holds 16, 13, 16 of the 22 attacks that separate
# (SOPHON seeds 0-2) at 95.9-97.1 % of normal's FASHION; with three it held 11, 11, 10 at 98-99 %: the third step pulls
# θ back toward the normal model, and the momentum attackers and the linear probe find it
# (docs/experiments/image-batchnorm-statistics.md). KLU was held back by its FTS step, not its loss: at ICE's FTS step
# (alpha 10; NTR steps of beta 6.25) it held 7-11 of the 22 at five seeds; alpha 12.5 held 16, 15, 11 but left one seed
# at 94.95 % of normal; with NTR steps of beta 7.5 it keeps 95.7-97.0 % and holds 13, 14, 15
# (docs/experiments/image-klu-fts-step.md). The released code's form of ICE (--loss ice-released) was not measured with
# two steps and keeps three. ICE with NTR steps of beta 4 held 16, 11, 15 (no gain); beta 2.5 held 18 at seed 0, under
# 95 % of FASHION; the Adam attacks were held only by runs without NTR, at chance on FASHION
# (docs/experiments/image-adam-attacks.md).
LOSS_PRESETS = {"cnn": {"ice": dict(nl_loop=2), "klu": dict(nl_loop=2, alpha=12.5, beta=7.5)}}


def check_names(args) -> None:
    for key, known in (("dataset", IMAGE_DATASETS), ("original", IMAGE_DATASETS)):
        if getattr(args, key) not in known:
            raise ValueError(f"unknown image --{key} {getattr(args, key)!r}; choose one of {', '.join(known)}")


def _load(args, name: str, split: str, size: int | None) -> torch.utils.data.Dataset:
    mean, std = input_normalisation(args.arch)
    return load_image_dataset(name, split, args.img_size, mean, std, data_root=args.data_root,
                              download=args.download, size=size, seed=args.seed)


@torch.no_grad()
def accuracy(model: nn.Module, dataset, device: torch.device, batch_size: int = 256) -> float:
    was_training = model.training
    model.eval()
    correct, total = 0, 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        correct += (model(x.to(device)).argmax(-1) == y.to(device)).sum().item()
        total += len(y)
    model.train(was_training)
    return correct / max(1, total)


class ImageTask:
    """`sophon.task.Task` for classification: original accuracy, restricted accuracy with a fresh head."""

    head_prefix = "head"
    original_metric, original_higher_is_better = "accuracy", True
    restricted_metric, restricted_higher_is_better = "accuracy", True

    def __init__(self, restricted_train, restricted_test, original_train, original_test, restricted_classes: int,
                 suppression: str = "ice", device: torch.device | str = "cpu", cache_key: str = ""):
        if suppression not in CLASSIFICATION_LOSSES:
            raise ValueError(f"unknown suppression loss {suppression!r}; choose one of "
                             f"{', '.join(CLASSIFICATION_LOSSES)}")
        self.restricted_train, self.restricted_test = restricted_train, restricted_test
        self.original_train, self.original_test = original_train, original_test
        self.restricted_classes = restricted_classes
        self.suppression = CLASSIFICATION_LOSSES[suppression]
        self.device = torch.device(device)
        self.cache_key = cache_key

    def learner(self, model: nn.Module) -> nn.Module:
        # An attacker always brings a fresh head sized for the restricted classes (DESIGN §1).
        return replace_head(model, "head", nn.Linear(model.head.in_features, self.restricted_classes))

    def finetune_loss(self, learner, batch):
        x, y = batch
        return F.cross_entropy(learner(x), y)

    def suppression_loss(self, learner, batch):
        x, y = batch
        return self.suppression(learner(x), y)

    def original_loss(self, model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y)

    def evaluate_original(self, model) -> dict[str, float]:
        return {"accuracy": accuracy(model, self.original_test, self.device)}

    def evaluate_restricted(self, learner) -> dict[str, float]:
        return {"accuracy": accuracy(learner, self.restricted_test, self.device)}


def build_task(args, suppression: str) -> ImageTask:
    check_names(args)
    key = (f"image|{args.dataset}:{args.train_size}|{args.original}:{args.original_size}|test:{args.test_size}"
           f"|size:{args.img_size}|{args.arch}|seed:{args.seed}")
    return ImageTask(
        restricted_train=_load(args, args.dataset, "train", args.train_size),
        restricted_test=_load(args, args.dataset, "test", args.test_size),
        original_train=_load(args, args.original, "train", args.original_size),
        original_test=_load(args, args.original, "test", args.test_size),
        restricted_classes=NUM_CLASSES[args.dataset], suppression=suppression, device=device_of(args),
        cache_key=key)


def pretrained_path(arch: str, original: str, cnn_width: int = CNN_WIDTH) -> Path:
    # a cnn of another width is another model: its own file, so pre-training it keeps the preset's
    name = f"cnn-w{cnn_width}" if arch == "cnn" and cnn_width != CNN_WIDTH else arch
    return PRETRAINED_DIR / f"{name}_{original}.safetensors"


def _pretrain_command(args) -> str:
    width = f" --cnn_width {args.cnn_width}" if args.arch == "cnn" and args.cnn_width != CNN_WIDTH else ""
    return (f"python classification/pretrain.py --arch {args.arch} --original {args.original} "
            f"--img_size {args.img_size}{width}")


def build_model(args, start: str) -> nn.Module:
    """start "normal": the pre-trained original-domain classifier; "scratch": the same arch, random."""
    check_names(args)
    classes = NUM_CLASSES[args.original]
    if start == "scratch":
        with torch.random.fork_rng(devices=[]):  # same random init every time, global RNG untouched
            torch.manual_seed(args.seed)
            return build_classifier(args.arch, classes, args.cnn_width).to(device_of(args))
    if start != "normal":
        raise ValueError(f"unknown start {start!r}; choose normal or scratch")
    model = build_classifier(args.arch, classes, args.cnn_width)
    if args.pretrained == "torchvision":
        raise ValueError("--pretrained torchvision holds ImageNet weights with 1000 classes; use them to start "
                         f"pre-training instead: {_pretrain_command(args)} --pretrained torchvision")
    source = Path(args.pretrained) if args.pretrained else pretrained_path(args.arch, args.original, args.cnn_width)
    if not source.exists():
        hint = "pass an existing file" if args.pretrained else "pre-train it first"
        raise FileNotFoundError(f"no pre-trained {args.arch} on {args.original} at {source}; {hint}: "
                                f"{_pretrain_command(args)}  (or pass --pretrained PATH)")
    load_weights(model, read_weights(source), args.arch, source=f"--pretrained {source}")
    sidecar = source.with_suffix(".json")
    if sidecar.exists():
        size = json.loads(sidecar.read_text()).get("img_size")
        if size and size != args.img_size:
            print(f"warning: {source} was pre-trained at --img_size {size}, used here at {args.img_size}")
    return model.to(device_of(args))


def pretrain(args) -> Path:
    """Train the original-domain model (cached at classification/pretrained/<arch>_<original>.safetensors;
    a cnn of another --cnn_width at cnn-w<width>_<original>.safetensors)."""
    check_names(args)
    path = pretrained_path(args.arch, args.original, args.cnn_width)
    if path.exists() and not args.force:
        print(f"{path} exists; reusing it (add --force to train again)")
        return path
    device = device_of(args)
    seed = args.seed
    torch.manual_seed(seed)
    train = _load(args, args.original, "train", args.original_size)
    test = _load(args, args.original, "test", args.test_size)
    model = build_classifier(args.arch, NUM_CLASSES[args.original], args.cnn_width)
    if args.pretrained:  # start from other weights (ImageNet): the body only, the head is new
        state = torchvision_weights(args.arch, args.download) if args.pretrained == "torchvision" \
            else read_weights(args.pretrained)
        load_weights(model, state, args.arch, body_only=True, source=f"--pretrained {args.pretrained}")
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.pretrain_lr)
    steps = args.pretrain_epochs * -(-len(train) // args.pretrain_bs)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.pretrain_lr, total_steps=max(1, steps))
    loader = DataLoader(train, batch_size=args.pretrain_bs, shuffle=True, drop_last=False,
                        generator=torch.Generator().manual_seed(seed))
    start, acc = time.perf_counter(), float("nan")
    for epoch in range(1, args.pretrain_epochs + 1):
        model.train()
        total, count = 0.0, 0
        for x, y in loader:
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total, count = total + loss.item() * len(y), count + len(y)
        acc = accuracy(model, test, device)
        print(f"epoch {epoch}/{args.pretrain_epochs}  train loss {total / count:.4f}  "
              f"{args.original} test accuracy {acc:.4f}  ({time.perf_counter() - start:.0f} s)", flush=True)
    meta = {"arch": args.arch, "original": args.original, "img_size": args.img_size, "cnn_width": args.cnn_width,
            "original_size": args.original_size, "epochs": args.pretrain_epochs, "lr": args.pretrain_lr,
            "bs": args.pretrain_bs, "init": args.pretrained or "random", "test_accuracy": acc,
            "seconds": time.perf_counter() - start, "seed": seed,
            "threads": torch.get_num_threads()}  # on CPU the weights depend on it (README, Reproducibility)
    checkpoint.save_model(path, model, meta)
    print(f"saved {path}")
    return path
