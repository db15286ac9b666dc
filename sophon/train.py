"""Plain training: the loop pre-training shares (tiny-gpt2, the UNet), and the benign phase an
attacker (real or simulated) runs on original-domain data before the restricted one."""

import copy

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sophon.optim import make_optimizer
from sophon.precision import of as precision_of, optimizer_step
from sophon.task import Task, move


def train_steps(params, loss_at, optimizer, schedule, steps: int, desc: str, clip: float = 1.0) -> None:
    """`steps` steps of `optimizer` on `loss_at(step)`, gradient norm clipped to `clip`, with a progress bar."""
    params = list(params)
    bar = tqdm(range(steps), desc=desc, dynamic_ncols=True)
    for step in bar:
        loss = loss_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")


def benign_phase(model: nn.Module, task: Task, optimizer_name: str, lr: float, bs: int, steps: int,
                 generator: torch.Generator) -> nn.Module:
    """A copy of `model` fine-tuned `steps` steps on original-domain data with its own head: the
    attacker who first trains on harmless data, then on the restricted data."""
    model = copy.deepcopy(model)
    model.train()
    optimizer = make_optimizer(optimizer_name, model.parameters(), lr)
    precision = precision_of(task)
    scaler = precision.scaler()
    loader = DataLoader(task.original_train, batch_size=bs, shuffle=True, generator=generator)
    done = 0
    while done < steps:
        for batch in loader:
            if done >= steps:
                break
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast():
                loss = task.original_loss(model, move(batch, task.device))
            optimizer_step(loss, optimizer, scaler)
            done += 1
    return model
