"""Command-line flags of the scripts, generated from the typed configs (sophon/config.py), with the
paper's names (DESIGN §2).

A value is, last one wins: its config's default, the arch's preset (setting.PRESETS, then the suppression
loss's overrides, setting.LOSS_PRESETS), the run's saved args.json (--resume), the command line.
"""

import argparse
import functools
import os
import sys
from dataclasses import fields

import torch

from sophon import distributed
from sophon.config import SHARED, build, value_type
from sophon.device import device_of
from sophon.resume import may_change, refuse_changes, saved_args
from sophon.settings import CLASSIFICATION, arch_defaults, configs_of, loss_preset, setting_for

_UNSET = object()  # a flag's value before parsing: what is still _UNSET afterwards was not given


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

    @distributed.entry_point
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (ValueError, FileNotFoundError, CheckpointError, NonFiniteLossError) as err:
            if os.environ.get("SOPHON_DEBUG"):
                raise
            fail(str(err))
    return wrapper


def add_options(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field of config `cls`, in a group named by its docstring."""
    group = parser.add_argument_group(cls.__doc__.strip().splitlines()[0])
    for f in fields(cls):
        m = f.metadata
        if value_type(f) is bool:
            # --no-<flag> too, so that a preset's True can be turned off
            group.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=f.default,
                               help=m["help"])
        else:
            group.add_argument(f"--{f.name}", type=value_type(f), default=f.default, choices=m["choices"],
                               metavar=m["metavar"], help=m["help"])


def given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> dict:
    """{dest: value} of the flags `argv` gives; --help prints here, with the defaults already set."""
    namespace = argparse.Namespace(**{a.dest: _UNSET for a in parser._actions if a.dest != "help"})
    return {k: v for k, v in vars(parser.parse_args(argv, namespace=namespace)).items() if v is not _UNSET}


def _parser(description: str, losses, resumable: bool, extra) -> argparse.ArgumentParser:
    """The flags every script of a kind takes, before --arch has picked the setting."""
    # Raw: the scripts' docstrings are examples whose line breaks matter.
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=names_epilog())
    for cls in SHARED:
        add_options(parser, cls)
    if losses:
        parser.add_argument("--loss", default=losses[0], choices=losses, help="suppression loss")
    if resumable:
        parser.add_argument("--resume", default=None, metavar="RUN_DIR",
                            help="continue a run (interrupted, or finished: extend it with --total_loop) with its saved "
                                 "flags (args.json); a flag that would "
                                 "change them is refused, except "
                                 + " ".join(f"--{n}" for n in sorted(may_change(SHARED) - {"resume"})))
    if extra:
        extra(parser)
    return parser


def _check(parser, values: dict, given: dict, saved: dict, classes, run_dir) -> None:
    """A changed flag of a resumed run, a value out of its bounds, a choice the script does not take: one line."""
    try:
        if saved:
            refuse_changes(given, saved, may_change(classes), run_dir)
        for cls in classes:
            build(cls, values)
    except ValueError as err:
        fail(str(err))
    for action in parser._actions:  # a saved value this script's own choices do not take (another --loss)
        if action.choices and values[action.dest] not in (None, *action.choices):
            fail(f"--{action.dest} {values[action.dest]!r} is not one of {', '.join(action.choices)}; "
                 "resume a run with the script that started it")


def parse(description: str, argv=None, kind=CLASSIFICATION, default_arch: str = "tiny-gpt2", losses=(),
          extra=None, pretrain: bool = False, resumable: bool = False, loss: str | None = None):
    """(args, setting): every field of the setting's configs resolved and checked, and the script's own flags.
    Two passes: --arch (or the resumed run's) picks the setting, whose own flags are then added. The preset is
    the arch's, with the overrides of the suppression loss on top: the resumed run's, else --loss, else `loss`
    (a script with one fixed loss)."""
    command = argv if argv is not None else sys.argv
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(description, losses, resumable, extra)
    # --help waits for the second pass, so it lists the setting's own flags too.
    known, _ = parser.parse_known_args([a for a in argv if a not in ("-h", "--help")])
    run_dir = getattr(known, "resume", None)
    try:
        saved = saved_args(run_dir) if run_dir else {}
        arch = known.arch or saved.get("arch") or default_arch
        setting = setting_for(arch, kind)
    except ValueError as err:
        parser.error(str(err))
    except FileNotFoundError as err:
        fail(str(err))
    classes = configs_of(setting, pretrain)
    for cls in classes[len(SHARED):]:
        add_options(parser, cls)
    dests = {a.dest for a in parser._actions} - {"help", "resume"}
    loss = saved.get("loss") or getattr(known, "loss", None) or loss
    defaults = {**arch_defaults(setting, arch, classes, loss), **{k: v for k, v in saved.items() if k in dests}}
    labels = {k: f"default for --arch {arch}" for k in setting.PRESETS.get(arch, {})}
    labels.update({k: f"default for --arch {arch} with loss {loss}" for k in loss_preset(setting, arch, loss)})
    labels.update({k: f"saved in {run_dir}" for k in saved if k in dests})
    show_defaults(parser, defaults, labels)
    given = given_flags(parser, argv)
    values = {**{a.dest: a.default for a in parser._actions if a.dest != "help"}, **given}
    _check(parser, values, given, saved, classes, run_dir)
    if values.get("grad_checkpointing") and setting.NAME != "text":
        fail(f"--grad_checkpointing applies to the causal LMs of the text setting, not to --arch {arch}; drop it")
    if values.get("probe_weight") and setting.NAME == "diffusion":
        fail("--probe_weight simulates a linear probe of a classifier's features; the diffusion setting has no "
             "head to probe: drop it")
    for flag in ("probe_support", "probe_ridge"):
        if flag in given and not values.get("probe_weight"):
            fail(f"--{flag} shapes the closed-form probe, which is off: add --probe_weight W (e.g. 0.08)")
    if values.get("separation_seeds") and values["separation_seeds"] < values["seeds"]:
        fail(f"--separation_seeds {values['separation_seeds']} is fewer than --seeds {values['seeds']}: the "
             "separation test reuses the attack seeds and adds more; give at least that many")
    args = argparse.Namespace(**values)
    if loss and "loss" not in values:  # a script of one fixed loss: args.json says which, for --resume's preset
        args.loss = loss
    # --suite replaces the preset's --attacks, not attacks the user asked for (sophon.suites).
    args.attacks_given = "attacks" in given or bool(saved.get("attacks_given"))
    args.command = saved.get("command") or " ".join(command)
    if args.threads:  # before any model or data: a CPU kernel's reduction order, hence its numbers, follows it
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()  # args.json records the count the run had, not "0: the default"
    return args, setting


def resolve_attacks(args, setting_name: str) -> None:
    """Parse and check --suite/--attacks/--seeds/--tune before any model or data is loaded."""
    from sophon.attack import AttackSpecError
    from sophon.simulate import environments_from_specs
    from sophon.suites import attacks_from_args

    try:
        args.attack_list = {a.label: a for a in attacks_from_args(args, setting_name)}
        if getattr(args, "simulate", ""):
            if args.envs and args.attackers != "sampled":
                fail("--simulate and --envs both name the fixed simulated attackers; drop one")
            environments_from_specs(args.simulate, args.bs, args.adaptation_steps)
    except AttackSpecError as err:
        fail(str(err))


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


def show_defaults(parser: argparse.ArgumentParser, defaults: dict, labels: dict) -> None:
    """Set each flag's default as resolved for this --arch, and append it to the flag's help."""
    for action in parser._actions:
        action.default = defaults.get(action.dest, action.default)
        if not action.help or action.help == argparse.SUPPRESS or action.dest == "help":
            continue
        if action.dest in labels:
            action.help += f" ({labels[action.dest]}: {action.default})"
        elif action.default is not None and action.default is not False and action.default != "":
            action.help += f" (default: {action.default})"


def parse_setting_args(description: str, argv=None, kind=CLASSIFICATION, losses=(), extra=None,
                       default_arch: str = "tiny-gpt2", resumable: bool = False, loss: str | None = None):
    """(args, setting) with the attacks checked: what every attacking script needs."""
    args, setting = parse(description, argv, kind, default_arch, losses, extra, resumable=resumable, loss=loss)
    resolve_attacks(args, setting.NAME)
    return args, setting


@user_errors
def classification_main(description: str, losses: tuple[str, ...], argv=None):
    """inverse_loss.py and kl_uniform_loss.py: the same run, a different suppression loss."""
    from sophon.experiment import protect_and_test

    args, setting = parse_setting_args(description, argv, losses=losses, resumable=True)
    return protect_and_test(args, args.loss, setting)


@user_errors
def finetune_test_main(description: str, argv=None):
    from sophon.experiment import STARTS, compare_checkpoints, finetune_test, named_checkpoints

    def extra(p):
        p.add_argument("--start", default="sophon", choices=STARTS, help="where fine-tuning starts")
        p.add_argument("--path", nargs="+", default=None, metavar="[NAME=]CKPT",
                       help="SOPHON checkpoint (.safetensors) for --start sophon; several with --compare")
        p.add_argument("--compare", action="store_true",
                       help="attack normal, every --path checkpoint and scratch with the same attacks and seeds, "
                            "and judge each checkpoint (P, verdicts); a checkpoint is named NAME=CKPT, else by "
                            "its run folder")

    args, setting = parse_setting_args(description, argv, extra=extra)
    paths = args.path or []
    if args.compare:
        if not paths:
            raise ValueError("--compare needs --path: one or more SOPHON checkpoints, e.g. --path "
                             "ice=results/inverse_loss/<arch>_<dataset>/<time>/checkpoints/final.safetensors")
        return compare_checkpoints(args, setting, named_checkpoints(paths))
    if len(paths) > 1:
        raise ValueError(f"{len(paths)} checkpoints given to --path: add --compare to attack them side by side")
    return finetune_test(args, setting, args.start, paths[0] if paths else None)


@user_errors
def pretrain_main(description: str, argv=None):
    args, setting = parse(description, argv, kind=CLASSIFICATION, pretrain=True)
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

    args, setting = parse_setting_args(description, argv, kind="diffusion", extra=extra, default_arch="unet-tiny",
                                       resumable=True, loss=loss)
    if args.finetune:
        return finetune_test(args, setting, "sophon", args.finetune, loss)
    if args.pretest:
        return finetune_test(args, setting, {"pretrained": "normal", "scratch": "scratch"}[args.pretest], None, loss)
    return protect_and_test(args, loss, setting)
