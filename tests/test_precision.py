"""--precision: every setting trains one SOPHON iteration under bf16 (and fp16) autocast on CPU with
finite losses, the layers really compute in the low precision, and the losses stay fp32."""

import pytest
import torch
from torch import nn

from sophon.losses import inverse_cross_entropy
from sophon.precision import Precision
from sophon.protect import Protector, ProtectConfig
from sophon.settings import image, text
from sophon.simulate import Environment
from tests.test_diffusion_task import small_task as diffusion_task
from tests.test_image_models import _cnn_task
from tests.text_fixtures import save_small_gpt2, text_args


def text_case(tmp_path):
    args = text_args(save_small_gpt2(tmp_path / "gpt2"))
    return text.build_model(args, "normal"), text.build_task(args, "ice")


def image_case(tmp_path):
    args, task = _cnn_task()
    return image.build_model(args, "scratch"), task


def diffusion_case(tmp_path):
    from sophon.models.unet import unet

    torch.manual_seed(0)
    return unet("unet-tiny", 1, 16), diffusion_task("dos")


def one_iteration(model, task, precision: str, tmp_path) -> tuple[dict, set]:
    """One FTS + NTR step; returns the losses and the dtypes the model's layers produced."""
    task.precision = Precision(precision, task.device)
    dtypes = set()
    layer = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    layer.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))  # copied into the simulated learners
    config = ProtectConfig(adaptation_steps=2, bs=8, finetune_epochs=0, environments=[Environment("sgd", 1e-2, 8)])
    protector = Protector(model, task, config, tmp_path)
    return {**protector.fts_step(), **protector.ntr_step()}, dtypes


@pytest.mark.parametrize("case", [text_case, image_case, diffusion_case], ids=["text", "image", "diffusion"])
def test_one_bf16_iteration_of_each_setting_is_finite_and_in_bf16(case, tmp_path):
    model, task = case(tmp_path)
    losses, dtypes = one_iteration(model, task, "bf16", tmp_path)
    assert all(torch.isfinite(torch.tensor(v)) for k, v in losses.items() if k.endswith("loss")), losses
    assert torch.bfloat16 in dtypes
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay fp32


def test_fp32_computes_in_fp32(tmp_path):
    model, task = image_case(tmp_path)
    _, dtypes = one_iteration(model, task, "fp32", tmp_path)
    assert dtypes == {torch.float32}


def test_fp16_iteration_uses_a_grad_scaler_and_stays_finite(tmp_path):
    model, task = image_case(tmp_path)
    losses, dtypes = one_iteration(model, task, "fp16", tmp_path)
    assert torch.float16 in dtypes
    assert all(torch.isfinite(torch.tensor(v)) for k, v in losses.items() if k.endswith("loss"))
    assert Precision("fp16").scaler().is_enabled() and not Precision("bf16").scaler().is_enabled()


def test_losses_are_fp32_under_autocast():
    logits = torch.randn(4, 3, dtype=torch.bfloat16)
    with Precision("bf16").autocast():
        assert inverse_cross_entropy(logits, torch.tensor([0, 1, 2, 0])).dtype == torch.float32


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown --precision 'fp8'"):
        Precision("fp8")


def test_gradient_checkpointing_changes_memory_not_the_step(tmp_path):
    """The same FTS step with and without checkpointing of the causal LM's blocks."""
    folder = save_small_gpt2(tmp_path / "gpt2")
    steps = []
    for flag in (False, True):
        args = text_args(folder, grad_checkpointing=flag)
        torch.manual_seed(0)  # θ's own (unused) classification head is drawn at build time
        model, task = text.build_model(args, "normal"), text.build_task(args, "ice")
        assert model.body.is_activation_checkpointing == flag
        config = ProtectConfig(adaptation_steps=2, bs=8, finetune_epochs=0, environments=[Environment("sgd", 1e-2, 8)])
        Protector(model, task, config, tmp_path / str(flag)).fts_step()
        steps.append(model.state_dict())
    diffs = {k: (steps[0][k] - steps[1][k]).abs().max().item() for k in steps[0]}
    assert max(diffs.values()) < 1e-6, {k: v for k, v in diffs.items() if v}
