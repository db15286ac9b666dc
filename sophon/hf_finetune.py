"""The ecosystem's own attacker: Hugging Face `Trainer` fine-tunes a released causal LM for sentence
classification, as anyone who downloaded the model would.

`AutoModelForSequenceClassification` gives the LM a fresh `score` head on the hidden state of the last
non-pad token (GPT2ForSequenceClassification; not the project's mean pooling: this is the ecosystem's
attacker, not ours). `TrainingArguments` keeps its defaults — AdamW (weight decay 0), linear decay to 0,
no warm-up — except lr, batch size and epochs. The restricted test accuracy is evaluated before training
(epoch 0) and after every epoch, so the curves, verdicts and files are the project's own
(`sophon.experiment.judge`, `sophon.report`).

Starts: normal (the pre-trained folder), sophon (a `python -m sophon.export` folder) and scratch (the
normal model's config, randomly initialised, a new draw per seed).
"""

import json
import math
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from sophon import report
from sophon.attack import Attack
from sophon.data.text import load_text
from sophon.experiment import judge

STARTS = ("normal", "sophon", "scratch")
TASK = SimpleNamespace(restricted_metric="accuracy", restricted_higher_is_better=True)  # all that judge reads


def load_tokenizer(folder: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:  # GPT-2 has none; every Trainer recipe pads with end-of-text
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def encode(tokenizer, texts: list[str], labels: list[int], max_len: int) -> list[dict]:
    """Plain tokenizer output, as a Trainer user would feed it (padding is the collator's job)."""
    enc = tokenizer(texts, truncation=True, max_length=max_len)
    return [{"input_ids": ids, "attention_mask": mask, "labels": int(y)}
            for ids, mask, y in zip(enc["input_ids"], enc["attention_mask"], labels)]


def classifier(start: str, folder: Path, tokenizer, seed: int):
    """The start's model with a fresh 2-class head drawn from `seed` (scratch: the whole model)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, set_seed

    set_seed(seed)
    if start == "scratch":
        config = AutoConfig.from_pretrained(str(folder), num_labels=2)
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=2)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last token that is not padding
    return model


def _accuracy(prediction) -> dict:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"accuracy": float((logits.argmax(-1) == prediction.label_ids).mean())}


def trainer_curve(start: str, folder: Path, tokenizer, train: list[dict], test: list[dict], attack: Attack,
                  seed: int) -> list[dict]:
    """One seeded Trainer fine-tune: [{"epoch": e, "accuracy": a}] for e = 0..epochs.

    The global RNG is restored afterwards (Trainer reseeds it), so one curve does not shape the next."""
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    curve = []

    class Record(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            curve.append({"epoch": round(state.epoch or 0), "accuracy": metrics["eval_accuracy"]})

    with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory() as work:
        model = classifier(start, folder, tokenizer, seed)
        args = TrainingArguments(output_dir=work, learning_rate=attack.lr, per_device_train_batch_size=attack.bs,
                                 per_device_eval_batch_size=256, num_train_epochs=attack.epochs,
                                 eval_strategy="epoch", save_strategy="no", logging_strategy="no", report_to="none",
                                 seed=seed, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=test,
                          data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=_accuracy,
                          callbacks=[Record()])
        trainer.remove_callback(PrinterCallback)  # one line per curve is printed by the caller instead
        trainer.evaluate()  # epoch 0: the fresh head on the untouched start
        trainer.train()
    return curve


@torch.no_grad()
def perplexity(folder: Path, tokenizer, texts: list[str], max_len: int, bs: int = 64) -> float:
    """Next-token perplexity of the released causal LM over every real token, each text closed by
    end-of-text and cut to max_len tokens, as the project's text setting measures it."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    enc = tokenizer([t + tokenizer.eos_token for t in texts], max_length=max_len, truncation=True,
                    padding="max_length", return_tensors="pt")
    ids_all, mask_all = enc["input_ids"], enc["attention_mask"]
    nll, tokens = 0.0, 0
    for i in range(0, len(ids_all), bs):
        ids, mask = ids_all[i:i + bs], mask_all[i:i + bs]
        logits = lm(input_ids=ids, attention_mask=mask).logits
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        nll += F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=-100, reduction="sum").item()
        tokens += int(mask[:, 1:].sum())
    return math.exp(nll / max(1, tokens))


def attack_with_trainer(folders: dict[str, Path], out_dir: Path, lrs: list[float], bs: int, epochs: int,
                        seeds: list[int], dataset: str, original: str, train_size: int | None, test_size: int | None,
                        max_len: int, data_root: str | None = None) -> dict:
    """Every start x lr x seed; judge; write results.{json,md,csv}, results_curves.json and curves.png.

    `folders` maps normal/sophon to save_pretrained folders; scratch takes normal's config and tokenizer."""
    tokenizer = load_tokenizer(folders["normal"])  # the scratch model and both data sets use it
    starts = {**folders, "scratch": folders["normal"]}
    # The export copies the pre-trained tokenizer, so one encoding serves every start.
    r_train, r_test = load_text(dataset, "train", data_root, train_size), load_text(dataset, "test", data_root, test_size)
    train = encode(tokenizer, r_train.texts, r_train.labels, max_len)
    test = encode(tokenizer, r_test.texts, r_test.labels, max_len)
    originals_text = load_text(original, "test", data_root, test_size).texts
    originals = {s: {"perplexity": perplexity(f, load_tokenizer(f), originals_text, max_len)}
                 for s, f in folders.items()}
    attacks = {f"trainer-adamw:{lr:g}:bs={bs}:epochs={epochs}:linear": Attack("adamw", lr, bs, epochs) for lr in lrs}
    curves, started = {s: {} for s in starts}, time.perf_counter()
    for name, attack in attacks.items():
        for seed in seeds:
            for start, folder in starts.items():
                tok = tokenizer if start == "scratch" else load_tokenizer(folder)
                curve = trainer_curve(start, Path(folder), tok, train, test, attack, seed)
                curves[start].setdefault(name, []).append(curve)
                print(f"{start:8s} {name} seed {seed}: accuracy {curve[-1]['accuracy']:.4f} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
    title = f"HF Trainer attack: {dataset} ({len(train)} train / {len(test)} test)"
    result = judge(curves, TASK, attacks, originals, title)
    result.update(seeds=list(seeds), starts={s: str(f) for s, f in starts.items()},
                  seconds=time.perf_counter() - started)
    text = report.write_results(out_dir, "results", result)
    (out_dir / "results_curves.json").write_text(json.dumps(curves))
    report.plot_panels(curves, "accuracy", out_dir / "curves.png", title)
    print(text, flush=True)
    return result
