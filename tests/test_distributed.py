"""Several processes on CPU (gloo), through accelerate's launcher: the environments of each FTS step
are sharded and their gradients summed, so the run must not depend on the process count."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sophon import distributed
from tests.toy import Headed

WORKER = Path(__file__).with_name("dist_worker.py")


def run(processes: int, run_dir: Path, total: int, *extra: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = distributed.launch_command(processes) + [str(WORKER), str(run_dir), str(total), *extra]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"processes: {processes}" in done.stdout
    return done.stdout


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(run_dir / "checkpoints" / "final.safetensors"))
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


def same(a: dict, b: dict, exact: bool = False) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if exact else torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a)


def files(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    run(1, base / "one", 4)
    run(2, base / "two", 4)
    return base


def test_two_processes_give_the_update_of_one(runs):
    one, two = weights(runs / "one"), weights(runs / "two")
    assert same(one, two)
    torch.manual_seed(0)  # the worker's initial weights: the runs moved far from them, so `same` can fail
    init = {f"model.{k}": v for k, v in Headed().state_dict().items()}
    assert not same(one, init)
    losses = [[json.loads(l)["suppression_loss"] for l in (runs / r / "metrics.jsonl").read_text().splitlines()[1:]]
              for r in ("one", "two")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_only_the_main_process_writes(runs):
    assert files(runs / "two") == files(runs / "one")
    lines = (runs / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["iteration"] for l in lines] == [0, 1, 2, 3, 4]  # once each, not once per process


def test_a_resumed_two_process_run_equals_an_uninterrupted_one(runs, tmp_path):
    run(2, tmp_path / "part", 2)
    run(2, tmp_path / "part", 4, "--resume")
    assert same(weights(tmp_path / "part"), weights(runs / "two"), exact=True)


def test_a_two_process_run_resumes_in_one_process(runs, tmp_path):
    run(2, tmp_path / "part", 2)
    run(1, tmp_path / "part", 4, "--resume")
    assert same(weights(tmp_path / "part"), weights(runs / "one"))


def test_attack_cells_shared_by_two_processes_give_the_same_curves(tmp_path):
    """Each process runs every other cell (attack x seed x start); the gathered table is the same."""
    run(1, tmp_path / "one", 0, "--attacks")
    run(2, tmp_path / "two", 0, "--attacks")
    one, two = (json.loads((tmp_path / d / "curves.json").read_text()) for d in ("one", "two"))
    assert one == two
    assert len(one["normal"]) == 3 and all(len(per_seed) == 2 for per_seed in one["normal"].values())
    assert one["normal"] != one["scratch"]


@pytest.mark.parametrize("code", [0, 3])
def test_a_launched_process_leaves_with_its_entry_points_code_and_skips_the_teardown(code, tmp_path):
    """gloo's threads can abort the interpreter's teardown after a finished run (SIGABRT), so a launched
    process ends straight after its process group; the worker's own atexit message shows whether the
    teardown ran (it does in one process, without a launcher)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    for processes in (1, 2):
        command = distributed.launch_command(processes) + [str(WORKER), str(tmp_path), "0", "--exit", str(code)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.stdout.count(f"processes: {processes}") == processes
        assert done.stdout.count("teardown ran") == (1 if processes == 1 else 0)
        if processes == 1 or code == 0:
            assert done.returncode == code, done.stderr[-3000:]
        else:  # the launcher fails and names each process's code
            assert done.returncode != 0 and done.stderr.count(f"exitcode  : {code}") == processes


def test_an_entry_point_records_the_exit_code_its_script_ends_with(monkeypatch):
    monkeypatch.setattr(distributed, "_ended", [])

    def ending(how):
        @distributed.entry_point
        def main():
            if isinstance(how, BaseException):
                raise how
            return how
        return main

    assert ending("result")() == "result"
    for how in (SystemExit(2), SystemExit(None), SystemExit("error: a message"), KeyError("bug"), KeyboardInterrupt()):
        with pytest.raises(type(how)):
            ending(how)()
    assert distributed._ended == [0, 2, 0, 1, 1, 130]
