"""The benchmark measures what it says on any device: FLOPs of a training step, throughput, and MFU
against the right card's peak."""

import json

import pytest
import torch

from sophon import bench


@pytest.mark.parametrize("size, unit", [("cnn", "images"), ("tiny-gpt2", "tokens"), ("unet-tiny", "images")])
def test_bench_reports_flops_and_throughput(size, unit, capsys):
    result = bench.main(["--size", size, "--iters", "1", "--bs", "4", "--seq", "16", "--adaptation_steps", "2",
                         "--device", "cpu", "--json"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["size"] == size and printed["unit"] == unit
    assert result["step_TFLOP"] > 0 and result["plain_per_s"] > 0 and result["outer_iteration_s"] > 0
    assert result["mfu_vs_bf16_peak"] is None  # no peak to compare with on a CPU


def test_flops_counted_for_a_linear_model_match_the_formula():
    """FlopCounterMode is what MFU rests on: forward 2·b·i·o, backward twice that (input and weight grads)."""
    from torch.utils.flop_counter import FlopCounterMode

    layer, x = torch.nn.Linear(64, 32, bias=False), torch.randn(8, 64, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        layer(x).sum().backward()
    assert counter.get_total_flops() == 3 * 2 * 8 * 64 * 32


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989.4e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA H200", 989.4e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                                        ("Some Other GPU", None)])
def test_bf16_peak_by_card_name(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert bench.bf16_peak(torch.device("cuda")) == peak


def test_bench_times_the_probe_attacker_and_refuses_it_without_a_head(monkeypatch):
    from sophon import protect

    calls = []
    real = protect.Simulator.probe_gradient
    monkeypatch.setattr(protect.Simulator, "probe_gradient",
                        lambda self, *a, **k: calls.append(k.get("support_size")) or real(self, *a, **k))
    result = bench.main(["--size", "cnn", "--iters", "1", "--bs", "4", "--adaptation_steps", "1", "--device", "cpu",
                         "--probe_weight", "0.01", "--probe_support", "6", "--json"])
    assert result["probe_weight"] == 0.01 and result["probe_support"] == 6 and calls and set(calls) == {6}
    with pytest.raises(SystemExit) as err:
        bench.main(["--size", "cnn", "--probe_support", "6"])
    assert err.value.code == 2
    with pytest.raises(SystemExit) as err:
        bench.main(["--size", "unet-tiny", "--probe_weight", "0.01"])
    assert err.value.code == 2


def test_bench_times_the_simulated_attackers_it_is_given(monkeypatch):
    from sophon import protect

    seen = []
    real = protect.Simulator.suppression_gradient
    monkeypatch.setattr(protect.Simulator, "suppression_gradient",
                        lambda self, model, env, *a, **k: seen.append(env) or real(self, model, env, *a, **k))
    result = bench.main(["--size", "cnn", "--iters", "1", "--bs", "4", "--adaptation_steps", "1", "--device", "cpu",
                         "--simulate", "sgd:0.1,adam:0.01:bs=2:method=head", "--json"])
    assert result["simulate"] == "sgd:0.1,adam:0.01:bs=2:method=head"
    assert {(e.optimizer, e.lr, e.batch_size, e.head_only) for e in seen} == {("sgd", 0.1, 4, False),
                                                                              ("adam", 0.01, 2, True)}
    for bad in ("sgd:0.1:method=lora", "adam:1e-4:method=head"):
        with pytest.raises(SystemExit) as err:
            bench.main(["--size", "unet-tiny" if "head" in bad else "cnn", "--simulate", bad])
        assert err.value.code == 2
