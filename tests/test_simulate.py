import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sophon.attack import AttackSpecError
from sophon.losses import inverse_cross_entropy
from sophon.simulate import Environment, Simulator, environments_from_specs, sample_environments
from sophon.task import split_batch
from tests.toy import Headed, ToyTask


class FixedHeadTask(ToyTask):
    """The learner keeps θ's head so the gradient can be written out by hand."""

    head_prefix = None

    def learner(self, model):
        import copy
        return copy.deepcopy(model)


def test_first_order_gradient_matches_hand_computation():
    torch.manual_seed(0)
    task = FixedHeadTask()
    model = Headed()
    lr, steps = 0.1, 2
    sim = Simulator(task, steps, query_fraction=0.25, generator=torch.Generator().manual_seed(7))
    result = sim.suppression_gradient(model, Environment("sgd", lr, 8))

    # Replay the same random draws and do the inner SGD and the first-order gradient by hand.
    g = torch.Generator().manual_seed(7)
    W1, b1 = model.body.weight.detach().clone(), model.body.bias.detach().clone()
    W2, b2 = model.head.weight.detach().clone(), model.head.bias.detach().clone()
    total = [torch.zeros_like(t) for t in (W1, b1, W2, b2)]
    x_all, y_all = task.restricted_train.tensors
    for _ in range(steps):
        idx = torch.randperm(len(x_all), generator=g)[:8]
        support, query = split_batch((x_all[idx], y_all[idx]), 0.25, g)
        params = [t.clone().requires_grad_() for t in (W1, b1, W2, b2)]
        logits = (support[0] @ params[0].T + params[1]) @ params[2].T + params[3]
        grads = torch.autograd.grad(F.cross_entropy(logits, support[1]), params)
        W1, b1, W2, b2 = [(p - lr * gr).detach() for p, gr in zip(params, grads)]
        adapted = [t.clone().requires_grad_() for t in (W1, b1, W2, b2)]
        q = (query[0] @ adapted[0].T + adapted[1]) @ adapted[2].T + adapted[3]
        for acc, gr in zip(total, torch.autograd.grad(inverse_cross_entropy(q, query[1]), adapted)):
            acc += gr
    names = ["body.weight", "body.bias", "head.weight", "head.bias"]
    for name, expected in zip(names, total):
        torch.testing.assert_close(result.gradient[name], expected / steps)


class NormedHeaded(nn.Module):
    """A body with BatchNorm, whose running statistics differ from any batch's."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        self.head = nn.Linear(3, 2)
        with torch.no_grad():
            self.body[1].running_mean.fill_(0.5)
            self.body[1].running_var.fill_(2.0)

    def forward(self, x):
        return self.head(self.body(x))


def test_head_only_attacker_is_a_linear_probe_of_the_frozen_body():
    """As the attack's method=head: the body in eval mode, only the fresh head moves; the body's
    gradient is the suppression loss's at each probed head, replayed here by hand."""
    task, model, lr, steps = ToyTask(), NormedHeaded(), 0.5, 3
    model.train()
    torch.manual_seed(5)
    sim = Simulator(task, steps, query_fraction=0.25, generator=torch.Generator().manual_seed(7))
    result = sim.suppression_gradient(model, Environment("sgd", lr, 8, head_only=True))

    torch.manual_seed(5)
    head = nn.Linear(3, 2)  # the learner's fresh head, drawn from the same global state
    body = copy.deepcopy(model.body).eval()
    g = torch.Generator().manual_seed(7)
    x_all, y_all = task.restricted_train.tensors
    total = {n: torch.zeros_like(p) for n, p in body.named_parameters()}
    for _ in range(steps):
        idx = torch.randperm(len(x_all), generator=g)[:8]
        support, query = split_batch((x_all[idx], y_all[idx]), 0.25, g)
        with torch.no_grad():
            features = body(support[0])
        w, b = head.weight.detach().requires_grad_(), head.bias.detach().requires_grad_()
        gw, gb = torch.autograd.grad(F.cross_entropy(features @ w.T + b, support[1]), (w, b))
        head.weight.data, head.bias.data = w - lr * gw, b - lr * gb
        grads = torch.autograd.grad(inverse_cross_entropy(head(body(query[0])), query[1]), list(body.parameters()))
        for (n, _), gr in zip(body.named_parameters(), grads):
            total[n] += gr / steps
    assert set(result.gradient) == {f"body.{n}" for n in total}
    for n, expected in total.items():
        torch.testing.assert_close(result.gradient[f"body.{n}"], expected)
    assert model.training and torch.equal(model.body[1].running_mean, torch.full((3,), 0.5))


def test_fresh_head_gets_no_outer_gradient_and_theta_is_untouched():
    task = ToyTask()
    model = Headed()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = Simulator(task, 3).suppression_gradient(model, Environment("adam", 1e-2, 16))
    assert set(result.gradient) == {"body.weight", "body.bias"}
    assert any(g.abs().sum() > 0 for g in result.gradient.values())
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])


def test_sampled_environments_cover_optimizers_and_keep_lr_in_range():
    envs = sample_environments(7, 32, seed=1)
    assert {e.optimizer for e in envs} == {"sgd", "sgd-momentum", "adam", "adamw", "rmsprop"}
    assert all(e.batch_size in (16, 32, 64) for e in envs)
    assert all(1e-5 <= e.lr <= 1e-1 for e in envs)


def test_step_weights_favour_late_steps_and_sum_to_one():
    from sophon.simulate import step_weights

    assert step_weights(4) == {1: 0.25, 2: 0.25, 3: 0.25, 4: 0.25}
    w = step_weights(10, every=4, late=1.0)  # steps 4, 8 and the last (10), weights 4:8:10
    assert list(w) == [4, 8, 10]
    assert [round(v, 6) for v in w.values()] == [round(4 / 22, 6), round(8 / 22, 6), round(10 / 22, 6)]
    assert step_weights(5, every=2, late=2.0)[5] > step_weights(5, every=2, late=0.0)[5]


def _distribution():
    from sophon.simulate import AttackerDistribution

    return AttackerDistribution({"sgd": 1e-2, "adam": 1e-3, "rmsprop": 1e-3}, decades=1.0, batch_sizes=(8, 16),
                                head_share=0.3, benign_share=0.3, benign_steps=2)


def test_sampled_attackers_differ_across_steps_and_repeat_under_the_same_seed():
    dist = _distribution()
    draws = [dist.draw(torch.Generator().manual_seed(3)) for _ in range(2)]
    assert draws[0] == draws[1]
    g = torch.Generator().manual_seed(3)
    many = [dist.draw(g) for _ in range(60)]
    assert len(set(many)) == 60  # a new attacker every step
    assert {e.optimizer for e in many} == {"sgd", "adam", "rmsprop"}
    assert {e.batch_size for e in many} == {8, 16}
    assert any(e.head_only for e in many) and any(e.benign_steps for e in many)
    for e in many:
        usual = dist.usual_lr[e.optimizer]
        assert usual / 10 <= e.lr <= usual * 10


def _record_environments(monkeypatch) -> list:
    """The environment of every suppression gradient the loop asks for, in order (the gradients still run)."""
    from sophon import protect as P

    seen = []
    real = P.Simulator.suppression_gradient
    monkeypatch.setattr(P.Simulator, "suppression_gradient",
                        lambda self, model, env, g=None: seen.append(env) or real(self, model, env, g))
    return seen


def test_protect_draws_a_new_attacker_every_fts_step(monkeypatch):
    from sophon import protect as P

    seen = _record_environments(monkeypatch)
    config = P.ProtectConfig(total_loop=4, test_iterval=10, adaptation_steps=2, bs=8, distribution=_distribution(),
                             envs=2, finetune_epochs=0, guard=0)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        P.protect(Headed(), ToyTask(), config, d)
    assert len(seen) == 8 and len(set(seen)) == 8


def test_separate_query_batch_is_disjoint_from_the_support():
    task = ToyTask()
    sim = Simulator(task, 1, generator=torch.Generator().manual_seed(0), query_bs=20)
    support, query = sim._support_and_query(16)
    assert len(support[0]) == 16 and len(query[0]) == 20
    rows = {tuple(r.tolist()) for r in support[0]}
    assert not rows & {tuple(r.tolist()) for r in query[0]}


def test_no_global_reseeding_during_a_protect_run(monkeypatch):
    """The attacks inside the loop seed inside torch.random.fork_rng only: the global stream the
    simulation draws its fresh heads from goes on, so no head is replayed after an evaluation."""
    import tempfile

    from sophon import protect as P

    config = P.ProtectConfig(total_loop=4, test_iterval=1, adaptation_steps=1, bs=8, finetune_epochs=1, guard=0)
    weights = []
    real = P.Simulator.clone

    def clone(self, model, env=None, generator=None):
        learner = real(self, model, env, generator)
        weights.append(learner.head.weight.detach().clone())  # the fresh head as drawn, before training
        return learner

    monkeypatch.setattr(P.Simulator, "clone", clone)
    with tempfile.TemporaryDirectory() as d:
        P.protect(Headed(), ToyTask(), config, d)
    assert len(weights) == 4
    assert all(not torch.equal(a, b) for i, a in enumerate(weights) for b in weights[i + 1:])


def test_anchor_keeps_the_fixed_attacker_beside_the_sampled_ones(monkeypatch):
    import tempfile

    from sophon import protect as P

    seen = _record_environments(monkeypatch)
    fixed = Environment("sgd", 0.1, 8)
    config = P.ProtectConfig(total_loop=2, test_iterval=10, adaptation_steps=1, bs=8, environments=[fixed],
                             distribution=_distribution(), envs=1, anchor=True, finetune_epochs=0, guard=0)
    with tempfile.TemporaryDirectory() as d:
        P.protect(Headed(), ToyTask(), config, d)
    assert seen[0] == fixed and seen[2] == fixed and seen[1] != fixed and seen[3] != fixed


@pytest.mark.parametrize("spec", ["adam:1e-3:method=lora", "sgd:schedule=cosine", "sgd:benign=adam/1e-3", "sgd:rescale=1",
                                  "adam:1e-2:method=head:standardize=1"])
def test_simulate_refuses_what_it_cannot_run(spec):
    with pytest.raises(AttackSpecError, match="drop method=lora, schedule=, benign=, rescale= and standardize="):
        environments_from_specs(spec, batch_size=8, steps=3)


def test_simulate_specs_become_the_fixed_attackers_of_every_fts_step(monkeypatch):
    envs = environments_from_specs("sgd:0.1, sgd-momentum:0.01:bs=16, adam:1e-2:method=head, sgd:0.05:method=benign",
                                   batch_size=8, steps=3)
    assert envs == [Environment("sgd", 0.1, 8), Environment("sgd-momentum", 0.01, 16),
                    Environment("adam", 0.01, 8, head_only=True), Environment("sgd", 0.05, 8, benign_steps=3)]

    import argparse
    import tempfile

    from sophon import protect as P
    from sophon.config import LoopConfig, field_names
    from sophon.experiment import protect_config

    args = argparse.Namespace(**{n: getattr(LoopConfig, n) for n in field_names((LoopConfig,))}, seed=0)
    args.simulate, args.bs, args.total_loop, args.finetune_epochs, args.guard = "sgd:0.1,sgd-momentum:0.01", 8, 2, 0, 0
    args.adaptation_steps, args.test_iterval = 1, 10
    config = protect_config(args, "image")
    seen = _record_environments(monkeypatch)
    with tempfile.TemporaryDirectory() as d:
        P.protect(Headed(), ToyTask(), config, d)
    assert seen == [Environment("sgd", 0.1, 8), Environment("sgd-momentum", 0.01, 8)] * 2


def test_an_attacker_that_blows_up_gives_no_gradient():
    sim = Simulator(ToyTask(), 3, generator=torch.Generator().manual_seed(0))
    result = sim.suppression_gradient(Headed(), Environment("sgd", 1e30, 8))
    assert result.diverged and result.gradient == {}
    assert not sim.suppression_gradient(Headed(), Environment("sgd", 0.1, 8)).diverged


def test_fts_step_averages_over_the_attackers_that_stayed_finite(monkeypatch, tmp_path):
    """A diverged sampled attacker is dropped, not averaged in as zero and not a reason to stop the run:
    θ's gradient is the finite attacker's alone; with none finite, θ is not moved by the FTS step."""
    from sophon import protect as P
    from sophon.simulate import SimulationResult

    model = Headed()
    direction = {n: torch.full_like(p, 0.05) for n, p in model.named_parameters() if n.startswith("body")}
    outcomes = iter([SimulationResult(direction, 1.0, 1.0), SimulationResult({}, float("nan"), float("nan"), True),
                     SimulationResult({}, float("nan"), float("nan"), True),
                     SimulationResult({}, float("nan"), float("nan"), True)])
    monkeypatch.setattr(P.Simulator, "suppression_gradient", lambda self, m, env, g=None: next(outcomes))
    config = P.ProtectConfig(environments=[Environment("sgd", 0.1, 8), Environment("sgd", 1e30, 8)],
                             total_loop=1, test_iterval=10, bs=8, finetune_epochs=0, guard=0)
    protector = P.Protector(model, ToyTask(), config, tmp_path)
    grads = []
    monkeypatch.setattr(protector.fts_opt, "step", lambda: grads.append(model.body.weight.grad.clone()))
    first = protector.fts_step()
    assert first["diverged_attackers"] == 1 and first["suppression_loss"] == 1.0
    torch.testing.assert_close(grads[0], direction["body.weight"])  # not halved by the diverged one
    second = protector.fts_step()
    assert second == {"diverged_attackers": 2} and len(grads) == 1
