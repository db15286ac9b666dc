"""A PNG grid of DDIM samples from any diffusion checkpoint.

    python generation/generateimg.py --ckpt results/dos/unet-tiny_LFW/<time>/checkpoints/final.safetensors
    python generation/generateimg.py                       # the pre-trained model (generation/pretrained/)
    python generation/generateimg.py --scratch --out noise.png

--ckpt takes a SOPHON checkpoint (.safetensors) or a diffusers save_pretrained folder.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sophon.cli import parse
from sophon.device import device_of


def extra(parser):
    parser.add_argument("--ckpt", default=None, help="checkpoint to sample from (default: the pre-trained model)")
    parser.add_argument("--scratch", action="store_true", help="sample from an untrained UNet (a sanity check)")
    parser.add_argument("--out", default=None, help="PNG path (default: samples.png beside the checkpoint)")


args, diffusion = parse(__doc__.splitlines()[0], kind="diffusion", default_arch="unet-tiny", extra=extra)
args.device = str(device_of(args))
if args.scratch:
    model = diffusion.build_model(args, "scratch")
elif args.ckpt:
    model = diffusion.load_unet(args.ckpt, args).to(args.device)
else:
    model = diffusion.build_model(args, "normal")
default = Path(args.ckpt).with_suffix("") if args.ckpt else Path(args.root) / "samples"
out = Path(args.out) if args.out else Path(f"{default}_samples.png")
print(diffusion.save_samples(model, args, out))
