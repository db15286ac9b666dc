"""tools/attack_geometry.py: the start gradient is the attack's, the probe ignores scale, the distance is the body's."""

import pytest
import torch

from sophon.attack import finetune, parse_attack
from tests.tool_module import load
from tests.toy import Headed, ToyTask


def _tool():
    return load("attack_geometry")


def _shrunk(model, factor):
    """The same classifier up to the body's scale: body × factor, head × 1/factor."""
    small = Headed(dim=4, hidden=3, classes=2)
    small.load_state_dict(model.state_dict())
    with torch.no_grad():
        small.body.weight.mul_(factor)
        small.body.bias.mul_(factor)
        small.head.weight.div_(factor)
    return small


def test_the_scale_free_probe_does_not_see_a_shrunk_body():
    tool = _tool()
    torch.manual_seed(0)
    task, model = ToyTask(), Headed()
    small = _shrunk(model, 0.01)
    assert tool.scale_free_probe(small, task) == pytest.approx(tool.scale_free_probe(model, task), abs=1e-6)


def test_the_start_gradient_is_taken_with_the_head_the_attack_draws():
    tool = _tool()
    torch.manual_seed(0)
    task, model = ToyTask(), Headed()
    heads = []
    finetune(model, task, parse_attack("sgd:1e-12:epochs=1", bs=16), seed=5, progress=False,
             after=lambda learner: heads.append(learner))
    learner = heads[0].train()
    learner.zero_grad(set_to_none=True)  # the attack's last step left its gradients
    x, y = task.restricted_train.tensors
    task.finetune_loss(learner, (x, y)).backward()
    expected = float(torch.sqrt(learner.body.weight.grad.pow(2).sum() + learner.body.bias.grad.pow(2).sum()))
    assert tool.start_gradient_norm(model, task, seed=5) == pytest.approx(expected, rel=1e-4)
    assert tool.start_gradient_norm(model, task, seed=6) != pytest.approx(expected, rel=1e-4)


def test_moved_measures_the_body_distance_and_leaves_the_model_alone():
    tool = _tool()
    torch.manual_seed(0)
    task, model = ToyTask(), Headed()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    still, _ = tool.moved(model, task, parse_attack("sgd:1e-12:epochs=1", bs=16), seed=0)
    far, metric = tool.moved(model, task, parse_attack("sgd:0.5:epochs=3", bs=16), seed=0)
    assert still < 1e-9 and far > 0.01 and 0.0 <= metric <= 1.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
