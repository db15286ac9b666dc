"""On CPU a result depends on the kernels' thread count (their reduction order): --threads sets it, the
attack cache keys a CPU cell on it, and pre-training records it beside the weights."""

import json
from types import SimpleNamespace

import pytest
import torch

from sophon.attack import Attack
from sophon.cli import parse, pretrain_main
from sophon.experiment import cell_key


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_the_threads_flag_sets_torchs_thread_count_and_zero_leaves_it(keep_threads):
    torch.set_num_threads(2)
    args, _ = parse("test", ["--arch", "cnn"])
    assert torch.get_num_threads() == 2 and args.threads == 2  # args.json records the count, not 0
    args, _ = parse("test", ["--arch", "cnn", "--threads", "1"])
    assert args.threads == 1 and torch.get_num_threads() == 1


def test_bad_thread_count_exits_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        parse("test", ["--arch", "cnn", "--threads", "-1"])
    assert stop.value.code == 2 and "threads" in capsys.readouterr().err


def test_a_cpu_cells_cache_key_holds_the_thread_count_and_a_gpu_cells_does_not(tmp_path, keep_threads):
    attack = Attack("sgd", 1e-2, 32, 10)
    keys = {}
    for device in ("cpu", "cuda"):
        task = SimpleNamespace(cache_key="DIGITS", device=torch.device(device))
        for threads in (1, 2):
            torch.set_num_threads(threads)
            keys[device, threads] = cell_key(tmp_path, "weights", task, attack, 0)
    assert keys["cpu", 1] != keys["cpu", 2]
    assert keys["cuda", 1] == keys["cuda", 2]
    torch.set_num_threads(1)  # a task's device may be a string
    assert keys["cpu", 1] == cell_key(tmp_path, "weights", SimpleNamespace(cache_key="DIGITS", device="cpu"), attack, 0)


def test_pretraining_records_its_thread_count(tmp_path, keep_threads):
    tiny = ["--steps", "1", "--vocab_size", "300", "--n_layer", "1", "--n_embd", "16", "--n_head", "2",
            "--max_len", "16", "--bs", "4", "--device", "cpu", "--unlabelled", "none", "--threads", "1"]
    folder = pretrain_main("test", tiny + ["--pretrained", str(tmp_path / "lm")])
    assert json.loads((folder / "pretraining.json").read_text())["threads"] == 1
