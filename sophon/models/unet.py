"""Diffusion UNets (diffusers `UNet2DModel`), the DDPM noise schedule and DDIM sampling.

unet-tiny   four levels of 16-32-64-64 channels, no attention: ~1M parameters, trains on 2 CPU cores.
unet-paper  the DDPM CIFAR-10 configuration (Ho et al. 2020; `google/ddpm-cifar10-32`): 128-256-256-256
            channels, two ResNet blocks per level, self-attention at 16x16; ~36M parameters, for GPUs.
"""

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import nn

D, U, AD, AU = "DownBlock2D", "UpBlock2D", "AttnDownBlock2D", "AttnUpBlock2D"

UNET_CONFIGS = {
    "unet-tiny": dict(block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=8,
                      down_block_types=(D, D, D, D), up_block_types=(U, U, U, U)),
    "unet-paper": dict(block_out_channels=(128, 256, 256, 256), layers_per_block=2, dropout=0.1,
                       down_block_types=(D, AD, D, D), up_block_types=(U, U, AU, U)),
}

TRAIN_TIMESTEPS = 1000  # DDPM: T = 1000, linear betas 1e-4 .. 0.02


def unet(arch: str, channels: int, image_size: int = 32) -> UNet2DModel:
    """A randomly initialised UNet of `arch` for images of `channels` x `image_size` x `image_size`."""
    if arch not in UNET_CONFIGS:
        raise ValueError(f"unknown diffusion --arch {arch!r}; choose one of {', '.join(UNET_CONFIGS)}")
    return UNet2DModel(sample_size=image_size, in_channels=channels, out_channels=channels, **UNET_CONFIGS[arch])


def noise_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="linear")


@torch.no_grad()
def sample(model: nn.Module, n: int, steps: int = 50, seed: int = 0, scheduler: DDPMScheduler | None = None,
           batch_size: int = 64) -> torch.Tensor:
    """`n` images from `model` by deterministic DDIM (eta = 0) in `steps` steps, in [0, 1], shape (n, C, H, W)."""
    config = model.config
    ddim = DDIMScheduler.from_config((scheduler or noise_scheduler()).config)
    ddim.set_timesteps(steps)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    images = []
    for start in range(0, n, batch_size):
        shape = (min(batch_size, n - start), config.in_channels, config.sample_size, config.sample_size)
        x = torch.randn(shape, generator=generator).to(device)
        for t in ddim.timesteps:
            eps = model(x, t.to(device)).sample
            x = ddim.step(eps, t, x).prev_sample
        images.append(((x.clamp(-1, 1) + 1) / 2).cpu())
    model.train(was_training)
    return torch.cat(images)
