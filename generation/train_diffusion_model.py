"""Pre-train a diffusion UNet on the original domain (the "normal" model SOPHON starts from).

    python generation/train_diffusion_model.py                      # unet-tiny on FASHION, ~5 min on 2 CPU cores
    python generation/train_diffusion_model.py --arch unet-paper --original CIFAR100 --data_root DATA --download

Writes a diffusers save_pretrained folder generation/pretrained/<arch>_<original>_<size>px/ (or --pretrained),
with pretrain.json (test MSE) and samples.png.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sophon.cli import base_parser, resolve
from sophon.settings import diffusion

parser = base_parser(__doc__.splitlines()[0])
diffusion.add_arguments(parser)
args = parser.parse_args()
args.arch = args.arch or "unet-tiny"
if args.arch not in diffusion.ARCHS:
    parser.error(f"unknown --arch {args.arch!r}; choose one of {', '.join(diffusion.ARCHS)}")
resolve(args, diffusion.PRESETS)
diffusion.pretrain(args)
