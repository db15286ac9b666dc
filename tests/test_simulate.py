import torch
import torch.nn.functional as F
from torch import nn

from sophon.losses import inverse_cross_entropy
from sophon.simulate import Environment, Simulator, sample_environments
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
