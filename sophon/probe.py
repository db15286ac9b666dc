"""The linear-probe attacker in closed form (`--probe_weight`).

A linear probe leaves θ's body as it is and fits a fresh head on its features. Simulating it by a few
gradient steps on a head, as the other simulated attackers do, tells θ how to fool *that* head only;
a head fitted again would adapt. Ridge regression gives the head the probe converges to as a
differentiable function of the features, so the suppression gradient also accounts for how the head
would move: the body learns features on which no linear head fitted on restricted examples
generalises. (The same idea as differentiable closed-form solvers in meta-learning, e.g. R2-D2.)

For classification tasks whose head is an `nn.Linear` at `task.head_prefix` and whose batches end
with the labels (the image and text settings).
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from sophon.task import Batch, head_inputs

# Ridge predictions of one-hot targets lie around [0, 1]; as logits they are scaled so that a probe that
# fits perfectly is confident (a gap of 10 is p = 0.9995 over 10 classes), as a trained softmax head is.
LOGIT_SCALE = 10.0


def ridge_head(features: torch.Tensor, labels: torch.Tensor, classes: int, ridge: float,
               bias: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ridge-regression head (weight (C, d), bias (C,) or None) fitting one-hot `labels` from
    `features` (n, d). The penalty is `ridge` times the mean feature variance, so it does not depend on
    the features' scale. Differentiable in `features`; solved in whichever of the d×d and n×n forms
    is smaller."""
    x = features.float()
    y = F.one_hot(labels, classes).float()
    if bias:
        x_mean, y_mean = x.mean(0, keepdim=True), y.mean(0, keepdim=True)
        x, y = x - x_mean, y - y_mean
    n, d = x.shape
    penalty = ridge * x.pow(2).sum(0).mean().clamp_min(1e-12)
    if d <= n:
        weight = torch.linalg.solve(x.T @ x + penalty * torch.eye(d, device=x.device), x.T @ y)
    else:  # the dual form: W = Xᵀ (X Xᵀ + λI)⁻¹ Y
        weight = x.T @ torch.linalg.solve(x @ x.T + penalty * torch.eye(n, device=x.device), y)
    if not bias:
        return weight.T, None
    return weight.T, (y_mean - x_mean @ weight).squeeze(0)


class _WithHead(nn.Module):
    """`learner` with its head's weight (and bias) replaced by given tensors, gradients flowing."""

    def __init__(self, learner: nn.Module, overrides: dict[str, torch.Tensor]):
        super().__init__()
        self.learner, self.overrides = learner, overrides

    def forward(self, *args, **kwargs):
        return functional_call(self.learner, self.overrides, args, kwargs)


def probe_loss(task, learner: nn.Module, support: Batch, query: Batch, ridge: float) -> torch.Tensor:
    """The task's suppression loss on `query` under the ridge head fitted on `support`'s features.

    `learner` is an attacker's copy of θ (fresh head, in eval mode as a linear probe keeps it); the
    loss is differentiable in the learner's body parameters."""
    head = learner.get_submodule(task.head_prefix)
    with head_inputs(learner, task.head_prefix) as captured:
        task.finetune_loss(learner, support)  # a forward pass, only for the head's input
    weight, bias = ridge_head(captured[0], support[-1], head.out_features, ridge, head.bias is not None)
    overrides = {f"{task.head_prefix}.weight": LOGIT_SCALE * weight.to(head.weight.dtype)}
    if bias is not None:
        overrides[f"{task.head_prefix}.bias"] = LOGIT_SCALE * bias.to(head.weight.dtype)
    return task.suppression_loss(_WithHead(learner, overrides), query)
