"""Draws sophon.png, the overview figure of the README: the SOPHON loop in one picture.

    python docs/draw_sophon.py            # writes sophon.png at the repository root
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

BOXES = {  # name: (x, y, w, h, text, colour)
    "theta": (0.02, 0.40, 0.16, 0.20, "pre-trained\nmodel θ", "#dfe7f2"),
    "fts": (0.26, 0.62, 0.40, 0.30, "Fine-tuning suppression (FTS)\nclone θ → θ′, fresh head\nK steps of a simulated attacker\n"
            "(SGD / Adam / … on restricted data)\n∇ suppression loss at each θ′ₖ", "#f6dada"),
    "ntr": (0.26, 0.08, 0.40, 0.26, "Normal-training reinforcement (NTR)\nAdam step on the original-domain loss\n"
            "(cross-entropy, next-token, ε-MSE)", "#dcefdc"),
    "out": (0.78, 0.40, 0.20, 0.20, "protected θ\nkeeps original skill,\nresists fine-tuning", "#efe6d0"),
}


def main(path: Path = Path(__file__).resolve().parents[1] / "sophon.png") -> Path:
    fig, ax = plt.subplots(figsize=(9, 4.2))
    ax.set_axis_off()
    for x, y, w, h, text, colour in BOXES.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.01", fc=colour, ec="#444"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8.5)

    def arrow(a, b, text="", rad=0.0, dx=0.0):
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=14, color="#333",
                                     connectionstyle=f"arc3,rad={rad}"))
        if text:
            ax.text((a[0] + b[0]) / 2 + dx, (a[1] + b[1]) / 2 + 0.03, text, ha="center", fontsize=8, color="#333")

    arrow((0.18, 0.55), (0.26, 0.72), "")
    arrow((0.46, 0.62), (0.46, 0.34), "FTS step: Adam, α·lr, clip 0.5", dx=0.11)
    arrow((0.30, 0.34), (0.30, 0.62), "NTR step: β·lr", dx=-0.08)
    arrow((0.66, 0.50), (0.78, 0.50), "× total_loop")
    ax.text(0.5, 0.98, "SOPHON: non-fine-tunable learning", ha="center", va="top", fontsize=12, weight="bold")
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(main())
