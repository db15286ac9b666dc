"""Fine-tuning attacks: what a user who obtained the model does to make it work on the restricted
domain. The same function fine-tunes the normal, the SOPHON and the from-scratch starting points,
so the rows of a result table differ only in where they start.

An attack is written as a spec, `optimizer[:lr][:key=value...]`, e.g.
`adam:1e-4:method=lora:epochs=20` or `sgd-momentum:1e-3:bs=8:schedule=warmup-cosine`. A benign-first
attack may train its original-domain phase with another optimizer: `sgd-momentum:1e-2:benign=adam/1e-3`.
`rescale=1` first gives every BatchNorm-fed channel its default-init norm (`sophon.rescale`): the same
function, without any step-size trap hidden in the weights' scale. `standardize=1` feeds the fresh head
the body's features standardised with the restricted training set's mean and std at the start, as a
scikit-learn pipeline (StandardScaler, then a linear model) does: with `method=head`, a linear probe that
no feature scale can slow down.
"""

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sophon.optim import OPTIMIZERS, SCHEDULES, USUAL_LR, make_optimizer, make_schedule
from sophon.precision import of as precision_of, optimizer_step
from sophon.rescale import require_pairs, rescaled
from sophon.rng import seeded
from sophon.train import benign_phase
from sophon.task import Task, head_inputs, move, set_head

METHODS = ("full", "head", "lora", "benign")
SPEC_KEYS = ("lr", "bs", "epochs", "method", "schedule", "benign", "rescale", "standardize")
LORA_RANK = 8


class AttackSpecError(ValueError):
    """A malformed --attacks entry; the message names the valid choices."""


@dataclass(frozen=True)
class Attack:
    optimizer: str = "sgd"
    lr: float = 1e-2
    bs: int = 32
    epochs: int = 5
    method: str = "full"  # full | head (linear probe) | lora (peft adapters + head) | benign (original data first)
    schedule: str = "constant"  # constant | cosine | warmup-cosine
    # The benign phase's optimizer and lr, "adam/0.001"; None: the attack's own. It tells apart what the
    # original-domain phase undoes from what the restricted-domain optimizer does.
    benign: str | None = None
    # Put every BatchNorm-fed channel back to its default-init norm before anything else (sophon.rescale).
    rescale: bool = False
    # The fresh head reads features standardised on the restricted training set (fixed at the start).
    standardize: bool = False

    def to_dict(self) -> dict:
        # Fields at their defaults stay out of the dict, as before they existed: cached cells keep their keys.
        values = asdict(self)
        if self.benign is None:
            del values["benign"]
        for flag in ("rescale", "standardize"):
            if not values[flag]:
                del values[flag]
        return values

    @property
    def benign_optimizer(self) -> tuple[str, float]:
        if self.benign is None:
            return self.optimizer, self.lr
        name, lr = self.benign.split("/")
        return name, float(lr)

    @property
    def label(self) -> str:
        """The canonical spec; `parse_attack(label)` gives this attack back."""
        text = f"{self.optimizer}:{self.lr:g}:bs={self.bs}:epochs={self.epochs}"
        if self.method != "full":
            text += f":method={self.method}"
        if self.schedule != "constant":
            text += f":schedule={self.schedule}"
        if self.benign is not None:
            text += f":benign={self.benign}"
        if self.rescale:
            text += ":rescale=1"
        if self.standardize:
            text += ":standardize=1"
        return text


def _number(kind, text: str, what: str, spec: str):
    try:
        value = kind(text)
    except ValueError:
        raise AttackSpecError(f"attack {spec!r}: {what} {text!r} is not a{'n integer' if kind is int else ' number'}") from None
    if not (value > 0 and math.isfinite(value)):
        raise AttackSpecError(f"attack {spec!r}: {what} must be positive, got {text!r}")
    return value


def parse_attack(spec: str, lr: float | None = None, bs: int = 32, epochs: int = 5) -> Attack:
    """One spec; `lr` (default: the optimizer's usual lr), `bs` and `epochs` fill what it leaves out."""
    spec = spec.strip()
    name, *parts = spec.split(":")
    if name not in OPTIMIZERS:
        raise AttackSpecError(f"unknown optimizer {name!r} in attack {spec!r}; choose one of {', '.join(OPTIMIZERS)}")
    values: dict = {}
    if parts and "=" not in parts[0]:
        values["lr"] = _number(float, parts.pop(0), "learning rate", spec)
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key not in SPEC_KEYS:
            raise AttackSpecError(f"unknown part {part!r} in attack {spec!r}; write key=value with key one of "
                                  f"{', '.join(SPEC_KEYS)}")
        if key in values:
            raise AttackSpecError(f"attack {spec!r} sets {key} twice")
        if key == "lr":
            values[key] = _number(float, value, "learning rate", spec)
        elif key in ("bs", "epochs"):
            values[key] = _number(int, value, key, spec)
        elif key == "benign":
            values[key] = _benign(value, spec)
        elif key in ("rescale", "standardize"):
            if value not in ("0", "1"):
                raise AttackSpecError(f"{key}={value!r} in attack {spec!r}: write {key}=1 (or 0)")
            values[key] = value == "1"
        else:
            choices = METHODS if key == "method" else SCHEDULES
            if value not in choices:
                raise AttackSpecError(f"unknown {key} {value!r} in attack {spec!r}; choose one of {', '.join(choices)}")
            values[key] = value
    if "benign" in values and values.setdefault("method", "benign") != "benign":
        raise AttackSpecError(f"attack {spec!r}: benign= names the optimizer of a benign-first attack; "
                              "drop method= or write method=benign")
    base = Attack(name, lr if lr is not None else USUAL_LR[name], bs, epochs)
    return replace(base, **values)


def _benign(value: str, spec: str) -> str:
    """`benign=OPTIMIZER/LR`, in canonical form. The lr is required: the usual one depends on the setting."""
    name, sep, lr = value.partition("/")
    if name not in OPTIMIZERS or not sep:
        raise AttackSpecError(f"benign={value!r} in attack {spec!r}: write benign=OPTIMIZER/LR, e.g. benign=adam/1e-3, "
                              f"with OPTIMIZER one of {', '.join(OPTIMIZERS)}")
    return f"{name}/{_number(float, lr, 'benign learning rate', spec):g}"


def parse_attacks(text: str, lr_for=None, bs: int = 32, epochs: int = 5) -> list[Attack]:
    """Comma-separated specs. `lr_for(optimizer)` gives the lr of a spec that names none."""
    items = [s for s in str(text).split(",") if s.strip()]
    if not items:
        raise AttackSpecError("no attack given; write e.g. --attacks sgd,adam:1e-4:method=lora")
    attacks = []
    for item in items:
        name = item.strip().split(":")[0]
        attacks.append(parse_attack(item, lr_for(name) if lr_for and name in OPTIMIZERS else None, bs, epochs))
    return attacks


# ---- what an attacker trains ------------------------------------------------------------------
def _in_head(name: str, prefix: str | None) -> bool:
    return bool(prefix) and (name == prefix or name.startswith(prefix + "."))


def lora_targets(learner: nn.Module, head_prefix: str | None) -> list[str]:
    """Every linear and convolution layer of the body (GPT-2's Conv1D too); never the head, never a
    frozen layer (the text models' LM head)."""
    from transformers.pytorch_utils import Conv1D

    return [name for name, m in learner.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d, Conv1D)) and not _in_head(name, head_prefix)
            and all(p.requires_grad for p in m.parameters(recurse=False))]


def add_lora(learner: nn.Module, head_prefix: str | None) -> nn.Module:
    """peft LoRA adapters on the body; only adapters (and the fresh head) stay trainable."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = lora_targets(learner, head_prefix)
    if not targets:
        raise AttackSpecError("method=lora found no linear or convolution layer to adapt in this model")
    config = LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, target_modules=targets, lora_dropout=0.0)
    learner = inject_adapter_in_model(config, learner)
    for name, p in learner.named_parameters():
        p.requires_grad = "lora_" in name or _in_head(name, head_prefix)
    return learner


def trainable(learner: nn.Module, task: Task, method: str) -> list[nn.Parameter]:
    if method == "head":
        for p in learner.parameters():
            p.requires_grad = False
        for p in learner.get_submodule(task.head_prefix).parameters():
            p.requires_grad = True
    return [p for p in learner.parameters() if p.requires_grad]


def check_fits(model: nn.Module, attacks, head_prefix: str | None) -> None:
    """Refuse, before any long work, an attack this model cannot take."""
    if any(a.rescale for a in attacks):
        require_pairs(model, "rescale=1")
    if any(a.standardize for a in attacks) and not head_prefix:
        raise AttackSpecError("standardize=1 standardises the input of a classification head, and this setting has "
                              "none; drop it from --attacks")


class Standardized(nn.Module):
    """A head reading (x − mean) / std, with mean and std fixed buffers: the attacker's feature scaler."""

    def __init__(self, head: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.head = head
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return self.head((x - self.mean) / self.std)


@torch.no_grad()
def standardize_head(learner: nn.Module, task: Task, bs: int) -> nn.Module:
    """`learner` with its head wrapped in `Standardized`, the statistics of the head's input over the
    restricted training set (eval mode: BatchNorm with its running statistics, no dropout)."""
    head = learner.get_submodule(task.head_prefix)
    was_training = learner.training
    learner.eval()
    try:
        with head_inputs(learner, task.head_prefix) as captured:
            for batch in DataLoader(task.restricted_train, batch_size=bs):
                task.finetune_loss(learner, move(batch, task.device))  # a forward pass, only for the head's input
    finally:
        learner.train(was_training)
    features = torch.cat([c.float().reshape(-1, c.shape[-1]) for c in captured])
    # A constant feature has nothing to scale: leave it at std 1 rather than divide by zero.
    std = features.std(0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    dtype = next(head.parameters()).dtype
    return set_head(learner, task.head_prefix, Standardized(head, features.mean(0).to(dtype), std.to(dtype)))


def _steps_per_epoch(n: int, bs: int) -> int:
    return -(-n // bs)


def finetune(model: nn.Module, task: Task, attack: Attack, seed: int = 0, progress: bool = True,
             after=None) -> list[dict]:
    """Fine-tune a learner copy of `model` (left untouched) on the restricted training set.

    Returns the test curve: one record per epoch, epoch 0 being before any step. `seed` fixes the
    fresh head, adapters, batch order and any noise; the global RNG is restored afterwards, so an
    attack inside a SOPHON run does not replay the simulation's draws. A diverged attack (non-finite
    loss or metric) leaves the attacker with the start's epoch-0 metric for the remaining epochs.
    `after(learner)` sees the fine-tuned learner before it is dropped.
    """
    with seeded(seed, task.device):
        generator = torch.Generator().manual_seed(seed)
        per_epoch = _steps_per_epoch(len(task.restricted_train), attack.bs)
        total = attack.epochs * per_epoch
        if attack.rescale:
            model = rescaled(model)
        start = (benign_phase(model, task, *attack.benign_optimizer, attack.bs, total, generator)
                 if attack.method == "benign" else model)
        learner = task.learner(start)
        if attack.standardize:
            learner = standardize_head(learner, task, attack.bs)
        if attack.method == "lora":
            learner = add_lora(learner, task.head_prefix)
        optimizer = make_optimizer(attack.optimizer, trainable(learner, task, attack.method), attack.lr)
        schedule = make_schedule(attack.schedule, optimizer, total)
        loader = DataLoader(task.restricted_train, batch_size=attack.bs, shuffle=True, generator=generator)
        precision = precision_of(task)
        scaler = precision.scaler()
        learner.eval()
        with precision.autocast():
            curve = [{"epoch": 0, **task.evaluate_restricted(learner)}]
        diverged = False
        for epoch in range(1, attack.epochs + 1):
            # A linear probe keeps the body as it is, BatchNorm statistics included.
            learner.train(attack.method != "head")
            losses = []
            for batch in tqdm(loader, desc=f"fine-tune {epoch}/{attack.epochs}", leave=False, disable=not progress):
                optimizer.zero_grad(set_to_none=True)
                with precision.autocast():
                    loss = task.finetune_loss(learner, move(batch, task.device))
                if not torch.isfinite(loss):
                    diverged = True
                    break
                optimizer_step(loss, optimizer, scaler)
                schedule.step()
                losses.append(loss.item())
            learner.eval()
            with precision.autocast():
                record = {} if diverged else task.evaluate_restricted(learner)
            if diverged or not all(math.isfinite(v) for v in record.values()):
                # Diverged: the attacker is left with the model they started from, for every epoch left.
                curve += [dict(curve[0], epoch=e, diverged=True) for e in range(epoch, attack.epochs + 1)]
                break
            curve.append({"epoch": epoch, "train_loss": sum(losses) / max(1, len(losses)), **record})
        if after is not None:
            after(learner)
    return curve
