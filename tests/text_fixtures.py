"""A very small GPT-2 saved with save_pretrained, so tests exercise the real loading path."""

import argparse
from pathlib import Path

import torch

from sophon.models import tiny_gpt2
from sophon.settings import arch_args

SENTENCES = ["the film is great fun", "a dull and tired movie", "markets rose on monday",
             "the senate passed the bill", "what a lovely day", "this phone broke again"] * 5


def save_small_gpt2(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    tokenizer = tiny_gpt2.train_tokenizer(SENTENCES, vocab_size=300)
    model = tiny_gpt2.new_model(len(tokenizer), n_layer=1, n_embd=16, n_head=2, n_positions=64)
    return tiny_gpt2.save(folder, model, tokenizer)


def text_args(folder: Path, **overrides) -> argparse.Namespace:
    args = dict(pretrained=str(folder), dataset="RT", original="NEWS", max_len=32, pool="last", train_size=64,
                original_size=200, test_size=64, device="cpu")
    return arch_args("tiny-gpt2", **{**args, **overrides})
