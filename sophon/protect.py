"""The SOPHON loop (DESIGN §1): fine-tuning suppression (FTS) then normal-training reinforcement
(NTR), `total_loop` times, with periodic evaluation, a relative guard on the original metric,
checkpoints and resumption.

Run folder: args.json, metrics.jsonl, checkpoints/{last,final}.safetensors (+ .json sidecars).
"""

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from sophon import checkpoint, distributed
from sophon.attack import Attack, finetune
from sophon.batchnorm import has_batchnorm, recalibrate_
from sophon.config import LoopConfig, RunConfig
from sophon.precision import of as precision_of
from sophon.rescale import require_pairs, rescale_
from sophon.rng import draw_seed, seeded
from sophon.simulate import AttackerDistribution, Environment, Simulator
from sophon.task import Task, batch_size_of, draw_batch, index_batch, move

CLIP_NORM = 0.5  # DESIGN §1: the outer gradient's norm is clipped to 0.5


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class ProtectConfig(LoopConfig):
    """The loop's fields (sophon.config.LoopConfig, defaults there) and the simulated attackers they
    describe, as the Protector runs them."""
    seed: int = RunConfig.seed
    # Fixed attackers: averaged at every FTS step, and the first serves the short fine-tuning test.
    # None: the one the flags describe, plain SGD at fast_lr with batch bs.
    environments: list[Environment] | None = None
    # Sampled attackers: max(1, envs) new environments from `distribution` at every FTS step, averaged with
    # the fixed `environments` when `anchor` (else those only serve the short test); None: fixed only.
    distribution: AttackerDistribution | None = None

    def __post_init__(self):
        if self.environments is None:
            self.environments = [Environment("sgd", self.fast_lr, self.bs)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ProtectConfig":
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if d.get("environments"):
            d["environments"] = [Environment(**e) for e in d["environments"]]
        if d.get("distribution"):
            dist = dict(d["distribution"], batch_sizes=tuple(d["distribution"]["batch_sizes"]))
            d["distribution"] = AttackerDistribution(**dist)
        return cls(**d)


def within_guard(task: Task, value: float, reference: float, floor: float) -> bool:
    if floor <= 0 or not math.isfinite(reference):
        return math.isfinite(value)
    if task.original_higher_is_better:
        return value >= floor * reference
    return value <= reference / floor  # lower is better (perplexity, MSE): allow 1/floor growth


class Protector:
    """Owns the optimizers and state of one SOPHON run; `run()` executes the remaining iterations."""

    def __init__(self, model: nn.Module, task: Task, config: ProtectConfig, run_dir: str | Path,
                 meta: dict | None = None):
        self.model, self.task, self.config = model, task, config
        self.run_dir = Path(run_dir)
        self.meta = meta or {}
        params = [p for p in model.parameters() if p.requires_grad]
        self.fts_opt = torch.optim.Adam(params, lr=config.alpha * config.lr)
        self.ntr_opt = torch.optim.Adam(params, lr=config.beta * config.lr)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.precision = precision_of(task)
        self.ntr_scaler = self.precision.scaler()
        self.simulator = Simulator(task, config.adaptation_steps, config.query_fraction, self.generator,
                                   config.suppress_every, config.late_weight, config.query_bs)
        # --canonical_scale: the BatchNorm-fed channels θ is kept at default-init norm on
        # (docs/experiments/image-weight-scale.md).
        self.scale_pairs = require_pairs(model, "--canonical_scale") if config.canonical_scale else []
        self.canonicalise()
        self.iteration = 0
        self.fts_index = 0  # FTS steps taken before this one (which fixed attacker's turn, with `cycle`)
        self.reference: dict[str, float] = {}  # original metrics before SOPHON
        self.good_state = copy.deepcopy(model.state_dict())
        self.good_iteration = 0  # the iteration good_state (and checkpoints/last) comes from
        self.status = "running"

    # ---- one iteration ---------------------------------------------------------------------
    def environments(self) -> list[Environment]:
        """This FTS step's simulated attackers: the fixed ones (all, or with `cycle` the next in turn), or
        fresh draws (with the fixed beside)."""
        dist = self.config.distribution
        if self.config.attackers == "cycle":
            # The turn follows from the iteration (not a counter), so a resumed run goes on where it stopped.
            fixed = self.config.environments
            return [fixed[self.fts_index % len(fixed)]]
        if not dist:
            return list(self.config.environments)
        drawn = [dist.draw(self.generator) for _ in range(max(1, self.config.envs))]
        return list(self.config.environments) + drawn if self.config.anchor else drawn

    def fts_step(self) -> dict:
        self.model.train()
        envs = self.environments()
        # Each environment gets its own seed (fresh head, noise, batches) from the run's generator, so
        # the step is the same whichever process simulates it, and resumable.
        seeds = [draw_seed(self.generator) for _ in envs]
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        grads = [torch.zeros_like(p) for _, p in params]
        present = torch.zeros(len(params), device=self.task.device)  # environments that gave each a gradient
        losses = torch.zeros(3, device=self.task.device)  # suppression, fine-tuning, finite environments
        for env, seed in distributed.shard(list(zip(envs, seeds))):
            with seeded(seed, self.task.device):
                result = self.simulator.suppression_gradient(self.model, env, torch.Generator().manual_seed(seed))
            if result.diverged:
                continue
            for i, (n, _) in enumerate(params):
                if n in result.gradient:
                    grads[i] += result.gradient[n]
                    present[i] += 1
            losses += torch.tensor([result.suppression_loss, result.finetune_loss, 1.0], device=losses.device)
        record = {}
        if self.config.probe_weight > 0:
            # The closed-form linear probe: one more attacker, weighted, simulated by the main process.
            seed = draw_seed(self.generator)
            probe = torch.zeros(1, device=self.task.device)
            if distributed.is_main():
                with seeded(seed, self.task.device):
                    result = self.simulator.probe_gradient(self.model, self.config.bs,
                                                           torch.Generator().manual_seed(seed),
                                                           support_size=self.config.probe_support,
                                                           ridge=self.config.probe_ridge)
                for i, (n, _) in enumerate(params):
                    if n in result.gradient:
                        grads[i] += self.config.probe_weight * len(envs) * result.gradient[n]
                        present[i] += 1
                probe += result.suppression_loss
            losses = torch.cat([losses, probe])
        *grads, present, losses = distributed.sum_tensors(grads + [present, losses])  # a no-op alone
        finite = int(losses[2].item())
        record["diverged_attackers"] = len(envs) - finite
        if finite == 0 and not self.config.probe_weight > 0:
            # Every simulated attacker blew up: no information about θ in this step, and no update.
            self.fts_opt.zero_grad(set_to_none=True)
            return record
        # The mean over the attackers that stayed finite (the probe alone counts as one when none did).
        divisor = finite or len(envs)
        suppression, finetune_loss = (losses[:2] / divisor).tolist()
        if self.config.probe_weight > 0:
            record["probe_loss"] = losses[3].item()
        if finite:
            record.update(suppression_loss=suppression, finetune_loss=finetune_loss)
        if not all(math.isfinite(v) for v in record.values()):
            raise NonFiniteLossError(f"suppression loss is {suppression}"
                                     + (f", probe loss {record['probe_loss']}" if "probe_loss" in record else ""))
        self.fts_opt.zero_grad(set_to_none=True)
        for (_, p), g, seen in zip(params, grads, present):
            if seen > 0:  # a parameter no simulated learner shares (θ's own head) keeps no gradient
                p.grad = g / divisor
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.grad is not None], CLIP_NORM)
        self.fts_opt.step()
        self.canonicalise()
        return {**record, "fts_grad_norm": float(grad_norm)}

    def ntr_step(self) -> dict:
        with seeded(draw_seed(self.generator), self.task.device):
            return self._ntr_step()

    def _ntr_step(self) -> dict:
        """Data-parallel: every process draws the same batch and trains on its share of the rows; the
        gradients are averaged, which is the whole batch's gradient when the shares are equal."""
        self.model.train()
        batch = move(draw_batch(self.task.original_train, self.config.bs, self.generator), self.task.device)
        if distributed.world() > 1:
            batch = index_batch(batch, torch.tensor(distributed.shard(range(batch_size_of(batch)))))
        self.ntr_opt.zero_grad(set_to_none=True)
        with self.precision.autocast():
            loss = self.task.original_loss(self.model, batch)
        self.ntr_scaler.scale(loss).backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        if distributed.world() > 1:
            *grads, total = distributed.sum_tensors([p.grad for p in params] + [loss.detach().reshape(1)])
            for p, g in zip(params, grads):
                p.grad.copy_(g / distributed.world())
            loss = total[0] / distributed.world()
        # Checked after the all-reduce, so that every process sees the same loss and stops together.
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"original-domain loss is {loss.item()}")
        self.ntr_scaler.step(self.ntr_opt)
        self.ntr_scaler.update()
        self.canonicalise()
        return {"original_loss": loss.item()}

    def canonicalise(self) -> None:
        """The same function at default-init channel norms: what an attacker's rescale=1 does first."""
        if self.scale_pairs:
            rescale_(self.model, self.scale_pairs)

    def evaluate(self) -> dict:
        """Evaluated by the main process alone (the others wait), then shared: the guard decides alike."""
        return distributed.broadcast(self._evaluate() if distributed.is_main() else None)

    def original_metrics(self) -> dict:
        """On a copy with recalibrated BatchNorm statistics (--recalibrate_bn): the running ones lag the
        weights, and the run's own state stays as it was, so the trajectory does not depend on evaluation."""
        model = self.model
        if self.config.recalibrate_bn and has_batchnorm(model):
            model = recalibrate_(copy.deepcopy(model), self.task, self.config.seed)
        model.eval()
        with self.precision.autocast():
            return {f"original_{k}": v for k, v in self.task.evaluate_original(model).items()}

    def finalise(self) -> None:
        """The released model's BatchNorm statistics, recomputed on its final weights (--recalibrate_bn)."""
        if self.config.recalibrate_bn:  # a no-op without BatchNorm
            recalibrate_(self.model, self.task, self.config.seed)

    def _evaluate(self) -> dict:
        metrics = self.original_metrics()
        if self.config.finetune_epochs > 0:
            env = self.config.environments[0]
            attack = Attack(optimizer=env.optimizer, lr=env.lr, bs=env.batch_size, epochs=self.config.finetune_epochs)
            curve = finetune(self.model, self.task, attack, seed=self.config.seed, progress=False)
            metrics[f"finetuned_{self.task.restricted_metric}"] = curve[-1][self.task.restricted_metric]
        return metrics

    # ---- persistence -----------------------------------------------------------------------
    def save(self, name: str) -> Path:
        tensors = {checkpoint.MODEL_PREFIX + k: v for k, v in self.model.state_dict().items()}
        meta = dict(self.meta, iteration=self.iteration, status=self.status, reference=self.reference,
                    config=self.config.to_dict())
        for prefix, opt in (("fts_opt", self.fts_opt), ("ntr_opt", self.ntr_opt)):
            t, scalars = checkpoint.optimizer_tensors(opt, prefix)
            tensors.update(t)
            meta[prefix] = scalars
        tensors["generator_state"] = self.generator.get_state()
        meta["ntr_scaler"] = self.ntr_scaler.state_dict()  # empty unless fp16
        path = self.run_dir / "checkpoints" / name
        return checkpoint.save(path, tensors, meta) if distributed.is_main() else path

    def restore(self, name: str | Path) -> None:
        tensors, meta = checkpoint.load(name if Path(name).is_absolute() else self.run_dir / "checkpoints" / name)
        state = checkpoint.model_state(tensors)
        self.model.load_state_dict(state)
        for prefix, opt in (("fts_opt", self.fts_opt), ("ntr_opt", self.ntr_opt)):
            checkpoint.restore_optimizer(opt, prefix, tensors, meta[prefix])
        self.generator.set_state(tensors["generator_state"].cpu())
        if meta.get("ntr_scaler"):
            self.ntr_scaler.load_state_dict(meta["ntr_scaler"])
        self.iteration = meta["iteration"]
        self.reference = meta.get("reference", {})
        self.good_state = copy.deepcopy(self.model.state_dict())
        self.good_iteration = self.iteration
        self.status = "running"
        self._drop_metrics_after(self.iteration)

    def _drop_metrics_after(self, iteration: int) -> None:
        """Forget logged iterations the checkpoint does not hold (they will be run again)."""
        path = self.run_dir / "metrics.jsonl"
        if path.exists() and distributed.is_main():
            lines = [l for l in path.read_text().splitlines() if l.strip()]
            kept = [l for l in lines if json.loads(l).get("iteration", 0) <= iteration]
            path.write_text("".join(l + "\n" for l in kept))

    def log(self, record: dict) -> None:
        if not distributed.is_main():
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    # ---- the loop --------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.reference:
            self.reference = distributed.broadcast(self.original_metrics() if distributed.is_main() else None)
            self.log({"iteration": 0, **self.reference})
            self.save("last")
        watched = f"original_{self.task.original_metric}"
        bar = tqdm(range(self.iteration + 1, cfg.total_loop + 1), desc="SOPHON", initial=self.iteration,
                   total=cfg.total_loop, dynamic_ncols=True, disable=not distributed.is_main())
        for it in bar:
            start = time.perf_counter()
            record: dict = {"iteration": it}
            try:
                for j in range(cfg.ml_loop):
                    self.fts_index = (it - 1) * cfg.ml_loop + j
                    record.update(self.fts_step())
                for _ in range(cfg.nl_loop):
                    record.update(self.ntr_step())
            except KeyboardInterrupt:
                # `last` stays the last guard-checked state, the one --resume continues from. The weights
                # as they were (possibly mid-iteration, never checked) are kept beside it for inspection.
                self.status = "interrupted"
                self.save("interrupted")
                raise
            except NonFiniteLossError as err:
                self.model.load_state_dict(self.good_state)
                self.status = "nan"
                self.log({"iteration": it, "error": str(err)})
                last = self.run_dir / "checkpoints" / "last.safetensors"
                saved = f", saved as {last}" if last.exists() else ""
                raise NonFiniteLossError(
                    f"{err} at iteration {it}; the model was reset to its last good state, from iteration "
                    f"{self.good_iteration}{saved}. Lower --alpha or --lr, and resume with --resume.") from None
            self.iteration = it
            record["seconds"] = time.perf_counter() - start
            if it % cfg.test_iterval == 0 or it == cfg.total_loop:
                record.update(self.evaluate())
                if within_guard(self.task, record[watched], self.reference[watched], cfg.guard):
                    self.good_state = copy.deepcopy(self.model.state_dict())
                    self.good_iteration = it
                    self.save("last")
                else:
                    record["guard"] = (f"{watched} {record[watched]:.4g} crossed the floor "
                                       f"{cfg.guard} x {self.reference[watched]:.4g}")
                    self.model.load_state_dict(self.good_state)
                    if cfg.guard_action == "stop":
                        self.status = "guard_stopped"
                        self.log(record)
                        break
                    for group in self.fts_opt.param_groups:
                        group["lr"] *= 0.5
            self.log(record)
            bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()
                             if k in ("suppression_loss", "probe_loss", "original_loss") or k.startswith("finetuned_")})
        if self.status == "running":
            self.status = "finished"
        self.finalise()
        self.save("final")
        return {"status": self.status, "iteration": self.iteration, "reference": self.reference}


def protect(model: nn.Module, task: Task, config: ProtectConfig, run_dir: str | Path,
            meta: dict | None = None, resume: bool = False) -> dict:
    """Make `model` non-fine-tunable on the task's restricted domain, in place. Returns a summary."""
    protector = Protector(model, task, config, run_dir, meta)
    if resume:
        protector.restore("last")
    return protector.run()
