"""One home for every default: a typed config per concern; flags, their checks and args.json follow from it.

    RunConfig     what to protect, where, and on what compute
    LoopConfig    the SOPHON loop (DESIGN §1), with the paper's flag names
    AttackConfig  the evaluation: the attacks after the loop
    a setting's own (TextConfig, ImageConfig, DiffusionConfig in sophon/settings/) and, for the
    pre-training script, its PRETRAIN_CONFIG.

A field's metadata holds its flag's help, choices and bounds: sophon.cli generates argparse from
it and `check` validates from it, so a default, a range or a help line is changed in one place.
A per-arch preset (PRESETS in each setting) is a dict of overrides of these fields.
"""

import types
import typing
from dataclasses import MISSING, dataclass, field, fields

PRECISIONS = ("fp32", "bf16", "fp16")
SUITE_NAMES = ("quick", "standard", "full")


def option(default, help: str, *, choices=None, above=None, at_least=None, below=None, metavar=None,
           resumable: bool = False):
    """A config field and what its flag needs. `above` is a strict lower bound, `at_least` an
    inclusive one, `below` a strict upper one; `resumable`: --resume may change it (DESIGN: resume)."""
    return field(default=default, metadata=dict(help=help, choices=choices, above=above, at_least=at_least,
                                                 below=below, metavar=metavar, resumable=resumable))


@dataclass
class RunConfig:
    """what to protect"""
    arch: str | None = option(None, "model architecture; picks the setting (names below)")
    dataset: str | None = option(None, "restricted domain")
    original: str | None = option(None, "original domain")
    pretrained: str | None = option(None, "pre-trained weights: a file, a save_pretrained folder or a hub id")
    # Where things are and what runs them may change when a run is resumed; what is computed may not.
    data_root: str | None = option(None, "folder holding local copies of the real datasets", resumable=True)
    root: str = option("results", "where run folders are written", resumable=True)
    device: str = option("auto", "cpu, cuda, cuda:1 ... (auto: cuda when available)", resumable=True)
    seed: int = option(0, "seed of the simulation, the attacks and the data order")
    notes: str = option("", "free text stored in args.json", resumable=True)
    precision: str = option("fp32", "autocast precision of training; losses stay fp32", choices=PRECISIONS)
    grad_checkpointing: bool = option(False, "gradient checkpointing for the causal LMs", resumable=True)
    threads: int = option(0, "CPU threads of PyTorch's kernels (torch.set_num_threads); 0: PyTorch's default, one "
                          "per core. On CPU the numbers depend on it (README, Reproducibility)", at_least=0,
                          resumable=True)


@dataclass
class LoopConfig:
    """SOPHON loop (paper flag names)"""
    alpha: float = option(3.0, "FTS step size = alpha * lr", at_least=0)
    beta: float = option(5.0, "NTR step size = beta * lr", at_least=0)
    lr: float = option(1e-4, "base learning rate", above=0)
    fast_lr: float = option(1e-4, "simulated fine-tuning lr (fixed environment)", above=0)
    bs: int = option(32, "batch size (simulation and NTR)", above=0)
    ml_loop: int = option(1, "FTS steps per iteration", at_least=0)
    nl_loop: int = option(1, "NTR steps per iteration", at_least=0)
    # A resumed run may be extended (or cut short): the loop goes on from its checkpoint.
    total_loop: int = option(100, "iterations", above=0, resumable=True)
    adaptation_steps: int = option(5, "inner fine-tuning steps K", above=0)
    test_iterval: int = option(20, "evaluate every N iterations", above=0)
    finetune_epochs: int = option(1, "epochs of the short fine-tuning test during the run", at_least=0)
    query_fraction: float = option(0.1, "query share of each simulated batch", above=0, below=1)
    query_bs: int | None = option(None, "a separate query batch of this size instead of the query_fraction split",
                                  above=0)
    suppress_every: int = option(1, "take the suppression gradient every N inner steps (and at the last)", above=0)
    late_weight: float = option(0.0, "weight inner step k by (k/K)^late_weight (0: uniform)", at_least=0)
    envs: int = option(0, "0: one fixed plain-SGD environment at --fast_lr; N: sample N environments", at_least=0)
    simulate: str = option("", "fixed simulated attackers as attack specs, averaged at every FTS step (with --attackers "
                               "cycle, one per step in turn), e.g. "
                               "sgd:0.1,sgd-momentum:0.01 (keys bs, method=head|benign; empty: --envs)")
    attackers: str = option("fixed", "simulated attackers: fixed (--envs or --simulate, averaged at every FTS step), "
                                     "cycle (the same, one per FTS step in turn, at the cost of one) or a new draw of "
                                     "max(1, --envs) every FTS step from the attack suite's distribution (README)",
                            choices=("fixed", "cycle", "sampled"))
    anchor: bool = option(False, "with --attackers sampled: keep the fixed attacker (plain SGD at --fast_lr) in "
                                 "every FTS step beside the sampled ones")
    probe_weight: float = option(0.0, "weight of the closed-form linear-probe attacker's suppression gradient, "
                                      "added to every FTS step (0: off; classification only)", at_least=0)
    probe_support: int | None = option(None, "restricted examples the closed-form probe's head is fitted on "
                                             "(default 2 x --bs; the attacker's probe sees the whole training set)",
                                       above=0)
    # In units of the features' mean variance, so it does not depend on their scale; large enough that the head
    # generalises rather than interpolates its few examples, as a softmax head trained for a few epochs does.
    probe_ridge: float = option(0.1, "the closed-form probe's ridge penalty, in units of its features' mean variance "
                                     "(smaller: a head that fits its examples more tightly)", above=0)
    canonical_scale: bool = option(False, "after every step, give each BatchNorm-fed channel of the model its "
                                          "default-init weight norm (the same function), so that the protection "
                                          "cannot rest on weight scale (models with BatchNorm; README)")
    recalibrate_bn: bool = option(True, "BatchNorm statistics recomputed on original-domain data for every evaluation "
                                        "(the guard's) and in the saved final model, so that they fit its weights "
                                        "(models with BatchNorm; README)")
    guard: float = option(0.9, "stop when the original metric falls below this fraction of its start (0: off)",
                          at_least=0, below=1)
    guard_action: str = option("stop", "on crossing the guard, restore the last good state, then stop, or decay "
                                       "(halve the FTS lr) and go on", choices=("stop", "decay"))


@dataclass
class AttackConfig:
    """attacks (the evaluation)"""
    attacks: str = option("sgd", "comma-separated optimizer[:lr][:key=value...], keys bs, epochs, lr, method "
                                 "(full|head|lora|benign), schedule (constant|cosine|warmup-cosine); optimizers "
                                 "sgd sgd-momentum nesterov adam adamw rmsprop adagrad adadelta. "
                                 "E.g. adam:1e-4:method=lora:epochs=20,sgd-momentum:1e-3:bs=8")
    suite: str | None = option(None, "a named attack suite (README); replaces the preset's --attacks, adds any given",
                               choices=SUITE_NAMES)
    seeds: int = option(3, "attack seeds per attack", above=0)
    separation_seeds: int | None = option(None, "attack seeds of normal and scratch on every attack, and of every "
                                                "start on the attacks that separate them (at least --seeds)",
                                          above=0, metavar="N")
    tune: int = option(0, "Optuna trials of the tuned attacker, run first and added as the row 'tuned' (0: off)",
                       at_least=0, metavar="N")
    truly_finetune_epochs: int = option(5, "epochs of the final fine-tuning attack", above=0)
    finetune_lr: float = option(1e-4, "lr of a plain sgd attack given without one", above=0)
    finetune_bs: int = option(32, "attack batch size", above=0)
    suite_lr_scale: float = option(1.0, "scale of the usual learning rates that --suite, --tune and --attackers "
                                        "sampled start from", above=0)


SHARED = (RunConfig, LoopConfig, AttackConfig)  # every setting's scripts take these


def value_type(f) -> type:
    """The type a flag parses its value to: `int | None` -> int."""
    if isinstance(f.type, types.UnionType) or typing.get_origin(f.type) is typing.Union:
        return next(t for t in typing.get_args(f.type) if t is not type(None))
    return f.type


def defaults_of(classes) -> dict:
    return {f.name: f.default for cls in classes for f in fields(cls) if f.default is not MISSING}


def field_names(classes) -> list[str]:
    """Every field of `classes`, in their order (a setting's classes share no name: tested)."""
    return [f.name for cls in classes for f in fields(cls)]


def overrides(preset: dict, classes, where: str) -> dict:
    """A preset checked against the fields it overrides: an unknown key is a bug, named here."""
    unknown = sorted(set(preset) - set(field_names(classes)))
    if unknown:
        raise ValueError(f"{where}: {', '.join(unknown)} is no field of {', '.join(c.__name__ for c in classes)}")
    return preset


def _bounds_text(m: dict) -> str:
    parts = [f"greater than {m['above']}" if m["above"] is not None else "",
             f"at least {m['at_least']}" if m["at_least"] is not None else "",
             f"below {m['below']}" if m["below"] is not None else ""]
    return " and ".join(p for p in parts if p)


def check(config) -> None:
    """Every field of `config` within its choices and bounds; else ValueError naming the flag."""
    for f in fields(config):
        value, m = getattr(config, f.name), f.metadata
        if value is None or not m:
            continue
        if m["choices"] and value not in m["choices"]:
            raise ValueError(f"--{f.name} must be one of {', '.join(map(str, m['choices']))}, got {value!r}")
        low_ok = (m["above"] is None or value > m["above"]) and (m["at_least"] is None or value >= m["at_least"])
        if not low_ok or (m["below"] is not None and value >= m["below"]):
            raise ValueError(f"--{f.name} must be {_bounds_text(m)}, got {value}")


def build(cls, values: dict):
    """An instance of `cls` from the fields of `values` that it has, checked."""
    config = cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})
    check(config)
    return config
