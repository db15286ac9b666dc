"""Function-preserving rescaling: a free first move for any attacker of a BatchNorm network.

A convolution or linear layer whose output goes only into a BatchNorm computes the same function
at any positive per-channel scale of its weights (the BatchNorm divides the scale out). The scale
still sets how fast a gradient step moves that channel: SGD's effective step on it falls with the
square of its norm, Adam's with the norm. A defence that only inflated those norms would look
"non-fine-tunable" to every attack of a suite and be undone by an attacker who first puts them
back. `rescaled` does that: every such channel gets the norm PyTorch's default initialisation
gives it on average, and the BatchNorm's running statistics follow, so the rescaled model predicts
what the original did (train and eval mode, up to BatchNorm's eps).
"""

import copy
import math

import torch
from torch import fx, nn

# nn.Conv2d / nn.Linear default init: uniform(±1/sqrt(fan_in)) per weight, so a channel's expected
# squared norm is fan_in * (1/fan_in) / 3 = 1/3, whatever its shape.
DEFAULT_CHANNEL_NORM = 1 / math.sqrt(3)
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def scale_invariant_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer, BatchNorm) module names where the layer's output feeds that BatchNorm and nothing else.
    Empty when the model cannot be traced (torch.fx) or has no such pair."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # a model fx cannot trace (data-dependent control flow) has no pair we can prove
        return []
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _WEIGHTED):
            continue
        users = list(node.users)
        if (len(users) == 1 and users[0].op == "call_module"
                and isinstance(modules.get(users[0].target), _NORMS)):
            pairs.append((node.target, users[0].target))
    return pairs


def require_pairs(model: nn.Module, what: str) -> list[tuple[str, str]]:
    """`scale_invariant_pairs(model)`, or a ValueError saying that `what` (a flag or key) cannot apply."""
    pairs = scale_invariant_pairs(model)
    if not pairs:
        raise ValueError(f"{what} needs a layer whose output feeds only a BatchNorm, and this model has none "
                         f"(or torch.fx cannot trace it); drop {what} for this model")
    return pairs


def rescaled(model: nn.Module, norm: float = DEFAULT_CHANNEL_NORM) -> nn.Module:
    """A copy of `model` whose every BatchNorm-fed channel has weight norm `norm`; same predictions."""
    pairs = require_pairs(model, "rescale=1")
    model = copy.deepcopy(model)
    rescale_(model, pairs, norm)
    return model


@torch.no_grad()
def rescale_(model: nn.Module, pairs: list[tuple[str, str]], norm: float = DEFAULT_CHANNEL_NORM) -> None:
    """In place: the channels of `pairs` (from `scale_invariant_pairs`) to weight norm `norm`."""
    for layer_name, bn_name in pairs:
        layer, bn = model.get_submodule(layer_name), model.get_submodule(bn_name)
        current = layer.weight.flatten(1).norm(dim=1)
        scale = norm / current.clamp_min(1e-12)  # a dead (all-zero) channel stays zero
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        layer.weight.mul_(scale.view(shape))
        if layer.bias is not None:
            layer.bias.mul_(scale)
        if bn.running_mean is not None:
            bn.running_mean.mul_(scale)
            bn.running_var.mul_(scale ** 2)
