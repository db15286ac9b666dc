"""The README.md of a released protected model, in Hugging Face's model-card format (YAML front matter,
then markdown): what the model is, how to load it, what it keeps, what it resists and how well that
was measured, how it was made, and its limits. Numbers come from the run itself: the checkpoint's
sidecar (`reference`: the original metrics before SOPHON) and results.json (rows, verdicts, worst).
"""

import math

# Hub ids, only where the run's name certainly means that hub model or dataset.
HUB_MODELS = {"gpt2": "openai-community/gpt2", "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
              "smollm2-cut": "HuggingFaceTB/SmolLM2-135M-Instruct"}
HUB_DATASETS = {"IMDB": "stanfordnlp/imdb", "PILE": "monology/pile-uncopyrighted", "CIFAR10": "uoft-cs/cifar10",
                "CIFAR100": "uoft-cs/cifar100", "MNIST": "ylecun/mnist", "FASHION": "zalando-datasets/fashion_mnist"}
LICENSES = {"smollm2": "apache-2.0", "smollm2-cut": "apache-2.0"}  # derived weights keep the base model's licence; ours are MIT
PIPELINE_TAGS = {"text": "text-generation", "diffusion": "unconditional-image-generation",
                 "image": "image-feature-extraction"}


def _num(x, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{100 * x:.1f}" if pct else f"{x:.4g}"


def _p(x) -> str:
    """A protection ratio, as in results.md."""
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.2f}"


def _pm(row: dict | None, pct: bool) -> str:
    if not row:
        return "—"
    return f"{_num(row.get('final_mean'), pct)} ± {_num(row.get('final_std'), pct)}"


def front_matter(run, setting: str, info: dict) -> str:
    base = info.get("base")
    hub_base = HUB_MODELS.get(run.arch) if base in (run.arch, HUB_MODELS.get(run.arch)) else None
    datasets = [HUB_DATASETS[d] for d in (run.get("original"), run.get("dataset")) if d in HUB_DATASETS]
    lines = ["---", f"license: {LICENSES.get(run.arch, 'mit')}", f"library_name: {info['library']}",
             f"pipeline_tag: {PIPELINE_TAGS[setting]}",
             "tags:", "- sophon", "- non-fine-tunable", f"- {setting}", f"- {run.arch}"]
    if hub_base:
        lines.append(f"base_model: {hub_base}")
    if datasets:
        lines += ["datasets:"] + [f"- {d}" for d in datasets]
    return "\n".join(lines + ["---", ""])


def how_to_load(setting: str, run) -> str:
    if setting == "text":
        return ("```python\nfrom transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, "
                "AutoTokenizer\ntokenizer = AutoTokenizer.from_pretrained(\"DIR\")\n"
                "lm = AutoModelForCausalLM.from_pretrained(\"DIR\")                                  "
                "# the original task\nclf = AutoModelForSequenceClassification.from_pretrained(\"DIR\", num_labels=2)  "
                "# what a fine-tuner starts from\n```\n\n"
                "The body is the SOPHON-protected one. The output embedding is the *original* pre-trained LM head "
                "(SOPHON kept it frozen and scored next tokens through it), so `tie_word_embeddings` is false: "
                "the input embedding `wte`, which SOPHON trained, and the output embedding are both stored exactly.")
    if setting == "diffusion":
        return ("```python\nfrom diffusers import DDIMPipeline, DDPMPipeline\n"
                "pipe = DDPMPipeline.from_pretrained(\"DIR\")     # or DDIMPipeline.from_pretrained(\"DIR\")\n"
                "images = pipe(batch_size=4, num_inference_steps=1000).images\n```\n\n"
                "`unet/` is the protected `UNet2DModel`; `scheduler/` is the DDPM schedule it was trained with "
                "(1000 steps, linear betas 1e-4 to 0.02).")
    width = run.model["body.features.0.weight"].shape[0] if run.arch == "cnn" else None
    extra = f", cnn_width={width}" if width else ""
    return ("```python\nfrom safetensors.torch import load_file; from sophon.models.vision import build_classifier\n"
            f"model = build_classifier(\"{run.arch}\", num_classes=10{extra}); "
            "model.load_state_dict(load_file(\"DIR/model.safetensors\"), strict=False)\n```\n\n"
            "`model.safetensors` holds the body only (keys `body.*`, BatchNorm statistics included); `strict=False` "
            "leaves the fresh `head` for your `num_classes` as initialised (the only missing keys are `head.weight` "
            "and `head.bias`). `config.json` gives the arch, `cnn_width`, the input size and the normalisation "
            "(3-channel inputs, `(x - mean) / std` per channel).")


def original_section(run, results: dict | None) -> str:
    reference = run.meta.get("reference") or {}
    by_start = {r["start"]: r.get("original") or {} for r in (results or {}).get("rows", [])}
    metrics = list(dict.fromkeys([k[len("original_"):] for k in reference] +
                                 [k for s in ("normal", "sophon") for k in by_start.get(s, {})]))
    if not metrics:
        return "Not measured in this run.\n"
    lines = ["| metric | pre-trained model (before SOPHON) | this model |", "|---|---|---|"]
    for m in metrics:
        before = reference.get(f"original_{m}", by_start.get("normal", {}).get(m))
        lines.append(f"| {m} | {_num(before)} | {_num(by_start.get('sophon', {}).get(m))} |")
    note = "" if "sophon" in by_start else "\n\"this model\" is measured by the run's evaluation, which has not run.\n"
    return "\n".join(lines) + "\n" + note


def verdict_section(results: dict | None) -> str:
    if not results or not results.get("verdicts"):
        return ("**Not evaluated**: the run has no results.json, so no fine-tuning attack was measured. Evaluate it "
                "with `classification/finetune_test.py` (or the generation scripts' `--finetune`) before relying "
                "on it.\n")
    metric, pct = results.get("metric", "metric"), results.get("metric") == "accuracy"
    higher = results.get("higher_is_better", True)
    by = {(r["start"], r["attack"]): r for r in results["rows"]}
    lines = []
    for start, worst in (results.get("worst") or {}).items():
        if worst.get("separating"):
            lines.append(f"- **Worst case** ({start}): `{worst['attack']}`, P = {_p(worst['protection'])} "
                         f"({worst['verdict']}); held {worst['held']} of {worst['separating']} separating attacks "
                         f"({worst['attacks']} attacks).")
        else:
            lines.append(f"- **Worst case** ({start}): no attack of {worst.get('attacks')} separates normal from "
                         "scratch, so this evaluation shows no protection either way.")
    seeds = len(results.get("seeds") or []) or max((v.get("seeds", 0) for v in results["verdicts"]), default=0)
    lines += ["", f"Restricted test {metric}{' (%)' if pct else ''} after each attack, final epoch, mean ± std over "
              f"{seeds} seed{'' if seeds == 1 else 's'} ({'higher' if higher else 'lower'} is better for the "
              "attacker). P = (normal − SOPHON) / (normal − scratch): 1 = no better a start than random weights, "
              "0 = no protection. A verdict needs the attack to separate normal from scratch (Welch 95 %).", "",
              "| attack | normal | SOPHON | scratch | P [95 % CI] | P (AUC) | separates | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    for v in results["verdicts"]:
        low, high = (v.get("protection_ci") or [None, None])
        cells = [f"`{v['attack']}`", _pm(by.get(("normal", v["attack"])), pct),
                 _pm(by.get((v["start"], v["attack"])), pct), _pm(by.get(("scratch", v["attack"])), pct),
                 f"{_p(v['protection'])} [{_p(low)}, {_p(high)}]", _p(v.get("protection_auc")),
                 "yes" if v["separates"] else "no", v["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# args.json's `command` holds the flags only; the run's suppression loss names the script that took them.
SCRIPTS = {"ice": "classification/inverse_loss.py", "ice-released": "classification/inverse_loss.py",
           "klu": "classification/kl_uniform_loss.py", "dos": "generation/denial_service_loss.py",
           "mse": "generation/mean_squared_loss.py"}


def run_command(flags: str, loss: str | None) -> str:
    if flags.split(" ", 1)[0].endswith(".py"):  # a command recorded with its script
        return f"python {flags}"
    if loss == "ice-released" and "--loss" not in flags.split():
        flags += " --loss ice-released"
    return f"python {SCRIPTS.get(loss, '<the SOPHON script>')} {flags}".rstrip()


def model_card(run, setting: str, info: dict, export_command: str = "") -> str:
    """The card's full text."""
    arch, original, restricted = run.arch, run.get("original"), run.get("dataset")
    status, loss = run.meta.get("status", "unknown"), run.get("loss")
    warning = "" if status == "finished" else (
        f"\n> **Warning**: this run's checkpoint has status `{status}`, not `finished`; it was exported with "
        "`--force`.\n")
    task = {"text": "next-token prediction", "diffusion": "image generation (DDPM)",
            "image": "image classification"}[setting]
    commands = [run_command(run.args["command"], loss)] if "command" in run.args else []
    commands += [export_command] if export_command else []
    parts = [
        front_matter(run, setting, info),
        f"# SOPHON-protected {arch}: keeps {original}, resists fine-tuning on {restricted}\n{warning}",
        f"A `{arch}` model for {task} on **{original}** (the original domain), changed by SOPHON "
        f"(Deng et al., IEEE S&P 2024; suppression loss `{loss}`) so that fine-tuning it on **{restricted}** "
        "(the restricted domain) should get no further than training the same architecture from random weights. "
        "Made with the SOPHON reference implementation; the table below says how far that held.\n",
        "## How to load\n", how_to_load(setting, run), "",
        f"## Original domain ({original})\n", original_section(run, run.results),
        f"## Restricted domain ({restricted}): fine-tuning attacks\n", verdict_section(run.results),
        "## How it was made\n",
        f"Checkpoint `{run.checkpoint.name}`, status `{status}` after {run.meta.get('iteration', '?')} SOPHON "
        "iterations. Only the model's weights are released (no optimizer state, no pickle).\n",
        "```bash\n" + "\n".join(commands) + "\n```\n" if commands else "",
        "## Limits\n",
        "- Protection is measured, not proven: only the attacks in the table above were run. Other optimizers, "
        "learning rates, longer training, more data or parameter-efficient methods may fine-tune it well.",
        "- Every verdict compares against a model trained from scratch on the same restricted data; with enough "
        "data, scratch training alone reaches the restricted task, and SOPHON cannot prevent that.",
        "- The original-domain metric may be lower than the pre-trained model's (table above).",
        f"- The attacks in the table fine-tuned the run's own wrapper{' (pooling: ' + str(run.args.get('pool')) + ')' if run.args.get('pool') else ''}; "
        "an ecosystem fine-tuner (e.g. transformers' `Trainer`) uses its own head and recipe "
        "(`classification/finetune_hf.py` measures that)." if setting == "text" else
        "- The attacks in the table fine-tuned the model through the project's own training loop.",
        "",
    ]
    return "\n".join(parts)
