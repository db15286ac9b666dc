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
