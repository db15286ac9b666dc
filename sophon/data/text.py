"""Text datasets: restricted (labelled sentiment) and original (plain text for next-token prediction).

Embedded, offline: RT (restricted) and NEWS (original), from the vaderSentiment source archive.
Real: IMDB and PILE from the Hugging Face hub, or local copies under --data_root:
    DATA_ROOT/imdb/train*.{parquet,csv,jsonl}   columns `text`, `label` (0 negative, 1 positive)
    DATA_ROOT/imdb/test*.{parquet,csv,jsonl}
    DATA_ROOT/pile/train*.jsonl                  one {"text": ...} per line (also val*/test*)
The hub's own parquet layout (imdb/plain_text/train-00000-of-00001.parquet) is found too.
"""

import random
from dataclasses import dataclass
from pathlib import Path

from sophon.data import DataUnavailableError
from sophon.data.vader_archive import read_rated_sentences

RESTRICTED_TEXT = ("RT", "IMDB")
ORIGINAL_TEXT = ("NEWS", "PILE")
NEUTRAL_BAND = 0.5  # RT ratings with |mean| below this are too close to neutral to label
TEST_SIZE = {"RT": 2000, "NEWS": 1000}


@dataclass
class TextSet:
    texts: list[str]
    labels: list[int] | None = None  # None for original-domain (unlabelled) text

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int | None) -> "TextSet":
        if n is None or n >= len(self):
            return self
        return TextSet(self.texts[:n], None if self.labels is None else self.labels[:n])


def _shuffled_split(items: list, name: str, split: str) -> list:
    items = list(items)
    random.Random(0).shuffle(items)  # fixed: the same test set for every run and every model
    n_test = TEST_SIZE[name]
    return items[:n_test] if split == "test" else items[n_test:]


def load_rt(split: str) -> TextSet:
    rated = [(r, t) for r, t in read_rated_sentences("movieReviewSnippets_GroundTruth.txt") if abs(r) >= NEUTRAL_BAND]
    rows = _shuffled_split(rated, "RT", split)
    return TextSet([t for _, t in rows], [int(r > 0) for r, _ in rows])


def load_news(split: str) -> TextSet:
    rows = []
    for name in ("nytEditorialSnippets_GroundTruth.txt", "amazonReviewSnippets_GroundTruth.txt",
                 "tweets_GroundTruth.txt"):
        rows += [t for _, t in read_rated_sentences(name)]
    return TextSet(_shuffled_split(rows, "NEWS", split))


def _local_files(data_root: str | None, folder: str, split: str) -> list[Path]:
    if not data_root:
        return []
    base = Path(data_root) / folder
    names = {"train": ("train",), "test": ("test", "val", "validation")}[split]
    found = []
    for stem in names:
        for ext in ("parquet", "csv", "jsonl"):
            found += sorted(base.glob(f"**/{stem}*.{ext}"))
        if found:
            break
    return found


def _read_table(paths: list[Path]) -> list[dict]:
    """Rows of local parquet / csv / jsonl files, read with `datasets` (one builder per file type)."""
    from datasets import concatenate_datasets, load_dataset

    builder = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json"}
    parts = [load_dataset(builder[p.suffix], data_files=str(p), split="train") for p in paths]
    return concatenate_datasets(parts).to_list() if len(parts) > 1 else parts[0].to_list()


def load_imdb(split: str, data_root: str | None, max_examples: int | None) -> TextSet:
    files = _local_files(data_root, "imdb", split)
    if files:
        rows = _read_table(files)
        missing = {"text", "label"} - set(rows[0]) if rows else {"text", "label"}
        if missing:
            raise DataUnavailableError(f"{files[0]} lacks column(s) {sorted(missing)}; IMDB files need `text` and `label`")
    else:
        rows = _from_hub("stanfordnlp/imdb", split, None, data_root, "imdb/train.parquet and imdb/test.parquet")
    random.Random(0).shuffle(rows)  # hub files are sorted by label; a prefix must hold both classes
    rows = [r for r in rows if int(r["label"]) in (0, 1)][:max_examples]
    return TextSet([str(r["text"]) for r in rows], [int(r["label"]) for r in rows])


def load_pile(split: str, data_root: str | None, max_examples: int | None) -> TextSet:
    files = _local_files(data_root, "pile", split)
    if files:
        rows = _read_table(files)[:max_examples]
    else:
        rows = _from_hub("monology/pile-uncopyrighted", "train" if split == "train" else "validation",
                         max_examples, data_root, "pile/train.jsonl and pile/val.jsonl")
    return TextSet([str(r["text"]) for r in rows])


def _from_hub(repo: str, split: str, max_examples: int | None, data_root, layout: str) -> list[dict]:
    try:
        import datasets

        if max_examples is None:
            return list(datasets.load_dataset(repo, split=split))
        stream = datasets.load_dataset(repo, split=split, streaming=True)
        return [row for _, row in zip(range(max_examples), stream)]
    except Exception as err:  # no hub access, or the id moved: say what to do instead
        where = f"--data_root {data_root} has none" if data_root else "no --data_root given"
        raise DataUnavailableError(
            f"could not load {repo} from the Hugging Face hub ({type(err).__name__}: {str(err)[:200]}); "
            f"{where}. Put a local copy under --data_root as {layout} (see sophon/data/text.py), or use "
            "the embedded sets: --dataset RT --original NEWS") from None


def load_text(name: str, split: str, data_root: str | None = None, max_examples: int | None = None) -> TextSet:
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; use train or test")
    if name == "RT":
        return load_rt(split).head(max_examples)
    if name == "NEWS":
        return load_news(split).head(max_examples)
    if name == "IMDB":
        return load_imdb(split, data_root, max_examples)
    if name == "PILE":
        return load_pile(split, data_root, max_examples)
    raise ValueError(f"unknown text dataset {name!r}; restricted: {', '.join(RESTRICTED_TEXT)}; "
                     f"original: {', '.join(ORIGINAL_TEXT)}")
