"""Command-line flags shared by the scripts, with the paper's names (DESIGN §2).

Flags default to None so that a per-arch preset (setting.PRESETS) can fill what the user left unset;
GLOBAL_DEFAULTS fills the rest.
"""

import argparse
import functools
import os
import sys

from sophon.device import device_of
from sophon.settings import CLASSIFICATION

GLOBAL_DEFAULTS = dict(
    alpha=3.0, beta=5.0, lr=1e-4, fast_lr=1e-4, bs=32, ml_loop=1, nl_loop=1, total_loop=100,
    adaptation_steps=5, test_iterval=20, finetune_epochs=1, truly_finetune_epochs=5, finetune_lr=1e-4,
    finetune_bs=32, attacks="sgd", envs=0, guard=0.9, guard_action="stop", query_fraction=0.1, seed=0,
    suite=None, seeds=3, tune=0, attackers="fixed", anchor=False, suppress_every=1, late_weight=0.0, query_bs=None,
)


def base_parser(description: str, losses: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    # Raw: the scripts' docstrings are examples whose line breaks matter; defaults are added per arch.
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=names_epilog())
    g = p.add_argument_group("what to protect")
    g.add_argument("--arch", default=None, help="model architecture; picks the setting (names below)")
    g.add_argument("--dataset", default=None, help="restricted domain")
    g.add_argument("--original", default=None, help="original domain")
    g.add_argument("--pretrained", default=None, help="pre-trained weights: a file, a save_pretrained folder or a hub id")
    g.add_argument("--data_root", default=None, help="folder holding local copies of the real datasets")
    g.add_argument("--root", default="results", help="where run folders are written")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda when available)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="autocast precision of every training step; weights and losses stay fp32")
    g.add_argument("--grad_checkpointing", action="store_true",
                   help="gradient checkpointing in the causal LMs' blocks (text setting): memory for time")
    g.add_argument("--notes", default="", help="free text stored in args.json")
    if losses:
        g.add_argument("--loss", default=losses[0], choices=losses, help="suppression loss")
    s = p.add_argument_group("SOPHON loop (paper flag names)")
    for flag, kind, text in [
        ("alpha", float, "FTS step size = alpha * lr"), ("beta", float, "NTR step size = beta * lr"),
        ("lr", float, "base learning rate"), ("fast_lr", float, "simulated fine-tuning lr (fixed environment)"),
        ("bs", int, "batch size"), ("ml_loop", int, "FTS steps per iteration"),
        ("nl_loop", int, "NTR steps per iteration"), ("total_loop", int, "iterations"),
        ("adaptation_steps", int, "inner fine-tuning steps K"), ("test_iterval", int, "evaluate every N iterations"),
        ("finetune_epochs", int, "epochs of the short fine-tuning test during the run"),
        ("truly_finetune_epochs", int, "epochs of the final fine-tuning attack"),
        ("finetune_lr", float, "lr of the final plain-SGD attack"), ("finetune_bs", int, "attack batch size"),
        ("envs", int, "0: one fixed plain-SGD environment at --fast_lr; N: sample N environments"),
        ("guard", float, "stop when the original metric falls below this fraction of its start (0: off)"),
        ("query_fraction", float, "query share of each simulated batch"),
        ("query_bs", int, "a separate query batch of this size instead of the query_fraction split"),
        ("suppress_every", int, "take the suppression gradient every N inner steps (and at the last)"),
        ("late_weight", float, "weight inner step k by (k/K)^late_weight (0: uniform)"),
    ]:
        s.add_argument(f"--{flag}", type=kind, default=None, help=text)
    s.add_argument("--guard_action", default=None, choices=("stop", "decay"))
    s.add_argument("--attackers", default=None, choices=("fixed", "sampled"),
                   help="simulated attackers: fixed (--envs) or a new draw of max(1, --envs) every FTS step from "
                        "the attack suite's distribution (README)")
    s.add_argument("--anchor", action="store_true", default=None,
                   help="with --attackers sampled: keep the fixed attacker (plain SGD at --fast_lr) in every FTS "
                        "step beside the sampled ones")
    a = p.add_argument_group("attacks (the evaluation)")
    a.add_argument("--attacks", default=None,
                   help="comma-separated optimizer[:lr][:key=value...], keys bs, epochs, lr, method "
                        "(full|head|lora|benign), schedule (constant|cosine|warmup-cosine); optimizers "
                        "sgd sgd-momentum nesterov adam adamw rmsprop adagrad adadelta. "
                        "E.g. adam:1e-4:method=lora:epochs=20,sgd-momentum:1e-3:bs=8")
    a.add_argument("--suite", default=None, choices=("quick", "standard", "full"),
                   help="a named attack suite (README); replaces the preset's --attacks, adds any given")
    a.add_argument("--seeds", type=int, default=None, help="attack seeds per attack (default 3)")
    a.add_argument("--tune", type=int, default=None, metavar="N",
                   help="Optuna trials of the tuned attacker, run first and added as the row 'tuned' (0: off)")
    s.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    return p


def fail(message: str) -> None:
    """A user error: one line, exit code 2, no traceback."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def user_errors(main):
    """Script entry points: what the user can fix (a name, a value, a missing file or weights, a
    corrupt checkpoint, a NaN loss) is one `error:` line and exit code 2; SOPHON_DEBUG=1 shows the
    traceback. Anything else is a bug and keeps its traceback."""
    from sophon.checkpoint import CheckpointError
    from sophon.protect import NonFiniteLossError

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (ValueError, FileNotFoundError, CheckpointError, NonFiniteLossError) as err:
            if os.environ.get("SOPHON_DEBUG"):
                raise
            fail(str(err))
    return wrapper


# Flag -> (lowest allowed value, whether the lowest is excluded): checked before anything loads.
_BOUNDS = {**{k: (0, True) for k in ("bs", "finetune_bs", "total_loop", "adaptation_steps", "test_iterval",
                                      "truly_finetune_epochs", "seeds", "suppress_every", "query_bs", "lr",
                                      "fast_lr", "finetune_lr", "max_len", "train_size", "test_size",
                                      "original_size", "img_size", "image_size", "eval_size", "eval_repeats",
                                      "sample_steps", "cnn_width")},
           **{k: (0, False) for k in ("alpha", "beta", "ml_loop", "nl_loop", "finetune_epochs", "envs", "tune",
                                      "late_weight", "guard", "n_samples")}}


def check_values(args) -> None:
    for key, (low, strict) in _BOUNDS.items():
        value = getattr(args, key, None)
        if value is not None and (value <= low if strict else value < low):
            fail(f"--{key} must be {'greater than' if strict else 'at least'} {low}, got {value}")
    if not 0 < args.query_fraction < 1:
        fail(f"--query_fraction must lie between 0 and 1, got {args.query_fraction}")
    if args.guard >= 1:
        fail(f"--guard is a fraction of the pre-SOPHON metric below 1 (e.g. 0.9), got {args.guard}")


def resolve(args: argparse.Namespace, presets: dict, argv: list[str] | None = None) -> argparse.Namespace:
    """Fill flags left unset from the arch's preset, then from GLOBAL_DEFAULTS."""
    args.attacks_given = args.attacks is not None
    preset = presets.get(args.arch, {})
    for key, value in {**GLOBAL_DEFAULTS, **preset}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, preset.get(key, value))
    args.command = " ".join(argv if argv is not None else sys.argv)
    check_values(args)
    return args


def resolve_attacks(args, setting_name: str) -> None:
    """Parse and check --suite/--attacks/--seeds/--tune before any model or data is loaded."""
    from sophon.attack import AttackSpecError
    from sophon.suites import attacks_from_args

    if args.seeds < 1:
        fail(f"--seeds must be at least 1, got {args.seeds}")
    if args.tune < 0:
        fail(f"--tune must be 0 (off) or a number of trials, got {args.tune}")
    try:
        args.attack_list = {a.label: a for a in attacks_from_args(args, setting_name)}
    except AttackSpecError as err:
        fail(str(err))


def _setting_parser(description: str, argv, losses=(), kind=None, extra=None, default_arch="tiny-gpt2"):
    """Two passes: --arch picks the setting, whose own flags are then added and parsed."""
    from sophon.settings import setting_for

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = base_parser(description, losses)
    if extra:
        extra(parser)
    # --help waits for the second pass, so it lists the setting's own flags too.
    known, _ = parser.parse_known_args([a for a in argv if a not in ("-h", "--help")])
    arch = known.arch or default_arch
    try:
        setting = setting_for(arch, kind)
    except ValueError as err:
        parser.error(str(err))
    setting.add_arguments(parser)
    show_defaults(parser, {**GLOBAL_DEFAULTS, **setting.PRESETS.get(arch, {})}, arch)
    return parser, setting, argv


def names_epilog() -> str:
    """Every valid --arch, --dataset and --original, per setting, for --help."""
    from sophon.data.diffusion_images import DIFFUSION_DATASETS
    from sophon.data.images import IMAGE_DATASETS
    from sophon.data.text import ORIGINAL_TEXT, RESTRICTED_TEXT
    from sophon.settings import SETTING_ARCHS

    rows = [("text", RESTRICTED_TEXT, ORIGINAL_TEXT), ("image", IMAGE_DATASETS, IMAGE_DATASETS),
            ("diffusion", DIFFUSION_DATASETS, DIFFUSION_DATASETS)]
    lines = ["names (embedded sets run offline: RT NEWS FASHION DIGITS LFW):"]
    for name, restricted, original in rows:
        lines.append(f"  {name:9s} --arch {' '.join(SETTING_ARCHS[name])}")
        lines.append(f"  {'':9s} --dataset {' '.join(restricted)}   --original {' '.join(original)}")
    return "\n".join(lines)


def show_defaults(parser: argparse.ArgumentParser, defaults: dict, arch: str) -> None:
    """Append to each flag's help the value it takes for this --arch when left unset."""
    for action in parser._actions:
        if not action.help or action.help == argparse.SUPPRESS or action.dest == "help":
            continue
        value = defaults.get(action.dest, action.default)
        if value not in (None, False, ""):
            action.help += f" (default for --arch {arch}: {value})" if action.dest in defaults else f" (default: {value})"


def parse_setting_args(description: str, argv=None, kind=CLASSIFICATION, losses=(), extra=None,
                       default_arch: str = "tiny-gpt2"):
    """(args, setting) with presets filled and the attacks checked: what every attacking script needs."""
    parser, setting, argv = _setting_parser(description, argv, losses, kind=kind, extra=extra,
                                            default_arch=default_arch)
    args = parser.parse_args(argv)
    args.arch = args.arch or default_arch
    resolve(args, setting.PRESETS, argv)
    resolve_attacks(args, setting.NAME)
    return args, setting


@user_errors
def classification_main(description: str, losses: tuple[str, ...], argv=None):
    """inverse_loss.py and kl_uniform_loss.py: the same run, a different suppression loss."""
    from sophon.experiment import protect_and_test

    args, setting = parse_setting_args(description, argv, losses=losses)
    return protect_and_test(args, args.loss, setting)


@user_errors
def finetune_test_main(description: str, argv=None):
    from sophon.experiment import STARTS, finetune_test

    def extra(p):
        p.add_argument("--start", default="sophon", choices=STARTS, help="where fine-tuning starts")
        p.add_argument("--path", default=None, help="SOPHON checkpoint (.safetensors) for --start sophon")

    args, setting = parse_setting_args(description, argv, extra=extra)
    return finetune_test(args, setting, args.start, args.path)


@user_errors
def pretrain_main(description: str, argv=None):
    parser, setting, argv = _setting_parser(description, argv, kind=CLASSIFICATION)
    setting.add_pretrain_arguments(parser)
    args = parser.parse_args(argv)
    args.arch = args.arch or "tiny-gpt2"
    resolve(args, setting.PRESETS, argv)
    args.device = str(device_of(args))
    return setting.pretrain(args)


@user_errors
def generation_main(description: str, loss: str, argv=None):
    """denial_service_loss.py and mean_squared_loss.py: the same run, a different suppression loss."""
    from sophon.experiment import finetune_test, protect_and_test

    def extra(p):
        p.add_argument("--finetune", metavar="CKPT", default=None,
                       help="only run the fine-tuning test of this SOPHON checkpoint (.safetensors)")
        p.add_argument("--pretest", choices=("pretrained", "scratch"), default=None,
                       help="only run a baseline fine-tuning test: from the pre-trained model, or from scratch")

    args, setting = parse_setting_args(description, argv, kind="diffusion", extra=extra, default_arch="unet-tiny")
    if args.finetune:
        return finetune_test(args, setting, "sophon", args.finetune, loss)
    if args.pretest:
        return finetune_test(args, setting, {"pretrained": "normal", "scratch": "scratch"}[args.pretest], None, loss)
    return protect_and_test(args, loss, setting)
