"""Original-domain perplexity of a pre-trained LM cut after k of its blocks (`--blocks k`), read through its
final norm and output embedding as a cut run sees it, on the text preset's original test set:

    python tools/cut_perplexity.py --arch smollm2-cut --blocks 2 4 8 16 30

It says at which depth the guard (perplexity at most 10 % above normal's) can judge what SOPHON costs the
original domain: where the cut is no next-token predictor, any NTR step improves on it.
"""

import argparse
import copy
import time

from sophon.cli import fail, parse_setting_args, user_errors
from sophon.settings import text


@user_errors  # a bad name, missing data or weights: one line, exit 2
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="smollm2-cut", help="text preset whose data and weights to read")
    parser.add_argument("--blocks", type=int, nargs="+", required=True, help="depths to cut at")
    ns, rest = parser.parse_known_args(argv)  # the rest (e.g. --test_size, --device) goes to the preset
    args, _ = parse_setting_args(__doc__, ["--arch", ns.arch, *rest], kind="text", default_arch=ns.arch)
    full, _ = text.load_pretrained(text.default_pretrained(args), args.arch, None)
    depth = getattr(full.config, "num_hidden_layers", None) or full.config.n_layer  # Llama-like, GPT-2
    wrong = [k for k in ns.blocks if not 1 <= k <= depth]
    if wrong:
        fail(f"--blocks {wrong[0]}: {ns.arch}'s LM has {depth} blocks; choose 1..{depth}")
    task = text.build_task(args, "ice")
    print(f"{args.original} test: {len(task.original_test)} texts of at most {args.max_len} tokens", flush=True)
    for k in ns.blocks:
        started = time.perf_counter()
        lm = text.cut_blocks(copy.deepcopy(full), k)
        model = text.CausalLMClassifier(lm, num_classes=2, pool=args.pool).to(task.device).eval()
        result = task.evaluate_original(model)
        print(f"blocks {k:3d} of {depth}: perplexity {result['perplexity']:.4g}, last-token accuracy "
              f"{result['last_token_accuracy']:.3f} ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
