"""reproduce.py: the summary across SOPHON seeds, and the refusal of a run made by another preset."""

import json

import pytest


def test_reproduce_summarises_held_counts_across_sophon_seeds():
    from sophon.reproduce import across_seeds, protected_name, seed_lines

    def worst(held, p):
        return {"held": held, "separating": 9, "attacks": 32, "attack": f"a{held}", "protection": p,
                "verdict": "held" if p >= 0.9 else "not held"}

    names = [protected_name("ice", s) for s in range(3)] + [protected_name("klu", 0)]
    assert names == ["sophon-ice", "sophon-ice-seed1", "sophon-ice-seed2", "sophon-klu"]
    result = {"worst": dict(zip(names, [worst(5, 0.69), worst(8, 0.95), worst(2, 0.10), worst(4, 0.05)]))}
    agg = across_seeds(result)
    assert list(agg) == ["sophon-ice"]  # one SOPHON seed of klu: nothing to aggregate
    assert agg["sophon-ice"]["held"] == [5, 8, 2]
    assert agg["sophon-ice"]["mean"] == pytest.approx(5.0) and agg["sophon-ice"]["std"] == pytest.approx(3.0)
    assert agg["sophon-ice"]["worst"]["protection"] == 0.10
    assert "held 5, 8, 2 of 9: 5.0 ± 3.0" in seed_lines("image", result)[0]


def test_reproduce_refuses_a_run_made_by_another_preset_before_any_work(tmp_path, monkeypatch, capsys):
    """A finished SOPHON run is reused by reproduce.py; one made with other loop flags than the preset now gives
    would put the old model into the new table. It is refused with one line, before pre-training, and kept."""
    from sophon import reproduce
    from sophon.experiment import args_to_json
    from sophon.settings import arch_defaults, configs_of, image

    opts = reproduce.parser().parse_args(["--setting", "image", "--root", str(tmp_path), "--protect_seeds", "2"])
    runs = reproduce.plan("image", opts)  # no folder yet: nothing to refuse
    assert [(loss, seed) for loss, seed, *_ in runs] == [("ice", 0), ("ice", 1), ("klu", 0), ("klu", 1)]
    # each loss's run is made and checked with that loss's preset (image.LOSS_PRESETS: KLU's own FTS and NTR steps)
    preset = {loss: arch_defaults(image, "cnn", configs_of(image), loss) for loss in ("ice", "klu")}
    assert (preset["ice"]["alpha"], preset["ice"]["beta"]) != (preset["klu"]["alpha"], preset["klu"]["beta"])
    for field in ("alpha", "beta"):
        assert [getattr(args, field) for *_, args, _ in runs] == [preset["ice"][field]] * 2 + [preset["klu"][field]] * 2
    assert [args.loss for *_, args, _ in runs] == ["ice", "ice", "klu", "klu"]
    loss, seed, _, run_dir, *_ = runs[3]
    argv = ["--arch", "cnn", "--seed", str(seed), "--root", str(tmp_path)]
    other, _ = reproduce.parse_setting_args("t", argv, kind=("text", "image"), default_arch="cnn")  # no loss's preset
    args, module = reproduce.parse_setting_args("t", argv, kind=("text", "image"), default_arch="cnn", loss=loss)
    run_dir.mkdir(parents=True)
    (run_dir / "args.json").write_text(args_to_json(other, image))
    first = next(f for f in ("alpha", "beta") if getattr(other, f) != preset["klu"][f])  # LoopConfig's order
    assert reproduce.stale_field(args, module, run_dir) == f"{first}: {getattr(other, first)} -> {preset['klu'][first]}"
    (run_dir / "args.json").write_text(args_to_json(args, image))
    assert reproduce.stale_field(args, module, run_dir) is None  # same flags; root, device may differ
    saved = json.loads((run_dir / "args.json").read_text())
    saved["device"], saved["adaptation_steps"] = "cuda", 10
    (run_dir / "args.json").write_text(json.dumps(saved))
    assert reproduce.stale_field(args, module, run_dir) == f"adaptation_steps: 10 -> {args.adaptation_steps}"

    def no_work(*_):
        raise AssertionError("pre-trained before refusing")

    monkeypatch.setattr(reproduce, "_pretrain", no_work)
    with pytest.raises(SystemExit) as exit_:
        reproduce.main(["--setting", "image", "--root", str(tmp_path), "--protect_seeds", "2"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "adaptation_steps: 10" in err and "klu-seed1" in err
    assert (run_dir / "args.json").exists()


def test_reproduce_runs_another_model_of_a_setting_in_its_own_folders(tmp_path, monkeypatch, capsys):
    """--arch puts another model of one setting (the smollm2-cut LM) through the same table, with its own preset,
    run folders and table name, so it never reuses or overwrites the embedded preset's runs; a name that is not a
    model of that setting, or --arch without one setting, is one line before any work."""
    from sophon import reproduce

    opts = reproduce.parser().parse_args(["--setting", "text", "--arch", "smollm2-cut", "--root", str(tmp_path)])
    runs = reproduce.plan("text", opts)
    assert [run_dir.relative_to(tmp_path).as_posix() for *_, run_dir, _, _ in runs] == [
        "reproduce/text-smollm2-cut/ice", "reproduce/text-smollm2-cut/klu"]
    default = reproduce.plan("text", reproduce.parser().parse_args(["--setting", "text", "--root", str(tmp_path)]))
    assert [run_dir.relative_to(tmp_path).as_posix() for *_, run_dir, _, _ in default] == [
        "reproduce/text/ice", "reproduce/text/klu"]
    for (*_, args, _), (*_, preset, _) in zip(runs, default):
        assert args.arch == "smollm2-cut" and preset.arch == "tiny-gpt2"
        assert (args.attackers, args.alpha, args.probe_weight) == ("sampled", 3.0, 0.1)  # smollm2-cut's preset
        assert preset.attackers == "fixed"

    def no_work(*_):
        raise AssertionError("work started before the flags were checked")

    monkeypatch.setattr(reproduce, "_pretrain", no_work)
    for argv, words in ((["--arch", "smollm2-cut"], "needs one --setting"),
                        (["--setting", "image", "--arch", "smollm2-cut"], "not one of the image models"),
                        (["--setting", "text", "--arch", "gpt-5"], "not one of the text models")):
        with pytest.raises(SystemExit) as exit_:
            reproduce.main(argv + ["--root", str(tmp_path)])
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and len(err.splitlines()) == 1 and words in err, (argv, err)


def test_summary_gives_every_table_of_a_setting_in_order(tmp_path):
    """summary.md has the preset's rows, then those of every other model of the setting (--arch), each labelled
    with its table name; the curves files beside them are not tables."""
    from sophon.reproduce import write_summary

    def table(accuracy, held):
        worst = {"held": held, "separating": 6, "attacks": 9, "attack": "adam:0.0003", "protection": 0.5 + held / 10,
                 "verdict": "held" if held > 3 else "not held"}
        return {"rows": [{"start": "normal", "original": {"perplexity": 100.0}},
                         {"start": "sophon-ice", "original": {"perplexity": accuracy}}],
                "worst": {"sophon-ice": worst}, "minutes": 1.0, "suite": "quick", "seeds": [0, 1, 2]}

    (tmp_path / "text-smollm2-cut.json").write_text(json.dumps(table(300.0, 6)))
    (tmp_path / "text.json").write_text(json.dumps(table(110.0, 1)))
    (tmp_path / "image.json").write_text(json.dumps(table(120.0, 4)))
    (tmp_path / "text-smollm2-cut_curves.json").write_text("[]")  # not a table
    rows = [line for line in write_summary(tmp_path).splitlines() if line.startswith("| text") or line.startswith("| image")]
    assert [row.split(" | ")[0] for row in rows] == ["| text", "| text-smollm2-cut", "| image"]
    assert "6 / 6 (of 9)" in rows[1] and "perplexity 300 vs normal 100" in rows[1]
    assert "1 / 6 (of 9)" in rows[0] and "perplexity 110 vs normal 100" in rows[0]
