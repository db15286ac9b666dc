import math

import pytest
import torch
import torch.nn.functional as F

from sophon.data import DataUnavailableError
from sophon.models.causal_lm import next_token_nll
from sophon.settings import text
from tests.text_fixtures import save_small_gpt2, text_args


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = save_small_gpt2(tmp_path_factory.mktemp("gpt2"))
    args = text_args(folder)
    return args, text.build_task(args, "ice")


def test_model_loads_through_save_pretrained_and_freezes_lm_head(small):
    args, task = small
    model = text.build_model(args, "normal")
    lm, _ = text.load_pretrained(args.pretrained, args.arch)
    torch.testing.assert_close(model.lm_head.weight, lm.get_output_embeddings().weight)
    assert not model.lm_head.weight.requires_grad
    ids, mask, labels = task.restricted_train.tensors
    assert model(ids[:4], mask[:4]).shape == (4, 2)


def test_scratch_differs_from_normal_but_has_same_shapes(small):
    args, _ = small
    normal, scratch = text.build_model(args, "normal"), text.build_model(args, "scratch")
    n, s = normal.state_dict(), scratch.state_dict()
    assert n.keys() == s.keys() and all(n[k].shape == s[k].shape for k in n)
    assert not torch.equal(n["body.h.0.attn.c_attn.weight"], s["body.h.0.attn.c_attn.weight"])


def test_next_token_nll_matches_manual_loss(small):
    args, task = small
    model = text.build_model(args, "normal").eval()
    ids, mask = task.original_test.tensors
    ids, mask = ids[:3], mask[:3]
    logits = model.lm_logits(ids, mask)
    terms = []
    for b in range(3):
        n = int(mask[b].sum())
        terms += [F.cross_entropy(logits[b, t:t + 1], ids[b, t + 1:t + 2]) for t in range(n - 1)]
    assert next_token_nll(model, ids, mask).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def test_perplexity_is_exp_of_mean_token_nll(small):
    args, task = small
    model = text.build_model(args, "normal").eval()
    metrics = task.evaluate_original(model)
    ids, mask = task.original_test.tensors
    nll = next_token_nll(model, ids, mask).item()
    assert metrics["perplexity"] == pytest.approx(math.exp(nll), rel=1e-4)
    assert 0.0 <= metrics["last_token_accuracy"] <= 1.0


def test_learner_head_is_fresh_and_body_is_a_copy(small):
    args, task = small
    model = text.build_model(args, "normal")
    learner = task.learner(model)
    assert learner.head is not model.head and not torch.equal(learner.head.weight, model.head.weight)
    torch.testing.assert_close(learner.body.wte.weight, model.body.wte.weight)
    learner.body.wte.weight.data.add_(1.0)
    assert not torch.equal(learner.body.wte.weight, model.body.wte.weight)


def test_tokenised_data_is_cached(small, monkeypatch):
    args, _ = small
    _, tokenizer = text.load_pretrained(args.pretrained, args.arch)
    first = text.encode(tokenizer, ["a cached sentence"], 16)
    monkeypatch.setattr(type(tokenizer), "__call__", lambda *a, **k: pytest.fail("tokenised again"))
    second = text.encode(tokenizer, ["a cached sentence"], 16)
    assert torch.equal(first[0], second[0]) and first[1].sum() == second[1].sum()


def test_missing_pretrained_tiny_gpt2_says_how_to_make_it(tmp_path):
    with pytest.raises(DataUnavailableError, match="classification/pretrain.py"):
        text.build_model(text_args(tmp_path / "nothing"), "normal")


def test_unreachable_hub_model_names_the_flag():
    with pytest.raises(DataUnavailableError, match="--pretrained"):
        text.load_pretrained("no-such-org/no-such-model", "gpt2")


def test_unknown_restricted_dataset(tmp_path):
    folder = save_small_gpt2(tmp_path / "m")
    with pytest.raises(ValueError, match="unknown --dataset 'CIFAR10'"):
        text.build_task(text_args(folder, dataset="CIFAR10"), "ice")


def test_mean_pooling_ignores_padding_and_differs_from_last_token(tmp_path):
    from sophon.models.causal_lm import CausalLMClassifier

    folder = save_small_gpt2(tmp_path / "m")
    lm, _ = text.load_pretrained(str(folder), "tiny-gpt2")
    mean = CausalLMClassifier(lm, pool="mean").eval()
    last = CausalLMClassifier(lm, pool="last").eval()
    last.head.weight.data.copy_(mean.head.weight.data)
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        h = mean.hidden(ids[:1, :3], mask[:1, :3])
        torch.testing.assert_close(mean(ids, mask)[0], mean.head(h[0].mean(0)))  # padding left out
        assert not torch.allclose(mean(ids, mask), last(ids, mask))
    with pytest.raises(ValueError, match="unknown pool 'max'"):
        CausalLMClassifier(lm, pool="max")


def test_a_built_model_does_not_depend_on_the_global_rng(tmp_path):
    """Two builds of one start are the same weights, head included, whatever the global RNG did before:
    the attack cache keys a curve by this fingerprint. The global RNG is left as it was."""
    from sophon.experiment import fingerprint
    from sophon.settings import text
    from tests.text_fixtures import save_small_gpt2, text_args

    args = text_args(save_small_gpt2(tmp_path / "model"))
    for start in ("normal", "scratch"):
        torch.manual_seed(1)
        first = fingerprint(text.build_model(args, start))
        torch.manual_seed(2)
        state = torch.get_rng_state()
        second = text.build_model(args, start)
        assert torch.equal(torch.get_rng_state(), state)
        assert fingerprint(second) == first


def test_a_standardised_linear_probe_runs_on_the_pooled_features(small):
    """standardize=1 on a text learner: the head reads the pooled hidden state standardised over the training
    sentences, only the head trains, and the model attacked is left as it was."""
    from sophon.attack import Standardized, finetune, parse_attack

    args, task = small
    model = text.build_model(args, "normal")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    learners = []
    curve = finetune(model, task, parse_attack("adam:3e-3:epochs=1:method=head:standardize=1", bs=16), seed=0,
                     progress=False, after=learners.append)
    learner = learners[0]
    assert isinstance(learner.head, Standardized) and learner.head.mean.shape == (model.head.in_features,)
    assert [n for n, p in learner.named_parameters() if p.requires_grad] == ["head.head.weight"]
    assert 0.0 <= curve[-1]["accuracy"] <= 1.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
