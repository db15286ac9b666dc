"""Settings: each module here turns command-line arguments into a `Task` and models.

A setting module exposes
    ARCHS     the --arch names it serves
    PRESETS   {arch: {flag: default}} for flags left unset on the command line
    add_arguments(parser)                 its own extra flags (may add nothing)
    build_task(args, suppression) -> Task
    build_model(args, start) -> nn.Module  start "normal" (pre-trained) or "scratch" (same arch, random)
"""

import importlib

SETTING_ARCHS = {
    "text": ("tiny-gpt2", "gpt2", "smollm2", "smollm2-cut"),
    "image": ("cnn", "res18", "res34", "res50", "vgg", "caformer"),
    "diffusion": ("unet-tiny", "unet-paper"),
}


CLASSIFICATION = ("text", "image")  # the settings classification/*.py serve


def _kinds(kind) -> tuple:
    return tuple(SETTING_ARCHS) if kind is None else (kind,) if isinstance(kind, str) else tuple(kind)


def all_archs(kind: str | tuple | None = None) -> list[str]:
    return [a for k, archs in SETTING_ARCHS.items() if k in _kinds(kind) for a in archs]


def setting_for(arch: str, kind: str | tuple | None = None):
    """The setting module serving `--arch`; `kind` (a setting name or several) restricts the search."""
    for name, archs in SETTING_ARCHS.items():
        if name in _kinds(kind) and arch in archs:
            return importlib.import_module(f"sophon.settings.{name}")
    raise ValueError(f"unknown --arch {arch!r}; choose one of {', '.join(all_archs(kind))}")
