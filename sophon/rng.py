"""Randomness that belongs to its owner: code that must use the global RNG (a fresh head's
`reset_parameters`, `torch.randn_like` noise, dropout) runs inside `seeded`, which seeds a forked
global RNG and puts the caller's state back afterwards. A run therefore never reseeds nor consumes
the global RNG, and each source of randomness (simulation, attack, data order) is reproducible from
its own seed or `torch.Generator`.
"""

from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int, device: torch.device | None = None):
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def draw_seed(generator: torch.Generator) -> int:
    """A seed for `seeded`, taken from an owned generator (saved with checkpoints, so resumable)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))
