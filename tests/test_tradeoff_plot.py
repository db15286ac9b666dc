"""tools/tradeoff_plot.py: each model's original share and P per attack, read from --compare results."""

import json

import pytest

from tests.tool_module import load


def _tool():
    return load("tradeoff_plot")


def _verdict(start, attack, p, separates=True):
    verdict = "held" if separates and p >= 0.9 else ("no separation" if not separates else "not held")
    return {"start": start, "attack": attack, "separates": separates, "protection": p,
            "protection_ci": [p - 0.1, p + 0.1], "verdict": verdict}


def _results(path, models: dict) -> str:
    rows = [{"start": "normal", "original": {"accuracy": 0.8}}, {"start": "scratch", "original": {}}]
    rows += [{"start": name, "original": {"accuracy": acc}} for name, (acc, _) in models.items()]
    verdicts = [v for _, (_, vs) in models.items() for v in vs]
    path.write_text(json.dumps({"higher_is_better": True, "rows": rows, "verdicts": verdicts}))
    return str(path)


def test_it_reads_shares_and_verdicts_and_draws_one_panel_per_attack(tmp_path, capsys):
    tool = _tool()
    a = _results(tmp_path / "a.json", {"strong": (0.72, [_verdict("strong", "x", 1.2), _verdict("strong", "y", 0.3)])})
    b = _results(tmp_path / "b.json", {"weak": (0.78, [_verdict("weak", "x", 0.95), _verdict("weak", "y", 0.1),
                                                        _verdict("weak", "z", 0.0, separates=False)])})
    models = tool.load([a, b])
    assert models["strong"]["original"] == pytest.approx(0.9) and models["weak"]["original"] == pytest.approx(0.975)
    out = tmp_path / "tradeoff.png"
    tool.main(["--results", a, b, "--out", str(out)])
    printed = capsys.readouterr().out
    assert out.stat().st_size > 0
    # The default panels: every separating attack some model does not hold (y), not the held x, not the unseparated z.
    assert "`y` P" in printed and "`x` P" not in printed and "`z` P" not in printed
    assert "| weak | 97.5 % | 1 / 2 | 0.10 |" in printed and "| strong | 90.0 % | 1 / 2 | 0.30 |" in printed


def test_an_unknown_attack_or_file_is_one_line_and_exit_2(tmp_path, capsys):
    tool = _tool()
    a = _results(tmp_path / "a.json", {"m": (0.7, [_verdict("m", "x", 1.0)])})
    for argv in (["--results", a, "--attacks", "nope", "--out", str(tmp_path / "p.png")],
                 ["--results", str(tmp_path / "missing.json"), "--out", str(tmp_path / "p.png")]):
        with pytest.raises(SystemExit) as exit_:
            tool.main(argv)
        assert exit_.value.code == 2
        assert capsys.readouterr().err.count("\n") == 1
