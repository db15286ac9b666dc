"""Benchmark: seconds per SOPHON outer iteration versus the same number of plain training steps.

One outer iteration = ml_loop FTS steps (each K inner fine-tuning steps + K suppression gradients)
plus nl_loop NTR steps. Its natural yardstick is K+1 ordinary training steps on the same model and
batch size: the ratio printed is the simulation's overhead.

    python -m sophon.bench                         # tiny-gpt2 size, random weights and tokens
    python -m sophon.bench --size gpt2 --device cuda --bs 8 --seq 256
"""

import argparse
import resource
import tempfile
import time

import torch
from torch.utils.data import TensorDataset

from sophon.config import LoopConfig
from sophon.device import resolve_device
from sophon.models.causal_lm import CausalLMClassifier
from sophon.protect import Protector, ProtectConfig
from sophon.simulate import Environment
from sophon.settings.text import TextTask

SIZES = {"tiny-gpt2": dict(n_layer=4, n_embd=128, n_head=4, vocab_size=4096),
         "gpt2": dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257)}


def random_tokens(n: int, seq: int, vocab: int, labelled: bool, g: torch.Generator) -> TensorDataset:
    ids = torch.randint(1, vocab, (n, seq), generator=g)
    mask = torch.ones(n, seq, dtype=torch.long)
    if labelled:
        return TensorDataset(ids, mask, torch.randint(0, 2, (n,), generator=g))
    return TensorDataset(ids, mask)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny-gpt2", choices=SIZES)
    p.add_argument("--adaptation_steps", type=int, default=LoopConfig.adaptation_steps)
    p.add_argument("--suppress_every", type=int, default=LoopConfig.suppress_every,
                   help="suppression gradient every N inner steps")
    p.add_argument("--bs", type=int, default=LoopConfig.bs)
    p.add_argument("--seq", type=int, default=48)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    from transformers import GPT2Config, GPT2LMHeadModel

    device = resolve_device(args.device)
    g = torch.Generator().manual_seed(0)
    cfg = SIZES[args.size]
    lm = GPT2LMHeadModel(GPT2Config(n_positions=max(64, args.seq), bos_token_id=0, eos_token_id=0, **cfg))
    model = CausalLMClassifier(lm).to(device)
    n = 4 * args.bs
    task = TextTask(random_tokens(n, args.seq, cfg["vocab_size"], True, g), random_tokens(8, args.seq, cfg["vocab_size"], True, g),
                    random_tokens(n, args.seq, cfg["vocab_size"], False, g), random_tokens(8, args.seq, cfg["vocab_size"], False, g),
                    "ice", device)
    config = ProtectConfig(adaptation_steps=args.adaptation_steps, suppress_every=args.suppress_every, bs=args.bs,
                           finetune_epochs=0,
                           environments=[Environment("sgd", 1e-4, args.bs)])
    scratch = tempfile.TemporaryDirectory()  # the loop's run folder: the steps timed here write nothing in it
    protector = Protector(model, task, config, run_dir=scratch.name)

    def timed(fn, repeats):
        fn()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / repeats

    outer = timed(lambda: (protector.fts_step(), protector.ntr_step()), args.iters)
    learner = task.learner(model)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-4)
    batch = [t[: args.bs].to(device) for t in task.restricted_train.tensors]

    def plain_steps():
        for _ in range(args.adaptation_steps + 1):
            opt.zero_grad(set_to_none=True)
            task.finetune_loss(learner, batch).backward()
            opt.step()

    plain = timed(plain_steps, args.iters)
    peak = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    result = {"size": args.size, "device": str(device), "K": args.adaptation_steps,
              "suppress_every": args.suppress_every, "bs": args.bs, "seq": args.seq,
              "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
              "outer_iteration_s": outer, "plain_K+1_steps_s": plain, "overhead_ratio": outer / plain,
              "peak_memory_GiB": peak}
    for k, v in result.items():
        print(f"{k:>20}: {v:.4g}" if isinstance(v, float) else f"{k:>20}: {v}")
    return result


if __name__ == "__main__":
    main()
