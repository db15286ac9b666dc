"""A causal LM seen two ways (DESIGN §1, text):

- restricted task: sentence classification through `head`, which attackers replace, from the hidden
  state of the last real token (`pool="last"`, HF's GPT2ForSequenceClassification) or the mean over
  real tokens (`pool="mean"`);
- original task: next-token prediction through `lm_head`, a *frozen copy* of the pre-trained output
  embedding (for GPT-2, the tied `wte`), so SOPHON can only keep the LM skill through the body.
"""

import torch
import torch.nn.functional as F
from torch import nn


class CausalLMClassifier(nn.Module):
    POOLS = ("last", "mean")

    def __init__(self, lm: nn.Module, num_classes: int = 2, pool: str = "last"):
        super().__init__()
        if pool not in self.POOLS:
            raise ValueError(f"unknown pool {pool!r}; choose one of {', '.join(self.POOLS)}")
        self.pool = pool
        self.body = lm.base_model  # GPT2Model for GPT-2; LlamaModel for SmolLM2; ...
        out = lm.get_output_embeddings()
        self.lm_head = nn.Linear(out.in_features, out.out_features, bias=out.bias is not None)
        self.lm_head.weight = nn.Parameter(out.weight.detach().clone(), requires_grad=False)
        if out.bias is not None:
            self.lm_head.bias = nn.Parameter(out.bias.detach().clone(), requires_grad=False)
        self.head = nn.Linear(out.in_features, num_classes, bias=False)
        self.config = lm.config

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Batches are right-padded to a fixed length; cut to the longest real sequence to save work.
        length = int(attention_mask.sum(1).max())
        return self.body(input_ids=input_ids[:, :length], attention_mask=attention_mask[:, :length]).last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Class logits (N, C), pooled over each sequence's real tokens."""
        h = self.hidden(input_ids, attention_mask)
        if self.pool == "mean":
            m = attention_mask[:, :h.shape[1]].unsqueeze(-1).to(h.dtype)
            return self.head((h * m).sum(1) / m.sum(1).clamp_min(1))
        last = attention_mask.sum(1).long() - 1
        return self.head(h[torch.arange(h.shape[0], device=h.device), last])

    def lm_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.hidden(input_ids, attention_mask))


def next_token_nll(model: CausalLMClassifier, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   reduction: str = "mean") -> torch.Tensor:
    """Token-level cross-entropy of next-token prediction over all real positions."""
    logits = model.lm_logits(input_ids, attention_mask)
    length = logits.shape[1]
    targets = input_ids[:, 1:length].masked_fill(attention_mask[:, 1:length] == 0, -100)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=-100, reduction=reduction)
