"""A SOPHON run on the toy task, for the multi-process tests: run it with `python` or under
`accelerate launch --num_processes 2 --cpu`; the run folder is the only output.

    python tests/dist_worker.py RUN_DIR TOTAL_LOOP [--resume] [--precision bf16] [--attacks] [--exit N]
"""

import argparse
import atexit
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sophon import distributed  # noqa: E402
from sophon.precision import Precision  # noqa: E402
from sophon.protect import ProtectConfig, protect  # noqa: E402
from sophon.simulate import Environment  # noqa: E402
from tests.toy import Headed, ToyTask  # noqa: E402

# Registered before accelerate's state, so it runs after distributed._close: it shows whether the
# interpreter's teardown ran.
atexit.register(print, "teardown ran", flush=True)


@distributed.entry_point
def main():
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("total_loop", type=int)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--attacks", action="store_true", help="run attack cells (run_dir/curves.json) instead of SOPHON")
    p.add_argument("--exit", type=int, default=None, help="do no work: start the processes and exit with this code")
    args = p.parse_args()
    if args.exit is not None:
        print(f"processes: {distributed.world()}", flush=True)
        raise SystemExit(args.exit)

    torch.manual_seed(0)
    model = Headed()
    task = ToyTask()
    task.precision = Precision(args.precision, task.device)
    # Three environments, so that two processes get unequal shares (two and one).
    envs = [Environment("sgd", 0.1, 16), Environment("adam", 1e-2, 8), Environment("rmsprop", 1e-3, 16)]
    config = ProtectConfig(total_loop=args.total_loop, test_iterval=2, adaptation_steps=3, bs=16, lr=1e-2,
                           finetune_epochs=1, environments=envs, guard=0, seed=7)
    if args.attacks:
        import json

        from sophon.attack import Attack
        from sophon.experiment import run_attacks

        torch.manual_seed(1)
        models = {"normal": model, "scratch": Headed()}
        attacks = {a.label: a for a in (Attack("sgd", 0.1, 16, 2), Attack("adam", 1e-2, 8, 2), Attack("rmsprop", 1e-3, 16, 1))}
        curves = run_attacks(models, task, attacks, [0, 1])
        if distributed.is_main():
            Path(args.run_dir).mkdir(parents=True, exist_ok=True)
            (Path(args.run_dir) / "curves.json").write_text(json.dumps(curves))
    else:
        protect(model, task, config, args.run_dir, resume=args.resume)
    print(f"processes: {distributed.world()}", flush=True)


if __name__ == "__main__":
    main()
