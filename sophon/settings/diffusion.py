"""The generation setting: a DDPM (diffusers `UNet2DModel`) made non-fine-tunable on a restricted image domain.

Every loss is the DDPM ε-prediction objective at a uniformly drawn timestep: noise x0 to
x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε and ask the UNet for ε. SOPHON's suppression losses act on the
same prediction ε̂: DoS drives ε̂ to zero, MSE ascent drives ε̂ away from ε (DESIGN §1).
Metric: test denoising MSE with noise and timesteps drawn from a fixed seed, lower is better.
"""

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sophon.config import option
from sophon.device import device_of
from sophon.data.diffusion_images import DIFFUSION_DATASETS, channels_for, diffusion_dataset
from sophon.losses import denial_of_service, mse_ascent
from sophon.models.unet import UNET_CONFIGS, noise_scheduler, sample, unet
from sophon.task import draw_batch, move
from sophon.train import train_steps

NAME = "diffusion"  # the setting's name in suites and tables
ARCHS = tuple(UNET_CONFIGS)
SUPPRESSION_LOSSES = ("dos", "mse")
PRETRAINED_DIR = Path(__file__).resolve().parents[2] / "generation" / "pretrained"


@dataclass
class DiffusionConfig:
    """diffusion"""
    image_size: int = option(32, "resolution of the UNet and of every set", above=0)
    download: bool = option(False, "let torchvision download CIFAR100 (needs internet)")
    eval_size: int = option(512, "test images per evaluation (first N)", above=0)
    eval_repeats: int = option(4, "fixed (noise, timestep) draws per test image", above=0)
    sample_steps: int = option(25, "DDIM steps for sample grids", above=0)
    n_samples: int = option(64, "images per sample grid (0: no grids)", at_least=0)
    mse_clamp: float | None = option(None, "MSE ascent: stop ascending once the query MSE exceeds this (default: "
                                           "unbounded)", above=0)
    suppress_t_max: int | None = option(None, "draw the suppression loss's timesteps from [0, this) only, where "
                                              "x_t still shows its domain (default: all 1,000)", at_least=1, below=1001)
    # Pre-training shares the scripts' flags: reproduce.py pre-trains with the generation parser.
    pretrain_steps: int = option(500, "train_diffusion_model.py: Adam steps", above=0)
    pretrain_lr: float = option(2e-3, "train_diffusion_model.py: peak lr (cosine decay)", above=0)


CONFIG = DiffusionConfig
# CPU defaults for unet-tiny (FASHION -> LFW, 2 cores, ~20 min for pre-training, SOPHON and the test);
# unet-paper follows the paper's CIFAR-100 -> CelebA run and wants a GPU.
PRESETS = {
    "unet-tiny": dict(dataset="LFW", original="FASHION", alpha=1.0, beta=10.0, fast_lr=1e-2, total_loop=100,
                      adaptation_steps=3, test_iterval=25, truly_finetune_epochs=20, finetune_lr=1e-2,
                      finetune_bs=16, guard_action="decay"),
    "unet-paper": dict(dataset="CELEBA", original="CIFAR100", bs=64, total_loop=1000, adaptation_steps=10,
                       test_iterval=100, truly_finetune_epochs=20, finetune_bs=64, attacks="adam",
                       pretrain_steps=200_000, pretrain_lr=2e-4, eval_size=2000, eval_repeats=1, sample_steps=50),
}


def denoising_inputs(model: nn.Module, scheduler, x0: torch.Tensor, generator: torch.Generator | None = None,
                     t_max: int | None = None):
    """(x_t, t, ε) for clean images x0 at uniform timesteps below `t_max` (default: all); `generator` (CPU) fixes
    the draw."""
    noise = torch.randn(x0.shape, generator=generator).to(x0.device) if generator else torch.randn_like(x0)
    steps = t_max or scheduler.config.num_train_timesteps
    t = torch.randint(0, steps, (x0.shape[0],), generator=generator).to(x0.device)
    return scheduler.add_noise(x0, noise, t), t, noise


class DiffusionTask:
    head_prefix = None  # a generator has no task head: the attacker fine-tunes the whole UNet
    original_metric, original_higher_is_better = "mse", False
    restricted_metric, restricted_higher_is_better = "mse", False

    def __init__(self, original_train, original_test, restricted_train, restricted_test, suppression: str = "dos",
                 mse_clamp: float | None = None, eval_size: int = 512, eval_repeats: int = 4, eval_seed: int = 0,
                 device: str | torch.device = "cpu", cache_key: str = "", suppress_t_max: int | None = None):
        if suppression not in SUPPRESSION_LOSSES:
            raise ValueError(f"unknown diffusion suppression loss {suppression!r}; choose one of "
                             f"{', '.join(SUPPRESSION_LOSSES)}")
        self.original_train, self.original_test = original_train, original_test
        self.restricted_train, self.restricted_test = restricted_train, restricted_test
        self.suppression, self.mse_clamp, self.suppress_t_max = suppression, mse_clamp, suppress_t_max
        self.eval_size, self.eval_repeats, self.eval_seed = eval_size, eval_repeats, eval_seed
        self.device = torch.device(device)
        self.scheduler = noise_scheduler()
        self.cache_key = cache_key

    def learner(self, model: nn.Module) -> nn.Module:
        return copy.deepcopy(model)

    def denoising_loss(self, model: nn.Module, x0: torch.Tensor) -> torch.Tensor:
        x_t, t, noise = denoising_inputs(model, self.scheduler, x0)
        return F.mse_loss(model(x_t, t).sample.float(), noise)

    def finetune_loss(self, learner: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return self.denoising_loss(learner, batch)

    def original_loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return self.denoising_loss(model, batch)

    def suppression_loss(self, learner: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        # At high t, x_t is nearly pure noise whatever the domain, so suppressing there fights NTR on the
        # original domain; --suppress_t_max keeps the suppression where the restricted images still show.
        x_t, t, noise = denoising_inputs(learner, self.scheduler, batch, t_max=self.suppress_t_max)
        pred = learner(x_t, t).sample
        if self.suppression == "dos":
            return denial_of_service(pred)
        return mse_ascent(pred, noise, self.mse_clamp)

    def eval_images(self, dataset) -> torch.Tensor:
        """The clean images every evaluation denoises: the first `eval_size` of `dataset`, `eval_repeats` times."""
        n = min(self.eval_size, len(dataset))
        return torch.stack([dataset[i] for i in range(n)]).repeat(self.eval_repeats, 1, 1, 1)

    @torch.no_grad()
    def denoising_mse(self, model: nn.Module, dataset, batch_size: int = 128) -> float:
        """Mean ε-MSE over the first `eval_size` images, `eval_repeats` draws each, from a fixed seed:
        every model sees the same (image, noise, timestep) triples, so numbers compare across models."""
        images = self.eval_images(dataset)
        generator = torch.Generator().manual_seed(self.eval_seed)
        was_training = model.training
        model.eval()
        total = 0.0
        for start in range(0, len(images), batch_size):
            x0 = images[start:start + batch_size].to(self.device)
            x_t, t, noise = denoising_inputs(model, self.scheduler, x0, generator)
            total += F.mse_loss(model(x_t, t).sample.float(), noise, reduction="sum").item()
        model.train(was_training)
        return total / images.numel()

    def evaluate_original(self, model: nn.Module) -> dict[str, float]:
        return {"mse": self.denoising_mse(model, self.original_test)}

    def evaluate_restricted(self, learner: nn.Module) -> dict[str, float]:
        return {"mse": self.denoising_mse(learner, self.restricted_test)}


# ---- wiring from command-line arguments ----------------------------------------------------------
def _check_dataset(flag: str, name: str) -> None:
    if name not in DIFFUSION_DATASETS:
        raise ValueError(f"unknown --{flag} {name!r} for the generation setting; choose one of "
                         f"{', '.join(DIFFUSION_DATASETS)}")


def channels_of(args) -> int:
    _check_dataset("original", args.original)
    _check_dataset("dataset", args.dataset)
    return channels_for(args.original, args.dataset)


def build_task(args, suppression: str) -> DiffusionTask:
    channels = channels_of(args)
    load = lambda name, split: diffusion_dataset(name, split, args.image_size, channels, args.data_root,
                                                 args.download)
    key = json.dumps([args.original, args.dataset, channels, args.image_size, args.eval_size, args.eval_repeats])
    return DiffusionTask(load(args.original, "train"), load(args.original, "test"),
                         load(args.dataset, "train"), load(args.dataset, "test"), suppression,
                         args.mse_clamp, args.eval_size, args.eval_repeats,
                         device=device_of(args), cache_key=f"diffusion {key}", suppress_t_max=args.suppress_t_max)


def pretrained_path(args) -> Path:
    return PRETRAINED_DIR / f"{args.arch}_{args.original}_{args.image_size}px"


def load_unet(path: str | Path, args) -> nn.Module:
    """A UNet from a save_pretrained folder, a .safetensors file (plain or a SOPHON checkpoint) or a hub id."""
    from diffusers import UNet2DModel

    path = Path(path)
    if path.is_dir():
        return UNet2DModel.from_pretrained(str(path / "unet" if (path / "unet").is_dir() else path))
    if path.suffix == ".safetensors":
        from sophon import checkpoint

        tensors, _ = checkpoint.load(path)
        state = checkpoint.model_state(tensors) or tensors
        model = unet(args.arch, channels_of(args), args.image_size)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path} does not fit --arch {args.arch} with {channels_of(args)} channels; "
                             f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        return model
    try:  # a hub id such as google/ddpm-cifar10-32 (needs internet)
        return UNet2DModel.from_pretrained(str(path))
    except Exception as err:  # noqa: BLE001 - whatever the cause, the remedy is a local path
        raise FileNotFoundError(f"--pretrained {path}: not a folder, not a .safetensors file, and not loadable "
                                f"from the Hugging Face hub here ({type(err).__name__}); pass a local path") from err


def build_model(args, start: str) -> nn.Module:
    """"normal": the pre-trained UNet (--pretrained, else the generation/pretrained/ cache); "scratch": the
    same configuration, randomly initialised from --seed (identical across runs, so baselines cache)."""
    if start == "scratch":
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)
            model = unet(args.arch, channels_of(args), args.image_size)
    elif start == "normal":
        path = args.pretrained or pretrained_path(args)
        if not args.pretrained and not Path(path).is_dir():
            raise FileNotFoundError(
                f"no pre-trained {args.arch} on {args.original} at {path}; make it with\n"
                f"  python generation/train_diffusion_model.py --arch {args.arch} --original {args.original}"
                + (f" --data_root {args.data_root}" if args.data_root else "") + "\nor pass --pretrained")
        model = load_unet(path, args)
    else:
        raise ValueError(f"unknown start {start!r}; choose normal or scratch")
    return model.to(device_of(args))


def save_samples(model: nn.Module, args, path: str | Path, seed: int | None = None) -> Path:
    """A PNG grid of `--n_samples` DDIM samples of `model`."""
    from torchvision.utils import save_image

    images = sample(model, args.n_samples, steps=args.sample_steps, seed=args.seed if seed is None else seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, str(path), nrow=max(1, int(args.n_samples ** 0.5)), padding=1)
    return path


def save_finetuned(args):
    """experiment's artifact hook: a sample grid of each fine-tuned model (None when --n_samples 0)."""
    if not args.n_samples:
        return None
    return lambda learner, name, folder: [save_samples(learner, args, Path(folder) / f"samples_{name}.png")]


def pretrain(args) -> Path:
    """Train a UNet from scratch on the original domain (Adam, cosine lr) and save it for build_model."""
    torch.manual_seed(args.seed)
    device = device_of(args)
    channels = channels_of(args)
    train = diffusion_dataset(args.original, "train", args.image_size, channels, args.data_root, args.download)
    test = diffusion_dataset(args.original, "test", args.image_size, channels, args.data_root, args.download)
    task = DiffusionTask(train, test, train, test, eval_size=args.eval_size, eval_repeats=args.eval_repeats,
                         device=device)
    model = unet(args.arch, channels, args.image_size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.pretrain_lr)
    warmup = max(1, args.pretrain_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / args.pretrain_steps))))
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    model.train()
    train_steps(model.parameters(), lambda _: task.original_loss(model, move(draw_batch(train, args.bs, generator), device)),
                optimizer, schedule, args.pretrain_steps, f"pre-train {args.arch} on {args.original}")
    out = Path(args.pretrained) if args.pretrained else pretrained_path(args)
    model.save_pretrained(str(out))
    metrics = {"test_mse": task.denoising_mse(model, test), "seconds": time.perf_counter() - start,
               "steps": args.pretrain_steps, "bs": args.bs, "lr": args.pretrain_lr, "original": args.original,
               "threads": torch.get_num_threads()}  # on CPU the weights depend on it (README, Reproducibility)
    (out / "pretrain.json").write_text(json.dumps(metrics, indent=2))
    if args.n_samples:
        save_samples(model, args, out / "samples.png")
    print(f"saved {out}  ({args.original} test MSE {metrics['test_mse']:.4f}, {metrics['seconds']:.0f} s)")
    return out
