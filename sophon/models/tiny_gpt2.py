"""`tiny-gpt2`: a small GPT-2 (HF GPT2Config) with its own byte-level BPE tokenizer, pre-trained here
on NEWS. It is saved with `save_pretrained`, so it loads through exactly the code path of real GPT-2.
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

EOS = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS,
                                   unk_token=EOS, model_max_length=1024)


def new_model(vocab_size: int, n_layer: int, n_embd: int, n_head: int, n_positions: int) -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                        resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    return GPT2LMHeadModel(config)


def save(folder: Path, model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)  # safetensors by default
    tokenizer.save_pretrained(folder)
    return folder
