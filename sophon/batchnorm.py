"""BatchNorm statistics that belong to the weights they sit on.

During SOPHON a BatchNorm layer's running statistics are an exponential average over the last few
NTR batches, while every FTS step moves the weights under them. The statistics then lag the weights,
and the model scores worse in eval mode than its weights allow: on the `cnn` preset, recomputing
them on the final weights lifted FASHION accuracy by 1.5-5 points
(docs/experiments/image-batchnorm-statistics.md). Training and the attacks' full fine-tuning use
batch statistics, so only eval-mode scores (the guard, the released model, a linear probe's frozen
body) see the lag. `recalibrate_` recomputes the running statistics from original-domain data, as
the defender would before releasing a model.
"""

import torch
from torch import nn

from sophon.task import Task, draw_batch, move

BATCHES = 16  # batches of the original training set averaged (a cumulative, not an exponential, mean)
BATCH_SIZE = 256


def _tracking(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def has_batchnorm(model: nn.Module) -> bool:
    return bool(_tracking(model))


@torch.no_grad()
def recalibrate_(model: nn.Module, task: Task, seed: int, batches: int = BATCHES,
                 batch_size: int = BATCH_SIZE) -> nn.Module:
    """In place: every BatchNorm's running mean and variance recomputed as the plain average over
    `batches` original-domain training batches (drawn with their own generator, so a run's RNG is
    untouched) under the current weights. The model is left in eval mode; no weight changes."""
    norms = _tracking(model)
    if not norms:
        return model
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None: a cumulative average over the batches seen since the reset
    generator = torch.Generator().manual_seed(seed)
    model.train()
    try:
        for _ in range(batches):
            task.original_loss(model, move(draw_batch(task.original_train, batch_size, generator), task.device))
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.eval()
    return model
