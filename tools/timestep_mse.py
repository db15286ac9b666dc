"""Where along the diffusion does a protected DDPM differ from the normal one? The test denoising MSE per band of
timesteps, for normal, SOPHON and scratch, before and after one attack (its first seed), on both domains:

    python tools/timestep_mse.py --path RUN/checkpoints/final.safetensors --attack adam:1e-4 --out results/timestep_mse

The table's MSE averages uniform timesteps; this splits it, so one can see whether the pre-trained model's lead
over scratch, and SOPHON's suppression, sit at the low-noise steps (where the two domains' images still differ) or
at the high-noise ones (where x_t is nearly pure noise for every domain). Writes timestep_mse.{md,json,png}.
"""

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from sophon.attack import AttackSpecError, finetune, parse_attack
from sophon.cli import fail, parse_setting_args, user_errors
from sophon.device import device_of
from sophon.experiment import build_task, load_protected
from sophon.report import colours


@torch.no_grad()
def band_mse(model, task, dataset, bands: int) -> list[float]:
    """ε-MSE of `model` on the first eval_size images of `dataset`, eval_repeats draws each, for each of `bands`
    equal bands of timesteps: the same (image, noise, timestep) draws for every model, as the table's metric."""
    images = task.eval_images(dataset)
    steps = task.scheduler.config.num_train_timesteps
    width = steps // bands
    model.eval()
    out = []
    for band in range(bands):
        generator = torch.Generator().manual_seed(task.eval_seed + band)
        noise = torch.randn(images.shape, generator=generator)
        t = torch.randint(band * width, (band + 1) * width, (len(images),), generator=generator)
        total = 0.0
        for start in range(0, len(images), 128):
            x0, eps, tt = (v[start:start + 128].to(task.device) for v in (images, noise, t))
            x_t = task.scheduler.add_noise(x0, eps, tt)
            total += F.mse_loss(model(x_t, tt).sample.float(), eps, reduction="sum").item()
        out.append(total / images.numel())
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(next(iter(result["mse"].values())))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    width = result["timesteps"] // result["bands"]
    x = [width * (b + 0.5) for b in range(result["bands"])]
    palette = colours(result["mse"])
    for ax, panel in zip(axes[0], panels):
        for start, rows in result["mse"].items():
            ax.plot(x, rows[panel], marker="o", ms=3, color=palette[start], label=start)
        ax.set_title(panel.replace(", after ", ",\nafter "), fontsize=9)
        ax.set_xlabel("timestep t")
        ax.set_yscale("log")
    axes[0][0].set_ylabel("denoising MSE (lower: a better denoiser)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(result: dict) -> str:
    width = result["timesteps"] // result["bands"]
    head = [f"{b * width}-{(b + 1) * width - 1}" for b in range(result["bands"])]
    lines = []
    for panel in next(iter(result["mse"].values())):
        lines += [f"{panel}:", "", "| start | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
        for start, rows in result["mse"].items():
            lines.append(f"| {start} | " + " | ".join(f"{v:.4f}" for v in rows[panel]) + " |")
        lines.append("")
    return "\n".join(lines)


@user_errors  # a bad name or spec, a missing or corrupt checkpoint: one line, exit 2
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="unet-tiny", help="diffusion arch of the checkpoint")
    parser.add_argument("--path", required=True, help="the SOPHON checkpoint (.safetensors)")
    parser.add_argument("--attack", default="adam:1e-4", help="one attack spec, run with attack seed 0 on every start")
    parser.add_argument("--bands", type=int, default=10, help="equal bands of the 1,000 timesteps")
    parser.add_argument("--out", default="results/timestep_mse", help="folder for timestep_mse.{md,json,png}")
    ns = parser.parse_args(argv)
    if not 1 <= ns.bands <= 100 or 1000 % ns.bands:
        fail(f"--bands must divide the 1,000 timesteps into at most 100 equal bands (e.g. 5, 10, 20), got {ns.bands}")
    args, setting = parse_setting_args(__doc__, ["--arch", ns.arch], kind="diffusion", default_arch=ns.arch)
    try:
        attack = parse_attack(ns.attack, args.finetune_lr, args.finetune_bs, args.truly_finetune_epochs)
    except AttackSpecError as err:
        fail(str(err))
    args.device = str(device_of(args))
    task = build_task(args, setting, "dos")
    models = {"normal": setting.build_model(args, "normal"), "sophon": load_protected(args, setting, ns.path),
              "scratch": setting.build_model(args, "scratch")}
    after = f"{args.dataset} (restricted), after {attack.label}"
    result = {"attack": attack.label, "bands": ns.bands, "timesteps": task.scheduler.config.num_train_timesteps,
              "checkpoint": ns.path, "mse": {}}
    for start, model in models.items():
        rows = {f"{args.original} (original), before": band_mse(model, task, task.original_test, ns.bands),
                f"{args.dataset} (restricted), before": band_mse(model, task, task.restricted_test, ns.bands)}
        finetune(model, task, attack, seed=0,
                 after=lambda learner: rows.__setitem__(after, band_mse(learner, task, task.restricted_test, ns.bands)))
        result["mse"][start] = rows
        print(f"{start}: done", flush=True)
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "timestep_mse.json").write_text(json.dumps(result, indent=1))
    (out / "timestep_mse.md").write_text(markdown(result))
    plot(result, out / "timestep_mse.png")
    print(markdown(result))
    print(f"wrote {out / 'timestep_mse.md'}, .json, .png")


if __name__ == "__main__":
    main()
