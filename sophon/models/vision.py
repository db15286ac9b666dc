"""Image classifiers as `body` (image -> feature vector) + `head` (the final nn.Linear).

An attacker replaces `head` with a fresh layer for their own classes, so every architecture is
split the same way: the library model (torchvision, timm) with its last Linear swapped for
Identity is the body, and that Linear is the head. Keeping the rest of each library's module tree
intact means its own weights load after one key rename (`fc.` -> `head.`, everything else under
`body.`).

    cnn       a small BatchNorm CNN that trains in seconds on 2 CPU cores (embedded preset)
    res18/34/50  torchvision ResNets
    vgg       the paper's configuration "B" (torchvision vgg13: 3x3 convs, no BatchNorm, 3-layer classifier)
    caformer  timm caformer_m36
"""

from pathlib import Path

import torch
from torch import nn

IMAGE_ARCHS = ("cnn", "res18", "res34", "res50", "vgg", "caformer")
# Archs whose convolutions feed BatchNorms: each such channel's weight scale is free (sophon/rescale.py), so their
# suites add `rescale=1` attacks. Named here because a suite is built before any model; tests/test_suites.py
# checks the list against the models themselves.
BATCHNORM_FED = ("cnn", "res18", "res34", "res50")

# Module path of the final Linear inside each library model (its weights' key prefix there).
LIBRARY_HEAD = {"res18": "fc", "res34": "fc", "res50": "fc", "vgg": "classifier.6", "caformer": "head.fc.fc2"}
TORCHVISION_WEIGHTS = {"res18": "ResNet18_Weights.DEFAULT", "res34": "ResNet34_Weights.DEFAULT",
                       "res50": "ResNet50_Weights.DEFAULT", "vgg": "VGG13_Weights.DEFAULT"}
# Input normalisation each family was trained with (torchvision/timm use ImageNet statistics).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Classifier(nn.Module):
    def __init__(self, body: nn.Module, head: nn.Linear):
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


CNN_WIDTH = 16  # the embedded preset's cnn (--cnn_width); other widths are other models (own pre-trained file)


class SmallCNN(nn.Module):
    """Three conv blocks with BatchNorm, global average pooling and one hidden layer."""

    def __init__(self, width: int = CNN_WIDTH, hidden: int = 128, in_channels: int = 3):
        super().__init__()

        def block(cin, cout, pool):
            layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            return layers + ([nn.MaxPool2d(2)] if pool else [])

        self.features = nn.Sequential(*block(in_channels, width, True), *block(width, 2 * width, True),
                                      *block(2 * width, 4 * width, False))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(4 * width, hidden), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(self.pool(self.features(x)))


def _split(model: nn.Module, head_path: str) -> Classifier:
    parent_path, _, attr = head_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    head = getattr(parent, attr)
    setattr(parent, attr, nn.Identity())
    return Classifier(model, head)


def build_classifier(arch: str, num_classes: int, cnn_width: int = CNN_WIDTH) -> Classifier:
    """A randomly initialised classifier for `num_classes` classes taking 3-channel images."""
    if arch == "cnn":
        body = SmallCNN(width=cnn_width)
        return Classifier(body, nn.Linear(body.hidden[1].out_features, num_classes))
    if arch in ("res18", "res34", "res50", "vgg"):
        import torchvision

        factory = {"res18": torchvision.models.resnet18, "res34": torchvision.models.resnet34,
                   "res50": torchvision.models.resnet50, "vgg": torchvision.models.vgg13}[arch]
        return _split(factory(weights=None, num_classes=num_classes), LIBRARY_HEAD[arch])
    if arch == "caformer":
        import timm

        return _split(timm.create_model("caformer_m36", pretrained=False, num_classes=num_classes),
                      LIBRARY_HEAD[arch])
    raise ValueError(f"unknown image --arch {arch!r}; choose one of {', '.join(IMAGE_ARCHS)}")


def input_normalisation(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if arch == "cnn":
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return IMAGENET_MEAN, IMAGENET_STD


# ---- weights ---------------------------------------------------------------------------------

def to_classifier_keys(state: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Rename a library state dict (torchvision `fc.weight`, timm `head.fc.fc2.weight`) to ours."""
    if any(k.startswith("body.") for k in state):
        return state
    head = LIBRARY_HEAD.get(arch)
    out = {}
    for key, value in state.items():
        if head and key.startswith(head + "."):
            out["head." + key[len(head) + 1:]] = value
        else:
            out["body." + key] = value
    return out


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a torch file loaded with weights_only=True (no pickle code)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--pretrained {path}: no such file; pass a .safetensors file or a state-dict "
                                "file (.pt/.pth), or run classification/pretrain.py first")
    if path.suffix == ".safetensors":
        from sophon import checkpoint

        tensors, _ = checkpoint.load(path)
        return checkpoint.model_state(tensors) or tensors
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common wrappers of a state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"--pretrained {path} holds a {type(state).__name__}, not a state dict")
    return state


def torchvision_weights(arch: str, download: bool = False) -> dict[str, torch.Tensor]:
    """ImageNet weights of a torchvision arch, from torch's hub cache (fetched only with --download)."""
    if arch not in TORCHVISION_WEIGHTS:
        raise ValueError(f"--pretrained torchvision: no torchvision weights for --arch {arch}; "
                         f"available for {', '.join(TORCHVISION_WEIGHTS)}")
    import torchvision

    weights = torchvision.models.get_weight(TORCHVISION_WEIGHTS[arch])
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.exists() and not download:
        raise FileNotFoundError(f"--pretrained torchvision: {cached} is missing; place {Path(weights.url).name} "
                                f"there (from {weights.url}) or add --download")
    return weights.get_state_dict(progress=False)


def load_weights(model: Classifier, state: dict[str, torch.Tensor], arch: str, body_only: bool = False,
                 source: str = "--pretrained") -> None:
    """Load `state` into `model`; with body_only the head is left as initialised (other class count)."""
    state = to_classifier_keys(state, arch)
    if body_only:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    expected = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state.items()
             if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise ValueError(f"{source} does not fit --arch {arch} with this class count: {wrong[:3]}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if body_only:
        missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise ValueError(f"{source} does not fit --arch {arch}: missing {list(missing)[:3]}, "
                         f"unexpected {list(unexpected)[:3]}")
