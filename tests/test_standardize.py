"""The `standardize=1` attack key: a head on standardised features, blind to the features' scale."""

import pytest
import torch

from sophon.attack import AttackSpecError, Standardized, check_fits, finetune, parse_attack, standardize_head
from tests.toy import Headed, ToyTask


def _scaled_body(model, factor):
    """The same body up to its output's scale: features × factor."""
    scaled = Headed()
    scaled.load_state_dict(model.state_dict())
    with torch.no_grad():
        scaled.body.weight.mul_(factor)
        scaled.body.bias.mul_(factor)
    return scaled


def test_the_key_parses_round_trips_and_leaves_old_cache_keys_alone():
    attack = parse_attack("adam:1e-2:method=head:standardize=1")
    assert attack.standardize and attack.method == "head"
    assert parse_attack(attack.label) == attack and attack.label.endswith(":standardize=1")
    assert attack.to_dict()["standardize"] is True
    assert "standardize" not in parse_attack("adam:1e-2:method=head").to_dict()
    with pytest.raises(AttackSpecError, match="standardize=1"):
        parse_attack("adam:standardize=yes")


def test_a_setting_without_a_head_refuses_it_before_any_work():
    with pytest.raises(AttackSpecError, match="has none"):
        check_fits(Headed(), [parse_attack("adam:standardize=1")], None)
    check_fits(Headed(), [parse_attack("adam:standardize=1")], "head")


def test_the_head_sees_features_of_mean_zero_and_std_one():
    torch.manual_seed(0)
    task = ToyTask()
    learner = standardize_head(task.learner(_scaled_body(Headed(), 1e-3)), task, bs=16)
    assert isinstance(learner.head, Standardized)
    seen = []
    learner.head.head.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        learner(task.restricted_train.tensors[0])
    assert seen[0].mean(0).abs().max() < 1e-4
    assert seen[0].std(0) == pytest.approx(torch.ones(3), abs=1e-3)


def test_a_standardised_probe_does_not_see_the_feature_scale_and_a_plain_one_does():
    torch.manual_seed(0)
    task, model = ToyTask(), Headed()
    small = _scaled_body(model, 1e-3)

    def losses(start, spec):
        return [r["train_loss"] for r in finetune(start, task, parse_attack(spec, bs=16), seed=1, progress=False)[1:]]

    plain, plain_small = losses(model, "adam:1e-2:epochs=3:method=head"), losses(small, "adam:1e-2:epochs=3:method=head")
    assert max(abs(a - b) for a, b in zip(plain, plain_small)) > 0.01
    spec = "adam:1e-2:epochs=3:method=head:standardize=1"
    assert losses(small, spec) == pytest.approx(losses(model, spec), rel=1e-4)
