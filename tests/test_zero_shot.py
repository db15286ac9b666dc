import pytest
import torch

from sophon.settings import text
from sophon.zero_shot import prompt_sentiment_accuracy
from tests.text_fixtures import save_small_gpt2, text_args


def test_batched_padded_accuracy_equals_one_prompt_at_a_time(tmp_path):
    args = text_args(save_small_gpt2(tmp_path / "m", seed=3))
    model = text.build_model(args, "normal").eval()
    _, tokenizer = text.load_pretrained(args.pretrained, args.arch)
    texts = ["the film is great fun", "a dull movie", "what a lovely day", "markets rose", "this phone broke again"]
    labels = [1, 0, 1, 0, 0]
    first = {w: tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in (" the", " film", "a", "m")}
    answers = next((a, b) for a in first for b in first if first[a] != first[b])
    ids = [first[a] for a in answers]
    expected = 0
    with torch.no_grad():
        for t, y in zip(texts, labels):
            enc = tokenizer([f"Review: {t}\nSentiment:"], return_tensors="pt")
            last = model.lm_logits(enc["input_ids"], enc["attention_mask"])[0, -1]
            expected += int(int(last[ids[1]] > last[ids[0]]) == y)
    acc = prompt_sentiment_accuracy(model, tokenizer, texts, labels, answers=answers, batch_size=2)
    assert acc == pytest.approx(expected / len(texts))


def test_answers_sharing_a_first_token_are_rejected(tmp_path):
    args = text_args(save_small_gpt2(tmp_path / "m"))
    model = text.build_model(args, "normal")
    _, tokenizer = text.load_pretrained(args.pretrained, args.arch)
    with pytest.raises(ValueError, match="same token"):
        prompt_sentiment_accuracy(model, tokenizer, ["x"], [0], answers=(" the", " the"))
