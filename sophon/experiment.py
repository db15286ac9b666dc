"""What the scripts run: a SOPHON run followed by the attack suite and its verdicts (DESIGN §4).

protect_and_test(args, loss, setting)   make the normal model non-fine-tunable, then attack normal /
                                        SOPHON / scratch with every attack and seed, judge, write.
finetune_test(args, setting, start, path)  only the attacks, from one starting point (all three with --tune).
compare_checkpoints(args, setting, named)  normal, several SOPHON checkpoints and scratch, each judged.
evaluate(...)                           the shared part: attacks x seeds x starts -> results files.
"""

import hashlib
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sophon import checkpoint, distributed, report
from sophon import verdict as V
from sophon.attack import Attack, check_fits, finetune
from sophon.config import LoopConfig, build, field_names
from sophon.device import device_of
from sophon.precision import Precision
from sophon.protect import ProtectConfig, protect
from sophon.rescale import require_pairs
from sophon.settings import configs_of
from sophon.simulate import AttackerDistribution, environments_from_specs, sample_environments

STARTS = ("normal", "sophon", "scratch")
CACHE = "attack_cache"


def attacker_distribution(args, setting_name: str) -> AttackerDistribution:
    """The simulated attackers of `--attackers sampled`: the suite's optimizers and lr range, batch
    sizes around --bs, linear probes (where there is a head) and benign-first episodes."""
    from sophon.suites import HAS_HEAD, USUAL_LR_BY_SETTING

    usual = USUAL_LR_BY_SETTING[setting_name]
    return AttackerDistribution(usual_lr={o: lr * args.suite_lr_scale for o, lr in usual.items()},
                                decades=1.0, batch_sizes=tuple(sorted({max(2, args.bs // 2), args.bs, 2 * args.bs})),
                                head_share=0.2 if HAS_HEAD[setting_name] else 0.0, benign_share=0.1,
                                benign_steps=args.adaptation_steps)


def protect_config(args, setting_name: str) -> ProtectConfig:
    """The loop as the flags describe it: LoopConfig's fields as resolved, the run's seed, and the
    simulated attackers those fields name."""
    loop = build(LoopConfig, vars(args))
    sampled = loop.attackers == "sampled"
    if loop.simulate:
        fixed = environments_from_specs(loop.simulate, loop.bs, loop.adaptation_steps)
    else:
        fixed = sample_environments(loop.envs, loop.bs, args.seed) if loop.envs and not sampled else None
    return ProtectConfig(**asdict(loop), seed=args.seed, environments=fixed,
                         distribution=attacker_distribution(args, setting_name) if sampled else None)


def args_to_json(args, setting) -> str:
    """args.json: the fields of the run's configs as resolved (sophon.config, the order of its classes),
    then what the script added (loss, command, the attacker distribution). --resume reads it back."""
    values = {k: v for k, v in vars(args).items() if k != "attack_list"}  # attacks/suite say it again
    ordered = {name: values.pop(name) for name in field_names(configs_of(setting)) if name in values}
    return json.dumps({**ordered, **values}, indent=2, default=str)


# Run folders are named as in the NLP fork's README (results/inverse_loss/..., results/kl_loss/...);
# the exact loss variant (ice or ice-released) is in args.json.
RUN_FOLDER = {"ice": "inverse_loss", "ice-released": "inverse_loss", "klu": "kl_loss",
              "dos": "denial_service_loss", "mse": "mean_squared_loss"}


def new_run_dir(args, kind: str) -> Path:
    """results/<folder of the loss, or `kind` itself>/<arch>_<dataset>/<time>/, made by the main process."""
    return Path(distributed.broadcast(str(_new_run_dir(args, kind)) if distributed.is_main() else None))


def write_args(run_dir: Path, args, setting) -> None:
    if distributed.is_main():
        (run_dir / "args.json").write_text(args_to_json(args, setting))


def _new_run_dir(args, kind: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(args.root) / RUN_FOLDER.get(kind, kind) / f"{args.arch}_{args.dataset}" / stamp
    path, n = base, 1
    while path.exists():  # two runs started within the same second
        n += 1
        path = base.with_name(f"{stamp}-{n}")
    path.mkdir(parents=True)
    return path


def fingerprint(model) -> str:
    """A hash of the weights' bytes: cached curves are reused only for exactly these weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


def cell_key(cache_dir: Path, weights: str, task, attack: Attack, seed: int) -> Path:
    """The cache file of one (weights, data, attack, seed) cell. On CPU the kernels' thread count is part of it:
    it sets their reduction order, and one cell moved by 0.7 points between 1 and 2 threads (README,
    Reproducibility), so a cell made with another count is run again, not reused."""
    cell = [weights, getattr(task, "cache_key", ""), attack.to_dict(), seed]
    if torch.device(getattr(task, "device", "cpu")).type == "cpu":
        cell.append(torch.get_num_threads())
    return cache_dir / (hashlib.sha256(json.dumps(cell).encode()).hexdigest()[:20] + ".json")


def attack_curve(model, task, attack: Attack, seed: int, cache_dir: Path | None, weights: str,
                 artifacts=None, name: str = "", out_dir: Path | None = None) -> list[dict]:
    """One seeded attack; with cache_dir, a curve of identical (weights, data, attack, seed) is reused.

    `artifacts(learner, name, folder) -> [paths]` (a setting's `save_finetuned`) writes files about the
    fine-tuned learner (sample grids) into `out_dir`; they are cached with the curve."""
    key = None
    if cache_dir is not None:
        key = cell_key(cache_dir, weights, task, attack, seed)
        cached_files = sorted(cache_dir.glob(key.stem + ".file.*"))
        if key.exists() and (artifacts is None or cached_files):
            for f in cached_files if artifacts is not None else []:
                shutil.copy(f, out_dir / f.name.split(".file.", 1)[1])
            return json.loads(key.read_text())
    written = []
    after = (lambda learner: written.extend(artifacts(learner, _slug(name), out_dir))) if artifacts else None
    curve = finetune(model, task, attack, seed=seed, progress=False, after=after)
    if key is not None:
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_text(json.dumps(curve))
        for f in written:
            shutil.copy(f, cache_dir / f"{key.stem}.file.{Path(f).name}")
    return curve


def run_attacks(models: dict, task, attacks: dict[str, Attack], seeds: list[int], cache_dir: Path | None = None,
                artifacts=None, out_dir: Path | None = None) -> dict:
    """curves[start][attack name] = [curve per seed]. Sample grids only for the first attack's first seed."""
    weights = {start: fingerprint(m) for start, m in models.items()}
    cells = [(a, s, start) for a in attacks for s in seeds for start in models]
    # Under several processes each runs its share of the cells (they are independent), then all are gathered.
    mine = distributed.shard(list(enumerate(cells)))
    done = []
    for i, (name, seed, start) in tqdm(mine, desc="attacks x seeds x starts", dynamic_ncols=True,
                                       disable=not distributed.is_main()):
        models[start].eval()
        hook = artifacts if i < len(models) else None
        done.append((i, attack_curve(models[start], task, attacks[name], seed, cache_dir, weights[start], hook,
                                     f"{start}_{name}", out_dir)))
    by_cell = dict(distributed.gather(done))
    curves = {start: {} for start in models}
    for i, (name, seed, start) in enumerate(cells):
        curves[start].setdefault(name, []).append(by_cell[i])
    return curves


def more_seeds(args, models: dict, task, attacks: dict[str, Attack], curves: dict) -> dict:
    """`--separation_seeds N` (> --seeds): `curves` with normal and scratch attacked by seeds --seed+--seeds ..
    --seed+N-1 as well, on every attack, and every other start by those seeds on the attacks that then
    separate normal from scratch. An attack whose runs sometimes diverge can pass Welch's test at 3 seeds
    by chance, and a verdict on it needs more than 3 seeds of the protected model too."""
    n = getattr(args, "separation_seeds", None) or args.seeds
    if n <= args.seeds or not {"normal", "scratch"} <= set(models):
        return curves
    extra, cache = [args.seed + i for i in range(args.seeds, n)], Path(args.root) / CACHE
    out = {start: dict(by) for start, by in curves.items()}

    def add(starts: list[str], chosen: dict[str, Attack]) -> None:
        more = run_attacks({s: models[s] for s in starts}, task, chosen, extra, cache)
        for s in starts:
            for a in chosen:
                out[s][a] = curves[s][a] + more[s][a]

    add(["normal", "scratch"], attacks)
    metric, higher = task.restricted_metric, task.restricted_higher_is_better
    final = lambda start, a: [V.curve_summary(c, metric, higher)["final"] for c in out[start][a]]
    separating = {a: at for a, at in attacks.items() if V.separates(final("normal", a), final("scratch", a), higher)}
    others = [s for s in models if s not in ("normal", "scratch")]
    if separating and others:
        add(others, separating)
    return out


def judge(curves: dict, task, attacks: dict[str, Attack], originals: dict, title: str) -> dict:
    """The results.json object: rows, verdicts and worst case for every protected start."""
    metric, higher = task.restricted_metric, task.restricted_higher_is_better
    rows = report.summarise_rows(curves, {n: a.label for n, a in attacks.items()}, metric, higher, originals)
    protected = [s for s in curves if s not in ("normal", "scratch")]
    verdicts, worst = [], {}
    if "normal" in curves and "scratch" in curves:
        for start in protected:
            mine = V.judge(rows, start, higher)
            verdicts += mine
            worst[start] = V.worst_case(mine)
    return {"title": title, "metric": metric, "higher_is_better": higher, "rows": rows, "verdicts": verdicts,
            "worst": worst}


def evaluate(args, task, setting, out_dir: Path, models: dict, attacks: dict[str, Attack], title: str,
             stem: str = "results", figure: str = "curves") -> dict:
    """Attack every start in `models` with every attack and seed; judge; write STEM.{json,md,csv},
    STEM_curves.json (every curve) and FIGURE.png."""
    seeds = [args.seed + i for i in range(args.seeds)]
    artifacts = setting.save_finetuned(args) if hasattr(setting, "save_finetuned") else None
    originals = {}
    for start, model in models.items():
        if start != "scratch":
            model.eval()
            originals[start] = task.evaluate_original(model)
    shared = run_attacks(models, task, attacks, seeds, Path(args.root) / CACHE, artifacts, out_dir)
    curves = more_seeds(args, models, task, attacks, shared)
    result = judge(curves, task, attacks, originals, title)
    result["seeds"] = seeds
    # Without normal and scratch among the starts no seed was added, and the table must not say otherwise.
    result["separation_seeds"] = len(seeds) if curves is shared else args.separation_seeds
    if not distributed.is_main():
        return result
    text = report.write_results(out_dir, stem, result)
    (out_dir / f"{stem}_curves.json").write_text(json.dumps(curves))
    report.plot_panels(curves, task.restricted_metric, out_dir / f"{figure}.png", title)
    print(text, flush=True)
    for start, worst in result["worst"].items():
        print(V.worst_line(worst, start), flush=True)
    print(f"table: {out_dir / (stem + '.md')}  curves: {out_dir / (figure + '.png')}", flush=True)
    return result


def with_tuned(args, task, setting_name: str, target, attacks: dict[str, Attack]) -> dict[str, Attack]:
    """`--tune N`: Optuna's best attack on `target` becomes the first row, `tuned`."""
    if not args.tune:
        return attacks
    from sophon.tune import search

    per_epoch = -(-len(task.restricted_train) // args.finetune_bs)
    budget = 3 * args.truly_finetune_epochs * per_epoch  # as the standard suite's longest attack
    best = None
    if distributed.is_main():  # one search (its trials are sequential), shared with the other processes
        best, study = search(target, task, setting_name, args.tune, args.finetune_bs, args.truly_finetune_epochs,
                             budget, args.seed, args.suite_lr_scale)
        print(f"tuned attacker after {args.tune} trials: {best.label} ({task.restricted_metric} "
              f"{study.best_value:.4g})", flush=True)
    return {"tuned": distributed.broadcast(best), **attacks}


def build_task(args, setting, loss: str):
    """The setting's task, with the --precision its training steps autocast to."""
    task = setting.build_task(args, loss)
    task.precision = Precision(args.precision, task.device)
    return task


def protect_model(args, loss: str, setting, run_dir: Path | None = None, resume: bool = False):
    """(run folder, task, normal model, protected model, summary): SOPHON with `loss`. Data and
    weights are loaded before a new run folder (run_dir None) is made, so a bad name or a missing
    file leaves nothing behind."""
    task = build_task(args, setting, loss)
    normal = setting.build_model(args, "normal")
    # Before SOPHON's long run (and its run folder), not after it.
    check_fits(normal, getattr(args, "attack_list", {}).values(), task.head_prefix)
    if getattr(args, "canonical_scale", False):
        require_pairs(normal, "--canonical_scale")
    protected = setting.build_model(args, "normal")
    run_dir = run_dir or new_run_dir(args, loss)
    if distributed.is_main():
        print(f"run folder: {run_dir}", flush=True)
    meta = {"arch": args.arch, "dataset": args.dataset, "original": args.original, "loss": loss}
    config = protect_config(args, setting.NAME)
    args.attacker_distribution = config.distribution.to_dict() if config.distribution else None
    write_args(run_dir, args, setting)
    summary = protect(protected, task, config, run_dir, meta, resume=resume)
    print(f"SOPHON {summary['status']} after {summary['iteration']} iterations", flush=True)
    return run_dir, task, normal, protected, summary


def protect_and_test(args, loss: str, setting) -> Path:
    """SOPHON with `loss`, then the suite and verdicts. Returns the run folder."""
    args.device = str(device_of(args))
    run_dir = None
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "checkpoints" / "last.safetensors").exists():
            raise FileNotFoundError(f"--resume {run_dir}: no checkpoints/last.safetensors there; "
                                    "pass the run folder printed when the run started")
    run_dir, task, normal, protected, _ = protect_model(args, loss, setting, run_dir, resume=bool(args.resume))
    models = {"normal": normal, "sophon": protected, "scratch": setting.build_model(args, "scratch")}
    attacks = with_tuned(args, task, setting.NAME, protected, args.attack_list)
    evaluate(args, task, setting, run_dir, models, attacks, f"{loss}: {args.arch} on {args.dataset}")
    return run_dir


def load_protected(args, setting, path: str):
    """A model of --arch with the weights of a SOPHON checkpoint."""
    model = setting.build_model(args, "normal")
    tensors, meta = checkpoint.load(path, device=args.device)
    state = checkpoint.model_state(tensors) or tensors
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise checkpoint.CheckpointError(
            f"{path} does not fit --arch {args.arch} (written for {meta.get('arch')}); "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model


def named_checkpoints(specs: list[str]) -> dict[str, str]:
    """`--path` of --compare: NAME=CKPT, or CKPT named by its run folder
    (.../<run>/checkpoints/final.safetensors -> <run>). Names must differ and not be normal or scratch."""
    named = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or "/" in name:  # a bare path (which may itself hold '=')
            name, path = _run_name(spec), spec
        if not name or name in ("normal", "scratch") or name in named:
            raise ValueError(f"--path: the name {name!r} is empty, taken or reserved; name each checkpoint "
                             "NAME=CKPT, with distinct names other than normal and scratch")
        if not Path(path).is_file():
            raise FileNotFoundError(f"--path {path}: no such file; pass the .safetensors a SOPHON run wrote "
                                    "(<run>/checkpoints/final.safetensors)")
        named[name] = path
    return named


def _run_name(path: str) -> str:
    p = Path(path)
    return p.parent.parent.name if p.parent.name == "checkpoints" else p.stem


def compare_checkpoints(args, setting, checkpoints: dict[str, str], loss: str = "ice") -> Path:
    """Normal, every checkpoint and scratch under the same attacks and seeds, one table, each checkpoint
    judged against the same normal and scratch cells (several seeds or variants of a SOPHON run at once)."""
    args.device = str(device_of(args))
    task = build_task(args, setting, loss)
    models = {"normal": setting.build_model(args, "normal")}
    models.update({name: load_protected(args, setting, path) for name, path in checkpoints.items()})
    models["scratch"] = setting.build_model(args, "scratch")
    return _attack_and_write(args, task, setting, models, next(iter(checkpoints)),
                             f"fine-tuning test of {', '.join(checkpoints)}: {args.arch} on {args.dataset}")


def finetune_test(args, setting, start: str, path: str | None, loss: str = "ice") -> Path:
    """The attacks from one starting point; with --tune, from all three (the tuned attacker needs them)."""
    if start not in STARTS:
        raise ValueError(f"unknown --start {start!r}; choose one of {', '.join(STARTS)}")
    if start == "sophon" and not path:
        raise ValueError("--start sophon needs --path, the .safetensors checkpoint a SOPHON run wrote")
    args.device = str(device_of(args))
    task = build_task(args, setting, loss)
    build = {"normal": lambda: setting.build_model(args, "normal"),
             "scratch": lambda: setting.build_model(args, "scratch"),
             "sophon": lambda: load_protected(args, setting, path)}
    models = {s: build[s]() for s in STARTS if s == start or (args.tune and (s != "sophon" or path))}
    return _attack_and_write(args, task, setting, models, start,
                             f"fine-tuning test from {start}: {args.arch} on {args.dataset}")


def _attack_and_write(args, task, setting, models: dict, target: str, title: str) -> Path:
    """The attack-only scripts' common end: a finetune_test run folder, `--tune` against `target`, evaluate."""
    check_fits(models[target], args.attack_list.values(), task.head_prefix)
    run_dir = new_run_dir(args, "finetune_test")
    write_args(run_dir, args, setting)
    attacks = with_tuned(args, task, setting.NAME, models[target], args.attack_list)
    evaluate(args, task, setting, run_dir, models, attacks, title)
    return run_dir
