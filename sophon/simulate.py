"""Fine-tuning simulation (DESIGN §1, FTS): what an attacker's fine-tuning would do to θ.

A `Simulator` has two verbs, as learn2learn's MAML wrapper: `clone` makes a learner from θ (an
attacker's copy with a fresh head), and `suppression_gradient` fine-tunes it K steps on the
restricted domain and returns the first-order gradient of the suppression loss, mapped back onto
θ's parameter names. No gradient flows through the inner updates (first-order MAML).
"""

import math
import random
from dataclasses import asdict, dataclass

import torch
from torch import nn

from sophon.optim import make_optimizer
from sophon.task import Task, draw_batch, move, split_batch

# Learning-rate ranges an attacker plausibly uses with each optimizer (log-uniform sampling).
OPTIMIZER_LR_RANGE = {
    "sgd": (1e-3, 1e-1),
    "sgd-momentum": (1e-4, 1e-2),
    "adam": (1e-5, 1e-3),
    "adamw": (1e-5, 1e-3),
    "rmsprop": (1e-5, 1e-3),
}


@dataclass(frozen=True)
class Environment:
    """One simulated fine-tuning set-up of an attacker."""

    optimizer: str = "sgd"
    lr: float = 1e-4
    batch_size: int = 32

    def make(self, params) -> torch.optim.Optimizer:
        return make_optimizer(self.optimizer, params, self.lr)

    def to_dict(self) -> dict:
        return asdict(self)


def sample_environments(n: int, batch_size: int, seed: int) -> list[Environment]:
    """`--envs N`: N environments with optimizer, lr (log-uniform in its range) and batch size varied."""
    rng = random.Random(seed)
    envs = []
    for i in range(n):
        name = list(OPTIMIZER_LR_RANGE)[i % len(OPTIMIZER_LR_RANGE)] if i < len(OPTIMIZER_LR_RANGE) \
            else rng.choice(list(OPTIMIZER_LR_RANGE))
        low, high = OPTIMIZER_LR_RANGE[name]
        lr = math.exp(rng.uniform(math.log(low), math.log(high)))
        bs = max(2, int(batch_size * rng.choice([0.5, 1.0, 2.0])))
        envs.append(Environment(name, lr, bs))
    return envs


@dataclass
class SimulationResult:
    gradient: dict[str, torch.Tensor]  # d(suppression)/dθ', keyed by θ's parameter names
    suppression_loss: float  # mean over the K inner steps
    finetune_loss: float


class Simulator:
    def __init__(self, task: Task, adaptation_steps: int, query_fraction: float = 0.1,
                 generator: torch.Generator | None = None):
        if adaptation_steps < 1:
            raise ValueError("--adaptation_steps must be at least 1")
        self.task = task
        self.adaptation_steps = adaptation_steps
        self.query_fraction = query_fraction
        self.generator = generator or torch.Generator().manual_seed(0)

    def clone(self, model: nn.Module) -> nn.Module:
        learner = self.task.learner(model)
        learner.train()
        return learner

    def shared_names(self, model: nn.Module, learner: nn.Module) -> list[str]:
        """Learner parameters that are θ's own (everything but the attacker's fresh head)."""
        theta = dict(model.named_parameters())
        prefix = self.task.head_prefix
        return [n for n, p in learner.named_parameters()
                if n in theta and theta[n].requires_grad and p.requires_grad
                and not (prefix and (n == prefix or n.startswith(prefix + ".")))]

    def suppression_gradient(self, model: nn.Module, env: Environment) -> SimulationResult:
        learner = self.clone(model)
        names = self.shared_names(model, learner)
        params = dict(learner.named_parameters())
        shared = [params[n] for n in names]
        total = [torch.zeros_like(p) for p in shared]
        optimizer = env.make(learner.parameters())
        suppression, finetune = 0.0, 0.0
        for _ in range(self.adaptation_steps):
            batch = draw_batch(self.task.restricted_train, env.batch_size, self.generator)
            support, query = split_batch(move(batch, self.task.device), self.query_fraction, self.generator)
            optimizer.zero_grad(set_to_none=True)
            loss = self.task.finetune_loss(learner, support)
            loss.backward()
            optimizer.step()
            # First-order: the suppression loss is differentiated at θ'_k, treating θ'_k as a leaf.
            query_loss = self.task.suppression_loss(learner, query)
            grads = torch.autograd.grad(query_loss, shared, allow_unused=True)
            for acc, g in zip(total, grads):
                if g is not None:
                    acc.add_(g)
            suppression += query_loss.item()
            finetune += loss.item()
        k = self.adaptation_steps
        gradient = {n: g / k for n, g in zip(names, total)}
        return SimulationResult(gradient, suppression / k, finetune / k)
