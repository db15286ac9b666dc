"""What protection costs the original domain: each SOPHON model's P under chosen attacks against its original metric.

Reads the results.json of one or more `finetune_test.py --compare` calls (each holds normal's and every model's
original metric and the verdicts) and draws one panel per attack: x = the model's original metric as a share of
normal's, y = P with its 95 % interval, a dashed line at P = 0.9 (held) and one at the 95 % bar; a first panel gives
the held count over the attacks that separate. Prints the same numbers as a Markdown table.

    python tools/tradeoff_plot.py --results A/results.json B/results.json --out tradeoff.png \
        --attacks "rmsprop:0.001:bs=32:epochs=10,adadelta:10:bs=32:epochs=10"
"""

import argparse
import json
from pathlib import Path

from sophon.cli import fail, user_errors
from sophon.report import colours

HELD, ORIGINAL_BAR = 0.9, 0.95


def load(paths: list[str]) -> dict[str, dict]:
    """model -> {"original": share of normal's, "verdicts": {attack: verdict}} over every results.json."""
    models = {}
    for path in paths:
        if not Path(path).is_file():
            fail(f"--results {path}: no such file; pass the results.json a finetune_test.py --compare run wrote")
        data = json.loads(Path(path).read_text())
        originals = {r["start"]: r.get("original") or {} for r in data["rows"]}
        metric, reference = next(iter(originals["normal"].items()), (None, None))
        if metric is None:
            fail(f"--results {path}: normal's original metric is missing; it needs a --compare run's results.json")
        for start, original in originals.items():
            if start in ("normal", "scratch"):
                continue
            value = original[metric]
            share = value / reference if data.get("higher_is_better", True) else reference / value
            entry = models.setdefault(start, {"original": share, "verdicts": {}})
            entry["verdicts"].update({v["attack"]: v for v in data["verdicts"] if v["start"] == start})
    return models


def table(models: dict, attacks: list[str]) -> str:
    lines = ["| model | original (of normal) | held / separating | " + " | ".join(f"`{a}` P" for a in attacks) + " |",
             "|---|---|---|" + "---|" * len(attacks)]
    for name, m in sorted(models.items(), key=lambda kv: -kv[1]["original"]):
        separating = [v for v in m["verdicts"].values() if v["separates"]]
        held = sum(v["verdict"] == "held" for v in separating)
        cells = []
        for a in attacks:
            v = m["verdicts"].get(a)
            cells.append("—" if v is None else f"{v['protection']:.2f}" + ("" if v["separates"] else " (no sep.)"))
        lines.append(f"| {name} | {100 * m['original']:.1f} % | {held} / {len(separating)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(models: dict, attacks: list[str], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = colours(sorted(models))
    panels = len(attacks) + 1
    rows = -(-panels // 4)  # at most 4 panels a row, the rows as full as they can be
    cols = -(-panels // rows)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows + 0.9), squeeze=False)
    first = axes.flat[0]
    for name, m in models.items():
        separating = [v for v in m["verdicts"].values() if v["separates"]]
        held = sum(v["verdict"] == "held" for v in separating)
        first.scatter(100 * m["original"], held / max(1, len(separating)), color=palette[name], label=name, s=28)
    first.set_title("held / separating attacks", fontsize=8)
    first.set_ylim(0, 1.05)
    for ax, attack in zip(list(axes.flat)[1:], attacks):
        for name, m in models.items():
            v = m["verdicts"].get(attack)
            if v is None:
                continue
            low, high = v["protection_ci"]
            y = v["protection"]
            ax.errorbar(100 * m["original"], y, yerr=[[max(0, y - low)], [max(0, high - y)]], fmt="o" if
                        v["separates"] else "x", color=palette[name], ms=5, capsize=2, lw=1)
        ax.axhline(HELD, color="black", ls="--", lw=0.8)
        ax.set_ylim(-1, 3)
        ax.set_title(attack, fontsize=7.5)
        ax.set_ylabel("P", fontsize=8)
    for ax in list(axes.flat)[:panels]:
        ax.axvline(100 * ORIGINAL_BAR, color="black", ls=":", lw=0.8)
        ax.set_xlabel("original metric, % of normal's", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    fig.suptitle(title + "  (o: separates, x: does not; dashed: P 0.9, dotted: 95 % of normal)", fontsize=9,
                 x=0.01, ha="left")
    handles, labels = first.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@user_errors  # a missing or foreign results file: one line, exit 2
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", nargs="+", required=True, help="results.json of finetune_test.py --compare runs")
    parser.add_argument("--attacks", default="", help="comma-separated attack labels, one panel each "
                        "(default: every attack some model does not hold)")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--title", default="protection against the original domain's cost")
    ns = parser.parse_args(argv)
    models = load(ns.results)
    if not models:
        fail("--results: no SOPHON model in these files; pass --compare runs' results.json")
    known = {a for m in models.values() for a in m["verdicts"]}
    attacks = [a for a in ns.attacks.split(",") if a] or sorted(
        {a for m in models.values() for a, v in m["verdicts"].items() if v["separates"] and v["verdict"] != "held"})
    unknown = [a for a in attacks if a not in known]
    if unknown:
        fail(f"--attacks: {', '.join(unknown)} not in these results; give attacks as their labels there, "
             f"e.g. {sorted(known)[0]}")
    print(table(models, attacks))
    plot(models, attacks, ns.out, ns.title)
    print(f"wrote {ns.out}")


if __name__ == "__main__":
    main()
