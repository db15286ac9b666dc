"""The optimizers and learning-rate schedules an attacker (real or simulated) may use.

One table says which optimizers exist, so the attack specs, the suites and the simulated
environments all accept the same names.
"""

import torch

# name -> (torch class, fixed keyword arguments). Momentum 0.9 and AdamW's 0.01 decay are the
# values a practitioner types without thinking; the learning rate is the attack's knob.
_OPTIMIZERS = {
    "sgd": (torch.optim.SGD, {}),
    "sgd-momentum": (torch.optim.SGD, {"momentum": 0.9}),
    "nesterov": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    "adam": (torch.optim.Adam, {}),
    "adamw": (torch.optim.AdamW, {"weight_decay": 0.01}),
    "rmsprop": (torch.optim.RMSprop, {}),
    "adagrad": (torch.optim.Adagrad, {}),
    "adadelta": (torch.optim.Adadelta, {}),
}
OPTIMIZERS = tuple(_OPTIMIZERS)

# The learning rate people usually start fine-tuning with, per optimizer (image/diffusion scale);
# suites and the tuned attacker search around it (sophon.suites, sophon.tune).
USUAL_LR = {"sgd": 1e-2, "sgd-momentum": 1e-2, "nesterov": 1e-2, "adam": 1e-3, "adamw": 1e-3,
            "rmsprop": 1e-3, "adagrad": 1e-2, "adadelta": 1.0}

SCHEDULES = ("constant", "cosine", "warmup-cosine")
WARMUP_SHARE = 0.1  # warmup-cosine: linear warm-up over the first 10 % of the steps


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    cls, kwargs = _OPTIMIZERS[name]
    return cls([p for p in params if p.requires_grad], lr=lr, **kwargs)


def make_schedule(schedule: str, optimizer: torch.optim.Optimizer, total_steps: int):
    """transformers' schedulers: constant, cosine decay to 0, or a linear warm-up then cosine."""
    from transformers import get_scheduler

    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    name = "constant" if schedule == "constant" else "cosine"
    warmup = round(WARMUP_SHARE * total_steps) if schedule == "warmup-cosine" else 0
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=max(1, total_steps))
