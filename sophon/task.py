"""The contract between the SOPHON loop and a setting (text, image or diffusion).

`protect`, `simulate` and `attack` only ever talk to a model through a `Task`. A setting implements
these few members and gets the whole loop, the attacks and the reports for free.
"""

from contextlib import contextmanager
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

Batch = Any  # a tensor, a tuple of tensors or a dict of tensors, first dim = examples


class Task(Protocol):
    device: torch.device
    restricted_train: Dataset
    restricted_test: Dataset
    original_train: Dataset
    original_test: Dataset
    # Module path of the part an attacker replaces with a fresh one ("head"), or None.
    head_prefix: str | None
    # Key of `evaluate_original` that the guard watches, and which way is better.
    original_metric: str
    original_higher_is_better: bool
    # Key of `evaluate_restricted` that tables report, and which way is better.
    restricted_metric: str
    restricted_higher_is_better: bool

    def learner(self, model: nn.Module) -> nn.Module:
        """A deep copy of `model`, ready to be fine-tuned on the restricted domain (fresh head)."""

    def finetune_loss(self, learner: nn.Module, batch: Batch) -> torch.Tensor:
        """The attacker's ordinary loss on a restricted batch (cross-entropy, denoising MSE)."""

    def suppression_loss(self, learner: nn.Module, batch: Batch) -> torch.Tensor:
        """The loss SOPHON minimises at the fine-tuned learner (ICE, KLU, DoS, ...)."""

    def original_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The original-domain training loss (normal-training reinforcement)."""

    def evaluate_original(self, model: nn.Module) -> dict[str, float]:
        ...

    def evaluate_restricted(self, learner: nn.Module) -> dict[str, float]:
        ...


def move(batch: Batch, device: torch.device) -> Batch:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move(v, device) for v in batch)
    return batch


def batch_size_of(batch: Batch) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        return batch_size_of(next(iter(batch.values())))
    return batch_size_of(batch[0])


def index_batch(batch: Batch, index: torch.Tensor) -> Batch:
    if isinstance(batch, torch.Tensor):
        return batch[index.to(batch.device)]
    if isinstance(batch, dict):
        return {k: index_batch(v, index) for k, v in batch.items()}
    return type(batch)(index_batch(v, index) for v in batch)


def draw_batch(dataset: Dataset, batch_size: int, generator: torch.Generator) -> Batch:
    """A random batch without replacement (within the batch) from a map-style dataset."""
    n = len(dataset)
    index = torch.randperm(n, generator=generator)[: min(batch_size, n)]
    return default_collate([dataset[int(i)] for i in index])


def split_batch(batch: Batch, query_fraction: float, generator: torch.Generator) -> tuple[Batch, Batch]:
    """Random support/query split (DESIGN §1: 90 % / 10 %); each side keeps at least one example."""
    n = batch_size_of(batch)
    if n < 2:
        raise ValueError(f"a batch of {n} example cannot be split into support and query; raise --bs")
    n_query = min(n - 1, max(1, round(n * query_fraction)))
    order = torch.randperm(n, generator=generator)
    return index_batch(batch, order[n_query:]), index_batch(batch, order[:n_query])


def set_head(model: nn.Module, head_prefix: str, new_head: nn.Module) -> nn.Module:
    """Swap, in place, the submodule at `head_prefix` (e.g. "head") for `new_head`."""
    parent_path, _, attr = head_prefix.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new_head)
    return model


def replace_head(model: nn.Module, head_prefix: str, new_head: nn.Module) -> nn.Module:
    """Deep-copy `model` and swap the submodule at `head_prefix` for `new_head`."""
    import copy

    return set_head(copy.deepcopy(model), head_prefix, new_head.to(next(model.parameters()).device))


@contextmanager
def head_inputs(model: nn.Module, head_prefix: str):
    """Within the block, every forward pass appends the head's input to the yielded list."""
    captured = []
    hook = model.get_submodule(head_prefix).register_forward_pre_hook(
        lambda _module, inputs: captured.append(inputs[0]))
    try:
        yield captured
    finally:
        hook.remove()
