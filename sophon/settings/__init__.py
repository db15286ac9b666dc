"""Settings: each module here turns resolved arguments into a `Task` and models.

A setting module exposes
    ARCHS     the --arch names it serves
    CONFIG    a dataclass of its own fields (sophon.config.option), beside the shared ones
    PRETRAIN_CONFIG  (optional) the fields only its pre-training script takes
    PRESETS   {arch: {field: value}}, overrides of the configs' defaults for that arch
    LOSS_PRESETS  (optional) {arch: {loss: {field: value}}}, overrides of PRESETS for one suppression loss
    build_task(args, suppression) -> Task
    build_model(args, start) -> nn.Module  start "normal" (pre-trained) or "scratch" (same arch, random)
"""

import argparse
import importlib

from sophon.config import SHARED, build, defaults_of, field_names, overrides

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


def configs_of(setting, pretrain: bool = False) -> tuple[type, ...]:
    """The config classes a script of `setting` takes; `pretrain` adds its pre-training fields."""
    own = (setting.CONFIG,) + ((setting.PRETRAIN_CONFIG,) if pretrain and hasattr(setting, "PRETRAIN_CONFIG") else ())
    return SHARED + own


def loss_preset(setting, arch: str, loss: str | None) -> dict:
    """The overrides `loss` puts on the preset of `--arch` (LOSS_PRESETS; none for most)."""
    return getattr(setting, "LOSS_PRESETS", {}).get(arch, {}).get(loss, {})


def preset_of(setting, arch: str, loss: str | None = None) -> dict:
    """The preset of `--arch`, with the overrides of `loss` on top where the setting has them."""
    return {**setting.PRESETS.get(arch, {}), **loss_preset(setting, arch, loss)}


def arch_defaults(setting, arch: str, classes, loss: str | None = None) -> dict:
    """Every field of `classes` as `--arch` (with suppression loss `loss`) takes it when no flag is given:
    its default, then the preset."""
    preset = overrides(preset_of(setting, arch, loss), configs_of(setting, pretrain=True), f"PRESETS[{arch!r}]")
    names = field_names(classes)
    return {**defaults_of(classes), **{k: v for k, v in preset.items() if k in names}, "arch": arch}


def arch_args(arch: str, loss: str | None = None, **given) -> argparse.Namespace:
    """The arguments a script resolves for `--arch` (and its suppression `loss`) with `given` flags, pre-training
    ones included: for code that calls a setting without a command line (tests, notebooks, benchmarks)."""
    setting = setting_for(arch)
    classes = configs_of(setting, pretrain=True)
    values = {**arch_defaults(setting, arch, classes, loss), **overrides(given, classes, "arch_args")}
    for cls in classes:
        build(cls, values)
    return argparse.Namespace(**values)
