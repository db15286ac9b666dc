"""The GPT-2 notebook runs top to bottom on a small model, and its figure is written."""

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from sophon.protect import ProtectConfig, protect
from sophon.settings import text
from tests.text_fixtures import save_small_gpt2, text_args

NOTEBOOK = Path(__file__).resolve().parents[1] / "classification" / "experiment_sophon_on_gpt2.ipynb"


def test_notebook_executes(tmp_path, monkeypatch):
    folder = save_small_gpt2(tmp_path / "model")
    args = text_args(folder, train_size=32, test_size=32)
    model = text.build_model(args, "normal")
    protect(model, text.build_task(args, "ice"),
            ProtectConfig(lr=1e-3, bs=8, total_loop=2, adaptation_steps=1, test_iterval=2, finetune_epochs=0,
                          guard=0), tmp_path / "run")
    env = {"SOPHON_NB_ARCH": "tiny-gpt2", "SOPHON_NB_PRETRAINED": str(folder), "SOPHON_NB_SEEDS": "2", "SOPHON_NB_CHECKPOINT": str(tmp_path / "run/checkpoints/final.safetensors"),
           "SOPHON_NB_TRAIN_SIZE": "32", "SOPHON_NB_TEST_SIZE": "32", "SOPHON_NB_EPOCHS": "1",
           "SOPHON_NB_OUT": str(tmp_path / "out"), "SOPHON_NB_ROOT": str(tmp_path / "results")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "zero-shot accuracy" in printed and "checkpoint" in printed
    # Both attacks on the three starts, two seeds each, and a verdict per attack for the SOPHON start.
    rows = json.loads((tmp_path / "out" / "notebook.json").read_text())["rows"]
    assert sorted((r["start"], r["seeds"]) for r in rows) == sorted((s, 2) for s in ("normal", "sophon", "scratch")
                                                                    for _ in range(2))
    assert printed.count("P = ") == 2
    assert (tmp_path / "out" / "three_curves.png").stat().st_size > 10_000
