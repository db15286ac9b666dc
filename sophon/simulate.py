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

from sophon.attack import AttackSpecError, parse_attacks
from sophon.config import LoopConfig
from sophon.optim import make_optimizer
from sophon.precision import of as precision_of, optimizer_step
from sophon.probe import probe_loss
from sophon.task import Task, batch_size_of, draw_batch, index_batch, move, split_batch
from sophon.train import benign_phase

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
    head_only: bool = False  # a linear probe: only the fresh head moves
    benign_steps: int = 0  # steps on original-domain data before the restricted ones

    def make(self, params) -> torch.optim.Optimizer:
        return make_optimizer(self.optimizer, params, self.lr)

    def to_dict(self) -> dict:
        return asdict(self)


def sample_environments(n: int, batch_size: int, seed: int) -> list[Environment]:
    """`--envs N` with fixed attackers: N environments drawn once, optimizer, lr (log-uniform in its
    range) and batch size varied."""
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


def environments_from_specs(text: str, batch_size: int, steps: int) -> list[Environment]:
    """`--simulate`: fixed simulated attackers written as attack specs (optimizer[:lr][:bs=N]
    [:method=head|benign]), e.g. "sgd:0.1,sgd-momentum:0.01"; bs defaults to the loop's, a benign
    episode runs `steps` original-domain steps first. Epochs do not apply (the simulation runs K steps)."""
    envs = []
    for attack in parse_attacks(text, bs=batch_size):
        if (attack.method == "lora" or attack.schedule != "constant" or attack.benign is not None or attack.rescale
                or attack.standardize):
            raise AttackSpecError(f"--simulate {attack.label!r}: the simulation runs full, head or benign attackers "
                                  "at a constant lr, a benign phase with the attack's own optimizer; drop method=lora, "
                                  "schedule=, benign=, rescale= and standardize=")
        envs.append(Environment(attack.optimizer, attack.lr, attack.bs, attack.method == "head",
                                steps if attack.method == "benign" else 0))
    return envs


@dataclass(frozen=True)
class AttackerDistribution:
    """`--attackers sampled`: a new simulated attacker every FTS step, as TAR draws one per outer step.

    optimizer uniform over `usual_lr`'s keys (the attack suite's optimizers); lr log-uniform over
    usual × 10^[-decades, +decades]; batch size uniform over `batch_sizes`; a linear probe with
    probability `head_share`; a benign-first episode (`benign_steps` original-domain steps) with
    probability `benign_share`. Recorded in args.json and in every checkpoint's config."""

    usual_lr: dict
    decades: float = 1.0
    batch_sizes: tuple = (16, 32, 64)
    head_share: float = 0.0
    benign_share: float = 0.0
    benign_steps: int = 0

    def draw(self, generator: torch.Generator) -> Environment:
        u = torch.rand(4, generator=generator).tolist()
        names = sorted(self.usual_lr)
        name = names[int(torch.randint(len(names), (1,), generator=generator))]
        bs = self.batch_sizes[int(torch.randint(len(self.batch_sizes), (1,), generator=generator))]
        lr = self.usual_lr[name] * 10 ** (self.decades * (2 * u[0] - 1))
        head = u[1] < self.head_share
        benign = self.benign_steps if (not head and u[2] < self.benign_share) else 0
        return Environment(name, lr, bs, head, benign)

    def to_dict(self) -> dict:
        return asdict(self)


def _requires_grad(params: list[torch.Tensor], flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


def step_weights(steps: int, every: int = 1, late: float = 0.0) -> dict[int, float]:
    """Which inner steps k = 1..K give a suppression gradient, and its weight: every `every`-th step
    and always the last, weighted ∝ (k / K)^late (0: uniform), summing to 1."""
    if every < 1:
        raise ValueError("--suppress_every must be at least 1")
    chosen = [k for k in range(1, steps + 1) if k % every == 0 or k == steps]
    raw = {k: (k / steps) ** late for k in chosen}
    total = sum(raw.values())
    return {k: w / total for k, w in raw.items()}


@dataclass
class SimulationResult:
    gradient: dict[str, torch.Tensor]  # d(suppression)/dθ', keyed by θ's parameter names
    suppression_loss: float  # mean over the K inner steps
    finetune_loss: float
    diverged: bool = False  # the simulated attacker's own loss left the finite numbers: no gradient


class Simulator:
    def __init__(self, task: Task, adaptation_steps: int, query_fraction: float = 0.1,
                 generator: torch.Generator | None = None, suppress_every: int = 1, late_weight: float = 0.0,
                 query_bs: int | None = None):
        if adaptation_steps < 1:
            raise ValueError("--adaptation_steps must be at least 1")
        self.task = task
        self.adaptation_steps = adaptation_steps
        self.query_fraction = query_fraction
        self.query_bs = query_bs
        self.weights = step_weights(adaptation_steps, suppress_every, late_weight)
        self.generator = generator or torch.Generator().manual_seed(0)

    def clone(self, model: nn.Module, env: Environment | None = None,
              generator: torch.Generator | None = None) -> nn.Module:
        start = model
        if env is not None and env.benign_steps:
            start = benign_phase(model, self.task, env.optimizer, env.lr, env.batch_size, env.benign_steps,
                                 generator or self.generator)
        learner = self.task.learner(start)
        learner.train()
        return learner

    def shared_names(self, model: nn.Module, learner: nn.Module) -> list[str]:
        """Learner parameters that are θ's own (everything but the attacker's fresh head)."""
        theta = dict(model.named_parameters())
        prefix = self.task.head_prefix
        return [n for n, p in learner.named_parameters()
                if n in theta and theta[n].requires_grad and p.requires_grad
                and not (prefix and (n == prefix or n.startswith(prefix + ".")))]

    def _support_and_query(self, batch_size: int, generator: torch.Generator | None = None):
        generator = generator or self.generator
        if self.query_bs is None:
            batch = draw_batch(self.task.restricted_train, batch_size, generator)
            return split_batch(move(batch, self.task.device), self.query_fraction, generator)
        # A separate query: a usable gradient instead of the 1-3 examples a 10 % share of a small batch gives.
        return self._disjoint(batch_size, self.query_bs, generator)

    def _disjoint(self, support_size: int, query_size: int, generator: torch.Generator):
        """A support and a query without a shared example: one draw without replacement, cut in two."""
        batch = move(draw_batch(self.task.restricted_train, support_size + query_size, generator), self.task.device)
        order = torch.arange(batch_size_of(batch))
        # A set smaller than both: the query keeps its size (at most all but one example), the support shrinks.
        n = min(support_size, len(order) - min(query_size, len(order) - 1))
        return index_batch(batch, order[:n]), index_batch(batch, order[n:])

    def suppression_gradient(self, model: nn.Module, env: Environment,
                             generator: torch.Generator | None = None) -> SimulationResult:
        """`generator` draws this environment's batches (the simulator's own when None): an
        environment with its own generator gives the same result whichever process runs it."""
        generator = generator or self.generator
        precision = precision_of(self.task)
        scaler = precision.scaler()
        learner = self.clone(model, env, generator)
        names = self.shared_names(model, learner)
        params = dict(learner.named_parameters())
        shared = [params[n] for n in names]
        total = [torch.zeros_like(p) for p in shared]
        frozen = []
        if env.head_only:
            # A linear probe as the attack runs it: the body in eval mode (BatchNorm statistics kept), and the
            # inner steps back-propagate into the head only; the body takes a gradient only at the query.
            learner.eval()
            trainable = list(learner.get_submodule(self.task.head_prefix).parameters())
            frozen = shared  # θ's own parameters: everything but the fresh head
        else:
            trainable = list(learner.parameters())
        optimizer = env.make(trainable)
        suppression, finetune = 0.0, 0.0
        for k in range(1, self.adaptation_steps + 1):
            support, query = self._support_and_query(env.batch_size, generator)
            optimizer.zero_grad(set_to_none=True)
            _requires_grad(frozen, False)
            with precision.autocast():
                loss = self.task.finetune_loss(learner, support)
            if not torch.isfinite(loss):
                # A sampled attacker at the top of its lr range can blow up: that tells nothing about θ,
                # and its gradient is noise or NaN, so the episode is dropped (not the run stopped).
                return SimulationResult({}, math.nan, math.nan, diverged=True)
            optimizer_step(loss, optimizer, scaler)
            _requires_grad(frozen, True)
            finetune += loss.item()
            if k not in self.weights:
                continue
            # First-order: the suppression loss is differentiated at θ'_k, treating θ'_k as a leaf.
            with precision.autocast():
                query_loss = self.task.suppression_loss(learner, query)
            if not torch.isfinite(query_loss) and not scaler.is_enabled():
                return SimulationResult({}, math.nan, math.nan, diverged=True)
            scale = scaler.get_scale() if scaler.is_enabled() else 1.0
            grads = torch.autograd.grad(scaler.scale(query_loss), shared, allow_unused=True)
            if scale != 1.0 and not all(torch.isfinite(g).all() for g in grads if g is not None):
                continue  # an fp16 overflow: this step gives no gradient (the inner scaler adapts)
            for acc, g in zip(total, grads):
                if g is not None:
                    acc.add_(g, alpha=self.weights[k] / scale)
            suppression += self.weights[k] * query_loss.item()
        gradient = dict(zip(names, total))
        return SimulationResult(gradient, suppression, finetune / self.adaptation_steps)

    def probe_gradient(self, model: nn.Module, batch_size: int, generator: torch.Generator | None = None,
                       support_size: int | None = None, ridge: float = LoopConfig.probe_ridge) -> SimulationResult:
        """The gradient of the closed-form linear probe's suppression loss (sophon.probe) at θ's body:
        the head is fitted on `support_size` (default 2 × `batch_size`) restricted examples with penalty
        `ridge` and judged on a disjoint query of `query_bs` (default `batch_size`)."""
        support, query = self._disjoint(support_size or 2 * batch_size, self.query_bs or batch_size,
                                        generator or self.generator)
        learner = self.task.learner(model)
        learner.eval()  # a linear probe keeps the body as it is, BatchNorm statistics included
        names = self.shared_names(model, learner)
        params = dict(learner.named_parameters())
        with precision_of(self.task).autocast():
            loss = probe_loss(self.task, learner, support, query, ridge)
        grads = torch.autograd.grad(loss, [params[k] for k in names], allow_unused=True)
        gradient = {k: g for k, g in zip(names, grads) if g is not None}
        return SimulationResult(gradient, loss.item(), 0.0)
