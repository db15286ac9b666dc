"""Result tables (markdown, CSV, JSON) and curve plots (PNG)."""

import csv
import json
from pathlib import Path


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_table(rows: list[dict], stem: str | Path, columns: list[str] | None = None) -> str:
    """Write STEM.md, STEM.csv and STEM.json; return the markdown."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    text = markdown_table(rows, columns)
    stem.with_suffix(".md").write_text(text + "\n")
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    return text


def plot_curves(curves: dict[str, list[dict]], metric: str, path: str | Path, title: str = "") -> Path:
    """One line per starting point/attack: restricted test metric against fine-tuning epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = {"normal": "-", "sophon": "--", "scratch": ":"}
    for label, curve in curves.items():
        style = next((s for k, s in styles.items() if label.startswith(k)), "-")
        ax.plot([r["epoch"] for r in curve], [r[metric] for r in curve], style, marker="o", ms=3, label=label)
    ax.set_xlabel("fine-tuning epoch")
    ax.set_ylabel(f"restricted test {metric}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
