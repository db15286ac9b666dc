"""Dataset registry: the real loaders (hub ids, --data_root) and the embedded offline sets."""

from pathlib import Path
import os


def cache_dir() -> Path:
    """Where fetched archives and tokenised data live ($SOPHON_CACHE, default ~/.cache/sophon)."""
    path = Path(os.environ.get("SOPHON_CACHE", Path.home() / ".cache" / "sophon"))
    path.mkdir(parents=True, exist_ok=True)
    return path


class DataUnavailableError(FileNotFoundError):
    """A dataset is neither embedded nor found locally; the message says which flag or file to use."""
