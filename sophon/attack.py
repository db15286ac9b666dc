"""Fine-tuning attacks: what a user who obtained the model does to make it work on the restricted
domain. The same function fine-tunes the normal, the SOPHON and the from-scratch starting points,
so the three rows of a result table differ only in where they start.
"""

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sophon.simulate import make_optimizer
from sophon.task import Task, move

ATTACK_OPTIMIZERS = ("sgd", "sgd-momentum", "adam", "adamw", "rmsprop")


@dataclass
class Attack:
    optimizer: str = "sgd"
    lr: float = 1e-4
    batch_size: int = 32
    epochs: int = 5
    head_only: bool = False  # linear probing: only the fresh head is trained

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        return f"{self.optimizer} lr={self.lr:g} bs={self.batch_size} {'head' if self.head_only else 'full'}"


def finetune(model: nn.Module, task: Task, attack: Attack, seed: int = 0, progress: bool = True,
             max_steps_per_epoch: int | None = None, after=None) -> list[dict]:
    """Fine-tune a learner copy of `model` (left untouched) on the restricted training set.

    Returns the test curve: one record per epoch, epoch 0 being before any step. `after(learner)`, if
    given, sees the fine-tuned learner before it is dropped (e.g. to draw samples from it).
    """
    if attack.optimizer not in ATTACK_OPTIMIZERS:
        raise ValueError(f"unknown attack optimizer {attack.optimizer!r}; choose one of {', '.join(ATTACK_OPTIMIZERS)}")
    torch.manual_seed(seed)  # the fresh head and the batch order: identical across starting points
    learner = task.learner(model)
    if attack.head_only:
        if not task.head_prefix:
            raise ValueError("head-only fine-tuning needs a task with a head (classification)")
        params = list(learner.get_submodule(task.head_prefix).parameters())
    else:
        params = [p for p in learner.parameters() if p.requires_grad]
    optimizer = make_optimizer(attack.optimizer, params, attack.lr)
    loader = DataLoader(task.restricted_train, batch_size=attack.batch_size, shuffle=True, drop_last=False,
                        generator=torch.Generator().manual_seed(seed))
    learner.eval()
    curve = [{"epoch": 0, **task.evaluate_restricted(learner)}]
    for epoch in range(1, attack.epochs + 1):
        learner.train()
        losses = []
        steps = tqdm(loader, desc=f"fine-tune {epoch}/{attack.epochs}", leave=False, disable=not progress)
        for i, batch in enumerate(steps):
            if max_steps_per_epoch is not None and i >= max_steps_per_epoch:
                break
            optimizer.zero_grad(set_to_none=True)
            loss = task.finetune_loss(learner, move(batch, task.device))
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        learner.eval()
        curve.append({"epoch": epoch, "train_loss": sum(losses) / max(1, len(losses)),
                      **task.evaluate_restricted(learner)})
    if after is not None:
        after(learner)
    return curve
