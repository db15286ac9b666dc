"""Pre-train a diffusion UNet on the original domain (the "normal" model SOPHON starts from).

    python generation/train_diffusion_model.py                      # unet-tiny on FASHION, ~5 min on 2 CPU cores
    python generation/train_diffusion_model.py --arch unet-paper --original CIFAR100 --data_root DATA --download

Writes a diffusers save_pretrained folder generation/pretrained/<arch>_<original>_<size>px/ (or --pretrained),
with pretrain.json (test MSE) and samples.png.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sophon.cli import parse

args, diffusion = parse(__doc__.splitlines()[0], kind="diffusion", default_arch="unet-tiny")
diffusion.pretrain(args)
