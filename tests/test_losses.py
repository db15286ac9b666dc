import math

import pytest
import torch
import torch.nn.functional as F

from sophon.losses import (denial_of_service, inverse_cross_entropy, kl_uniform, mse_ascent,
                           negated_logit_cross_entropy)


def test_ice_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 0])
    p0 = [math.exp(2) / (math.exp(2) + 1), 1 / (1 + math.e)]
    expected = -(math.log(1 - p0[0]) + math.log(1 - p0[1])) / 2
    assert inverse_cross_entropy(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_ice_is_finite_when_true_class_is_certain():
    logits = torch.tensor([[100.0, 0.0, 0.0]], requires_grad=True)
    loss = inverse_cross_entropy(logits, torch.tensor([0]))
    loss.backward()
    assert loss.item() == pytest.approx(100 - math.log(2), rel=1e-5)
    assert torch.isfinite(logits.grad).all()


def test_released_ice_is_cross_entropy_of_negated_logits():
    logits = torch.tensor([[1.0, 3.0, -2.0]])
    z = -logits[0]
    expected = -(z[1] - torch.logsumexp(z, 0)).item()
    assert negated_logit_cross_entropy(logits, torch.tensor([1])).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("classes", [2, 3, 10])
def test_klu_matches_definition_and_vanishes_at_uniform(classes):
    logits = torch.arange(classes, dtype=torch.float).unsqueeze(0) * 0.7
    p = F.softmax(logits[0], 0)
    expected = sum((1 / classes) * math.log((1 / classes) / p[c].item()) for c in range(classes))
    assert kl_uniform(logits).item() == pytest.approx(expected, rel=1e-5)
    assert kl_uniform(torch.zeros(5, classes)).item() == pytest.approx(0.0, abs=1e-6)


def test_dos_and_mse_ascent():
    pred = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    assert denial_of_service(pred).item() == pytest.approx((1 + 4 + 0 + 9) / 4)
    noise = torch.zeros_like(pred)
    assert mse_ascent(pred, noise).item() == pytest.approx(-3.5)
    assert mse_ascent(pred, noise, clamp=1.0).item() == pytest.approx(-1.0)
