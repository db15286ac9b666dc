import json

import pytest
import torch

from sophon import checkpoint
from sophon.protect import NonFiniteLossError, ProtectConfig, protect
from tests.toy import Headed, ToyTask


def config(**kw):
    base = dict(lr=1e-2, bs=16, total_loop=4, adaptation_steps=2, test_iterval=2, finetune_epochs=1, seed=0)
    base.update(kw)
    return ProtectConfig(**base)


def test_protect_changes_weights_checkpoints_and_loads_back(tmp_path):
    torch.manual_seed(0)
    model, task = Headed(), ToyTask()
    before = model.body.weight.detach().clone()
    summary = protect(model, task, config(), tmp_path)
    assert summary["status"] == "finished" and summary["iteration"] == 4
    assert not torch.equal(model.body.weight, before)
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1, 2, 3, 4]
    assert "finetuned_accuracy" in records[2] and "original_accuracy" in records[4]
    tensors, meta = checkpoint.load(tmp_path / "checkpoints" / "final")
    assert meta["iteration"] == 4
    torch.testing.assert_close(tensors["model.body.weight"], model.body.weight.detach())


def test_resume_continues_from_last_checkpoint(tmp_path):
    torch.manual_seed(0)
    model, task = Headed(), ToyTask()
    protect(model, task, config(total_loop=2), tmp_path)
    resumed = Headed()
    summary = protect(resumed, task, config(total_loop=4), tmp_path, resume=True)
    assert summary["iteration"] == 4
    iterations = [json.loads(l)["iteration"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert iterations == [0, 1, 2, 3, 4]  # nothing lost, nothing repeated


def test_guard_restores_last_good_state_and_stops(tmp_path):
    torch.manual_seed(0)
    model, task = Headed(), ToyTask()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    scores = iter([1.0, 0.5])  # before SOPHON, then at the first evaluation: below 0.9 x 1.0
    task.evaluate_original = lambda m: {"accuracy": next(scores)}
    summary = protect(model, task, config(guard=0.9), tmp_path)
    assert summary["status"] == "guard_stopped" and summary["iteration"] == 2
    final, _ = checkpoint.load(tmp_path / "checkpoints" / "final")
    torch.testing.assert_close(final["model.body.weight"], start["body.weight"])  # last good = start
    assert "guard" in json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])


def test_nan_loss_raises_clear_error_and_keeps_finished_checkpoint(tmp_path):
    torch.manual_seed(0)
    model, task = Headed(), ToyTask()
    protect(model, task, config(total_loop=2), tmp_path)
    good, _ = checkpoint.load(tmp_path / "checkpoints" / "last")
    task.original_loss = lambda m, b: torch.tensor(float("nan"), requires_grad=True)
    with pytest.raises(NonFiniteLossError, match=r"at iteration 3; .*from iteration 2, saved as .*--alpha"):
        protect(model, task, config(total_loop=4), tmp_path, resume=True)
    still, _ = checkpoint.load(tmp_path / "checkpoints" / "last")
    torch.testing.assert_close(still["model.body.weight"], good["model.body.weight"])


def test_corrupt_checkpoint_gives_clear_error(tmp_path):
    path = checkpoint.save(tmp_path / "ckpt", {"w": torch.ones(3)}, {"arch": "toy"})
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load(tmp_path / "ckpt")
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path / "missing")


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_resumed_run_equals_an_uninterrupted_one_bit_for_bit(tmp_path):
    task = ToyTask()
    start = Headed()
    whole = Headed()
    whole.load_state_dict(start.state_dict())
    protect(whole, task, config(total_loop=4), tmp_path / "whole")
    first = Headed()
    first.load_state_dict(start.state_dict())
    protect(first, task, config(total_loop=2), tmp_path / "split")
    torch.manual_seed(999)  # a different process state: the run must not depend on the global RNG
    resumed = Headed()
    protect(resumed, task, config(total_loop=4), tmp_path / "split", resume=True)
    for name, value in _weights(whole).items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_a_run_leaves_the_global_rng_untouched(tmp_path):
    model, task = Headed(), ToyTask()
    state = torch.get_rng_state()
    protect(model, task, config(), tmp_path)
    assert torch.equal(torch.get_rng_state(), state)


def test_outer_step_is_adam_at_alpha_lr_after_clipping_to_half(tmp_path, monkeypatch):
    from sophon import protect as P
    from sophon.simulate import SimulationResult

    model, task = Headed(), ToyTask()
    huge = {n: torch.full_like(p, 10.0) for n, p in model.named_parameters() if n.startswith("body.")}
    monkeypatch.setattr(P.Simulator, "suppression_gradient", lambda self, m, env, g=None: SimulationResult(huge, 0.0, 0.0))
    protector = P.Protector(model, task, config(alpha=3.0, lr=1e-2), tmp_path)
    before = _weights(model)
    protector.fts_step()
    expected = Headed()
    expected.load_state_dict(before)
    norm = torch.sqrt(sum((g ** 2).sum() for g in huge.values()))
    opt = torch.optim.Adam([p for n, p in expected.named_parameters()], lr=3.0 * 1e-2)
    for n, p in expected.named_parameters():
        if n in huge:
            p.grad = huge[n] * (0.5 / norm)
    opt.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, expected.state_dict()[n])
    assert protector.fts_opt.param_groups[0]["lr"] == pytest.approx(0.03)


def test_several_environments_are_averaged(tmp_path, monkeypatch):
    from sophon import protect as P
    from sophon.simulate import Environment, SimulationResult

    model, task = Headed(), ToyTask()
    grads = {0.1: 1.0, 0.2: 3.0}  # env lr -> the gradient its simulation returns
    monkeypatch.setattr(P.Simulator, "suppression_gradient", lambda self, m, env, g=None: SimulationResult(
        {"body.bias": torch.full_like(m.body.bias, grads[env.lr]) * 1e-3}, 0.0, 0.0))
    protector = P.Protector(model, task, config(environments=[Environment("sgd", 0.1), Environment("sgd", 0.2)]), tmp_path)
    protector.fts_step()
    torch.testing.assert_close(model.body.bias.grad, torch.full_like(model.body.bias, 2.0e-3))  # mean, under the clip


def test_cycle_takes_one_fixed_attacker_per_fts_step_in_turn_across_a_resume(tmp_path, monkeypatch):
    from sophon import protect as P
    from sophon.simulate import Environment, SimulationResult

    seen = []  # the lr of the attacker each FTS step simulated

    def simulate(self, m, env, g=None):
        seen.append(env.lr)
        return SimulationResult({"body.bias": torch.zeros_like(m.body.bias)}, 0.0, 0.0)

    monkeypatch.setattr(P.Simulator, "suppression_gradient", simulate)
    envs = [Environment("sgd", 0.1), Environment("adam", 0.2), Environment("sgd", 0.3)]
    cfg = dict(environments=envs, attackers="cycle", ml_loop=2, finetune_epochs=0, guard=0)
    protect(Headed(), ToyTask(), config(total_loop=2, **cfg), tmp_path)
    protect(Headed(), ToyTask(), config(total_loop=4, **cfg), tmp_path, resume=True)
    # 4 iterations x 2 FTS steps, one attacker each, in turn; the resumed run goes on with the next one
    assert seen == [0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.1, 0.2]


@pytest.mark.parametrize("action, status", [("stop", "guard_stopped"), ("decay", "finished")])
def test_guard_on_a_lower_is_better_metric(tmp_path, action, status):
    model, task = Headed(), ToyTask()
    task.original_metric, task.original_higher_is_better = "perplexity", False
    # before SOPHON 100; evaluations at iterations 2 and 4: 120 crosses the 100 / 0.9 = 111 ceiling, 105 does not
    values = iter([100.0, 120.0, 105.0])
    task.evaluate_original = lambda m: {"perplexity": next(values)}
    summary = protect(model, task, config(guard=0.9, guard_action=action, finetune_epochs=0), tmp_path)
    assert summary["status"] == status
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "guard" in records[2]
    if action == "decay":
        last, _ = checkpoint.load(tmp_path / "checkpoints" / "final")
        assert last["fts_opt.0.step"] is not None
        assert json.loads((tmp_path / "checkpoints" / "final.json").read_text())["fts_opt"]["param_groups"][0]["lr"] \
            == pytest.approx(0.5 * 3.0 * 1e-2)  # halved once


def test_ctrl_c_keeps_last_as_the_checked_state(tmp_path, monkeypatch):
    from sophon import protect as P

    model, task = Headed(), ToyTask()
    calls = {"n": 0}
    real = P.Protector.ntr_step

    def ntr_step(self):
        calls["n"] += 1
        if calls["n"] == 3:  # during iteration 3, after the check at iteration 2
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(P.Protector, "ntr_step", ntr_step)
    with pytest.raises(KeyboardInterrupt):
        protect(model, task, config(total_loop=4, test_iterval=2, guard=0), tmp_path)  # no guard stop before Ctrl-C
    last = json.loads((tmp_path / "checkpoints" / "last.json").read_text())
    interrupted = json.loads((tmp_path / "checkpoints" / "interrupted.json").read_text())
    assert last["iteration"] == 2 and last["status"] == "running"
    assert interrupted["status"] == "interrupted"
    checked, _ = checkpoint.load(tmp_path / "checkpoints" / "last")
    current, _ = checkpoint.load(tmp_path / "checkpoints" / "interrupted")
    assert not torch.equal(checked["model.body.weight"], current["model.body.weight"])  # FTS of iteration 3 ran
    monkeypatch.undo()
    summary = protect(Headed(), task, config(total_loop=4, test_iterval=2, guard=0), tmp_path, resume=True)
    assert summary["status"] == "finished" and summary["iteration"] == 4
