"""Releasing a protected model (python -m sophon.export) and attacking it with Hugging Face's Trainer.

Each test builds a fake SOPHON run folder (a checkpoint written with sophon.checkpoint.save, args.json,
results.json) around a tiny model, instead of running SOPHON."""

import json
import math
from pathlib import Path

import pytest
import torch

from sophon import checkpoint, report
from sophon.attack import Attack
from sophon.experiment import judge
from sophon.export import main as export_main
from tests.text_fixtures import SENTENCES, save_small_gpt2

ATTACKS = {"sgd-momentum:0.05:bs=32:epochs=4": Attack("sgd-momentum", 0.05, 32, 4),
           "adam:0.0003:bs=32:epochs=4": Attack("adam", 3e-4, 32, 4)}
FINALS = {"normal": ([0.80, 0.82, 0.81], [0.80, 0.79, 0.81]),  # per attack, per seed
          "sophon": ([0.60, 0.61, 0.62], [0.54, 0.55, 0.56]),
          "scratch": ([0.55, 0.56, 0.54], [0.55, 0.55, 0.56])}


def fake_results() -> dict:
    curves = {start: {name: [[{"epoch": 0, "accuracy": 0.5}, {"epoch": 1, "accuracy": a}] for a in finals]
                      for name, finals in zip(ATTACKS, per_attack)} for start, per_attack in FINALS.items()}
    originals = {"normal": {"perplexity": 100.0}, "sophon": {"perplexity": 104.5}}
    return {**judge(curves, type("T", (), {"restricted_metric": "accuracy", "restricted_higher_is_better": True}),
                    ATTACKS, originals, "ice: tiny-gpt2 on RT"), "seeds": [0, 1, 2]}


def fake_run(folder: Path, model: dict, meta: dict, args: dict, results: dict | None = None) -> Path:
    """A run folder as protect_and_test leaves it, optimizer and generator state included."""
    tensors = {f"model.{k}": v for k, v in model.items()}
    tensors.update({"fts_opt.0.exp_avg": torch.ones(3), "ntr_opt.0.exp_avg_sq": torch.ones(3),
                    "generator_state": torch.Generator().get_state()})
    meta = {"loss": "ice", "iteration": 5, "status": "finished", "config": {"alpha": 1.0},
            "fts_opt": {"state": {}, "param_groups": []}, **meta}
    checkpoint.save(folder / "checkpoints" / "final", tensors, meta)
    (folder / "args.json").write_text(json.dumps(args))
    if results is not None:
        report.write_results(folder, "results", results)
    return folder


# ---- text ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A small GPT-2 whose body (wte included) SOPHON 'changed', while lm_head stays the original."""
    from sophon.models.causal_lm import CausalLMClassifier
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("text")
    normal = save_small_gpt2(root / "pretrained")
    wrapper = CausalLMClassifier(AutoModelForCausalLM.from_pretrained(normal), pool="mean").eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in wrapper.body.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    args = {"arch": "tiny-gpt2", "dataset": "RT", "original": "NEWS", "pretrained": str(normal), "pool": "mean",
            "max_len": 32, "command": "--arch tiny-gpt2 --total_loop 5"}
    meta = {"arch": "tiny-gpt2", "dataset": "RT", "original": "NEWS",
            "reference": {"original_perplexity": 123.25, "original_last_token_accuracy": 0.1}}
    run = fake_run(root / "run", wrapper.state_dict(), meta, args, fake_results())
    out = export_main([str(run), "--out", str(root / "release")])
    return root, normal, wrapper, run, out


def _batch(tokenizer):
    enc = tokenizer(SENTENCES[:4], padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_text_export_is_a_causal_lm_with_the_protected_body_and_the_original_head(text_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, normal, wrapper, _, out = text_run
    lm = AutoModelForCausalLM.from_pretrained(out).eval()
    original = AutoModelForCausalLM.from_pretrained(normal)
    assert lm.config.tie_word_embeddings is False
    assert torch.equal(lm.get_output_embeddings().weight, original.get_output_embeddings().weight)
    assert torch.equal(lm.base_model.wte.weight, wrapper.body.wte.weight)  # SOPHON's, not the original
    assert not torch.equal(lm.base_model.wte.weight, lm.get_output_embeddings().weight)
    ids, mask = _batch(AutoTokenizer.from_pretrained(out))
    with torch.no_grad():
        assert torch.equal(lm.base_model(input_ids=ids, attention_mask=mask).last_hidden_state,
                           wrapper.body(input_ids=ids, attention_mask=mask).last_hidden_state)
        assert torch.equal(lm(input_ids=ids, attention_mask=mask).logits, wrapper.lm_logits(ids, mask))


def test_text_export_is_a_sequence_classifier_start_with_a_fresh_head(text_run):
    from transformers import AutoModelForSequenceClassification

    _, _, wrapper, _, out = text_run
    clf = AutoModelForSequenceClassification.from_pretrained(out, num_labels=2)
    body = clf.base_model.state_dict()
    assert body.keys() == wrapper.body.state_dict().keys()
    assert all(torch.equal(body[k], v) for k, v in wrapper.body.state_dict().items())
    assert clf.score.weight.shape == (2, wrapper.body.config.n_embd)


def test_release_holds_weights_only(text_run):
    from safetensors import safe_open

    _, normal, _, _, out = text_run
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not [k for k in keys if "opt" in k or "generator" in k or k.startswith(("model.", "head."))]
    assert "config.json" in names and "README.md" in names
    for name in ("tokenizer.json", "tokenizer_config.json"):  # copied from the pre-trained folder, unchanged
        assert (out / name).read_bytes() == (normal / name).read_bytes()


def test_model_card_holds_the_run_verdicts_and_commands(text_run):
    _, _, _, run, out = text_run
    card = (out / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "library_name: transformers" in front and "- sophon" in front and "- non-fine-tunable" in front
    assert "license: mit" in front
    results = json.loads((run / "results.json").read_text())
    for v in results["verdicts"]:
        line = next(l for l in body.splitlines() if f"`{v['attack']}`" in l and l.startswith("|"))
        assert line.rstrip(" |").endswith(v["verdict"]) and f"| {v['protection']:.2f} [" in line
    verdicts = {v["attack"]: v["verdict"] for v in results["verdicts"]}
    assert verdicts == {"sgd-momentum:0.05:bs=32:epochs=4": "partial", "adam:0.0003:bs=32:epochs=4": "held"}
    worst = results["worst"]["sophon"]
    assert f"**Worst case** (sophon): `{worst['attack']}`" in body and "held 1 of 2" in body
    assert "| 81.0 ± 1.0 | 61.0 ± 1.0 | 55.0 ± 1.0 |" in body  # normal, SOPHON, scratch, first attack
    assert "| perplexity | 123.2 | 104.5 |" in body  # before SOPHON (sidecar), after (results.json)
    assert "python classification/inverse_loss.py --arch tiny-gpt2 --total_loop 5" in body
    assert f"python -m sophon.export {run} --out" in body


def test_unevaluated_run_says_so_and_a_release_is_not_overwritten(text_run, tmp_path, capsys):
    _, normal, wrapper, _, _ = text_run
    run = fake_run(tmp_path / "run", wrapper.state_dict(), {"arch": "tiny-gpt2", "dataset": "RT", "original": "NEWS"},
                   {"arch": "tiny-gpt2", "pretrained": str(normal)})
    out = export_main([str(run / "checkpoints" / "final.safetensors"), "--out", str(tmp_path / "release")])
    assert "**Not evaluated**" in (out / "README.md").read_text()
    assert "not empty" in _error(capsys, [str(run), "--out", str(out)])


def _error(capsys, argv) -> str:
    capsys.readouterr()  # drop what earlier calls printed
    with pytest.raises(SystemExit) as exit_info:
        export_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_unfinished_run_is_refused_unless_forced(text_run, tmp_path, capsys):
    _, normal, wrapper, _, _ = text_run
    run = fake_run(tmp_path / "run", wrapper.state_dict(),
                   {"arch": "tiny-gpt2", "dataset": "RT", "original": "NEWS", "status": "guard_stopped"},
                   {"arch": "tiny-gpt2", "pretrained": str(normal)})
    err = _error(capsys, [str(run), "--out", str(tmp_path / "release")])
    assert "'guard_stopped'" in err and "--force" in err
    assert not (tmp_path / "release").exists()
    out = export_main([str(run), "--out", str(tmp_path / "release"), "--force"])
    assert "status `guard_stopped`, not `finished`" in (out / "README.md").read_text()


def test_missing_or_corrupt_checkpoint_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "checkpoints/final.safetensors" in _error(capsys, [str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    bad = tmp_path / "run" / "checkpoints" / "final.safetensors"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": tru")
    assert "corrupt or truncated" in _error(capsys, [str(bad), "--out", str(tmp_path / "o")])
    assert "no checkpoint at" in _error(capsys, [str(tmp_path / "nothing.safetensors"), "--out", str(tmp_path / "o")])


# ---- diffusion ---------------------------------------------------------------------------------
def test_diffusion_export_loads_as_a_ddpm_pipeline(tmp_path):
    from diffusers import DDIMPipeline, DDPMPipeline

    from sophon.models.unet import unet

    torch.manual_seed(0)
    model = unet("unet-tiny", 1, 16).eval()
    run = fake_run(tmp_path / "run", model.state_dict(),
                   {"arch": "unet-tiny", "dataset": "LFW", "original": "FASHION", "loss": "dos",
                    "reference": {"original_mse": 0.05}}, {"arch": "unet-tiny", "image_size": 16})
    out = export_main([str(run), "--out", str(tmp_path / "release")])
    pipe = DDPMPipeline.from_pretrained(out)
    assert pipe.scheduler.config.num_train_timesteps == 1000 and pipe.scheduler.config.beta_schedule == "linear"
    assert pipe.unet.config.sample_size == 16 and pipe.unet.config.in_channels == 1
    x, t = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 500])
    with torch.no_grad():
        assert torch.equal(pipe.unet.eval()(x, t).sample, model(x, t).sample)
    image = pipe(batch_size=1, num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 16, 16, 1) and 0 <= image.min() <= image.max() <= 1
    ddim = DDIMPipeline.from_pretrained(out)
    assert all(torch.equal(a, b) for a, b in zip(ddim.unet.state_dict().values(), model.state_dict().values()))
    card = (out / "README.md").read_text()
    assert "library_name: diffusers" in card and "**Not evaluated**" in card and "| mse | 0.05 |" in card


# ---- images ------------------------------------------------------------------------------------
def test_image_export_two_line_load_reproduces_the_body(tmp_path):
    from safetensors.torch import load_file

    from sophon.models.vision import build_classifier

    torch.manual_seed(0)
    model = build_classifier("cnn", 10, cnn_width=8)
    model.train()
    model(torch.randn(16, 3, 28, 28))  # move the BatchNorm statistics off their defaults
    model.eval()
    run = fake_run(tmp_path / "run", model.state_dict(), {"arch": "cnn", "dataset": "DIGITS", "original": "FASHION"},
                   {"arch": "cnn", "img_size": 28, "cnn_width": None})
    out = export_main([str(run), "--out", str(tmp_path / "release")])
    config = json.loads((out / "config.json").read_text())
    assert (config["arch"], config["cnn_width"], config["img_size"]) == ("cnn", 8, 28)
    assert config["mean"] == [0.5, 0.5, 0.5] and config["num_features"] == 128
    # The documented two lines:
    released = build_classifier(config["arch"], num_classes=10, cnn_width=config["cnn_width"])
    missing, unexpected = released.load_state_dict(load_file(str(out / "model.safetensors")), strict=False)
    assert sorted(missing) == ["head.bias", "head.weight"] and not unexpected
    x = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(released.eval().body(x), model.body(x))
    assert "library_name: pytorch" in (out / "README.md").read_text()


# ---- the Trainer attack ------------------------------------------------------------------------
def test_trainer_attack_runs_and_writes_the_project_table(text_run, tmp_path):
    from sophon.hf_finetune import attack_with_trainer, classifier, encode, load_tokenizer, trainer_curve
    from sophon.models.causal_lm import next_token_nll
    from sophon.data.text import load_text
    from sophon.settings.text import encode as project_encode

    _, normal, wrapper, _, release = text_run
    tokenizer = load_tokenizer(release)
    data = load_text("RT", "train", None, 8)
    train = encode(tokenizer, data.texts, data.labels, 32)
    curve = trainer_curve("sophon", release, tokenizer, train, train, Attack("adamw", 1e-3, 8, 1), seed=3)
    assert [r["epoch"] for r in curve] == [0, 1]
    # Epoch 0 is the fresh head of seed 3 on the untouched release, evaluated the Trainer's way.
    clf = classifier("sophon", release, tokenizer, 3).eval()
    batch = tokenizer.pad({k: [r[k] for r in train] for k in ("input_ids", "attention_mask")}, return_tensors="pt")
    with torch.no_grad():
        predicted = clf(**batch).logits.argmax(-1)
    assert curve[0]["accuracy"] == pytest.approx((predicted == torch.tensor(data.labels)).float().mean().item())

    result = attack_with_trainer({"normal": normal, "sophon": release}, tmp_path, [1e-3], bs=8, epochs=1,
                                 seeds=[0, 1], dataset="RT", original="NEWS", train_size=8, test_size=16, max_len=32)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["start"] for r in saved["rows"]] == ["normal", "sophon", "scratch"]
    assert saved["rows"][0]["spec"] == "adamw:0.001:bs=8:epochs=1" and len(saved["rows"][0]["final"]) == 2
    assert len(saved["verdicts"]) == 1 and "sophon" in saved["worst"]
    assert (tmp_path / "results.md").exists() and (tmp_path / "curves.png").stat().st_size > 5000
    # The release's perplexity is the protected wrapper's, measured the project's way.
    texts = load_text("NEWS", "test", None, 16).texts
    ids, mask = project_encode(tokenizer, texts, 32)
    with torch.no_grad():
        expected = math.exp(next_token_nll(wrapper, ids, mask).item())
    assert result["rows"][1]["original"]["perplexity"] == pytest.approx(expected, rel=1e-4)
