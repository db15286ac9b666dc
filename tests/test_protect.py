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
