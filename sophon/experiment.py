"""What the scripts run: a SOPHON run followed by the three-row fine-tuning table (DESIGN §4).

protect_and_test(args, loss)  make the normal model non-fine-tunable, then attack normal / SOPHON /
                              scratch with every --attacks entry and write table + curves + summary.
finetune_test(args, start)    only the attacks, from one starting point (normal, sophon or scratch).
"""

import hashlib
import json
import shutil
import time
from pathlib import Path

import torch

from sophon import checkpoint, report
from sophon.attack import ATTACK_OPTIMIZERS, Attack, finetune
from sophon.cli import args_to_json, device_of
from sophon.protect import ProtectConfig, protect
from sophon.simulate import Environment, sample_environments

STARTS = ("normal", "sophon", "scratch")


def parse_attacks(args) -> list[Attack]:
    attacks = []
    for item in str(args.attacks).split(","):
        name, _, lr = item.strip().partition(":")
        if name not in ATTACK_OPTIMIZERS:
            raise ValueError(f"unknown attack {name!r} in --attacks; choose from {', '.join(ATTACK_OPTIMIZERS)}")
        attacks.append(Attack(name, float(lr) if lr else args.finetune_lr, args.finetune_bs,
                              args.truly_finetune_epochs))
    return attacks


def protect_config(args) -> ProtectConfig:
    envs = (sample_environments(args.envs, args.bs, args.seed) if args.envs
            else [Environment("sgd", args.fast_lr, args.bs)])
    return ProtectConfig(alpha=args.alpha, beta=args.beta, lr=args.lr, bs=args.bs, ml_loop=args.ml_loop,
                         nl_loop=args.nl_loop, total_loop=args.total_loop, adaptation_steps=args.adaptation_steps,
                         test_iterval=args.test_iterval, finetune_epochs=args.finetune_epochs,
                         query_fraction=args.query_fraction, envs=envs, guard=args.guard,
                         guard_action=args.guard_action, seed=args.seed)


def new_run_dir(args, loss: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(args.root) / loss / f"{args.arch}_{args.dataset}" / stamp
    path, n = base, 1
    while path.exists():  # two runs started within the same second
        n += 1
        path = base.with_name(f"{stamp}-{n}")
    path.mkdir(parents=True)
    return path


def _fingerprint(model) -> str:
    """Identifies a model's weights, so cached baseline curves are reused only for the same model."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(f"{tensor.double().sum().item():.6e}{tensor.double().abs().sum().item():.6e}".encode())
    return h.hexdigest()[:16]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


def attack_curves(model, task, attacks: list[Attack], seed: int, cache_dir: Path | None = None,
                  artifacts=None, start: str = "", out_dir: Path | None = None) -> dict:
    """{attack label: curve}; with cache_dir, curves of identical (weights, task, attack) are reused.

    `artifacts(learner, name, folder) -> [paths]` (a setting's `save_finetuned`) writes files about each
    fine-tuned learner (sample grids) into `out_dir`, named from `start` and the attack; cached with the curve.
    """
    curves = {}
    for attack in attacks:
        name = _slug(f"{start}_{attack.label}")
        key = None
        if cache_dir is not None:
            blob = json.dumps([_fingerprint(model), getattr(task, "cache_key", ""), attack.to_dict(), seed])
            key = cache_dir / (hashlib.sha256(blob.encode()).hexdigest()[:20] + ".json")
            cached_files = sorted(cache_dir.glob(key.stem + ".file.*"))
            if key.exists() and (artifacts is None or cached_files):
                curves[attack.label] = json.loads(key.read_text())
                for f in cached_files if artifacts is not None else []:
                    shutil.copy(f, out_dir / f.name.split(".file.", 1)[1])
                continue
        written = []
        after = (lambda learner: written.extend(artifacts(learner, name, out_dir))) if artifacts else None
        curve = finetune(model, task, attack, seed=seed, after=after)
        curves[attack.label] = curve
        if key is not None:
            key.parent.mkdir(parents=True, exist_ok=True)
            key.write_text(json.dumps(curve))
            for f in written:
                shutil.copy(f, cache_dir / f"{key.stem}.file.{Path(f).name}")
    return curves


def results_table(task, curves: dict[str, dict], originals: dict[str, dict]) -> list[dict]:
    metric = task.restricted_metric
    rows = []
    for start, by_attack in curves.items():
        for label, curve in by_attack.items():
            best = (max if task.restricted_higher_is_better else min)(r[metric] for r in curve[1:] or curve)
            row = {"start": start, "attack": label, f"final {metric}": curve[-1][metric],
                   f"best {metric}": best, "epochs": curve[-1]["epoch"]}
            for k, v in originals.get(start, {}).items():
                row[f"original {k}"] = v
            rows.append(row)
    return rows


def write_results(run_dir: Path, task, curves: dict, originals: dict, title: str) -> str:
    rows = results_table(task, curves, originals)
    text = report.write_table(rows, run_dir / "results")
    flat = {f"{start} | {label}": c for start, by in curves.items() for label, c in by.items()}
    report.plot_curves(flat, task.restricted_metric, run_dir / "curves.png", title)
    (run_dir / "curves.json").write_text(json.dumps(curves, indent=1))
    return text


def protect_and_test(args, loss: str, setting) -> Path:
    """SOPHON with `loss`, then the three-row table. Returns the run folder."""
    args.device = str(device_of(args))
    torch.manual_seed(args.seed)
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "checkpoints" / "last.safetensors").exists():
            raise FileNotFoundError(f"--resume {run_dir}: no checkpoints/last.safetensors there; "
                                    "pass the run folder printed when the run started")
    else:
        run_dir = new_run_dir(args, loss)
        (run_dir / "args.json").write_text(args_to_json(args))
    print(f"run folder: {run_dir}", flush=True)
    task = setting.build_task(args, loss)
    normal = setting.build_model(args, "normal")
    protected = setting.build_model(args, "normal")
    meta = {"arch": args.arch, "dataset": args.dataset, "original": args.original, "loss": loss}
    summary = protect(protected, task, protect_config(args), run_dir, meta, resume=bool(args.resume))
    print(f"SOPHON {summary['status']} after {summary['iteration']} iterations", flush=True)
    finish(args, task, setting, run_dir, {"normal": normal, "sophon": protected}, loss)
    return run_dir


def finish(args, task, setting, run_dir: Path, models: dict, title: str) -> str:
    """Attack every starting point in `models` (plus scratch) and write the table."""
    attacks = parse_attacks(args)
    artifacts = setting.save_finetuned(args) if hasattr(setting, "save_finetuned") else None
    cache = Path(args.root) / "baseline_cache"
    models = dict(models)
    models.setdefault("scratch", setting.build_model(args, "scratch"))
    curves, originals = {}, {}
    for start, model in models.items():
        model.eval()
        if start != "scratch":
            originals[start] = task.evaluate_original(model)
        # Only the baselines are cached: a SOPHON model is new each run.
        curves[start] = attack_curves(model, task, attacks, args.seed, cache if start != "sophon" else None,
                                      artifacts, start, run_dir)
    text = write_results(run_dir, task, curves, originals, f"{title}: {args.arch} on {args.dataset}")
    print(text, flush=True)
    print(f"table: {run_dir / 'results.md'}  curves: {run_dir / 'curves.png'}", flush=True)
    return text


def finetune_test(args, setting, start: str, path: str | None, loss: str = "ice") -> Path:
    """The fine-tuning test alone, from one starting point (`loss` only names the task's suppression loss)."""
    if start not in STARTS:
        raise ValueError(f"unknown --start {start!r}; choose one of {', '.join(STARTS)}")
    if start == "sophon" and not path:
        raise ValueError("--start sophon needs --path, the .safetensors checkpoint a SOPHON run wrote")
    args.device = str(device_of(args))
    task = setting.build_task(args, loss)
    model = setting.build_model(args, "scratch" if start == "scratch" else "normal")
    if start == "sophon":
        tensors, meta = checkpoint.load(path, device=args.device)
        state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")} or tensors
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise checkpoint.CheckpointError(
                f"{path} does not fit --arch {args.arch} (written for {meta.get('arch')}); "
                f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    run_dir = new_run_dir(args, "finetune_test")
    (run_dir / "args.json").write_text(args_to_json(args))
    attacks = parse_attacks(args)
    artifacts = setting.save_finetuned(args) if hasattr(setting, "save_finetuned") else None
    curves = {start: attack_curves(model, task, attacks, args.seed, artifacts=artifacts, start=start,
                                   out_dir=run_dir)}
    originals = {} if start == "scratch" else {start: task.evaluate_original(model)}
    print(write_results(run_dir, task, curves, originals, f"fine-tuning test from {start}"))
    return run_dir
