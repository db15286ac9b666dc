"""Text setting: a causal LM made non-fine-tunable on sentiment classification (restricted) while it
keeps next-token prediction on general text (original). The NLP fork's setting: GPT-2, IMDB, Pile.
"""

import copy
import hashlib
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import TensorDataset

from sophon.config import option
from sophon.data import DataUnavailableError, cache_dir
from sophon.device import device_of
from sophon.data.text import ORIGINAL_TEXT, RESTRICTED_TEXT, load_text
from sophon.losses import CLASSIFICATION_LOSSES
from sophon.models.causal_lm import CausalLMClassifier, next_token_nll
from sophon.train import train_steps
from sophon.task import replace_head

NAME = "text"  # the setting's name in suites and tables
ARCHS = ("tiny-gpt2", "gpt2", "smollm2", "smollm2-cut")
REPO = Path(__file__).resolve().parents[2]
PRETRAINED_DIR = REPO / "classification" / "pretrained"


@dataclass
class TextConfig:
    """text setting"""
    max_len: int = option(256, "tokens per example (longer text is cut)", above=0)
    train_size: int | None = option(None, "restricted training examples (few-shot subset; all if unset)", above=0)
    original_size: int | None = option(None, "original-domain examples to load (Pile stream; all if unset)",
                                       above=0)
    test_size: int = option(2000, "restricted/original test examples", above=0)
    blocks: int | None = option(None, "keep only the first N transformer blocks of the pre-trained LM (all if unset)",
                                above=0)
    pool: str = option("last", "classifier input: last real token (HF GPT2ForSequenceClassification) or mean of "
                               "tokens", choices=CausalLMClassifier.POOLS)


@dataclass
class TextPretrainConfig:
    """tiny-gpt2 pre-training"""
    steps: int = option(1500, "AdamW steps", above=0)
    pretrain_lr: float = option(3e-3, "peak lr (one-cycle)", above=0)
    unlabelled: str = option("RT", "restricted set whose training texts, labels dropped, join the pre-training corpus "
                                   "(as web text holds reviews); 'none' pre-trains on the original set alone")
    force: bool = option(False, "pre-train again even if cached")
    # The model's shape.
    vocab_size: int = option(4096, "BPE vocabulary size", above=0)
    n_layer: int = option(4, "transformer blocks", above=0)
    n_embd: int = option(128, "width", above=0)
    n_head: int = option(4, "attention heads", above=0)


CONFIG, PRETRAIN_CONFIG = TextConfig, TextPretrainConfig
# The fork's pair (GPT-2, IMDB against the Pile); smollm2 is run the same way.
_PILE = dict(dataset="IMDB", original="PILE", original_size=20000, lr=1e-5, bs=8, total_loop=200, adaptation_steps=10,
             test_iterval=50, truly_finetune_epochs=1, finetune_bs=8, attacks="sgd,adam:2e-5,sgd-momentum:1e-4",
             suite_lr_scale=0.1)
PRESETS = {
    "tiny-gpt2": dict(dataset="RT", original="NEWS", max_len=48, pool="mean", train_size=1000, alpha=1.0, beta=1.0,
                      lr=1e-3, fast_lr=5e-2, total_loop=200, test_iterval=50, truly_finetune_epochs=4,
                      finetune_lr=5e-2, attacks="sgd-momentum:5e-2,adam:3e-4"),
    "gpt2": dict(_PILE),
    "smollm2": dict(_PILE),
    # The real pre-trained LM: SmolLM2-135M's first 2 of 30 blocks (35 M parameters, 28 M of them the tied
    # embedding). Normal beats scratch by >= 8 points under 8 of 10 attacks with 2 blocks as with 4, at ~0.9 s
    # instead of ~1.5 s per step on 2 cores (README). RT sentences are short (median 25 tokens, 90 % within 40).
    # The SOPHON recipe is the one that held every separating attack (3 SOPHON seeds, README): a new simulated
    # attacker pair every FTS step (Adam, RMSprop, ... at u/10..10u; a fixed plain-SGD one taught nothing, it
    # does not move this model), 20 inner steps, the closed-form linear probe, and an FTS step of 3 x lr (at
    # 1 x lr without the probe ICE held 3 of 6, KLU 2, NTR alone 2). 0.8-1.4 s per iteration on a shared H100,
    # 16-55 s on 2 cores.
    "smollm2-cut": dict(dataset="RT", original="NEWS", blocks=2, max_len=40, pool="mean", train_size=1000,
                        alpha=3.0, beta=1.0, fast_lr=1e-2, total_loop=150, test_iterval=10, finetune_epochs=0,
                        attackers="sampled", envs=2, adaptation_steps=20, suppress_every=5, late_weight=1.0,
                        query_bs=32, probe_weight=0.1,
                        truly_finetune_epochs=2, finetune_lr=5e-2, attacks="sgd-momentum:1e-2,adam:3e-4"),
}


# ---- models ----------------------------------------------------------------------------------
def default_pretrained(args) -> str:
    if args.pretrained:
        return args.pretrained
    if args.arch == "tiny-gpt2":
        return str(PRETRAINED_DIR / f"tiny-gpt2_{args.original}")
    if args.arch == "gpt2":
        return "gpt2"
    return "smollm2"


@lru_cache(maxsize=4)
def load_pretrained(source: str, arch: str, blocks: int | None = None):
    """(causal LM, tokenizer) from a save_pretrained folder, a hub id, or the SmolLM2 GGUF; with
    `blocks`, the LM keeps only its first `blocks` transformer blocks (its final norm stays)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {}
    if arch.startswith("smollm2") and source == "smollm2":
        from importlib.util import find_spec

        from sophon.models.smollm2 import gguf_path
        if find_spec("gguf") is None:
            raise DataUnavailableError(f"--arch {arch} reads a GGUF, which needs the gguf package: "
                                       "`pip install gguf==0.19.0` (it is in requirements.txt)")
        path = gguf_path()
        source, kwargs["gguf_file"] = str(path.parent), path.name
    if arch == "tiny-gpt2" and not Path(source).exists():
        raise DataUnavailableError(f"no pre-trained tiny-gpt2 at {source}; create it with "
                                   "`python classification/pretrain.py --arch tiny-gpt2` (cached, ~3 min on 2 cores)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        lm = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as err:
        raise DataUnavailableError(
            f"could not load {source!r} ({str(err).splitlines()[0][:200]}). With no Hugging Face hub access, "
            "pass --pretrained /path/to/folder written by save_pretrained (config.json, model.safetensors, "
            "tokenizer files)") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if blocks is not None:
        lm = cut_blocks(lm, blocks)
    return lm, tokenizer


def cut_blocks(lm: nn.Module, blocks: int) -> nn.Module:
    """The LM with only its first `blocks` transformer blocks; its config says so, so that
    `from_config` (the scratch start, export) builds the same cut."""
    layers = getattr(lm.base_model, "layers", None) or getattr(lm.base_model, "h", None)  # Llama-like, GPT-2
    if layers is None:
        raise ValueError(f"--blocks: cannot find the transformer blocks of {type(lm.base_model).__name__}")
    if not 1 <= blocks <= len(layers):
        raise ValueError(f"--blocks {blocks}: the model has {len(layers)} blocks; choose 1..{len(layers)}")
    del layers[blocks:]
    key = "num_hidden_layers" if hasattr(lm.config, "num_hidden_layers") else "n_layer"
    setattr(lm.config, key, blocks)
    if isinstance(getattr(lm.config, "layer_types", None), list):  # per-block attention kinds, where kept
        lm.config.layer_types = lm.config.layer_types[:blocks]
    return lm


def build_model(args, start: str) -> nn.Module:
    from transformers import AutoModelForCausalLM

    if start not in ("normal", "scratch"):
        raise ValueError(f"unknown start {start!r}; use normal or scratch")
    lm, _ = load_pretrained(default_pretrained(args), args.arch, args.blocks)
    # The same weights at every build, the classification head included, and the global RNG untouched: a
    # model's fingerprint (the attack cache's key) must not depend on what ran before in the process.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed + 12345 if start == "scratch" else args.seed)  # scratch: not pre-training's seed
        if start == "scratch":
            lm = AutoModelForCausalLM.from_config(lm.config)
        model = CausalLMClassifier(copy.deepcopy(lm), num_classes=2, pool=args.pool)
    if args.grad_checkpointing:
        # Recompute each block's activations in the backward pass: memory for time, on long inputs.
        # (Only in train mode; the non-reentrant form also serves torch.autograd.grad in the simulation.)
        enable = getattr(model.body, "activation_checkpointing_enable", None)  # newer transformers' name
        if enable:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.body.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.to(device_of(args))


# ---- data ------------------------------------------------------------------------------------
def encode(tokenizer, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and masks, right-padded to max_len; cached on disk by (tokenizer, texts, max_len)."""
    # The backend's JSON also records the last call's padding/truncation settings: leave those out.
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.pop("truncation", None), spec.pop("padding", None)
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    h.update(str(max_len).encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    path = cache_dir() / "tokenized" / f"{h.hexdigest()[:24]}.safetensors"
    if path.exists():
        t = load_file(str(path))
        return t["input_ids"], t["attention_mask"]
    # An end-of-text token closes every example, as in GPT-2 pre-training, so the last real token
    # is the same kind of position for every sentence.
    texts = [t + tokenizer.eos_token for t in texts]
    enc = tokenizer(texts, max_length=max_len, truncation=True, padding="max_length", return_tensors="pt")
    ids, mask = enc["input_ids"].long(), enc["attention_mask"].long()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"input_ids": ids, "attention_mask": mask}, str(path))
    return ids, mask


def by_length(dataset: TensorDataset) -> TensorDataset:
    """The same examples, shortest first (the mask is the second tensor)."""
    order = torch.argsort(dataset.tensors[1].sum(1), stable=True)
    return TensorDataset(*(t[order] for t in dataset.tensors))


class TextTask:
    head_prefix = "head"
    original_metric, original_higher_is_better = "perplexity", False
    restricted_metric, restricted_higher_is_better = "accuracy", True

    def __init__(self, restricted_train: TensorDataset, restricted_test: TensorDataset,
                 original_train: TensorDataset, original_test: TensorDataset, suppression: str,
                 device: torch.device, cache_key: str = "", eval_bs: int = 64):
        """Datasets hold (input_ids, attention_mask[, label]) tensors, right-padded."""
        if suppression not in CLASSIFICATION_LOSSES:
            raise ValueError(f"unknown suppression loss {suppression!r}; choose one of {', '.join(CLASSIFICATION_LOSSES)}")
        self.suppression = CLASSIFICATION_LOSSES[suppression]
        self.restricted_train, self.original_train = restricted_train, original_train
        # Test sets are read in order of length: each evaluation batch is then cut to nearly its
        # examples' own length (CausalLMClassifier.hidden), which halves the cost of evaluating.
        self.restricted_test, self.original_test = by_length(restricted_test), by_length(original_test)
        self.num_classes = int(restricted_train.tensors[2].max()) + 1
        self.device, self.eval_bs, self.cache_key = device, eval_bs, cache_key

    # -- the Task protocol --
    def learner(self, model: CausalLMClassifier) -> nn.Module:
        return replace_head(model, "head", nn.Linear(model.head.in_features, self.num_classes, bias=False))

    def finetune_loss(self, learner, batch) -> torch.Tensor:
        ids, mask, labels = batch
        return F.cross_entropy(learner(ids, mask).float(), labels)

    def suppression_loss(self, learner, batch) -> torch.Tensor:
        ids, mask, labels = batch
        return self.suppression(learner(ids, mask), labels)

    def original_loss(self, model, batch) -> torch.Tensor:
        ids, mask = batch
        return next_token_nll(model, ids, mask)

    @torch.no_grad()
    def evaluate_original(self, model) -> dict[str, float]:
        """Perplexity over all real tokens, and the fork's last-token accuracy: the final real token
        of each example (before end-of-text) predicted from its prefix."""
        total_nll, total_tokens, correct, count = 0.0, 0, 0, 0
        ids_all, mask_all = self.original_test.tensors
        for i in range(0, len(ids_all), self.eval_bs):
            ids, mask = ids_all[i:i + self.eval_bs].to(self.device), mask_all[i:i + self.eval_bs].to(self.device)
            nll = next_token_nll(model, ids, mask, reduction="sum")
            total_nll += nll.item()
            total_tokens += int(mask[:, 1:].sum())
            logits = model.lm_logits(ids, mask)
            pos = mask.sum(1).long() - 3  # predicts the token at len-2 (len-1 is end-of-text)
            ok = pos >= 0
            rows = torch.arange(ids.shape[0], device=ids.device)[ok]
            pred = logits[rows, pos[ok]].argmax(-1)
            correct += int((pred == ids[rows, pos[ok] + 1]).sum())
            count += int(ok.sum())
        return {"perplexity": math.exp(total_nll / max(1, total_tokens)),
                "last_token_accuracy": correct / max(1, count)}

    @torch.no_grad()
    def evaluate_restricted(self, learner) -> dict[str, float]:
        ids_all, mask_all, labels_all = self.restricted_test.tensors
        correct = 0
        for i in range(0, len(ids_all), self.eval_bs):
            logits = learner(ids_all[i:i + self.eval_bs].to(self.device), mask_all[i:i + self.eval_bs].to(self.device))
            correct += int((logits.argmax(-1).cpu() == labels_all[i:i + self.eval_bs]).sum())
        return {"accuracy": correct / len(labels_all)}


def build_task(args, suppression: str) -> TextTask:
    if args.dataset not in RESTRICTED_TEXT:
        raise ValueError(f"unknown --dataset {args.dataset!r} for a language model; choose one of {', '.join(RESTRICTED_TEXT)}")
    if args.original not in ORIGINAL_TEXT:
        raise ValueError(f"unknown --original {args.original!r}; choose one of {', '.join(ORIGINAL_TEXT)}")
    _, tokenizer = load_pretrained(default_pretrained(args), args.arch, args.blocks)

    def tensors(name, split, limit, labelled):
        data = load_text(name, split, args.data_root, limit)
        ids, mask = encode(tokenizer, data.texts, args.max_len)
        return TensorDataset(ids, mask, torch.tensor(data.labels)) if labelled else TensorDataset(ids, mask)

    r_train = tensors(args.dataset, "train", args.train_size, True)
    r_test = tensors(args.dataset, "test", args.test_size, True)
    key = f"{args.dataset}:{len(r_train)}/{len(r_test)}|{args.original}|len{args.max_len}|pool{args.pool}"
    return TextTask(r_train, r_test, tensors(args.original, "train", args.original_size, False),
                    tensors(args.original, "test", args.test_size, False), suppression,
                    device_of(args), cache_key=key)


# ---- pre-training (tiny-gpt2 only; real LMs come pre-trained) ---------------------------------
def pretrain(args) -> Path:
    from sophon.models import tiny_gpt2

    if args.arch != "tiny-gpt2":
        raise ValueError(f"--arch {args.arch} comes pre-trained; pass it with --pretrained. "
                         "Only tiny-gpt2 is pre-trained here.")
    folder = Path(args.pretrained) if args.pretrained else PRETRAINED_DIR / f"tiny-gpt2_{args.original}"
    if (folder / "config.json").exists() and not args.force:
        print(f"pre-trained tiny-gpt2 already cached at {folder} (use --force to train again)")
        return folder
    torch.manual_seed(args.seed)
    device = device_of(args)
    texts = load_text(args.original, "train", args.data_root, args.original_size).texts
    if args.unlabelled.lower() != "none":
        # Only the training split, and never its labels: the test sentences stay unseen. Without these
        # texts a 1M-parameter LM pre-trained on 12k NEWS sentences fine-tunes on RT no better than a
        # random one (README, text results), and the experiment would mean nothing.
        if args.unlabelled not in RESTRICTED_TEXT:
            raise ValueError(f"unknown --unlabelled {args.unlabelled!r}; choose one of {', '.join(RESTRICTED_TEXT)} or none")
        texts = texts + load_text(args.unlabelled, "train", args.data_root).texts
    tokenizer = tiny_gpt2.train_tokenizer(texts, args.vocab_size)
    lm = tiny_gpt2.new_model(len(tokenizer), args.n_layer, args.n_embd, args.n_head, max(64, args.max_len)).to(device)
    model = CausalLMClassifier(lm)
    model.lm_head = lm.lm_head  # pre-training trains the tied output embedding too
    ids, mask = encode(tokenizer, texts, args.max_len)
    optimizer = torch.optim.AdamW(lm.parameters(), lr=args.pretrain_lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.pretrain_lr, total_steps=args.steps, pct_start=0.05)
    g = torch.Generator().manual_seed(args.seed)
    lm.train()

    def loss_at(_):
        idx = torch.randint(0, len(ids), (args.bs,), generator=g)
        return next_token_nll(model, ids[idx].to(device), mask[idx].to(device))

    train_steps(lm.parameters(), loss_at, optimizer, schedule, args.steps, "pre-train tiny-gpt2")
    lm.eval()
    tiny_gpt2.save(folder, lm.cpu(), tokenizer)
    corpus = {"original": args.original, "unlabelled": args.unlabelled, "texts": len(texts), "steps": args.steps,
              "threads": torch.get_num_threads()}  # on CPU the weights depend on it (README, Reproducibility)
    (folder / "pretraining.json").write_text(json.dumps(corpus, indent=2))
    print(f"saved pre-trained tiny-gpt2 to {folder}")
    return folder
