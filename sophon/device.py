"""Where tensors live: the one resolution of `--device` for every script and setting."""

import torch


def resolve_device(name: str | None) -> torch.device:
    """`auto` (or nothing) is CUDA when available, else CPU; anything else as torch spells it. Under a
    multi-GPU launch, `cuda` means this process's own GPU."""
    from sophon import distributed

    if not name or name == "auto":
        return distributed.device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        return distributed.device(torch.device(name))
    except RuntimeError:
        raise ValueError(f"unknown --device {name!r}; use auto, cpu, cuda or cuda:N") from None


def device_of(args) -> torch.device:
    return resolve_device(getattr(args, "device", None))
