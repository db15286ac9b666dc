"""`rescale=1`: BatchNorm-fed channels back to their default-init norm, the function unchanged."""

import pytest
import torch
from torch import nn

from sophon.attack import AttackSpecError, check_fits, finetune, parse_attack
from sophon.models.vision import build_classifier
from sophon.rescale import DEFAULT_CHANNEL_NORM, rescaled, scale_invariant_pairs
from sophon.simulate import environments_from_specs
from tests.toy import Headed, ToyTask


class NormHeaded(nn.Module):
    """The toy task's model with a BatchNorm after its body layer."""

    def __init__(self, dim=4, hidden=8, classes=2):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU())
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.body(x))


def _inflated_cnn():
    model = build_classifier("cnn", 10, cnn_width=4)
    with torch.no_grad():
        for name in ("body.features.0", "body.features.4", "body.features.8"):
            w = model.get_submodule(name).weight
            w.mul_(torch.logspace(0, 3, w.shape[0]).view(-1, 1, 1, 1))  # some channels 1000x their norm
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for bn in bns:  # running statistics of the inflated weights, as a trained model would have
            bn.momentum = None
        model.train()
        for _ in range(3):
            model(torch.randn(16, 3, 16, 16))
        for bn in bns:
            bn.momentum = 0.1
    return model


def test_the_small_cnn_has_its_three_conv_batchnorm_pairs_and_not_its_hidden_layer():
    pairs = scale_invariant_pairs(build_classifier("cnn", 10, cnn_width=4))
    assert pairs == [("body.features.0", "body.features.1"), ("body.features.4", "body.features.5"),
                     ("body.features.8", "body.features.9")]


@pytest.mark.parametrize("train", [False, True])
def test_rescaling_keeps_the_predictions_and_sets_the_norms(train):
    model = _inflated_cnn()
    x = torch.randn(8, 3, 16, 16)
    new = rescaled(model)
    model.train(train), new.train(train)
    with torch.no_grad():
        assert torch.allclose(new(x), model(x), rtol=1e-4, atol=1e-4)
    for layer, _ in scale_invariant_pairs(new):
        norms = new.get_submodule(layer).weight.flatten(1).norm(dim=1)
        assert torch.allclose(norms, torch.full_like(norms, DEFAULT_CHANNEL_NORM), rtol=1e-5)
    assert model.body.features[8].weight.flatten(1).norm(dim=1).max() > 100  # the original is left alone


def test_a_model_without_batchnorm_is_refused_before_any_attack():
    with pytest.raises(ValueError, match="rescale=1 needs a layer"):
        check_fits(Headed(), [parse_attack("sgd:rescale=1")], "head")
    check_fits(Headed(), [parse_attack("sgd")], "head")  # without rescale=1 nothing is asked of the model
    with pytest.raises(ValueError, match="rescale=1 needs a layer"):
        rescaled(Headed())


def test_the_spec_round_trips_and_keeps_old_cache_keys():
    a = parse_attack("adam:1e-3:method=benign:rescale=1")
    assert a.rescale and parse_attack(a.label) == a
    assert "rescale" not in parse_attack("adam:1e-3").to_dict()
    assert parse_attack("adam:1e-3:rescale=0") == parse_attack("adam:1e-3")
    with pytest.raises(AttackSpecError, match="write rescale=1"):
        parse_attack("adam:rescale=yes")
    with pytest.raises(AttackSpecError, match="rescale="):
        environments_from_specs("sgd:0.1:rescale=1", 32, 5)


def test_an_attack_with_rescale_trains_the_rescaled_weights():
    model = NormHeaded()
    with torch.no_grad():
        model.body[0].weight.mul_(1000.0)
    norms = {}
    for spec in ("sgd:0.1:bs=16:epochs=1", "sgd:0.1:bs=16:epochs=1:rescale=1"):
        finetune(model, ToyTask(hidden=8), parse_attack(spec), seed=0, progress=False,
                 after=lambda learner, s=spec: norms.__setitem__(s, learner.body[0].weight.norm(dim=1)))
    assert norms["sgd:0.1:bs=16:epochs=1"].min() > 100
    assert norms["sgd:0.1:bs=16:epochs=1:rescale=1"].max() < 3 * DEFAULT_CHANNEL_NORM
    assert model.body[0].weight.norm(dim=1).min() > 100  # the start itself is never changed


def _norms(model):
    return model.body[0].weight.norm(dim=1)


def test_canonical_scale_keeps_the_protected_model_at_default_init_norms(tmp_path):
    from sophon.protect import ProtectConfig, protect

    finals = {}
    for canonical in (False, True):
        torch.manual_seed(0)
        model = NormHeaded()
        with torch.no_grad():
            model.body[0].weight.mul_(5.0)
        config = ProtectConfig(lr=1e-2, bs=16, total_loop=3, adaptation_steps=2, test_iterval=3, finetune_epochs=0,
                               seed=0, canonical_scale=canonical)
        protect(model, ToyTask(hidden=8), config, tmp_path / str(canonical))
        finals[canonical] = _norms(model)
    expected = torch.full_like(finals[True], DEFAULT_CHANNEL_NORM)
    assert torch.allclose(finals[True], expected, rtol=1e-5)
    assert not torch.allclose(finals[False], expected, rtol=0.1)  # without the flag SOPHON leaves scales free


def test_canonical_scale_refuses_a_model_without_batchnorm(tmp_path):
    from sophon.protect import ProtectConfig, protect

    with pytest.raises(ValueError, match="--canonical_scale needs a layer"):
        protect(Headed(), ToyTask(), ProtectConfig(total_loop=1, canonical_scale=True), tmp_path)


def test_the_tuned_attacker_searches_rescale_only_where_it_applies():
    from sophon.tune import search

    for model, expected in ((NormHeaded(), True), (Headed(hidden=8), False)):
        best, study = search(model, ToyTask(hidden=8), "image", trials=2, bs=16, epochs=1, budget=8)
        assert ("rescale" in study.best_params) is expected
        assert best.rescale == study.best_params.get("rescale", False)
