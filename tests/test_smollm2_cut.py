"""The CPU-sized SmolLM2 preset: the first N blocks of the real 135M model, read from its GGUF."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from sophon.data import DataUnavailableError
from sophon.models import tiny_gpt2
from sophon.settings import arch_args, text


def test_cut_keeps_the_first_blocks_and_from_config_builds_the_same_cut():
    lm = tiny_gpt2.new_model(300, n_layer=3, n_embd=16, n_head=2, n_positions=32)
    second = lm.transformer.h[1].attn.c_attn.weight.clone()
    cut = text.cut_blocks(lm, 2)
    assert len(cut.transformer.h) == 2 and cut.config.n_layer == 2
    torch.testing.assert_close(cut.transformer.h[1].attn.c_attn.weight, second)
    assert len(AutoModelForCausalLM.from_config(cut.config).transformer.h) == 2  # the scratch start
    with pytest.raises(ValueError, match="choose 1..2"):
        text.cut_blocks(cut, 5)


def _gguf_or_skip():
    pytest.importorskip("gguf", reason="transformers reads the SmolLM2 GGUF through the gguf package")
    from sophon.models.smollm2 import gguf_path
    try:
        return gguf_path(fetch=False)
    except DataUnavailableError:
        pytest.skip("SmolLM2 GGUF absent from $SOPHON_CACHE/smollm2 (`bash run.sh setup` fetches it)")


def test_smollm2_cut_loads_n_blocks_from_the_gguf_with_finite_logits():
    _gguf_or_skip()
    args = arch_args("smollm2-cut", device="cpu")  # the preset: 2 blocks, mean pooling
    normal, scratch = text.build_model(args, "normal"), text.build_model(args, "scratch")
    for model in (normal, scratch):
        assert len(model.body.layers) == 2 and model.config.num_hidden_layers == 2
    _, tokenizer = text.load_pretrained("smollm2", "smollm2-cut", 2)
    ids, mask = text.encode(tokenizer, ["a gripping, funny film.", "dull and far too long."], 16)
    logits = normal(ids, mask)
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    assert torch.isfinite(normal.lm_logits(ids, mask)).all()
    # The pre-trained embedding, not a random one, and the frozen LM head is its tied copy.
    torch.testing.assert_close(normal.lm_head.weight, normal.body.embed_tokens.weight)
    assert not torch.equal(normal.body.embed_tokens.weight, scratch.body.embed_tokens.weight)


def test_cut_perplexity_tool_reads_each_depth_and_refuses_one_the_model_lacks(tmp_path, capsys):
    """tools/cut_perplexity.py: at the model's full depth it gives the whole model's perplexity, a shallower cut
    another one; a depth the model does not have is one line, exit 2."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "cut_perplexity.py"
    spec = importlib.util.spec_from_file_location("cut_perplexity", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    torch.manual_seed(0)
    tokenizer = tiny_gpt2.train_tokenizer(["the film is great fun", "markets rose on monday"] * 5, vocab_size=300)
    lm = tiny_gpt2.new_model(len(tokenizer), n_layer=2, n_embd=16, n_head=2, n_positions=64)
    with torch.no_grad():
        lm.transformer.wte.weight.mul_(50)  # peaked predictions (at init they are nearly uniform at any depth)
        lm.transformer.h[1].mlp.c_proj.weight.mul_(30)  # and a second block that moves them: the depths differ
    folder = tiny_gpt2.save(tmp_path / "lm", lm, tokenizer)
    flags = ["--arch", "gpt2", "--pretrained", str(folder), "--dataset", "RT", "--original", "NEWS",
             "--test_size", "24", "--max_len", "16", "--device", "cpu"]
    tool.main(flags + ["--blocks", "1", "2"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("blocks")]
    assert [line.split(":")[0] for line in lines] == ["blocks   1 of 2", "blocks   2 of 2"]
    expected = []
    for blocks in (1, None):  # the run's own cut (--blocks 1) and the whole model
        args = arch_args("gpt2", pretrained=str(folder), dataset="RT", original="NEWS", test_size=24, max_len=16,
                         device="cpu", blocks=blocks)
        expected.append(text.build_task(args, "ice").evaluate_original(text.build_model(args, "normal"))["perplexity"])
    shown = [float(line.split("perplexity ")[1].split(",")[0]) for line in lines]
    assert shown == [pytest.approx(e, rel=1e-3) for e in expected]
    assert expected[0] != pytest.approx(expected[1], rel=0.05)
    with pytest.raises(SystemExit) as exit_:
        tool.main(flags + ["--blocks", "3"])
    err = capsys.readouterr().err  # after transformers' loading bar: the depth is known once the model is read
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert exit_.value.code == 2 and len(errors) == 1 and "choose 1..2" in errors[0] and "Traceback" not in err
