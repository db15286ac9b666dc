"""Attack a released protected LM with the ecosystem's own trainer: Hugging Face `Trainer` fine-tunes the
normal, the SOPHON (a `python -m sophon.export` folder) and a scratch model on the restricted set, and the
project's table, verdicts and curves come out (results/finetune_hf/<time>/).

    python -m sophon.export results/ice/tiny-gpt2_RT/<time> --out releases/tiny-gpt2-sophon
    python classification/finetune_hf.py --sophon releases/tiny-gpt2-sophon
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's sophon, as generation/*.py

from sophon.cli import fail
from sophon.hf_finetune import attack_with_trainer
from sophon.settings import arch_args, text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tiny = arch_args("tiny-gpt2")  # data and budget as the tiny-gpt2 preset's attacks
    p.add_argument("--normal", default=text.default_pretrained(tiny), help="pre-trained model folder")
    p.add_argument("--sophon", required=True, help="the protected model, as written by python -m sophon.export")
    # 5e-5 is TrainingArguments' default, what a user who changes nothing runs; it suits 100M+ models and
    # barely moves a 1M-parameter one in 128 steps. 3e-4 is the text setting's usual AdamW lr (README).
    p.add_argument("--lr", default="5e-5,3e-4", help="comma-separated learning rates, one table row each")
    p.add_argument("--epochs", type=int, default=tiny.truly_finetune_epochs, help="epochs of every attack")
    p.add_argument("--bs", type=int, default=tiny.finetune_bs)
    p.add_argument("--seeds", type=int, default=tiny.seeds, help="seeds --seed, --seed+1, ...")
    p.add_argument("--seed", type=int, default=tiny.seed)
    p.add_argument("--dataset", default=tiny.dataset, help="restricted set")
    p.add_argument("--original", default=tiny.original, help="original set (perplexity of normal and SOPHON)")
    p.add_argument("--train_size", type=int, default=tiny.train_size, help="restricted training examples")
    p.add_argument("--test_size", type=int, default=tiny.test_size)
    p.add_argument("--max_len", type=int, default=tiny.max_len, help="tokens per example")
    p.add_argument("--data_root", default=None, help="local copies of IMDB/PILE")
    p.add_argument("--root", default=tiny.root)
    args = p.parse_args(argv)
    for flag in ("normal", "sophon"):
        if not (Path(getattr(args, flag)) / "config.json").exists():
            fail(f"--{flag} {getattr(args, flag)} is not a save_pretrained folder (no config.json); "
                 + ("export a run first: python -m sophon.export RUN_DIR --out DIR" if flag == "sophon"
                    else "run classification/pretrain.py --arch tiny-gpt2, or pass the folder"))
    try:
        lrs = [float(x) for x in args.lr.split(",") if x.strip()]
    except ValueError:
        fail(f"--lr {args.lr!r}: write comma-separated numbers, e.g. 5e-5,3e-4")
    if not lrs or min(lrs) <= 0 or args.seeds < 1:
        fail("--lr needs at least one positive rate and --seeds at least 1")
    out = Path(args.root) / "finetune_hf" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=False)
    (out / "args.json").write_text(json.dumps({**vars(args), "command": " ".join(sys.argv)}, indent=2))
    print(f"run folder: {out}", flush=True)
    attack_with_trainer({"normal": Path(args.normal), "sophon": Path(args.sophon)}, out, lrs, args.bs, args.epochs,
                        [args.seed + i for i in range(args.seeds)], args.dataset, args.original, args.train_size,
                        args.test_size, args.max_len, args.data_root)
    print(f"table: {out / 'results.md'}  curves: {out / 'curves.png'}")
    return out


if __name__ == "__main__":
    main()
