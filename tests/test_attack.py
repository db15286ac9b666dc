"""Attack specs, optimizers, methods and schedules on the toy task."""

import pytest
import torch

from sophon.attack import METHODS, Attack, AttackSpecError, finetune, lora_targets, parse_attack, parse_attacks
from sophon.optim import OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule
from tests.toy import Headed, ToyTask


def test_spec_with_keys_round_trips_through_its_label():
    a = parse_attack("adam:1e-4:method=lora:epochs=20:schedule=warmup-cosine", bs=16)
    assert a == Attack("adam", 1e-4, 16, 20, "lora", "warmup-cosine")
    assert parse_attack(a.label) == a


def test_a_benign_optimizer_makes_a_benign_first_attack_and_round_trips():
    a = parse_attack("sgd-momentum:0.01:bs=32:epochs=10:benign=adam/0.001")
    assert (a.method, a.benign, a.benign_optimizer) == ("benign", "adam/0.001", ("adam", 1e-3))
    assert parse_attack(a.label) == a
    assert parse_attack("adam:1e-3:method=benign").benign_optimizer == ("adam", 1e-3)


def test_an_attack_without_a_benign_optimizer_keeps_its_cache_key():
    # Cells cached before the field existed hash Attack.to_dict(); it must not grow a key for them.
    assert set(Attack().to_dict()) == {"optimizer", "lr", "bs", "epochs", "method", "schedule"}
    assert parse_attack("sgd:benign=adam/1e-3").to_dict()["benign"] == "adam/0.001"


def test_spec_defaults_come_from_the_caller():
    a, b = parse_attacks("sgd-momentum:bs=8, adam", lr_for={"sgd-momentum": 0.05, "adam": 3e-4}.get, bs=32, epochs=4)
    assert (a.lr, a.bs, a.epochs) == (0.05, 8, 4)
    assert (b.lr, b.bs, b.method, b.schedule) == (3e-4, 32, "full", "constant")


@pytest.mark.parametrize("spec, message", [
    ("adma:1e-3", "unknown optimizer 'adma'"),
    ("adam:fast", "learning rate 'fast' is not a number"),
    ("adam:-1e-3", "must be positive"),
    ("adam:1e-3:epoch=3", "unknown part 'epoch=3'"),
    ("adam:1e-3:bs=0", "bs must be positive"),
    ("adam:1e-3:bs=2.5", "bs '2.5' is not an integer"),
    ("adam:method=probe", "unknown method 'probe'"),
    ("adam:schedule=linear", "unknown schedule 'linear'"),
    ("adam:lr=1e-3:lr=1e-4", "sets lr twice"),
    ("sgd:benign=adma/1e-3", "write benign=OPTIMIZER/LR"),
    ("sgd:benign=adam", "write benign=OPTIMIZER/LR"),
    ("sgd:benign=adam/-1", "benign learning rate must be positive"),
    ("sgd:method=head:benign=adam/1e-3", "drop method= or write method=benign"),
    ("", "no attack given"),
])
def test_bad_specs_are_refused_with_the_choices(spec, message):
    with pytest.raises(AttackSpecError, match=message):
        parse_attacks(spec)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_takes_a_step(name):
    model = Headed()
    before = [p.detach().clone() for p in model.parameters()]
    opt = make_optimizer(name, model.parameters(), 0.1)
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_schedules_shape_the_learning_rate():
    lrs = {}
    for schedule in SCHEDULES:
        opt = make_optimizer("sgd", Headed().parameters(), 1.0)
        sched = make_schedule(schedule, opt, 20)
        seen = []
        for _ in range(20):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        lrs[schedule] = seen
    assert lrs["constant"] == [1.0] * 20
    assert lrs["cosine"][0] == 1.0 and lrs["cosine"][-1] < 0.05
    assert lrs["warmup-cosine"][0] == 0.0 and lrs["warmup-cosine"][2] == pytest.approx(1.0)


def _changed(before: dict, after: dict) -> set[str]:
    return {n for n in before if not torch.equal(before[n], after[n])}


def _attack_and_capture(method, task=None, model=None):
    task, model = task or ToyTask(), model or Headed()
    seen = {}
    curve = finetune(model, task, Attack("adam", 0.05, 16, 2, method), seed=0, progress=False,
                     after=lambda learner: seen.update(learner=learner))
    return model, seen["learner"], curve


@pytest.mark.parametrize("method", METHODS)
def test_every_method_fine_tunes_and_leaves_the_model_alone(method):
    model = Headed()
    original = {n: p.detach().clone() for n, p in model.state_dict().items()}
    _, learner, curve = _attack_and_capture(method, model=model)
    assert len(curve) == 3 and curve[2]["train_loss"] < curve[1]["train_loss"]  # it learns
    assert not _changed(original, model.state_dict())


def test_head_trains_only_the_head():
    model, learner, _ = _attack_and_capture("head")
    assert torch.equal(learner.body.weight, model.body.weight) and torch.equal(learner.body.bias, model.body.bias)


def test_full_trains_the_body():
    model, learner, _ = _attack_and_capture("full")
    assert not torch.equal(learner.body.weight, model.body.weight)


def test_lora_trains_only_adapters_and_the_head():
    model, learner, _ = _attack_and_capture("lora")
    state = learner.state_dict()
    assert torch.equal(state["body.base_layer.weight"], model.body.weight)
    assert torch.equal(state["body.base_layer.bias"], model.body.bias)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in state.items() if "lora_B" in k)
    trained = {n for n, p in learner.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n or n.startswith("head.") for n in trained)
    assert lora_targets(Headed(), "head") == ["body"]


def test_benign_first_touches_original_data():
    task = ToyTask()
    calls = []
    original_loss = task.original_loss
    task.original_loss = lambda model, batch: calls.append(len(batch[0])) or original_loss(model, batch)
    _attack_and_capture("benign", task=task)
    steps = 2 * -(-len(task.restricted_train) // 16)  # as many as the restricted phase
    assert len(calls) == steps
    calls.clear()
    _attack_and_capture("full", task=task)
    assert calls == []


def test_the_benign_phase_trains_with_its_own_optimizer(monkeypatch):
    import sophon.attack as attack_module

    seen = []
    real = attack_module.benign_phase
    monkeypatch.setattr(attack_module, "benign_phase",
                        lambda model, task, name, lr, *rest: seen.append((name, lr)) or real(model, task, name, lr, *rest))
    for spec in ("sgd-momentum:0.01:epochs=1:benign=adam/0.001", "sgd-momentum:0.01:epochs=1:method=benign"):
        finetune(Headed(), ToyTask(), parse_attack(spec), seed=0, progress=False)
    assert seen == [("adam", 1e-3), ("sgd-momentum", 0.01)]


def test_a_seeded_attack_repeats_exactly_and_leaves_the_global_rng_alone():
    model, task = Headed(), ToyTask()
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    finetune(model, task, Attack("sgd", 0.1, 8, 2), seed=5, progress=False)
    assert torch.equal(torch.rand(1), expected_next)
    a = finetune(model, ToyTask(), Attack("sgd", 0.1, 8, 2), seed=5, progress=False)
    b = finetune(model, ToyTask(), Attack("sgd", 0.1, 8, 2), seed=5, progress=False)
    c = finetune(model, ToyTask(), Attack("sgd", 0.1, 8, 2), seed=6, progress=False)
    assert a == b and a != c


def test_a_diverging_attack_keeps_the_starting_metric():
    curve = finetune(Headed(), ToyTask(), Attack("sgd", 1e30, 8, 3), seed=0, progress=False)
    assert len(curve) == 4 and curve[-1]["diverged"] and curve[-1]["accuracy"] == curve[0]["accuracy"]
