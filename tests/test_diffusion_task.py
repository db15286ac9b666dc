"""The diffusion setting: suppression losses, the denoising metric, one SOPHON iteration, sampling."""

import argparse
import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sophon import checkpoint
from sophon.experiment import attack_curve
from sophon.attack import Attack
from sophon.losses import denial_of_service, mse_ascent
from sophon.models.unet import sample, unet
from sophon.protect import ProtectConfig, protect
from sophon.simulate import Environment
from sophon.settings import arch_args, diffusion, setting_for
from sophon.settings.diffusion import DiffusionTask
from sophon.data.diffusion_images import InMemoryImages


class Constant(nn.Module):
    """Predicts the same noise value everywhere, like a UNet that ignores its input."""

    def __init__(self, value):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x, t):
        return SimpleNamespace(sample=torch.zeros_like(x) + self.value)


def images(n, seed, flip, size=16):
    g = torch.Generator().manual_seed(seed)
    return InMemoryImages(torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8), flip)


def small_task(suppression="dos", clamp=None):
    return DiffusionTask(images(16, 0, True), images(8, 1, False), images(16, 2, True), images(8, 3, False),
                         suppression, clamp,
                         eval_size=8, eval_repeats=2)


def test_losses_on_known_tensors():
    pred = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    noise = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert denial_of_service(pred).item() == pytest.approx((1 + 4 + 9) / 4)
    assert mse_ascent(pred, noise).item() == pytest.approx(-(0 + 4 + 9 + 0) / 4)
    assert mse_ascent(pred, noise, clamp=2.0).item() == pytest.approx(-2.0)


def test_task_losses_and_metric_on_a_constant_denoiser():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 16, 16)
    assert small_task("dos").suppression_loss(Constant(0.5), x).item() == pytest.approx(0.25)
    # Predicting 0 everywhere: the ε-MSE is E[ε²] = 1, so MSE ascent is about -1, the metric about 1.
    assert small_task("mse").suppression_loss(Constant(0.0), x).item() == pytest.approx(-1.0, abs=0.05)
    assert small_task("mse", clamp=0.3).suppression_loss(Constant(0.0), x).item() == pytest.approx(-0.3)
    assert small_task().finetune_loss(Constant(0.0), x).item() == pytest.approx(1.0, abs=0.05)
    task = small_task()
    task.eval_size, task.eval_repeats = 8, 50
    assert task.evaluate_restricted(Constant(0.0))["mse"] == pytest.approx(1.0, abs=0.05)
    # Predicting 1 everywhere adds 1 to E[(ε̂ - ε)²].
    assert task.evaluate_restricted(Constant(1.0))["mse"] == pytest.approx(2.0, abs=0.1)


def test_metric_is_reproducible_across_calls_and_global_seeds():
    task, model = small_task(), unet("unet-tiny", 1, 16)
    torch.manual_seed(1)
    first = task.evaluate_original(model)["mse"]
    torch.manual_seed(2)
    assert task.evaluate_original(model)["mse"] == first


def test_metric_builds_no_autograd_graph():
    """Evaluation runs under no_grad: the denoiser's output never carries a graph (memory, speed)."""
    task, model, graphs = small_task(), Constant(0.5), []
    model.register_forward_hook(lambda m, inputs, out: graphs.append(out.sample.requires_grad))
    task.evaluate_original(model)
    assert graphs and not any(graphs)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="choose one of dos, mse"):
        small_task("ice")
    with pytest.raises(ValueError, match="unet-tiny"):
        unet("unet-huge", 1)
    with pytest.raises(ValueError, match="unet-tiny"):
        setting_for("unet-huge")
    assert setting_for("unet-tiny") is diffusion


@pytest.mark.parametrize("suppression", ["dos", "mse"])
def test_one_protect_iteration_changes_weights_and_checkpoints(tmp_path, suppression):
    torch.manual_seed(0)
    model = unet("unet-tiny", 1, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = ProtectConfig(total_loop=1, adaptation_steps=2, test_iterval=1, finetune_epochs=1, bs=4,
                           environments=[Environment("sgd", 1e-2, 8)], guard=0)
    summary = protect(model, small_task(suppression), config, tmp_path)
    assert summary["status"] == "finished" and summary["iteration"] == 1
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > 0.9 * len(before)
    tensors, meta = checkpoint.load(tmp_path / "checkpoints" / "final")
    assert meta["iteration"] == 1
    assert torch.equal(tensors["model.conv_in.weight"], model.conv_in.weight)
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["original_mse"] > 0 and "finetuned_mse" in records[-1]
    # The checkpoint loads back into a UNet through the same path the scripts use.
    args = argparse.Namespace(arch="unet-tiny", original="FASHION", dataset="LFW", image_size=16)
    loaded = diffusion.load_unet(tmp_path / "checkpoints" / "final.safetensors", args)
    assert torch.equal(loaded.conv_in.weight, model.conv_in.weight)


def test_sampling_shape_range_and_determinism():
    model = unet("unet-tiny", 3, 16)
    a = sample(model, 5, steps=3, seed=0, batch_size=4)
    assert a.shape == (5, 3, 16, 16)
    assert a.min() >= 0 and a.max() <= 1 and a.std() > 0.01
    assert torch.equal(a, sample(model, 5, steps=3, seed=0, batch_size=4))


def test_artifact_hook_writes_and_reuses_cached_grids(tmp_path):
    calls = []

    def artifacts(learner, name, folder):
        calls.append(name)
        path = folder / f"samples_{name}.png"
        path.write_bytes(b"png")
        return [path]

    task, model = small_task(), unet("unet-tiny", 1, 16)
    attack = Attack("sgd", 1e-3, 8, 1)
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        curve = attack_curve(model, task, attack, 0, tmp_path / "cache", "weights", artifacts, "normal_sgd",
                             tmp_path / run)
        assert (tmp_path / run / "samples_normal_sgd.png").read_bytes() == b"png"
        assert len(curve) == 2
    assert len(calls) == 1  # the second run came from the cache, grid included


class SeesTimesteps(nn.Module):
    """Records the timesteps it is asked about."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t):
        self.seen.append(t.clone())
        return SimpleNamespace(sample=torch.zeros_like(x))


def test_suppress_t_max_bounds_only_the_suppression_losss_timesteps():
    """--suppress_t_max: the suppression loss sees t < t_max; fine-tuning and the metric keep all 1,000."""
    x = torch.zeros(512, 1, 16, 16)
    task = DiffusionTask(images(16, 0, True), images(8, 1, False), images(16, 2, True), images(8, 3, False),
                         "dos", suppress_t_max=100)
    model = SeesTimesteps()
    task.suppression_loss(model, x)
    assert model.seen[-1].max() < 100 and model.seen[-1].min() >= 0
    task.finetune_loss(model, x)
    assert model.seen[-1].max() >= 100  # 512 uniform draws over 1,000 steps
    assert small_task().suppress_t_max is None
    built = diffusion.build_task(arch_args("unet-tiny", suppress_t_max=300, device="cpu"), "dos")  # flag to task
    assert built.suppress_t_max == 300


def test_timestep_bands_of_the_diagnostic_tool():
    """tools/timestep_mse.py: band b sees only t in [b*100, (b+1)*100), and a denoiser predicting 0 scores E[ε²] = 1
    in every band."""
    from tests.tool_module import load

    tool = load("timestep_mse")
    task = small_task()
    model = SeesTimesteps()
    mse = tool.band_mse(model, task, task.restricted_test, bands=10)
    assert len(mse) == 10 and all(v == pytest.approx(1.0, abs=0.15) for v in mse)
    assert [(int(t.min()) // 100, int(t.max()) // 100) for t in model.seen] == [(b, b) for b in range(10)]
