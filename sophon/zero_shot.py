"""Zero-shot prompt sentiment of a causal LM: does " positive" or " negative" come next?

The first part of the NLP fork's notebook: how much sentiment a pre-trained LM knows before any
fine-tuning, read from the original LM head alone.
"""

import torch

from sophon.models.causal_lm import CausalLMClassifier

TEMPLATE = "Review: {text}\nSentiment:"
ANSWERS = (" negative", " positive")  # label 0, label 1


@torch.no_grad()
def prompt_sentiment_accuracy(model: CausalLMClassifier, tokenizer, texts: list[str], labels: list[int],
                              template: str = TEMPLATE, answers: tuple[str, str] = ANSWERS,
                              max_len: int = 128, batch_size: int = 32) -> float:
    """Accuracy of comparing the next-token logits of the first token of each answer word."""
    answer_ids = [tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in answers]
    if answer_ids[0] == answer_ids[1]:
        raise ValueError(f"the answers {answers} start with the same token; pick other words")
    device = next(model.parameters()).device
    config = model.config
    max_len = min(max_len, getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", max_len))
    prefix, _, suffix = template.partition("{text}")
    # Byte-level BPE attaches a space to the word after it: move the prefix's trailing space onto the
    # review, so the pieces tokenise exactly as the whole prompt would.
    lead = prefix[len(prefix.rstrip()):]
    prefix = prefix.rstrip()
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    budget = max_len - len(prefix_ids) - len(suffix_ids)  # cut the review, never the prompt's tail
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    correct = 0
    for i in range(0, len(texts), batch_size):
        rows = [prefix_ids + tokenizer(lead + t, add_special_tokens=False)["input_ids"][:budget] + suffix_ids
                for t in texts[i:i + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        logits = model.lm_logits(ids, mask)
        last = mask.sum(1) - 1
        scores = logits[torch.arange(len(rows), device=device), last][:, answer_ids]
        correct += int((scores.argmax(-1).cpu() == torch.tensor(labels[i:i + batch_size])).sum())
    return correct / len(texts)
