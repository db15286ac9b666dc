"""One home for every default (sophon/config.py): presets override real fields, the parser and
args.json are generated from the dataclasses, bounds are checked wherever a value comes from."""

import json
from dataclasses import fields

import pytest

from sophon.cli import parse
from sophon.config import LoopConfig, RunConfig, build, check, field_names, overrides
from sophon.experiment import args_to_json
from sophon.settings import SETTING_ARCHS, arch_args, arch_defaults, configs_of, setting_for
from sophon.settings import image


@pytest.mark.parametrize("name", SETTING_ARCHS)
def test_every_preset_key_is_a_field_and_no_field_is_defined_twice(name):
    setting = setting_for(SETTING_ARCHS[name][0])
    classes = configs_of(setting, pretrain=True)
    names = field_names(classes)
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert set(setting.PRESETS) <= set(setting.ARCHS)
    loss_presets = getattr(setting, "LOSS_PRESETS", {})
    assert set(loss_presets) <= set(setting.ARCHS)
    for arch in setting.ARCHS:
        overrides(setting.PRESETS.get(arch, {}), classes, arch)  # raises on a key that is no field
        for loss in (None, *loss_presets.get(arch, {})):
            overrides(loss_presets.get(arch, {}).get(loss, {}), classes, f"{arch} {loss}")
            for cls in classes:
                build(cls, arch_defaults(setting, arch, classes, loss))  # and every preset value is in bounds


def test_an_unknown_preset_key_is_named(monkeypatch):
    monkeypatch.setitem(image.PRESETS, "cnn", {**image.PRESETS["cnn"], "alhpa": 3.0})
    with pytest.raises(ValueError, match="PRESETS\\['cnn'\\]: alhpa is no field"):
        arch_args("cnn")
    with pytest.raises(ValueError, match="arch_args: img_szie is no field"):
        arch_args("res18", img_szie=32)


def test_parser_defaults_come_from_the_dataclass_then_the_preset(monkeypatch, capsys):
    monkeypatch.setattr(LoopConfig.__dataclass_fields__["ml_loop"], "default", 7)
    args, _ = parse("test", ["--arch", "cnn"])
    assert args.ml_loop == 7 and args.alpha == image.PRESETS["cnn"]["alpha"] and args.beta == LoopConfig.beta
    monkeypatch.setitem(image.PRESETS, "cnn", {**image.PRESETS["cnn"], "ml_loop": 3})
    assert parse("test", ["--arch", "cnn"])[0].ml_loop == 3
    assert parse("test", ["--arch", "cnn", "--ml_loop", "2"])[0].ml_loop == 2
    with pytest.raises(SystemExit):
        parse("test", ["--arch", "cnn", "--help"])
    assert "FTS steps per iteration (default for --arch cnn: 3)" in " ".join(capsys.readouterr().out.split())


def test_every_field_has_a_flag_with_its_help():
    args, setting = parse("test", ["--arch", "tiny-gpt2"], pretrain=True)
    for cls in configs_of(setting, pretrain=True):
        for f in fields(cls):
            assert f.metadata["help"] and hasattr(args, f.name), f.name
    assert args.precision == "fp32" and args.grad_checkpointing is False
    assert parse("test", ["--precision", "bf16", "--grad_checkpointing"])[0].grad_checkpointing is True


@pytest.mark.parametrize("values, words", [
    (dict(bs=0), "--bs must be greater than 0, got 0"),
    (dict(query_fraction=1.0), "--query_fraction must be greater than 0 and below 1, got 1.0"),
    (dict(guard=-0.1), "--guard must be at least 0 and below 1, got -0.1"),
    (dict(attackers="random"), "--attackers must be one of fixed, cycle, sampled, got 'random'"),
])
def test_bounds_and_choices_are_checked_from_the_metadata(values, words):
    with pytest.raises(ValueError, match=words.replace("(", "\\(")):
        check(LoopConfig(**values))
    with pytest.raises(ValueError, match=words.split(",")[0]):
        arch_args("cnn", **values)  # a value from code is checked as one from the command line


@pytest.mark.parametrize("flags, words", [
    (["--lr", "-1"], "--lr must be greater than 0, got -1.0"),
    (["--precision", "fp8"], "invalid choice: 'fp8'"),
    (["--max_len", "0"], "--max_len must be greater than 0, got 0"),
])
def test_bad_flags_exit_2_with_one_line(capsys, flags, words):
    with pytest.raises(SystemExit) as exit_:
        parse("test", ["--arch", "tiny-gpt2"] + flags)
    assert exit_.value.code == 2 and words in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["tiny-gpt2", "cnn", "unet-tiny"])
def test_args_json_round_trips_into_the_same_configs(arch):
    setting = setting_for(arch)
    args, _ = parse("test", ["--arch", arch, "--lr", "0.003", "--seed", "5", "--suite", "quick"],
                    kind=setting.NAME, default_arch=arch)
    saved = json.loads(args_to_json(args, setting))
    assert list(saved)[:len(fields(RunConfig))] == [f.name for f in fields(RunConfig)]  # the configs' order
    for cls in configs_of(setting):
        assert build(cls, saved) == build(cls, vars(args))
    assert saved["lr"] == 0.003 and saved["suite"] == "quick" and saved["command"]


def test_protect_config_is_the_loop_config_and_round_trips_through_a_sidecar():
    from dataclasses import asdict

    from sophon.experiment import protect_config
    from sophon.protect import ProtectConfig
    from sophon.simulate import Environment

    config = ProtectConfig(fast_lr=0.1, bs=8, seed=3)
    assert config.environments == [Environment("sgd", 0.1, 8)] and config.alpha == LoopConfig.alpha
    args, setting = parse("test", ["--arch", "cnn", "--attackers", "sampled", "--envs", "2", "--seed", "4"])
    config = protect_config(args, setting.NAME)
    assert build(LoopConfig, asdict(config)) == build(LoopConfig, vars(args)) and config.seed == 4
    assert config.distribution.batch_sizes == (32, 64, 128)  # around the cnn preset's --bs 64
    assert ProtectConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # checkpoint sidecars


def test_a_loss_preset_overrides_the_arch_preset_for_that_loss_only(monkeypatch, capsys, tmp_path):
    """LOSS_PRESETS: the cnn's ICE and KLU runs take two NTR steps (KLU larger FTS and NTR steps), ice-released and a
    script without a loss the arch preset's three; --resume takes the run's loss."""
    shared = image.PRESETS["cnn"]["nl_loop"]
    own = image.LOSS_PRESETS["cnn"]["ice"]["nl_loop"]
    assert own != shared
    losses = ("ice", "ice-released")
    assert parse("t", ["--arch", "cnn"], losses=losses)[0].nl_loop == own  # --loss defaults to ice
    assert parse("t", ["--arch", "cnn", "--loss", "ice-released"], losses=losses)[0].nl_loop == shared
    klu = parse("t", ["--arch", "cnn"], losses=("klu",))[0]
    klu_preset = image.LOSS_PRESETS["cnn"]["klu"]
    assert (klu.nl_loop, klu.alpha, klu.beta) == (klu_preset["nl_loop"], klu_preset["alpha"], klu_preset["beta"])
    assert klu.alpha != image.PRESETS["cnn"]["alpha"]
    assert klu.beta != image.PRESETS["cnn"].get("beta", LoopConfig.beta)
    assert parse("t", ["--arch", "cnn"], loss="ice")[0].nl_loop == own  # a script of one fixed loss
    assert parse("t", ["--arch", "cnn"])[0].nl_loop == shared  # no loss (finetune_test.py): the arch preset
    assert parse("t", ["--arch", "cnn", "--nl_loop", "5"], loss="ice")[0].nl_loop == 5  # a flag still wins
    assert arch_args("cnn", loss="ice").nl_loop == own and arch_args("cnn").nl_loop == shared
    assert parse("t", ["--arch", "cnn"], loss="ice")[0].loss == "ice"  # written to args.json for --resume
    with pytest.raises(SystemExit):
        parse("t", ["--arch", "cnn", "--help"], losses=losses)
    shown = " ".join(capsys.readouterr().out.split())
    assert "NTR steps per iteration (default for --arch cnn with loss ice: 2)" in shown
    monkeypatch.setitem(image.LOSS_PRESETS["cnn"], "klu", {"beta": 7.0})
    assert parse("t", ["--arch", "cnn"], losses=("klu",))[0].beta == 7.0
    run = tmp_path / "run"
    run.mkdir()
    args, setting = parse("t", ["--arch", "cnn", "--loss", "ice-released"], losses=losses)
    saved = json.loads(args_to_json(args, setting))
    del saved["nl_loop"]  # a run older than the field: the preset of the run's loss fills it, not --loss's default
    (run / "args.json").write_text(json.dumps(saved))
    resumed = parse("t", ["--resume", str(run)], losses=losses, resumable=True)[0]
    assert resumed.loss == "ice-released" and resumed.nl_loop == shared
