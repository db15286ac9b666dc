"""A tiny linear classification task implementing `sophon.task.Task`, for testing the loop."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from sophon.losses import CLASSIFICATION_LOSSES
from sophon.task import replace_head


class Headed(nn.Module):
    def __init__(self, dim=4, hidden=3, classes=2):
        super().__init__()
        self.body = nn.Linear(dim, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.body(x))


def blobs(n, dim, classes, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(seed + 100)) * 3
    return TensorDataset(centers[y] + torch.randn(n, dim, generator=g), y)


def accuracy(model, dataset):
    x, y = dataset.tensors
    with torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean().item()


class ToyTask:
    device = torch.device("cpu")
    head_prefix = "head"
    original_metric, original_higher_is_better = "accuracy", True
    restricted_metric, restricted_higher_is_better = "accuracy", True

    def __init__(self, loss="ice", dim=4, hidden=3, classes=2):
        self.hidden, self.classes = hidden, classes
        self.loss = CLASSIFICATION_LOSSES[loss]
        self.original_train, self.original_test = blobs(64, dim, classes, 1), blobs(64, dim, classes, 2)
        self.restricted_train, self.restricted_test = blobs(64, dim, classes, 3), blobs(64, dim, classes, 4)

    def learner(self, model):
        return replace_head(model, "head", nn.Linear(self.hidden, self.classes))

    def finetune_loss(self, learner, batch):
        return F.cross_entropy(learner(batch[0]), batch[1])

    def suppression_loss(self, learner, batch):
        return self.loss(learner(batch[0]), batch[1])

    def original_loss(self, model, batch):
        return F.cross_entropy(model(batch[0]), batch[1])

    def evaluate_original(self, model):
        return {"accuracy": accuracy(model, self.original_test)}

    def evaluate_restricted(self, learner):
        return {"accuracy": accuracy(learner, self.restricted_test)}
