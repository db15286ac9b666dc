"""Benchmark: what a SOPHON outer iteration costs, against plain training, on random data.

One outer iteration = one FTS step (each of `--envs` environments: K inner fine-tuning steps and the
suppression gradients) plus one NTR step. Its yardstick is K+1 ordinary training steps of the same
model and batch: the ratio printed is the simulation's overhead. Throughput is examples (images, or
tokens for text) per second of plain training; on CUDA, model FLOPs utilisation (MFU) is the FLOPs
of one plain training step (counted by torch's FlopCounterMode) per second over the card's dense bf16
peak.

    python -m sophon.bench                                   # tiny-gpt2 size, CPU
    python -m sophon.bench --size gpt2 --precision bf16 --bs 16 --seq 1024   # on a GPU: MFU
    python -m sophon.bench --size cnn --processes 2 --envs 4  # 1 process vs 2 for the same work
    python -m sophon.bench --size cnn --bs 64 --adaptation_steps 10 --probe_weight 0.01   # the probe's cost
    python -m sophon.bench --size cnn --bs 64 --simulate sgd:0.1,adam:0.01:method=head    # a simulated linear probe
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch
from torch.utils.data import TensorDataset

from sophon import distributed
from sophon.config import LoopConfig
from sophon.device import resolve_device
from sophon.precision import PRECISIONS, Precision
from sophon.protect import Protector, ProtectConfig
from sophon.simulate import Environment, environments_from_specs
from sophon.task import draw_batch, move

TEXT = {"tiny-gpt2": dict(n_layer=4, n_embd=128, n_head=4, vocab_size=4096),
        "gpt2": dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257)}
IMAGE = ("cnn", "res18", "res50")
DIFFUSION = ("unet-tiny", "unet-paper")
SIZES = (*TEXT, *IMAGE, *DIFFUSION)

# Dense bf16 peak FLOP/s by card name (vendor data sheets, SXM forms where the name does not say).
BF16_PEAK = {"H200": 989.4e12, "H100 PCIe": 756e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12,
             "L4": 121e12, "A10": 125e12}


def bf16_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in BF16_PEAK.items() if key in name), None)


def random_tokens(n: int, seq: int, vocab: int, labelled: bool, g: torch.Generator) -> TensorDataset:
    ids = torch.randint(1, vocab, (n, seq), generator=g)
    mask = torch.ones(n, seq, dtype=torch.long)
    return TensorDataset(ids, mask, torch.randint(0, 2, (n,), generator=g)) if labelled else TensorDataset(ids, mask)


def random_images(n: int, size: int, labelled: bool, g: torch.Generator) -> TensorDataset:
    x = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    return TensorDataset(x, torch.randint(0, 10, (n,), generator=g)) if labelled else TensorDataset(x)


def build(size: str, bs: int, seq: int, device: torch.device):
    """(model, task, examples per step): the size's model on random data of the right shape."""
    g = torch.Generator().manual_seed(0)
    n = 4 * bs
    if size in TEXT:
        from transformers import GPT2Config, GPT2LMHeadModel

        from sophon.models.causal_lm import CausalLMClassifier
        from sophon.settings.text import TextTask

        cfg = TEXT[size]
        lm = GPT2LMHeadModel(GPT2Config(n_positions=max(64, seq), bos_token_id=0, eos_token_id=0, **cfg))
        data = [random_tokens(m, seq, cfg["vocab_size"], labelled, g)
                for m, labelled in ((n, True), (8, True), (n, False), (8, False))]
        return CausalLMClassifier(lm).to(device), TextTask(*data, "ice", device), bs * seq
    if size in IMAGE:
        from sophon.models.vision import build_classifier
        from sophon.settings.image import ImageTask

        data = [random_images(m, 32, True, g) for m in (n, 8, n, 8)]
        return build_classifier(size, 10).to(device), ImageTask(*data, 10, "ice", device), bs
    from sophon.data.diffusion_images import InMemoryImages
    from sophon.models.unet import unet
    from sophon.settings.diffusion import DiffusionTask

    image = 32
    data = [InMemoryImages(torch.randint(0, 256, (m, 3, image, image), generator=g, dtype=torch.uint8), False)
            for m in (n, 8, n, 8)]
    return unet(size, 3, image).to(device), DiffusionTask(*data, "dos", eval_size=8, eval_repeats=1, device=device), bs


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up (and any lazy initialisation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def measure(args) -> dict:
    device = resolve_device(args.device)
    model, task, examples = build(args.size, args.bs, args.seq, device)
    task.precision = Precision(args.precision, device)
    environments = args.environments or [Environment("sgd", 1e-4, args.bs)] * args.envs
    config = ProtectConfig(adaptation_steps=args.adaptation_steps, suppress_every=args.suppress_every, bs=args.bs,
                           finetune_epochs=0, environments=environments, probe_weight=args.probe_weight,
                           probe_support=args.probe_support)
    scratch = tempfile.TemporaryDirectory()  # the loop's run folder: the steps timed here write nothing
    protector = Protector(model, task, config, run_dir=scratch.name)
    outer = timed(lambda: (protector.fts_step(), protector.ntr_step()), args.iters, device)

    learner = task.learner(model)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-4)
    batch = move(draw_batch(task.restricted_train, args.bs, torch.Generator().manual_seed(1)), device)

    def plain_step():
        opt.zero_grad(set_to_none=True)
        with task.precision.autocast():
            loss = task.finetune_loss(learner, batch)
        loss.backward()
        opt.step()

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        plain_step()
    step_flops = counter.get_total_flops()
    step = timed(plain_step, args.iters * (args.adaptation_steps + 1), device)
    peak = bf16_peak(device)
    memory = (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return {"size": args.size, "device": str(device), "card": torch.cuda.get_device_name(device)
            if device.type == "cuda" else "cpu", "precision": args.precision, "processes": distributed.world(),
            "threads": torch.get_num_threads(), "K": args.adaptation_steps, "envs": args.envs, "bs": args.bs,
            "probe_weight": args.probe_weight, "probe_support": args.probe_support, "simulate": args.simulate or None,
            "seq": args.seq if args.size in TEXT else None,
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "outer_iteration_s": outer, "plain_K+1_steps_s": step * (args.adaptation_steps + 1),
            "overhead_ratio": outer / (step * (args.adaptation_steps + 1)),
            "plain_per_s": examples / step, "unit": "tokens" if args.size in TEXT else "images",
            "step_TFLOP": step_flops / 1e12, "achieved_TFLOPs": step_flops / step / 1e12,
            "mfu_vs_bf16_peak": step_flops / step / peak if peak else None, "peak_memory_GiB": memory}


def compare_processes(args, argv: list[str]) -> dict:
    """The same outer iterations (same --envs) timed in 1 process and in N, each a fresh launch; on
    CPU the cores are split between the processes."""
    cores = os.cpu_count() or 1
    rows = {}
    for n in (1, args.processes):
        threads = str(max(1, cores // n))
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        command = distributed.launch_command(n) + ["-m", "sophon.bench", *argv, "--processes", "1", "--json"]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"error: the {n}-process benchmark failed:\n{done.stderr[-2000:]}")
        rows[n] = json.loads(done.stdout.strip().splitlines()[-1])
    one, many = rows[1]["outer_iteration_s"], rows[args.processes]["outer_iteration_s"]
    result = {"size": args.size, "envs": args.envs, "iterations": args.iters, "cores": cores,
              "1_process_s_per_iteration": one, f"{args.processes}_processes_s_per_iteration": many,
              "speed_up": one / many}
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny-gpt2", choices=SIZES)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--adaptation_steps", type=int, default=LoopConfig.adaptation_steps)
    p.add_argument("--suppress_every", type=int, default=LoopConfig.suppress_every,
                   help="suppression gradient every N inner steps")
    p.add_argument("--envs", type=int, default=1, help="simulated environments per FTS step")
    p.add_argument("--probe_weight", type=float, default=0.0,
                   help="add the closed-form linear-probe attacker to every FTS step (classifiers only)")
    p.add_argument("--probe_support", type=int, default=None,
                   help="restricted examples the probe's head is fitted on, as the loop's flag (default 2 x bs)")
    p.add_argument("--simulate", default="", metavar="SPECS",
                   help="the simulated attackers as attack specs, as the loop's flag (replaces --envs)")
    p.add_argument("--bs", type=int, default=LoopConfig.bs)
    p.add_argument("--seq", type=int, default=48, help="tokens per example (text sizes)")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--processes", type=int, default=1,
                   help="N > 1: time the same work in 1 process and in N (accelerate's launcher)")
    p.add_argument("--json", action="store_true", help="print one JSON line (for scripts)")
    return p


@distributed.entry_point
def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    for flag in ("adaptation_steps", "suppress_every", "envs", "bs", "seq", "iters", "processes"):
        if getattr(args, flag) < 1:
            parser().error(f"--{flag} must be at least 1")
    if args.probe_weight and args.size in DIFFUSION:
        parser().error("--probe_weight needs a classifier's head; the diffusion sizes have none")
    if args.probe_support is not None and (args.probe_support < 1 or not args.probe_weight):
        parser().error("--probe_support must be at least 1 and needs --probe_weight")
    args.environments = None  # the --simulate attackers, parsed once here
    if args.simulate:
        try:
            args.environments = environments_from_specs(args.simulate, args.bs, args.adaptation_steps)
        except ValueError as e:
            parser().error(str(e))
        if any(e.head_only for e in args.environments) and args.size in DIFFUSION:
            parser().error("--simulate method=head needs a classifier's head; the diffusion sizes have none")
    if args.processes > 1:
        keep = [a for i, a in enumerate(argv) if a != "--processes" and (i == 0 or argv[i - 1] != "--processes")
                and not a.startswith("--processes=")]
        result = compare_processes(args, keep)
    else:
        result = measure(args)
    if not distributed.is_main():
        return result
    if args.json:
        print(json.dumps(result), flush=True)
        return result
    for k, v in result.items():
        print(f"{k:>26}: {v:.4g}" if isinstance(v, float) else f"{k:>26}: {v}", flush=True)
    return result


if __name__ == "__main__":
    main()
