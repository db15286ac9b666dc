"""The closed-form linear-probe attacker (`--probe_weight`, sophon/probe.py)."""

import tempfile

import torch
import torch.nn.functional as F

from sophon.probe import ridge_head
from sophon.simulate import Simulator
from tests.toy import Headed, ToyTask


def _blobs(n, dim, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centers = torch.randn(classes, dim, generator=g) * 4
    return centers[y] + 0.3 * torch.randn(n, dim, generator=g), y


def test_ridge_head_fits_separable_features_and_both_forms_agree():
    x, y = _blobs(40, 6, 3)
    weight, bias = ridge_head(x, y, 3, ridge=1e-3)
    assert weight.shape == (3, 6) and bias.shape == (3,)
    assert ((x @ weight.T + bias).argmax(-1) == y).all()
    # More features than examples: the n x n (dual) form; the same head as the d x d form gives.
    wide = torch.cat([x, torch.randn(40, 60, generator=torch.Generator().manual_seed(1))], 1)
    w_dual, b_dual = ridge_head(wide, y, 3, ridge=0.5)
    xc = wide - wide.mean(0)
    yc = F.one_hot(y, 3).float() - F.one_hot(y, 3).float().mean(0)
    penalty = 0.5 * xc.pow(2).sum(0).mean()
    w_primal = torch.linalg.solve(xc.T @ xc + penalty * torch.eye(66), xc.T @ yc).T
    torch.testing.assert_close(w_dual, w_primal, rtol=1e-4, atol=1e-5)


def test_ridge_head_ignores_the_scale_of_the_features():
    x, y = _blobs(30, 5, 2)
    w1, b1 = ridge_head(x, y, 2, ridge=0.1)
    w2, b2 = ridge_head(100 * x, y, 2, ridge=0.1)
    torch.testing.assert_close(100 * w2, w1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b2, b1, rtol=1e-4, atol=1e-5)


def test_probe_gradient_reaches_the_body_through_the_fitted_head():
    """The gradient counts how the fitted head moves with the features: it differs from the gradient
    through the same head held fixed, and it reaches the body only (θ's head is not the probe's)."""
    task = ToyTask(hidden=3)
    model = Headed()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sim = Simulator(task, 1, query_bs=16)
    result = sim.probe_gradient(model, 16, torch.Generator().manual_seed(0))
    assert set(result.gradient) == {"body.weight", "body.bias"}
    assert result.gradient["body.weight"].abs().sum() > 0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())

    # The same loss with the head detached from the features: another gradient.
    from sophon import probe

    real = probe.ridge_head
    detached = lambda f, *a, **k: tuple(t.detach() if t is not None else None for t in real(f, *a, **k))
    probe.ridge_head = detached
    try:
        fixed = sim.probe_gradient(model, 16, torch.Generator().manual_seed(0))
    finally:
        probe.ridge_head = real
    assert not torch.allclose(fixed.gradient["body.weight"], result.gradient["body.weight"])


def test_probe_weight_adds_the_probe_to_every_fts_step(monkeypatch):
    from sophon import protect as P

    calls = []
    real = P.Simulator.probe_gradient
    monkeypatch.setattr(P.Simulator, "probe_gradient",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    finals = {}
    for weight in (0.0, 0.5):
        config = P.ProtectConfig(total_loop=3, test_iterval=10, adaptation_steps=1, bs=8, finetune_epochs=0,
                                 guard=0, probe_weight=weight)
        torch.manual_seed(0)
        model = Headed()
        with tempfile.TemporaryDirectory() as d:
            P.protect(model, ToyTask(), config, d)
            logged = (P.Path(d) / "metrics.jsonl").read_text()
        finals[weight] = model.body.weight.detach().clone()
        assert ("probe_loss" in logged) == (weight > 0)
    assert len(calls) == 3
    assert not torch.allclose(finals[0.0], finals[0.5])


def test_probe_ridge_reaches_the_fitted_head_from_the_loop(monkeypatch):
    """--probe_ridge is the penalty the loop's probe is fitted with (default: the config's)."""
    from sophon import probe, protect as P

    seen = []
    real = probe.ridge_head
    monkeypatch.setattr(probe, "ridge_head", lambda f, y, c, ridge, *a: seen.append(ridge) or real(f, y, c, ridge, *a))
    for ridge in (None, 0.02):
        extra = {} if ridge is None else {"probe_ridge": ridge}
        config = P.ProtectConfig(total_loop=1, test_iterval=10, adaptation_steps=1, bs=8, finetune_epochs=0,
                                 guard=0, probe_weight=0.5, **extra)
        with tempfile.TemporaryDirectory() as d:
            P.protect(Headed(), ToyTask(), config, d)
    assert seen == [P.ProtectConfig.probe_ridge, 0.02] and seen[0] != 0.02


def test_probe_support_sets_how_many_examples_the_head_is_fitted_on(monkeypatch):
    """--probe_support N: the ridge head sees N examples (default 2 × bs); on a set too small for both, the
    query keeps its size and the support takes the rest."""
    from sophon import probe

    seen = []
    real = probe.ridge_head
    monkeypatch.setattr(probe, "ridge_head", lambda f, *a, **k: seen.append(len(f)) or real(f, *a, **k))
    queries = []
    real_loss = ToyTask.suppression_loss
    monkeypatch.setattr(ToyTask, "suppression_loss", lambda self, l, b: queries.append(len(b[0])) or real_loss(self, l, b))
    sim = Simulator(ToyTask(hidden=3), 1, query_bs=8)  # 64 restricted training examples
    for support in (None, 40, 60):
        sim.probe_gradient(Headed(), 16, torch.Generator().manual_seed(0), support_size=support)
    assert seen == [32, 40, 56] and queries == [8, 8, 8]
