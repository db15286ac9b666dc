"""Image classifiers: every arch runs, the head swap is head-only, BatchNorm survives a simulation step."""

import argparse

import pytest
import torch

from sophon.models.vision import IMAGE_ARCHS, build_classifier, load_weights, read_weights, to_classifier_keys
from sophon.protect import Protector, ProtectConfig
from sophon.simulate import Environment
from sophon.settings import SETTING_ARCHS, arch_args, setting_for
from sophon.settings import image as setting


def test_registered_archs_match_the_setting():
    assert tuple(setting.ARCHS) == SETTING_ARCHS["image"] == IMAGE_ARCHS
    assert setting_for("res50") is setting


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_every_arch_runs_forward_and_backward(arch):
    torch.manual_seed(0)
    model = build_classifier(arch, num_classes=7)
    assert isinstance(model.head, torch.nn.Linear) and model.head.out_features == 7
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    first = next(p for n, p in model.body.named_parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0  # gradient reaches the input layer


def test_vgg_is_configuration_b_without_batchnorm():
    model = build_classifier("vgg", 10)
    convs = [m for m in model.body.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512, 512, 512]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and linears[-1] is model.head


def _cnn_task(suppression="ice"):
    args = arch_args("cnn", dataset="DIGITS", original="DIGITS", device="cpu", train_size=64, original_size=64,
                     test_size=64, img_size=16)
    return args, setting.build_task(args, suppression)


def test_learner_replaces_only_the_head():
    args, task = _cnn_task()
    model = setting.build_model(args, "scratch")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    learner = task.learner(model)
    for name, value in learner.state_dict().items():
        if name.startswith("body."):
            assert torch.equal(value, before[name]), name
    assert not torch.equal(learner.head.weight, model.head.weight)  # a fresh head
    assert learner.head.out_features == 10 and learner.head.in_features == model.head.in_features
    assert learner.body is not model.body  # a copy: training it leaves θ alone
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])


def batchnorm_buffers(model):
    return {n: b.clone() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))}


def test_batchnorm_statistics_unchanged_by_a_simulation_step(tmp_path):
    """FTS trains a deep copy (DESIGN §1), so θ's BatchNorm statistics stay as they were with no
    save/restore at all; this fails if the simulation ever trains θ's own modules."""
    args, task = _cnn_task()
    model = setting.build_model(args, "scratch")
    saved = batchnorm_buffers(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = ProtectConfig(lr=1e-3, bs=16, adaptation_steps=2, environments=[Environment("sgd", 0.1, 16)])
    Protector(model, task, config, tmp_path).fts_step()
    assert saved and any(n.endswith("running_mean") for n in saved)
    for name, value in batchnorm_buffers(model).items():
        assert torch.equal(value, saved[name]), name
    assert any(not torch.equal(p, weights[n]) for n, p in model.named_parameters() if n.startswith("body."))


def test_torchvision_keys_are_renamed_and_shapes_checked(tmp_path):
    import torchvision

    library = torchvision.models.resnet18(weights=None, num_classes=10)
    mapped = to_classifier_keys(library.state_dict(), "res18")
    assert "head.weight" in mapped and "body.conv1.weight" in mapped and "fc.weight" not in mapped
    model = build_classifier("res18", 10)
    path = tmp_path / "res18.pt"
    torch.save(library.state_dict(), path)
    load_weights(model, read_weights(path), "res18")
    assert torch.equal(model.head.weight, library.fc.weight)
    with pytest.raises(ValueError, match="class count"):
        load_weights(build_classifier("res18", 3), library.state_dict(), "res18")


def test_normal_model_missing_names_the_pretrain_command(tmp_path):
    args = arch_args("cnn", dataset="DIGITS", original="DIGITS", device="cpu",
                     pretrained=str(tmp_path / "absent.safetensors"))
    with pytest.raises(FileNotFoundError, match="classification/pretrain.py --arch cnn"):
        setting.build_model(args, "normal")


def test_a_wider_cnn_has_its_own_pretrained_file(tmp_path, monkeypatch):
    # pre-training a --cnn_width 32 model must not overwrite (or be loaded as) the width-16 preset's file
    from sophon.settings import image
    assert image.pretrained_path("cnn", "FASHION") == image.PRETRAINED_DIR / "cnn_FASHION.safetensors"
    assert image.pretrained_path("cnn", "FASHION", 32).name == "cnn-w32_FASHION.safetensors"
    assert image.pretrained_path("res18", "FASHION", 32).name == "res18_FASHION.safetensors"
    monkeypatch.setattr(image, "PRETRAINED_DIR", tmp_path)
    args = arch_args("cnn", dataset="DIGITS", original="DIGITS", device="cpu", cnn_width=32)
    with pytest.raises(FileNotFoundError, match="cnn-w32_DIGITS.*--cnn_width 32"):
        setting.build_model(args, "normal")


def test_unknown_arch_and_dataset_are_named():
    with pytest.raises(ValueError, match="unknown image --arch 'res5'.*res18"):
        build_classifier("res5", 10)
    with pytest.raises(ValueError, match="unknown --arch 'res5'"):
        setting_for("res5")
    args = argparse.Namespace(arch="cnn", dataset="CIFAR11", original="FASHION")
    with pytest.raises(ValueError, match="unknown image --dataset 'CIFAR11'.*CIFAR10"):
        setting.build_task(args, "ice")


def test_pretrain_then_normal_start_learns_digits(tmp_path, monkeypatch):
    """Pre-training writes the cache that build_model("normal") reads, and it is above chance."""
    monkeypatch.setattr(setting, "PRETRAINED_DIR", tmp_path)
    args = arch_args("cnn", original="DIGITS", dataset="DIGITS", img_size=16, device="cpu", pretrain_epochs=8,
                     pretrain_lr=1e-2, pretrain_bs=64, test_size=None)
    path = setting.pretrain(args)
    assert path == tmp_path / "cnn_DIGITS.safetensors" and path.exists()
    model = setting.build_model(args, "normal")
    task = setting.build_task(args, "klu")
    accuracy = task.evaluate_original(model)["accuracy"]
    assert accuracy > 0.6, accuracy  # chance is 0.1
    scratch = setting.build_model(args, "scratch")
    assert task.evaluate_original(scratch)["accuracy"] < 0.4
