"""The embedded text sets come from the vaderSentiment 3.3.2 *source* distribution on PyPI, whose
additional_resources/hutto_ICWSM_2014.tar.gz holds sentence-level corpora with human sentiment
ratings (Hutto & Gilbert, ICWSM 2014; MIT licence). Fetched once with pip, checksum-verified, cached.
"""

import hashlib
import io
import tarfile
from pathlib import Path

from sophon.data import DataUnavailableError, cache_dir
from sophon.data.pypi import fetch_verified

SDIST = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
INNER_SHA256 = "d5bb07d87474b3eb8d30b4deccbc23f19d742a6c5718fbacc65485b70b95c5fa"
FILES = ("movieReviewSnippets_GroundTruth.txt", "nytEditorialSnippets_GroundTruth.txt",
         "amazonReviewSnippets_GroundTruth.txt", "tweets_GroundTruth.txt")


def corpus_dir() -> Path:
    """Folder holding the four ground-truth files, fetching and verifying them on first use."""
    root = cache_dir() / "vader"
    out = root / "hutto_ICWSM_2014"
    if all((out / f).exists() for f in FILES):
        return out
    root.mkdir(parents=True, exist_ok=True)
    sdist = fetch_verified("vaderSentiment==3.3.2", SDIST, SDIST_SHA256, root, "the embedded text sets",
                           ("--no-binary", ":all:"))
    with tarfile.open(sdist) as outer:
        inner = outer.extractfile(INNER).read()
    if hashlib.sha256(inner).hexdigest() != INNER_SHA256:
        raise DataUnavailableError(f"{INNER} inside {SDIST} failed its checksum")
    out.mkdir(exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(inner)) as archive:
        for name in FILES:
            member = archive.getmember(f"hutto_ICWSM_2014/{name}")
            (out / name).write_bytes(archive.extractfile(member).read())
    return out


def read_rated_sentences(name: str) -> list[tuple[float, str]]:
    """(mean human rating in [-4, 4], sentence) pairs of one ground-truth file."""
    rows = []
    for line in (corpus_dir() / name).read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.strip().split("\t", 2)
        if len(parts) == 3 and parts[2].strip():
            rows.append((float(parts[1]), parts[2].strip()))
    return rows
