"""`python reproduce.py`: every table of the README, from nothing, resumable.

For each setting: pre-train the normal model (cached), run SOPHON with both of its losses
(results/reproduce/<setting>/<loss>/, resumed or reused when there; with --arch, another model of
one setting, e.g. text's smollm2-cut: results/reproduce/<setting>-<arch>/ and tables
<setting>-<arch>.*), tune an attacker against each protected model (Optuna, cached in that folder as
tuned.json), then attack normal, both SOPHON models and scratch with the tuned attackers and the
suite, every seed, and write results/tables/<setting>.{md,csv,json,png} and
results/tables/summary.md. Finished attack cells come from results/attack_cache, so a second run
skips them.
"""

import argparse
import json
import time
from pathlib import Path

from sophon import distributed, report
from sophon.attack import Attack
from sophon.cli import fail, parse_setting_args, pretrain_main, user_errors
from sophon.config import SUITE_NAMES, AttackConfig, LoopConfig, RunConfig, field_names
from sophon.device import device_of
from sophon.experiment import build_task, evaluate, load_protected, protect_model
from sophon.resume import may_change
from sophon.settings import SETTING_ARCHS

# setting -> (arch of the embedded preset, its two suppression losses, kind for the parser)
SETTINGS = {"text": ("tiny-gpt2", ("ice", "klu"), ("text", "image")),
            "image": ("cnn", ("ice", "klu"), ("text", "image")),
            "diffusion": ("unet-tiny", ("dos", "mse"), "diffusion")}
DEFAULT_TUNE = 12  # Optuna trials per protected model


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--setting", default="all", choices=(*SETTINGS, "all"))
    p.add_argument("--suite", default="standard", choices=SUITE_NAMES)
    p.add_argument("--seeds", type=int, default=AttackConfig.seeds, help="attack seeds per attack")
    p.add_argument("--separation_seeds", type=int, default=None,
                   help="attack seeds of normal and scratch on every attack, and of every start on the attacks "
                        "that separate them (default: --seeds)")
    p.add_argument("--tune", type=int, default=DEFAULT_TUNE, help="Optuna trials of the tuned attacker (0: off)")
    p.add_argument("--root", default=RunConfig.root)
    p.add_argument("--device", default=RunConfig.device)
    p.add_argument("--threads", type=int, default=RunConfig.threads,
                   help="CPU threads of PyTorch's kernels for every step (0: one per core); the numbers depend on it")
    p.add_argument("--data_root", default=None, help="real datasets (the paper's presets need --arch too)")
    p.add_argument("--arch", default=None,
                   help="with one --setting: another model of that setting than its embedded preset (e.g. text: "
                        "smollm2-cut, on a GPU); runs in results/reproduce/<setting>-<arch>/, table "
                        "results/tables/<setting>-<arch>.*")
    p.add_argument("--protect_seeds", type=int, default=1,
                   help="SOPHON runs per loss, seeds 0..N-1 (the attack seeds stay the same); the summary gives "
                        "the held count of each and their mean and spread")
    return p


def arch_of(setting: str, opts) -> str:
    return opts.arch or SETTINGS[setting][0]


def table_name(setting: str, opts) -> str:
    """The name of a setting's table and run folders: the setting for its embedded preset, else setting-arch, so
    that another model's table never overwrites (or reuses the runs of) the preset's."""
    arch = arch_of(setting, opts)
    return setting if arch == SETTINGS[setting][0] else f"{setting}-{arch}"


def protected_name(loss: str, seed: int) -> str:
    """The table's start name of a SOPHON model: sophon-ice, then sophon-ice-seed1, sophon-ice-seed2 ..."""
    return f"sophon-{loss}" + (f"-seed{seed}" if seed else "")


def _pretrain(setting: str, arch: str, common: list[str]) -> None:
    if setting == "text" and arch != "tiny-gpt2":
        return  # GPT-2 and SmolLM2 come pre-trained: load_pretrained reads them when the run starts
    if setting == "diffusion":
        from sophon.settings import diffusion

        args, _ = parse_setting_args("pre-train", ["--arch", arch] + common, kind="diffusion", default_arch=arch)
        args.device = str(device_of(args))
        if not Path(diffusion.pretrained_path(args)).is_dir():
            diffusion.pretrain(args)
        return
    pretrain_main("pre-train", ["--arch", arch] + common)


def stale_field(args, setting_module, run_dir: Path) -> str | None:
    """The first flag that shapes the SOPHON model (the run, the loop, the setting's own) whose value in
    run_dir/args.json differs from what this call would use, as "name: saved -> now"; None when they agree
    or there is no run. A changed preset would otherwise reuse, or resume, a model made by the old one."""
    path = run_dir / "args.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    free = may_change((RunConfig, LoopConfig))  # root, device, total_loop ...: a resume may change them
    for name in field_names((RunConfig, LoopConfig, setting_module.CONFIG)):
        if name in saved and name not in free and saved[name] != getattr(args, name):
            return f"{name}: {saved[name]!r} -> {getattr(args, name)!r}"
    return None


def _protected(args, loss: str, setting_module, run_dir: Path):
    """(task, normal, protected): reuse a finished run, resume an interrupted one, else start it."""
    final = run_dir / "checkpoints" / "final.json"
    if final.exists() and json.loads(final.read_text()).get("status") in ("finished", "guard_stopped"):
        print(f"reusing the SOPHON run in {run_dir}", flush=True)
        task = build_task(args, setting_module, loss)
        return task, setting_module.build_model(args, "normal"), load_protected(args, setting_module, str(final))
    resume = (run_dir / "checkpoints" / "last.safetensors").exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    _, task, normal, protected, _ = protect_model(args, loss, setting_module, run_dir, resume=resume)
    return task, normal, protected


def _tuned(args, task, setting: str, model, run_dir: Path, trials: int) -> Attack:
    from sophon.experiment import with_tuned

    path = run_dir / "tuned.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("trials") == trials:
            return Attack(**saved["attack"])
    args.tune = trials
    attack = with_tuned(args, task, setting, model, {})["tuned"]
    if distributed.is_main():
        path.write_text(json.dumps({"trials": trials, "attack": attack.to_dict()}, indent=1))
    return attack


def _argv(setting: str, opts) -> tuple[list[str], list[str]]:
    """(the setting's flags, the flags every step shares)."""
    common = ["--root", opts.root, "--device", opts.device, "--threads", str(opts.threads)]
    common += ["--data_root", opts.data_root] if opts.data_root else []
    seeds = ["--seeds", str(opts.seeds)] + (["--separation_seeds", str(opts.separation_seeds)]
                                            if opts.separation_seeds else [])
    return ["--arch", arch_of(setting, opts), "--suite", opts.suite] + seeds + common, common


def plan(setting: str, opts) -> list[tuple]:
    """(loss, seed, start name, run folder, args, setting module) of every SOPHON run; a folder made with other
    flags than the preset (of that arch and loss) now gives is refused here, before any long work starts, and kept."""
    _, losses, kind = SETTINGS[setting]
    arch = arch_of(setting, opts)
    argv, _ = _argv(setting, opts)
    runs = []
    for loss in losses:
        for seed in range(opts.protect_seeds):
            args, module = parse_setting_args(f"reproduce {setting}", argv + ["--seed", str(seed)], kind=kind,
                                              default_arch=arch, loss=loss)  # the loss's own preset, where it has one
            name = protected_name(loss, seed)
            folder = name.removeprefix("sophon-")  # ice, ice-seed1 ...
            run_dir = Path(opts.root) / "reproduce" / table_name(setting, opts) / folder
            changed = stale_field(args, module, run_dir)
            if changed:
                fail(f"{run_dir} was made with other flags than the {arch} preset now gives ({changed}); "
                     "move that folder away to run it again, or check out the commit that made it")
            runs.append((loss, seed, name, run_dir, args, module))
    return runs


def run_setting(setting: str, opts, runs: list[tuple]) -> dict:
    _, losses, kind = SETTINGS[setting]
    arch, stem = arch_of(setting, opts), table_name(setting, opts)
    argv, common = _argv(setting, opts)
    started = time.perf_counter()
    if distributed.is_main():  # the others wait for the cached pre-trained model
        _pretrain(setting, arch, common)
    distributed.barrier()
    models, attacks, task, folders = {}, {}, None, {}
    for loss, seed, name, run_dir, args, module in runs:
        args.device = str(device_of(args))
        folders[name] = run_dir
        task, normal, protected = _protected(args, loss, module, run_dir)
        models.setdefault("normal", normal)
        models[name] = protected
        if opts.tune and not seed:  # tuned against the first SOPHON model, then used on every start
            attacks[f"tuned-{loss}"] = _tuned(args, task, setting, protected, run_dir, opts.tune)
    # Every model is attacked on the same data with the same attack seeds: those of the base seed (a SOPHON
    # seed also picks the training subsets its own run saw, where a preset subsamples).
    args, module = parse_setting_args(f"reproduce {setting}", argv, kind=kind, default_arch=arch)
    args.device = str(device_of(args))
    task = build_task(args, module, losses[-1])
    models["scratch"] = module.build_model(args, "scratch")
    attacks.update(args.attack_list)
    out = Path(opts.root) / "tables"
    title = f"{setting}: {arch} on {args.dataset} (original {args.original}), suite {opts.suite}"
    result = evaluate(args, task, module, out, models, attacks, title, stem=stem, figure=stem)
    result["minutes"] = (time.perf_counter() - started) / 60
    result["suite"] = opts.suite
    result["runs"] = {name: str(d) for name, d in folders.items()}
    result["protect_seeds"] = opts.protect_seeds
    if distributed.is_main():
        (out / f"{stem}.json").write_text(json.dumps(report.jsonable(result), indent=1))
    return result


def summary_lines(setting: str, result: dict) -> list[str]:
    lines = []
    originals = {r["start"]: r["original"] for r in result["rows"] if r["original"]}
    suite = result.get("suite") or result["title"].rsplit("suite ", 1)[-1]
    runs = f"{suite}, {len(result.get('seeds', []))} seeds"
    if (result.get("separation_seeds") or 0) > len(result.get("seeds", [])):
        runs += f" ({result['separation_seeds']} where normal and scratch separate)"
    for start, worst in result["worst"].items():
        normal, mine = originals.get("normal", {}), originals.get(start, {})
        key = next(iter(normal), None)
        kept = f"{key} {mine[key]:.4g} vs normal {normal[key]:.4g}" if key in mine else "n/a"
        lines.append(f"| {setting} | {start} | {runs} | {worst['held']} / {worst['separating']} (of {worst['attacks']}) | "
                     + (f"`{worst['attack']}` P = {worst['protection']:.2f} ({worst['verdict']})"
                        if worst["separating"] else "no separating attack")
                     + f" | {kept} | {result['minutes']:.1f} |")
    return lines


def across_seeds(result: dict) -> dict[str, dict]:
    """Per loss with several SOPHON seeds: the held count of each seed (of the attacks that separate),
    their mean and standard deviation, and the lowest P over all seeds."""
    groups: dict[str, list] = {}
    for start, worst in result["worst"].items():
        groups.setdefault(start.split("-seed")[0], []).append(worst)
    out = {}
    for name, worsts in groups.items():
        if len(worsts) < 2:
            continue
        held = [w["held"] for w in worsts]
        mean = sum(held) / len(held)
        std = (sum((h - mean) ** 2 for h in held) / (len(held) - 1)) ** 0.5
        lowest = min((w for w in worsts if w["separating"]), key=lambda w: w["protection"], default=None)
        out[name] = {"held": held, "mean": mean, "std": std, "separating": worsts[0]["separating"],
                     "worst": lowest}
    return out


def seed_lines(setting: str, result: dict) -> list[str]:
    lines = []
    for name, agg in across_seeds(result).items():
        worst = agg["worst"]
        lines.append(f"| {setting} | {name}, {len(agg['held'])} SOPHON seeds | held {', '.join(map(str, agg['held']))} "
                     f"of {agg['separating']}: {agg['mean']:.1f} ± {agg['std']:.1f} | "
                     + (f"lowest P `{worst['attack']}` {worst['protection']:.2f}" if worst else "no separating attack")
                     + " |")
    return lines


def tables(out: Path) -> list[str]:
    """The names of the tables in `out` in the summary's order: each setting's preset, then its other models."""
    names = []
    for setting in SETTINGS:
        others = sorted(p.stem for p in out.glob(f"{setting}-*.json") if not p.stem.endswith("_curves"))
        names += [n for n in [setting] + others if (out / f"{n}.json").exists()]
    return names


def write_summary(out: Path) -> str:
    """summary.md: the latest table of every setting (and of every other model run with --arch), however many
    calls made them."""
    lines = ["| setting | SOPHON model | suite | held / separating attacks | worst case | original metric | minutes |",
             "|---|---|---|---|---|---|---|"]
    results = {name: json.loads((out / f"{name}.json").read_text()) for name in tables(out)}
    for name, result in results.items():
        lines += summary_lines(name, result)
    seeds = [line for name, result in results.items() for line in seed_lines(name, result)]
    if seeds:
        seeds = ["", "Across SOPHON seeds (`--protect_seeds`), the held count of each seed:", "",
                 "| setting | SOPHON models | held / separating | lowest P over the seeds |", "|---|---|---|---|"] + seeds
    head = ("Latest `python reproduce.py` table of each setting (`results/tables/<setting>.md`; another model "
            "than the preset: `<setting>-<arch>.md`); minutes are the last call's wall time for that table.")
    text = "\n".join(["# SOPHON, every setting", "", head, ""] + lines + seeds) + "\n"
    (out / "summary.md").write_text(text)
    return text


@user_errors
def main(argv=None) -> Path:
    opts = parser().parse_args(argv)
    if opts.seeds < 1 or opts.tune < 0 or opts.protect_seeds < 1:
        fail("--seeds and --protect_seeds must be at least 1, --tune at least 0")
    if opts.arch and opts.setting == "all":
        fail(f"--arch {opts.arch} needs one --setting: text, image or diffusion")
    if opts.arch and opts.arch not in SETTING_ARCHS[opts.setting]:
        fail(f"--arch {opts.arch} is not one of the {opts.setting} models: {', '.join(SETTING_ARCHS[opts.setting])}")
    settings = list(SETTINGS) if opts.setting == "all" else [opts.setting]
    runs = {setting: plan(setting, opts) for setting in settings}  # a bad flag or a stale run stops here
    out = Path(opts.root) / "tables"
    out.mkdir(parents=True, exist_ok=True)
    for setting in settings:
        run_setting(setting, opts, runs[setting])
    if distributed.is_main():
        print(write_summary(out))
        print(f"summary: {out / 'summary.md'}")
    return out / "summary.md"
