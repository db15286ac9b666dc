"""What a run writes for people and programs: results.json, results.md, results.csv and curves.png.

results.json  {"metric", "higher_is_better", "rows", "verdicts", "worst"}: `rows` has one entry per
              start x attack (per-seed final/best/auc lists and their means and stds), `verdicts`
              one per attack and protected start (sophon.verdict.judge), `worst` one per protected start.
results.md    the same numbers as tables, worst case first.
curves.png    one panel per attack; one colour per starting point in every figure; a band of ± std.
"""

import csv
import json
import math
from pathlib import Path

import numpy as np

from sophon import verdict as V

# Fixed colours per starting point, the same in every figure of the project.
COLOURS = {"normal": "#1f77b4", "scratch": "#7f7f7f", "sophon": "#d62728", "sophon-ice": "#d62728",
           "sophon-dos": "#d62728", "sophon-klu": "#ff7f0e", "sophon-mse": "#ff7f0e",
           "sophon-ice-released": "#9467bd"}
_SPARE = ("#2ca02c", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79", "#e7969c")


def colours(starts) -> dict[str, str]:
    """Each start's colour in one figure: its fixed one, else the next spare one, so that no two share one."""
    spare = [s for s in starts if s not in COLOURS]
    return {s: COLOURS.get(s) or _SPARE[spare.index(s) % len(_SPARE)] for s in starts}


def summarise_rows(curves: dict, specs: dict, metric: str, higher_is_better: bool,
                   originals: dict | None = None) -> list[dict]:
    """curves[start][attack] = [curve per seed] -> one row per start x attack."""
    rows = []
    for start, by_attack in curves.items():
        for attack, per_seed in by_attack.items():
            parts = [V.curve_summary(c, metric, higher_is_better) for c in per_seed]
            row = {"start": start, "attack": attack, "spec": specs[attack], "seeds": len(parts)}
            for key in ("final", "best", "auc"):
                row[key] = [p[key] for p in parts]
                row[f"{key}_mean"], row[f"{key}_std"] = V.mean_std(row[key])
            row["epochs"] = per_seed[0][-1]["epoch"]
            row["original"] = (originals or {}).get(start, {})
            rows.append(row)
    return rows


def _pm(mean: float, std: float, pct: bool) -> str:
    if pct:
        return f"{100 * mean:.1f} ± {100 * std:.1f}"
    return f"{mean:.4g} ± {std:.2g}"


def _p(x) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.2f}"


def results_markdown(result: dict) -> str:
    metric, higher = result["metric"], result["higher_is_better"]
    pct = metric == "accuracy"
    unit = " (%)" if pct else ""
    by = {(r["start"], r["attack"]): r for r in result["rows"]}
    starts = list(dict.fromkeys(r["start"] for r in result["rows"]))
    lines = [f"# {result.get('title', 'results')}", ""]
    for start, worst in result["worst"].items():
        lines.append(f"- {V.worst_line(worst, start)}")
    lines += ["", f"Restricted test {metric}{unit} after each attack, final epoch, mean ± std over seeds "
              f"({'higher' if higher else 'lower'} is better for the attacker). P = (normal − SOPHON) / "
              "(normal − scratch): 1 = no better than scratch, 0 = no protection.", ""]
    wide, shared = result.get("separation_seeds") or 0, len(result.get("seeds", []))
    if wide > shared:
        lines[-1:-1] = [f"Normal and scratch ran {wide} attack seeds on every attack (`--separation_seeds`), the other "
                        f"starts {wide} on the attacks that separate them and {shared} on the rest; every number uses "
                        "all the seeds of its start."]
    for start in [s for s in starts if s not in ("normal", "scratch")]:
        verdicts = [v for v in result["verdicts"] if v["start"] == start]
        # Worst case first: separating attacks by rising P, then the rest.
        verdicts.sort(key=lambda v: (not v["separates"], v["protection"] if math.isfinite(v["protection"]) else -1e9))
        cols = ["attack", "normal", start, "scratch", "P [95 % CI]", "P (AUC)", "separates", "verdict"]
        lines += [f"## {start}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for v in verdicts:
            cells = [f"`{v['attack']}`"] + [_pm(by[(s, v["attack"])]["final_mean"], by[(s, v["attack"])]["final_std"], pct)
                                            for s in ("normal", start, "scratch")]
            low, high = v["protection_ci"]
            # Without separation P divides by noise: shown in results.json, not here.
            cells += ([f"{_p(v['protection'])} [{_p(low)}, {_p(high)}]", _p(v["protection_auc"])] if v["separates"]
                      else ["—", "—"])
            cells += ["yes" if v["separates"] else "no", v["verdict"]]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    originals = {r["start"]: r["original"] for r in result["rows"] if r["original"]}
    if originals:
        keys = list(dict.fromkeys(k for o in originals.values() for k in o))
        lines += ["Original domain (before any attack):", "", "| start | " + " | ".join(keys) + " |",
                  "|---|" + "---|" * len(keys)]
        lines += ["| " + s + " | " + " | ".join(f"{o.get(k, float('nan')):.4g}" for k in keys) + " |"
                  for s, o in originals.items()]
    return "\n".join(lines) + "\n"


def jsonable(value):
    """NaN/inf (an undefined P) as null, so results.json is valid JSON for any reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_results(folder: Path, stem: str, result: dict) -> str:
    """STEM.json, STEM.md and STEM.csv (one line per start x attack) in `folder`; returns the markdown."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(jsonable(result), indent=1))
    text = results_markdown(result)
    (folder / f"{stem}.md").write_text(text)
    cols = ["start", "attack", "spec", "seeds", "final_mean", "final_std", "best_mean", "best_std", "auc_mean",
            "auc_std", "final"]
    with open(folder / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**r, "final": " ".join(f"{x:.6g}" for x in r["final"])} for r in result["rows"])
    return text


def plot_panels(curves: dict, metric: str, path: str | Path, title: str = "",
                baseline: tuple[str, float] | None = None) -> Path:
    """One panel per attack: the mean curve of each start over seeds, with a ± std band; `baseline`
    (label, value), e.g. the zero-shot accuracy, is a dotted line in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    attacks = list(dict.fromkeys(a for by in curves.values() for a in by))
    cols = min(4, len(attacks))
    rows = -(-len(attacks) // cols)
    height = 2.7 * rows + 0.9  # inches: the panels, then a line for the title and one for the legend
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, height), squeeze=False, sharey=True)
    palette = colours(curves)
    for ax, attack in zip(axes.flat, attacks):
        for start, by in curves.items():
            if attack not in by:
                continue
            length = min(len(c) for c in by[attack])
            values = np.array([[r[metric] for r in c[:length]] for c in by[attack]], dtype=float)
            epochs = [r["epoch"] for r in by[attack][0][:length]]
            mean, std = values.mean(0), values.std(0, ddof=1) if len(values) > 1 else np.zeros(length)
            ax.plot(epochs, mean, color=palette[start], label=start, lw=1.6)
            ax.fill_between(epochs, mean - std, mean + std, color=palette[start], alpha=0.2, lw=0)
        if baseline is not None:
            ax.axhline(baseline[1], color="black", ls=":", lw=1.2, label=baseline[0])
        ax.set_title(attack, fontsize=7.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(attacks):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"restricted {metric}", fontsize=8)
    for ax in axes[-1, :]:
        ax.set_xlabel("fine-tuning epoch", fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    # The title on the first line, the legend on the second, so neither hides the other in narrow figures.
    fig.suptitle(title, fontsize=10, x=0.01, y=1 - 0.08 / height, ha="left", va="top")
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.01, 1 - 0.38 / height), ncol=len(labels),
               fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.62 / height))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
