"""Named suites: which attacks a model gets, `rescale=1` ones only where weight scale is free."""

import pytest

from sophon.cli import parse, parse_setting_args
from sophon.models.vision import BATCHNORM_FED, IMAGE_ARCHS, build_classifier
from sophon.optim import OPTIMIZERS
from sophon.rescale import scale_invariant_pairs
from sophon.settings import setting_for


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_batchnorm_fed_names_exactly_the_archs_with_scale_invariant_layers(arch):
    # The suite is built before the model, so it trusts this list: it must match the models themselves.
    has_pairs = bool(scale_invariant_pairs(build_classifier(arch, 10)))
    assert has_pairs == (arch in BATCHNORM_FED)


def _attacks(arch, *flags):
    setting = setting_for(arch)
    args, _ = parse_setting_args("test", ["--arch", arch, *flags], kind=setting.NAME, default_arch=arch)
    return list(args.attack_list.values())


def test_standard_suite_of_a_batchnorm_model_rescales_every_optimizer_at_its_usual_lr():
    attacks = _attacks("cnn", "--suite", "standard")
    rescaled = [a for a in attacks if a.rescale]
    assert sorted(a.optimizer for a in rescaled) == sorted(OPTIMIZERS)
    plain = [a for a in attacks if not a.rescale]
    for a in rescaled:  # the usual lr: the middle of the plain attacks' decade triple, the same budget
        lrs = sorted(p.lr for p in plain if p.optimizer == a.optimizer and p.bs == a.bs and p.epochs == a.epochs
                     and p.method == "full" and p.schedule == "constant")
        assert len(lrs) == 3 and lrs[1] == a.lr and a.method == "full"
    assert len(attacks) == len({a.label for a in attacks})


@pytest.mark.parametrize("arch,suite", [("vgg", "standard"), ("tiny-gpt2", "standard"), ("vgg", "quick"),
                                        ("unet-tiny", "quick")])
def test_models_without_batchnorm_get_no_rescale_attack(arch, suite):
    attacks = _attacks(arch, "--suite", suite)
    assert attacks and not any(a.rescale for a in attacks)


def test_quick_suite_of_a_batchnorm_model_has_one_rescaled_attack():
    assert [a.label for a in _attacks("cnn", "--suite", "quick") if a.rescale] == [
        "adam:0.001:bs=32:epochs=10:rescale=1"]


def test_cnn_preset_keeps_weights_at_default_scale_unless_told_not_to():
    setting = setting_for("cnn")
    on, _ = parse("test", ["--arch", "cnn"], kind=setting.NAME, default_arch="cnn")
    off, _ = parse("test", ["--arch", "cnn", "--no-canonical_scale"], kind=setting.NAME, default_arch="cnn")
    assert on.canonical_scale is True and off.canonical_scale is False


def test_full_grid_rescales_every_attack_that_changes_the_body_on_a_batchnorm_model():
    from sophon.suites import suite

    attacks = suite("full", "image", 32, 10, rescalable=True)
    plain, rescaled = [a for a in attacks if not a.rescale], [a for a in attacks if a.rescale]
    assert plain == suite("full", "image", 32, 10)
    assert len(rescaled) == sum(a.method != "head" for a in plain) and all(a.method != "head" for a in rescaled)
