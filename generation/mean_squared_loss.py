"""SOPHON for diffusion with the MSE-ascent loss (push the predicted noise away from the true noise, --mse_clamp caps it).

    python generation/mean_squared_loss.py                          # unet-tiny, FASHION -> LFW, CPU preset
    python generation/mean_squared_loss.py --finetune RUN/checkpoints/final.safetensors   # only the attack test
    python generation/mean_squared_loss.py --pretest pretrained     # baseline: attack the pre-trained model
    python generation/mean_squared_loss.py --pretest scratch        # baseline: train from scratch

denial_service_loss.py is this script with the denial-of-service loss.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sophon.cli import base_parser, resolve
from sophon.experiment import finetune_test, protect_and_test
from sophon.tasks import diffusion

LOSS = "mse"

parser = base_parser(__doc__.splitlines()[0])
diffusion.add_arguments(parser)
parser.add_argument("--finetune", metavar="CKPT", default=None,
                    help="only run the fine-tuning test of this SOPHON checkpoint (.safetensors)")
parser.add_argument("--pretest", choices=("pretrained", "scratch"), default=None,
                    help="only run a baseline fine-tuning test: from the pre-trained model, or from scratch")
args = parser.parse_args()
args.arch = args.arch or "unet-tiny"
if args.arch not in diffusion.ARCHS:
    parser.error(f"unknown --arch {args.arch!r}; choose one of {', '.join(diffusion.ARCHS)}")
resolve(args, diffusion.PRESETS)
if args.finetune:
    finetune_test(args, diffusion, "sophon", args.finetune, LOSS)
elif args.pretest:
    finetune_test(args, diffusion, {"pretrained": "normal", "scratch": "scratch"}[args.pretest], None, LOSS)
else:
    protect_and_test(args, LOSS, diffusion)
