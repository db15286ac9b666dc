"""Where tensors live: the one resolution of `--device` for every script and setting."""

import torch


def resolve_device(name: str | None) -> torch.device:
    """`auto` (or nothing) is CUDA when available, else CPU; anything else as torch spells it."""
    if not name or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown --device {name!r}; use auto, cpu, cuda or cuda:N") from None


def device_of(args) -> torch.device:
    return resolve_device(getattr(args, "device", None))
