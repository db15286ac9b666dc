"""BatchNorm statistics recomputed on the weights they sit on (sophon/batchnorm.py, --recalibrate_bn)."""

import json

import torch
from torch import nn

from sophon import checkpoint
from sophon.batchnorm import has_batchnorm, recalibrate_
from sophon.protect import ProtectConfig, protect
from sophon.task import draw_batch
from tests.toy import Headed, ToyTask


class Normed(nn.Module):
    """The toy model with a BatchNorm after its body, as the cnn's convolutions have."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.body(x))


def config(**kw):
    base = dict(lr=1e-2, bs=16, total_loop=4, adaptation_steps=2, test_iterval=2, finetune_epochs=0, seed=0,
                guard=0.0)
    base.update(kw)
    return ProtectConfig(**base)


def test_recalibrated_statistics_are_the_plain_mean_over_the_drawn_batches():
    torch.manual_seed(0)
    model, task = Normed(), ToyTask()
    model.body[1].running_mean.fill_(5.0)  # stale: far from what the weights give
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    rng = torch.get_rng_state()
    recalibrate_(model, task, seed=3, batches=4, batch_size=16)
    assert torch.equal(torch.get_rng_state(), rng)  # the run's RNG is not touched
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        pre = [model.body[0](draw_batch(task.original_train, 16, generator)[0]) for _ in range(4)]
    mean = torch.stack([p.mean(0) for p in pre]).mean(0)
    var = torch.stack([p.var(0, unbiased=True) for p in pre]).mean(0)
    torch.testing.assert_close(model.body[1].running_mean, mean)
    torch.testing.assert_close(model.body[1].running_var, var)
    assert not model.training and model.body[1].momentum == 0.1  # eval mode, momentum as it was
    for k, v in weights.items():
        assert torch.equal(model.state_dict()[k], v)


def test_a_model_without_batchnorm_is_left_alone():
    model = Headed()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert not has_batchnorm(model)
    recalibrate_(model, ToyTask(), seed=0)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def _run(tmp_path, recalibrate: bool):
    torch.manual_seed(0)
    model, task = Normed(), ToyTask()
    seen = []
    evaluate = task.evaluate_original
    task.evaluate_original = lambda m: seen.append(m.body[1].running_mean.clone()) or evaluate(m)
    protect(model, task, config(recalibrate_bn=recalibrate), tmp_path)
    last, _ = checkpoint.load(tmp_path / "checkpoints" / "last")
    final, _ = checkpoint.load(tmp_path / "checkpoints" / "final")
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return model, task, last, final, seen, records


def test_evaluation_sees_recalibrated_statistics_and_the_run_does_not_depend_on_it(tmp_path):
    on = _run(tmp_path / "on", True)
    off = _run(tmp_path / "off", False)
    # The trajectory is the same: `last` (the state a resume continues from) is identical with and without.
    for k, v in off[2].items():
        if k.startswith("model."):
            assert torch.equal(on[2][k], v), k
    # The guard's evaluation ran on statistics recomputed for the weights, not on the running ones.
    task = on[1]
    assert not torch.allclose(on[4][-1], off[4][-1])
    # The saved final model carries them; without the flag it carries the running ones, as `last` does.
    reference = Normed()
    reference.load_state_dict(checkpoint.model_state(on[2]))
    recalibrate_(reference, task, seed=0)
    torch.testing.assert_close(on[3]["model.body.1.running_mean"], reference.body[1].running_mean)
    torch.testing.assert_close(on[3]["model.body.1.running_var"], reference.body[1].running_var)
    assert torch.equal(off[3]["model.body.1.running_mean"], off[2]["model.body.1.running_mean"])
    torch.testing.assert_close(on[4][-1], reference.body[1].running_mean)
