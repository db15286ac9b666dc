"""SOPHON for diffusion with the denial-of-service loss (drive the predicted noise to zero on the restricted domain).

    python generation/denial_service_loss.py                          # unet-tiny, FASHION -> LFW, CPU preset
    python generation/denial_service_loss.py --finetune RUN/checkpoints/final.safetensors   # only the attack test
    python generation/denial_service_loss.py --pretest pretrained     # baseline: attack the pre-trained model
    python generation/denial_service_loss.py --pretest scratch        # baseline: train from scratch

mean_squared_loss.py is this script with the MSE-ascent loss.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sophon.cli import generation_main

if __name__ == "__main__":
    generation_main(__doc__.splitlines()[0], loss="dos")
