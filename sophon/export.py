"""Release a protected model the way people share models: in its own ecosystem's format.

    python -m sophon.export RUN_DIR_OR_CKPT --out DIR [--force] [--pretrained PATH]

text       a transformers `save_pretrained` folder of the whole causal LM plus its tokenizer:
           `AutoModelForCausalLM` and `AutoModelForSequenceClassification` (a fresh head) load it.
diffusion  a diffusers `DDPMPipeline` folder (model_index.json, unet/, scheduler/).
images     model.safetensors (the body, keys `body.*`, no head) and config.json (arch, widths, input
           size and normalisation); loading takes two lines (docs/release.md).
every one  README.md, a Hugging Face model card with the run's verdicts (sophon.model_card).

Only the model's weights leave the run: no optimizer state, no generator state, no pickle.
A run whose checkpoint is not `finished` is refused unless --force.
"""

import argparse
import copy
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import save_file
from torch import nn

from sophon import checkpoint
from sophon.model_card import model_card
from sophon.settings import arch_defaults, setting_for  # the one door to the setting modules (text, image, diffusion)


class ExportError(ValueError):
    """A run that cannot be released as asked; the message says what to do instead."""


@dataclass
class Run:
    """What a SOPHON run left behind: the protected weights and everything said about them."""
    checkpoint: Path
    model: dict[str, torch.Tensor]  # the wrapper's state dict, `model.` prefix removed
    meta: dict  # the checkpoint's sidecar: arch, dataset, original, loss, status, reference, config
    args: dict = field(default_factory=dict)  # args.json: every resolved flag and the command
    results: dict | None = None  # results.json, when the run was evaluated

    @property
    def arch(self) -> str:
        return self.meta.get("arch") or self.args.get("arch")

    @property
    def setting(self):
        """The setting module that built this run's model (its NAME: text, image or diffusion)."""
        try:
            return setting_for(self.arch)
        except ValueError:
            raise ExportError(f"{self.checkpoint} was written for arch {self.arch!r}, which no setting serves; "
                              "pass a checkpoint of a SOPHON run") from None

    def setting_value(self, key: str):
        """A field of the setting's config as the run had it: args.json, else the arch's default."""
        value = self.args.get(key)
        if value is None:
            return arch_defaults(self.setting, self.arch, [self.setting.CONFIG], self.get("loss"))[key]
        return value

    def get(self, key: str, default=None):
        """A run setting: the sidecar first (it travels with the weights), then args.json."""
        value = self.meta.get(key)
        return self.args.get(key, default) if value is None else value


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{path} is not valid JSON ({err}); restore it or delete it") from None


def read_run(path: str | Path) -> Run:
    """A run folder (its checkpoints/final) or one checkpoint file of it."""
    path = Path(path)
    if path.is_dir():
        ckpt = path / "checkpoints" / "final.safetensors"
        if not ckpt.exists():
            raise ExportError(f"{path} has no checkpoints/final.safetensors: the run has not finished; let it "
                              "finish (or --resume it), or pass checkpoints/last.safetensors with --force")
    else:
        ckpt = path.with_suffix(".safetensors")
    tensors, meta = checkpoint.load(ckpt)  # CheckpointError names what is missing or corrupt
    model = checkpoint.model_state(tensors)
    if not model:
        raise ExportError(f"{ckpt} holds no `model.*` tensors; pass a checkpoint written by a SOPHON run")
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return Run(ckpt, model, meta, _read_json(run_dir / "args.json") or {}, _read_json(run_dir / "results.json"))


def _load_exactly(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Every tensor in place, or an error: a silently half-loaded release would be worse than none."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(f"the checkpoint's {what} does not fit the model rebuilt for it (missing "
                          f"{list(missing)[:3]}, unexpected {list(unexpected)[:3]}); pass --pretrained, "
                          "the pre-trained model the run started from")


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# ---- one writer per ecosystem -----------------------------------------------------------------
# Copied byte for byte from the pre-trained folder: a re-save would add the loaded tokenizer's runtime
# settings (truncation length, padding side) to tokenizer_config.json.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "chat_template.jinja")


def export_text(run: Run, out: Path, pretrained: str | None) -> dict:
    """The protected body put back into a full causal LM whose output embedding is the ORIGINAL LM head.

    GPT-2 ties `lm_head` to `wte`. SOPHON trained the body's `wte` while it scored next tokens with a
    frozen copy of the original output embedding, so the two now differ; the release unties them
    (tie_word_embeddings = False) and keeps both exactly as the run left them. The wrapper's 2-class
    `head` is not released: an attacker always brings a fresh one."""
    from transformers import AutoModelForCausalLM

    from sophon.data import DataUnavailableError

    text = run.setting
    source = text.default_pretrained(SimpleNamespace(pretrained=pretrained or run.args.get("pretrained"),
                                                arch=run.arch, original=run.get("original")))
    try:
        lm, tokenizer = text.load_pretrained(source, run.arch, run.args.get("blocks"))
    except DataUnavailableError as err:
        raise ExportError(f"{err}; the export needs the run's pre-trained model for its config and tokenizer: "
                          "pass it with --pretrained") from None
    config = copy.deepcopy(lm.config)
    config.tie_word_embeddings = False
    released = AutoModelForCausalLM.from_config(config)
    _load_exactly(released.base_model, _prefixed(run.model, "body."), "body")
    _load_exactly(released.get_output_embeddings(), _prefixed(run.model, "lm_head."), "frozen LM head")
    released.eval().save_pretrained(out)
    copied = [shutil.copy(Path(source) / f, out / f) for f in TOKENIZER_FILES if (Path(source) / f).is_file()]
    if not copied:  # a hub id or a GGUF: no files to copy, so write the tokenizer as loaded
        tokenizer.save_pretrained(out)
    return {"library": "transformers", "base": source}


def export_diffusion(run: Run, out: Path, pretrained: str | None) -> dict:
    """A DDPMPipeline folder: the protected UNet and the DDPM scheduler the run trained it with."""
    from diffusers import DDPMPipeline, UNet2DModel

    from sophon.models.unet import noise_scheduler, unet

    folder = pretrained or run.args.get("pretrained")
    if folder and Path(folder).is_dir():  # the run started from this UNet: take its exact config
        folder = Path(folder) / "unet" if (Path(folder) / "unet").is_dir() else Path(folder)
        model = UNet2DModel.from_config(UNet2DModel.load_config(str(folder)))
    else:
        channels = run.model["conv_in.weight"].shape[1]
        model = unet(run.arch, channels, run.setting_value("image_size"))
    _load_exactly(model, run.model, "UNet")
    DDPMPipeline(unet=model.eval(), scheduler=noise_scheduler()).save_pretrained(str(out))
    return {"library": "diffusers", "base": folder}


def export_image(run: Run, out: Path) -> dict:
    """The body's tensors (keys `body.*`, BatchNorm statistics included) and what rebuilding it needs."""
    from sophon.models.vision import build_classifier, input_normalisation

    image = run.setting
    cnn_width = int(run.model["body.features.0.weight"].shape[0]) if run.arch == "cnn" else None
    classes = int(run.model["head.weight"].shape[0])
    model = build_classifier(run.arch, classes, cnn_width or image.CONFIG.cnn_width)
    _load_exactly(model, run.model, "classifier")  # checks the arch and widths before anything is written
    body = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k.startswith("body.")}
    save_file(body, str(out / "model.safetensors"), metadata={"format": "pt"})
    mean, std = input_normalisation(run.arch)
    config = {"library": "sophon", "arch": run.arch, "cnn_width": cnn_width,
              "img_size": run.setting_value("img_size"),
              "mean": list(mean), "std": list(std), "channels": 3, "num_features": model.head.in_features,
              "original": run.get("original"), "original_classes": classes, "restricted": run.get("dataset"),
              "head": "not included: build_classifier(arch, num_classes) gives a fresh one"}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {"library": "pytorch", "base": None}


# ---- the command ------------------------------------------------------------------------------
def export(path: str | Path, out: str | Path, force: bool = False, pretrained: str | None = None,
           command: str = "") -> Path:
    """Write the protected model of run/checkpoint `path` into folder `out`; returns `out`."""
    run = read_run(path)
    status = run.meta.get("status", "unknown")
    if status != "finished" and not force:
        raise ExportError(f"{run.checkpoint} has status {status!r}, not 'finished'; release only a finished run, "
                          "or add --force to export it anyway (the model card will say so)")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ExportError(f"--out {out} exists and is not empty; choose a new folder, or add --force to replace it")
        shutil.rmtree(out)
    setting = run.setting.NAME
    out.mkdir(parents=True, exist_ok=True)
    if setting == "text":
        info = export_text(run, out, pretrained)
    elif setting == "diffusion":
        info = export_diffusion(run, out, pretrained)
    else:
        info = export_image(run, out)
    (out / "README.md").write_text(model_card(run, setting, info, command))
    return out


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m sophon.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN_DIR_OR_CKPT", help="a SOPHON run folder, or one of its checkpoints")
    p.add_argument("--out", required=True, help="folder to write the release into")
    p.add_argument("--force", action="store_true", help="export a run that did not finish; replace a non-empty --out")
    p.add_argument("--pretrained", default=None,
                   help="the pre-trained model the run started from, when args.json's is not found here "
                        "(text: its config and tokenizer; diffusion: its UNet config)")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    command = " ".join(["python -m sophon.export", *argv])
    try:
        out = export(args.run, args.out, args.force, args.pretrained, command)
    except (ExportError, checkpoint.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    print(f"released {args.run} as {out} (model card: {out / 'README.md'})")
    return out


if __name__ == "__main__":
    main()
