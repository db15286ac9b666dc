"""Protection ratio, intervals, separation and verdicts on hand-made numbers; the written files agree."""

import json
import math

import pytest

from sophon import report
from sophon import verdict as V
from sophon.experiment import judge
from sophon.attack import Attack


def curve(*values):
    return [{"epoch": i, "accuracy": v} for i, v in enumerate(values)]


def test_protection_ratio_is_one_at_scratch_and_zero_at_normal():
    assert V.protection([0.9, 0.9], [0.5, 0.5], [0.5, 0.5]) == pytest.approx(1.0)
    assert V.protection([0.9, 0.9], [0.9, 0.9], [0.5, 0.5]) == pytest.approx(0.0)
    assert V.protection([0.9], [0.7], [0.5]) == pytest.approx(0.5)


def test_protection_ratio_for_a_lower_is_better_metric():
    # MSE: normal 0.07, scratch 0.15, SOPHON 0.13 -> (0.07 - 0.13) / (0.07 - 0.15) = 0.75
    assert V.protection([0.07], [0.13], [0.15]) == pytest.approx(0.75)
    assert V.verdict(True, V.protection([0.07], [0.07], [0.15])) == "not held"


def test_separation_uses_welch_and_direction():
    assert V.separates([0.90, 0.91, 0.89], [0.50, 0.52, 0.48], higher_is_better=True)
    assert not V.separates([0.60, 0.40, 0.55], [0.50, 0.45, 0.52], higher_is_better=True)  # within noise
    assert not V.separates([0.50, 0.52, 0.48], [0.90, 0.91, 0.89], higher_is_better=True)  # normal is worse
    assert V.separates([0.07, 0.071, 0.069], [0.15, 0.16, 0.14], higher_is_better=False)  # MSE: lower wins
    assert not V.separates([0.9], [0.5], higher_is_better=True)  # one seed separates nothing


def test_interval_covers_the_point_and_widens_with_noise():
    low, high = V.protection_interval([0.9, 0.91, 0.89], [0.52, 0.5, 0.51], [0.5, 0.49, 0.51])
    assert low <= V.protection([0.9, 0.91, 0.89], [0.52, 0.5, 0.51], [0.5, 0.49, 0.51]) <= high
    wide = V.protection_interval([0.9, 0.7, 0.95], [0.52, 0.8, 0.4], [0.5, 0.3, 0.6])
    assert wide[1] - wide[0] > high - low


@pytest.mark.parametrize("separating, p, expected", [(True, 0.95, "held"), (True, 0.9, "held"), (True, 0.7, "partial"),
                                                     (True, 0.2, "not held"), (False, 1.0, "no separation")])
def test_verdicts(separating, p, expected):
    assert V.verdict(separating, p) == expected


class Task:
    restricted_metric, restricted_higher_is_better = "accuracy", True


ATTACKS = {"a": Attack("sgd", 0.1), "b": Attack("adam", 1e-3)}


def _curves():
    return {"normal": {"a": [curve(0.1, 0.9), curve(0.1, 0.92), curve(0.1, 0.88)],
                       "b": [curve(0.1, 0.7), curve(0.1, 0.4), curve(0.1, 0.5)]},
            "sophon": {"a": [curve(0.1, 0.7), curve(0.1, 0.72), curve(0.1, 0.68)],
                       "b": [curve(0.1, 0.5), curve(0.1, 0.45), curve(0.1, 0.55)]},
            "scratch": {"a": [curve(0.1, 0.5), curve(0.1, 0.52), curve(0.1, 0.48)],
                        "b": [curve(0.1, 0.5), curve(0.1, 0.55), curve(0.1, 0.45)]}}


def _result(tmp_path):
    result = judge(_curves(), Task, ATTACKS, {"normal": {"accuracy": 0.86}, "sophon": {"accuracy": 0.85}}, "t")
    text = report.write_results(tmp_path, "results", result)
    return result, text


def test_judge_finds_the_worst_separating_attack(tmp_path):
    result, _ = _result(tmp_path)
    by = {v["attack"]: v for v in result["verdicts"]}
    assert by["a"]["separates"] and by["a"]["protection"] == pytest.approx(0.5)
    assert by["a"]["verdict"] == "partial"
    assert not by["b"]["separates"] and by["b"]["verdict"] == "no separation"
    assert result["worst"]["sophon"] == {"attack": "a", "protection": pytest.approx(0.5), "verdict": "partial",
                                         "held": 0, "separating": 1, "attacks": 2}


def test_results_md_and_json_agree(tmp_path):
    result, text = _result(tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["worst"] == json.loads(json.dumps(result["worst"]))
    for v in saved["verdicts"]:
        line = next(l for l in text.splitlines() if l.startswith(f"| `{v['attack']}`"))
        assert (f"{v['protection']:.2f}" if v["separates"] else "| — | — |") in line and v["verdict"] in line
    for r in saved["rows"]:
        line = next(l for l in text.splitlines() if l.startswith(f"| `{r['attack']}`"))
        assert f"{100 * r['final_mean']:.1f} ± {100 * r['final_std']:.1f}" in line
        assert r["final_mean"] == pytest.approx(sum(r["final"]) / 3)
    assert "worst case a P = 0.50 (partial); held 0 of 1 separating" in text
    csv_lines = (tmp_path / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 6


def test_curves_png_has_one_panel_per_attack(tmp_path):
    import matplotlib.image

    curves = {s: {a: [curve(0.1, 0.5, 0.6)] * 3 for a in ("x", "y", "z", "w", "v")} for s in ("normal", "scratch")}
    path = report.plot_panels(curves, "accuracy", tmp_path / "c.png", "t")
    height, width = matplotlib.image.imread(path).shape[:2]
    assert width > 4 * 300 and height > 2 * 250  # a 4 x 2 grid of readable panels
    assert not math.isnan(V.curve_summary(curve(0.1, 0.5, 0.4), "accuracy", True)["auc"])
    assert V.curve_summary(curve(0.1, 0.5, 0.4), "accuracy", True) == {"final": 0.4, "best": 0.5, "auc": 0.45}


def test_more_seeds_of_normal_and_scratch_decide_separation():
    # `a` separates at 3 seeds only by luck: 7 more seeds of normal spread from 10 to 95 %.
    # `b` does not at 3 seeds, and does at 10 once normal's steady lead shows.
    more = {"normal": {"a": [0.1, 0.95, 0.2, 0.9, 0.15, 0.3, 0.1], "b": [0.6, 0.58, 0.61, 0.59, 0.6, 0.62, 0.6]},
            "scratch": {"a": [0.5, 0.45, 0.55, 0.5, 0.52, 0.48, 0.5], "b": [0.45, 0.46, 0.44, 0.45, 0.47, 0.45, 0.46]}}
    curves = _curves()
    before = {v["attack"]: v for v in judge(curves, Task, ATTACKS, {}, "t")["verdicts"]}
    assert before["a"]["separates"] and not before["b"]["separates"]
    for start, by in more.items():
        for attack, finals in by.items():
            curves[start][attack] += [curve(0.1, x) for x in finals]
    by = {v["attack"]: v for v in judge(curves, Task, ATTACKS, {}, "t")["verdicts"]}
    assert not by["a"]["separates"] and by["a"]["verdict"] == "no separation"
    assert by["b"]["separates"] and by["b"]["separation_seeds"] == 10 and by["b"]["seeds"] == 3
    # P uses every seed of each start: normal's 10 (mean 0.58), SOPHON's 3 (0.5), scratch's 10 (0.468).
    assert by["b"]["protection"] == pytest.approx((0.58 - 0.5) / (0.58 - 0.468))


def test_separation_seeds_add_seeds_to_every_start_where_normal_and_scratch_separate(monkeypatch):
    from types import SimpleNamespace

    from sophon import experiment

    calls = []
    level = {"normal": {"a": 0.9, "b": 0.5}, "scratch": {"a": 0.1, "b": 0.5}, "sophon": {"a": 0.2, "b": 0.3}}

    def fake(models, task, attacks, seeds, cache_dir=None, artifacts=None, out_dir=None):
        calls.append((sorted(models), sorted(attacks), seeds))
        return {s: {a: [curve(0.1, level[s][a] + 0.01 * k) for k in range(len(seeds))] for a in attacks}
                for s in models}

    monkeypatch.setattr(experiment, "run_attacks", fake)
    models = {"normal": None, "sophon": None, "scratch": None}
    shared = {s: {a: [curve(0.1, level[s][a] - 0.01 * k) for k in range(3)] for a in ATTACKS} for s in models}
    args = SimpleNamespace(seed=5, seeds=3, separation_seeds=8, root="unused")
    wide = experiment.more_seeds(args, models, Task, ATTACKS, shared)
    # a separates (0.9 against 0.1), b does not (0.5 against 0.5): SOPHON gets the added seeds on a only.
    assert calls == [(["normal", "scratch"], ["a", "b"], [8, 9, 10, 11, 12]), (["sophon"], ["a"], [8, 9, 10, 11, 12])]
    assert [len(wide[s]["a"]) for s in models] == [8, 8, 8] and [len(wide[s]["b"]) for s in models] == [8, 3, 8]
    assert wide["sophon"]["a"][:3] == shared["sophon"]["a"]  # the shared seeds come first
    calls.clear()
    args.separation_seeds = 3
    assert experiment.more_seeds(args, models, Task, ATTACKS, shared) is shared and not calls


def test_every_start_of_a_figure_has_its_own_colour(tmp_path, monkeypatch):
    """Fixed colours for the named starts; the others (seeds, variants, controls) never share one."""
    from matplotlib.figure import Figure

    starts = ["normal", "sophon-ice", "s0", "s1", "s2", "ice", "klu", "ntr-only", "scratch"]
    curves = {s: {"x": [curve(0.1, 0.5, 0.6)] * 2} for s in starts}
    seen = {}
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: seen.update(
        {line.get_label(): line.get_color() for line in fig.axes[0].get_lines()}))
    report.plot_panels(curves, "accuracy", tmp_path / "c.png", "t")
    assert list(seen) == starts and len(set(seen.values())) == len(starts)
    assert seen["normal"] == report.COLOURS["normal"] and seen["sophon-ice"] == report.COLOURS["sophon-ice"]
