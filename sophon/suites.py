"""Named attack suites (`--suite quick|standard|full`) and the learning rates they are built around.

A suite is a function of the setting (which optimizers' learning rates are usual there, whether
the model has a head and an attention body), of whether the model's weight scale is free (BatchNorm-fed
layers: then it also has `rescale=1` attacks, which undo any scale a protection hid behind) and of the
preset's attack budget (`--finetune_bs`, `--truly_finetune_epochs`). The README lists each suite.
"""

from sophon.attack import Attack, AttackSpecError, parse_attacks
from sophon.config import SUITE_NAMES as SUITES
from sophon.models.vision import BATCHNORM_FED
from sophon.optim import OPTIMIZERS, USUAL_LR

# The lr an attacker would first try with each optimizer, per setting (classifiers of images take
# sophon.optim.USUAL_LR as it is). Paper-scale presets multiply these by their `suite_lr_scale`.
_TEXT = {"sgd": 5e-2, "sgd-momentum": 1e-2, "nesterov": 1e-2, "adam": 3e-4, "adamw": 3e-4, "rmsprop": 1e-4,
         "adagrad": 1e-2, "adadelta": 1.0}
_DIFFUSION = {"sgd": 1e-2, "sgd-momentum": 1e-3, "nesterov": 1e-3, "adam": 1e-4, "adamw": 1e-4,
              "rmsprop": 1e-4, "adagrad": 1e-2, "adadelta": 1.0}
USUAL_LR_BY_SETTING = {"image": USUAL_LR, "text": _TEXT, "diffusion": _DIFFUSION}
# Settings whose models have a classification head (linear probes) and an attention body (LoRA in
# the standard suite; LoRA can still be asked for by spec on any model with linear/conv layers).
HAS_HEAD = {"image": True, "text": True, "diffusion": False}
HAS_ATTENTION = {"image": False, "text": True, "diffusion": True}


def usual_lr(setting: str, optimizer: str, scale: float = 1.0) -> float:
    return USUAL_LR_BY_SETTING[setting][optimizer] * scale


def _round(x: float) -> float:
    return float(f"{x:.2g}")


def suite(name: str, setting: str, bs: int, epochs: int, lr_scale: float = 1.0,
          rescalable: bool = False) -> list[Attack]:
    """`rescalable`: the model has BatchNorm-fed layers (sophon.models.vision.BATCHNORM_FED)."""
    if name not in SUITES:
        raise AttackSpecError(f"unknown --suite {name!r}; choose one of {', '.join(SUITES)}")
    u = {o: _round(usual_lr(setting, o, lr_scale)) for o in OPTIMIZERS}
    head, lora = HAS_HEAD[setting], HAS_ATTENTION[setting]
    if name == "quick":
        attacks = [Attack("sgd-momentum", u["sgd-momentum"], bs, epochs), Attack("adam", u["adam"], bs, epochs),
                   Attack("rmsprop", u["rmsprop"], bs, epochs)]
        attacks.append(Attack("adam", _round(10 * u["adam"]), bs, epochs, method="head") if head
                       else Attack("adam", u["adam"], bs, epochs, method="benign"))
        if rescalable:
            attacks.append(Attack("adam", u["adam"], bs, epochs, rescale=True))
        return attacks
    if name == "standard":
        # Every optimizer at its usual lr and a decade either side, then one change at a time.
        attacks = [Attack(o, _round(u[o] * f), bs, epochs) for o in OPTIMIZERS for f in (0.1, 1.0, 10.0)]
        attacks += [Attack("sgd-momentum", u["sgd-momentum"], max(2, bs // 2), epochs),
                    Attack("sgd-momentum", u["sgd-momentum"], 2 * bs, epochs),
                    Attack("adam", u["adam"], bs, 3 * epochs),
                    Attack("adam", u["adam"], bs, epochs, method="benign"),
                    Attack("adamw", u["adamw"], bs, epochs, schedule="warmup-cosine")]
        if head:  # a linear probe wants a larger step than the whole network
            attacks.append(Attack("adam", _round(10 * u["adam"]), bs, epochs, method="head"))
        if lora:
            attacks.append(Attack("adam", _round(10 * u["adam"]), bs, epochs, method="lora"))
        if rescalable:  # every optimizer again at its usual lr, on weights put back to default-init scale
            attacks += [Attack(o, u[o], bs, epochs, rescale=True) for o in OPTIMIZERS]
        return attacks
    # full: the grid, for machines with time to spare. A linear probe never changes the body, so it is not rescaled.
    methods = ["full", "benign"] + (["head"] if head else []) + ["lora"]
    return [Attack(o, _round(u[o] * f), b, epochs, method=m, schedule=s, rescale=r)
            for o in OPTIMIZERS for f in (0.1, 0.3, 1.0, 3.0, 10.0) for b in (max(2, bs // 2), bs, 2 * bs)
            for m in methods for s in ("constant", "warmup-cosine")
            for r in ((False, True) if rescalable and m != "head" else (False,))]


def attacks_from_args(args, setting: str) -> list[Attack]:
    """The attacks a script runs: `--suite`, plus any `--attacks` given, in order and without
    repeats. Raises AttackSpecError (before anything is loaded) on a bad name, key or value."""
    scale = args.suite_lr_scale

    def lr_for(optimizer: str) -> float:
        # The paper's final attack is plain SGD at --finetune_lr; other optimizers start at their usual lr.
        return args.finetune_lr if optimizer == "sgd" else usual_lr(setting, optimizer, scale)

    bs, epochs = args.finetune_bs, args.truly_finetune_epochs
    rescalable = setting == "image" and args.arch in BATCHNORM_FED
    attacks = suite(args.suite, setting, bs, epochs, scale, rescalable) if args.suite else []
    if args.attacks and (not attacks or args.attacks_given):
        attacks += parse_attacks(args.attacks, lr_for, bs, epochs)
    unique = list({a.label: a for a in attacks}.values())
    if not unique and not getattr(args, "tune", 0):  # else the run would end in an empty table, not an error
        raise AttackSpecError("no attack to run: --attacks is empty and no --suite is given; write e.g. "
                              "--attacks sgd,adam:1e-3 or --suite standard")
    if not HAS_HEAD[setting]:
        for a in unique:
            if a.method == "head":
                raise AttackSpecError(f"attack {a.label!r}: method=head needs a classification head; the "
                                      f"{setting} setting has none (use full, lora or benign)")
    return unique
