"""Compare the same seeded runs made on two devices (tools/gpu_check.sh): for every run folder under
ROOT_A that ROOT_B also has (same loss folder and arch_dataset), the original metric before and after
SOPHON and each start's attacked metric, side by side with their difference.

    python tools/compare_runs.py results/gpu_check/cpu results/gpu_check/cuda
"""

import json
import sys
from pathlib import Path


def latest_runs(root: Path) -> dict[str, Path]:
    """{'inverse_loss/tiny-gpt2_RT': newest run folder} for every run with results."""
    runs = {}
    for results in sorted(root.glob("*/*/*/results.json")):
        runs[str(results.parent.parent.relative_to(root))] = results.parent
    return runs


def numbers(run: Path) -> dict[str, float]:
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    first, last = records[0], [r for r in records if any(k.startswith("original_") for k in r)][-1]
    out = {}
    for key in first:
        if key.startswith("original_"):
            out[f"{key} before"] = first[key]
            out[f"{key} after"] = last[key]
    for row in json.loads((run / "results.json").read_text())["rows"]:
        out[f"{row['start']} {row['attack']} final"] = row["final_mean"]
    return out


def main(a: str, b: str) -> int:
    runs_a, runs_b = latest_runs(Path(a)), latest_runs(Path(b))
    common = sorted(set(runs_a) & set(runs_b))
    if not common:
        print(f"error: no run folder found under both {a} and {b}", file=sys.stderr)
        return 2
    print(f"| run | quantity | {Path(a).name} | {Path(b).name} | difference |\n|---|---|---|---|---|")
    for name in common:
        x, y = numbers(runs_a[name]), numbers(runs_b[name])
        for key in x:
            if key in y:
                print(f"| {name} | {key} | {x[key]:.4g} | {y[key]:.4g} | {y[key] - x[key]:+.3g} |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(*sys.argv[1:]))
