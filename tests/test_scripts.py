"""The classification scripts end to end on a very small GPT-2, and their errors."""

import json

import pytest

from sophon.cli import classification_main, finetune_test_main, parse_setting_args
from tests.text_fixtures import save_small_gpt2

SMALL = ["--arch", "tiny-gpt2", "--dataset", "RT", "--original", "NEWS", "--train_size", "48", "--test_size", "48",
         "--original_size", "200", "--max_len", "32", "--total_loop", "2", "--test_iterval", "1",
         "--adaptation_steps", "1", "--bs", "8", "--finetune_bs", "8", "--truly_finetune_epochs", "1",
         "--attacks", "sgd,adam:1e-3", "--seeds", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    model = save_small_gpt2(root / "model")
    run_dir = classification_main("test", ("ice",), SMALL + ["--pretrained", str(model), "--root", str(root)])
    return root, model, run_dir


def test_protect_and_test_writes_the_three_row_table(run):
    root, _, run_dir = run
    assert run_dir.parent == root / "inverse_loss" / "tiny-gpt2_RT"  # the fork's folder names
    args = json.loads((run_dir / "args.json").read_text())
    assert args["total_loop"] == 2 and args["alpha"] == 1.0  # given flag, and a tiny-gpt2 preset value
    result = json.loads((run_dir / "results.json").read_text())
    rows = result["rows"]
    assert sorted({r["start"] for r in rows}) == ["normal", "scratch", "sophon"]
    assert {r["attack"].split(":")[0] for r in rows} == {"sgd", "adam"}
    assert all(len(r["final"]) == 2 for r in rows)  # --seeds 2
    assert all("perplexity" in r["original"] for r in rows if r["start"] != "scratch")
    assert [v["attack"] for v in result["verdicts"]] == ["sgd:0.05:bs=8:epochs=1", "adam:0.001:bs=8:epochs=1"]
    assert result["worst"]["sophon"]["attacks"] == 2
    assert (run_dir / "curves.png").stat().st_size > 10_000
    iterations = [json.loads(l)["iteration"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert iterations == [0, 1, 2]


def test_finetune_test_from_the_sophon_checkpoint(run):
    root, model, run_dir = run
    out = finetune_test_main("test", SMALL + ["--pretrained", str(model), "--root", str(root), "--start", "sophon",
                                              "--path", str(run_dir / "checkpoints" / "final.safetensors")])
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["start"] for r in rows] == ["sophon", "sophon"]


def test_compare_judges_each_checkpoint_against_the_same_normal_and_scratch(run):
    root, model, run_dir = run
    from sophon import checkpoint

    final = run_dir / "checkpoints" / "final.safetensors"
    tensors, meta = checkpoint.load(final)
    other = {k: v * 3 if k.endswith("weight") and v.is_floating_point() else v for k, v in tensors.items()}
    checkpoint.save(root / "other.safetensors", other, meta)  # another model: its curves must differ
    out = finetune_test_main("test", SMALL + ["--pretrained", str(model), "--root", str(root), "--compare",
                                              "--path", f"a={final}", str(root / "other.safetensors"),
                                              f"c={run_dir / 'checkpoints' / 'last.safetensors'}"])
    result = json.loads((out / "results.json").read_text())
    starts = [r["start"] for r in result["rows"]]
    assert sorted(set(starts)) == ["a", "c", "normal", "other", "scratch"] and len(starts) == 10  # 5 starts x 2 attacks
    assert sorted(result["worst"]) == ["a", "c", "other"]
    assert sorted({(v["start"], v["attack"].split(":")[0]) for v in result["verdicts"]}) == [
        ("a", "adam"), ("a", "sgd"), ("c", "adam"), ("c", "sgd"), ("other", "adam"), ("other", "sgd")]
    rows = {(r["start"], r["attack"]): r["final"] for r in result["rows"]}
    attacks = [a for s, a in rows if s == "a"]
    # final and last hold the same weights at a finished run's end: the same curves; the scaled copy differs
    assert all(rows[("a", a)] == rows[("c", a)] for a in attacks)
    assert any(rows[("a", a)] != rows[("other", a)] for a in attacks)


@pytest.mark.parametrize("flags, words", [
    (["--compare"], "--compare needs --path"),
    (["--path", "x.safetensors", "y.safetensors"], "add --compare"),
    (["--compare", "--path", "normal=x.safetensors"], "the name 'normal' is empty, taken or reserved"),
    (["--compare", "--path", "/nonexistent/final.safetensors"], "--path /nonexistent/final.safetensors: no such file"),
])
def test_compare_errors_are_one_line(run, capsys, tmp_path, flags, words):
    root, model, _ = run
    line = _error_line(capsys, lambda: finetune_test_main("test", SMALL + ["--pretrained", str(model), "--root",
                                                                           str(tmp_path)] + flags))
    assert words in line
    assert not any(tmp_path.iterdir())


def test_resume_of_a_finished_run_adds_iterations(run):
    root, model, run_dir = run
    # Only --resume and the one flag a resumed run may change: everything else comes from args.json.
    classification_main("test", ("ice",), ["--resume", str(run_dir), "--total_loop", "3"])
    iterations = [json.loads(l)["iteration"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert iterations == [0, 1, 2, 3]
    saved = json.loads((run_dir / "args.json").read_text())
    assert saved["total_loop"] == 3 and saved["pretrained"] == str(model) and saved["train_size"] == 48


def _resume(run_dir, *flags):
    return parse_setting_args("test", ["--resume", str(run_dir), *flags], losses=("ice",), resumable=True)[0]


def test_resume_takes_the_saved_flags_and_refuses_a_changed_one(run, capsys):
    root, model, run_dir = run
    args = _resume(run_dir)
    assert (args.pretrained, args.train_size, args.max_len, args.lr, args.attacks) == (str(model), 48, 32, 1e-3,
                                                                                       "sgd,adam:1e-3")
    assert args.command == " ".join(SMALL + ["--pretrained", str(model), "--root", str(root)])  # the run's own
    assert _resume(run_dir, "--lr", "0.001", "--device", "cuda:3", "--total_loop", "9").device == "cuda:3"
    line = _error_line(capsys, lambda: _resume(run_dir, "--lr", "0.01"))
    assert line == (f"error: --lr 0.01 conflicts with the run's saved 0.001 ({run_dir / 'args.json'}); "
                    "drop the flag or start a new run")
    line = _error_line(capsys, lambda: _resume(run_dir, "--arch", "cnn"))
    assert "--arch cnn conflicts with the run's saved tiny-gpt2" in line
    assert "no args.json there" in _error_line(capsys, lambda: _resume(root))


def test_unknown_arch_lists_the_choices(capsys):
    with pytest.raises(SystemExit):
        classification_main("test", ("ice",), ["--arch", "res5"])
    err = capsys.readouterr().err
    assert "unknown --arch 'res5'" in err and "tiny-gpt2" in err and "res18" in err


def _error_line(capsys, call) -> str:
    with pytest.raises(SystemExit) as exit_:
        call()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_sophon_start_without_path_is_refused(run, capsys):
    root, model, _ = run
    line = _error_line(capsys, lambda: finetune_test_main(
        "test", SMALL + ["--pretrained", str(model), "--root", str(root), "--start", "sophon"]))
    assert "--path" in line


@pytest.mark.parametrize("flags, words", [
    (["--bs", "0"], "--bs must be greater than 0, got 0"),
    (["--seeds", "0"], "--seeds must be greater than 0"),
    (["--guard", "1.5"], "--guard must be at least 0 and below 1, got 1.5"),
    (["--attacks", "adma:1e-3"], "unknown optimizer 'adma'"),
    (["--attacks", "adam:1e-3:epoch=3"], "unknown part 'epoch=3'"),
    (["--attacks", ""], "no attack to run: --attacks is empty"),
    (["--dataset", "IMDBX"], "unknown --dataset 'IMDBX'"),
    (["--pretrained", "/nonexistent/model"], "/nonexistent/model"),
    (["--simulate", "sgd:0.1,adam:1e-3:method=lora"], "drop method=lora"),
    (["--simulate", "sgd:0.1", "--envs", "2"], "--simulate and --envs both name"),
    (["--probe_support", "100"], "--probe_support shapes the closed-form probe, which is off"),
    (["--probe_ridge", "0.01"], "--probe_ridge shapes the closed-form probe, which is off"),
    (["--probe_weight", "0.01", "--probe_ridge", "0"], "--probe_ridge must be greater than 0"),
    (["--probe_weight", "0.01", "--probe_support", "0"], "--probe_support must be greater than 0"),
    (["--separation_seeds", "1"], "--separation_seeds 1 is fewer than --seeds 2"),
])
def test_user_errors_are_one_line_before_any_work(capsys, tmp_path, flags, words):
    line = _error_line(capsys, lambda: classification_main("test", ("ice",), SMALL + ["--root", str(tmp_path)] + flags))
    assert words in line
    assert not any(tmp_path.iterdir())  # nothing was started


def test_a_corrupt_checkpoint_is_one_line(run, capsys, tmp_path):
    root, model, _ = run
    bad = tmp_path / "final.safetensors"
    bad.write_bytes(b"not a checkpoint")
    line = _error_line(capsys, lambda: finetune_test_main(
        "test", SMALL + ["--pretrained", str(model), "--root", str(root), "--start", "sophon", "--path", str(bad)]))
    assert "corrupt" in line


def test_classification_scripts_refuse_a_diffusion_arch(capsys):
    with pytest.raises(SystemExit):
        classification_main("test", ("ice",), ["--arch", "unet-tiny"])
    err = capsys.readouterr().err
    assert "unknown --arch 'unet-tiny'" in err and "unet" not in err.split("choose one of")[1]


def test_pretraining_corpus_adds_unlabelled_restricted_text(tmp_path, capsys):
    from sophon.cli import pretrain_main
    from sophon.data.text import load_text

    tiny = ["--steps", "2", "--vocab_size", "300", "--n_layer", "1", "--n_embd", "16", "--n_head", "2",
            "--max_len", "16", "--bs", "4", "--device", "cpu"]
    with_rt = pretrain_main("test", tiny + ["--pretrained", str(tmp_path / "a")])
    alone = pretrain_main("test", tiny + ["--pretrained", str(tmp_path / "b"), "--unlabelled", "none"])
    n_news, n_rt = len(load_text("NEWS", "train")), len(load_text("RT", "train"))
    assert json.loads((with_rt / "pretraining.json").read_text())["texts"] == n_news + n_rt
    assert json.loads((alone / "pretraining.json").read_text())["texts"] == n_news
    with pytest.raises(SystemExit):
        pretrain_main("test", tiny + ["--pretrained", str(tmp_path / "c"), "--unlabelled", "CIFAR10"])
    assert "error: unknown --unlabelled 'CIFAR10'" in capsys.readouterr().err


def test_generation_scripts_refuse_a_classification_arch(capsys):
    from sophon.cli import generation_main

    with pytest.raises(SystemExit):
        generation_main("test", "dos", ["--arch", "cnn"])
    assert "unknown --arch 'cnn'; choose one of unet-tiny, unet-paper" in capsys.readouterr().err


def test_help_lists_the_settings_own_flags(capsys):
    with pytest.raises(SystemExit):
        classification_main("test", ("ice",), ["--arch", "cnn", "--help"])
    out = capsys.readouterr().out
    assert "--img_size" in out and "--alpha" in out
    flat = " ".join(out.split())
    assert "FTS step size = alpha * lr (default for --arch cnn: 10.0)" in flat  # the preset's value
    assert "--arch cnn res18 res34 res50 vgg caformer" in flat and "--dataset RT IMDB" in flat
    assert "unet-tiny unet-paper" in flat and "CELEBA" in flat


def test_grad_checkpointing_outside_the_text_setting_is_refused(capsys, tmp_path):
    line = _error_line(capsys, lambda: classification_main(
        "test", ("ice",), ["--arch", "cnn", "--grad_checkpointing", "--root", str(tmp_path)]))
    assert "--grad_checkpointing applies to the causal LMs" in line


def test_the_probe_attacker_outside_classification_is_refused(capsys, tmp_path):
    from sophon.cli import generation_main

    line = _error_line(capsys, lambda: generation_main(
        "test", "dos", ["--arch", "unet-tiny", "--probe_weight", "0.01", "--root", str(tmp_path)]))
    assert "--probe_weight simulates a linear probe" in line
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flags, words", [
    (["--canonical_scale"], "--canonical_scale needs a layer whose output feeds only a BatchNorm"),
    (["--attacks", "sgd:rescale=1"], "rescale=1 needs a layer whose output feeds only a BatchNorm"),
])
def test_batchnorm_options_on_a_model_without_batchnorm_are_one_line_before_any_work(run, capsys, tmp_path, flags,
                                                                                      words):
    _, model, _ = run
    line = _error_line(capsys, lambda: classification_main(
        "test", ("ice",), SMALL + ["--pretrained", str(model), "--root", str(tmp_path)] + flags))
    assert words in line
    assert not any(tmp_path.iterdir())  # no run folder: refused before SOPHON started
