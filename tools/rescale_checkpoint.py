"""Write a checkpoint whose BatchNorm-fed channels all have weight norm NORM: the same function,
another optimisation geometry (sophon/rescale.py). With a large NORM it builds the step-size trap
that the attack key `rescale=1` exists to undo, so a suite can be checked against it:

    python tools/rescale_checkpoint.py --arch cnn --path RUN/checkpoints/final.safetensors --norm 50 --out inflated
"""

import argparse

from sophon import checkpoint
from sophon.cli import fail, parse_setting_args, user_errors
from sophon.experiment import load_protected
from sophon.rescale import DEFAULT_CHANNEL_NORM, rescaled


@user_errors  # a bad name, a missing or corrupt checkpoint: one line, exit 2
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="cnn", help="image classifier of the checkpoint")
    parser.add_argument("--path", required=True, help="the checkpoint to read (.safetensors)")
    parser.add_argument("--out", required=True, help="the checkpoint to write (NAME or NAME.safetensors)")
    parser.add_argument("--norm", type=float, default=DEFAULT_CHANNEL_NORM,
                        help="every BatchNorm-fed channel's weight norm (default: PyTorch's default-init norm)")
    ns = parser.parse_args(argv)
    if not ns.norm > 0:
        fail(f"--norm must be positive, got {ns.norm}")
    args, setting = parse_setting_args(__doc__, ["--arch", ns.arch, "--device", "cpu"])
    model = rescaled(load_protected(args, setting, ns.path), ns.norm)
    _, meta = checkpoint.load(ns.path)
    written = checkpoint.save_model(ns.out, model, {**meta, "rescaled_from": ns.path, "channel_norm": ns.norm})
    print(f"wrote {written}")


if __name__ == "__main__":
    main()
