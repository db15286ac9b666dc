"""The embedded text sets come from the vaderSentiment 3.3.2 *source* distribution on PyPI, whose
additional_resources/hutto_ICWSM_2014.tar.gz holds sentence-level corpora with human sentiment
ratings (Hutto & Gilbert, ICWSM 2014; MIT licence). Fetched once with pip, checksum-verified, cached.
"""

import hashlib
import io
import subprocess
import sys
import tarfile
from pathlib import Path

from sophon.data import DataUnavailableError, cache_dir

SDIST = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
INNER_SHA256 = "d5bb07d87474b3eb8d30b4deccbc23f19d742a6c5718fbacc65485b70b95c5fa"
FILES = ("movieReviewSnippets_GroundTruth.txt", "nytEditorialSnippets_GroundTruth.txt",
         "amazonReviewSnippets_GroundTruth.txt", "tweets_GroundTruth.txt")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_sdist(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
           "vaderSentiment==3.3.2", "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    path = dest / SDIST
    if result.returncode != 0 or not path.exists():
        raise DataUnavailableError(
            "could not fetch the embedded text sets (vaderSentiment==3.3.2 source distribution from PyPI): "
            f"{result.stderr.strip()[-300:]}\nFetch it by hand with `pip download --no-binary :all: --no-deps "
            f"vaderSentiment==3.3.2 -d {dest}` on a machine with PyPI access and copy it there.")
    return path


def corpus_dir() -> Path:
    """Folder holding the four ground-truth files, fetching and verifying them on first use."""
    root = cache_dir() / "vader"
    out = root / "hutto_ICWSM_2014"
    if all((out / f).exists() for f in FILES):
        return out
    root.mkdir(parents=True, exist_ok=True)
    sdist = root / SDIST
    if not sdist.exists():
        download_sdist(root)
    data = sdist.read_bytes()
    if _sha256(data) != SDIST_SHA256:
        sdist.unlink()
        raise DataUnavailableError(f"{SDIST} failed its checksum (deleted); run again to fetch it anew")
    with tarfile.open(fileobj=io.BytesIO(data)) as outer:
        inner = outer.extractfile(INNER).read()
    if _sha256(inner) != INNER_SHA256:
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
