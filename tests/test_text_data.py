import json

import pandas as pd
import pytest

from sophon.data import DataUnavailableError
from sophon.data.text import load_text


def test_embedded_rt_is_balanced_binary_and_disjoint_from_test():
    train, test = load_text("RT", "train"), load_text("RT", "test")
    assert len(test) == 2000 and len(train) > 7000
    assert set(train.labels) == {0, 1} and 0.4 < sum(train.labels) / len(train) < 0.6
    assert not set(test.texts) & set(train.texts[:2000])
    assert len(load_text("RT", "train", max_examples=100)) == 100


def test_embedded_news_is_unlabelled_text():
    news = load_text("NEWS", "train")
    assert news.labels is None and len(news) > 10000
    assert all(isinstance(t, str) and t for t in news.texts[:50])


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_local_imdb_in_hub_format(tmp_path, fmt):
    rows = [{"text": f"review {i}", "label": i % 2} for i in range(10)]
    (tmp_path / "imdb").mkdir()
    frame = pd.DataFrame(rows)
    for split in ("train", "test"):
        path = tmp_path / "imdb" / f"{split}.{fmt}"
        if fmt == "parquet":
            frame.to_parquet(path)
        elif fmt == "csv":
            frame.to_csv(path, index=False)
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_text("IMDB", "train", str(tmp_path), max_examples=6)
    assert len(data) == 6 and set(data.labels) <= {0, 1}
    assert all(t.startswith("review") for t in data.texts)


def test_local_pile_jsonl_nested_folder(tmp_path):
    folder = tmp_path / "pile" / "shard0"
    folder.mkdir(parents=True)
    (folder / "val.jsonl").write_text("".join(json.dumps({"text": f"doc {i}", "meta": {}}) + "\n" for i in range(5)))
    data = load_text("PILE", "test", str(tmp_path))
    assert data.texts == [f"doc {i}" for i in range(5)] and data.labels is None


def test_missing_real_data_names_the_flag(tmp_path):
    with pytest.raises(DataUnavailableError, match="--data_root"):
        load_text("IMDB", "train", str(tmp_path))


def test_imdb_without_label_column_is_rejected(tmp_path):
    (tmp_path / "imdb").mkdir()
    pd.DataFrame([{"review": "x"}]).to_csv(tmp_path / "imdb" / "train.csv", index=False)
    with pytest.raises(DataUnavailableError, match="label"):
        load_text("IMDB", "train", str(tmp_path))


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown text dataset 'SST'"):
        load_text("SST", "train")
