"""The plain training loop that pre-training shares (tiny-gpt2 on text, the UNet on images)."""

import torch
from tqdm.auto import tqdm


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
