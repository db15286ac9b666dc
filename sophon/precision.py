"""`--precision fp32|bf16|fp16`: autocast for the forward passes of every training step (the SOPHON
loop, the simulated attackers, the attacks, evaluation). The weights stay fp32 and so do the losses
(sophon/losses.py casts to float before reducing). fp16 needs a gradient scaler against underflow;
bf16 has fp32's range and needs none.
"""

import torch

from sophon.config import PRECISIONS

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, name: str = "fp32", device: torch.device | str = "cpu"):
        if name not in PRECISIONS:
            raise ValueError(f"unknown --precision {name!r}; choose one of {', '.join(PRECISIONS)}")
        self.name = name
        self.device_type = torch.device(device).type
        self.dtype = _DTYPES.get(name)

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def scaler(self) -> torch.amp.GradScaler:
        """A loss scaler, a pass-through (scale 1, no checks) unless fp16."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")

    def __repr__(self) -> str:
        return f"Precision({self.name!r})"


FP32 = Precision("fp32")


def of(task) -> Precision:
    """The task's precision (set by the experiment from --precision); fp32 when none was set."""
    return getattr(task, "precision", None) or FP32


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """backward + step through `scaler` (an fp16 step with an overflow is skipped and the scale lowered)."""
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
